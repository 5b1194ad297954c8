"""Body-read deadlines on asyncio that share their timers: one per tick, not one per request.

A request whose body has not arrived when the host first asks for it (under granian, every
request: its `receive()` is a future a Rust thread completes) waits under `body_timeout_s`.
`asyncio.timeout` arms a timer per request, and its enter, its exit and the timer's cancelling
cost as much as the rest of the host's work on a request. Here a wait joins the set of the
tick its deadline falls in (ticks of `TICK_S`); the first wait of a tick arms that tick's one
timer, which cancels whatever is still waiting when it fires. A deadline is kept to within one
tick after it (never before), and a wait costs a set insert and a discard.

As with `asyncio.timeout`, the expiry cancels the waiting task; the waiter turns that cancel, and
only that one (`Task.uncancel`), into its timeout. One registry per event loop, kept per thread.

No deadline at all for a body that has arrived: the request steps the server's `receive()` once by
hand, and only when that step suspends does it wait, under a deadline, for `Suspended`, the rest.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
from collections.abc import Coroutine, Generator
from types import TracebackType
from typing import Any

from ._types import Message

__all__ = ["TICK_S", "Suspended", "deadline_after"]

TICK_S = 0.05


class _Wait:
    """One wait under a deadline, from its making to `done()`; or `async with` it."""

    __slots__ = ("_cancelling", "_registry", "_task", "_tick", "expired")

    def __init__(self, registry: _Registry, timeout_s: float) -> None:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a body deadline needs a task")
        self._registry = registry
        self._task = task
        self._cancelling = task.cancelling()
        self.expired = False
        self._tick = tick = math.ceil((registry.loop.time() + timeout_s) / TICK_S)
        waiting = registry.ticks.get(tick)
        if waiting is None:
            waiting = registry.ticks[tick] = set()
            registry.loop.call_at(tick * TICK_S, registry.fire, tick, context=registry.context)
        waiting.add(self)

    def done(self, error: BaseException | None = None) -> bool:
        """Leave the tick (once); True when `error` is this wait's own cancel: its deadline passed.

        Expired, the wait takes its cancel back (always), and answers it with a timeout only when
        nobody else also cancelled the task.
        """
        waiting = self._registry.ticks.get(self._tick)
        if waiting is not None:
            waiting.discard(self)
        expired = self.expired and self._task.uncancel() <= self._cancelling
        return expired and isinstance(error, asyncio.CancelledError)

    async def __aenter__(self) -> _Wait:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self.done(exc):
            raise TimeoutError from exc
        return False

    def cancel(self) -> None:
        self.expired = True
        self._task.cancel()


class _Registry:
    """The ticks of one event loop: tick number -> the waits whose deadlines fall in it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ticks: dict[int, set[_Wait]] = {}
        # The ticks' timers run in a context of their own: a copy of the request's that armed one
        # would keep its context variables (its request id...) alive until the tick, seconds on.
        self.context = contextvars.Context()

    def fire(self, tick: int) -> None:
        for wait in self.ticks.pop(tick, ()):
            wait.cancel()


_local = threading.local()


def deadline_after(timeout_s: float) -> _Wait:
    """A wait that `done()` ends; `async with deadline_after(s):` raises `TimeoutError` when the
    block outlives `s` seconds (at most a tick later). On asyncio, in a task."""
    loop = asyncio.get_running_loop()
    registry: _Registry | None = getattr(_local, "registry", None)
    if registry is None or registry.loop is not loop:
        registry = _local.registry = _Registry(loop)
    return _Wait(registry, timeout_s)


class Suspended:
    """A coroutine stepped once by hand that suspended: awaiting this runs it to its end.

    What it yielded (the event loop's wait, an asyncio future) is passed up
    first; then values and exceptions (a cancellation, a timeout) go back and
    forth as `await` would have passed them.
    """

    __slots__ = ("_coroutine", "_yielded")

    def __init__(self, coroutine: Coroutine[Any, Any, Message], yielded: Any) -> None:
        self._coroutine = coroutine
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Message]:
        coroutine, yielded = self._coroutine, self._yielded
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration as done:
                    thrown_result: Message = done.value
                    return thrown_result
            else:
                try:
                    yielded = coroutine.send(sent)
                except StopIteration as done:
                    result: Message = done.value
                    return result
