"""Where and as what the step runs: its id and name, the run, the working directory."""

from __future__ import annotations

import os
from typing import Optional

from . import _wit


def step_id() -> Optional[str]:
    """The `id` the project file gave this step, if any."""
    return _wit.module("context").step_id()


def step_name() -> str:
    """The step's name as written in the project file (or the plugin's name)."""
    return _wit.module("context").step_name()


def run_id() -> str:
    """Identifies this run of the whole section (all its steps share it)."""
    return _wit.module("context").run_id()


def working_directory() -> str:
    """Absolute path of the working directory: the same path inside and outside the
    sandbox, and the step's `os.getcwd()` when it starts (the SDK sets it)."""
    return _wit.module("context").working_directory()


def set_working_directory(path: str) -> str:
    """Change the working directory of this step and of the steps after it; returns the
    new absolute path. Needs the `set-cwd` capability (`Denied` without it)."""
    new = _wit.call(_wit.module("context").set_working_directory, os.fspath(path))
    # Keep the guest's own cwd in step, so relative paths agree with the host's.
    try:
        os.chdir(new)
    except OSError:
        pass
    return new
