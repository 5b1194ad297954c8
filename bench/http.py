"""Requests/s and latency over HTTP: asgi_host vs the work floor, FastAPI and Litestar, under three servers.

    python -m bench.http                         # -c 1 32, 6 s per cell
    python -m bench.http -c 1 8 32 64 -d 10 --servers hypercorn uvicorn
    python -m bench.http --litserve              # also LitServe (pip install litserve)

Each (server, app) pair runs in its own process on 127.0.0.1 and is loaded by
wrk (Debian: `apt-get install wrk`) with one JSON Iris row per request. Apps:
the work floor (`bench.peers:floor_app`: the least an app can do for the same
answer), asgi_host as shipped (`examples.app:app`: execution="auto", metrics
on) and with `IRIS_EXECUTION=thread`, FastAPI written the way its docs teach
(`bench.peers:fastapi_app`), Litestar in its fastest idiomatic form (`bench.peers:litestar_app`:
msgspec Structs, the model run inline in an `async` handler) and a bare ASGI app answering a constant
(`bench.peers:bare_app`); with `--checked`, also the floor plus the host's checks in one function
(`bench.peers:checked_floor_app`).

Under each server every app is started at once (each on its own port) and the apps take turns, in
`--rounds` rounds, their order rotating: on a shared machine whole windows of seconds move by tens
of percent, so an app's ratio to the floor is the median over the rounds of its ratio to the floor
measured in the same round (req/s and latencies: medians over the rounds).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import httpx

from asgi_host.testing import ServerProcess, free_port, server_command

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "post_predict.lua"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# name: (ASGI app, extra environment)
APPS: dict[str, tuple[str, dict[str, str]]] = {
    "work floor": ("bench.peers:floor_app", {}),
    "asgi_host": ("examples.app:app", {"IRIS_METRICS": "true"}),
    "asgi_host thread": ("examples.app:app", {"IRIS_EXECUTION": "thread", "IRIS_METRICS": "true"}),
    "FastAPI": ("bench.peers:fastapi_app", {}),
    "Litestar": ("bench.peers:litestar_app", {}),
    "bare": ("bench.peers:bare_app", {}),
}
CHECKED: dict[str, tuple[str, dict[str, str]]] = {
    "work floor + the host's checks": ("bench.peers:checked_floor_app", {})
}


def wrk(port: int, connections: int, seconds: int, script: Path, path: str) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out, re.MULTILINE)
        assert match, out
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]
        result[f"p{pct}_ms"] = float(match.group(1)) * scale
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    return result


# Quieter servers: no access log, warnings only (what a benchmark would otherwise time is logging).
QUIET: dict[str, list[str]] = {
    "hypercorn": [],
    "uvicorn": ["--log-level", "warning", "--no-access-log"],
    "granian": ["--log-level", "warning"],
}


def serve(
    server: str,
    app: str,
    port: int,
    extra_env: dict[str, str] | None = None,
    *,
    ready_path: str = "/predict",
    ready_json: Any = None,
    wait_s: float = 60,
) -> ServerProcess:
    """Start `app` under `server` (asgi_host.testing's launcher); return once a POST of `ready_json`
    to `ready_path` is answered (default: one Iris row to /predict). `process.stop()` ends it, and
    whatever it started, by PID."""
    if ready_json is None:
        ready_json = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    env = {"IRIS_BATCHING": "off", "IRIS_METRICS": "false", **(extra_env or {})}
    argv = (
        [sys.executable, "-m", "bench.litserve_iris", str(port)]
        if server == "litserve"
        else server_command(cast(Any, server), app, port, QUIET[server])
    )
    process = ServerProcess(argv, port=port, env=env, cwd=ROOT)
    try:
        process.wait_ready(lambda url: bool(httpx.post(url + ready_path, json=ready_json, timeout=1)), wait_s)
    except BaseException:
        process.stop()
        raise
    return process


def main() -> None:
    parser = argparse.ArgumentParser(
        description="asgi_host vs the work floor, FastAPI and Litestar over HTTP (wrk)"
    )
    parser.add_argument("-c", "--connections", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("-d", "--seconds", type=int, default=6)
    parser.add_argument("--servers", nargs="+", default=["hypercorn", "uvicorn", "granian"])
    parser.add_argument("--port", type=int, default=None, help="first of consecutive ports (default: free)")
    parser.add_argument(
        "--litserve", action="store_true", help="also LitServe on its own server (pip install litserve)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="turns each app takes per server and clients")
    parser.add_argument("--checked", action="store_true", help="also the floor with the host's checks")
    parser.add_argument("--cpu", action="store_true", help="also each app's CPU per request, by thread")
    args = parser.parse_args()
    apps = {**APPS, **(CHECKED if args.checked else {})}
    ports = free_ports(len(apps)) if args.port is None else [args.port + i for i in range(len(apps))]
    for index, server in enumerate(args.servers):
        if index == 0 or args.cpu:  # after a CPU table, the next server's rows start a table again
            print_header()
        processes: dict[str, tuple[ServerProcess, int]] = {}
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        try:
            for i, (name, (app, env)) in enumerate(apps.items()):
                processes[name] = serve(server, app, ports[i], env), ports[i]
                wrk(ports[i], 8, 2, SCRIPT, "/predict")  # warm up
            for turn in range(args.rounds):
                for c in args.connections:
                    names = list(apps)
                    for name in names[turn % len(names) :] + names[: turn % len(names)]:
                        pid = processes[name][0].pid
                        before = threads_cpu(pid) if args.cpu else {}
                        result = wrk(processes[name][1], c, args.seconds, SCRIPT, "/predict")
                        if args.cpu:
                            requests = result["rps"] * args.seconds
                            result.update(cpu_per_request(before, threads_cpu(pid), requests))
                        results.setdefault((name, c), []).append(result)
        finally:
            for process, _ in processes.values():
                process.stop()
        for c in args.connections:
            floor, fastapi, litestar = (results[name, c] for name in ("work floor", "FastAPI", "Litestar"))
            for name in apps:
                runs = results[name, c]
                extra = (
                    f"{_ratio(runs, fastapi):.2f}x | {_ratio(runs, litestar):.2f}x"
                    if name.startswith("asgi_host")
                    else " |"
                )
                rps, p50, p99 = (_median(runs, key) for key in ("rps", "p50_ms", "p99_ms"))
                print(
                    f"| {server} | {c} | {name} | {rps:.0f} | {p50:.2f} | {p99:.2f} | "
                    f"{_ratio(runs, floor):.2f}x | {extra} |",
                    flush=True,
                )
        if args.cpu:
            print(
                "\n| server | clients | app | busiest thread (the loop's), us CPU a request | other threads |"
            )
            print("|---|---|---|---|---|")
            for c in args.connections:
                for name in apps:
                    loop, other = (_median(results[name, c], key) for key in ("loop_us", "other_us"))
                    print(f"| {server} | {c} | {name} | {loop:.1f} | {other:.1f} |", flush=True)
            print()
    if args.litserve:
        if args.cpu:
            print_header()
        process = serve("litserve", "", ports[0])
        try:
            wrk(ports[0], 8, 2, SCRIPT, "/predict")  # warm up
            for c in args.connections:
                r = wrk(ports[0], c, args.seconds, SCRIPT, "/predict")
                print(
                    f"| litserve (its uvicorn) | {c} | LitServe | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
                    f"{r['p99_ms']:.2f} | | | |"
                )
        finally:
            # LitServe forks workers that leave the process group: stop() ends them too, by PID.
            process.stop()


def print_header() -> None:
    print("| server | clients | app | req/s | p50 ms | p99 ms | / work floor | / FastAPI | / Litestar |")
    print("|---|---|---|---|---|---|---|---|---|")


def threads_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid` and of the processes it started (from /proc: Linux)."""
    found: dict[int, float] = {}
    todo = [pid]
    while todo:
        process = todo.pop()
        try:
            for tid in os.listdir(f"/proc/{process}/task"):
                with open(f"/proc/{process}/task/{tid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid...
                found[int(tid)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime
                with open(f"/proc/{process}/task/{tid}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
        except OSError:  # gone meanwhile, or no /proc
            continue
    return found


def cpu_per_request(before: dict[int, float], after: dict[int, float], requests: float) -> dict[str, float]:
    """The busiest thread's CPU (the event loop's) and the other threads', in us per request."""
    used = sorted((seconds - before.get(tid, 0.0) for tid, seconds in after.items()), reverse=True) or [0.0]
    requests = max(requests, 1.0)
    return {"loop_us": used[0] / requests * 1e6, "other_us": sum(used[1:]) / requests * 1e6}


def free_ports(n: int) -> list[int]:
    """`n` distinct ports nobody listens on (the OS's choice)."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _ratio(runs: list[dict[str, float]], reference: list[dict[str, float]]) -> float:
    """The median over the rounds of req/s against the reference's in the same round."""
    return statistics.median(run["rps"] / other["rps"] for run, other in zip(runs, reference, strict=True))


if __name__ == "__main__":
    main()
