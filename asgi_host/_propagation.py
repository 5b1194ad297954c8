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
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

from ._resources import Resource
from ._types import ASGIApp, Message

__all__ = ["LifespanUnsupported", "SubAppLifespan", "SubAppLifespanError", "drive_lifespan"]

logger = logging.getLogger("asgi_host")


class SubAppLifespanError(Exception):
    """A sub-app answered `.failed`, or raised once it had begun its lifespan."""

    def __init__(self, phase: str, message: str, app_message: str | None = None) -> None:
        self.phase = phase
        self.app_message = app_message  # the app's own `.failed` message, if it sent one
        super().__init__(message)


class LifespanUnsupported(Exception):
    """The app raised before its first `receive()`: it has no lifespan."""


@asynccontextmanager
async def drive_lifespan(
    app: ASGIApp, state: dict[str, Any], *, label: str, scope_extra: dict[str, Any] | None = None
) -> AsyncIterator[None]:
    """Run `app`'s lifespan with raw messages: startup on entry, shutdown on exit.

    Raises `SubAppLifespanError` when the app answers `.failed` or stops
    without answering, and `LifespanUnsupported` when it raises before its
    first `receive()`. `state` is the scope's state dict, shared with the caller.
    """
    to_app, inbox = anyio.create_memory_object_stream[Message](math.inf)
    outbox, from_app = anyio.create_memory_object_stream[Message](math.inf)
    received = anyio.Event()  # the app has called receive() at least once
    failure: list[BaseException] = []
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": state}
    scope.update(scope_extra or {})

    async def receive() -> Message:
        received.set()
        return await inbox.receive()

    async def send(message: Message) -> None:
        await outbox.send(dict(message))

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except Exception as exc:
            failure.append(exc)
        finally:
            outbox.close()

    error: Exception | None = None
    with to_app, inbox, outbox, from_app:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run, name=f"asgi_host lifespan of {label}")
            await to_app.send({"type": "lifespan.startup"})
            reply = await _reply(from_app)
            if reply is None and failure and not received.is_set():
                error = LifespanUnsupported(repr(failure[0]))
            else:
                try:
                    _check(reply, "startup", failure)
                except SubAppLifespanError as exc:
                    error = exc
            if error is not None:
                tg.cancel_scope.cancel()
            else:
                try:
                    yield
                finally:
                    await to_app.send({"type": "lifespan.shutdown"})
                    try:
                        _check(await _reply(from_app), "shutdown", failure)
                    except SubAppLifespanError as exc:
                        error = exc
    # Raised here, outside the task group, so the message is not wrapped in a group.
    if error is not None:
        raise error


class SubAppLifespan(Resource):
    """The lifespan of the app mounted at `prefix`, as a resource."""

    def __init__(self, prefix: str, app: ASGIApp) -> None:
        self.prefix = prefix
        self.app = app
        self.supported: bool | None = None  # None until startup; False: the app raised first
        super().__init__(self._lifespan, name=f"mount {prefix}")

    @asynccontextmanager
    async def _lifespan(self, host: Any) -> AsyncIterator[None]:
        # `host.state` is shared: what the sub-app puts there reaches every request.
        try:
            async with drive_lifespan(self.app, host.state, label=f"mount {self.prefix}"):
                self.supported = True
                yield
                return
        except LifespanUnsupported as exc:
            self.supported = False
            logger.info("mount %s does not support lifespan (%s); skipped", self.prefix, exc)
        yield


async def _reply(from_app: anyio.abc.ObjectReceiveStream[Message]) -> Message | None:
    try:
        return await from_app.receive()
    except anyio.EndOfStream:
        return None


def _check(reply: Message | None, phase: str, failure: list[BaseException]) -> None:
    kind = None if reply is None else reply.get("type")
    if kind == f"lifespan.{phase}.complete":
        return
    if kind == f"lifespan.{phase}.failed":
        assert reply is not None
        app_message = str(reply.get("message", ""))
        raise SubAppLifespanError(phase, f"it answered lifespan.{phase}.failed: {app_message}", app_message)
    if reply is None:
        error = failure[0] if failure else None
        detail = f"raised {type(error).__name__}: {error}" if error else "returned"
        raise SubAppLifespanError(phase, f"it {detail} without answering lifespan.{phase}")
    raise SubAppLifespanError(phase, f"it answered lifespan.{phase} with {kind!r}")
