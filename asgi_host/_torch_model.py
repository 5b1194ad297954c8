"""`TorchModel`: the resource that loads a PyTorch model at startup, swaps it on reload, releases it.

Each version of the model (the one loaded at startup, then one per reload) is loaded by
`_loading.load_version` on threads of its own, served by a `ModelHandle`, and released the one
way, `_release`: passes drained, the module dropped, memory freed on its own thread, the thread
ended and joined. The public face is `asgi_host.model`; see docs/model.md.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import torch
from torch import nn

from ._device import device_memory, release_cuda_memory
from ._errors import ReloadError
from ._handle import ModelHandle
from ._loading import INLINE_THRESHOLD_S, Execution, LoadSpec, ModelVersion, load_version
from ._placement import release_claim
from ._reload import Replacement
from ._resources import Resource
from ._versions import check_version
from ._view import HostView
from ._worker import PassThreads

__all__ = ["TorchModel"]

logger = logging.getLogger("asgi_host.model")

JOIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class _Serving:
    """The version serving now: its handle, its threads and what it is."""

    handle: ModelHandle
    threads: PassThreads
    loaded: ModelVersion


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
      module, collects garbage (on the CPU only when a reference cycle kept the
      module) and, on CUDA, synchronizes, frees cuBLAS workspaces, empties the
      cache and collects IPC memory, logging memory before and after.
    - `version`: names the weights in `x-model-version`, `/readyz` and the metrics;
      by default the first 12 hex digits of the sha256 of the weights loaded.
      `host.reload(name, weights=...)` swaps in new weights while serving
      (`reload()`; see docs/production.md, "Reloading a model").

    What the version loaded last is (`version`, `weights`, `pass_s`, `compiled`, ...) is in
    `loaded` (a `ModelVersion`), and read through the properties of the same names.
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
        self.spec = LoadSpec(
            build=build,
            dtype=dtype,
            warmup=warmup,
            warmup_batch_sizes=tuple(warmup_batch_sizes),
            compile_options=LoadSpec.compile_setting(compile),
            compile_fallback=compile_fallback,
            execution=execution,
            inline_threshold_s=inline_threshold_s,
            max_concurrency=max_concurrency,
        )
        self.configured_weights = Path(weights) if weights is not None else None
        self.device = device  # as configured ("auto", "cuda:1", ...); `loaded.device` is where it is
        self.given_version = check_version(version)  # else the weights' sha256, first 12 hex digits
        self.loaded: ModelVersion | None = None  # the version serving (or served last)
        self._serving: _Serving | None = None
        self.out_of_memory = 0  # forward passes that ran out of device memory, over every lifespan
        self.reloads = 0  # successful reloads, over every lifespan
        self.reload_failures = 0  # reloads whose new version failed to load or warm up
        self.last_reload: dict[str, Any] | None = None  # the outcome of the last reload, for /readyz
        super().__init__(self._lifespan, name=name)

    # -- what the version loaded last is ---------------------------------------------------------

    @property
    def version(self) -> str | None:
        return None if self.loaded is None else self.loaded.version

    @property
    def weights(self) -> Path | None:
        """The weights serving (or served last): the configured ones until a reload changes them."""
        return self.configured_weights if self.loaded is None else self.loaded.weights

    @property
    def compiled(self) -> bool:
        return self.loaded is not None and self.loaded.compiled

    @property
    def pass_s(self) -> float | None:
        return None if self.loaded is None else self.loaded.pass_s

    @property
    def execution_reason(self) -> str | None:
        return None if self.loaded is None else self.loaded.execution_reason

    @property
    def last_load_s(self) -> float | None:
        return None if self.loaded is None else self.loaded.load_s

    def detail(self) -> dict[str, Any]:
        """What `/readyz` and `asgi-host check` show of this model once it is loaded."""
        loaded = self.loaded
        return {
            "execution": "inline" if loaded and loaded.inline else "thread",
            "execution_reason": self.execution_reason,
            "pass_ms": None if self.pass_s is None else round(self.pass_s * 1e3, 4),
            "compiled": self.compiled,
            "version": self.version,
            "last_reload": self.last_reload,
        }

    # -- loading and releasing one version -------------------------------------------------------

    def load(
        self,
        report: Callable[[str, float], None] | None = None,
        *,
        weights: Path | None = None,
        device: str | torch.device | None = None,
        within: Path | None = None,
    ) -> tuple[nn.Module, ModelVersion]:
        """Build, load, place, compile and warm up one version, synchronously (the resource runs it
        on the model's thread): the module and its `ModelVersion`."""
        return load_version(
            self.spec,
            weights if weights is not None else self.configured_weights,
            device if device is not None else self.device,
            report=report,
            version=self.given_version,
            within=within,
        )

    async def _start(
        self, threads: PassThreads, load: Callable[[], tuple[nn.Module, ModelVersion]]
    ) -> _Serving:
        module, loaded = await threads.run(load, abandon_on_cancel=True)
        handle = ModelHandle(module, loaded, threads, on_out_of_memory=self._count_oom)
        del module
        return _Serving(handle, threads, loaded)

    async def start_version(self, load: Callable[[], tuple[nn.Module, ModelVersion]]) -> _Serving:
        """One version loaded by `load` on threads of its own (stopped if it fails) and served by a
        new handle: the lifespan's version, and each load of a `ModelPool`'s model."""
        # The model's threads exist before it loads: the thread that warms it up (and records
        # any CUDA graphs) is the one that serves it. Abandoned on cancellation: a startup
        # timeout must not wait for a 2-minute load to finish; the process is about to fail.
        # Passes that run inline leave the thread idle; it still releases the model at the end.
        threads = PassThreads(self.spec.max_concurrency, f"asgi_host-{self.name}")
        try:
            return await self._start(threads, load)
        except BaseException:
            threads.stop()
            raise

    async def release_version(self, serving: _Serving) -> None:
        """`_release` for a version that is not the model's last (a `ModelPool`'s eviction)."""
        await self._release(serving, final=False)

    async def _release(self, serving: _Serving, *, final: bool) -> None:
        """The one release: refuse passes, wait for those in flight, drop the module, free memory on
        the model's own thread (CUDA graph trees and cuBLAS's per-thread workspaces live in that
        thread's state), then end that thread and join it (no daemon thread may touch CUDA while the
        interpreter exits: that aborted a process on an H100). `final`: the model's last version
        (shutdown), which also gives back its GPU claim."""
        handle, threads, loaded = serving.handle, serving.threads, serving.loaded
        module = getattr(handle, "_module", None)
        held = None if module is None else weakref.ref(module)
        del module
        await handle.close()
        before = device_memory(loaded.device)
        await threads.run(self._free_dropped, loaded, final, held)
        threads.stop()
        await anyio.to_thread.run_sync(threads.join, JOIN_TIMEOUT_S)
        if loaded.device.type == "cuda":
            # What the ended thread held (its CUDA state) goes with one more collection. On the CPU
            # the one on the thread did it all; a second full collection would only stall the loop.
            await anyio.to_thread.run_sync(release_cuda_memory)
        after = device_memory(loaded.device)
        logger.info(
            "model %r released (version %s)%s",
            self.name,
            loaded.version,
            f": cuda before={before} after={after}" if before else "",
        )

    def _free_dropped(self, loaded: ModelVersion, final: bool, held: weakref.ref[nn.Module] | None) -> None:
        # On the model's thread, its previous job (the load, or the last pass) dropped by now, and
        # with it the module's last reference unless a reference cycle keeps it. On the CPU a module
        # gone already leaves a full collection nothing of its own to free, and one holds the GIL
        # (every request waits) for about 0.1 s in a process with torch loaded: skip it then.
        gone = held is None or held() is None
        self._free(loaded, final, collect=loaded.device.type == "cuda" or loaded.compiled or not gone)

    def _free(self, loaded: ModelVersion, final: bool, *, collect: bool = True) -> None:
        """On the model's thread, the module dropped: free what torch keeps for it (`collect`: with a
        garbage collection first; False only on the CPU, the module already freed)."""
        if loaded.compiled:
            # Compiled code and CUDA graph trees (with their memory pool) outlive the module
            # otherwise. This resets every compiled function in the process (on this thread's
            # graph trees): one compiled model per process is the supported setup.
            torch._dynamo.reset()
        if collect:
            release_cuda_memory()
        if (
            final
            and str(self.device) == "auto"
            and loaded.device.type == "cuda"
            and torch.cuda.device_count() > 1
        ):
            release_claim()

    @asynccontextmanager
    async def _lifespan(self, host: HostView) -> AsyncIterator[ModelHandle]:
        serving = await self.start_version(lambda: self.load(host.progress.report))
        self._serving, self.loaded = serving, serving.loaded
        try:
            yield serving.handle
        finally:
            # A reload may have replaced the version yielded here: release the one serving now.
            serving, self._serving = self._serving or serving, None
            await self._release(serving, final=True)

    def _count_oom(self) -> None:
        self.out_of_memory += 1

    # -- reloading (host.reload, the admin route): see asgi_host/_reload.py ----------------------

    def reload_root(self) -> Path | None:
        """The directory the admin route takes new weights from: the configured weights' (resolved)."""
        configured = self.configured_weights
        return None if configured is None else Path(os.path.realpath(configured.parent))

    async def reload(
        self,
        host: HostView | None = None,
        *,
        weights: str | os.PathLike[str] | None = None,
        version: str | None = None,
        within: Path | None = None,
    ) -> Replacement:
        """Build, load and warm up a new version (new `weights`, else the same file again) beside the
        one serving, on threads of its own; hand it to the host to swap in (`host.reload` calls this).

        The new version goes on the device the current one is on, with the same settings, named
        `version` or its weights' hash (not the `version` given at construction); `within`
        is the directory the weights file opened must be in (the admin route's). Fails with
        `ReloadError` (the current version keeps serving, nothing of the new one stays allocated)
        when it cannot be loaded. Compiled models are refused: releasing the old version would reset
        every compiled function of the process, the new one's included (restart the process instead).
        """
        if self.spec.compile_options is not None:
            raise ReloadError(
                f"model {self.name!r} is compiled and cannot be reloaded in place (releasing the old version "
                "resets torch.compile for the whole process): restart the process with the new weights",
                status=409,
            )
        old = self._serving
        if old is None:
            raise ReloadError(f"model {self.name!r} is not serving: nothing to reload", status=409)
        try:
            check_version(version)
        except ValueError as exc:
            raise ReloadError(str(exc), status=400) from None
        path = Path(weights) if weights is not None else old.loaded.weights
        threads = PassThreads(self.spec.max_concurrency, f"asgi_host-{self.name}")
        started = time.perf_counter()

        def load() -> tuple[nn.Module, ModelVersion]:
            # No new placement: the version serving shows its device works.
            return load_version(self.spec, path, old.loaded.device, version=version, within=within)

        try:
            new: _Serving | None = await self._start(threads, load)
            failure, status = None, 422  # 422: the new version failed
        except ReloadError:
            threads.stop()
            raise
        except Exception as exc:
            new, failure, status = None, str(exc).strip() or type(exc).__name__, getattr(exc, "status", 422)
        except BaseException:
            threads.stop()
            raise
        if new is not None and self._serving is not old:
            failure, status = (
                "the host shut down (or another reload finished) while this one was loading",
                409,
            )
        if failure is not None or new is None:
            if new is not None:
                await self._release(new, final=False)
            else:
                threads.stop()
                await anyio.to_thread.run_sync(threads.join, JOIN_TIMEOUT_S)
                await anyio.to_thread.run_sync(release_cuda_memory)
            if status == 403:  # refused (weights outside the directory), not a version that failed
                raise ReloadError(f"model {self.name!r}: {failure}", status=403)
            self.reload_failures += 1
            self.last_reload = {
                "status": "failed",
                "error": failure,
                "weights": str(path),
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "serving": old.loaded.version,
            }
            raise ReloadError(
                f"model {self.name!r}: {failure} (version {old.loaded.version} keeps serving)", status=status
            )
        self._serving, self.loaded = new, new.loaded
        self.reloads += 1
        self.last_reload = {
            "status": "ok",
            "version": new.loaded.version,
            "previous": old.loaded.version,
            "weights": str(path),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_s": round(time.perf_counter() - started, 3),
        }

        async def retire() -> None:
            # After the swap: stragglers holding the old handle are forwarded to the new one, the old
            # version finishes its passes in flight and is released as at shutdown.
            old.handle.successor = new.handle
            await self._release(old, final=False)

        return Replacement(new.handle, retire, version=new.loaded.version, previous=old.loaded.version)
