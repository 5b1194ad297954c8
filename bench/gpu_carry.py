"""Pack what `bench/gpu.py` needs for the offline GPU machine into `.carry/` (git-ignored).

    python -m bench.gpu_carry                 # here, with internet to PyPI
    # then, through the device tool: run(command=<the line it prints>, carry=[".carry"])

The GPU machine (see ../.library/device/KINDS.md) has Python 3.12, PyTorch with
CUDA, safetensors, tokenizers, anyio, httpx and pytest, and reaches nothing. This
downloads the cp312 manylinux wheels of what it lacks (msgspec, hypercorn and
its h2/wsproto stack, trio) and writes a half-precision copy of the MiniLM
model folder (the package's 88 MB of float32 weights exceed the tool's 64 MiB
transfer limit; float16 is 45 MB), which `examples.minilm` loads through
`MINILM_DIR`. It prints the command to run there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from examples.minilm import save_half_copy

ROOT = Path(__file__).resolve().parent.parent
# Not in the GPU image's package list (KINDS.md, 2026-11-17); pinned to what the tests use here.
WHEELS = [
    "msgspec==0.22.0",
    "anyio==4.16.0",
    "hypercorn==0.18.0",
    "h2==4.4.1",
    "hpack==4.2.0",
    "hyperframe==6.1.0",
    "priority==2.0.0",
    "wsproto==1.3.2",
    "trio==0.35.0",
    "outcome==1.3.0.post0",
    "sniffio==1.3.1",
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any"]


def download_wheels(destination: Path, versions: list[str]) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    target = ["--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(destination)]
    subprocess.run([*pip, *target, *versions], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".carry")
    parser.add_argument("--no-wheels", action="store_true")
    args = parser.parse_args()
    if not args.no_wheels:
        download_wheels(args.out / "whl", WHEELS)
    save_half_copy(args.out / "minilm")
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB (the device tool carries at most 64 MiB)")
    command = (
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site"
        " .carry/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD MINILM_DIR=$PWD/.carry/minilm"
        " PYTHONUNBUFFERED=1 && python3 -m bench.gpu --run-cuda-tests --write-docs -c 1 8 32 64"
        " && cp docs/benchmarks.md $OUT/"
    )
    print(json.dumps({"command": command, "carry": [".carry"]}, indent=1))


if __name__ == "__main__":
    main()
