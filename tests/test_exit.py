"""A load its caller gave up on (a startup past its timeout) stops at its next stage, and the process
exits with its own code after the model's thread is done, never by a signal: a daemon thread still
in torch's C++ code when the interpreter finalized aborted it (SIGABRT, or SIGSEGV)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anyio
import pytest

from asgi_host import _worker
from asgi_host._worker import PassThreads, abandoned
from tests._server import ROOT

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

    with anyio.move_on_after(0.05):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: threads.run(work, abandon_on_cancel=True))
            await anyio.to_thread.run_sync(started.wait, 10)
            tg.cancel_scope.cancel()  # the caller gives up; the job runs on
    release.set()
    threads.stop()
    await anyio.to_thread.run_sync(threads.join, 10)
    assert seen == [False, True]
    assert abandoned() is False  # off a model's thread


def test_at_exit_running_jobs_are_waited_for_and_queued_ones_skipped() -> None:
    threads = PassThreads(1, "test-exit")
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
    exiting = threading.Thread(target=_worker._finish_running_jobs, args=([threads],))
    exiting.start()
    exiting.join(0.2)
    assert exiting.is_alive()  # waiting for the job that is running
    release.set()
    exiting.join(10)
    assert not exiting.is_alive()
    assert ran == ["first"]  # the queued job never started
    assert not [t for t in threading.enumerate() if t.name.startswith("test-exit")]  # joined


def test_at_exit_every_thread_ends_before_finalizing() -> None:
    # An abandoned load's model is freed by the thread that loaded it as that thread ends: when it
    # ended while the interpreter finalized, freeing the tensors aborted the process (about one
    # exit in ten, "terminate called without an active exception"). So every thread is joined.
    threads = PassThreads(2, "test-exit-ends")
    started = threading.Event()

    def load() -> None:
        started.set()
        time.sleep(0.2)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: threads.run(load, abandon_on_cancel=True))
            await anyio.to_thread.run_sync(started.wait, 10)
            tg.cancel_scope.cancel()  # the caller gives up; the load runs on

    anyio.run(main)
    assert len([t for t in threading.enumerate() if t.name.startswith("test-exit-ends")]) == 2
    _worker._finish_running_jobs([threads])
    assert not [t for t in threading.enumerate() if t.name.startswith("test-exit-ends")]


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
