"""The cost of handing a forward pass to a thread and back, per event loop.

    python -m bench.hop [-n 5000]

A no-op run through `anyio.to_thread.run_sync` (a shared pool, what the handle
used before) and through `PassThreads` (the model's own thread, what
`ModelHandle.run` uses now), alternating, in one process: the figures are
comparable only within a run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import anyio

from asgi_host._worker import PassThreads


def noop() -> int:
    return 1


async def measure(n: int, backend: str) -> None:
    threads = PassThreads(1, "bench-hop")
    limiter = anyio.CapacityLimiter(1)
    ways: dict[str, Callable[[], Awaitable[int]]] = {
        "anyio.to_thread": lambda: anyio.to_thread.run_sync(noop, limiter=limiter),
        "PassThreads": lambda: threads.run(noop),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000)
    args = parser.parse_args()
    print("| loop | hand-off | us per round trip |\n|---|---|---|")
    for backend in ("asyncio", "trio"):
        anyio.run(measure, args.n, backend, backend=backend)


if __name__ == "__main__":
    main()
