"""`@step`: a plain function becomes the component's `describe` and `run`.

componentize-py imports the app module when it builds the component and instantiates
that module's `WitWorld` class for every call of an export. `@step` registers the
function and puts the SDK's `WitWorld` in the function's module, so an app is a module
with one decorated function and nothing else to write (importing `WitWorld` from
`hoist_sdk` by hand is the same class, for those who prefer it visible).

Everything the decorator can check (the inputs' types, the capabilities) is checked when
the module is imported, i.e. when the component is built: a mistake fails the build, not
a deployment. The schema is computed then too, so `describe` only copies a string.
"""

from __future__ import annotations

import inspect
import json
import linecache
import os
import sys
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from . import _wit, errors
from .capability import Capability
from .schema import InputType, to_json


@dataclass
class Step:
    """A registered step: what `describe` says and the function `run` calls."""

    name: str
    version: str
    summary: str
    capabilities: list
    fn: Callable
    inputs: InputType
    #: `inputs.schema()` as JSON text, computed once.
    input_schema: str

    def call(self, inputs: str) -> str:
        """Run the function on the host's JSON inputs and return its JSON outputs.

        Raises what the function raises, `schema.InputError` for inputs it cannot
        take, and `Failed` for outputs that are not JSON data; `WitWorld.run` turns
        them into the `step-error` the host reports. Needs no bindings: a test can call
        it under plain CPython.
        """
        value = self.inputs.decode_json(inputs)
        out = self.fn(value) if self.inputs.cls is not None else self.fn()
        return encode_outputs(out)


def encode_outputs(out: Any) -> str:
    """A step's return value as JSON text: a dataclass as its fields (nested ones too),
    a mapping as is, enums as their values; None as `{}` (no outputs)."""
    if out is None:
        return "{}"
    try:
        return json.dumps(to_json(out), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise errors.Failed(f"outputs could not be encoded as JSON: {e}") from None


_registered: Optional[Step] = None


def registered() -> Step:
    """The step this component runs."""
    if _registered is None:
        raise RuntimeError(
            "no step is registered: the app module must define a function decorated with "
            "@hoist_sdk.step (see sdk/python/README.md)"
        )
    return _registered


def _inputs_class(fn: Callable) -> Optional[type]:
    """The class annotated on `fn`'s one parameter; None if it takes none."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return None
    if len(params) > 1:
        raise TypeError(
            f"a step function takes one parameter (its inputs), {fn.__name__} takes {len(params)}"
        )
    hints = typing.get_type_hints(fn)
    cls = hints.get(params[0].name)
    if cls is None:
        raise TypeError(
            f"annotate the inputs of {fn.__name__}: `def {fn.__name__}({params[0].name}: Inputs)` "
            "where Inputs is a dataclass"
        )
    return cls


def step(
    *,
    name: str,
    version: str,
    summary: Optional[str] = None,
    capabilities: Sequence[str] = (),
) -> Callable[[Callable], Callable]:
    """Declare `fn(inputs: Inputs) -> Outputs` as the component's step.

    `Inputs` is a dataclass (or a TypedDict) whose type hints give the input schema and
    the checking of the inputs; `Outputs` a dataclass or a mapping. `capabilities` are
    written as on the command line (`process:git`, `env:HOME`, `set-cwd`, `read:/data`,
    `write:/out`, `net:https://api.example.com:443`, `docker:build`,
    `docker:push:<pattern>`). `summary` defaults to the first line of the function's
    docstring. The function is returned unchanged, so tests can call it directly.
    """
    caps = [Capability.parse(c) for c in capabilities]

    def register(fn: Callable) -> Callable:
        global _registered
        if _registered is not None and _registered.fn is not fn:
            raise RuntimeError(
                f"one step per component: {_registered.fn.__name__} is already the step, "
                f"{fn.__name__} cannot be another"
            )
        text = summary
        if text is None:
            doc = inspect.getdoc(fn) or ""
            text = doc.strip().split("\n", 1)[0]
        if not text:
            raise TypeError(
                f"give the step a summary: @step(summary=...) or a docstring on {fn.__name__}"
            )
        inputs = InputType(_inputs_class(fn))
        _registered = Step(
            name=name,
            version=version,
            summary=text,
            capabilities=caps,
            fn=fn,
            inputs=inputs,
            input_schema=json.dumps(inputs.schema(), ensure_ascii=False),
        )
        module = sys.modules.get(fn.__module__)
        if module is not None and not hasattr(module, "WitWorld"):
            module.WitWorld = WitWorld
        _wit.preload()
        _keep_sources(fn)
        return fn

    return register


def _keep_sources(fn: Callable) -> None:
    """Keep the source lines of the app's modules (those beside `fn`'s) for tracebacks.

    A component's CPython has no files when it runs (see `hoist_sdk._wit`), so the hint
    of an unexpected exception would name a line without showing it. The lines read now,
    while the component is built, are kept in `linecache` as a module loader's are (no
    modification time: never checked against a file, never dropped).
    """
    home = os.path.dirname(os.path.abspath(inspect.getsourcefile(fn) or ""))
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if not filename or os.path.dirname(os.path.abspath(filename)) != home:
            continue
        lines = linecache.getlines(filename)
        if lines:
            linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)


class WitWorld:
    """The component's exports (`describe`, `run` of world `hoist:step/step`), for the
    registered step. componentize-py looks it up in the app module."""

    def describe(self) -> Any:
        """What the step says about itself. Cheap, uses no capability."""
        s = registered()
        t = _wit.module("types")
        return t.Description(
            name=s.name,
            version=s.version,
            summary=s.summary,
            input_schema=s.input_schema,
            capabilities=[c.to_wit(t) for c in s.capabilities],
        )

    def run(self, inputs: str) -> str:
        """Run the step: its outputs as JSON, or `Err(step-error)`."""
        s = registered()
        # WASI's cwd starts at `/`; host and guest paths agree, so start where the host is.
        try:
            os.chdir(_wit.module("context").working_directory())
        except OSError:
            pass
        try:
            return s.call(inputs)
        except BaseException as e:  # noqa: BLE001 - everything must become a step-error
            failure = errors.from_exception(e)
        raise _wit.err_class()(_wit.to_wit(failure))
