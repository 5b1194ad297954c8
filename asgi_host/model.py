"""PyTorch models as host resources (needs the `torch` extra: `pip install asgi_host[torch]`).

`TorchModel` builds an architecture, loads weights (safetensors, or a state
dict with `weights_only=True`; pickled code is never run), moves it to a
device, warms it up, and yields a `ModelHandle`. Forward passes go through the
handle, in a worker thread, so shutdown can wait for the last one before it
drops the model and gives CUDA memory back. See docs/model.md.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import torch
from torch import nn

# The /predict endpoint lives in its own module; it is part of this public one.
from ._classifier import ClassifierOutput, classifier_endpoint
from ._errors import AsgiHostError, HTTPError
from ._resources import Resource

__all__ = [
    "ClassifierOutput",
    "ModelHandle",
    "ModelLoadError",
    "TorchModel",
    "classifier_endpoint",
    "cuda_memory",
    "release_cuda_memory",
    "resolve_device",
]

logger = logging.getLogger("asgi_host.model")

T = TypeVar("T")

SAFETENSORS_SUFFIXES = (".safetensors",)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")


class ModelLoadError(AsgiHostError):
    """The model could not be built, loaded or placed; the message says what to change."""


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` is CUDA when available, else CPU; an explicit CUDA device must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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


def cuda_memory(device: torch.device | None = None) -> dict[str, int]:
    """Allocated and reserved CUDA memory in bytes (empty without CUDA)."""
    if not torch.cuda.is_available():
        return {}
    return {
        "allocated_bytes": torch.cuda.memory_allocated(device),
        "reserved_bytes": torch.cuda.memory_reserved(device),
    }


def release_cuda_memory() -> None:
    """Give cached CUDA memory back to the driver: best effort, idempotent, safe without CUDA.

    Collects garbage first (`empty_cache()` can only free blocks no tensor
    uses), waits for queued kernels, frees cuBLAS's workspaces (cuBLAS keeps
    one per handle and stream in the caching allocator, counted as allocated:
    32 MiB on an H100 after a single matmul, measured), then empties the
    caching allocator and frees memory held for tensors shared with other
    processes. It cannot free tensors something still references: drop those
    first. Other models in the process lose nothing but their next matmul
    allocates a fresh workspace.
    """
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:  # private, but what torch's own tests call for this
            clear_workspaces()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()  # type: ignore[no-untyped-call]


INLINE_WARN_S = 0.001  # an inline forward pass longer than this blocks the loop too long


class ModelHandle:
    """What a `TorchModel` yields into the state: the way to run the model.

    Handlers call `await handle.run(fn, *args)`; `fn(module, *args)` runs in a
    worker thread under `torch.inference_mode()`, at most `max_concurrency` at
    a time (or, with `inline=True`, on the event loop itself: see `TorchModel`).
    The handle counts passes in flight so shutdown can wait for them,
    and it is the only holder of the module, so dropping it frees the weights
    even if request scopes still hold (copies of) the state.
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        max_concurrency: int,
        *,
        inline: bool = False,
    ) -> None:
        self._module: nn.Module | None = module
        self.device = device
        self.dtype = dtype
        self.inline = inline
        self._limiter = anyio.CapacityLimiter(max_concurrency)
        self._in_flight = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._closing = False
        self.forward_passes = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            raise HTTPError(503, "the model has been released (the server is shutting down)")
        return self._module

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(module, *args)` off the event loop (on it when inline); 503 once shutdown has begun."""
        if self._closing:
            raise HTTPError(503, "the model is shutting down", headers=[("retry-after", "1")])
        module = self.module
        if self.inline:
            # No await: nothing else runs on the loop meanwhile, so nothing to count.
            result = self._call(fn, module, args)
            self.forward_passes += 1
            return result
        self._in_flight += 1
        self._idle = anyio.Event() if self._in_flight == 1 else self._idle
        try:
            # Not abandoned on cancellation: the thread keeps using the module,
            # so the count must cover it until it really ends.
            return await anyio.to_thread.run_sync(self._call, fn, module, args, limiter=self._limiter)
        finally:
            self._in_flight -= 1
            self.forward_passes += 1
            if self._in_flight == 0:
                self._idle.set()

    @staticmethod
    def _call(fn: Callable[..., T], module: nn.Module, args: tuple[Any, ...]) -> T:
        with torch.inference_mode():
            return fn(module, *args)

    async def close(self) -> None:
        """Refuse new passes, wait for those in flight, then drop the module. Idempotent."""
        self._closing = True
        await self._idle.wait()
        self._module = None


class TorchModel(Resource):
    """A resource that loads a PyTorch model at startup and releases it at shutdown.

    ::

        model = TorchModel(IrisMLP, "weights.safetensors", device="auto", warmup=torch.zeros(1, 4))
        app = Host(resources=[model], routes=[...])   # state["model"] is a ModelHandle

    - `build()` returns the architecture; `weights` is a `.safetensors` file
      (preferred: no pickle, memory-mapped) or a state dict (`.pt`, `.pth`,
      `.bin`) read with `torch.load(weights_only=True)`; `None` keeps `build()`'s
      own parameters. Keys and shapes must match exactly.
    - `device`: `"auto"` (CUDA when available, else CPU) or explicit (`"cpu"`,
      `"cuda:1"`); `dtype` optionally casts floating-point weights.
    - `warmup`: an input tensor or a `fn(module)` run once after loading.
    - Loading runs in a worker thread; the event loop keeps serving.
    - Forward passes run in worker threads (`max_concurrency` at a time).
      `inline=True` runs them on the event loop instead: for models whose
      forward pass takes well under a millisecond, where the thread hop
      (85-130 us) costs more than the pass. Each pass then blocks every other
      request for its duration; a warning is logged at startup when a
      warmup pass (best of three after the first) takes over 1 ms.
    - Shutdown refuses new passes (503), waits for passes in flight, drops the
      module, collects garbage and, on CUDA, synchronizes, empties the cache
      and collects IPC memory, logging memory before and after.
    """

    def __init__(
        self,
        build: Callable[[], nn.Module],
        weights: str | os.PathLike[str] | None,
        *,
        name: str = "model",
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        warmup: torch.Tensor | Callable[[nn.Module], object] | None = None,
        max_concurrency: int = 1,
        inline: bool = False,
    ) -> None:
        assert max_concurrency >= 1, "max_concurrency must be at least 1"
        self.inline = inline
        self.build = build
        self.weights = Path(weights) if weights is not None else None
        self.device = device
        self.dtype = dtype
        self.warmup = warmup
        self.max_concurrency = max_concurrency
        self.last_load_s: float | None = None  # build + load + warmup, for metrics
        super().__init__(self._lifespan, name=name)

    @asynccontextmanager
    async def _lifespan(self, host: Any) -> AsyncIterator[ModelHandle]:
        progress = getattr(host, "progress", None)
        report = progress.report if progress is not None else None
        # Abandoned on cancellation: a startup timeout must not wait for a
        # 2-minute load to finish; the process is about to fail anyway.
        module, device, dtype = await anyio.to_thread.run_sync(self.load, report, abandon_on_cancel=True)
        handle = ModelHandle(module, device, dtype, self.max_concurrency, inline=self.inline)
        del module
        try:
            yield handle
        finally:
            await handle.close()
            await anyio.to_thread.run_sync(self._release, device)

    def load(
        self, report: Callable[[str, float], None] | None = None
    ) -> tuple[nn.Module, torch.device, torch.dtype]:
        """Build, load, place and warm up, synchronously (the resource calls it in a thread).

        `report(stage, fraction)` is told each stage as it begins (the host's
        `progress.report`, shown by `/readyz` while loading).
        """

        def stage(name: str, fraction: float) -> None:
            if report is not None:
                report(name, fraction)

        started = time.perf_counter()
        device = resolve_device(self.device)
        before = cuda_memory(device) if device.type == "cuda" else {}
        stage("building the architecture", 0.05)
        if self.weights is None:
            module = self._build(meta=False)
        else:
            # Built on the meta device (no memory, no random init), then the
            # loaded tensors become the parameters (`assign=True`): no init and
            # no copy, which at 1 GB is most of the load time.
            module = self._build(meta=True)
            stage(f"reading {self.weights.name}", 0.2)
            state = self._read_weights(self.weights)
            stage("loading the weights into the architecture", 0.6)
            self._load_state(module, state, assign=True)
            if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
                # A buffer the weights do not carry: build for real and copy in.
                module = self._build(meta=False)
                self._load_state(module, state, assign=False)
            del state
        stage(f"moving to {device}", 0.75)
        module = module.to(device=device, dtype=self.dtype) if self.dtype else module.to(device=device)
        module.eval()
        dtype = self.dtype or next((p.dtype for p in module.parameters()), torch.get_default_dtype())
        load_s = time.perf_counter() - started
        stage("warmup", 0.9)
        warmup_s = self._warm(module, device)
        self.last_load_s = time.perf_counter() - started
        if self.inline and self.warmup is not None:
            # The first pass paid for lazy initialisation; the best of three more is
            # what requests will see (the slower ones are the machine's noise).
            pass_s = min(self._warm(module, device) for _ in range(3))
            if pass_s > INLINE_WARN_S:
                logger.warning(
                    "inline=True but a forward pass of %s took %.1f ms: each one blocks the event loop (and "
                    "every other request) that long; use inline=False (the default) for this model",
                    type(module).__name__,
                    pass_s * 1e3,
                )
        params = sum(p.numel() for p in module.parameters())
        memory = cuda_memory(device) if device.type == "cuda" else {}
        logger.info(
            "model %s loaded: device=%s dtype=%s parameters=%d load_s=%.3f warmup_s=%.3f%s",
            type(module).__name__,
            device,
            dtype,
            params,
            load_s,
            warmup_s,
            f" cuda_before={before} cuda_after={memory}" if memory else "",
        )
        return module, device, dtype

    def _build(self, *, meta: bool) -> nn.Module:
        try:
            if meta:
                with torch.device("meta"):
                    return self.build()
            return self.build()
        except Exception as exc:
            raise ModelLoadError(f"building the architecture failed: {type(exc).__name__}: {exc}") from exc

    def _load_state(self, module: nn.Module, state: dict[str, torch.Tensor], *, assign: bool) -> None:
        try:
            module.load_state_dict(state, strict=True, assign=assign)
        except RuntimeError as exc:
            raise ModelLoadError(
                f"weights {self.weights} do not fit {type(module).__name__}: {exc}\n"
                "build the architecture the weights were saved from, or retrain and save again"
            ) from None

    def _read_weights(self, path: Path) -> dict[str, torch.Tensor]:
        if not path.is_file():
            raise ModelLoadError(
                f"weights file {path} does not exist (working directory {Path.cwd()}): "
                "check the path, or train and save the weights first"
            )
        suffix = path.suffix.lower()
        try:
            if suffix in SAFETENSORS_SUFFIXES:
                from safetensors.torch import load_file

                return load_file(str(path), device="cpu")
            if suffix in STATE_DICT_SUFFIXES:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                if not isinstance(state, dict):
                    raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state dict")
                return state
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"reading weights {path} failed: {type(exc).__name__}: {exc}\n"
                "(state dicts are read with weights_only=True: files with pickled code are refused)"
            ) from None
        raise ModelLoadError(
            f"weights file {path} has suffix {suffix!r}; use .safetensors or a state dict in .pt/.pth/.bin"
        )

    def _warm(self, module: nn.Module, device: torch.device) -> float:
        if self.warmup is None:
            return 0.0
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                if isinstance(self.warmup, torch.Tensor):
                    module(self.warmup.to(device=device, dtype=self.dtype or self.warmup.dtype))
                else:
                    self.warmup(module)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except Exception as exc:
            raise ModelLoadError(f"warmup failed: {type(exc).__name__}: {exc}") from exc
        return time.perf_counter() - started

    def _release(self, device: torch.device) -> None:
        before = cuda_memory(device) if device.type == "cuda" else {}
        release_cuda_memory()
        after = cuda_memory(device) if device.type == "cuda" else {}
        logger.info(
            "model %r released%s", self.name, f": cuda before={before} after={after}" if before else ""
        )
