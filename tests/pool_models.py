"""Models for the pool's tests: small `TorchModel`s whose loads, passes and releases a test can hold
at a gate (threading events it sets), and that record what ran, so races are driven step by step."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from asgi_host.model import ModelPool, ModelVersion, TorchModel

WIDTH = 64
UNIT = 4 * (WIDTH * WIDTH + WIDTH)  # the bytes of one nn.Linear(WIDTH, WIDTH): 16,640
GATE_S = 30.0  # a gate never opened fails the test instead of hanging it


class Record:
    """What every model of a test did, across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loading = 0  # loads running now
        self.most_loading = 0  # the most that ever ran at once
        self.events: list[str] = []
        self.evicted_in_use: list[str] = []  # models released while a request held them
        self.pool: ModelPool | None = None

    def log(self, event: str) -> None:
        with self.lock:
            self.events.append(event)


class Gated(TorchModel):
    """`layers` of `nn.Linear(WIDTH, WIDTH)` (`UNIT` bytes each) from a weights file, its passes on its
    own thread; its loads and releases wait at `load_gate` and `release_gate` (open unless a test
    closes them)."""

    def __init__(self, name: str, folder: Path, record: Record, *, layers: int = 1, **options: Any) -> None:
        self.record = record
        self.layers = layers
        self.load_gate, self.loading = threading.Event(), threading.Event()
        self.release_gate, self.releasing = threading.Event(), threading.Event()
        self.load_gate.set()
        self.release_gate.set()
        self.builds = 0
        self.modules: list[weakref.ref[nn.Module]] = []
        weights = folder / f"{name}.safetensors"
        if not weights.exists():
            save_file({k: v.contiguous() for k, v in stack(layers).state_dict().items()}, str(weights))
        options.setdefault("execution", "thread")
        super().__init__(self._build, weights, name=name, warmup=torch.zeros(1, WIDTH), **options)

    def _build(self) -> nn.Module:
        record = self.record
        with record.lock:
            record.loading += 1
            record.most_loading = max(record.most_loading, record.loading)
        try:
            self.builds += 1
            record.log(f"load {self.name}")
            self.loading.set()
            assert self.load_gate.wait(GATE_S), f"the load gate of {self.name} was never opened"
            module = stack(self.layers)
            self.modules.append(weakref.ref(module))
            return module
        finally:
            with record.lock:
                record.loading -= 1

    def _free(self, loaded: ModelVersion, final: bool, *, collect: bool = True) -> None:
        record = self.record
        if record.pool is not None and record.pool.entries[self.name].refs:
            record.evicted_in_use.append(self.name)
        record.log(f"release {self.name}")
        self.releasing.set()
        assert self.release_gate.wait(GATE_S), f"the release gate of {self.name} was never opened"
        super()._free(loaded, final, collect=collect)

    def alive(self) -> int:
        """Modules of this model not yet garbage (call gc.collect() first)."""
        return sum(1 for ref in self.modules if ref() is not None)


def stack(layers: int) -> nn.Module:
    """One `nn.Linear(WIDTH, WIDTH)`, or `layers` of them in an `nn.Sequential`."""
    torch.manual_seed(0)
    if layers == 1:
        return nn.Linear(WIDTH, WIDTH)
    return nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(layers)))


def gated_pass(started: threading.Event, gate: threading.Event) -> Callable[[nn.Module], str]:
    """A pass that says it started, then waits at `gate`."""

    def run(module: nn.Module) -> str:
        started.set()
        assert gate.wait(GATE_S), "the pass gate was never opened"
        return "done"

    return run


def pool_of(
    folder: Path, count: int, *, budget_units: float, record: Record | None = None, **options: Any
) -> tuple[ModelPool, dict[str, Gated], Record]:
    """`count` models named m0, m1, ... in a pool of `budget_units` models' bytes."""
    record = record or Record()
    models = {f"m{i}": Gated(f"m{i}", folder, record) for i in range(count)}
    pool = ModelPool(models.values(), budget_bytes=int(budget_units * UNIT), device="cpu", **options)
    record.pool = pool
    return pool, models, record
