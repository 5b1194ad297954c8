"""Throughput and latency of POST /predict with micro-batching off and on, under hypercorn.

    python -m bench.batching                        # concurrency 1, 8, 32; 10 s each
    python -m bench.batching -c 32 -d 20 --max-wait-s 0.002
    python -m bench.batching --app minilm -c 1 8 32 64     # MiniLM /embed

Needs `wrk` (Debian: `apt-get install wrk`). Each mode starts its own
`hypercorn examples.app:app` (IRIS_BATCHING=off / on; `--app minilm`:
`examples.embed:app`, EMBED_BATCHING) on 127.0.0.1; both are
measured in the same run so their ratio is meaningful on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from asgi_host.testing import free_port
from bench.http import serve, wrk

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# app name: (ASGI app, wrk script, path, environment prefix)
APPS = {
    "iris": ("examples.app:app", HERE / "post_predict.lua", "/predict", "IRIS_"),
    "minilm": ("examples.embed:app", HERE / "post_embed.lua", "/embed", "EMBED_"),
}
# The request that says the server is up (and warms it).
READY = {"iris": {"inputs": [[5.1, 3.5, 1.4, 0.2]]}, "minilm": {"texts": ["warm up"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description="batching off vs on, under hypercorn + wrk")
    parser.add_argument(
        "--app", choices=sorted(APPS), default="iris", help="iris (/predict) or minilm (/embed)"
    )
    parser.add_argument("-c", "--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("-d", "--seconds", type=int, default=10)
    parser.add_argument("--max-wait-s", default="0")
    parser.add_argument("--max-batch-rows", default="64")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--json-out", type=Path, help="also write the results here (for bench.plot)")
    args = parser.parse_args()
    args.port = args.port or free_port()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    app, script, path, prefix = APPS[args.app]
    modes = {
        "off": {f"{prefix}BATCHING": "off"},
        "on": {
            f"{prefix}BATCHING": "on",
            f"{prefix}BATCHING__MAX_WAIT_S": args.max_wait_s,
            f"{prefix}BATCHING__MAX_BATCH_ROWS": args.max_batch_rows,
        },
    }
    results: dict[tuple[str, int], dict[str, float]] = {}
    for mode, env in modes.items():
        process = serve("hypercorn", app, args.port, env, ready_path=path, ready_json=READY[args.app])
        try:
            wrk(args.port, 8, 2, script, path)  # warm up
            for c in args.connections:
                results[mode, c] = wrk(args.port, c, args.seconds, script, path)
        finally:
            process.stop()
    if args.json_out is not None:
        rows = [{"mode": mode, "clients": c, **numbers} for (mode, c), numbers in results.items()]
        args.json_out.write_text(json.dumps({"app": args.app, "results": rows}, indent=1))
    settings = f"max_wait_s={args.max_wait_s} max_batch_rows={args.max_batch_rows}"
    print(f"{args.app}: batching {settings}, {args.seconds} s/cell")
    columns = ["clients", "off req/s", "off p50 ms", "off p99 ms", "on req/s", "on p50 ms", "on p99 ms"]
    print("| " + " | ".join([*columns, "on/off", "non-2xx"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in args.connections:
        off, on = results["off", c], results["on", c]
        print(
            f"| {c} | {off['rps']:.0f} | {off['p50_ms']:.2f} | {off['p99_ms']:.2f} | {on['rps']:.0f} | "
            f"{on['p50_ms']:.2f} | {on['p99_ms']:.2f} | {on['rps'] / off['rps']:.2f}x | "
            f"{int(off['non_2xx'] + on['non_2xx'])} |"
        )


if __name__ == "__main__":
    main()
