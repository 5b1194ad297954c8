"""Time to ready and per-request cost of POST /predict on the Iris model.

    python -m bench.predict                 # in-process (no server) and over hypercorn
    python -m bench.predict --no-http       # in-process only

In-process drives the ASGI app with raw messages in one event loop (no test-kit
checks, no server), so it measures the host's own cost: routing, body reading,
msgspec decode/validate/encode, the worker-thread hop and the forward pass.
In process, the same answer from the work floor, the floor with the host's checks, FastAPI and
Litestar (`bench.peers`) is measured beside it. Over HTTP, one keep-alive client sends requests
one after another to `hypercorn examples.app:app` and reports latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import sniffio
import torch

from asgi_host import Batching
from asgi_host.testing import LifespanDriver, ServerProcess, free_port, server_command
from bench.hop import model_thread
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


async def in_process(
    app: Any,
    state: dict[str, Any],
    body: bytes,
    content_type: bytes,
    n: int,
    *,
    path: str = "/predict",
    headers: list[tuple[bytes, bytes]] | None = None,
    warmup: int = 200,
    waiting: bool = False,
) -> float:
    """Seconds per POST of `body` to `path`, driven with raw ASGI messages one at a time.

    `waiting`: every `receive()` waits for a turn of the loop before it answers, close to what
    granian's does (its message is a future a Rust thread completes, which also wakes the loop from
    that thread); else it answers at once, as uvicorn's and hypercorn's do for a body that came with
    the headers.
    """
    sent_headers = [
        *(headers or [(b"content-type", content_type)]),
        (b"content-length", str(len(body)).encode()),
    ]
    scope_base = {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "headers": sent_headers,
        "query_string": b"",
    }
    status = 0

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    message = {"type": "http.request", "body": body, "more_body": False}

    on_trio = sniffio.current_async_library() == "trio"
    if on_trio:
        import trio

    async def one() -> None:
        if on_trio and not waiting:  # as hypercorn on trio hands the body over: a memory channel's
            to_app, from_server = trio.open_memory_channel[dict[str, Any]](1)
            to_app.send_nowait(message)
            await app({**scope_base, "state": dict(state)}, from_server.receive, send)
            return
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if waiting and on_trio:
                await trio.lowlevel.checkpoint()
            elif waiting:
                await asyncio.sleep(0)
            if not sent:
                sent = True
                return message
            return {"type": "http.disconnect"}

        await app({**scope_base, "state": dict(state)}, receive, send)

    for _ in range(warmup):
        await one()
    started = time.perf_counter()
    for _ in range(n):
        await one()
    elapsed = time.perf_counter() - started
    assert status == 200, (path, status)
    return elapsed / n


ONE_ROW = msgspec.json.encode({"inputs": [ROW]})


def in_process_apps() -> dict[str, tuple[Any, bytes, bytes, int]]:
    """name: (app, body, content type, requests per measurement as a fraction of n x 10)."""
    # Here, not at the top: FastAPI imports opentelemetry, which a bench of the host alone should not.
    from bench import peers

    one, packed = ONE_ROW, msgspec.msgpack.encode({"inputs": [ROW]})
    batch = msgspec.json.encode({"inputs": [ROW] * 150})
    json, msgpack = b"application/json", b"application/msgpack"

    def iris(**settings: Any) -> Any:
        return make_app(IrisConfig(**settings))

    return {
        "work floor": (peers.floor_app, one, json, 10),
        "work floor + the host's checks, one function": (peers.checked_floor_app, one, json, 10),
        "asgi_host default (auto, metrics on)": (iris(), one, json, 10),
        "asgi_host auto, metrics off": (iris(metrics=False), one, json, 10),
        "asgi_host thread, metrics off": (
            iris(metrics=False, execution="thread"),
            one,
            json,
            10,
        ),
        "asgi_host batching on, 1 client": (
            iris(metrics=False, batching=Batching()),
            one,
            json,
            10,
        ),
        "asgi_host msgpack, 1 row": (iris(metrics=False), packed, msgpack, 10),
        "asgi_host json, 150 rows": (iris(metrics=False), batch, json, 1),
        "FastAPI, as its docs teach": (peers.fastapi_app, one, json, 10),
        "Litestar, async handler, model inline": (peers.litestar_app, one, json, 10),
        "bare ASGI constant": (peers.bare_app, one, json, 10),
    }


async def thread_round_trip(n: int) -> float:
    """A no-op handed to a model's thread (`ModelHandle.run`) and back: the hop a threaded pass pays."""
    async with model_thread() as handle:
        for _ in range(200):
            await handle.run(id)
        started = time.perf_counter()
        for _ in range(n):
            await handle.run(id)
        return (time.perf_counter() - started) / n


