"""Where passes should run: on the event loop (inline) or on the model's thread, by pass length.

    python -m bench.execution                       # passes of ~0.05 to 2 ms, 1 and 32 clients
    python -m bench.execution --widths 64 512 -c 32 -d 5

A stand-in model whose forward pass is one square matmul (`--widths`: its
size sets the pass time) serves `POST /predict` through `Classifier`
under hypercorn, once with `execution="inline"` and once with `"thread"`, and
wrk loads it. The pass time is what `TorchModel` measures at startup (its
`/readyz` detail), so the table reads as "at this measured pass time, which
placement serves more": the crossover is where `execution="auto"` should switch
(`INLINE_THRESHOLD_S` in asgi_host/model.py). Needs wrk (`apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx
import torch
from torch import nn

from asgi_host import Host, Route
from asgi_host.model import Classifier, TorchModel
from asgi_host.testing import free_port
from bench.http import serve, wrk

SCRIPT = Path(__file__).resolve().parent / "post_predict.lua"


class Spin(nn.Module):
    """Four features in, three logits out, with one `width` x `width` matmul in between."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.up = nn.Linear(4, width)
        self.square = nn.Linear(width, width)
        self.down = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        work = self.square(self.square.weight)  # a width x width matmul: the pass grows as width^3
        out: torch.Tensor = self.down(torch.relu(self.up(x)) @ work.T / self.width)
        return out


def make_app() -> Host:
    """The app each server runs: width and execution from SPIN_WIDTH and SPIN_EXECUTION."""
    width = int(os.environ.get("SPIN_WIDTH", "64"))
    execution = os.environ.get("SPIN_EXECUTION", "auto")
    model = TorchModel(
        lambda: Spin(width),
        None,
        device="cpu",
        warmup=torch.zeros(1, 4),
        execution=execution,  # type: ignore[arg-type]
    )
    endpoint = Classifier(labels=["a", "b", "c"], n_features=4).endpoint
    return Host(resources=[model], routes=[Route("/predict", endpoint, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 256, 384, 512, 768, 1024])
    parser.add_argument("-c", "--connections", type=int, nargs="+", default=[1, 32])
    parser.add_argument("-d", "--seconds", type=int, default=5)
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    args = parser.parse_args()
    args.port = args.port or free_port()
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )
    print(
        "| width | pass ms (startup) | clients | inline req/s | thread req/s | thread / inline "
        "| p99 inline / thread ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for width in args.widths:
        results = {}
        pass_ms = 0.0
        for execution in ("inline", "thread"):
            env = {"SPIN_WIDTH": str(width), "SPIN_EXECUTION": execution}
            process = serve("hypercorn", "bench.execution:app", args.port, env)
            try:
                detail = httpx.get(f"http://127.0.0.1:{args.port}/readyz").json()["resources"]["model"]
                pass_ms = detail["pass_ms"] if execution == "inline" else pass_ms
                wrk(args.port, 4, 1, SCRIPT, "/predict")  # warm up
                for c in args.connections:
                    results[execution, c] = wrk(args.port, c, args.seconds, SCRIPT, "/predict")
            finally:
                process.stop()
        for c in args.connections:
            inline, thread = results["inline", c], results["thread", c]
            print(
                f"| {width} | {pass_ms:.3f} | {c} | {inline['rps']:.0f} | {thread['rps']:.0f} | "
                f"{thread['rps'] / inline['rps']:.2f}x | {inline['p99_ms']:.2f} / {thread['p99_ms']:.2f} |",
                flush=True,
            )


app = make_app() if os.environ.get("SPIN_WIDTH") else None

if __name__ == "__main__":
    main()
