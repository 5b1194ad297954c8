"""Micro-batching: concurrent requests coalesced into one forward pass.

Each request submits a list of rows; the batcher concatenates the rows of queued requests (up to
`max_batch_rows`, waiting at most `max_wait_s` after the first), calls the batch function once, and
hands each request its own slice of the outputs, in order. A request that finds the loop idle and
nobody queued (with `max_wait_s=0`) runs its pass in its own task. The queue is bounded in rows; when
full, the request is refused with 503 and a `Retry-After` estimated from the rows ahead and measured
pass times. A request whose client leaves while queued gives its rows back at once. The batch loop is
a resource: it starts after the model, and at shutdown it stops taking work, finishes what was
admitted (within `drain_timeout_s`) and only then lets the model go.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import anyio

from ._clock import deadline
from ._config import Batching
from ._errors import HTTPError, OutOfMemory
from ._http import Request
from ._inflight import InFlight
from ._request_ids import current_context, request_ids
from ._resources import Resource
from ._tracing import PassTimes, record_pass, timing_pass, traced
from ._versions import collecting_versions, record_versions
from ._view import HostView

__all__ = ["Batcher", "Batching"]

logger = logging.getLogger("asgi_host.batching")

T = TypeVar("T")
R = TypeVar("R")


def _shutting_down() -> HTTPError:
    return HTTPError(503, "the server is shutting down", headers=[("retry-after", "1")])


_BATCH_FAILED = "internal server error; the batch's forward pass failed, the traceback is in the server log"

BatchFn = Callable[[Mapping[str, Any], list[T]], Awaitable[Sequence[R]]]


class _Done:  # a lone request's `done`: its own task runs its pass, nobody waits on it (no Event)
    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


class _Entry(Generic[T, R]):
    __slots__ = (
        "cancelled",
        "done",
        "error",
        "queued",
        "request",
        "result",
        "rows",
        "times",
        "traced_at",
        "versions",
    )

    def __init__(self, rows: list[T], done: anyio.Event | _Done) -> None:
        self.rows = rows
        self.done = done
        self.result: list[R] | None = None
        self.error: HTTPError | None = None
        self.cancelled = False
        self.queued = True  # in the queue, its rows counted; False once taken into a batch or cancelled
        self.versions: list[str] = []  # of the model(s) its pass ran on (x-model-version)
        self.traced_at = time.time_ns() if traced() else 0  # when queued, for a traced request's spans
        self.times: PassTimes | None = None  # its pass's, when traced
        self.request = current_context()  # its id, for the batch loop's log lines


class Batcher(Resource, Generic[T, R]):
    """Coalesces concurrent `submit(rows)` calls into calls of `batch_fn(state, all_rows)`.

    `batch_fn` gets the host's state (to find the model) and must return one
    output per input row, in order. Add the batcher to the host's resources
    after the model it uses; an endpoint built with `batching=` carries its
    batcher in `endpoint.resources` and the host adds it after your resources.
    """

    def __init__(
        self,
        batch_fn: BatchFn[T, R],
        settings: Batching | None = None,
        *,
        name: str = "batcher",
    ) -> None:
        self.batch_fn = batch_fn
        self.settings = settings or Batching()
        self._queue: deque[_Entry[T, R]] = deque()  # may hold cancelled entries: skipped, rows uncounted
        self._cancelled_in_queue = 0
        self._batch: list[_Entry[T, R]] = []  # taken off the queue for the pass being filled or run
        self._alone: anyio.CancelScope | None = None  # a lone pass's, in its request's task (the loop waits)
        self._alone_ended: anyio.Event | None = None  # made by a shutdown that waits for a lone pass
        self._queued_rows = 0
        self._wakeup = anyio.Event()
        self._admitted = InFlight()  # requests submitted and not yet answered, for the drain
        self._running = False
        self._closing = False
        # Seconds and rows of recent passes, each sum decaying by 0.8 per pass: their ratio is the
        # time a row takes, weighted by rows (for Retry-After).
        self._recent_s = 0.0
        self._recent_rows = 0.0
        self._pass_began: float | None = None  # while a pass runs, and its rows
        self._pass_rows = 0
        self._state: Mapping[str, Any] = {}
        self.batches = 0
        self.batched_rows = 0
        self.oom_splits = 0  # batches retried in halves after running out of memory
        self.padded_rows = 0  # rows added to reach a bucket size (`Batching.bucket_rows`)
        self._sizes = self.settings.pass_sizes()
        self.observers: list[Callable[[int, float], None]] = []  # (rows, seconds) after each batch
        super().__init__(self._lifespan, name=name)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def closing(self) -> bool:
        """True from shutdown on: new work is refused, admitted work finishes."""
        return self._closing

    def retry_after_s(self) -> int:
        """Seconds until the queue would have drained: the running pass's rest (its rows take at least
        as long as they have so far), then the rows waiting, at recent passes' time per row."""
        row_s = self._recent_s / self._recent_rows if self._recent_rows else 0.0
        left_s = 0.0
        if self._pass_began is not None:
            running_s = anyio.current_time() - self._pass_began
            row_s = max(row_s, running_s / max(1, self._pass_rows))
            left_s = max(0.0, row_s * self._pass_rows - running_s)
        return max(1, math.ceil(left_s + self._queued_rows * row_s))

    async def submit(self, rows: list[T], request: Request | None = None) -> list[R]:
        """Queue `rows` and wait for their outputs.

        With `request`, a client that disconnects while queued is dropped from
        its batch (`ClientDisconnect`, nothing is answered).
        """
        if not self._running or self._closing:
            raise HTTPError(
                503,
                "the model is not accepting work (starting or shutting down)",
                headers=[("retry-after", "1")],
            )
        settings = self.settings
        if self._queued_rows and self._queued_rows + len(rows) > settings.max_queue_rows:
            raise HTTPError(
                503,
                f"the batch queue is full ({self._queued_rows} rows waiting, max_queue_rows="
                f"{settings.max_queue_rows}); retry later",
                headers=[("retry-after", str(self.retry_after_s()))],
            )
        with self._admitted:
            if settings.max_wait_s <= 0 and self._alone is None and not self._batch and self._head() is None:
                return await self._run_alone(rows)
            return await self._wait_for(rows, request)

    async def _run_alone(self, rows: list[T]) -> list[R]:
        """The loop idle and nobody queued: the pass runs in the request's task (no task group, no
        Event). Requests arriving meanwhile queue; the loop takes them once this pass has ended."""
        entry: _Entry[T, R] = _Entry(rows, _Done())
        entry.queued = False
        self._batch = [entry]
        self._pass_began, self._pass_rows = anyio.current_time(), len(rows)
        with anyio.CancelScope() as self._alone:  # cancelled by a shutdown past drain_timeout_s
            try:
                await self._pass([entry])
            finally:
                self._pass_began = None
                self._batch = []
                self._alone = None
                if self._queue:
                    self._wakeup.set()
                if self._alone_ended is not None:
                    self._alone_ended.set()  # a shutdown waits for it
        if not entry.done.is_set():
            entry.error = _shutting_down()
        return self._answer(entry, len(rows))

    async def _wait_for(self, rows: list[T], request: Request | None) -> list[R]:
        settings = self.settings
        done = anyio.Event()
        entry: _Entry[T, R] = _Entry(rows, done)
        self._queue.append(entry)
        self._queued_rows += len(rows)
        self._wakeup.set()
        try:
            with anyio.move_on_at(deadline(settings.timeout_s)):
                if request is None:
                    await done.wait()
                else:
                    await request.unless_client_leaves(
                        done.wait, "the client disconnected while its request was queued"
                    )
        finally:
            if not entry.done.is_set():
                self._cancel(entry)
        if not entry.done.is_set():
            raise HTTPError(504, f"no answer within timeout_s={settings.timeout_s}; the model is overloaded")
        return self._answer(entry, len(rows))

    def _answer(self, entry: _Entry[T, R], rows: int) -> list[R]:
        """A finished entry's outputs, or its error, in the request's own task."""
        record_versions(entry.versions)  # into this request's task, from the batch loop's
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        if entry.times is not None:  # in the request's task: children of its span
            record_pass(entry.traced_at, entry.times, rows, batched=True)
        return entry.result

    def _cancel(self, entry: _Entry[T, R]) -> None:
        """A request that will not wait for its answer: the loop skips it (a running batch's result
        for it is discarded), and if it is still queued its rows stop counting at once."""
        entry.cancelled = True
        if not entry.queued:
            return
        entry.queued = False
        self._queued_rows -= len(entry.rows)
        entry.rows = []  # nothing of it is needed any more
        self._cancelled_in_queue += 1
        if self._cancelled_in_queue > max(64, len(self._queue) // 2):
            # Many clients left during a long pass: drop their entries now (amortised O(1) each).
            self._queue = deque(e for e in self._queue if not e.cancelled)
            self._cancelled_in_queue = 0

    @asynccontextmanager
    async def _lifespan(self, host: HostView) -> AsyncIterator[None]:
        self._state = host.state  # holds what the resources entered before this one yielded
        self._closing = False
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._loop)
            self._running = True
            try:
                yield
            finally:
                self._closing = True
                await self._drain()
                self._running = False
                tg.cancel_scope.cancel()
                if self._alone is not None:  # the model goes only once the lone pass has ended
                    self._alone_ended = anyio.Event()
                    self._alone.cancel()
                    with anyio.CancelScope(shield=True):
                        await self._alone_ended.wait()
        self._fail_queued(_shutting_down())

    async def _drain(self) -> None:
        if not await self._admitted.wait_idle(self.settings.drain_timeout_s):
            logger.warning(
                "%d queued requests did not finish within drain_timeout_s=%s",
                self._admitted.count,
                self.settings.drain_timeout_s,
            )

    def _fail_queued(self, error: HTTPError) -> None:
        """Answer every request still waiting: queued, or in a batch the shutdown cut short."""
        for entry in self._batch:
            if not entry.done.is_set():
                entry.error = error
                entry.done.set()
        self._batch = []
        while (queued := self._take()) is not None:
            queued.error = error
            queued.done.set()

    def _head(self) -> _Entry[T, R] | None:
        """The first live entry of the queue (cancelled ones before it are dropped), or None."""
        queue = self._queue
        while queue and queue[0].cancelled:
            queue.popleft()
            self._cancelled_in_queue -= 1
        return queue[0] if queue else None

    def _take(self) -> _Entry[T, R] | None:
        """The first live entry, taken off the queue (its rows no longer count as waiting), or None."""
        entry = self._head()
        if entry is not None:
            self._queue.popleft()
            entry.queued = False
            self._queued_rows -= len(entry.rows)
        return entry

    async def _loop(self) -> None:
        settings = self.settings
        while True:
            # While a lone request's pass runs (in its own task) the loop starts none.
            while self._alone is not None or (first := self._take()) is None:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            self._batch = batch = [first]
            rows = len(first.rows)
            closes_at = anyio.current_time() + settings.max_wait_s
            while rows < settings.max_batch_rows:
                head = self._head()
                if head is None:
                    if anyio.current_time() >= closes_at:
                        break
                    self._wakeup = anyio.Event()
                    with anyio.move_on_after(closes_at - anyio.current_time()):
                        await self._wakeup.wait()
                    continue
                if rows + len(head.rows) > settings.max_batch_rows:
                    break
                self._take()
                batch.append(head)
                rows += len(head.rows)
            self._pass_began, self._pass_rows = anyio.current_time(), rows
            try:
                await self._pass(batch)
            finally:
                self._pass_began = None
            self._batch = []

    async def _pass(self, entries: list[_Entry[T, R]]) -> None:
        """One forward pass over the entries still waiting; on `OutOfMemory`, again in halves."""
        live = [entry for entry in entries if not entry.cancelled]
        if not live:
            return
        all_rows = [row for entry in live for row in entry.rows]
        real = len(all_rows)
        if self._sizes:  # padded to the next bucket with the last row again; its answers dropped
            all_rows += [all_rows[-1]] * (self.settings.padded(real) - real)
            self.padded_rows += len(all_rows) - real
        started = anyio.current_time()
        error: Exception | None = None
        times = PassTimes(len(all_rows), len(live)) if any(entry.traced_at for entry in live) else None
        try:
            with collecting_versions() as versions, timing_pass(times):
                outputs = await self.batch_fn(self._state, all_rows)
            for entry in live:
                entry.versions = versions
            if times is not None:
                times.ended = time.time_ns()
                for entry in live:
                    entry.times = times
            if len(outputs) != len(all_rows):
                raise RuntimeError(f"batch function returned {len(outputs)} outputs for {len(all_rows)} rows")
        except Exception as exc:
            error = exc
        finally:
            elapsed = anyio.current_time() - started
            self._recent_s = 0.8 * self._recent_s + elapsed
            self._recent_rows = 0.8 * self._recent_rows + real
            self.batches += 1
            self.batched_rows += real
            for observe in self.observers:
                observe(real, elapsed)
        if isinstance(error, OutOfMemory):
            if len(live) == 1:
                live[0].error = error.for_rows(len(live[0].rows))
                live[0].done.set()
                return
            # Halves by request, never splitting one: each request's rows stay in one pass,
            # so every answer is what an unsplit pass would give.
            self.oom_splits += 1
            half = len(live) // 2
            logger.warning(
                "out of memory in a pass of %d rows from %d requests (%s); retrying as %d + %d requests",
                len(all_rows),
                len(live),
                request_ids(entry.request for entry in live),
                half,
                len(live) - half,
            )
            await self._pass(live[:half])
            await self._pass(live[half:])
            return
        if error is not None:
            logger.error(
                "batch of %d rows from %d requests (%s) failed",
                len(all_rows),
                len(live),
                request_ids(entry.request for entry in live),
                exc_info=error,
            )
            for entry in live:
                # A fresh error each: one exception raised in many tasks would pile up tracebacks.
                entry.error = error if isinstance(error, HTTPError) else HTTPError(500, _BATCH_FAILED)
                entry.done.set()
            return
        start = 0  # the padding's answers, after `real`, are never handed out
        for entry in live:
            entry.result = list(outputs[start : start + len(entry.rows)])
            start += len(entry.rows)
            entry.done.set()
