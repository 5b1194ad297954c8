"""Running an app's lifespan from the outside, as a server does: one engine, one rule.

The test kit (`asgi_host.testing.LifespanDriver`), mounts with `lifespan=True`,
`Host.lifespan()` and `python -m asgi_host check` all drive an app's lifespan
with `LifespanSession`, so they agree on what the app did. Per phase
(`startup`, then `shutdown`):

- it answered `lifespan.<phase>.complete`: the phase went well;
- it answered `lifespan.<phase>.failed`: `LifespanFailed`, with its message;
- it raised before its first `receive()`: `LifespanUnsupported` (asgi-lifespan's
  rule: an app that refuses the scope type outright has no lifespan);
- it raised after receiving `lifespan.<phase>`: `LifespanFailed`, with the
  exception in `.error` (hypercorn and uvicorn would log it and serve the app
  without lifespan, but the app did try, and failed);
- it returned without answering, or answered with another message type:
  `ProtocolViolation`;
- it did not answer in time: `AppTimeout`.
"""

from __future__ import annotations

import math

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskGroup

from ._clock import deadline
from ._errors import AsgiHostError
from ._types import ASGIApp, Message, Scope, State

__all__ = [
    "AppTimeout",
    "DriverError",
    "LifespanFailed",
    "LifespanSession",
    "LifespanUnsupported",
    "ProtocolViolation",
    "Transcript",
    "lifespan_scope",
]

Transcript = list[tuple[str, Message]]
"""Every message in order, as `("receive", msg)` (to the app) or `("send", msg)` (from it)."""


def lifespan_scope(*, state: State | None = None, with_state: bool = True) -> Scope:
    """A lifespan scope as a server builds it.

    `state` is the dict the app fills in for the requests, kept (not copied)
    so the caller sees what the app put there; a new one by default.
    `with_state=False` leaves it out, as servers from before ASGI 2.3 do.
    """
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
    if with_state:
        scope["state"] = {} if state is None else state
    return scope


class DriverError(AsgiHostError):
    """What a driver found wrong with the app.

    `reason` completes "the app ..."; `phase` is the lifespan phase, if any.
    """

    phase: str | None
    reason: str


class LifespanFailed(DriverError):
    """The app failed a phase: it answered `lifespan.<phase>.failed`, or raised after receiving it.

    `.message` is the app's own message, or for an exception its type and
    text; `.error` is that exception (None when the app answered).
    """

    def __init__(
        self, phase: str, message: str, transcript: Transcript, *, error: BaseException | None = None
    ) -> None:
        self.phase = phase
        self.message = message
        self.transcript = transcript
        self.error = error
        if error is None:
            self.reason = f"answered lifespan.{phase}.failed: {message}"
            super().__init__(f"lifespan {phase} failed: {message}")
        else:
            self.reason = f"raised {message} without answering lifespan.{phase}"
            super().__init__(
                f"lifespan {phase} failed: the app raised {message} after receiving lifespan.{phase}"
            )


class LifespanUnsupported(DriverError):
    """The app raised before its first `receive()`: it has no lifespan, and servers serve without one."""

    phase = "startup"

    def __init__(self, error: BaseException, transcript: Transcript) -> None:
        self.error = error
        self.transcript = transcript
        self.reason = f"raised {type(error).__name__}: {error} before its first receive()"
        super().__init__(
            f"the app {self.reason}; servers treat this as 'lifespan unsupported' and serve without it"
        )


class AppTimeout(DriverError):
    """The app did not answer (or return) within the driver's timeout."""

    def __init__(
        self, what: str, timeout_s: float, transcript: Transcript, *, phase: str | None = None
    ) -> None:
        self.phase = phase
        self.transcript = transcript
        self.reason = f"{what.removeprefix('the app ')} within {timeout_s} s"
        super().__init__(f"{what} within {timeout_s} s: raise the timeout_s of the driver or find the hang")


class ProtocolViolation(DriverError):
    """The app sent a message the ASGI spec does not allow at that point."""

    def __init__(self, message: str, *, phase: str | None = None) -> None:
        self.phase = phase
        self.reason = message.removeprefix("the app ")
        super().__init__(message)


