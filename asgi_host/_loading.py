"""Loading one version of a model: build, read the weights, place, warm up, compile, time a pass.

`load_version(spec, weights, device)` runs on the model's own thread (the one that will serve it)
and returns the module with its `ModelVersion`: everything that describes this version (where it
runs, its dtype, where its passes run and why, its pass time, whether it is compiled, the version
string). `TorchModel` keeps the version serving and swaps it whole on a reload.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ._device import device_memory, memory_text, oom_detail, release_cuda_memory, resolve_device
from ._errors import ModelLoadError
from ._torch_compat import cuda_graph_thread_state, skipped_init
from ._weights import WeightsFile, read_weights
from ._worker import abandoned

__all__ = [
    "INLINE_THRESHOLD_S",
    "TIMED_PASSES",
    "Execution",
    "LoadSpec",
    "ModelVersion",
    "load_version",
]

logger = logging.getLogger("asgi_host.model")

Execution = Literal["auto", "inline", "thread"]
# `execution="auto"` runs passes on the event loop when the best timed warmup pass takes at most
# this long. A thread hand-off costs the loop about 0.1 ms per request and a pass that short
# blocks it for less; docs/benchmarks.md ("Where passes run") has the measurement behind it.
INLINE_THRESHOLD_S = 0.0005
INLINE_WARN_S = 0.001  # an inline forward pass longer than this blocks the loop too long
TIMED_PASSES = 5  # warmup passes timed to choose where passes run (fewer once they take 0.2 s)
TIMED_PASSES_BUDGET_S = 0.2
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that record CUDA graphs

Report = Callable[[str, float], None]


@dataclass(frozen=True)
class LoadSpec:
    """How every version of a model is built and prepared (what `TorchModel` was given, checked)."""

    build: Callable[[], nn.Module]
    dtype: torch.dtype | None = None
    warmup: torch.Tensor | Callable[..., object] | None = None
    warmup_batch_sizes: tuple[int, ...] = ()
    compile_options: dict[str, Any] | None = None
    compile_fallback: bool = False
    execution: Execution = "auto"
    inline_threshold_s: float = INLINE_THRESHOLD_S
    max_concurrency: int = 1

    def __post_init__(self) -> None:
        if self.execution not in ("auto", "inline", "thread"):
            raise ValueError(f"execution is 'auto', 'inline' or 'thread', got {self.execution!r}")
        if self.inline_threshold_s < 0:
            raise ValueError(f"inline_threshold_s must be at least 0, got {self.inline_threshold_s}")
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if any(n < 1 for n in self.warmup_batch_sizes):
            raise ValueError(f"warmup_batch_sizes must be positive, got {list(self.warmup_batch_sizes)}")
        if self.compile_options is not None and self.warmup is None:
            raise ValueError("compile needs a warmup input, or the first request would pay for compilation")
        if self.compile_options is not None and self.execution == "inline":
            raise ValueError(
                "compile and execution='inline' do not mix: a compiled pass runs on the model's thread"
            )
        mode = (self.compile_options or {}).get("mode")
        if mode in CUDA_GRAPH_MODES and self.max_concurrency != 1:
            raise ValueError(
                f"mode={mode!r} records CUDA graphs in the thread that warms the model up, and "
                "concurrent replays corrupt them (seen on an H100): use max_concurrency=1"
            )

    @staticmethod
    def compile_setting(compile: bool | Mapping[str, Any]) -> dict[str, Any] | None:
        return dict(compile) if isinstance(compile, Mapping) else {} if compile else None


@dataclass(frozen=True)
class ModelVersion:
    """One loaded version of a model: what it is and how its passes run (shown by `/readyz`)."""

    version: str  # given, or the first 12 hex digits of the sha256 of the weights loaded
    weights: Path | None
    device: torch.device
    dtype: torch.dtype
    inline: bool  # passes run on the event loop, not the model's thread
    execution_reason: str
    pass_s: float | None  # the best timed warmup pass (None without a warmup input)
    compiled: bool
    load_s: float  # build + load + warmup
    memory: dict[str, int] = field(default_factory=dict)  # CUDA memory after the load (empty on CPU)


def load_version(
    spec: LoadSpec,
    weights: Path | None,
    device_setting: str | torch.device,
    *,
    report: Report | None = None,
    version: str | None = None,
    within: Path | None = None,
) -> tuple[nn.Module, ModelVersion]:
    """Build, load, place, compile and warm up one version, synchronously, on the calling thread.

    `report(stage, fraction)` is told each stage as it begins (the host's `progress.report`, shown
    by `/readyz` while loading). Out of CUDA memory fails with the device's free and total memory
    and nothing of the load left allocated.
    """
    device = resolve_device(device_setting)
    told = report or _no_report

    def stage(name: str, fraction: float) -> None:
        # Given up on (a startup past its timeout, or the process exiting): stop at this stage
        # instead of compiling on for nobody; the process waits for the thread, not the load.
        if abandoned():
            raise _Abandoned(f"the load was abandoned (by its caller) before {name!r}")
        told(name, fraction)

    try:
        return _load(spec, weights, device, stage, version, within)
    except torch.cuda.OutOfMemoryError as exc:
        detail = oom_detail(exc)
    # Out of the except block: the half-loaded module is unreferenced, so its memory can go.
    release_cuda_memory()
    memory = memory_text(device) if device.type == "cuda" else "device memory figures need CUDA"
    size = (
        f"; the weights file is {weights.stat().st_size / 2**20:.0f} MiB"
        if weights and weights.is_file()
        else ""
    )
    raise ModelLoadError(
        f"out of memory loading the model onto {device}: {detail}{size}; after releasing what the "
        f"load held: {memory}. Free the device (other processes, fewer workers per GPU), pick "
        "another device, or load in a smaller dtype"
    )


def _no_report(stage: str, fraction: float) -> None:
    return None


class _Abandoned(ModelLoadError):
    """The load's caller gave up on it: it stops at the next stage, with nobody to tell."""


