"""The cost of handing a forward pass to a thread and back, per event loop.

    python -m bench.hop [-n 5000]

A no-op run through `anyio.to_thread.run_sync` (a shared pool, what the handle
used before) and through `ModelHandle.run` on a model's own thread (a
`TorchModel` with `execution="thread"`: the hand-off every threaded pass pays),
then the Iris forward pass (one row) on the loop itself and on that thread,
alternating, in one process: the figures are comparable only within a run. The
last two show what a hand-off costs when the thread does torch work rather than
nothing.

Then the same hand-off with no asgi_host at all (`raw`): a thread fed by a `queue.SimpleQueue`
that wakes the loop with `call_soon_threadsafe`, given a no-op, ~30 us of pure Python, and the
Iris pass, each job also timed where it runs, on the thread. What a job costs beyond the no-op
round trip and its own time inline is the thread's, not the host's.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import statistics
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

from asgi_host import Host
from asgi_host.model import ModelHandle, TorchModel
from asgi_host.testing import LifespanDriver


def noop(module: Any = None) -> int:
    return 1


@asynccontextmanager
async def model_thread() -> AsyncIterator[ModelHandle]:
    """The handle of a model whose passes run on its own thread: `handle.run(fn)` is the hand-off."""
    from torch import nn

    host = Host(resources=[TorchModel(nn.Identity, None, execution="thread")])
    async with LifespanDriver(host) as lifespan:
        yield lifespan.state["model"]


def iris_pass() -> Callable[[], object]:
    import torch

    from bench.peers import load_iris

    module, row = load_iris(), [[5.1, 3.5, 1.4, 0.2]]

    def forward() -> object:
        with torch.inference_mode():
            return torch.softmax(module(torch.tensor(row)), dim=-1).tolist()

    return forward


async def measure(n: int, backend: str) -> None:
    limiter = anyio.CapacityLimiter(1)
    forward = iris_pass()

    async def on_the_loop() -> object:
        return forward()

    # The model's thread is ended and joined when the host shuts down, as at any shutdown: a daemon
    # thread that ran torch still alive at interpreter exit aborts the process.
    async with model_thread() as handle:
        ways: dict[str, Callable[[], Awaitable[object]]] = {
            "anyio.to_thread": lambda: anyio.to_thread.run_sync(noop, limiter=limiter),
            "model thread (ModelHandle.run)": lambda: handle.run(noop),
            "Iris pass on the loop (no hand-off)": on_the_loop,
            "model thread, Iris pass": lambda: handle.run(lambda module: forward()),
        }
        for _ in range(2):
            for name, hop in ways.items():
                for _ in range(200):
                    await hop()
                started = time.perf_counter()
                for _ in range(n):
                    await hop()
                print(f"| {backend} | {name} | {(time.perf_counter() - started) / n * 1e6:.1f} |", flush=True)


def python_work() -> int:
    """~30 us of pure Python: a loop's worth of bytecode, no torch."""
    end = time.perf_counter() + 30e-6
    spins = 0
    while time.perf_counter() < end:
        spins += 1
    return spins


async def measure_raw(n: int) -> None:
    """The hand-off with no asgi_host: one thread, a queue, `call_soon_threadsafe` back."""
    loop = asyncio.get_running_loop()
    jobs: queue.SimpleQueue[tuple[Callable[[], object], asyncio.Future[None]] | None] = queue.SimpleQueue()
    on_thread: dict[str, list[float]] = {}

    def serve() -> None:
        while (job := jobs.get()) is not None:
            fn, done = job
            started = time.perf_counter()
            fn()
            on_thread.setdefault(fn.__name__, []).append(time.perf_counter() - started)
            loop.call_soon_threadsafe(done.set_result, None)

    thread = threading.Thread(target=serve, name="raw-hop")
    thread.start()

    async def handed(fn: Callable[[], object]) -> None:
        done = loop.create_future()
        jobs.put((fn, done))
        await done

    forward = iris_pass()
    forward.__name__ = "iris_pass"
    inline: dict[str, list[float]] = {}
    timed: dict[str, list[float]] = {}
    round_trip: dict[str, list[float]] = {}
    try:
        for _ in range(3):
            for fn in (noop, python_work, forward):
                name = fn.__name__
                for _ in range(100):
                    await handed(fn)
                warm = len(on_thread.get(name, []))
                started = time.perf_counter()
                for _ in range(n):
                    await handed(fn)
                round_trip.setdefault(name, []).append((time.perf_counter() - started) / n)
                timed.setdefault(name, []).extend(on_thread[name][warm:])  # this round's, not its warm-up
                started = time.perf_counter()
                for _ in range(n):
                    fn()
                inline.setdefault(name, []).append((time.perf_counter() - started) / n)
    finally:
        jobs.put(None)
        thread.join()
    hop = statistics.median(round_trip["noop"])
    print(
        "\n| raw hand-off (no asgi_host), asyncio | round trip us | job on the loop us | "
        "job timed on the thread us | round trip - no-op - job on the loop |\n|---|---|---|---|---|"
    )
    for name in ("noop", "python_work", "iris_pass"):
        trip, there = statistics.median(round_trip[name]), statistics.median(inline[name])
        on_it = statistics.median(timed[name])
        extra = "" if name == "noop" else f"{(trip - hop - there) * 1e6:+.1f}"
        print(f"| {name} | {trip * 1e6:.1f} | {there * 1e6:.1f} | {on_it * 1e6:.1f} | {extra} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    print("| loop | hand-off | us per round trip |\n|---|---|---|")
    for backend in ("asyncio", "trio"):
        anyio.run(measure, args.n, backend, backend=backend)
    asyncio.run(measure_raw(args.n))


if __name__ == "__main__":
    main()
