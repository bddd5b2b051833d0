"""`py_probe`: a test step written with the Python SDK (`sdk/python`).

It echoes its inputs back (so the tests can check the round trip of every input type
through the schema, the checking and the output encoding), and each `action` tries one
thing the tests look at: an exception, a failure with a hint, a file, a program, a raw
socket, an HTTP request, the working directory (reading it, changing it), the log. It
declares no capability, so every read outside the working directory, program, socket,
request and change of directory is the sandbox's to refuse.

Build (the tests build it so, from a copy: componentize-py leaves `__pycache__`):

    hoist plugin build tests/plugins/python -o py_probe.wasm
"""

from __future__ import annotations

# `socket.create_connection` encodes host names with the `idna` codec; a component's
# CPython imports only while it is built, so the codec is imported here, not at run time.
import encodings.idna  # noqa: F401
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Literal, Optional

from hoist_sdk import Failed, context, http, log, process, step


@dataclass
class Target:
    """Where a network action goes.

    Attributes:
        host: Host name or address.
        port: TCP port.
    """

    host: str = "127.0.0.1"
    port: int = 80


@dataclass
class Nested:
    """A nested mapping, to check nested inputs and their error paths.

    Attributes:
        label: Any text.
        tags: A list inside the nested mapping.
        target: A mapping nested twice.
    """

    label: str
    tags: List[str] = field(default_factory=list)
    target: Optional[Target] = None


Action = Literal["echo", "raise", "fail", "read", "run", "socket", "http", "cwd", "chdir", "log"]


@dataclass
class Inputs:
    """Inputs of every type the SDK supports, and what to try.

    Attributes:
        action: What to do besides echoing the inputs.
        message: A string with a default.
        count: An integer with a default.
        ratio: A number with a default (integers are taken too).
        flag: A boolean with a default.
        note: An optional string without a default (absent is null).
        items: A list of strings.
        env: A mapping of strings.
        nested: A nested mapping.
        path: The file `read` reads, the directory `chdir` changes to.
        program: The program `run` runs.
        args: The arguments `run` passes.
        target: Where `socket` connects.
        url: What `http` gets.
    """

    action: Action = "echo"
    message: str = "hello"
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    note: Optional[str] = None
    items: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    nested: Optional[Nested] = None
    path: Optional[str] = None
    program: Optional[str] = None
    args: List[str] = field(default_factory=list)
    target: Target = field(default_factory=Target)
    url: Optional[str] = None


def _socket(target: Target) -> Dict[str, Any]:
    """Connect with Python's own `socket` module (`wasi:sockets`), send `ping`, read the
    answer; what happened, refused or not. `connect` is called directly (no
    `getaddrinfo` first, as `create_connection` would), so for an IP address the refusal
    is the connection's own, not the name lookup's."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((target.host, target.port))
            s.sendall(b"ping")
            received = s.recv(100)
        return {"connected": True, "received": received.decode(errors="replace")}
    except Exception as e:  # noqa: BLE001 - the refusal is the result
        return {"connected": False, "error": f"{type(e).__name__}: {e}"}


@step(
    name="py_probe",
    version="0.1.0",
    summary="Test step written in Python: echoes its inputs, tries one action",
    capabilities=[],
)
def run(inputs: Inputs) -> Dict[str, Any]:
    result: Any = None
    if inputs.action == "raise":
        raise ValueError("boom from python")
    if inputs.action == "fail":
        raise Failed("failed on purpose", hint="fix it")
    if inputs.action == "read":
        with open(inputs.path or "", encoding="utf-8") as f:
            result = f.read()
    elif inputs.action == "run":
        out = process.run([inputs.program or ""] + inputs.args)
        result = {"exit_code": out.exit_code, "stdout": out.stdout, "stderr": out.stderr}
    elif inputs.action == "socket":
        result = _socket(inputs.target)
    elif inputs.action == "http":
        r = http.get(inputs.url or "")
        result = {"status": r.status, "content_type": r.header("content-type"), "body": r.text()}
    elif inputs.action == "cwd":
        result = {
            "getcwd": os.getcwd(),
            "working_directory": context.working_directory(),
            "step_name": context.step_name(),
            "step_id": context.step_id(),
            "run_id": context.run_id(),
        }
    elif inputs.action == "chdir":
        new = context.set_working_directory(inputs.path or "")
        result = {"directory": new, "getcwd": os.getcwd()}
    elif inputs.action == "log":
        for level in ("trace", "debug", "info", "warn", "error"):
            getattr(log, level)(f"{level} from python", count=inputs.count)
    return {"inputs": asdict(inputs), "result": result}
