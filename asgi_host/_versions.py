"""`x-model-version`: the versions of the models whose passes ran for the current request.

Every response of an endpoint that ran a model pass carries `x-model-version`: the handle records
its version in a context variable of the request's task when it runs a pass (a batcher copies the
versions of each batch's pass into the tasks of the requests it served), and the host adds the
header when it sends the response.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol

__all__ = [
    "MAX_VERSION_CHARS",
    "VERSION_HEADER",
    "begin_request",
    "check_version",
    "collecting_versions",
    "record_version",
    "record_versions",
    "stamp_version",
]

VERSION_HEADER = "x-model-version"
MAX_VERSION_CHARS = 128


def check_version(version: str | None) -> str | None:
    """`version` if it can go in a header as it is (visible ASCII and spaces, at most 128), else
    `ValueError` now: a CR, LF or non-latin-1 character would break every response it is stamped on."""
    if version is None:
        return None
    if not isinstance(version, str) or not version.strip():
        raise ValueError(f"a model version is a non-empty string, got {version!r}")
    if len(version) > MAX_VERSION_CHARS or not all(" " <= c <= "~" for c in version):
        raise ValueError(
            f"a model version goes in the x-model-version header: printable ASCII only, at most "
            f"{MAX_VERSION_CHARS} characters; got {version[:40]!r}{'...' if len(version) > 40 else ''}"
        )
    return version


# The versions of the models whose passes ran for the current request (in its task's context).
_used_versions: ContextVar[list[str] | None] = ContextVar("asgi_host_model_versions", default=None)


def record_version(version: str | None) -> None:
    """Note that a pass of the model at `version` ran for the current task's request."""
    if version is None:
        return
    used = _used_versions.get()
    if used is None:
        _used_versions.set([version])
    elif version not in used:
        used.append(version)


def record_versions(versions: list[str]) -> None:
    for version in versions:
        record_version(version)


@contextmanager
def collecting_versions() -> Iterator[list[str]]:
    """The versions recorded inside the block (for a batcher: those of one batch's pass)."""
    collected: list[str] = []
    token = _used_versions.set(collected)
    try:
        yield collected
    finally:
        _used_versions.reset(token)


def begin_request() -> None:
    """A fresh list for this request: an earlier request served by the same task (the test kit,
    a mount's response the host never stamps) leaves nothing behind, and tasks the handler starts
    append to this one list instead of setting their own."""
    _used_versions.set([])


class _Answer(Protocol):
    headers: list[tuple[bytes, bytes]]


def stamp_version(response: _Answer) -> None:
    """Add `x-model-version` to `response` when a model pass ran for this request."""
    used = _used_versions.get()
    if used:
        response.headers.append((_VERSION_HEADER, ", ".join(used).encode("latin-1")))


_VERSION_HEADER = VERSION_HEADER.encode()
