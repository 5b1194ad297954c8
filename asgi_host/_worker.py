"""Dedicated worker threads for a model's forward passes, results completed on the event loop.

`anyio.to_thread.run_sync` hands each call to whichever thread of a shared pool
is free. A model wants more than that: the thread that loaded and warmed it up
(and, with `torch.compile(mode="reduce-overhead")`, recorded its CUDA graphs,
which live in that thread's state) should run every pass, and no other work
should queue behind it. `PassThreads` owns `count` threads fed by one queue; a
finished job wakes its waiter with the loop's own thread-safe call
(`call_soon_threadsafe` on asyncio, `TrioToken.run_sync_soon` on trio), so a
hand-off costs one queue put and one loop wake-up.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["PassThreads"]

T = TypeVar("T")

_Job = Callable[[], None]


class PassThreads:
    """`count` daemon threads that run the callables given to `run`, in order of arrival."""

    def __init__(self, count: int, name: str) -> None:
        if count < 1:
            raise ValueError(f"PassThreads needs at least one thread, got {count}")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(count)
        ]
        self._stopped = False
        for thread in self._threads:
            thread.start()

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def idents(self) -> set[int | None]:
        """The threads' identifiers (for tests and logs)."""
        return {thread.ident for thread in self._threads}

    async def run(self, fn: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
        """Run `fn(*args)` on one of the threads and return its result (or raise its exception).

        The wait is shielded from cancellation unless `abandon_on_cancel`: a
        caller that is cancelled still waits for the thread to finish, so
        nothing it hands the thread is released under it.
        """
        if self._stopped:
            raise RuntimeError("these worker threads have been stopped")
        native: Any = anyio.lowlevel.current_token().native_token
        notify: Callable[[Callable[[], object]], object] = (
            native.call_soon_threadsafe if hasattr(native, "call_soon_threadsafe") else native.run_sync_soon
        )
        done = anyio.Event()
        outcome: list[tuple[bool, Any]] = []

        def job() -> None:
            try:
                outcome.append((True, fn(*args)))
            except BaseException as exc:
                outcome.append((False, exc))
            # RuntimeError: the event loop has closed meanwhile (an abandoned job): nobody waits.
            with contextlib.suppress(RuntimeError):
                notify(done.set)

        self._jobs.put(job)
        if abandon_on_cancel:
            await done.wait()
        else:
            with anyio.CancelScope(shield=True):
                await done.wait()
        ok, value = outcome[0]
        if ok:
            result: T = value
            return result
        raise value

    def stop(self) -> None:
        """Let each thread exit after the jobs queued before this call. Idempotent; does not wait."""
        if not self._stopped:
            self._stopped = True
            for _ in self._threads:
                self._jobs.put(None)

    def join(self, timeout_s: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout_s)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
