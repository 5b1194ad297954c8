"""A `ModelPool`'s parts: each model's entry (its state, references, bytes and counts), the handle
requests run it through (`PooledModel`), and the memory figures (a version's bytes, a budget's default).

The pool itself (admission, single-flight loads, eviction, shutdown) is `_pool.py`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import torch
from torch import nn

from ._device import device_memory
from ._errors import HTTPError
from ._handle import ModelHandle
from ._loading import ModelVersion
from ._torch_model import TorchModel, _Serving

__all__ = [
    "CUDA_BUDGET_FRACTION",
    "RAM_BUDGET_FRACTION",
    "Entry",
    "MetricFamily",
    "ModelState",
    "PooledModel",
    "check_models",
    "default_budget",
    "file_tensor_bytes",
    "load_failed",
    "load_measured",
    "memory_note",
    "metric_families",
    "ram_available",
    "version_bytes",
]

T = TypeVar("T")

ModelState = Literal["unloaded", "loading", "ready", "unloading", "failed"]
# The default budget: this share of the CUDA memory free when the pool starts (the rest is for the
# passes' activations and cuBLAS's workspaces), or of the RAM available on the CPU.
CUDA_BUDGET_FRACTION = 0.9
RAM_BUDGET_FRACTION = 0.5

Check = Callable[[ModelHandle], Awaitable[None]]


class Entry:
    """One model of a pool: what it is now, who uses it, what it holds and has done."""

    def __init__(self, model: TorchModel, *, pinned: bool) -> None:
        self.model = model
        self.name = model.name
        self.pinned = pinned  # loaded at startup, never evicted (an explicit unload still unloads it)
        self.checks: list[Check] = []  # run on each version loaded, before it serves (a v2 output check)
        self.reset()
        self.loads = 0  # versions loaded, over every lifespan
        self.evictions = 0  # unloaded to make room for another model
        self.unloads = 0  # unloaded on request (the repository API, `pool.unload`)
        self.failures = 0  # loads that failed
        self.load_s: float | None = None  # the last load, seconds
        self.measured: int | None = None  # bytes its last load measured

    def reset(self) -> None:
        """Nothing loaded (a pool's startup)."""
        self.state: ModelState = "unloaded"
        self.serving: _Serving | None = None
        self.handle: ModelHandle | None = None  # the resident version's, only while `ready`
        self.refs = 0  # requests holding it: passes in flight, and waiters for its load
        self.held = 0  # bytes of the budget it holds: reserved while loading, measured once loaded
        self.attempt = 0  # loads begun: a waiter tells the failure of its own load from a later one's
        self.error: HTTPError | None = None  # why the last load failed
        self.used = 0  # the pool's clock at its last use (least recently used goes first)

    @property
    def estimate(self) -> int:
        """Bytes it will hold: its last load's, else its weights file's tensors (0 without a file)."""
        if self.measured is not None:
            return self.measured
        weights = self.model.configured_weights
        return 0 if weights is None else file_tensor_bytes(weights)

    def detail(self) -> dict[str, Any]:
        """What `/readyz` and the repository index show of it."""
        return {
            "state": self.state,
            "bytes": self.held if self.state == "ready" else 0,
            "measured_bytes": self.measured,
            "in_flight": self.refs,
            "loads": self.loads,
            "evictions": self.evictions,
            "unloads": self.unloads,
            "failures": self.failures,
            "load_s": None if self.load_s is None else round(self.load_s, 4),
            "pinned": self.pinned,
            "version": self.model.version,
            "reason": None if self.error is None or self.state != "failed" else self.error.message,
        }


class Admission(Protocol):
    """What a `PooledModel` asks of its pool (`ModelPool`)."""

    @property
    def closing(self) -> bool: ...

    async def admit(self, entry: Entry) -> ModelHandle: ...

    def touch(self, entry: Entry) -> None: ...

    def leave(self, entry: Entry) -> None: ...


class PooledModel:
    """What a `ModelPool` puts in the state for each of its models (under the model's name): the
    way to run it, like a `TorchModel`'s `ModelHandle`, so `V2Model`, `Classifier` and `Rows` take it
    as they take a handle.

    `await model.run(fn, *args)` runs `fn(module, *args)` on the resident version, after loading it
    when it is not resident (one load however many requests wait for it); the model is referenced
    from the call to the end of the pass, so it is never evicted under a pass. `async with
    model.use() as handle:` holds it across several passes. `ready` is whether it is resident now;
    `device` the pool's; `dtype` the model's (its `dtype=`, else what it loaded in last, else
    torch's default: give `dtype=` to a model whose weights are not float32, since requests read
    `dtype` before its first load).
    """

    def __init__(self, pool: Admission, entry: Entry, device: torch.device) -> None:
        self._pool = pool
        self._entry = entry
        self.name = entry.name
        self.device = device

    def __repr__(self) -> str:
        return f"PooledModel({self.name!r}, {self._entry.state})"

    @property
    def state(self) -> ModelState:
        return self._entry.state

    @property
    def ready(self) -> bool:
        return self._entry.state == "ready"

    @property
    def closing(self) -> bool:
        return self._pool.closing

    @property
    def in_flight(self) -> int:
        return self._entry.refs

    @property
    def busy(self) -> bool:
        """A pass asked for now would wait: for a load, or for the model's thread."""
        handle = self._entry.handle
        return handle is None or bool(getattr(handle, "busy", False))

    @property
    def version(self) -> str | None:
        return self._entry.model.version

    @property
    def dtype(self) -> torch.dtype:
        model = self._entry.model
        if model.spec.dtype is not None:
            return model.spec.dtype
        return model.loaded.dtype if model.loaded is not None else torch.get_default_dtype()

    @property
    def checks(self) -> list[Check]:
        """Run on each version loaded before it serves; a failure fails the load (`V2Model` adds its
        output check here instead of loading the model at startup)."""
        return self._entry.checks

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        entry = self._entry
        handle = entry.handle
        if handle is not None:  # resident: the request's path, no await before the pass
            entry.refs += 1
            self._pool.touch(entry)
        else:
            handle = await self._pool.admit(entry)
        try:
            return await handle.run(fn, *args)
        finally:
            entry.refs -= 1
            if not entry.refs:
                self._pool.leave(entry)

    @asynccontextmanager
    async def use(self) -> AsyncIterator[ModelHandle]:
        """The resident version's handle, held (never evicted) until the block ends."""
        entry = self._entry
        handle = await self._pool.admit(entry)
        try:
            yield handle
        finally:
            entry.refs -= 1
            if not entry.refs:
                self._pool.leave(entry)


# -- memory ------------------------------------------------------------------------------------


def check_models(models: list[TorchModel], device: str | torch.device, pinned: list[str]) -> None:
    """`ValueError` for what a pool cannot serve: no models, two of one name, a model on another
    device, a compiled one, a pinned name that is not a model."""
    names = [model.name for model in models]
    if not models or len(set(names)) != len(names):
        raise ValueError(f"a ModelPool needs models with distinct names, got {names}")
    for model in models:
        if str(model.device) not in ("auto", str(device)):
            raise ValueError(
                f"model {model.name!r} asks for device {str(model.device)!r} but the pool loads on "
                f"{str(device)!r}: leave the model's device 'auto', or make a pool per device"
            )
        if model.spec.compile_options is not None:
            raise ValueError(
                f"model {model.name!r} is compiled: a pool cannot evict it (releasing a compiled "
                "model resets torch.compile for the whole process)"
            )
    unknown = sorted(set(pinned) - set(names))
    if unknown:
        raise ValueError(f"pinned models {unknown} are not in the pool ({', '.join(names)})")


def tensor_bytes(module: nn.Module) -> int:
    """The bytes of a module's parameters and buffers (storages shared between them counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in seen and key != 0:
            continue
        seen.add(key)
        total += storage.nbytes()
    return total


def file_tensor_bytes(path: Path) -> int:
    """A weights file's size less a safetensors file's header (8 bytes of length, then JSON); 0 when
    it cannot be read (its load will say why)."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if path.suffix.lower() != ".safetensors":
                return size
            header = int.from_bytes(file.read(8), "little")
    except OSError:
        return 0
    return max(size - 8 - header, 0)


def version_bytes(module: nn.Module, device: torch.device, allocated_before: int | None) -> int:
    """What a version just loaded holds: on CUDA the allocated memory its load added (its weights
    and whatever the load left allocated, cuBLAS's workspace included), at least its tensors' bytes;
    elsewhere its parameters and buffers."""
    tensors = tensor_bytes(module)
    if device.type != "cuda" or allocated_before is None:
        return tensors
    return max(tensors, torch.cuda.memory_allocated(device) - allocated_before)


def load_measured(model: TorchModel, device: torch.device) -> tuple[nn.Module, ModelVersion, int]:
    """`model.load` onto `device`, on the calling thread (the model's), and the bytes it holds."""
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    module, loaded = model.load(device=device)
    return module, loaded, version_bytes(module, device, before)


def ram_available() -> int:
    """The RAM the kernel can give without swapping (`MemAvailable`), else the free pages'."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if sys.platform != "win32" and hasattr(os, "sysconf"):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    raise RuntimeError("cannot read the available RAM here: give the pool budget_bytes=")


def default_budget(device: torch.device) -> int:
    """`CUDA_BUDGET_FRACTION` of the CUDA memory free now, or `RAM_BUDGET_FRACTION` of the RAM
    available on any other device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    return int(ram_available() * RAM_BUDGET_FRACTION)


def load_failed(name: str, exc: Exception) -> HTTPError:
    """The 503 a failed load answers its waiters with: the model, and why."""
    reason = str(exc).strip() or type(exc).__name__
    return HTTPError(503, f"model {name!r} failed to load: {reason}", type="model_load_failed")


def memory_note(device: torch.device) -> str:
    """` (cuda {...})` with the device's memory for a log line; empty on the CPU."""
    memory = device_memory(device)
    return f" (cuda {memory})" if memory else ""


# -- metrics -----------------------------------------------------------------------------------

MetricFamily = tuple[str, str, str, tuple[str, ...], list[tuple[tuple[str, ...], float]]]
"""(name, "gauge" or "counter", help, label names, [(label values, value)]): what `asgi_host.metrics`
turns into a Prometheus family at each scrape."""

STATES: tuple[ModelState, ...] = ("unloaded", "loading", "ready", "unloading", "failed")
PER_MODEL: tuple[tuple[str, str, str, Callable[[Entry], float]], ...] = (
    ("bytes", "gauge", "Bytes each resident model holds.", lambda e: e.held if e.state == "ready" else 0),
    ("in_flight", "gauge", "Requests holding each model.", lambda e: e.refs),
    ("load_seconds", "gauge", "Seconds each model's last load took.", lambda e: e.load_s or 0.0),
    ("loads", "counter", "Versions loaded, per model.", lambda e: e.loads),
    ("evictions", "counter", "Models unloaded to make room for another, per model.", lambda e: e.evictions),
    ("unloads", "counter", "Models unloaded on request, per model.", lambda e: e.unloads),
    ("load_failures", "counter", "Loads that failed, per model.", lambda e: e.failures),
)


def metric_families(pool: str, budget: int, used: float, entries: Sequence[Entry]) -> Iterator[MetricFamily]:
    """A pool's series: its budget and use, and each model's state, bytes, references, loads,
    evictions, unloads, failures and last load time."""
    yield "asgi_host_pool_budget_bytes", "gauge", "The pool's budget.", ("pool",), [((pool,), float(budget))]
    yield "asgi_host_pool_used_bytes", "gauge", "Bytes of the budget held.", ("pool",), [((pool,), used)]
    yield (
        "asgi_host_pool_model_state",
        "gauge",
        "1 for each model's state.",
        ("pool", "model", "state"),
        [((pool, e.name, state), float(e.state == state)) for e in entries for state in STATES],
    )
    for suffix, kind, text, value in PER_MODEL:
        samples: list[tuple[tuple[str, ...], float]] = [((pool, e.name), float(value(e))) for e in entries]
        yield f"asgi_host_pool_model_{suffix}", kind, text, ("pool", "model"), samples
