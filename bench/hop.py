"""The cost of handing a forward pass to a thread and back, per event loop.

    python -m bench.hop [-n 5000]

A no-op run through `anyio.to_thread.run_sync` (a shared pool, what the handle
used before) and through `ModelHandle.run` on a model's own thread (a
`TorchModel` with `execution="thread"`: the hand-off every threaded pass pays),
then the Iris forward pass (one row) on the loop itself and on that thread,
alternating, in one process: the figures are comparable only within a run. The
last two show what a hand-off costs when the thread does torch work rather than
nothing.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    print("| loop | hand-off | us per round trip |\n|---|---|---|")
    for backend in ("asyncio", "trio"):
        anyio.run(measure, args.n, backend, backend=backend)


if __name__ == "__main__":
    main()
