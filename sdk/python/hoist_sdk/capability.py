"""Capabilities, written as on the command line (`process:git`, `read:/data`).

A step declares them in `@step(capabilities=[...])` in the same spelling the user grants
them with (`hoist step run --allow process:git`) and the host names them in errors, so
one string means one thing everywhere. The parsing mirrors the host's
(`host/policy/src/lib.rs`, `FromStr for Capability`): a string it would refuse is refused
here when the step is declared, at build time, not when the host reads `describe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

#: The host's words for a string that is not a capability.
_BAD = (
    "`{0}` is not a capability; write one of process:<program>, env:<NAME>, set-cwd, "
    "read:<dir>, write:<dir>, net:<scheme://host:port>, docker:build, "
    "docker:push:<registry/repository> (`*` allowed for program, `*` or PREFIX* for NAME)"
)


@dataclass(frozen=True)
class Capability:
    """One case of the WIT `capability` variant: `kind` is its WIT case name
    (`process`, `read-dir`...), `value` its payload (None for `set-cwd`,
    `docker-build`)."""

    kind: str
    value: Optional[str] = None

    @classmethod
    def parse(cls, text: str) -> "Capability":
        """The capability `text` spells; `ValueError` with the host's message if none."""
        if not isinstance(text, str):
            raise TypeError(f"a capability is a string such as 'process:git', not {text!r}")
        bad = ValueError(_BAD.format(text))
        if text == "set-cwd":
            return cls("set-cwd")
        if text == "docker:build":
            return cls("docker-build")
        if text.startswith("docker:push:"):
            pattern = text[len("docker:push:") :]
            if not pattern or any(c.isspace() or not c.isprintable() for c in pattern):
                raise bad
            return cls("docker-push", pattern)
        kind, sep, value = text.partition(":")
        if not sep or not value:
            raise bad
        if kind in ("process", "env", "net"):
            return cls(kind, value)
        if kind in ("read", "write"):
            why = _plain_dir(value)
            if why:
                raise ValueError(
                    f"`{text}`: {why}; write the directory as an absolute path without "
                    f"`.` or `..` (e.g. `{kind}:/srv/out`)"
                )
            return cls("read-dir" if kind == "read" else "write-dir", value)
        raise bad

    def __str__(self) -> str:
        """The command-line spelling, as the host prints it."""
        return {
            "process": f"process:{self.value}",
            "env": f"env:{self.value}",
            "set-cwd": "set-cwd",
            "read-dir": f"read:{self.value}",
            "write-dir": f"write:{self.value}",
            "net": f"net:{self.value}",
            "docker-build": "docker:build",
            "docker-push": f"docker:push:{self.value}",
        }[self.kind]

    def to_wit(self, types: Any) -> Any:
        """The binding's variant case (`types.Capability_Process(value=...)`)."""
        case = "".join(part.capitalize() for part in self.kind.split("-"))
        ctor = getattr(types, f"Capability_{case}")
        return ctor() if self.value is None else ctor(value=self.value)


def _plain_dir(path: str) -> Optional[str]:
    """Why `path` cannot be a directory grant (the host's `plain_dir`), or None."""
    if not path.startswith("/"):
        return "the path is relative"
    if any(seg in (".", "..") for seg in path.split("/")):
        return "the path contains `.` or `..`"
    if any(not c.isprintable() for c in path):
        return "the path contains control characters"
    return None
