"""Dedicated worker threads for a model's forward passes, results completed on the event loop.

`anyio.to_thread.run_sync` hands each call to whichever thread of a shared pool
is free. A model wants more than that: the thread that loaded and warmed it up
(and, with `torch.compile(mode="reduce-overhead")`, recorded its CUDA graphs,
which live in that thread's state) should run every pass, and no other work
should queue behind it. `PassThreads` owns `count` threads fed by one queue; a
finished job wakes its waiter with the loop's own thread-safe call
(`call_soon_threadsafe` on asyncio, `TrioToken.run_sync_soon` on trio), so a
hand-off costs one queue put and one loop wake-up.

A job still queued when its caller is cancelled (`withdraw_on_cancel`: the client of the request
it was for has left) is withdrawn: the thread skips it. One that has started runs to its end, and
its caller waits for it: the thread is using what the caller handed it.

A job its caller gave up on (`abandon_on_cancel`: a load past the startup timeout) runs on, but
`abandoned()` tells it so, and a load stops at its next stage. The process never exits while such
a job runs: the threads are daemons, and a daemon thread still inside torch's C++ code when the
interpreter finalizes aborts the process (SIGABRT, "terminate called without an active
exception", or a SIGSEGV) instead of exiting with the server's code. So at exit, before
finalizing, the interpreter waits for every job that is running, then ends every thread and joins
it (`_finish_running_jobs`): a thread that ended while the interpreter finalizes would free its
last job's tensors there, which aborts the process the same way. Jobs still queued then are not
run; their callers get a `RuntimeError`, and no new threads start.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["PassThreads", "abandoned"]

T = TypeVar("T")

_Job = Callable[[], None]

logger = logging.getLogger("asgi_host.model")

_live: weakref.WeakSet[PassThreads] = weakref.WeakSet()
_current = threading.local()  # on a model's thread: the abandoned flag of the job it runs
_exited = False  # the exit's wait has run: no new threads
_gave_up = False  # some caller gave up on its job: what the job left may sit in a reference cycle


def abandoned() -> bool:
    """On a model's thread: whether the caller of the job running gave up waiting for it (a startup
    past its timeout), or the process is exiting. False anywhere else."""
    flag: threading.Event | None = getattr(_current, "abandoned", None)
    return flag is not None and flag.is_set()


def _finish_running_jobs(live: Iterable[PassThreads] | None = None) -> None:
    """At interpreter exit (before finalization): skip the jobs still queued, mark every running job
    abandoned and wait for each, then end every thread and join it (of `live`, default every
    `PassThreads` of the process).

    The join matters as much as the wait: a thread that ends frees what its last job left (an
    abandoned load's model), and a tensor freed on a thread other than the main one while the
    interpreter finalizes aborts the process (torch gives up the GIL to free it and cannot take it
    back). For the same reason, once a caller has given up on a job, a collection on this (the
    main) thread frees what the job left in a reference cycle (the cancelled caller's traceback),
    rather than one that another thread's allocation might run during finalization."""
    global _exited
    if live is None:
        _exited = True
    running: list[tuple[threading.Event, threading.Event]] = []
    every = list(_live if live is None else live)
    for threads in every:
        with threads._lock:
            threads._exiting = True  # jobs still queued are skipped
            running += threads.running.values()
        threads.stop()
    for flag, done in running:
        flag.set()
        if not done.is_set():
            logger.warning("waiting for a model's thread to finish what it is doing before exiting")
            done.wait()
    for threads in every:
        threads.join()
    if _gave_up:
        gc.collect()


# Run by `threading._shutdown`, before non-daemon threads are joined and before the interpreter
# finalizes (what `concurrent.futures` uses for the same reason).
threading._register_atexit(_finish_running_jobs)  # type: ignore[attr-defined]


class PassThreads:
    """`count` daemon threads that run the callables given to `run`, in order of arrival."""

    def __init__(self, count: int, name: str) -> None:
        if count < 1:
            raise ValueError(f"PassThreads needs at least one thread, got {count}")
        if _exited:
            raise RuntimeError("the interpreter is exiting: no new model threads")
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{i}", daemon=True) for i in range(count)
        ]
        self._stopped = False
        self._pending = 0  # jobs handed over whose caller has not resumed yet
        # The jobs running now, by thread: (abandoned flag, finished event), for the exit.
        self.running: dict[int, tuple[threading.Event, threading.Event]] = {}
        self._lock = threading.Lock()
        self._exiting = False
        for thread in self._threads:
            thread.start()
        _live.add(self)  # once every thread runs: the exit joins them

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def idents(self) -> set[int | None]:
        """The threads' identifiers (for tests and logs)."""
        return {thread.ident for thread in self._threads}

    @property
    def busy(self) -> bool:
        """Every thread has a job (as the loop knows it): one handed over now would wait in the queue."""
        return self._pending >= len(self._threads)

    async def run(
        self,
        fn: Callable[..., T],
        *args: Any,
        abandon_on_cancel: bool = False,
        withdraw_on_cancel: bool = False,
    ) -> T:
        """Run `fn(*args)` on one of the threads and return its result (or raise its exception).

        `fn` runs in a copy of the caller's context (its request's id reaches the thread's log
        lines). The wait is shielded from cancellation unless `abandon_on_cancel`: a caller that is
        cancelled still waits for the thread to finish, so nothing it hands the thread is released
        under it. With `withdraw_on_cancel`, a caller cancelled while its job is still queued takes
        it back instead: the thread skips it and the cancellation propagates at once.
        """
        global _gave_up
        if self._stopped:
            raise RuntimeError("these worker threads have been stopped")
        native: Any = anyio.lowlevel.current_token().native_token
        notify: Callable[[Callable[[], object]], object] = (
            native.call_soon_threadsafe if hasattr(native, "call_soon_threadsafe") else native.run_sync_soon
        )
        done = anyio.Event()
        outcome: list[tuple[bool, Any]] = []
        # One item, popped by whoever comes first (list.pop is atomic): the thread, which then runs
        # the job, or a caller withdrawing it.
        claim = [True]
        context = contextvars.copy_context()
        gave_up, finished = threading.Event(), threading.Event()

        def job() -> None:
            ident = threading.get_ident()
            with self._lock:
                try:
                    claim.pop()
                except IndexError:
                    return  # withdrawn while queued
                exiting = self._exiting
                if not exiting:
                    self.running[ident] = (gave_up, finished)
            if exiting:  # no new work on this thread; its caller hears why
                outcome.append((False, RuntimeError("the interpreter is exiting: the job was not run")))
            else:
                _current.abandoned = gave_up
                try:
                    outcome.append((True, context.run(fn, *args)))
                except BaseException as exc:
                    outcome.append((False, exc))
                finally:
                    _current.abandoned = None
                    with self._lock:
                        del self.running[ident]
                    finished.set()
            # RuntimeError: the event loop has closed meanwhile (an abandoned job): nobody waits.
            with contextlib.suppress(RuntimeError):
                notify(done.set)

        self._jobs.put(job)
        self._pending += 1
        try:
            if abandon_on_cancel:
                try:
                    await done.wait()
                except BaseException:
                    _gave_up = True
                    gave_up.set()  # the job sees `abandoned()` and stops where it can
                    raise
            elif withdraw_on_cancel:
                await _wait_or_withdraw(done, claim)
            else:
                with anyio.CancelScope(shield=True):
                    await done.wait()
        finally:
            self._pending -= 1
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
            del job  # nothing of a finished job (its result: a model) is held while the thread waits


async def _wait_or_withdraw(done: anyio.Event, claim: list[bool]) -> None:
    """Wait for a job; cancelled meanwhile, withdraw it if it has not started, else wait it out."""
    try:
        await done.wait()
    except anyio.get_cancelled_exc_class():
        try:
            claim.pop()
        except IndexError:  # the thread took it first: it is running, wait for its end
            with anyio.CancelScope(shield=True):
                await done.wait()
        raise