def _load(
    spec: LoadSpec,
    weights: Path | None,
    device: torch.device,
    stage: Report,
    version: str | None,
    within: Path | None,
) -> tuple[nn.Module, ModelVersion]:
    started = time.perf_counter()
    before = device_memory(device)
    stage("building the architecture", 0.05)
    if weights is None:
        module = _build(spec, meta=False)
        version = version or _parameters_sha256(module)
    else:
        # Built on the meta device (no memory, no random init), then the loaded tensors become
        # the parameters (`assign=True`): no init and no copy, which at 1 GB is most of the load.
        module = _build(spec, meta=True)
        stage(f"reading {weights.name}", 0.2)
        opened = WeightsFile(weights, within=within)
        try:
            state = read_weights(opened)
            version = version or opened.sha256()[:12]
        finally:
            opened.close()
        stage("loading the weights into the architecture", 0.6)
        _load_state(module, state, weights, assign=True)
        if any(t.is_meta for t in (*module.parameters(), *module.buffers())):
            # A buffer the weights do not carry: build for real and copy in.
            module = _build(spec, meta=False)
            _load_state(module, state, weights, assign=False)
        del state
    stage(f"moving to {device}", 0.7)
    module = module.to(device=device, dtype=spec.dtype) if spec.dtype else module.to(device=device)
    module.eval()
    dtype = spec.dtype or next((p.dtype for p in module.parameters()), torch.get_default_dtype())
    load_s = time.perf_counter() - started
    stage("warmup", 0.75)
    warmup_s = _warm(spec, module, device, None)
    compiled = False
    if spec.compile_options is not None:
        module, compiled = _compile(spec, module, device, stage)
    else:
        for rows in spec.warmup_batch_sizes:
            stage(f"warmup, batch size {rows}", 0.8)
            _warm(spec, module, device, rows)
    pass_s = _time_pass(spec, module, device)
    inline, reason = _choose_execution(spec, pass_s, compiled)
    loaded = ModelVersion(
        version=version,
        weights=weights,
        device=device,
        dtype=dtype,
        inline=inline,
        execution_reason=reason,
        pass_s=pass_s,
        compiled=compiled,
        load_s=time.perf_counter() - started,
        memory=device_memory(device),
    )
    if spec.execution == "inline" and pass_s is not None and pass_s > INLINE_WARN_S:
        logger.warning(
            "execution='inline' but a forward pass of %s took %.1f ms: each one blocks the event loop "
            "(and every other request) that long; use execution='auto' or 'thread' for this model",
            type(module).__name__,
            pass_s * 1e3,
        )
    logger.info(
        "model %s loaded: device=%s dtype=%s parameters=%d load_s=%.3f warmup_s=%.3f compiled=%s "
        "ready_s=%.3f execution=%s (%s)%s",
        type(getattr(module, "_orig_mod", module)).__name__,
        device,
        dtype,
        sum(p.numel() for p in module.parameters()),
        load_s,
        warmup_s,
        compiled,
        loaded.load_s,
        "inline" if inline else "thread",
        reason,
        f" cuda_before={before} cuda_after={loaded.memory}" if loaded.memory else "",
    )
    return module, loaded


def _time_pass(spec: LoadSpec, module: nn.Module, device: torch.device) -> float | None:
    """The best of up to `TIMED_PASSES` warmup passes (None without a warmup input).

    The first pass has already paid for lazy initialisation; the best of the next few is what
    requests will see (the slower ones are the machine's noise). With `warmup_batch_sizes`, the
    pass is timed at the largest: a batcher's pass of that many rows is the longest a request
    can make the loop wait.
    """
    if spec.warmup is None:
        return None
    rows = max(spec.warmup_batch_sizes) if spec.warmup_batch_sizes else None
    times: list[float] = []
    while len(times) < TIMED_PASSES and sum(times) < TIMED_PASSES_BUDGET_S:
        times.append(_warm(spec, module, device, rows))
    return min(times)


