"""`TorchModel`, the resource that loads a PyTorch model, and `ModelHandle`, the way to run it.

`TorchModel` builds an architecture, loads weights (safetensors, or a state
dict with `weights_only=True`; pickled code is never run), moves it to a
device, warms it up, and yields a `ModelHandle`. Forward passes go through the
handle, on the model's own thread or inline, so shutdown can wait for the last
one before it drops the model and gives CUDA memory back. The public face is
`asgi_host.model`; see docs/model.md.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import torch
from torch import nn

from ._device import cuda_memory, memory_text, oom_detail, release_cuda_memory, resolve_device
from ._errors import HTTPError, ModelLoadError, OutOfMemory
from ._extras import raise_missing_extra
from ._inflight import InFlight
from ._placement import release_claim
from ._reload import ReloadError, Replacement, record_version
from ._resources import Resource
from ._worker import PassThreads

__all__ = ["Execution", "ModelHandle", "TorchModel"]

logger = logging.getLogger("asgi_host.model")

T = TypeVar("T")

SAFETENSORS_SUFFIXES = (".safetensors",)
STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin")


Execution = Literal["auto", "inline", "thread"]
# `execution="auto"` runs passes on the event loop when the best timed warmup pass takes at most
# this long. A thread hand-off costs the loop about 0.1 ms per request and a pass that short
# blocks it for less; docs/benchmarks.md ("Where passes run") has the measurement behind it.
INLINE_THRESHOLD_S = 0.0005
# What a load sets on the TorchModel for the version it loads (a failed reload puts them back).
_PER_VERSION = ("weights", "device", "inline", "execution_reason", "pass_s", "last_load_s", "compiled")
INLINE_WARN_S = 0.001  # an inline forward pass longer than this blocks the loop too long
TIMED_PASSES = 5  # warmup passes timed to choose where passes run (fewer once they take 0.2 s)
TIMED_PASSES_BUDGET_S = 0.2
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that record CUDA graphs


class ModelHandle:
    """What a `TorchModel` yields into the state: the way to run the model.

    Handlers call `await handle.run(fn, *args)`; `fn(module, *args)` runs under
    `torch.inference_mode()` on the model's own worker threads (`max_concurrency`
    of them; the thread that loaded and warmed the model runs its passes), or,
    when `inline` (see `TorchModel(execution=...)`), on the event loop itself.
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
        self._in_flight = InFlight()
        self._closing = False
        self._on_out_of_memory = on_out_of_memory
        self.forward_passes = 0
        self.out_of_memory = 0
        self.version: str | None = None  # of the weights (TorchModel sets it): the x-model-version header
        # Set when a reload retired this handle: passes asked of it afterwards run on the new one.
        self._successor: ModelHandle | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight.count

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            raise HTTPError(503, "the model has been released (the server is shutting down)")
        return self._module

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(module, *args)` on the model's thread (or inline, on the loop); 503 once shutdown began."""
        if self._closing:
            if self._successor is not None:
                # A request that copied the state just before a reload swapped it: the new version answers.
                return await self._successor.run(fn, *args)
            raise HTTPError(503, "the model is shutting down", headers=[("retry-after", "1")])
        record_version(self.version)
        module = self.module
        if self._threads is None:
            # No await: nothing else runs on the loop meanwhile, so nothing to count.
            try:
                return self._call(fn, module, args)
            finally:
                self.forward_passes += 1
        with self._in_flight:
            try:
                # Not abandoned on cancellation: the thread keeps using the module,
                # so the count must cover it until it really ends.
                return await self._threads.run(self._call, fn, module, args)
            finally:
                self.forward_passes += 1

    def _call(self, fn: Callable[..., T], module: nn.Module, args: tuple[Any, ...]) -> T:
        try:
            with torch.inference_mode():
                return fn(module, *args)
        except torch.cuda.OutOfMemoryError as exc:
            detail = oom_detail(exc)
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
            f", {memory_text(self.device)}" if self.device.type == "cuda" else "",
        )
        raise OutOfMemory(detail)

    async def close(self) -> None:
        """Refuse new passes, wait for those in flight, then drop the module. Idempotent."""
        self._closing = True
        await self._in_flight.wait_idle()
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
    - `warmup`: an input tensor or a `fn(module)` run after loading: once to
      warm up, then up to five more times to time a pass (see `execution`).
      `warmup_batch_sizes`: also warm up at these batch sizes (a tensor's
      first row is repeated; a function is called as `fn(module, rows)`).
    - `compile`: `True` or a dict of `torch.compile` options (for example
      `{"mode": "reduce-overhead"}`, which captures CUDA graphs on CUDA). The
      model is compiled during startup and warmed up at every batch size, so no
      request pays for compilation; needs `warmup`. If compiling fails, startup
      fails with the reason, or with `compile_fallback=True` the model serves
      eager and a warning says why.
    - Loading runs on the model's own worker thread; the event loop keeps serving.
    - `execution`: where forward passes run. `"thread"`: on that thread
      (`max_concurrency` threads, one by default). `"inline"`: on the event
      loop, for models whose pass takes well under a millisecond, where the
      thread hand-off costs more than the pass; each pass then blocks every
      other request for its duration (a warning is logged when the best timed
      warmup pass takes over 1 ms). `"auto"` (the default) times the warmup
      pass (best of up to five after the first) and goes inline when it takes
      at most `inline_threshold_s` (0.5 ms), else threaded; compiled models,
      `max_concurrency > 1` and models without a `warmup` always get the
      thread. The choice and the time are logged, in `/readyz`'s detail
      (`execution`, `pass_ms`) and in `asgi-host check`.
    - Out of CUDA memory while loading fails startup with the device's free and
      total memory and nothing left allocated; in a pass, see `ModelHandle`.
    - Shutdown refuses new passes (503), waits for passes in flight, drops the
      module, collects garbage and, on CUDA, synchronizes, frees cuBLAS
      workspaces, empties the cache and collects IPC memory, logging memory
      before and after.
    - `version`: names the weights in `x-model-version`, `/readyz` and the metrics;
      by default the first 12 hex digits of the weights file's sha256.
      `host.reload(name, weights=...)` swaps in new weights while serving
      (`reload()`; see docs/production.md, "Reloading a model").
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
        execution: Execution = "auto",
        inline_threshold_s: float = INLINE_THRESHOLD_S,
        version: str | None = None,
    ) -> None:
        if execution not in ("auto", "inline", "thread"):
            raise ValueError(f"execution is 'auto', 'inline' or 'thread', got {execution!r}")
        if inline_threshold_s < 0:
            raise ValueError(f"inline_threshold_s must be at least 0, got {inline_threshold_s}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if any(n < 1 for n in warmup_batch_sizes):
            raise ValueError(f"warmup_batch_sizes must be positive, got {list(warmup_batch_sizes)}")
        self.compile_options: dict[str, Any] | None = (
            dict(compile) if isinstance(compile, Mapping) else {} if compile else None
        )
        if self.compile_options is not None and warmup is None:
            raise ValueError("compile needs a warmup input, or the first request would pay for compilation")
        if self.compile_options is not None and execution == "inline":
            raise ValueError(
                "compile and execution='inline' do not mix: a compiled pass runs on the model's thread"
            )
        mode = (self.compile_options or {}).get("mode")
        if mode in CUDA_GRAPH_MODES and max_concurrency != 1:
            raise ValueError(
                f"mode={mode!r} records CUDA graphs in the thread that warms the model up, and "
                "concurrent replays corrupt them (seen on an H100): use max_concurrency=1"
            )
        self.execution: Execution = execution
        self.inline_threshold_s = inline_threshold_s
        # Decided at each startup (auto: from the timed warmup pass), for logs, /readyz and metrics.
        self.inline: bool = execution == "inline"
        self.execution_reason: str | None = None
        self.pass_s: float | None = None
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
        self.given_version = version  # else the weights file's sha256, first 12 hex digits
        super().__init__(self._lifespan, name=name)

    @asynccontextmanager
    async def _lifespan(self, host: Any) -> AsyncIterator[ModelHandle]:
        progress = getattr(host, "progress", None)
        report = progress.report if progress is not None else None
        # The model's threads exist before it loads: the thread that warms it up (and records
        # any CUDA graphs) is the one that serves it. Abandoned on cancellation: a startup
        # timeout must not wait for a 2-minute load to finish; the process is about to fail.
        # Passes that run inline leave the thread idle; it still releases the model at the end.
        threads = PassThreads(self.max_concurrency, f"asgi_host-{self.name}")
        try:
            loaded = await threads.run(self.load, report, abandon_on_cancel=True)
            version = self.given_version or await threads.run(self._version_of, loaded[0])
        except BaseException:
            threads.stop()
            raise
        module, device, dtype = loaded
        del loaded
        handle = ModelHandle(
            module, device, dtype, inline=self.inline, threads=threads, on_out_of_memory=self._count_oom
        )
        handle.version = self.version = version
        del module
        self._serving = (handle, threads, device)
        try:
            yield handle
        finally:
            if self._serving is not None:  # a reload may have replaced the handle yielded here
                handle, threads, device = self._serving
            self._serving = None
            await handle.close()
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

    # ---- reloading (host.reload, the admin route): see asgi_host/_reload.py --------------------

    version: str | None = None  # of the model serving now: given, or its weights' sha256 (12 hex digits)
    reloads = 0  # successful reloads, over every lifespan
    reload_failures = 0  # reloads whose new version failed to load or warm up
    last_reload: dict[str, Any] | None = None  # the outcome of the last reload, for /readyz
    _serving: tuple[ModelHandle, PassThreads, torch.device] | None = None
    _configured_weights: Path | None = None  # the weights given at construction (reloads may change them)

    def reload_root(self) -> Path | None:
        """The directory the admin route takes new weights from: the configured weights' (resolved)."""
        configured = self._configured_weights or self.weights
        return None if configured is None else Path(os.path.realpath(configured.parent))

    async def reload(
        self, host: Any = None, *, weights: str | os.PathLike[str] | None = None, version: str | None = None
    ) -> Replacement:
        """Build, load and warm up a new version (new `weights`, else the same file again) beside the
        one serving, on threads of its own; hand it to the host to swap in (`host.reload` calls this).

        The new version goes on the device the current one is on, with the same settings. Fails with
        `ReloadError` (the current version keeps serving, nothing of the new one stays allocated)
        when it cannot be loaded. Compiled models are refused: releasing the old version would reset
        every compiled function of the process, the new one's included (restart the process instead).
        """
        if self.compile_options is not None:
            raise ReloadError(
                f"model {self.name!r} is compiled and cannot be reloaded in place (releasing the old version "
                "resets torch.compile for the whole process): restart the process with the new weights",
                status=409,
            )
        serving = self._serving
        if serving is None:
            raise ReloadError(f"model {self.name!r} is not serving: nothing to reload", status=409)
        old_handle, old_threads, device = serving
        if self._configured_weights is None:
            self._configured_weights = self.weights
        path = Path(weights) if weights is not None else self.weights
        # What a load sets describes the version serving until the swap: put it back on failure.
        kept = {k: getattr(self, k) for k in _PER_VERSION}
        self.weights = path
        self.device = device  # no new placement: the version serving shows the device works
        threads = PassThreads(self.max_concurrency, f"asgi_host-{self.name}")
        started = time.perf_counter()
        failure: str | None = None
        try:
            try:
                loaded = await threads.run(self.load)
                new_version = version or await threads.run(self._version_of, loaded[0])
            except Exception as exc:
                failure = str(exc).strip() or type(exc).__name__
                loaded = None
        except BaseException:
            self._undo_reload(kept, threads)
            raise
        status = 422  # the new version failed
        if failure is None and self._serving is not serving:
            failure = "the host shut down (or another reload finished) while this one was loading"
            status = 409
        if failure is not None or loaded is None:
            # Out of the except block: the half-loaded model is unreferenced now, so its memory can go.
            loaded = None
            self._undo_reload(kept, threads)
            await anyio.to_thread.run_sync(threads.join, 30.0)
            await anyio.to_thread.run_sync(release_cuda_memory)
            self.reload_failures += 1
            self.last_reload = {
                "status": "failed",
                "error": failure,
                "weights": str(path),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "serving": self.version,
            }
            serving_now = f"version {self.version} keeps serving"
            raise ReloadError(f"model {self.name!r}: {failure} ({serving_now})", status=status)
        module, new_device, dtype = loaded
        del loaded
        self.device = kept["device"]
        handle = ModelHandle(
            module, new_device, dtype, inline=self.inline, threads=threads, on_out_of_memory=self._count_oom
        )
        del module
        previous = old_handle.version
        handle.version = self.version = new_version
        self._serving = (handle, threads, new_device)
        self.reloads += 1
        self.last_reload = {
            "status": "ok",
            "version": new_version,
            "previous": previous,
            "weights": str(path),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_s": round(time.perf_counter() - started, 3),
        }

        async def retire() -> None:
            await self._retire(old_handle, old_threads, handle)

        return Replacement(handle, retire, version=new_version, previous=previous)

    def _undo_reload(self, kept: dict[str, Any], threads: PassThreads) -> None:
        for key, value in kept.items():
            setattr(self, key, value)
        threads.stop()

    async def _retire(self, old: ModelHandle, threads: PassThreads, successor: ModelHandle) -> None:
        """After the swap: the old version finishes its passes in flight, then is released like at
        shutdown (module dropped, CUDA memory freed on its own thread, which then ends and is joined)."""
        old._successor = successor
        await old.close()
        device = old.device
        before = (cuda_memory(device) or {}) if device.type == "cuda" else {}
        await threads.run(release_cuda_memory)
        threads.stop()
        await anyio.to_thread.run_sync(threads.join, 30.0)
        if device.type == "cuda":
            # What the ended thread held (its CUDA state) goes with one more collection. On the CPU
            # the one above did it all; a second full collection would only stall the loop again.
            await anyio.to_thread.run_sync(release_cuda_memory)
        after = (cuda_memory(device) or {}) if device.type == "cuda" else {}
        logger.info(
            "model %r version %s released after the reload%s",
            self.name,
            old.version,
            f": cuda before={before} after={after}" if before else "",
        )

    def _version_of(self, module: nn.Module) -> str:
        """The first 12 hex digits of the weights file's sha256 (without a file: of the parameters)."""
        digest = hashlib.sha256()
        if self.weights is not None:
            with self.weights.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        else:
            for key, tensor in module.state_dict().items():
                digest.update(key.encode())
                raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                digest.update(raw.numpy().tobytes())
        return digest.hexdigest()[:12]

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
            detail = oom_detail(exc)
        # Out of the except block: the half-loaded module is unreferenced, so its memory can go.
        release_cuda_memory()
        memory = memory_text(device) if device.type == "cuda" else "device memory figures need CUDA"
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
        before = (cuda_memory(device) or {}) if device.type == "cuda" else {}
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
        self.pass_s = self._time_pass(module, device)
        self.inline, self.execution_reason = self._choose_execution(self.pass_s)
        self.last_load_s = time.perf_counter() - started
        if self.execution == "inline" and self.pass_s is not None and self.pass_s > INLINE_WARN_S:
            logger.warning(
                "execution='inline' but a forward pass of %s took %.1f ms: each one blocks the event loop "
                "(and every other request) that long; use execution='auto' or 'thread' for this model",
                type(module).__name__,
                self.pass_s * 1e3,
            )
        params = sum(p.numel() for p in module.parameters())
        memory = (cuda_memory(device) or {}) if device.type == "cuda" else {}
        logger.info(
            "model %s loaded: device=%s dtype=%s parameters=%d load_s=%.3f warmup_s=%.3f compiled=%s "
            "ready_s=%.3f execution=%s (%s)%s",
            type(getattr(module, "_orig_mod", module)).__name__,
            device,
            dtype,
            params,
            load_s,
            warmup_s,
            self.compiled,
            self.last_load_s,
            "inline" if self.inline else "thread",
            self.execution_reason,
            f" cuda_before={before} cuda_after={memory}" if memory else "",
        )
        return module, device, dtype

    def _time_pass(self, module: nn.Module, device: torch.device) -> float | None:
        """The best of up to `TIMED_PASSES` warmup passes (None without a warmup input).

        The first pass has already paid for lazy initialisation; the best of the
        next few is what requests will see (the slower ones are the machine's noise).
        With `warmup_batch_sizes`, the pass is timed at the largest: a batcher's
        pass of that many rows is the longest a request can make the loop wait.
        """
        if self.warmup is None:
            return None
        rows = max(self.warmup_batch_sizes) if self.warmup_batch_sizes else None
        times: list[float] = []
        while len(times) < TIMED_PASSES and sum(times) < TIMED_PASSES_BUDGET_S:
            times.append(self._warm(module, device, rows))
        return min(times)

    def _choose_execution(self, pass_s: float | None) -> tuple[bool, str]:
        """Whether passes run inline, and why (for the log, /readyz and `asgi-host check`)."""
        if self.execution != "auto":
            return self.execution == "inline", f"execution={self.execution!r} was asked for"
        if self.compiled:
            return False, "compiled: passes run on the thread that compiled and warmed the model"
        if self.max_concurrency > 1:
            return False, f"max_concurrency={self.max_concurrency} asks for threads"
        if pass_s is None:
            return False, "no warmup input to time a pass with"
        limit_ms = self.inline_threshold_s * 1e3
        if pass_s <= self.inline_threshold_s:
            return True, f"a pass takes {pass_s * 1e3:.3f} ms, within the {limit_ms:g} ms inline threshold"
        return False, f"a pass takes {pass_s * 1e3:.3f} ms, over the {limit_ms:g} ms inline threshold"

    def detail(self) -> dict[str, Any]:
        """What `/readyz` and `asgi-host check` show of this model once it is loaded."""
        return {
            "execution": "inline" if self.inline else "thread",
            "execution_reason": self.execution_reason,
            "pass_ms": None if self.pass_s is None else round(self.pass_s * 1e3, 4),
            "compiled": self.compiled,
            "version": self.version,
            "last_reload": self.last_reload,
        }

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
        before = (cuda_memory(device) or {}) if device.type == "cuda" else {}
        if self.compiled:
            # Compiled code and CUDA graph trees (with their memory pool) outlive the module
            # otherwise. This resets every compiled function in the process (on this thread's
            # graph trees): one compiled model per process is the supported setup.
            torch._dynamo.reset()
            self.compiled = False
        release_cuda_memory()
        if str(self.device) == "auto" and device.type == "cuda" and torch.cuda.device_count() > 1:
            release_claim()
        after = (cuda_memory(device) or {}) if device.type == "cuda" else {}
        logger.info(
            "model %r released%s", self.name, f": cuda before={before} after={after}" if before else ""
        )
