"""Write a Hoist deployment step as a plain Python function.

A step takes a dataclass of inputs and returns a dataclass (or a mapping) of outputs;
`@step` makes it the component's `describe` (with the JSON Schema of the inputs) and
`run` (inputs checked and converted, errors reported by kind). Build the module with
componentize-py and run the `.wasm` with `hoist step run` (see `sdk/python/README.md`).

    from dataclasses import dataclass
    from hoist_sdk import step, process, log

    @dataclass
    class Inputs:
        \"\"\"Attributes:
            name: Who to greet.
        \"\"\"
        name: str

    @dataclass
    class Outputs:
        greeting: str

    @step(name="greet", version="0.1.0", summary="Greets someone",
          capabilities=["process:echo"])
    def run(inputs: Inputs) -> Outputs:
        out = process.run(["echo", inputs.name], check=True)
        log.info("greeted", name=inputs.name)
        return Outputs(greeting=f"hello {out.stdout.strip()}")

The mirror of the Rust SDK (`sdk/src/lib.rs`): same schema layout, same input-error
words, same error kinds. Only the standard library is used, and nothing here imports
the componentize-py bindings until a host call needs them, so the schema and input
checking run under plain CPython too.
"""

from . import context, docker, git, http, log, process
from ._step import Step, WitWorld, encode_outputs, registered, step
from .capability import Capability
from .errors import (
    OUTSIDE_HINT,
    Denied,
    Failed,
    GitFailed,
    InvalidInput,
    NotFound,
    StepError,
)
from .schema import InputError, InputType

__all__ = [
    "OUTSIDE_HINT",
    "Capability",
    "Denied",
    "Failed",
    "GitFailed",
    "InputError",
    "InputType",
    "InvalidInput",
    "NotFound",
    "Step",
    "StepError",
    "WitWorld",
    "context",
    "docker",
    "encode_outputs",
    "git",
    "http",
    "log",
    "process",
    "registered",
    "step",
]
