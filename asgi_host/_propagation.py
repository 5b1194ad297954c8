"""Running a mounted sub-app's lifespan as one of the host's resources.

A `Mount(..., lifespan=True)` becomes a resource entered after the host's own
resources, in mount order, and released before them in reverse, so rollback
on failure, timeouts and collected shutdown failures come from the same
`ResourceStack` that runs every other resource. The sub-app gets its own
receive channel and a copy of the lifespan scope whose `state` is the host's
state dict, shared: what the sub-app puts there is visible to every request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ._driver import DriverError, LifespanFailed, LifespanSession, LifespanUnsupported, lifespan_scope
from ._errors import SubAppLifespanError
from ._resources import Resource
from ._types import ASGIApp
from ._view import HostView

__all__ = ["LifespanUnsupported", "SubAppLifespan", "drive_lifespan"]

logger = logging.getLogger("asgi_host")


def _failed(phase: str, error: DriverError) -> SubAppLifespanError:
    answered = error.message if isinstance(error, LifespanFailed) and error.error is None else None
    return SubAppLifespanError(phase, f"it {error.reason}", answered)


@asynccontextmanager
async def drive_lifespan(
    app: ASGIApp, state: dict[str, Any], *, label: str, scope_extra: dict[str, Any] | None = None
) -> AsyncIterator[None]:
    """Run `app`'s lifespan with raw messages: startup on entry, shutdown on exit.

    Raises `SubAppLifespanError` when the app fails a phase (the rule is
    `LifespanSession`'s), and `LifespanUnsupported` when it raises before its
    first `receive()`. `state` is the scope's state dict, shared with the
    caller. No timeouts here: the caller's own (a resource's) bound the wait.
    """
    scope = lifespan_scope(state=state)
    scope.update(scope_extra or {})
    session = LifespanSession(app, scope, label=label)
    try:
        await session.start()
    except LifespanUnsupported:
        raise
    except DriverError as exc:
        raise _failed("startup", exc) from exc
    failure: DriverError | None = None
    try:
        yield
    finally:
        try:
            await session.shutdown()
        except DriverError as exc:
            failure = exc
        finally:
            await session.close(failure)
    if failure is not None:
        raise _failed("shutdown", failure) from failure


class SubAppLifespan(Resource):
    """The lifespan of the app mounted at `prefix`, as a resource."""

    def __init__(self, prefix: str, app: ASGIApp) -> None:
        self.prefix = prefix
        self.app = app
        self.supported: bool | None = None  # None until startup; False: the app raised first
        super().__init__(self._lifespan, name=f"mount {prefix}")

    @asynccontextmanager
    async def _lifespan(self, host: HostView) -> AsyncIterator[None]:
        # `host.state` is shared: what the sub-app puts there reaches every request.
        try:
            async with drive_lifespan(self.app, host.state, label=f"mount {self.prefix}"):
                self.supported = True
                yield
                return
        except LifespanUnsupported as exc:
            self.supported = False
            logger.info("mount %s does not support lifespan (it %s); skipped", self.prefix, exc.reason)
        yield
