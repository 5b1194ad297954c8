"""Garbage collection under load: `gc_freeze` on and off, the Iris example under each server.

    python -m bench.gc_pauses                        # hypercorn, uvicorn, granian; 32 clients
    python -m bench.gc_pauses -c 64 -d 10 --rounds 3 --servers granian

`bench.gc_pauses:app` is `examples.app:app` with the garbage collector watched (`gc.callbacks`):
`GET /gc-stats` answers, and starts afresh, the collections of each generation since the last
call (how many, their seconds in all, the longest). Under each server two copies run at once,
`IRIS_GC_FREEZE=true` (the default) and `false`, loaded by wrk (one Iris row per request) in
turns. Reported per app: req/s and p99 (medians over the rounds), and per 10,000 requests the
collections of each generation and their milliseconds, with the longest pause seen.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

import httpx
import msgspec

from bench.http import SCRIPT, free_ports, serve, wrk
from examples.app import app as _iris

Run = tuple[dict[str, float], dict[str, list[float]]]  # wrk's result, the collections meanwhile
_stats: dict[int, list[float]] = {}  # generation -> [collections, seconds, longest]
_began = [0.0]


def _watch(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _began[0] = time.perf_counter()
        return
    took = time.perf_counter() - _began[0]
    counts = _stats.setdefault(info["generation"], [0, 0.0, 0.0])
    counts[0] += 1
    counts[1] += took
    counts[2] = max(counts[2], took)


gc.callbacks.append(_watch)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/gc-stats":
        body = msgspec.json.encode({str(g): counts for g, counts in sorted(_stats.items())})
        _stats.clear()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await _iris(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description="garbage collection under load, gc_freeze on and off")
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-d", "--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--servers", nargs="+", default=["hypercorn", "uvicorn", "granian"])
    args = parser.parse_args()
    settings = {"on": "true", "off": "false"}
    print("| server | gc_freeze | req/s | p99 ms | gen0 | gen1 | gen2 | GC ms | longest pause ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for server in args.servers:
        ports = dict(zip(settings, free_ports(len(settings)), strict=True))
        processes = []
        runs: dict[str, list[Run]] = {name: [] for name in settings}
        try:
            for name, value in settings.items():
                env = {"IRIS_METRICS": "true", "IRIS_GC_FREEZE": value}
                processes.append(serve(server, "bench.gc_pauses:app", ports[name], env))
                wrk(ports[name], 8, 2, SCRIPT, "/predict")  # warm up
            for turn in range(args.rounds):
                names = list(settings)[turn % 2 :] + list(settings)[: turn % 2]
                for name in names:
                    url = f"http://127.0.0.1:{ports[name]}/gc-stats"
                    httpx.get(url)  # start afresh
                    result = wrk(ports[name], args.connections, args.seconds, SCRIPT, "/predict")
                    runs[name].append((result, httpx.get(url).json()))
        finally:
            for process in processes:
                process.stop()
        for name in settings:
            print(_row(server, name, runs[name], args.seconds), flush=True)


def _row(server: str, name: str, runs: list[Run], seconds: int) -> str:
    requests = sum(result["rps"] * seconds for result, _ in runs)
    per = 10_000 / requests
    counts = [sum(stats.get(str(g), [0, 0.0, 0.0])[0] for _, stats in runs) * per for g in range(3)]
    gc_ms = sum(c[1] for _, stats in runs for c in stats.values()) * 1e3 * per
    longest = max((c[2] for _, stats in runs for c in stats.values()), default=0.0) * 1e3
    rps = statistics.median(result["rps"] for result, _ in runs)
    p99 = statistics.median(result["p99_ms"] for result, _ in runs)
    gens = " | ".join(f"{c:.1f}" for c in counts)
    return f"| {server} | {name} | {rps:.0f} | {p99:.1f} | {gens} | {gc_ms:.1f} | {longest:.1f} |"


if __name__ == "__main__":
    main()
