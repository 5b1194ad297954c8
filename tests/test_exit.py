"""A load its caller gave up on (a startup past its timeout) stops at its next stage, and the process
exits with its own code after the model's thread is done, never by a signal: a daemon thread still
in torch's C++ code when the interpreter finalized aborted it (SIGABRT, or SIGSEGV)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import weakref
from pathlib import Path

import anyio
import pytest

from asgi_host import _worker
from asgi_host._worker import PassThreads, abandoned
from tests._server import ROOT
from tests._wait import until

pytestmark = pytest.mark.anyio


async def test_a_job_whose_caller_gives_up_sees_abandoned() -> None:
    threads = PassThreads(1, "test-abandon")
    started, release = threading.Event(), threading.Event()
    seen: list[bool] = []

    def work() -> None:
        seen.append(abandoned())
        started.set()
        release.wait(10)
        seen.append(abandoned())

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: threads.run(work, abandon_on_cancel=True))
        await anyio.to_thread.run_sync(started.wait, 10)
        tg.cancel_scope.cancel()  # the caller gives up; the job runs on
    release.set()
    threads.stop()
    await anyio.to_thread.run_sync(threads.join, 10)
    assert seen == [False, True]
    assert abandoned() is False  # off a model's thread


def _exit_in_a_thread(threads: PassThreads) -> threading.Thread:
    """The exit's wait for `threads`, run where a test can bound it."""
    exiting = threading.Thread(target=_worker._finish_running_jobs, args=([threads],), name="exiting")
    exiting.start()
    return exiting


def test_at_exit_running_jobs_are_waited_for_and_queued_ones_skipped() -> None:
    threads = PassThreads(1, "test-exit-wait")
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> None:
        started.set()
        release.wait(10)
        ran.append("first")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: threads.run(first, abandon_on_cancel=True))
            tg.start_soon(lambda: threads.run(lambda: ran.append("queued"), abandon_on_cancel=True))
            await anyio.to_thread.run_sync(started.wait, 10)
            tg.cancel_scope.cancel()

    anyio.run(main)
    exiting = _exit_in_a_thread(threads)
    exiting.join(0.2)
    assert exiting.is_alive()  # waiting for the job that is running
    release.set()
    exiting.join(10)
    assert not exiting.is_alive()
    assert ran == ["first"]  # the queued job never started
    assert not any(thread.is_alive() for thread in threads._threads)  # and every thread was joined


def test_at_exit_a_queued_job_s_caller_hears_it_was_not_run() -> None:
    threads = PassThreads(1, "test-exit-queued")
    started, release = threading.Event(), threading.Event()

    def first() -> str:
        started.set()
        release.wait(10)
        return "first"

    heard: list[str] = []

    async def queued() -> None:
        try:
            await threads.run(lambda: "queued")
        except RuntimeError as exc:
            heard.append(str(exc))

    async def main() -> None:
        with anyio.fail_after(10):  # a caller left waiting is a failure, not a hang
            await serve()

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(threads.run, first)
            await anyio.to_thread.run_sync(started.wait, 10)
            tg.start_soon(queued)
            await anyio.sleep(0.05)  # the second job is in the queue
            exiting = _exit_in_a_thread(threads)
            await until(lambda: threads.stopped, timeout_s=1)  # the exit has marked the queue skipped
            release.set()
            await anyio.to_thread.run_sync(exiting.join, 10)
            assert not exiting.is_alive()

    anyio.run(main)
    assert heard == ["the interpreter is exiting: the job was not run"]
    with pytest.raises(RuntimeError, match="stopped"):
        anyio.run(threads.run, lambda: None)


def test_at_exit_every_thread_ends_and_what_an_abandoned_job_left_is_freed_first() -> None:
    # An abandoned load's model was freed by the thread that loaded it as that thread ended, or by
    # whichever thread ran the next collection (the cancelled caller's traceback holds it in a
    # cycle): when that happened while the interpreter finalized, freeing the tensors aborted the
    # process (about one exit in ten, "terminate called without an active exception"). So at exit
    # every thread is joined, and the cycle is collected on the exiting thread.
    threads = PassThreads(2, "test-exit-ends")
    started, proceed = threading.Event(), threading.Event()
    freed_on: list[str] = []

    class Model:
        def __del__(self) -> None:
            freed_on.append(threading.current_thread().name)

    def load() -> Model:
        started.set()
        proceed.wait(10)
        return Model()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: threads.run(load, abandon_on_cancel=True))
            await anyio.to_thread.run_sync(started.wait, 10)
            tg.cancel_scope.cancel()  # the caller gives up; the load runs on

    gc.disable()  # no collection but the exit's own decides where the model is freed
    try:
        anyio.run(main)
        assert all(thread.is_alive() for thread in threads._threads)
        exiting = _exit_in_a_thread(threads)
        exiting.join(0.05)
        assert exiting.is_alive()  # waiting for the load
        proceed.set()
        exiting.join(10)
        assert not exiting.is_alive()
    finally:
        gc.enable()
    assert not any(thread.is_alive() for thread in threads._threads)
    assert freed_on == ["exiting"]


async def test_a_finished_job_s_result_is_not_held_by_the_idle_thread() -> None:
    threads = PassThreads(1, "test-exit-held")

    class Model:
        pass

    model = await threads.run(Model)
    held = weakref.ref(model)
    del model
    # The thread lets go of the job just after handing the result over.
    await until(lambda: held() is None, timeout_s=1)
    threads.stop()
    await anyio.to_thread.run_sync(threads.join, 10)


def test_no_model_threads_start_once_the_exit_has_waited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_worker, "_exited", True)
    with pytest.raises(RuntimeError, match="the interpreter is exiting"):
        PassThreads(1, "test-exit-late")


SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import anyio
    import torch

    from asgi_host import Host
    from asgi_host.model import TorchModel
    from asgi_host.testing import LifespanDriver
    from examples.iris import IrisMLP, WEIGHTS

    compiling = Path(sys.argv[1])

    def warmup(module, rows=None):
        if type(module).__name__ == "OptimizedModule":
            compiling.touch()  # the compile runs inside the call below
        module(torch.zeros(rows or 1, 4))

    async def main():
        host = Host(resources=[TorchModel(IrisMLP, WEIGHTS, device="cpu", warmup=warmup, compile=True)])
        async with anyio.create_task_group() as tg:
            async def start():
                async with LifespanDriver(host, startup_timeout_s=600):
                    pass

            tg.start_soon(start)
            while not compiling.exists():
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()  # the startup given up on, mid-compile

    anyio.run(main)
    sys.exit(3)  # the exit code the process must end with
    """
)


@pytest.mark.server
def test_a_startup_given_up_mid_compile_exits_with_its_own_code(tmp_path: Path) -> None:
    script = tmp_path / "abandon.py"
    script.write_text(SCRIPT)
    env = {
        "PYTHONPATH": str(ROOT),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),  # cold: the compile takes seconds
    }
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "compiling")],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert (tmp_path / "compiling").exists(), result.stderr
    assert result.returncode == 3, result.stderr[-3000:]
    assert "waiting for a model's thread to finish what it is doing before exiting" in result.stderr