class LifespanSession:
    """One run of `app`'s lifespan: `start()`, then `shutdown()`, then `close()`.

    `start()` runs the app in a task, sends `lifespan.startup` and checks the
    answer; on failure it has already closed and it raises one of the errors
    in the module docstring. `shutdown()` does the same for
    `lifespan.shutdown`. `close()` waits for the app to return (at most
    `shutdown_timeout_s`) and ends its task. A timeout of None waits as long
    as the caller lets it (its own cancellation bounds the wait); after a
    failure, an app is then not waited for at all.
    """

    def __init__(
        self,
        app: ASGIApp,
        scope: Scope,
        *,
        startup_timeout_s: float | None = None,
        shutdown_timeout_s: float | None = None,
        label: str = "lifespan",
    ) -> None:
        self.app = app
        self.scope = scope
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.label = label
        self.transcript: Transcript = []
        self.app_error: BaseException | None = None  # what the app raised, if it did
        self.received = False  # the app has called receive() at least once
        self._shutdown_sent = False
        self._task_group: TaskGroup | None = None

    async def start(self) -> None:
        """Send `lifespan.startup` and check the answer; on failure, close and raise."""
        if self._task_group is not None:
            raise RuntimeError(f"the lifespan of {self.label} was started already")
        to_app, app_inbox = anyio.create_memory_object_stream[Message](math.inf)
        app_outbox, from_app = anyio.create_memory_object_stream[Message](math.inf)
        self._to_app: ObjectSendStream[Message] = to_app
        self._from_app: ObjectReceiveStream[Message] = from_app
        self._streams = (to_app, app_inbox, app_outbox, from_app)
        self._app_done = anyio.Event()

        async def receive() -> Message:
            self.received = True
            message = await app_inbox.receive()
            self.transcript.append(("receive", message))
            return message

        async def send(message: Message) -> None:
            self.transcript.append(("send", dict(message)))
            await app_outbox.send(dict(message))

        async def run_app() -> None:
            try:
                await self.app(self.scope, receive, send)
            except Exception as exc:
                self.app_error = exc
            finally:
                self._app_done.set()
                app_outbox.close()

        # Held open by hand (not `async with`) so that the caller's code runs
        # between start() and close(), and errors are raised unwrapped.
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(run_app, name=f"asgi_host lifespan of {self.label}")
        try:
            await self._exchange("startup", self.startup_timeout_s)
        except BaseException as exc:
            if isinstance(exc, AppTimeout):
                self._task_group.cancel_scope.cancel()  # it hangs: waiting longer helps nobody
            await self.close(exc)
            raise

    async def shutdown(self) -> None:
        """Send `lifespan.shutdown` and check the answer (once; later calls return at once)."""
        if self._shutdown_sent:
            return
        self._shutdown_sent = True
        await self._exchange("shutdown", self.shutdown_timeout_s)

    @property
    def shutdown_sent(self) -> bool:
        return self._shutdown_sent

    @property
    def app_returned(self) -> bool:
        return self._task_group is not None and self._app_done.is_set()

    async def close(self, failure: BaseException | None = None) -> AppTimeout | None:
        """Wait (bounded) for the app to return, then end its task; an `AppTimeout` if it did not."""
        assert self._task_group is not None, "close() before start()"
        limit = self.shutdown_timeout_s
        if limit is None and failure is not None:
            limit = 0.0  # an app that failed gets no unbounded wait
        timeout: AppTimeout | None = None
        try:
            # Shielded when bounded: the app gets its time even if the caller was cancelled.
            with anyio.CancelScope(shield=limit is not None) as waiting:
                waiting.deadline = deadline(limit)
                await self._app_done.wait()
        finally:
            if not self._app_done.is_set():
                self._task_group.cancel_scope.cancel()
                if failure is None and limit is not None:
                    timeout = AppTimeout(
                        "the app did not return after answering lifespan.shutdown", limit, self.transcript
                    )
            try:
                await self._task_group.__aexit__(None, None, None)  # re-raises a cancellation of the caller
            finally:
                for stream in self._streams:
                    stream.close()
        return timeout

    async def _exchange(self, phase: str, timeout_s: float | None) -> None:
        await self._to_app.send({"type": f"lifespan.{phase}"})
        reply: Message | None = None
        with anyio.move_on_at(deadline(timeout_s)):
            try:
                reply = await self._from_app.receive()
            except anyio.EndOfStream:
                raise self._ended_without_answer(phase) from self.app_error
        if reply is None:
            assert timeout_s is not None
            raise AppTimeout(
                f"the app did not answer lifespan.{phase}", timeout_s, self.transcript, phase=phase
            )
        kind = reply.get("type")
        if kind == f"lifespan.{phase}.failed":
            raise LifespanFailed(phase, str(reply.get("message", "")), self.transcript)
        if kind != f"lifespan.{phase}.complete":
            raise ProtocolViolation(f"the app answered lifespan.{phase} with {kind!r}", phase=phase)

    def _ended_without_answer(self, phase: str) -> DriverError:
        """The one rule: raising before the first receive() is 'unsupported', after it a failure."""
        error = self.app_error
        if error is None:
            return ProtocolViolation(f"the app returned without answering lifespan.{phase}", phase=phase)
        if not self.received:
            return LifespanUnsupported(error, self.transcript)
        return LifespanFailed(phase, f"{type(error).__name__}: {error}", self.transcript, error=error)
