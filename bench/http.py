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
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import httpx

from asgi_host.testing import ServerProcess, server_command

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
                process.stop()
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
            # LitServe forks workers that leave the process group: stop() ends them too, by PID.
            process.stop()


if __name__ == "__main__":
    main()
