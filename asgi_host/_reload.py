"""Swapping a resource's value while the host serves: `host.reload(name)`.

A resource that can be replaced in place (a `TorchModel` with new weights) has a `reload` method
(the `Reloadable` protocol). It builds, loads and warms the new version while the old one keeps
serving, and hands back a `Replacement`. The host then swaps the state in one step, with no await
in between, so every request admitted after that point sees the new value, and finally lets the
resource retire the old one (its passes in flight finish on it, then it is released).

How the swap reaches requests. Endpoints look their model up per request (`request.state["model"]`),
and a request's state is a shallow copy made when it begins: by the server (hypercorn, uvicorn and
the test kit copy the lifespan scope's `state` dict into each request scope) or by the host itself
(`Host._request_state` merges `host.state` when the server copies nothing, or copies a state that is
not the host's, as Ray Serve does). Both dicts are updated in place here: the lifespan scope's dict
the server copies from, and `host.state` (which batchers and mounts with a lifespan also read). A
request that copied its state just before the swap still holds the old handle; the old handle
forwards passes asked for after it was retired to its successor, so such a request is answered by
the new version instead of a 503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import anyio
import msgspec

from ._errors import ReloadError, ReloadInProgress
from ._lifespan import LifespanPhase
from ._resources import Resource
from ._view import HostView

__all__ = ["ReloadResult", "Reloadable", "Reloader", "Replacement"]

logger = logging.getLogger("asgi_host.reload")


@dataclass(frozen=True)
class Replacement:
    """What a resource's `reload` hands the host: the new state value, and how to retire the old.

    `retire` is awaited after the host has swapped `value` into the state; it waits for the old
    value's work in flight and releases it. `version`/`previous` name the new and old versions.
    """

    value: Any
    retire: Callable[[], Awaitable[None]]
    version: str | None = None
    previous: str | None = None


@runtime_checkable
class Reloadable(Protocol):
    """A resource that can be replaced while the host serves (`TorchModel` is one).

    `reload(host, **options)` builds the new value while the current one serves and returns a
    `Replacement`; it raises (anything) when the new value cannot be built, leaving the current one
    serving. The host calls it at most once at a time per resource, only while it is ready.
    """

    name: str

    async def reload(self, host: HostView, **options: Any) -> Replacement: ...


class ReloadResult(msgspec.Struct):
    """The answer of a reload: the resource, its new version and the one it replaced.

    `swap_s`: from the call to the swap (the new version built, loaded and warmed up); `seconds`:
    to the end (the old version drained and released too).
    """

    model: str
    version: str | None
    previous: str | None
    seconds: float
    swap_s: float


class Reloader:
    """The host's reloads: one at a time per resource, swapped into every state dict requests copy."""

    def __init__(self, host: HostView) -> None:
        self._host = host
        self._running: set[str] = set()
        # The lifespan scope's `state` dict, the one servers copy into each request (None: none).
        self.server_state: MutableMapping[str, Any] | None = None

    def reloadable(self) -> list[Resource]:
        return [r for r in self._host.resources if callable(getattr(r, "reload", None))]

    def find(self, name: str) -> Reloadable:
        for resource in self._host.resources:
            if resource.name == name:
                if not isinstance(resource, Reloadable):
                    raise ReloadError(
                        f"resource {name!r} cannot be reloaded (it has no reload method)", status=404
                    )
                return resource
        names = ", ".join(repr(r.name) for r in self.reloadable()) or "none"
        raise ReloadError(f"no resource named {name!r} to reload; reloadable: {names}", status=404)

    async def reload(self, name: str, options: Mapping[str, Any]) -> ReloadResult:
        resource = self.find(name)
        host = self._host
        ready = host.phase is LifespanPhase.STARTED and host.readiness().status == "ready"
        if not ready:
            raise ReloadError(
                f"cannot reload {name!r}: the host is not ready ({host.readiness().status})", status=409
            )
        if name in self._running:
            raise ReloadInProgress(f"a reload of {name!r} is already running; wait for it to finish")
        self._running.add(name)
        started = time.perf_counter()
        try:
            # Shielded: once begun, a reload runs to its end (the swap and the old version's
            # release), even when the client that asked for it goes away.
            with anyio.CancelScope(shield=True):
                try:
                    replacement = await resource.reload(host, **options)
                except Exception as exc:
                    error = exc if isinstance(exc, ReloadError) else None
                    text = str(exc).strip() or type(exc).__name__
                    if error is None or error.status == 422:
                        logger.error("reloading %r failed; the current version keeps serving: %s", name, text)
                    if error is not None:
                        raise
                    raise ReloadError(
                        f"reloading {name!r} failed; the current version keeps serving: {text}"
                    ) from exc
                self._swap(name, replacement.value)
                swapped = time.perf_counter()
                logger.info(
                    "%r swapped: version %s -> %s; draining the old version",
                    name,
                    replacement.previous,
                    replacement.version,
                )
                await replacement.retire()
        finally:
            self._running.discard(name)
        seconds = time.perf_counter() - started
        logger.info("%r reloaded to version %s in %.3f s", name, replacement.version, seconds)
        swap_s = round(swapped - started, 6)
        return ReloadResult(name, replacement.version, replacement.previous, round(seconds, 6), swap_s)

    def _swap(self, name: str, value: Any) -> None:
        """Put `value` where the old value was, in every dict requests copy their state from.

        No await here: no request can see one dict swapped and the other not.
        """
        items = value.items() if isinstance(value, Mapping) else [(name, value)]
        state = self._host.state  # the host's own dict
        for key, new in items:
            old = state.get(key)
            state[key] = new
            server = self.server_state
            if server is not None and server is not state and server.get(key) is old:
                server[key] = new
