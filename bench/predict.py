"""Time to ready and per-request cost of POST /predict on the Iris model.

    python -m bench.predict                 # in-process (no server) and over hypercorn
    python -m bench.predict --no-http       # in-process only

In-process drives the ASGI app with raw messages in one event loop (no test-kit
checks, no server), so it measures the host's own cost: routing, body reading,
msgspec decode/validate/encode, the worker-thread hop and the forward pass.
Over HTTP, one keep-alive client sends requests one after another to
`hypercorn examples.app:app` and reports latency percentiles.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import torch

from asgi_host.testing import LifespanDriver
from bench import peers
from bench.batching import stop
from examples.app import IrisConfig, make_app

ROOT = Path(__file__).resolve().parent.parent
ROW = [5.1, 3.5, 1.4, 0.2]


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[tuple[dict[str, Any], float]]:
    """Run the app's lifespan with the test kit's driver; yield its state and the seconds to ready.

    A startup failure raises `LifespanFailed` with the app's message instead of hanging the bench.
    """
    driver = LifespanDriver(app, startup_timeout_s=600, shutdown_timeout_s=600)
    started = time.perf_counter()
    async with driver:
        yield driver.state, time.perf_counter() - started


async def startup_seconds(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        async with running(make_app()) as (_, seconds):
            times.append(seconds)
    return times


async def in_process(app: Any, state: dict[str, Any], body: bytes, content_type: bytes, n: int) -> float:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    scope_base = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "root_path": "",
        "headers": headers,
        "query_string": b"",
    }
    status = 0

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    async def one() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return {"type": "http.disconnect"}

        await app({**scope_base, "state": dict(state)}, receive, send)

    for _ in range(200):  # warm up
        await one()
    started = time.perf_counter()
    for _ in range(n):
        await one()
    elapsed = time.perf_counter() - started
    assert status == 200, status
    return elapsed / n


async def measure_in_process(n: int) -> dict[str, float]:
    app = make_app(IrisConfig(metrics=False))
    results: dict[str, float] = {}
    one_row = msgspec.json.encode({"inputs": [ROW]})
    async with running(app) as (state, _):
        results["asgi_host json, 1 row"] = await in_process(app, state, one_row, b"application/json", n)
        packed = msgspec.msgpack.encode({"inputs": [ROW]})
        results["asgi_host msgpack, 1 row"] = await in_process(app, state, packed, b"application/msgpack", n)
        batch = msgspec.json.encode({"inputs": [ROW] * 150})
        results["asgi_host json, 150 rows"] = await in_process(
            app, state, batch, b"application/json", max(n // 10, 100)
        )
    inline = make_app(IrisConfig(metrics=False, inline=True))
    async with running(inline) as (state, _):
        results["inline json, 1 row"] = await in_process(inline, state, one_row, b"application/json", n)
    async with running(peers.fastapi_app) as (state, _):
        results["FastAPI json, 1 row"] = await in_process(
            peers.fastapi_app, state, one_row, b"application/json", n
        )
    async with running(peers.bare_app) as (state, _):
        results["bare ASGI constant"] = await in_process(
            peers.bare_app, state, one_row, b"application/json", n
        )
    return results


def measure_http(n: int, port: int, env: dict[str, str]) -> dict[str, float]:
    import httpx

    command = [sys.executable, "-m", "hypercorn", "examples.app:app", "--bind", f"127.0.0.1:{port}"]
    spawned = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/predict"
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=10) as client:
            while True:
                try:
                    client.post(url, json={"inputs": [ROW]})
                    first_answer = time.perf_counter() - spawned
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            body = msgspec.json.encode({"inputs": [ROW]})
            headers = {"content-type": "application/json"}
            for _ in range(200):
                client.post(url, content=body, headers=headers)
            latencies = []
            for _ in range(n):
                started = time.perf_counter()
                response = client.post(url, content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                assert response.status_code == 200
    finally:
        stop(process)
    latencies.sort()
    return {
        "process start to first answer": first_answer,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
        "mean": statistics.fmean(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Iris /predict: time to ready and per-request cost")
    parser.add_argument("-n", type=int, default=5000, help="requests per in-process measurement")
    parser.add_argument("--http-n", type=int, default=2000, help="requests over HTTP")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} torch threads"
    )
    ready = anyio.run(startup_seconds, 10)
    print(
        f"time to lifespan.startup.complete (build + load + warmup), median of 10: "
        f"{statistics.median(ready) * 1e3:.1f} ms (min {min(ready) * 1e3:.1f} ms)"
    )
    for backend in ("asyncio", "trio"):
        results = anyio.run(measure_in_process, args.n, backend=backend)
        for name, seconds in results.items():
            print(f"in-process {backend:7s} {name:26s} {seconds * 1e6:8.1f} us/request")
        ours, fastapi = results["asgi_host json, 1 row"], results["FastAPI json, 1 row"]
        inline, floor = results["inline json, 1 row"], results["bare ASGI constant"]
        print(
            f"in-process {backend:7s} FastAPI / asgi_host: {fastapi / ours:.2f}x"
            f" (inline: {fastapi / inline:.2f}x), asgi_host / bare floor: {ours / floor:.1f}x"
        )
    if not args.no_http:
        for label, env in (("threaded", {}), ("inline", {"IRIS_INLINE": "true"})):
            http = measure_http(args.http_n, args.port, {"IRIS_METRICS": "false", **env})
            print(
                f"hypercorn, 1 keep-alive client, json 1 row, {label}: "
                + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in http.items())
            )


if __name__ == "__main__":
    main()
