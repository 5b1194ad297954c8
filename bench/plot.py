"""Plot throughput and p99 latency against concurrency, batching off vs on.

    python -m bench.batching --app iris -c 1 8 32 64 --json-out /tmp/iris.json
    python -m bench.plot /tmp/iris.json docs/batching_iris.png

Needs matplotlib (`pip install 'asgi_host[bench]'`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the file backend


def main() -> None:
    parser = argparse.ArgumentParser(description="plot bench.batching results")
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in (("off", "o--"), ("on", "s-")):
        rows = sorted((r for r in data["results"] if r["mode"] == mode), key=lambda r: r["clients"])
        clients = [r["clients"] for r in rows]
        left.plot(clients, [r["rps"] for r in rows], style, label=f"batching {mode}")
        right.plot(clients, [r["p99_ms"] for r in rows], style, label=f"batching {mode}")
    for axis, label in ((left, "requests/s"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent clients (wrk connections)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
    fig.suptitle(f"{data['app']}: hypercorn, 2 cores, batching off vs on")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
