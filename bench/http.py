"""Requests/s and latency over HTTP: asgi_host vs the work floor and FastAPI, under three servers.

    python -m bench.http                         # -c 1 32, 6 s per cell
    python -m bench.http -c 1 8 32 64 -d 10 --servers hypercorn uvicorn
    python -m bench.http --litserve              # also LitServe (pip install litserve)

Each (server, app) pair runs in its own process on 127.0.0.1 and is loaded by
wrk (Debian: `apt-get install wrk`) with one JSON Iris row per request. Apps:
the work floor (`bench.peers:floor_app`: the least an app can do for the same
answer), asgi_host as shipped (`examples.app:app`: execution="auto", metrics
on) and with `IRIS_EXECUTION=thread`, FastAPI written the way its docs teach
(`bench.peers:fastapi_app`) and a bare ASGI app answering a constant
(`bench.peers:bare_app`). Ratios are computed within one server in one run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.batching import wrk

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "post_predict.lua"
# name: (ASGI app, extra environment)
APPS: dict[str, tuple[str, dict[str, str]]] = {
    "work floor": ("bench.peers:floor_app", {}),
    "asgi_host": ("examples.app:app", {"IRIS_METRICS": "true"}),
    "asgi_host thread": ("examples.app:app", {"IRIS_EXECUTION": "thread", "IRIS_METRICS": "true"}),
    "FastAPI": ("bench.peers:fastapi_app", {}),
    "bare": ("bench.peers:bare_app", {}),
}


def command(server: str, app: str, port: int) -> list[str]:
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", app, "--bind", f"127.0.0.1:{port}"]
    where = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", app, *where, "--no-access-log"]
    return [sys.executable, "-m", "granian", "--interface", "asgi", *where, app]


def serve(
    server: str,
    app: str,
    port: int,
    extra_env: dict[str, str] | None = None,
    *,
    ready_path: str = "/predict",
    ready_json: Any = None,
    wait_s: float = 60,
) -> subprocess.Popen[bytes]:
    """Start `app` under `server`; return once a POST of `ready_json` to `ready_path` is answered.

    The default request is one Iris row to /predict.
    """
    if ready_json is None:
        ready_json = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}
    env = {**os.environ, "IRIS_BATCHING": "off", "IRIS_METRICS": "false", **(extra_env or {})}
    argv = (
        [sys.executable, "-m", "bench.litserve_iris", str(port)]
        if server == "litserve"
        else command(server, app, port)
    )
    # A session of its own, so stop() also ends the worker processes LitServe spawns.
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}{ready_path}", json=ready_json, timeout=1)
            return process
        except httpx.TransportError:
            time.sleep(0.1)
    stop(process)
    raise RuntimeError(f"{server} {app} did not answer")


def stop(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="asgi_host vs the work floor and FastAPI over HTTP (wrk)")
    parser.add_argument("-c", "--connections", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("-d", "--seconds", type=int, default=6)
    parser.add_argument("--servers", nargs="+", default=["hypercorn", "uvicorn", "granian"])
    parser.add_argument("--port", type=int, default=8797)
    parser.add_argument(
        "--litserve", action="store_true", help="also LitServe on its own server (pip install litserve)"
    )
    args = parser.parse_args()
    print("| server | clients | app | req/s | p50 ms | p99 ms | / work floor | / FastAPI |")
    print("|---|---|---|---|---|---|---|---|")
    for server in args.servers:
        results: dict[tuple[str, int], dict[str, float]] = {}
        for name, (app, env) in APPS.items():
            process = serve(server, app, args.port, env)
            try:
                wrk(args.port, 8, 2, SCRIPT, "/predict")  # warm up
                for c in args.connections:
                    results[name, c] = wrk(args.port, c, args.seconds, SCRIPT, "/predict")
            finally:
                stop(process)
        for c in args.connections:
            floor = results["work floor", c]["rps"]
            fastapi = results["FastAPI", c]["rps"]
            for name in APPS:
                r = results[name, c]
                extra = f"{r['rps'] / fastapi:.2f}x" if name.startswith("asgi_host") else ""
                print(
                    f"| {server} | {c} | {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                    f"{r['rps'] / floor:.2f}x | {extra} |"
                )
    if args.litserve:
        process = serve("litserve", "", args.port)
        try:
            wrk(args.port, 8, 2, SCRIPT, "/predict")  # warm up
            for c in args.connections:
                r = wrk(args.port, c, args.seconds, SCRIPT, "/predict")
                print(
                    f"| litserve (its uvicorn) | {c} | LitServe | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
                    f"{r['p99_ms']:.2f} | | |"
                )
        finally:
            stop(process)
            # LitServe forks workers that leave the process group: end them by their command line,
            # and wait for them to exit (they take seconds; SIGKILL after 10 s) so nothing outlives the bench.
            pattern = f"bench.litserve_iris {args.port}"
            subprocess.run(["pkill", "-TERM", "-f", pattern], check=False)
            deadline = time.monotonic() + 10
            while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0:
                if time.monotonic() > deadline:
                    subprocess.run(["pkill", "-KILL", "-f", pattern], check=False)
                    break
                time.sleep(0.2)


if __name__ == "__main__":
    main()
