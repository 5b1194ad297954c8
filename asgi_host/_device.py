"""Devices and CUDA memory: where a model runs, what CUDA holds, and giving it back.

torch is imported inside the functions that place or release a model, never at
import: `cuda_memory()` reads torch from `sys.modules`, so the doctor and the
metrics, which must not import torch, share the one function that reads CUDA
memory with the model.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ._errors import ModelLoadError
from ._gc import collect

if TYPE_CHECKING:
    import torch

__all__ = [
    "cuda_memory",
    "device_memory",
    "memory_text",
    "oom_detail",
    "release_cuda_memory",
    "resolve_device",
]


def cuda_memory(device: torch.device | int | None = None) -> dict[str, int] | None:
    """Allocated and reserved CUDA memory in bytes; None when torch is not imported or has no CUDA.

    Never imports torch: a process that has not imported it uses no CUDA memory.
    """
    torch_module: Any = sys.modules.get("torch")
    if torch_module is None or not torch_module.cuda.is_available():
        return None
    return {
        "allocated_bytes": torch_module.cuda.memory_allocated(device),
        "reserved_bytes": torch_module.cuda.memory_reserved(device),
    }


def device_memory(device: torch.device) -> dict[str, int]:
    """`cuda_memory(device)` for a CUDA device; empty for any other (what logs and details show)."""
    return (cuda_memory(device) or {}) if device.type == "cuda" else {}


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` is CUDA when available, else CPU; an explicit CUDA device must exist.

    With several visible GPUs, `"auto"` picks one per process (`asgi_host._placement`): the GPU
    the fewest other processes of this machine have claimed, then the one with the most free memory.
    """
    import torch

    if str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if torch.cuda.device_count() > 1:
            # Several GPUs: spread the processes started together (hypercorn -w N) across them.
            from ._placement import choose_cuda_device  # imports torch: only here

            return choose_cuda_device()
        return torch.device("cuda")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"device {str(device)!r} is not a torch device: {exc}") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {str(device)!r} was asked for, but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}): "
                "install a CUDA build of torch, check the GPU is visible, or use device='auto' or 'cpu'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise ModelLoadError(
                f"device {str(device)!r} was asked for, but only {count} CUDA device(s) are visible"
                " (check CUDA_VISIBLE_DEVICES)"
            )
    return resolved


def release_cuda_memory() -> None:
    """Give cached CUDA memory back to the driver: best effort, idempotent, safe without CUDA.

    Collects garbage first, what the host froze after startup included (`empty_cache()` can only
    free blocks no tensor uses), waits for queued kernels, frees cuBLAS's workspaces (cuBLAS keeps
    one per handle and stream in the caching allocator, counted as allocated:
    32 MiB on an H100 after a single matmul, measured), then empties the
    caching allocator and frees memory held for tensors shared with other
    processes. It cannot free tensors something still references: drop those
    first. Other models in the process lose nothing but their next matmul
    allocates a fresh workspace.
    """
    import torch

    collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:  # private, but what torch's own tests call for this
            clear_workspaces()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()  # type: ignore[no-untyped-call]


def oom_detail(exc: BaseException) -> str:
    """The first sentence of torch's out-of-memory message ("Tried to allocate 2.00 GiB...")."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    head, _, _ = text.partition(". Of the allocated memory")
    return head.removeprefix("CUDA out of memory. ").rstrip(".")[:300]


def memory_text(device: torch.device) -> str:
    """`free X MiB of Y MiB, allocated A MiB, reserved R MiB` for a CUDA device."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    reserved = torch.cuda.memory_reserved(device)
    return (
        f"device free {free / 2**20:.0f} MiB of {total / 2**20:.0f} MiB, "
        f"allocated {allocated / 2**20:.0f} MiB, reserved {reserved / 2**20:.0f} MiB"
    )
