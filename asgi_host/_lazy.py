"""Lazy start: a host with no lifespan events starts its resources on its first request.

The start must outlive the request that triggered it, and anyio has no
detached tasks (every task belongs to a task group), so `spawn_detached` is
the one place the package speaks to the event loop directly: an asyncio task,
or a trio system task. Both are cancelled when their event loop shuts down.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import anyio

from ._clock import deadline
from ._errors import HTTPError
from ._health import Readiness, refusal

__all__ = ["LazyStart", "spawn_detached"]

logger = logging.getLogger("asgi_host")


class LazyStart:
    """Runs `lifespan()` once, from the first request, until `aclose()` or the loop ends.

    `mode="wait"` holds requests until the start settles (bounded by
    `timeout_s`); `"unavailable"` answers 503 at once while it runs.
    """

    def __init__(
        self,
        mode: Literal["wait", "unavailable"],
        lifespan: Callable[[], AbstractAsyncContextManager[Any]],
        readiness: Callable[[], Readiness],
        timeout_s: float | None,
    ) -> None:
        self.mode = mode
        self._lifespan = lifespan
        self._readiness = readiness
        self._timeout_s = timeout_s
        self._scope: anyio.CancelScope | None = None
        self._settled = anyio.Event()  # started, or failed to
        self._stop = anyio.Event()
        self._done = anyio.Event()

    async def admit(self) -> HTTPError | None:
        """For a request that found the host idle: start it once, then wait or refuse."""
        if self._scope is None:
            # Set before any await: concurrent first requests start it exactly once.
            self._scope = anyio.CancelScope()
            spawn_detached(self._run)
        if self.mode == "wait":
            with anyio.move_on_at(deadline(self._timeout_s)):
                await self._settled.wait()
        state = self._readiness()
        if state.status == "not started":
            return HTTPError(503, "the host is starting", headers=[("retry-after", "1")])
        return refusal(state)

    async def _run(self) -> None:
        assert self._scope is not None
        try:
            with self._scope:  # cancelled only when the event loop shuts down
                async with self._lifespan():
                    self._settled.set()
                    await self._stop.wait()  # aclose(): a clean shutdown
        except Exception:
            logger.exception("lazy start of the host failed")  # readiness reports it too
        finally:
            self._settled.set()
            self._done.set()

    async def aclose(self) -> None:
        """Shut down what a lazy start brought up (no-op if nothing started). Idempotent."""
        if self._scope is not None:
            self._stop.set()
            await self._done.wait()


def spawn_detached(fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Start `fn` in a task that outlives the current request.

    anyio has no detached tasks (every task belongs to a task group), and a
    lazy start must outlive the request that triggered it, so this is the one
    place that speaks to the event loop directly. The task ends at `aclose()`,
    or is cancelled when the event loop shuts down, which releases the resources.
    """
    if _in_trio():
        import trio

        trio.lowlevel.spawn_system_task(fn)
        return
    task = asyncio.get_running_loop().create_task(fn())
    _DETACHED.add(task)  # asyncio keeps only weak references to tasks
    task.add_done_callback(_DETACHED.discard)


def _in_trio() -> bool:
    trio: Any = sys.modules.get("trio")
    if trio is None:
        return False
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


_DETACHED: set[asyncio.Task[None]] = set()
