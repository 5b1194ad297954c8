"""Which GPU a process's model goes to when `device="auto"` and several are visible.

`hypercorn -w 4` on a machine with 4 GPUs starts 4 processes at once, each
loading its own model. Left alone, every one of them would pick `cuda:0`. Here
each process, under an exclusive lock on a small claims file shared by the
processes of the machine, drops the claims of processes that no longer run,
picks the GPU with the fewest live claims (ties: the most free memory, then
the lowest index), records its own claim and lets go of the lock. Free memory
alone cannot spread processes started together: none has loaded anything yet
when the others choose.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["choose_cuda_device", "claims_path", "release_claim"]

logger = logging.getLogger("asgi_host.model")

MIB = 2**20


def claims_path() -> Path:
    """`ASGI_HOST_PLACEMENT_FILE`, or a per-user file in the temporary directory."""
    configured = os.environ.get("ASGI_HOST_PLACEMENT_FILE")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"asgi_host-gpu-placement-{os.getuid()}.json"


def choose_cuda_device(lock_path: str | os.PathLike[str] | None = None) -> torch.device:
    """The CUDA device this process should load its model on.

    `lock_path` is the JSON claims file (default `claims_path()`), locked through `<lock_path>.lock`.
    """
    count = torch.cuda.device_count()
    if count <= 1:
        return torch.device("cuda:0")
    memory = [torch.cuda.mem_get_info(i) for i in range(count)]  # (free, total) bytes
    free = [free_bytes for free_bytes, _ in memory]
    claims_file = Path(lock_path) if lock_path is not None else claims_path()
    try:
        with _locked(claims_file):
            claims = _live_claims(claims_file)
            others = [sum(1 for device in claims.values() if device == i) for i in range(count)]
            index = min(range(count), key=lambda i: (others[i], -free[i], i))
            claims[os.getpid()] = index
            _write(claims_file, claims)
    except OSError as exc:
        index = max(range(count), key=lambda i: (free[i], -i))
        others = [0] * count
        logger.warning("placement file %s unusable (%s): choosing by free memory alone", claims_file, exc)
    logger.info(
        "device='auto' with %d GPUs: cuda:%d (free %.0f MiB of %.0f MiB; other processes per GPU: %s)",
        count,
        index,
        free[index] / MIB,
        memory[index][1] / MIB,
        others,
    )
    return torch.device(f"cuda:{index}")


def release_claim(lock_path: str | os.PathLike[str] | None = None) -> None:
    """Forget this process's claim (at shutdown). Idempotent; never raises."""
    claims_file = Path(lock_path) if lock_path is not None else claims_path()
    if not claims_file.exists():
        return
    try:
        with _locked(claims_file):
            claims = _live_claims(claims_file)
            _write(claims_file, claims)
    except OSError as exc:
        logger.warning("could not release the GPU claim in %s: %s", claims_file, exc)


@contextlib.contextmanager
def _locked(claims_file: Path) -> Iterator[None]:
    lock = claims_file.with_name(claims_file.name + ".lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _live_claims(claims_file: Path) -> dict[int, int]:
    """The claims of running processes other than this one."""
    try:
        raw = json.loads(claims_file.read_text()) if claims_file.exists() else {}
        claims = {int(pid): int(device) for pid, device in raw.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        logger.warning("placement file %s is unreadable (%s): starting it afresh", claims_file, exc)
        return {}
    return {pid: device for pid, device in claims.items() if pid != os.getpid() and _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _write(claims_file: Path, claims: dict[int, int]) -> None:
    temporary = claims_file.with_name(claims_file.name + f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps({str(pid): device for pid, device in claims.items()}))
    temporary.replace(claims_file)
