"""PyTorch models as host resources (needs the `torch` extra: `pip install asgi_host[torch]`).

`TorchModel` builds an architecture, loads weights (safetensors, or a state
dict with `weights_only=True`; pickled code is never run), moves it to a
device, warms it up, and yields a `ModelHandle`. Forward passes go through the
handle, in a worker thread, so shutdown can wait for the last one before it
drops the model and gives CUDA memory back. See docs/model.md.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import torch
from torch import nn

# The /predict endpoint lives in its own module; it is part of this public one.
from ._classifier import ClassifierOutput, classifier_endpoint
from ._errors import AsgiHostError, HTTPError, OutOfMemory
from ._extras import raise_missing_extra
from ._placement import choose_cuda_device, release_claim
from ._resources import Resource
from ._worker import PassThreads

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
    """`"auto"` is CUDA when available, else CPU; an explicit CUDA device must exist.

    With several visible GPUs, `"auto"` picks one per process (`asgi_host._placement`): the GPU
    the fewest other processes of this machine have claimed, then the one with the most free memory.
    """
    if str(device) == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if torch.cuda.device_count() > 1:
            # Several GPUs: spread the processes started together (hypercorn -w N) across them.
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
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that record CUDA graphs


class ModelHandle:
    """What a `TorchModel` yields into the state: the way to run the model.

    Handlers call `await handle.run(fn, *args)`; `fn(module, *args)` runs under
    `torch.inference_mode()` on the model's own worker threads (`max_concurrency`
    of them; the thread that loaded and warmed the model runs its passes), or,
    with `inline=True`, on the event loop itself (see `TorchModel`).
    The handle counts passes in flight so shutdown can wait for them,
    and it is the only holder of the module, so dropping it frees the weights
    even if request scopes still hold (copies of) the state.

    A pass that runs out of CUDA memory (`torch.cuda.OutOfMemoryError`) has its
    memory released (the exception and its frames are dropped, then the cache
    is emptied) and raises `OutOfMemory`, a 503 with `Retry-After`; a `Batcher`
    retries its batch in halves on it. `out_of_memory` counts such passes.
    """

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        dtype: torch.dtype,
        max_concurrency: int = 1,
        *,
        inline: bool = False,
        threads: PassThreads | None = None,
        on_out_of_memory: Callable[[], None] | None = None,
    ) -> None:
        self._module: nn.Module | None = module
        self.device = device
        self.dtype = dtype
        self.inline = inline
        self._own_threads = threads is None and not inline  # a caller's threads are the caller's to stop
        self._threads = None if inline else threads or PassThreads(max_concurrency, "asgi_host-model")
        self._in_flight = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._closing = False
        self._on_out_of_memory = on_out_of_memory
        self.forward_passes = 0
        self.out_of_memory = 0

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
        """Run `fn(module, *args)` on the model's thread (inline: on the loop); 503 once shutdown began."""
        if self._closing:
            raise HTTPError(503, "the model is shutting down", headers=[("retry-after", "1")])
        module = self.module
        if self._threads is None:
            # No await: nothing else runs on the loop meanwhile, so nothing to count.
            try:
                return self._call(fn, module, args)
            finally:
                self.forward_passes += 1
        self._in_flight += 1
        self._idle = anyio.Event() if self._in_flight == 1 else self._idle
        try:
            # Not abandoned on cancellation: the thread keeps using the module,
            # so the count must cover it until it really ends.
            return await self._threads.run(self._call, fn, module, args)
        finally:
            self._in_flight -= 1
            self.forward_passes += 1
            if self._in_flight == 0:
                self._idle.set()

    def _call(self, fn: Callable[..., T], module: nn.Module, args: tuple[Any, ...]) -> T:
        try:
            with torch.inference_mode():
                return fn(module, *args)
        except torch.cuda.OutOfMemoryError as exc:
            detail = _oom_detail(exc)
        # Out of the except block: the exception and the pass's frames (its tensors) are gone,
        # so emptying the cache gives their blocks back.
        self.out_of_memory += 1
        if self._on_out_of_memory is not None:
            self._on_out_of_memory()
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            torch.cuda.empty_cache()
        logger.warning(
            "out of memory in a forward pass on %s (%s); cache emptied%s",
            self.device,
            detail,
            f", {_memory_text(self.device)}" if self.device.type == "cuda" else "",
        )
        raise OutOfMemory(detail)

    async def close(self) -> None:
        """Refuse new passes, wait for those in flight, then drop the module. Idempotent."""
        self._closing = True
        await self._idle.wait()
        self._module = None
        if self._threads is not None and self._own_threads:
            self._threads.stop()


