"""Run programs on the host: only those the step declared (`process:<program>`) and the
user granted. A non-zero exit is not an error (look at `exit_code`, or pass
`check=True`); errors are for programs that are not granted (`Denied`) or cannot start
(`NotFound`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

from . import _wit
from .errors import Failed


@dataclass
class Output:
    """What a finished process left behind."""

    #: Exit code; None if a signal ended the process.
    exit_code: Optional[int]
    #: Everything written to stdout (UTF-8, invalid bytes replaced).
    stdout: str
    #: Everything written to stderr.
    stderr: str

    @property
    def ok(self) -> bool:
        """Whether the process exited with code 0."""
        return self.exit_code == 0


def run(
    args: Sequence[str],
    env: Union[Mapping[str, str], Sequence[tuple], None] = None,
    cwd: Optional[str] = None,
    stream_output: bool = False,
    check: bool = False,
) -> Output:
    """Run `args` (program first: a name looked up on PATH, or an absolute path) to
    completion and collect its output.

    `env` is set on top of the granted part of the host environment; `cwd` is relative
    to the step's working directory (the default); `stream_output` copies each line to
    the log as it arrives. With `check`, a non-zero exit raises `Failed` with the exit
    code and the end of stderr as the hint.
    """
    if isinstance(args, (str, bytes)):
        raise TypeError(
            "process.run takes a list of arguments, e.g. ['git', 'status'] "
            "(no shell splits a string)"
        )
    args = [os.fspath(a) if not isinstance(a, str) else a for a in args]
    if not args:
        raise ValueError("process.run needs at least the program")
    pairs = list(env.items()) if isinstance(env, Mapping) else list(env or [])
    p = _wit.module("process")
    cmd = p.Command(
        program=args[0],
        args=args[1:],
        env=[(str(k), str(v)) for k, v in pairs],
        cwd=None if cwd is None else os.fspath(cwd),
        stream_output=stream_output,
    )
    out = _wit.call(p.run, cmd)
    result = Output(exit_code=out.exit_code, stdout=out.stdout, stderr=out.stderr)
    if check and not result.ok:
        code = result.exit_code
        how = "was ended by a signal" if code is None else f"exited with code {code}"
        tail = "\n".join(result.stderr.strip().splitlines()[-5:]) or None
        raise Failed(f"`{args[0]}` {how}", hint=tail, exit_code=result.exit_code)
    return result
