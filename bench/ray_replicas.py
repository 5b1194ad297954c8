"""Iris on Ray Serve with 1 and 2 replicas, against the same host under hypercorn.

    python -m bench.ray_replicas                         # -c 1 8 32, 10 s per cell
    python -m bench.ray_replicas -c 32 -d 5 --replicas 1 2 4 --cpus 0.5
    python -m bench.ray_replicas --direct-ingress     # also straight to each replica's own port

Needs the `ray` extra and `wrk`. The app is `examples.ray_serve.iris()`: the
Iris host with its micro-batcher on, `max_ongoing_requests=64`. Ray runs
locally on 127.0.0.1 with `--num-cpus` CPUs. For each replica count: the time
from `serve.run` to ready (replica processes start, import torch, run
lifespan.startup), wrk at each concurrency through Ray's HTTP proxy, and the
time `serve.delete` takes (Ray's drain, then lifespan.shutdown). The reference
row is `hypercorn examples.app:app` (one process, batching on), measured first,
before Ray starts, in the same run.

`--direct-ingress` turns on Ray Serve's (experimental, 2.60) direct ingress:
each replica also serves HTTP on a port of its own (30000 and up), found here
by the host's `/livez`. Those rows load every replica's port at once with
wrk (the clients split evenly; req/s summed, p50 averaged, p99 the worst), as
a perfect L4 balancer in front of the replicas would.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from asgi_host.testing import free_port
from bench.http import serve as serve_hypercorn
from bench.http import wrk

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "post_predict.lua"


def _warm(port: int, n: int = 50) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for _ in range(n):
            client.post("/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}).raise_for_status()


def _sweep(label: str, port: int, concurrency: list[int], seconds: int) -> list[dict[str, Any]]:
    rows = []
    for c in concurrency:
        result = wrk(port, c, seconds, SCRIPT, "/predict")
        row = {"setup": label, "clients": c, **result}
        print(
            f"| {label} | {c} | {result['rps']:.0f} | {result['p50_ms']:.1f} | {result['p99_ms']:.1f}"
            f" | {result['non_2xx']:.0f} |",
            flush=True,
        )
        rows.append(row)
    return rows


def _replica_ports(replicas: int) -> list[int]:
    """The direct-ingress ports that answer the host's /livez (Ray takes them from 30000 up)."""
    found = []
    for port in range(30000, 30000 + 10 * replicas):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/livez", timeout=0.5).status_code == 200:
                found.append(port)
        except httpx.TransportError:
            continue
    assert len(found) == replicas, f"expected {replicas} direct-ingress ports, found {found}"
    return found


def _sweep_direct(label: str, ports: list[int], concurrency: list[int], seconds: int) -> list[dict[str, Any]]:
    from concurrent.futures import ThreadPoolExecutor

    rows = []
    for c in concurrency:
        share = max(1, c // len(ports))
        with ThreadPoolExecutor(len(ports)) as pool:
            futures = [pool.submit(wrk, port, share, seconds, SCRIPT, "/predict") for port in ports]
            parts = [future.result() for future in futures]
        result = {
            "rps": sum(p["rps"] for p in parts),
            "p50_ms": sum(p["p50_ms"] for p in parts) / len(parts),
            "p99_ms": max(p["p99_ms"] for p in parts),
            "non_2xx": sum(p["non_2xx"] for p in parts),
        }
        print(
            f"| {label} | {share * len(ports)} | {result['rps']:.0f} | {result['p50_ms']:.1f}"
            f" | {result['p99_ms']:.1f} | {result['non_2xx']:.0f} |",
            flush=True,
        )
        rows.append({"setup": label, "clients": share * len(ports), **result})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("-d", "--seconds", type=int, default=10)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=float, default=1.0, help="num_cpus per replica")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--no-hypercorn", action="store_true", help="skip the hypercorn reference")
    parser.add_argument(
        "--direct-ingress",
        action="store_true",
        help="also load each replica's own HTTP port (Ray's direct ingress)",
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    print("| setup | clients | req/s | p50 ms | p99 ms | non-2xx |\n|---|---|---|---|---|---|", flush=True)
    if not args.no_hypercorn:
        port = free_port()
        process = serve_hypercorn("hypercorn", "examples.app:app", port, {"IRIS_BATCHING": "on"})
        try:
            _warm(port)
            rows += _sweep("hypercorn, 1 process", port, args.concurrency, args.seconds)
        finally:
            process.stop()

    if args.direct_ingress:
        # Read by Ray's processes at import, so set before Ray starts; a short draining
        # period (default 30 s, for load balancers to notice) keeps serve.delete quick.
        os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    import ray
    from ray import serve

    from examples.ray_serve import iris

    ray.init(
        num_cpus=args.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in args.replicas:
            started = time.perf_counter()
            serve.run(iris(replicas, cpus=args.cpus), name="iris", route_prefix="/")
            ready_s = time.perf_counter() - started
            _warm(port)
            label = f"Ray Serve, {replicas} replica{'s' if replicas > 1 else ''}"
            rows += _sweep(label, port, args.concurrency, args.seconds)
            if args.direct_ingress:
                ports = _replica_ports(replicas)
                for replica_port in ports:
                    _warm(replica_port)
                rows += _sweep_direct(f"{label}, direct", ports, args.concurrency, args.seconds)
            started = time.perf_counter()
            serve.delete("iris")
            timings.append(
                {"replicas": replicas, "ready_s": ready_s, "delete_s": time.perf_counter() - started}
            )
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()

    print("\n| replicas | serve.run to ready, s | serve.delete (drain + shutdown), s |\n|---|---|---|")
    for t in timings:
        print(f"| {t['replicas']} | {t['ready_s']:.2f} | {t['delete_s']:.2f} |")
    print(f"\nray {ray.__version__}")
    if args.json_out:
        result = {"rows": rows, "timings": timings, "ray": ray.__version__}
        args.json_out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
