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
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from ._errors import LifespanError, LifespanProtocolError, ShutdownError, StartupError
from ._resources import ResourceStack
from ._types import Message, Receive, Scope, Send, send_message

__all__ = ["LifespanPhase", "LifespanTracker", "run_lifespan"]

logger = logging.getLogger("asgi_host")


class LifespanPhase(enum.Enum):
    """Where a host is in its lifespan; every transition is checked."""

    IDLE = "idle"  # no lifespan has started the host
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


# Every phase change the protocol allows; any other is refused without moving.
_MOVES: dict[LifespanPhase, frozenset[LifespanPhase]] = {
    LifespanPhase.IDLE: frozenset({LifespanPhase.STARTING}),
    LifespanPhase.STARTING: frozenset({LifespanPhase.STARTED, LifespanPhase.FAILED}),
    LifespanPhase.STARTED: frozenset({LifespanPhase.STOPPING, LifespanPhase.FAILED}),
    LifespanPhase.STOPPING: frozenset({LifespanPhase.STOPPED, LifespanPhase.FAILED}),
    LifespanPhase.STOPPED: frozenset({LifespanPhase.STARTING}),
    LifespanPhase.FAILED: frozenset({LifespanPhase.STARTING}),
}


class LifespanTracker:
    """The phase, a background load's progress, and the checks between them."""

    def __init__(self) -> None:
        self.phase = LifespanPhase.IDLE
        self.loading = False  # a background load is running
        self.load_error: str | None = None  # why the last startup (or background load) failed

    def move(self, new: LifespanPhase, *, message_type: str | None = None) -> None:
        """Go to phase `new`: the one way the phase changes.

        A move `_MOVES` does not allow changes nothing and raises: when a
        message from the server asked for it (`message_type`), it is the
        server's mistake (`LifespanProtocolError`); otherwise it is the host's
        own, and the error names both phases.
        """
        if new not in _MOVES[self.phase]:
            if message_type is not None:
                raise LifespanProtocolError(self.phase.value, message_type)
            raise LifespanError(f"impossible lifespan transition from {self.phase.value!r} to {new.value!r}")
        self.phase = new


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
    """Serve one lifespan scope: startup, serve until `lifespan.shutdown`, shutdown.

    Returns after `lifespan.shutdown.complete` or `.failed`; raises after
    `lifespan.startup.failed` and on protocol errors. With `background`,
    startup is answered at once and the resources are entered by a task the
    lifespan owns; a failure there is kept in `tracker.load_error`.
    """
    lifespan = _Lifespan(stack, tracker, scope, send, drain, on_background_failure)
    first = await receive()  # outside the task group: nothing to release yet, nothing wrapped
    async with anyio.create_task_group() as task_group:
        try:
            outcome = await lifespan.startup(first, task_group, background=background)
            if outcome.startup_error is None:
                outcome.stray = await lifespan.serve(receive)
                outcome.shutdown_error = await lifespan.shutdown()
        finally:
            await lifespan.abort()
    # Every resource task has finished here: answer outside the task group, so
    # that the server's own exceptions from `send()` reach it unwrapped.
    await lifespan.answer(outcome)


@dataclass
class _Outcome:
    startup_error: StartupError | LifespanProtocolError | None = None
    stray: LifespanProtocolError | None = None  # the server's message after startup was not shutdown
    shutdown_error: ShutdownError | None = None


