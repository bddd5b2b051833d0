"""Container images through the host's Docker engine (the `docker` interface of
`wit/step.wit`): building, tagging and inspecting need `docker:build`, pushing a
`docker:push:<pattern>` grant covering the repository. Typed operations only: the
engine's socket is never handed to the step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from . import _wit


@dataclass
class Image:
    """What the engine knows of an image."""

    #: `sha256:<hex>`.
    id: str
    #: References (`name:tag`) naming it.
    tags: List[str] = field(default_factory=list)
    #: `name@sha256:<hex>` for every registry it was pushed to or pulled from.
    digests: List[str] = field(default_factory=list)
    labels: Dict[str, str] = field(default_factory=dict)
    size: int = 0
    #: RFC 3339.
    created: str = ""


def build(
    context: str,
    tags: Sequence[str] = (),
    dockerfile: Optional[str] = None,
    build_args: Optional[Mapping[str, str]] = None,
    labels: Optional[Mapping[str, str]] = None,
    target: Optional[str] = None,
    platform: Optional[str] = None,
    pull: bool = False,
    no_cache: bool = False,
) -> str:
    """Build the image of directory `context` (relative to the working directory) and
    tag it; returns its id (`sha256:<hex>`). Output lines go to the log."""
    d = _wit.module("docker")
    opts = d.BuildOptions(
        context=os.fspath(context),
        dockerfile=dockerfile,
        tags=list(tags),
        build_args=list((build_args or {}).items()),
        labels=list((labels or {}).items()),
        target=target,
        platform=platform,
        pull=pull,
        no_cache=no_cache,
    )
    return _wit.call(d.build, opts)


def tag(source: str, target: str) -> None:
    """Give image `source` (an id or a reference) the reference `target`."""
    _wit.call(_wit.module("docker").tag, source, target)


def push(
    reference: str,
    username: Optional[str] = None,
    password: Optional[str] = None,
    server: Optional[str] = None,
) -> str:
    """Push `reference` (`name:tag`), logging in with `username`/`password` if given;
    returns the manifest digest (`sha256:<hex>`)."""
    d = _wit.module("docker")
    creds = None
    if username is not None or password is not None:
        creds = d.RegistryCredentials(
            username=username or "", password=password or "", server=server
        )
    return _wit.call(d.push, reference, creds)


def inspect(reference: str) -> Optional[Image]:
    """The image `reference` (or id) names, or None if the engine holds none."""
    found = _wit.call(_wit.module("docker").inspect, reference)
    if found is None:
        return None
    return Image(
        id=found.id,
        tags=list(found.tags),
        digests=list(found.digests),
        labels=dict(found.labels),
        size=found.size,
        created=found.created,
    )
