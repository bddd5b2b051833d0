"""Git through the host's real `git` (the `git` interface of `wit/step.wit`).

The repository's host must be covered by a `net` grant (`file://` repositories by a
`read`/`write` grant of their path). Credentials, given as `(username, secret)`, reach
git as an HTTP header scoped to the repository's host: never argv, `.git/config`, logs
or errors.

A refusal before git runs raises the matching SDK exception (`Denied`, `InvalidInput`,
...); git exiting non-zero raises `GitFailed`, whose `stderr` holds everything git said.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Tuple

from . import _wit
from .errors import GitFailed

#: `(username, secret)`, sent as `Basic username:secret`.
Credentials = Tuple[str, str]


def _credentials(credentials: Optional[Credentials]) -> Any:
    if credentials is None:
        return None
    username, secret = credentials
    return _wit.module("git").Credentials(username=username, secret=secret)


def _call(fn: Any, *args: Any) -> Any:
    """`fn(*args)` with its `git-error` raised as an SDK exception."""
    err = _wit.err_class()
    try:
        return fn(*args)
    except err as e:
        value = e.value
        if type(value).__name__.endswith("Refused"):
            raise _wit.from_wit(value.value) from None
        failure = value.value
        lines = [l.strip() for l in failure.stderr.splitlines() if l.strip()]
        code = "signal" if failure.exit_code is None else f"exit code {failure.exit_code}"
        tail = " | ".join(lines[-3:]) or "no output"
        raise GitFailed(f"git failed ({code}): {tail}", failure.stderr, failure.exit_code) from None


def clone(
    url: str,
    destination: str,
    branch: Optional[str] = None,
    depth: Optional[int] = None,
    submodules: bool = False,
    sparse: bool = False,
    blobless_no_checkout: bool = False,
    credentials: Optional[Credentials] = None,
) -> None:
    """`git clone` `url` into `destination` (relative to the working directory):
    `--branch`, `--depth`, `--recurse-submodules`, `--sparse`, and with
    `blobless_no_checkout` `--filter=blob:none --no-checkout`."""
    g = _wit.module("git")
    opts = g.CloneOptions(
        url=url,
        destination=os.fspath(destination),
        branch=branch,
        depth=depth,
        submodules=submodules,
        sparse=sparse,
        blobless_no_checkout=blobless_no_checkout,
        credentials=_credentials(credentials),
    )
    _call(g.clone, opts)


def fetch(
    repo: str,
    refspec: Optional[str] = None,
    unshallow: bool = False,
    credentials: Optional[Credentials] = None,
) -> None:
    """`git fetch origin [<refspec>] [--unshallow]` in `repo`."""
    g = _wit.module("git")
    _call(g.fetch, os.fspath(repo), refspec, unshallow, _credentials(credentials))


def checkout(repo: str, rev: str) -> None:
    """`git checkout <rev>` in `repo`."""
    _call(_wit.module("git").checkout, os.fspath(repo), rev)


def pull(
    repo: str,
    branch: Optional[str] = None,
    submodules: bool = False,
    depth: Optional[int] = None,
    credentials: Optional[Credentials] = None,
) -> None:
    """`git pull origin [<branch>] [--recurse-submodules] [--depth <n>]` in `repo`."""
    g = _wit.module("git")
    _call(g.pull, os.fspath(repo), branch, submodules, depth, _credentials(credentials))


def sparse_checkout_set(repo: str, directories: Sequence[str]) -> None:
    """`git sparse-checkout set -- <directories>` in `repo`."""
    _call(_wit.module("git").sparse_checkout_set, os.fspath(repo), list(directories))


def remote_url(repo: str) -> Optional[str]:
    """`remote.origin.url` of `repo`, or None if unset."""
    return _call(_wit.module("git").remote_url, os.fspath(repo))


def rev_parse(repo: str, rev: str) -> Optional[str]:
    """The commit `rev` names in `repo`, or None if it names none."""
    return _call(_wit.module("git").rev_parse, os.fspath(repo), rev)


def is_shallow(repo: str) -> bool:
    """Whether `repo` is a shallow clone."""
    return _call(_wit.module("git").is_shallow, os.fspath(repo))


def is_sparse(repo: str) -> bool:
    """Whether `repo` has sparse checkout enabled."""
    return _call(_wit.module("git").is_sparse, os.fspath(repo))