def _choose_execution(spec: LoadSpec, pass_s: float | None, compiled: bool) -> tuple[bool, str]:
    """Whether passes run inline, and why (for the log, /readyz and `asgi-host check`)."""
    if spec.execution != "auto":
        return spec.execution == "inline", f"execution={spec.execution!r} was asked for"
    if compiled:
        return False, "compiled: passes run on the thread that compiled and warmed the model"
    if spec.max_concurrency > 1:
        return False, f"max_concurrency={spec.max_concurrency} asks for threads"
    if pass_s is None:
        return False, "no warmup input to time a pass with"
    limit_ms = spec.inline_threshold_s * 1e3
    if pass_s <= spec.inline_threshold_s:
        return True, f"a pass takes {pass_s * 1e3:.3f} ms, within the {limit_ms:g} ms inline threshold"
    return False, f"a pass takes {pass_s * 1e3:.3f} ms, over the {limit_ms:g} ms inline threshold"


def _compile(
    spec: LoadSpec, module: nn.Module, device: torch.device, stage: Report
) -> tuple[nn.Module, bool]:
    """`torch.compile` the module and warm it up at each batch size; eager on failure if allowed."""
    options = spec.compile_options or {}
    sizes: list[int | None] = [None, *spec.warmup_batch_sizes]
    dynamic = options.get("dynamic") is not False  # dynamic=False: a graph per size, as declared
    if dynamic and isinstance(spec.warmup, torch.Tensor) and not any(n >= 2 for n in spec.warmup_batch_sizes):
        # Compiled for the warmup input's rows only, the first request with more rows would
        # compile again; 2 rows with the batch dimension dynamic cover every size from 2 on.
        sizes.append(2)
    if options.get("mode") in CUDA_GRAPH_MODES:
        cuda_graph_thread_state()
    started = time.perf_counter()
    try:
        compiled: nn.Module = torch.compile(module, **options)  # type: ignore[assignment]
        for i, rows in enumerate(sizes):
            label = "the warmup input" if rows is None else f"batch size {rows}"
            stage(f"compiling (torch.compile {options or 'defaults'}), {label}", 0.8 + 0.15 * i / len(sizes))
            _warm(spec, compiled, device, rows, compiling=True)
            _warm(spec, compiled, device, rows, compiling=True)  # reduce-overhead records on the 2nd
    except (torch.cuda.OutOfMemoryError, _Abandoned):
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        logger.error("torch.compile failed while warming up", exc_info=exc)
        if not spec.compile_fallback:
            raise ModelLoadError(
                f"torch.compile failed while warming up ({reason}); fix the model for the compiler, "
                "or pass compile_fallback=True to serve it eager"
            ) from exc
        logger.warning("torch.compile failed (%s); serving %s eager (compile_fallback=True)", reason, device)
        torch._dynamo.reset()
        for rows in spec.warmup_batch_sizes:
            _warm(spec, module, device, rows)
        return module, False
    logger.info(
        "model compiled with %s and warmed up at %s in %.1f s",
        options or "torch.compile defaults",
        ", ".join("the warmup input" if n is None else f"{n} rows" for n in sizes),
        time.perf_counter() - started,
    )
    return compiled, True


def _build(spec: LoadSpec, *, meta: bool) -> nn.Module:
    try:
        if meta:
            with torch.device("meta"), skipped_init():
                return spec.build()
        return spec.build()
    except Exception as exc:
        raise ModelLoadError(f"building the architecture failed: {type(exc).__name__}: {exc}") from exc


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], weights: Path, *, assign: bool) -> None:
    try:
        module.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"weights {weights} do not fit {type(module).__name__}: {exc}\n"
            "build the architecture the weights were saved from, or retrain and save again"
        ) from None


def _parameters_sha256(module: nn.Module) -> str:
    """Without a weights file: the first 12 hex digits of the sha256 of the parameters."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()[:12]


def _warm(
    spec: LoadSpec, module: nn.Module, device: torch.device, rows: int | None, *, compiling: bool = False
) -> float:
    """One warmup pass (at `rows` rows when given); its seconds. Compile errors pass through."""
    warmup = spec.warmup
    if warmup is None:
        return 0.0
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            if isinstance(warmup, torch.Tensor):
                # Made here, as requests make theirs: an inference tensor (one made outside inference
                # mode has another dispatch key set, and a compiled module recompiles for it).
                x = warmup.to(device=device, dtype=spec.dtype or warmup.dtype).clone()
                if rows is not None:
                    x = x[:1].repeat(rows, *([1] * (x.dim() - 1)))
                dynamic = (spec.compile_options or {}).get("dynamic") is not False
                if compiling and dynamic and rows is not None and rows >= 2:
                    torch._dynamo.mark_dynamic(x, 0)  # one graph for every batch size from 2 on
                module(x)
            elif rows is None:
                warmup(module)
            else:
                warmup(module, rows)
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
