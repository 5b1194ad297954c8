"""Time to ready against weights size: where model-load time goes.

    python -m bench.startup                      # 10 MB, 100 MB, 1 GB
    python -m bench.startup --sizes-mb 10 100    # quicker

For synthetic MLPs of each size, saved as safetensors and as a torch state
dict, this measures (median of --repeats runs, files in the page cache, so
disk speed is out of the picture):

- read: reading the file's bytes;
- build: constructing the architecture for real (random init), which
  `TorchModel` avoids by building on the meta device when it has weights;
- ready: `lifespan.startup` to `lifespan.startup.complete` through a real
  `Host` with `TorchModel` (meta build + load with assign + warmup, which
  touches every weight).

ready / read says how the whole startup compares with just reading the bytes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import torch
from safetensors.torch import save_file
from torch import nn

from asgi_host import Host
from asgi_host.model import TorchModel
from bench.predict import running

WIDTH = 2048  # a 2048 x 2048 float32 layer is 16 MiB


def architecture(size_mb: int) -> nn.Module:
    layers = max(1, round(size_mb * 1024 * 1024 / (WIDTH * WIDTH * 4)))
    return nn.Sequential(*(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers)))


def timed(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def time_to_ready(build: Any, weights: Path) -> float:
    host = Host(resources=[TorchModel(build, weights, device="cpu", warmup=torch.zeros(1, WIDTH))])
    async with running(host) as (_, seconds):
        return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description="time to ready vs weights size")
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| weights | format | file MB | read s | real build s | ready s | ready / read |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes_mb:
            model = architecture(size)
            state = {k: v.contiguous() for k, v in model.state_dict().items()}
            files = {
                "safetensors": Path(tmp) / f"m{size}.safetensors",
                "state dict": Path(tmp) / f"m{size}.pt",
            }
            save_file(state, str(files["safetensors"]))
            torch.save(state, files["state dict"])
            del model, state

            def build(size: int = size) -> nn.Module:
                return architecture(size)

            build_s = timed(build, args.repeats)
            for fmt, path in files.items():
                path.read_bytes()  # into the page cache
                read_s = timed(path.read_bytes, args.repeats)
                ready_s = statistics.median(
                    anyio.run(time_to_ready, build, path) for _ in range(args.repeats)
                )
                mb = path.stat().st_size / 1e6
                ratio = ready_s / read_s
                cells = [f"{size} MB", fmt, f"{mb:.0f}", f"{read_s:.3f}", f"{build_s:.3f}", f"{ready_s:.3f}"]
                print("| " + " | ".join([*cells, f"{ratio:.2f}"]) + " |")
                path.unlink()


if __name__ == "__main__":
    main()
