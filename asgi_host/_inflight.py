"""A count of work admitted and not yet finished, and a wait for the count to reach zero.

The host counts requests, a `ModelHandle` its forward passes, a `Batcher` the
requests it has queued: each must let shutdown wait until its count is zero.
"""

from __future__ import annotations

from types import TracebackType

import anyio

from ._clock import deadline

__all__ = ["InFlight"]


class InFlight:
    """`with in_flight:` around each piece of work; `await in_flight.wait_idle()` to drain.

    The event behind `wait_idle` is made only when someone waits, so counting
    costs two integer updates on the request path.
    """

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: anyio.Event | None = None

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.count -= 1
        if not self.count and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until nothing is in flight, at most `timeout_s` (None: no limit); True if idle."""
        with anyio.move_on_at(deadline(timeout_s)):
            while self.count:
                if self._idle is None:
                    self._idle = anyio.Event()
                await self._idle.wait()
        return not self.count
