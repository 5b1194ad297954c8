"""The model pool (`ModelPool`) against its targets, each read against a reference run beside it.

    python -m bench.pool                              # every part, CPU
    python -m bench.pool --cycles 100 -n 2000 --no-http

1. A request to a resident model: v2 infer of one Iris row to a pooled `TorchModel`, against the
   same request to the same `TorchModel` served alone (the reference), in process (raw ASGI, as
   `bench.predict`), apps taking turns over ten rounds, best round each; passes inline (Iris's
   default) and on the model's thread. Also the bare call: `PooledModel.run` against
   `ModelHandle.run` of a no-op.
2. 16 clients round-robin over `examples.pool`'s eight 16 MiB models in its 48 MiB budget (three
   resident), in process on asyncio and trio and under hypercorn: failures, loads of one model
   running at once (each model's `load` counted), evictions of a model in use (each release
   checks the model's references), against the same clients over three models (all resident,
   no eviction: the reference).
3. Memory back: all eight loaded (a budget for all), then every one unloaded at once: the resident
   set (CPU; allocated and reserved on CUDA) sampled every 2 ms from the unload, against the level
   before the loads. After one warm round (the first loads pay torch's one-time set-up).
4. Load and evict cycles: two models in a budget for one, alternate requests, each a load and an
   eviction; the resident set, threads and live modules after the first 50 and after the last.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec
import torch

from asgi_host import Host
from asgi_host.kserve import KServe, TensorSpec, V2Model
from asgi_host.model import Execution, ModelPool, TorchModel
from asgi_host.testing import LifespanDriver, ServerProcess, free_port, server_command
from bench.predict import ROOT, ROW, in_process
from bench.reload import rss_bytes
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP
from examples.pool import FEATURES as POOL_FEATURES
from examples.pool import PoolConfig, make_app, names

MIB = 2**20
JSON = {"content-type": "application/json"}


def pool_of(app: Host) -> ModelPool:
    return next(r for r in app.resources if isinstance(r, ModelPool))


# ---- 1. a resident model against the same model alone ---------------------------------------------


def iris_apps(execution: Execution) -> dict[str, Host]:
    def v2() -> V2Model:
        return V2Model(
            name="iris",
            resource="iris",
            inputs=[TensorSpec("input", "FP32", [-1, len(FEATURES)])],
            outputs=[TensorSpec("probabilities", "FP32", [-1, len(LABELS)])],
            fn=lambda module, x: torch.softmax(module(x), dim=-1),
        )

    def model() -> TorchModel:
        return TorchModel(
            IrisMLP, WEIGHTS, name="iris", device="cpu", warmup=torch.zeros(1, 4), execution=execution
        )

    return {
        "TorchModel alone": Host(resources=[model()], routes=[KServe(v2())]),
        "in a ModelPool": Host(
            resources=[ModelPool([model()], budget_bytes=MIB, device="cpu", pinned=["iris"])],
            routes=[KServe(v2())],
        ),
    }


INFER_BODY = msgspec.json.encode(
    {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [ROW]}]}
)


async def resident_cost(n: int) -> dict[str, float]:
    results: dict[str, float] = {}
    headers = [(b"content-type", b"application/json")]
    executions: tuple[Execution, ...] = ("inline", "thread")
    for execution in executions:
        async with AsyncExitStack() as stack:
            drivers = {
                name: await stack.enter_async_context(LifespanDriver(app))
                for name, app in iris_apps(execution).items()
            }
            best: dict[str, float] = {}
            for i in range(10):
                for name, driver in drivers.items():
                    seconds = await in_process(
                        driver.app,
                        driver.state,
                        INFER_BODY,
                        b"",
                        max(n // 10, 50),
                        path="/v2/models/iris/infer",
                        headers=headers,
                        warmup=200 if i == 0 else 0,
                    )
                    best[name] = min(best.get(name, seconds), seconds)
            for name, seconds in best.items():
                results[f"v2 infer, {execution}, {name}"] = seconds
            # The bare call: what the pool adds around a pass.
            handle = drivers["TorchModel alone"].state["iris"]
            pooled = drivers["in a ModelPool"].state["iris"]
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "ModelHandle.run": partial(handle.run, noop),
                "PooledModel.run": partial(pooled.run, noop),
            }
            for name, seconds in (await best_of(calls, n)).items():
                results[f"no-op, {execution}, {name}"] = seconds
    return results


def noop(module: Any) -> None:
    return None


async def best_of(
    calls: dict[str, Callable[[], Awaitable[object]]], n: int, rounds: int = 10
) -> dict[str, float]:
    """Seconds per call of each, the best of `rounds`, the calls taking turns round by round."""
    best = dict.fromkeys(calls, float("inf"))
    for call in calls.values():
        for _ in range(100):
            await call()
    for _ in range(rounds):
        for name, call in calls.items():
            started = time.perf_counter()
            for _ in range(n // rounds):
                await call()
            best[name] = min(best[name], (time.perf_counter() - started) / (n // rounds))
    return best


# ---- 2. sixteen clients over eight models ------------------------------------------------------------


class Watch:
    """Counts each model's loads running at once, and releases of a model someone holds."""

    def __init__(self, pool: ModelPool) -> None:
        self.lock = threading.Lock()
        self.loading: dict[str, int] = {}
        self.most_at_once = 0  # loads of one model running at once, at most
        self.released_in_use = 0
        for entry in pool.entries.values():
            model = entry.model
            real_load, real_release = model.load, model.release_version

            def load(*args: Any, _name: str = model.name, _load: Any = real_load, **kwargs: Any) -> Any:
                with self.lock:
                    self.loading[_name] = self.loading.get(_name, 0) + 1
                    self.most_at_once = max(self.most_at_once, self.loading[_name])
                try:
                    return _load(*args, **kwargs)
                finally:
                    with self.lock:
                        self.loading[_name] -= 1

            async def release(serving: Any, _entry: Any = entry, _release: Any = real_release) -> None:
                if _entry.refs or serving.handle.in_flight:
                    self.released_in_use += 1
                await _release(serving)

            model.load = load  # type: ignore[method-assign]
            model.release_version = release  # type: ignore[method-assign]


