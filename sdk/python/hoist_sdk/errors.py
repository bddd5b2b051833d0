"""Why a step failed, in the four kinds the host tells apart.

The host reports each `step-error` case differently (which input to fix, which capability
to grant, what is missing), so a step raises the exception that tells the user what to
do. Anything else a step raises is turned into `Failed` by `from_exception`, with the
exception's type in the message and the innermost lines of its traceback as the hint.

Pure Python: the conversion to and from the WIT types lives in `hoist_sdk._wit`.
"""

from __future__ import annotations

import os
import traceback
from typing import Optional

#: Said of a path a step could not find or open: in the sandbox, everything outside the
#: step's directories looks missing. The Rust SDK's `OUTSIDE_HINT`, word for word.
OUTSIDE_HINT = (
    "a step sees only its working directory and the directories it declares and is "
    "granted (`read:<dir>`, `write:<dir>`): anything else looks missing"
)

#: How many calls of a traceback a `Failed` made from an unexpected exception names:
#: enough to find the line, short enough to read in a log.
TRACEBACK_CALLS = 3


class StepError(Exception):
    """Base of the exceptions the host reports by kind; catch it to catch them all."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(StepError):
    """An input is missing, has the wrong type or an invalid value (`invalid-input`)."""


class Denied(StepError):
    """The sandbox refused something the step tried to do (`denied`)."""


class NotFound(StepError):
    """A file, directory, program or remote object does not exist (`not-found`)."""


class Failed(StepError):
    """Anything else (`failed`): with the exit code of the process that failed, if one
    did, and a hint saying what the user could do about it."""

    def __init__(
        self, message: str, hint: Optional[str] = None, exit_code: Optional[int] = None
    ) -> None:
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code


class GitFailed(Failed):
    """git ran and exited non-zero; `stderr` is all it wrote (credentials masked)."""

    def __init__(self, message: str, stderr: str, exit_code: Optional[int]) -> None:
        super().__init__(message, exit_code=exit_code)
        self.stderr = stderr


def _os_error_text(e: OSError) -> str:
    """`No such file or directory: '/etc/passwd'`: Python's text without `[Errno 44]`,
    a WASI errno number that means nothing to a user (and differs from the host's)."""
    text = e.strerror or str(e)
    if e.filename is not None:
        text += f": {e.filename!r}"
        if e.filename2 is not None:
            text += f" -> {e.filename2!r}"
    return text


def _traceback_hint(e: BaseException) -> Optional[str]:
    """Where `e` was raised, on one line (the host shows a step's text on one line, with
    newlines escaped): the innermost calls of its traceback, innermost last, e.g.
    `at app.py:12 in run: helper() <- app.py:30 in helper: raise ValueError(...)`,
    leaving out the SDK's own frames (the same for every step, they would push the
    user's line out of the hint)."""
    frames = traceback.extract_tb(e.__traceback__)
    here = os.path.dirname(os.path.abspath(__file__))
    own = [f for f in frames if not os.path.abspath(f.filename).startswith(here + os.sep)]
    frames = (own or frames)[-TRACEBACK_CALLS:]
    if not frames:
        return None
    calls = [
        f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"
        + (f": {f.line.strip()}" if f.line else "")
        for f in frames
    ]
    return "at " + " -> ".join(calls)


def from_exception(e: BaseException) -> StepError:
    """What the host is told about an exception that left the step function.

    A `StepError` is what the step meant. A missing or forbidden path says where a step
    can look, as the Rust SDK's `From<io::Error>` does (WASI makes everything outside
    the preopened directories look missing). `sys.exit(n)` is a failure with exit code
    `n`. Anything else is a bug or an unforeseen case: `Failed` with the exception's
    type and message, and where it was raised as the hint.
    """
    if isinstance(e, StepError):
        return e
    # Input errors found while decoding (hoist_sdk.schema.InputError) are InvalidInput.
    from .schema import InputError

    if isinstance(e, InputError):
        return InvalidInput(str(e))
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        text = _os_error_text(e)
        return NotFound(f"{text} ({OUTSIDE_HINT})" if e.filename is not None else text)
    if isinstance(e, PermissionError):
        text = _os_error_text(e)
        return Denied(f"{text} ({OUTSIDE_HINT})" if e.filename is not None else text)
    if isinstance(e, SystemExit):
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        detail = "" if isinstance(e.code, int) or e.code is None else f": {e.code}"
        return Failed(f"the step called sys.exit({code}){detail}", exit_code=code)
    message = str(e)
    name = type(e).__name__
    return Failed(f"{name}: {message}" if message else name, hint=_traceback_hint(e))