async def measure_in_process(n: int, rounds: int = 3, waiting: bool = False) -> dict[str, list[float]]:
    """Each app's seconds per request in each of `rounds` rounds, the apps taking turns within each
    round (their order rotating). Read a figure against the floor of the same round: on a shared
    2-core machine whole rounds move by tens of percent with other processes' noise.
    """
    apps = in_process_apps()
    results: dict[str, list[float]] = {name: [] for name in apps}
    hop_name = "bare thread round trip (ModelHandle.run no-op)"
    results[hop_name] = []
    async with AsyncExitStack() as stack:
        states = {
            name: (await stack.enter_async_context(running(app)))[0] for name, (app, *_) in apps.items()
        }
        names = list(apps)
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                app, body, content_type, share = apps[name]
                requests = max(n * share // 10, 100)
                seconds = await in_process(app, states[name], body, content_type, requests, waiting=waiting)
                results[name].append(seconds)
            results[hop_name].append(await thread_round_trip(n))
    return results


def against(results: dict[str, list[float]], name: str, reference: str) -> float:
    """The median over the rounds of `name`'s time over `reference`'s in the same round."""
    return statistics.median(a / b for a, b in zip(results[name], results[reference], strict=True))


def difference_us(results: dict[str, list[float]], name: str, reference: str) -> float:
    """The median over the rounds of `name`'s time minus `reference`'s in the same round, in us."""
    return statistics.median(a - b for a, b in zip(results[name], results[reference], strict=True)) * 1e6


def measure_http(n: int, port: int, env: dict[str, str]) -> dict[str, float]:
    import httpx

    spawned = time.perf_counter()
    process = ServerProcess(
        server_command("hypercorn", "examples.app:app", port), port=port, env=env, cwd=ROOT
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
        process.stop()
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
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="in-process rounds (each app's best is kept)")
    parser.add_argument(
        "--waiting-receive", action="store_true", help="receive() waits a loop turn, as granian's does"
    )
    args = parser.parse_args()
    args.port = args.port or free_port()
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
        results = anyio.run(measure_in_process, args.n, args.rounds, args.waiting_receive, backend=backend)
        waits = ", receive() waits" if args.waiting_receive else ""
        print(
            f"\n| {backend}: in-process{waits} | us/request (best round) "
            "| / work floor (median of the rounds) |"
            "\n|---|---|---|"
        )
        for name, seconds in results.items():
            print(f"| {name} | {min(seconds) * 1e6:.1f} | {against(results, name, 'work floor'):.2f}x |")
        floor = "work floor"
        ours, off = "asgi_host default (auto, metrics on)", "asgi_host auto, metrics off"
        thread, hop = "asgi_host thread, metrics off", "bare thread round trip (ModelHandle.run no-op)"
        over_floor_and_hop = statistics.median(
            (t - f - h) * 1e6 for t, f, h in zip(results[thread], results[floor], results[hop], strict=True)
        )
        lone = difference_us(results, "asgi_host batching on, 1 client", off)
        fastapi = against(results, "FastAPI, as its docs teach", ours)
        litestar = against(results, "Litestar, async handler, model inline", ours)
        print(
            f"\n{backend} (medians of the rounds): default / floor {against(results, ours, floor):.2f}x; "
            f"FastAPI / default {fastapi:.2f}x; Litestar / default {litestar:.2f}x; "
            f"metrics cost {difference_us(results, ours, off):+.1f} us; "
            f"thread mode: floor + hop {over_floor_and_hop:+.1f} us; "
            f"batcher, lone request: {lone:+.1f} us over no batcher"
        )
    if not args.no_http:
        for label, env in (("auto (inline)", {}), ("thread", {"IRIS_EXECUTION": "thread"})):
            http = measure_http(args.http_n, args.port, {"IRIS_METRICS": "false", **env})
            print(
                f"hypercorn, 1 keep-alive client, json 1 row, {label}: "
                + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in http.items())
            )


if __name__ == "__main__":
    main()
