"""Structured, levelled logging: records are shown live, attributed to the step.

`log.info("cloned", repository=url, commit=sha)` shows the message followed by the
fields. Outside a component (a unit test calling the step function) records go to
stderr, so the function can be exercised without the host.
"""

from __future__ import annotations

import sys
from typing import Any

from . import _wit


def emit(level: str, message: str, **fields: Any) -> None:
    """Emit one record at `level` (`trace`, `debug`, `info`, `warn` or `error`); field
    values are shown with `str()`."""
    pairs = [(str(k), str(v)) for k, v in fields.items()]
    try:
        types = _wit.module("types")
        host = _wit.module("log")
    except _wit.NotInComponent:
        shown = " ".join(f"{k}={v}" for k, v in pairs)
        print(f"[{level}] {message}" + (f" {shown}" if shown else ""), file=sys.stderr)
        return
    host.emit(getattr(types.Level, level.upper()), str(message), pairs)


def trace(message: str, **fields: Any) -> None:
    """Log at trace level."""
    emit("trace", message, **fields)


def debug(message: str, **fields: Any) -> None:
    """Log at debug level."""
    emit("debug", message, **fields)


def info(message: str, **fields: Any) -> None:
    """Log at info level."""
    emit("info", message, **fields)


def warn(message: str, **fields: Any) -> None:
    """Log at warn level."""
    emit("warn", message, **fields)


def error(message: str, **fields: Any) -> None:
    """Log at error level."""
    emit("error", message, **fields)