def infer_body(rows: int = 1) -> bytes:
    data = [[0.5] * POOL_FEATURES] * rows
    return msgspec.json.encode(
        {"inputs": [{"name": "input", "shape": [rows, POOL_FEATURES], "datatype": "FP32", "data": data}]}
    )


async def clients_in_process(cache: Path, models: int, clients: int, requests: int) -> dict[str, Any]:
    app = make_app(PoolConfig(cache_dir=str(cache), device="cpu", metrics=False))
    pool = pool_of(app)
    watch = Watch(pool)
    body = infer_body()
    latencies: list[float] = []
    failures: list[int] = []
    async with LifespanDriver(app, startup_timeout_s=300, shutdown_timeout_s=120) as life:

        async def client(first: int) -> None:
            for step in range(requests):
                name = names()[(first + step) % models]
                started = time.perf_counter()
                result = await life.request(
                    "POST",
                    f"/v2/models/{name}/infer",
                    body=body,
                    headers=[("content-type", "application/json")],
                    timeout_s=120,
                )
                latencies.append(time.perf_counter() - started)
                if result.status != 200:
                    failures.append(result.status or 0)

        if models <= 3:  # the reference starts resident: no load, no eviction
            for name in names()[:models]:
                await pool.load(name)
        before = {n: (e.loads, e.evictions) for n, e in pool.entries.items()}
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(clients):
                tg.start_soon(client, i)
        elapsed = time.perf_counter() - started
        entries = pool.entries.values()
        loads = sum(e.loads - before[e.name][0] for e in entries)
        evictions = sum(e.evictions - before[e.name][1] for e in entries)
        load_s = [e.load_s for e in entries if e.load_s]
    return summary(latencies, elapsed, failures) | {
        "loads": loads,
        "evictions": evictions,
        "mean load s": statistics.fmean(load_s) if load_s else 0.0,
        "loads of one model at once": watch.most_at_once,
        "evictions in use": watch.released_in_use,
    }


