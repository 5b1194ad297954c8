"""GPU verification: memory around the model's life, and MiniLM throughput with batching.

    python -m bench.gpu                  # prints the tables; on a machine without CUDA, the CPU path
    python -m bench.gpu --write-docs     # also appends them to docs/benchmarks.md
    python -m bench.gpu --run-cuda-tests # also runs `pytest -m cuda` first (on a GPU machine)

For the Iris model and MiniLM, through the real host lifespan (`host.lifespan()`):
memory before load, after load and after shutdown. On CUDA that is
`torch.cuda.memory_allocated()`, `memory_reserved()` and this process's usage as
`nvidia-smi` reports it (which includes the CUDA context, never released before
the process exits); on CPU it is the process's resident set size. Then MiniLM
requests/s with batching off and on at several concurrencies, in-process
(no HTTP), so the model and the batcher are what is measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import anyio
import torch

from asgi_host import Batching, Host
from asgi_host.testing import request
from examples.app import IrisConfig
from examples.app import make_app as make_iris
from examples.embed import EmbedConfig
from examples.embed import make_app as make_embed

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = "A man is eating a piece of bread in the park."


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"CPU only: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def nvidia_smi_mib() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return int(used.strip())
    return 0


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def snapshot() -> str:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        smi = nvidia_smi_mib()
        return (
            f"allocated {torch.cuda.memory_allocated() / 2**20:.1f} MiB, "
            f"reserved {torch.cuda.memory_reserved() / 2**20:.1f} MiB, nvidia-smi {smi} MiB"
        )
    return f"RSS {rss_mib():.0f} MiB"


async def memory_rows(name: str, host: Host) -> list[str]:
    before = snapshot()
    async with host.lifespan():
        loaded = snapshot()
    after = snapshot()
    return [f"| {name} | {before} | {loaded} | {after} |"]


async def throughput(host: Host, clients: int, seconds: float) -> float:
    done = 0
    async with host.lifespan() as state:
        deadline = anyio.current_time() + seconds

        async def client() -> None:
            nonlocal done
            while anyio.current_time() < deadline:
                result = await request(
                    host, "POST", "/embed", json={"texts": [SENTENCE]}, state=state, timeout_s=60
                )
                assert result.status == 200, result.body
                done += 1

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(client)
        elapsed = time.perf_counter() - started
    return done / elapsed


async def measure(clients: list[int], seconds: float, device: str) -> list[str]:
    lines = [f"Device: {device_name()}. Date: {datetime.date.today()}. Command: `python -m bench.gpu`.", ""]
    lines += ["| model | before load | after load | after shutdown |", "|---|---|---|---|"]
    lines += await memory_rows("Iris MLP", make_iris(IrisConfig(device=device, metrics=False)))
    lines += await memory_rows("MiniLM-L6", make_embed(EmbedConfig(device=device)))
    lines += ["", "| clients | MiniLM req/s batching off | batching on | on/off |", "|---|---|---|---|"]
    for c in clients:
        off = await throughput(make_embed(EmbedConfig(device=device)), c, seconds)
        on = await throughput(
            make_embed(EmbedConfig(device=device, batching=Batching(max_batch_rows=128))), c, seconds
        )
        lines.append(f"| {c} | {off:.0f} | {on:.0f} | {on / off:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description="GPU memory and MiniLM batching throughput")
    parser.add_argument("-c", "--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("-d", "--seconds", type=float, default=5.0)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--run-cuda-tests", action="store_true")
    args = parser.parse_args()
    if args.run_cuda_tests:
        # Only the module with cuda tests: collecting the others would import the peer servers.
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
        code = subprocess.call([*command, "tests/test_model.py"], cwd=ROOT)
        print(f"pytest -m cuda exited {code}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = anyio.run(measure, args.clients, args.seconds, device)
    print("\n".join(lines))
    if args.write_docs:
        with (ROOT / "docs" / "benchmarks.md").open("a") as docs:
            docs.write("\n## GPU verification run\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