def _cuda_graph_thread_state() -> None:
    """Give this thread the state torch.compile's CUDA graph trees keep per thread.

    Up to torch 2.11 it existed only on the thread that imported torch._inductor (and the
    autograd threads that copy it): recording graphs on the model's own thread failed with a
    bare `AssertionError` in `cudagraph_trees.get_obj` (seen on an H100, torch 2.11). Newer
    torch sets it up itself; this is a no-op there.
    """
    try:
        from torch._inductor import cudagraph_trees as trees
    except ImportError:  # pragma: no cover - a torch without inductor cannot compile anyway
        return
    local = getattr(trees, "local", None)
    if local is None or hasattr(local, "tree_manager_containers"):
        return
    if torch._C._is_key_in_tls("tree_manager_containers"):
        return
    local.tree_manager_containers = {}
    local.tree_manager_locks = collections.defaultdict(threading.Lock)


_SKIP_INIT_LOCK = threading.Lock()


@contextmanager
def _skipped_init() -> Iterator[None]:
    """No random init in this thread while building on the meta device: there is nothing to fill,
    and on meta `normal_` runs through torch._refs, whose first use imports torch._dynamo (1.0-1.5 s
    of MiniLM's startup, measured). The weights replace every parameter afterwards anyway.

    `torch.nn.init` is patched for the duration, but other threads calling it meanwhile get the real
    functions, and meta builds take turns (a lock), so nothing else ever skips its init.
    """
    owner = threading.get_ident()

    def keeping(original: Callable[..., Any]) -> Callable[..., Any]:
        def keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == owner:
                return tensor
            return original(tensor, *args, **kwargs)

        return keep

    with _SKIP_INIT_LOCK:
        names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
        saved = {name: getattr(nn.init, name) for name in names}
        try:
            for name in names:
                setattr(nn.init, name, keeping(saved[name]))
            yield
        finally:
            for name, fn in saved.items():
                setattr(nn.init, name, fn)