class _Lifespan:
    """One lifespan scope, step by step."""

    def __init__(
        self,
        stack: ResourceStack,
        tracker: LifespanTracker,
        scope: Scope,
        send: Send,
        drain: Callable[[], Awaitable[None]],
        on_background_failure: Callable[[StartupError], object] | None,
    ) -> None:
        self.stack = stack
        self.tracker = tracker
        self.server_state = scope.get("state")
        self.send = send
        self.drain = drain
        self.on_background_failure = on_background_failure
        self.loader = anyio.CancelScope()  # a background load; shutdown cuts it short
        self.loaded = anyio.Event()  # the resources are entered, or entering them stopped
        self.owns_stack = False  # this scope started the resources (a refused second one did not)

    def publish_state(self) -> None:
        if isinstance(self.server_state, MutableMapping):
            # Servers copy this dict into every request scope.
            self.server_state.update(self.stack.state)

    async def startup(self, message: Message, task_group: TaskGroup, *, background: bool) -> _Outcome:
        """`lifespan.startup`: enter the resources (or start a task that does)."""
        kind = message.get("type")
        try:
            if kind != "lifespan.startup":
                raise LifespanProtocolError("waiting for lifespan.startup", kind)
            self.tracker.move(LifespanPhase.STARTING, message_type=kind)
        except LifespanProtocolError as exc:
            return _Outcome(startup_error=exc)
        self.owns_stack = True
        self.tracker.load_error = None
        if background:
            self.tracker.loading = True
            task_group.start_soon(self._load, task_group, name="asgi_host background startup")
            return _Outcome()
        error = await _enter(self.stack, task_group)
        self.loaded.set()
        if error is not None:
            self.tracker.move(LifespanPhase.FAILED)
        return _Outcome(startup_error=error)

    async def _load(self, task_group: TaskGroup) -> None:
        try:
            with self.loader:
                error = await _enter(self.stack, task_group)
                if error is None:
                    self.publish_state()
                else:
                    self.tracker.load_error = str(error)
                    logger.error("background startup failed: %s", error)
                    if self.on_background_failure is not None:
                        self.on_background_failure(error)
        finally:
            self.tracker.loading = False
            self.loaded.set()

    async def serve(self, receive: Receive) -> LifespanProtocolError | None:
        """Answer startup, then wait for the server's next message, which must be `lifespan.shutdown`."""
        self.tracker.move(LifespanPhase.STARTED)
        self.publish_state()
        await send_message(self.send, {"type": "lifespan.startup.complete"})
        message = await receive()
        if message.get("type") == "lifespan.shutdown":
            return None
        return LifespanProtocolError(self.tracker.phase.value, message.get("type"))

    async def shutdown(self) -> ShutdownError | None:
        """Cut a background load short, drain requests, release the resources in reverse."""
        self.tracker.move(LifespanPhase.STOPPING)
        self.loader.cancel()
        await self.loaded.wait()
        await self.drain()
        try:
            await self.stack.stop()
        except ShutdownError as exc:
            return exc
        return None

    async def abort(self) -> None:
        """Cancelled, or `receive()`/`send()` raised: still release everything, in reverse."""
        self.loader.cancel()
        if self.owns_stack and self.stack.running:
            self.tracker.move(LifespanPhase.FAILED)
            try:
                await self.stack.stop()  # stop() shields itself
            except ShutdownError as exc:
                logger.error("releasing resources after an abort failed: %s", exc)

    async def answer(self, outcome: _Outcome) -> None:
        """The last word to the server: `.failed` and raise, or `lifespan.shutdown.complete`."""
        if outcome.startup_error is not None:
            if self.tracker.phase is LifespanPhase.FAILED:  # not for a stray message to a running host
                self.tracker.load_error = str(outcome.startup_error)
            logger.error("startup failed: %s", outcome.startup_error)
            await send_message(
                self.send, {"type": "lifespan.startup.failed", "message": str(outcome.startup_error)}
            )
            raise outcome.startup_error
        if outcome.stray is not None:
            # The server never asked for shutdown, so there is no message to answer;
            # the resources are released and the error names the stray message.
            self.tracker.move(LifespanPhase.FAILED)
            if outcome.shutdown_error is not None:
                logger.error("shutdown after a protocol error failed: %s", outcome.shutdown_error)
            raise outcome.stray
        if outcome.shutdown_error is not None:
            self.tracker.move(LifespanPhase.FAILED)
            logger.error("shutdown failed: %s", outcome.shutdown_error)
            await send_message(
                self.send, {"type": "lifespan.shutdown.failed", "message": str(outcome.shutdown_error)}
            )
            return
        self.tracker.move(LifespanPhase.STOPPED)
        await send_message(self.send, {"type": "lifespan.shutdown.complete"})


async def _enter(stack: ResourceStack, task_group: TaskGroup) -> StartupError | None:
    try:
        await stack.start(task_group)
    except StartupError as exc:
        return exc
    return None
