"""Bucketed batch shapes against one shape per batch size, for a model compiled per shape (CPU).

    python -m bench.buckets                 # both modes, each in its own process
    python -m bench.buckets --rows 32       # passes of 1 to 32 rows

The Iris classifier compiled with `compile={"dynamic": False}` (one graph per input shape, as CUDA
graphs record one per shape), batching on with `max_batch_rows=--rows`, driven in process through
the test kit. Requests of 1 to `--rows` rows arrive one at a time in a fixed shuffled order, twice.

- `bucketed`: `Batching(bucket_rows="powers-of-two")`, the model warmed up at each of
  `pass_sizes()` (1, 2, 4, ... `--rows`) at startup, as the examples do;
- `per size`: no buckets, warmed up at 1 and `--rows` rows (the examples' default without them):
  every other size meets the compiler on its first request.

For each: the time to ready, the frames dynamo compiled while serving (`torch._dynamo`'s counter),
the slowest and the total of the first round of requests, and the median of the second round.
Each mode runs in a fresh process, so the compiler's caches and its recompile limit start empty.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio
import torch

from asgi_host import Batching, Host, Route
from asgi_host.model import Classifier, TorchModel
from asgi_host.testing import LifespanDriver
from bench.predict import ROOT
from examples.iris import LABELS, WEIGHTS, IrisMLP, load_dataset


async def run(mode: str, rows: int) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    bucketed = mode == "bucketed"
    settings = Batching(max_batch_rows=rows, bucket_rows="powers-of-two" if bucketed else None)
    model = TorchModel(
        IrisMLP,
        WEIGHTS,
        device="cpu",
        warmup=torch.zeros(1, 4),
        warmup_batch_sizes=settings.pass_sizes() if bucketed else (1, rows),
        compile={"dynamic": False},
    )
    endpoint = Classifier(labels=LABELS, n_features=4, max_rows=rows, batching=settings).endpoint
    host = Host(
        resources=[model], routes=[Route("/predict", endpoint, methods=["POST"])], startup_timeout_s=900
    )
    inputs, _ = load_dataset()
    sizes = list(range(1, rows + 1))
    random.Random(0).shuffle(sizes)
    began = time.perf_counter()
    async with LifespanDriver(host, startup_timeout_s=900) as lifespan:
        ready_s = time.perf_counter() - began
        frames = counters["frames"]["total"]
        rounds: list[list[float]] = []
        for _ in range(2):
            times = []
            for size in sizes:
                started = time.perf_counter()
                result = await lifespan.request("POST", "/predict", json={"inputs": inputs[:size]})
                times.append(time.perf_counter() - started)
                assert result.status == 200, result.body
                assert len(result.json()["outputs"]) == size
            rounds.append(times)
        compiled = counters["frames"]["total"] - frames
    return {
        "mode": mode,
        "ready s": ready_s,
        "frames compiled while serving": compiled,
        "first round: slowest ms": max(rounds[0]) * 1e3,
        "first round: total s": sum(rounds[0]),
        "second round: median ms": statistics.median(rounds[1]) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="bucketed batch shapes against one shape per size")
    parser.add_argument("--rows", type=int, default=16, help="max_batch_rows; requests of 1 to this")
    parser.add_argument("--mode", choices=["bucketed", "per size"], help="one mode, in this process")
    args = parser.parse_args()
    if args.mode is not None:
        print(json.dumps(anyio.run(run, args.mode, args.rows)))
        return
    print(
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs {platform.machine()}, python "
        f"{platform.python_version()}, torch {torch.__version__}; passes of 1 to {args.rows} rows"
    )
    results = []
    for mode in ("bucketed", "per size"):
        command = [sys.executable, "-m", "bench.buckets", "--mode", mode, "--rows", str(args.rows)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    keys = list(results[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for result in results:
        cells = (f"{v:.3f}" if isinstance(v, float) else str(v) for v in result.values())
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
