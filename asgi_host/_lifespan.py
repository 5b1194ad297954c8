"""The ASGI lifespan protocol, as a checked state machine.

What each step does and why is in docs/lifespan.md. In short: resources are
entered before `lifespan.startup.complete`, a failure is answered with
`lifespan.startup.failed` *and* an exception (servers read an exception alone
as "lifespan unsupported" and serve without the model), `.failed` and
`.complete` are sent only once every resource task has finished, and nothing
raised by `send()` is swallowed.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import MutableMapping

import anyio

from ._errors import LifespanProtocolError, ShutdownError, StartupError
from ._resources import ResourceStack
from ._types import Receive, Scope, Send, send_message

__all__ = ["LifespanPhase", "run_lifespan"]

logger = logging.getLogger("asgi_host")


class LifespanPhase(enum.Enum):
    """Where a host is in its lifespan; every transition is checked."""

    IDLE = "idle"  # no lifespan has started the host
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


class LifespanTracker:
    """The phase, plus the checks that stop a host from being started twice at once."""

    def __init__(self) -> None:
        self.phase = LifespanPhase.IDLE

    def move(self, expected: tuple[LifespanPhase, ...], new: LifespanPhase, message_type: object) -> None:
        if self.phase not in expected:
            raise LifespanProtocolError(self.phase.value, message_type)
        self.phase = new


_STARTABLE = (LifespanPhase.IDLE, LifespanPhase.STOPPED, LifespanPhase.FAILED)


async def run_lifespan(
    stack: ResourceStack,
    tracker: LifespanTracker,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Serve one lifespan scope: startup, wait, shutdown.

    Returns after `lifespan.shutdown.complete` or `.failed`; raises after
    `lifespan.startup.failed` and on protocol errors.
    """
    startup_error: StartupError | LifespanProtocolError | None = None
    shutdown_error: ShutdownError | None = None
    protocol_error: LifespanProtocolError | None = None

    async with anyio.create_task_group() as task_group:
        try:
            message = await receive()
            try:
                if message.get("type") != "lifespan.startup":
                    raise LifespanProtocolError("waiting for lifespan.startup", message.get("type"))
                tracker.move(_STARTABLE, LifespanPhase.STARTING, message["type"])
            except LifespanProtocolError as exc:
                startup_error = exc
            else:
                startup_error = await _startup(stack, task_group)

            if startup_error is None:
                tracker.phase = LifespanPhase.STARTED
                server_state = scope.get("state")
                if isinstance(server_state, MutableMapping):
                    # Servers copy this dict into every request scope.
                    server_state.update(stack.state)
                await send_message(send, {"type": "lifespan.startup.complete"})
                message = await receive()
                if message.get("type") != "lifespan.shutdown":
                    protocol_error = LifespanProtocolError(tracker.phase.value, message.get("type"))
                tracker.phase = LifespanPhase.STOPPING
                try:
                    await stack.stop()
                except ShutdownError as exc:
                    shutdown_error = exc
            elif tracker.phase is LifespanPhase.STARTING:
                tracker.phase = LifespanPhase.FAILED
        finally:
            if stack.running:
                # Cancelled, or `receive()`/`send()` raised: still release
                # everything, in reverse order (stop() shields itself).
                tracker.phase = LifespanPhase.FAILED
                try:
                    await stack.stop()
                except ShutdownError as exc:
                    logger.error("releasing resources after an abort failed: %s", exc)

    # Every resource task has finished here: report, outside the task group so
    # that the server's own exceptions from `send()` reach it unwrapped.
    if startup_error is not None:
        logger.error("startup failed: %s", startup_error)
        await send_message(send, {"type": "lifespan.startup.failed", "message": str(startup_error)})
        raise startup_error
    if protocol_error is not None:
        tracker.phase = LifespanPhase.FAILED
        # The server never asked for shutdown, so there is no message to answer;
        # the resources are released and the error names the stray message.
        if shutdown_error is not None:
            logger.error("shutdown after a protocol error failed: %s", shutdown_error)
        raise protocol_error
    if shutdown_error is not None:
        tracker.phase = LifespanPhase.FAILED
        logger.error("shutdown failed: %s", shutdown_error)
        await send_message(send, {"type": "lifespan.shutdown.failed", "message": str(shutdown_error)})
        return
    tracker.phase = LifespanPhase.STOPPED
    await send_message(send, {"type": "lifespan.shutdown.complete"})


async def _startup(stack: ResourceStack, task_group: anyio.abc.TaskGroup) -> StartupError | None:
    try:
        await stack.start(task_group)
    except StartupError as exc:
        return exc
    return None
