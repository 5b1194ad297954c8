"""Swapping a model in place: time to swap, time to release the old one, memory during the swap.

    python -m bench.reload                    # Iris and MiniLM, 5 reloads each, idle and under load
    python -m bench.reload --models iris --reloads 3 --clients 0

For each model, served by its example app (`examples.app`, `examples.embed`) on the CPU through
the test kit's lifespan driver, this measures:

- ready: `lifespan.startup` to `.complete`, the cold load the reload is compared with (the
  reference, measured in the same run);
- swap: `host.reload(name)` to the swap (the new version built, loaded and warmed up beside the
  old one), the median of `--reloads`; and total: to the end of the call (old version drained,
  garbage collected and its thread joined);
- memory: the process's resident memory sampled every 2 ms during each reload, its peak above the
  level before the reload, in MiB and in copies of the weights file (one extra copy = 1.0); and
  its growth from before the first reload to after the last (what a leak would grow);
- under load (`--clients`): the same reloads while that many tasks call the model's endpoint
  without pause; every answer must be 200. p99 latency during the reloads, against p99 with the
  same clients for as long without reloads (the reference, right after).

Reloads alternate between the weights file and a copy of it in a temporary directory (same bytes,
other pages in the page cache), as new weights would be.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import torch

from asgi_host import Host
from asgi_host.testing import LifespanDriver


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def iris() -> tuple[Host, str, dict[str, Any]]:
    from examples.app import IrisConfig, make_app

    return make_app(IrisConfig(device="cpu", metrics=False)), "/predict", {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


def minilm() -> tuple[Host, str, dict[str, Any]]:
    from examples.embed import EmbedConfig, make_app

    return make_app(EmbedConfig(device="cpu")), "/embed", {"texts": ["a swap while serving"]}


MODELS: dict[str, Callable[[], tuple[Host, str, dict[str, Any]]]] = {"iris": iris, "minilm": minilm}


class Sampler:
    """The peak resident memory while it runs, sampled from a thread every 2 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> Sampler:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def percentile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else None


async def measure(name: str, reloads: int, clients: int) -> dict[str, Any]:
    # A first startup pays for imports and lazy initialisation: the reference is a second one,
    # in a warm process, as a reload is.
    async with LifespanDriver(MODELS[name]()[0], startup_timeout_s=600, shutdown_timeout_s=600):
        pass
    app, path, body = MODELS[name]()
    model = next(r for r in app.resources if r.name == "model")
    weights = getattr(model, "weights", "")
    size = os.path.getsize(weights)  # noqa: ASYNC240 - before serving
    # Reloads alternate between the file and a copy (other inode, other pages in the page cache),
    # as new weights would be.
    folder = tempfile.mkdtemp(prefix="bench-reload-")
    files = [shutil.copy(weights, folder), weights]
    driver = LifespanDriver(app, startup_timeout_s=600, shutdown_timeout_s=600)
    started = time.perf_counter()
    async with driver:
        ready_s = time.perf_counter() - started
        swaps: list[float] = []
        totals: list[float] = []
        peaks: list[float] = []
        during: list[float] = []
        without: list[float] = []
        statuses: list[int | None] = []

        async def client(latencies: list[float], stop: anyio.Event) -> None:
            while not stop.is_set():
                began = time.perf_counter()
                result = await driver.request("POST", path, json=body, timeout_s=60)
                latencies.append(time.perf_counter() - began)
                statuses.append(result.status)
                # In process, an inline pass never waits on anything: without this one client
                # would hold the loop (a server's socket reads yield to the loop for it).
                await anyio.lowlevel.checkpoint()

        async def reload_all(stop: anyio.Event) -> None:
            for i in range(reloads):
                gc.collect()
                before = rss_bytes()
                with Sampler() as sampler:
                    result = await app.reload("model", weights=files[i % 2])
                swaps.append(result.swap_s)
                totals.append(result.seconds)
                peaks.append(sampler.peak - before)
            stop.set()

        gc.collect()
        first = rss_bytes()
        stop = anyio.Event()
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client, during, stop)
            tg.start_soon(reload_all, stop)
        reloading_s = time.perf_counter() - began
        gc.collect()
        after = rss_bytes()
        if clients:
            # The reference: the same clients for as long, without reloads.
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                for _ in range(clients):
                    tg.start_soon(client, without, stop)
                await anyio.sleep(reloading_s)
                stop.set()
    shutil.rmtree(folder)
    if any(status != 200 for status in statuses):
        raise SystemExit(f"{name}: answers other than 200 during the reloads: {set(statuses)}")
    return {
        "model": name,
        "clients": clients,
        "weights_mib": size / 2**20,
        "ready_s": ready_s,
        "swap_s": statistics.median(swaps),
        "total_s": statistics.median(totals),
        "swap_vs_ready": statistics.median(swaps) / ready_s,
        "peak_mib": max(peaks) / 2**20,
        "peak_copies": max(peaks) / size,
        "growth_mib": (after - first) / 2**20,
        "requests": len(during),
        "p99_ms": percentile(during, 0.99),
        "p99_without_ms": percentile(without, 0.99),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["iris", "minilm"])
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16, help="0: idle only")
    args = parser.parse_args(argv)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    print(
        "| model | clients | weights MiB | ready s | swap s | total s | swap/ready | peak MiB (copies) | "
        "growth MiB | requests | p99 ms | p99 ms without reloads |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for clients in sorted({0, args.clients}):
            row = anyio.run(measure, name, args.reloads, clients)
            p99 = "" if row["p99_ms"] is None else f"{row['p99_ms']:.1f}"
            p99_without = "" if row["p99_without_ms"] is None else f"{row['p99_without_ms']:.1f}"
            cells = [
                name,
                str(clients),
                f"{row['weights_mib']:.2f}",
                f"{row['ready_s']:.3f}",
                f"{row['swap_s']:.3f}",
                f"{row['total_s']:.3f}",
                f"{row['swap_vs_ready']:.2f}",
                f"{row['peak_mib']:.1f} ({row['peak_copies']:.2f})",
                f"{row['growth_mib']:.1f}",
                str(row["requests"]),
                p99,
                p99_without,
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
