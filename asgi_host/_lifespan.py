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
from collections.abc import Awaitable, Callable, MutableMapping

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
    """The phase, a background load's progress, and the checks between them."""

    def __init__(self) -> None:
        self.phase = LifespanPhase.IDLE
        self.loading = False  # a background load is running
        self.load_error: str | None = None  # why the last startup (or background load) failed

    def move(self, expected: tuple[LifespanPhase, ...], new: LifespanPhase, message_type: object) -> None:
        if self.phase not in expected:
            raise LifespanProtocolError(self.phase.value, message_type)
        self.phase = new


_STARTABLE = (LifespanPhase.IDLE, LifespanPhase.STOPPED, LifespanPhase.FAILED)


async def _no_drain() -> None:
    return None


async def run_lifespan(
    stack: ResourceStack,
    tracker: LifespanTracker,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    background: bool = False,
    drain: Callable[[], Awaitable[None]] = _no_drain,
    on_background_failure: Callable[[StartupError], object] | None = None,
) -> None:
    """Serve one lifespan scope: startup, wait, drain, shutdown.

    Returns after `lifespan.shutdown.complete` or `.failed`; raises after
    `lifespan.startup.failed` and on protocol errors. With `background`,
    startup is answered at once and the resources are entered by a task the
    lifespan owns; a failure there is kept in `tracker.load_error`.
    """
    startup_error: StartupError | LifespanProtocolError | None = None
    shutdown_error: ShutdownError | None = None
    protocol_error: LifespanProtocolError | None = None
    server_state = scope.get("state")

    def publish_state() -> None:
        if isinstance(server_state, MutableMapping):
            # Servers copy this dict into every request scope.
            server_state.update(stack.state)

    async with anyio.create_task_group() as task_group:
        loader = anyio.CancelScope()
        loaded = anyio.Event()
        try:
            message = await receive()
            try:
                if message.get("type") != "lifespan.startup":
                    raise LifespanProtocolError("waiting for lifespan.startup", message.get("type"))
                tracker.move(_STARTABLE, LifespanPhase.STARTING, message["type"])
                tracker.load_error = None
            except LifespanProtocolError as exc:
                startup_error = exc
            else:
                if background:
                    tracker.loading, tracker.load_error = True, None

                    async def load() -> None:
                        try:
                            with loader:
                                error = await _startup(stack, task_group)
                                if error is None:
                                    publish_state()
                                else:
                                    tracker.load_error = str(error)
                                    logger.error("background startup failed: %s", error)
                                    if on_background_failure is not None:
                                        on_background_failure(error)
                        finally:
                            tracker.loading = False
                            loaded.set()

                    task_group.start_soon(load, name="asgi_host background startup")
                else:
                    startup_error = await _startup(stack, task_group)
                    loaded.set()

            if startup_error is None:
                tracker.phase = LifespanPhase.STARTED
                publish_state()
                await send_message(send, {"type": "lifespan.startup.complete"})
                message = await receive()
                if message.get("type") != "lifespan.shutdown":
                    protocol_error = LifespanProtocolError(tracker.phase.value, message.get("type"))
                tracker.phase = LifespanPhase.STOPPING
                loader.cancel()  # a background load still running is cut short
                await loaded.wait()
                await drain()
                try:
                    await stack.stop()
                except ShutdownError as exc:
                    shutdown_error = exc
            elif tracker.phase is LifespanPhase.STARTING:
                tracker.phase = LifespanPhase.FAILED
        finally:
            loader.cancel()
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
        if tracker.phase is LifespanPhase.FAILED:  # not for a stray message to a running host
            tracker.load_error = str(startup_error)
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
