"""The cost of handing a forward pass to a thread and back, per event loop.

    python -m bench.hop [-n 5000]

A no-op run through `anyio.to_thread.run_sync` (a shared pool, what the handle
used before) and through `PassThreads` (the model's own thread, what
`ModelHandle.run` uses now), then the Iris forward pass (one row) on the loop
itself and through `PassThreads`, alternating, in one process: the figures are
comparable only within a run. The last two show what a hand-off costs when the
thread does torch work rather than nothing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import anyio

from asgi_host._worker import PassThreads


def noop() -> int:
    return 1


def iris_pass() -> Callable[[], object]:
    import torch

    from bench.peers import load_iris

    module, row = load_iris(), [[5.1, 3.5, 1.4, 0.2]]

    def forward() -> object:
        with torch.inference_mode():
            return torch.softmax(module(torch.tensor(row)), dim=-1).tolist()

    return forward


async def measure(n: int, backend: str) -> None:
    threads = PassThreads(1, "bench-hop")
    limiter = anyio.CapacityLimiter(1)
    forward = iris_pass()

    async def on_the_loop() -> object:
        return forward()

    ways: dict[str, Callable[[], Awaitable[object]]] = {
        "anyio.to_thread": lambda: anyio.to_thread.run_sync(noop, limiter=limiter),
        "PassThreads": lambda: threads.run(noop),
        "Iris pass on the loop (no hand-off)": on_the_loop,
        "PassThreads, Iris pass": lambda: threads.run(forward),
    }
    try:
        for _ in range(2):
            for name, hop in ways.items():
                for _ in range(200):
                    await hop()
                started = time.perf_counter()
                for _ in range(n):
                    await hop()
                print(f"| {backend} | {name} | {(time.perf_counter() - started) / n * 1e6:.1f} |", flush=True)
    finally:
        threads.stop()
        # Joined, as TorchModel joins its thread: a daemon thread that ran torch still alive at
        # interpreter exit aborts the process ("terminate called without an active exception").
        threads.join(10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    print("| loop | hand-off | us per round trip |\n|---|---|---|")
    for backend in ("asyncio", "trio"):
        anyio.run(measure, args.n, backend, backend=backend)


if __name__ == "__main__":
    main()