def summary(latencies: list[float], elapsed: float, failures: list[int]) -> dict[str, Any]:
    latencies.sort()
    return {
        "requests": len(latencies),
        "failed": len(failures),
        "req/s": len(latencies) / elapsed,
        "p50 ms": latencies[len(latencies) // 2] * 1e3,
        "p99 ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


def clients_over_http(cache: Path, models: int, clients: int, requests: int) -> dict[str, Any]:
    import httpx

    port = free_port()
    env = {"POOL_CACHE_DIR": str(cache), "POOL_DEVICE": "cpu"}
    process = ServerProcess(
        server_command("hypercorn", "examples.pool:app", port), port=port, env=env, cwd=ROOT
    )
    body = infer_body()
    latencies: list[float] = []
    failures: list[int] = []
    lock = threading.Lock()
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(base + "/readyz", timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        with httpx.Client(base_url=base, timeout=120) as warm:
            for name in names()[: min(models, 3)]:
                warm.post(f"/v2/models/{name}/infer", content=body, headers=JSON)

        def client(first: int) -> None:
            with httpx.Client(base_url=base, timeout=120) as http:
                for step in range(requests):
                    name = names()[(first + step) % models]
                    started = time.perf_counter()
                    response = http.post(f"/v2/models/{name}/infer", content=body, headers=JSON)
                    with lock:
                        latencies.append(time.perf_counter() - started)
                        if response.status_code != 200:
                            failures.append(response.status_code)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        detail = httpx.get(base + "/readyz", timeout=10).json()["resources"]["pool"]["models"]
    finally:
        process.stop()
    return summary(latencies, elapsed, failures) | {
        "loads": sum(m["loads"] for m in detail.values()),
        "evictions": sum(m["evictions"] for m in detail.values()),
        "mean load s": statistics.fmean(m["load_s"] for m in detail.values() if m["load_s"]),
    }


# ---- 3. memory back, and 4. cycles ---------------------------------------------------------------------


def memory_now(device: str) -> dict[str, float]:
    if device.startswith("cuda"):
        return {
            "allocated MiB": torch.cuda.memory_allocated() / MIB,
            "reserved MiB": torch.cuda.memory_reserved() / MIB,
        }
    return {"rss MiB": rss_bytes() / MIB}


async def memory_back(cache: Path, device: str) -> dict[str, Any]:
    app = make_app(PoolConfig(cache_dir=str(cache), device=device, budget_mib=8 * 16 + 1, metrics=False))
    pool = pool_of(app)
    async with LifespanDriver(app, startup_timeout_s=300, shutdown_timeout_s=120):

        async def load_all() -> None:
            for name in names():
                await pool.load(name)

        async def unload_all() -> None:
            async with anyio.create_task_group() as tg:
                for name in names():
                    tg.start_soon(pool.unload, name)

        await load_all()  # the warm round
        await unload_all()
        gc.collect()
        before = memory_now(device)
        await load_all()
        loaded = memory_now(device)
        key = next(iter(before))
        grown = loaded[key] - before[key]
        samples: list[tuple[float, float]] = []
        done = anyio.Event()

        async def sample() -> None:
            while not done.is_set() or samples[-1][0] < 1.0:
                samples.append((time.perf_counter() - started, memory_now(device)[key]))
                await anyio.sleep(0.002)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            await unload_all()
            unloaded_s = time.perf_counter() - started
            done.set()
        back = next((t for t, value in samples if value - before[key] <= 0.1 * grown), None)
        at_1s = next(value for t, value in samples if t >= 1.0)
        result: dict[str, Any] = {
            "what": key,
            "before": before[key],
            "loaded": loaded[key],
            "grown": grown,
            "unload calls returned s": unloaded_s,
            "back within 10 % s": back,
            "left at 1 s": at_1s - before[key],
        }
        if device.startswith("cuda"):
            result["reserved after"] = torch.cuda.memory_reserved() / MIB
    return result


async def cycles(cache: Path, count: int) -> dict[str, Any]:
    app = make_app(PoolConfig(cache_dir=str(cache), device="cpu", budget_mib=16, metrics=False))
    pool = pool_of(app)
    body = infer_body()
    marks: dict[int, dict[str, float]] = {}
    async with LifespanDriver(app, startup_timeout_s=300, shutdown_timeout_s=120) as life:
        started = time.perf_counter()
        for i in range(count):
            name = names()[i % 2]
            result = await life.request(
                "POST", f"/v2/models/{name}/infer", body=body, headers=[("content-type", "application/json")]
            )
            assert result.status == 200, result.body
            if i + 1 in (50, count) or (i + 1) % max(count // 4, 1) == 0:
                gc.collect()
                marks[i + 1] = {
                    "rss MiB": rss_bytes() / MIB,
                    "threads": threading.active_count(),
                    "modules": sum(1 for obj in gc.get_objects() if type(obj).__name__ == "MLP"),
                    "s": time.perf_counter() - started,
                }
        loads = sum(e.loads for e in pool.entries.values())
        load_s = statistics.fmean(e.load_s or 0.0 for e in pool.entries.values())
    first, last = marks[50], marks[count]
    return {
        "cycles": count,
        "loads": loads,
        "s per cycle": (last["s"] - first["s"]) / (count - 50),
        "last load s": load_s,
        "rss after 50 MiB": first["rss MiB"],
        f"rss after {count} MiB": last["rss MiB"],
        "growth MiB": last["rss MiB"] - first["rss MiB"],
        "rss MiB at": {at: round(mark["rss MiB"], 1) for at, mark in sorted(marks.items())},
        "threads": (first["threads"], last["threads"]),
        "live modules": (first["modules"], last["modules"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="ModelPool against its targets")
    parser.add_argument("-n", type=int, default=5000, help="requests per in-process cost measurement")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=24, help="requests per client, round-robin")
    parser.add_argument("--cycles", type=int, default=1000, help="load and evict cycles (at least 60)")
    parser.add_argument("--device", default="cpu", help="for the memory part: cpu or cuda")
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cpus, {torch.get_num_threads()} torch threads, load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-pool-") as folder:
        cache = Path(folder)
        print("\n1. a request to a resident model, in process (us per request, best of 10 rounds)\n")
        print(
            "| loop | request | alone | pooled | pooled - alone | pooled / alone |\n|---|---|---|---|---|---|"
        )
        for backend in ("asyncio", "trio"):
            costs = anyio.run(resident_cost, args.n, backend=backend)
            for kind in ("v2 infer, inline", "v2 infer, thread", "no-op, inline", "no-op, thread"):
                alone_key = "ModelHandle.run" if kind.startswith("no-op") else "TorchModel alone"
                pooled_key = "PooledModel.run" if kind.startswith("no-op") else "in a ModelPool"
                alone, pooled = costs[f"{kind}, {alone_key}"] * 1e6, costs[f"{kind}, {pooled_key}"] * 1e6
                print(
                    f"| {backend} | {kind} | {alone:.1f} | {pooled:.1f} | {pooled - alone:+.1f} | "
                    f"{pooled / alone:.3f}x |"
                )

        print(f"\n2. {args.clients} clients round-robin, {args.requests} requests each, budget 48 MiB\n")
        print(
            "| where | models | failed | req/s | / all resident | p50 ms | p99 ms | loads | evictions | "
            "mean load s | one model's loads at once | evictions in use |\n|" + "---|" * 12
        )
        runs: list[tuple[str, int, dict[str, Any]]] = []
        for backend in ("asyncio", "trio"):
            for models in (3, 8):
                result = anyio.run(
                    clients_in_process, cache, models, args.clients, args.requests, backend=backend
                )
                runs.append((f"in process, {backend}", models, result))
        if not args.no_http:
            for models in (3, 8):
                runs.append(
                    ("hypercorn", models, clients_over_http(cache, models, args.clients, args.requests))
                )
        reference = {where: r["req/s"] for where, models, r in runs if models == 3}
        for where, models, r in runs:
            print(
                f"| {where} | {models} | {r['failed']} | {r['req/s']:.1f} | "
                f"{r['req/s'] / reference[where]:.2f}x | "
                f"{r['p50 ms']:.1f} | {r['p99 ms']:.1f} | {r['loads']} | {r['evictions']} | "
                f"{r['mean load s']:.3f} | {r.get('loads of one model at once', '')} | "
                f"{r.get('evictions in use', '')} |"
            )

        print("\n3. memory back after unloading all eight at once\n")
        back = anyio.run(memory_back, cache, args.device)
        for key, value in back.items():
            print(f"- {key}: {value if not isinstance(value, float) else round(value, 3)}")

        print(f"\n4. {args.cycles} load and evict cycles (two models, a budget for one)\n")
        result = anyio.run(cycles, cache, max(args.cycles, 60))
        for key, value in result.items():
            print(f"- {key}: {value if not isinstance(value, float) else round(value, 3)}")


if __name__ == "__main__":
    main()
