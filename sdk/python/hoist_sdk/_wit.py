"""The componentize-py bindings, imported when first needed.

`wit_world` exists only inside a component being built (componentize-py generates it),
so nothing here is imported at the SDK's import time: the schema and input checking stay
testable under plain CPython. Inside a component, every binding module is imported by
`preload` when `@step` runs, i.e. while componentize-py builds the component: its
CPython sees Python files only then (it snapshots the interpreter after importing the
app and ships no files, componentize-py issue #23), so a module first imported during a
run is not found. The step world's `types` interface is
`wit_world.imports.types` when the component targets `hoist:step/step` alone, and
`wit_world.imports.hoist_step_types` when it also imports `wasi:http` (whose own `types`
takes the plain name): both are accepted.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import errors


class NotInComponent(RuntimeError):
    """A host call made outside a component (plain CPython, a unit test)."""


#: Binding modules by the SDK's name for them; None for one the world does not have.
_cache: dict = {}

#: Every interface the SDK wraps. `outgoing_handler` (wasi:http) is there only when the
#: component targets the SDK's world (`sdk/python/wit/world.wit`).
INTERFACES = ("types", "log", "context", "process", "git", "docker", "outgoing_handler")


def _import(name: str) -> Any:
    candidates = ["hoist_step_types", "types"] if name == "types" else [name]
    for candidate in candidates:
        try:
            return importlib.import_module(f"wit_world.imports.{candidate}")
        except ImportError:
            continue
    return None


def module(name: str) -> Any:
    """`wit_world.imports.<name>` (`types` is the step world's, whatever its name)."""
    if name not in _cache:
        _cache[name] = _import(name)
    found = _cache[name]
    if found is None:
        raise NotInComponent(
            f"hoist_sdk: `{name}` is a host interface this program cannot reach: host "
            "calls work only inside a component built with componentize-py, for a world "
            "that imports the interface (see sdk/python/README.md)"
        )
    return found


def has(name: str) -> bool:
    """Whether the component imports interface `name`."""
    try:
        module(name)
        return True
    except NotInComponent:
        return False


def err_class() -> Any:
    """`componentize_py_types.Err`, the exception host calls raise and `run` raises."""
    try:
        from componentize_py_types import Err  # type: ignore[import-not-found]
    except ImportError as e:
        raise NotInComponent("hoist_sdk: not inside a componentize-py component") from e
    return Err


def preload() -> None:
    """Import every binding module now, while componentize-py builds the component (the
    only time its CPython can import), and remember which the world lacks."""
    for name in INTERFACES:
        _cache[name] = _import(name)
    try:
        err_class()
    except NotInComponent:
        pass


def to_wit(e: errors.StepError) -> Any:
    """The `step-error` variant for an SDK exception."""
    t = module("types")
    if isinstance(e, errors.InvalidInput):
        return t.StepError_InvalidInput(value=e.message)
    if isinstance(e, errors.Denied):
        return t.StepError_Denied(value=e.message)
    if isinstance(e, errors.NotFound):
        return t.StepError_NotFound(value=e.message)
    hint = getattr(e, "hint", None)
    exit_code = getattr(e, "exit_code", None)
    return t.StepError_Failed(value=t.Failure(message=e.message, exit_code=exit_code, hint=hint))


def from_wit(value: Any) -> errors.StepError:
    """The SDK exception for a `step-error` a host call returned (matched by case name,
    so it works with either name of the `types` module)."""
    case = type(value).__name__
    if case.endswith("InvalidInput"):
        return errors.InvalidInput(value.value)
    if case.endswith("Denied"):
        return errors.Denied(value.value)
    if case.endswith("NotFound"):
        return errors.NotFound(value.value)
    if case.endswith("Failed"):
        f = value.value
        return errors.Failed(f.message, hint=f.hint, exit_code=f.exit_code)
    return errors.Failed(f"the host answered an unknown error: {value!r}")


def call(fn: Any, *args: Any) -> Any:
    """`fn(*args)`, a host function whose error is a `step-error`: raised as the
    matching SDK exception, without the binding's frames in the way."""
    err = err_class()
    try:
        return fn(*args)
    except err as e:
        raise from_wit(e.value) from None
