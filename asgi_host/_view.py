"""`HostView`: what the host's parts (resources, reloads, metrics, the OpenAPI document) read of it.

One protocol, so that the modules below the host read it without importing `_host`,
which imports them: a resource's factory (`async def model(host: HostView)`), the
reloads, the metrics and the document all take a `HostView`. `asgi_host.Host` is one.
"""

from __future__ import annotations

from typing import Protocol

from ._health import Readiness
from ._lifespan import LifespanPhase
from ._resources import Progress, Resource
from ._routing import Router
from ._types import State

__all__ = ["HostView"]


class HostView(Protocol):
    """A running host as its resources and protocol layers see it."""

    @property
    def state(self) -> State:
        """What the resources entered so far yielded (the dict requests copy their state from)."""
        ...

    @property
    def resources(self) -> list[Resource]: ...

    @property
    def phase(self) -> LifespanPhase: ...

    @property
    def progress(self) -> Progress:
        """Startup progress; a resource may `report()` its stage and fraction to it."""
        ...

    @property
    def in_flight(self) -> int:
        """Requests being served by routes and mounts."""
        ...

    @property
    def router(self) -> Router: ...

    def readiness(self) -> Readiness:
        """What `/readyz` reports: `ready`, or why not."""
        ...