def _oom_detail(exc: BaseException) -> str:
    """The first sentence of torch's out-of-memory message ("Tried to allocate 2.00 GiB...")."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    head, _, _ = text.partition(". Of the allocated memory")
    return head.removeprefix("CUDA out of memory. ").rstrip(".")[:300]


def _memory_text(device: torch.device) -> str:
    """`free X MiB of Y MiB, allocated A MiB, reserved R MiB` for a CUDA device."""
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    reserved = torch.cuda.memory_reserved(device)
    return (
        f"device free {free / 2**20:.0f} MiB of {total / 2**20:.0f} MiB, "
        f"allocated {allocated / 2**20:.0f} MiB, reserved {reserved / 2**20:.0f} MiB"
    )


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
      `warmup_batch_sizes`: also warm up at these batch sizes (a tensor's
      first row is repeated; a function is called as `fn(module, rows)`).
    - `compile`: `True` or a dict of `torch.compile` options (for example
      `{"mode": "reduce-overhead"}`, which captures CUDA graphs on CUDA). The
      model is compiled during startup and warmed up at every batch size, so no
      request pays for compilation; needs `warmup`. If compiling fails, startup
      fails with the reason, or with `compile_fallback=True` the model serves
      eager and a warning says why.
    - Loading runs on the model's own worker thread; the event loop keeps serving.
    - Forward passes run on that thread (`max_concurrency` threads, one by
      default). `inline=True` runs them on the event loop instead: for models
      whose forward pass takes well under a millisecond, where the thread hop
      costs more than the pass. Each pass then blocks every other request for
      its duration; a warning is logged at startup when a warmup pass (best of
      three after the first) takes over 1 ms.
    - Out of CUDA memory while loading fails startup with the device's free and
      total memory and nothing left allocated; in a pass, see `ModelHandle`.
    - Shutdown refuses new passes (503), waits for passes in flight, drops the
      module, collects garbage and, on CUDA, synchronizes, frees cuBLAS
      workspaces, empties the cache and collects IPC memory, logging memory
      before and after.
    """

    def __init__(
        self,
        build: Callable[[], nn.Module],
        weights: str | os.PathLike[str] | None,
        *,
        name: str = "model",
        device: str | torch.device = "auto",
        dtype: torch.dtype | None = None,
        warmup: torch.Tensor | Callable[..., object] | None = None,
        warmup_batch_sizes: Sequence[int] = (),
        compile: bool | Mapping[str, Any] = False,
        compile_fallback: bool = False,
        max_concurrency: int = 1,
        inline: bool = False,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if any(n < 1 for n in warmup_batch_sizes):
            raise ValueError(f"warmup_batch_sizes must be positive, got {list(warmup_batch_sizes)}")
        self.compile_options: dict[str, Any] | None = (
            dict(compile) if isinstance(compile, Mapping) else {} if compile else None
        )
        if self.compile_options is not None and warmup is None:
            raise ValueError("compile needs a warmup input, or the first request would pay for compilation")
        if self.compile_options is not None and inline:
            raise ValueError("compile and inline do not mix: a compiled pass runs on the model's thread")
        mode = (self.compile_options or {}).get("mode")
        if mode in CUDA_GRAPH_MODES and max_concurrency != 1:
            raise ValueError(
                f"mode={mode!r} records CUDA graphs in the thread that warms the model up, and "
                "concurrent replays corrupt them (seen on an H100): use max_concurrency=1"
            )
        self.inline = inline
        self.build = build
        self.weights = Path(weights) if weights is not None else None
        self.device = device
        self.dtype = dtype
        self.warmup = warmup
        self.warmup_batch_sizes = tuple(warmup_batch_sizes)
        self.compile_fallback = compile_fallback
        self.max_concurrency = max_concurrency
        self.last_load_s: float | None = None  # build + load + warmup, for metrics
        self.compiled: bool = False  # whether the model being served is compiled
        self.out_of_memory = 0  # forward passes that ran out of device memory, over every lifespan
        super().__init__(self._lifespan, name=name)

    @asynccontextmanager
    async def _lifespan(self, host: Any) -> AsyncIterator[ModelHandle]:
        progress = getattr(host, "progress", None)
        report = progress.report if progress is not None else None
        # The model's threads exist before it loads: the thread that warms it up (and records
        # any CUDA graphs) is the one that serves it. Abandoned on cancellation: a startup
        # timeout must not wait for a 2-minute load to finish; the process is about to fail.
        threads = None if self.inline else PassThreads(self.max_concurrency, f"asgi_host-{self.name}")
        try:
            if threads is None:
                loaded = await anyio.to_thread.run_sync(self.load, report, abandon_on_cancel=True)
            else:
                loaded = await threads.run(self.load, report, abandon_on_cancel=True)
        except BaseException:
            if threads is not None:
                threads.stop()
            raise
        module, device, dtype = loaded
        del loaded
        handle = ModelHandle(
            module, device, dtype, inline=self.inline, threads=threads, on_out_of_memory=self._count_oom
        )
        del module
        try:
            yield handle
        finally:
            await handle.close()
            if threads is None:
                await anyio.to_thread.run_sync(self._release, device)
            else:
                # On the model's own thread: CUDA graph trees and cuBLAS's per-thread workspaces
                # live in that thread's state. Then the thread ends (joined, so no daemon thread
                # touches CUDA while the interpreter exits: that aborted a process on an H100),
                # and what it held is collected once more from here.
                await threads.run(self._release, device)
                threads.stop()
                await anyio.to_thread.run_sync(threads.join, 30.0)
                await anyio.to_thread.run_sync(release_cuda_memory)

    def _count_oom(self) -> None:
        self.out_of_memory += 1

    def load(
        self, report: Callable[[str, float], None] | None = None
    ) -> tuple[nn.Module, torch.device, torch.dtype]:
        """Build, load, place, compile and warm up, synchronously (the resource calls it on its thread).

        `report(stage, fraction)` is told each stage as it begins (the host's
        `progress.report`, shown by `/readyz` while loading).
        """
        device = resolve_device(self.device)
        try:
            return self._load(device, report)
        except torch.cuda.OutOfMemoryError as exc:
            detail = _oom_detail(exc)
        # Out of the except block: the half-loaded module is unreferenced, so its memory can go.
        release_cuda_memory()
        memory = _memory_text(device) if device.type == "cuda" else "device memory figures need CUDA"
        size = ""
        if self.weights is not None and self.weights.is_file():
            size = f"; the weights file is {self.weights.stat().st_size / 2**20:.0f} MiB"
        raise ModelLoadError(
            f"out of memory loading the model onto {device}: {detail}{size}; after releasing what the "
            f"load held: {memory}. Free the device (other processes, fewer workers per GPU), pick "
            "another device, or load in a smaller dtype"
        )

    def _load(
        self, device: torch.device, report: Callable[[str, float], None] | None
    ) -> tuple[nn.Module, torch.device, torch.dtype]:
        def stage(name: str, fraction: float) -> None:
            if report is not None:
                report(name, fraction)

        started = time.perf_counter()
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
        stage(f"moving to {device}", 0.7)
        module = module.to(device=device, dtype=self.dtype) if self.dtype else module.to(device=device)
        module.eval()
        dtype = self.dtype or next((p.dtype for p in module.parameters()), torch.get_default_dtype())
        load_s = time.perf_counter() - started
        stage("warmup", 0.75)
        warmup_s = self._warm(module, device, None)
        self.compiled = False
        if self.compile_options is not None:
            module = self._compile(module, device, stage)
        else:
            for rows in self.warmup_batch_sizes:
                stage(f"warmup, batch size {rows}", 0.8)
                self._warm(module, device, rows)
        self.last_load_s = time.perf_counter() - started
        if self.inline and self.warmup is not None:
            # The first pass paid for lazy initialisation; the best of three more is
            # what requests will see (the slower ones are the machine's noise).
            pass_s = min(self._warm(module, device, None) for _ in range(3))
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
            "model %s loaded: device=%s dtype=%s parameters=%d load_s=%.3f warmup_s=%.3f compiled=%s "
            "ready_s=%.3f%s",
            type(getattr(module, "_orig_mod", module)).__name__,
            device,
            dtype,
            params,
            load_s,
            warmup_s,
            self.compiled,
            self.last_load_s,
            f" cuda_before={before} cuda_after={memory}" if memory else "",
        )
        return module, device, dtype

    def _compile(
        self, module: nn.Module, device: torch.device, stage: Callable[[str, float], None]
    ) -> nn.Module:
        """`torch.compile` the module and warm it up at each batch size; eager on failure if allowed."""
        options = self.compile_options or {}
        sizes: list[int | None] = [None, *self.warmup_batch_sizes]
        if options.get("mode") in CUDA_GRAPH_MODES:
            _cuda_graph_thread_state()
        started = time.perf_counter()
        try:
            compiled: nn.Module = torch.compile(module, **options)  # type: ignore[assignment]
            for i, rows in enumerate(sizes):
                label = "the warmup input" if rows is None else f"batch size {rows}"
                stage(
                    f"compiling (torch.compile {options or 'defaults'}), {label}", 0.8 + 0.15 * i / len(sizes)
                )
                self._warm(compiled, device, rows, compiling=True)
                self._warm(compiled, device, rows, compiling=True)  # reduce-overhead records on the 2nd
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            logger.error("torch.compile failed while warming up", exc_info=exc)
            if not self.compile_fallback:
                raise ModelLoadError(
                    f"torch.compile failed while warming up ({reason}); fix the model for the compiler, "
                    "or pass compile_fallback=True to serve it eager"
                ) from exc
            logger.warning(
                "torch.compile failed (%s); serving %s eager (compile_fallback=True)", reason, device
            )
            torch._dynamo.reset()
            for rows in self.warmup_batch_sizes:
                self._warm(module, device, rows)
            return module
        self.compiled = True
        logger.info(
            "model compiled with %s and warmed up at %s in %.1f s",
            options or "torch.compile defaults",
            ", ".join("the warmup input" if n is None else f"{n} rows" for n in sizes),
            time.perf_counter() - started,
        )
        return compiled

    def _build(self, *, meta: bool) -> nn.Module:
        try:
            if meta:
                with torch.device("meta"), _skipped_init():
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
                try:
                    from safetensors.torch import load_file
                except ImportError as error:
                    raise_missing_extra(error, "safetensors", extra="torch", needed_by=f"reading {path}")

                return load_file(str(path), device="cpu")
            if suffix in STATE_DICT_SUFFIXES:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                if not isinstance(state, dict):
                    raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state dict")
                return state
        except (ModelLoadError, ImportError):
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"reading weights {path} failed: {type(exc).__name__}: {exc}\n"
                "(state dicts are read with weights_only=True: files with pickled code are refused)"
            ) from None
        raise ModelLoadError(
            f"weights file {path} has suffix {suffix!r}; use .safetensors or a state dict in .pt/.pth/.bin"
        )

    def _warm(
        self, module: nn.Module, device: torch.device, rows: int | None, *, compiling: bool = False
    ) -> float:
        """One warmup pass (at `rows` rows when given); its seconds. Compile errors pass through."""
        if self.warmup is None:
            return 0.0
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                if isinstance(self.warmup, torch.Tensor):
                    x = self.warmup.to(device=device, dtype=self.dtype or self.warmup.dtype)
                    if rows is not None:
                        x = x[:1].repeat(rows, *([1] * (x.dim() - 1)))
                    module(x)
                elif rows is None:
                    self.warmup(module)
                else:
                    self.warmup(module, rows)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            if compiling:
                raise
            at = "" if rows is None else f" at batch size {rows}"
            raise ModelLoadError(f"warmup{at} failed: {type(exc).__name__}: {exc}") from exc
        return time.perf_counter() - started

    def _release(self, device: torch.device) -> None:
        before = cuda_memory(device) if device.type == "cuda" else {}
        if self.compiled:
            # Compiled code and CUDA graph trees (with their memory pool) outlive the module
            # otherwise. This resets every compiled function in the process (on this thread's
            # graph trees): one compiled model per process is the supported setup.
            torch._dynamo.reset()
            self.compiled = False
        release_cuda_memory()
        if str(self.device) == "auto" and device.type == "cuda" and torch.cuda.device_count() > 1:
            release_claim()
        after = cuda_memory(device) if device.type == "cuda" else {}
        logger.info(
            "model %r released%s", self.name, f": cuda before={before} after={after}" if before else ""
        )
