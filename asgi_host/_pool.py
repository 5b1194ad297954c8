"""`ModelPool`: many models, one memory budget; loaded on demand, evicted by bytes, released whole.

Each model is a `TorchModel` (what it is given is how every version of it loads) and is loaded and
released the `TorchModel` way (`start_version`, `release_version`: passes drained, memory freed on
its own thread, the thread joined). The pool decides when: a request for a model that is not
resident starts its load (one load however many requests wait for it), after evicting the least
recently used idle models for room; a model is referenced from a request's admission to the end of
its pass, and a referenced model is never evicted. All of the pool's bookkeeping runs on the event
loop between awaits, so a state read and the change made on it are one step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import torch
from anyio.abc import TaskGroup
from torch import nn

from ._device import resolve_device
from ._errors import HTTPError, ModelTooLarge, PoolFull, mib
from ._handle import ModelHandle
from ._loading import ModelVersion
from ._placement import release_claim
from ._pooled import (
    Entry,
    MetricFamily,
    PooledModel,
    check_models,
    default_budget,
    load_failed,
    load_measured,
    memory_note,
    metric_families,
)
from ._resources import Resource
from ._torch_model import TorchModel, _Serving
from ._view import HostView

__all__ = ["ModelPool"]

logger = logging.getLogger("asgi_host.pool")


class ModelPool(Resource):
    """Named `TorchModel`s within one memory budget on one device, loaded when first asked for.

    ::

        pool = ModelPool([TorchModel(Net, f"{name}.safetensors", name=name) for name in names],
                         budget_bytes=48 * 2**20)
        app = Host(resources=[pool], routes=[KServe(*(V2Model(name=n, resource=n, ...) for n in names))])

    Each model's `PooledModel` is in the state under its name: `await state[name].run(fn, *args)`
    loads the model when it is not resident, then runs the pass, as a `ModelHandle` would.

    - `budget_bytes`: what the resident models may hold together, measured at each load (on CUDA
      the allocated memory the load added, elsewhere the parameters' and buffers' bytes); default
      90 % of the CUDA memory free at startup, or half the RAM available. Before its first load a
      model counts as its weights file's size.
    - A model that does not fit evicts the least recently used models that have no pass in flight
      (never one that has); when even that is not enough the request waits up to `wait_s` for
      passes to end, then gets `PoolFull` (503 with `Retry-After: retry_after_s`). A model that
      needs more than the whole budget fails its load with `ModelTooLarge` (507), naming both sizes.
    - `pinned` models load at startup and are never evicted. Loads run one at a time (their
      memory is measured alone); a load failure answers its waiters with 503 and the reason, and
      the next request tries again.
    - `device`: where every model loads (`"auto"`: CUDA when there is one); a model's own `device`
      must be `"auto"` or the same. Compiled models cannot be pooled: releasing one resets
      `torch.compile` for the whole process.
    - Shutdown refuses new passes (503), waits for loads under way and passes in flight, and
      releases every resident model as a `TorchModel` is released, with its memory logged.

    `load(name)`, `unload(name)` and `models()` are what Triton's repository API calls
    (`asgi_host.kserve.ModelRepository`); `/readyz` and `/metrics` show each model's state, bytes,
    loads, evictions and load seconds. See docs/pool.md.
    """

    def __init__(
        self,
        models: Iterable[TorchModel],
        *,
        name: str = "pool",
        budget_bytes: int | None = None,
        device: str | torch.device = "auto",
        pinned: Iterable[str] = (),
        wait_s: float = 5.0,
        retry_after_s: int = 1,
    ) -> None:
        listed, pinned = list(models), list(pinned)
        check_models(listed, device, pinned)
        if budget_bytes is not None and budget_bytes < 1:
            raise ValueError(f"budget_bytes must be at least 1, got {budget_bytes}")
        if wait_s < 0 or retry_after_s < 0:
            raise ValueError("wait_s and retry_after_s must be at least 0")
        self.entries = {model.name: Entry(model, pinned=model.name in pinned) for model in listed}
        self.configured_budget = budget_bytes
        self.configured_device = device
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self.budget_bytes = budget_bytes or 0  # resolved at startup
        self.device: torch.device | None = None  # resolved at startup
        self.handles: dict[str, PooledModel] = {}
        self._closing = True  # until started
        self._tasks: TaskGroup | None = None
        self._changed: anyio.Event | None = None  # set (and dropped) at every change waiters look for
        self._load_lock = anyio.Lock()
        self._clock = 0
        super().__init__(self._lifespan, name=name)

    # -- what the pool holds ----------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """True before startup and from shutdown on: requests are refused with 503."""
        return self._closing

    @property
    def used_bytes(self) -> int:
        """Bytes of the budget held: by resident models, loads under way and releases under way."""
        return sum(entry.held for entry in self.entries.values())

    def models(self) -> dict[str, dict[str, Any]]:
        """Each model's state, bytes, references, loads, evictions and last load time."""
        return {name: entry.detail() for name, entry in self.entries.items()}

    def detail(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes,
            "models": self.models(),
        }

    def entry(self, name: str) -> Entry:
        """The model `name`; `KeyError` naming the pool's models when there is none."""
        try:
            return self.entries[name]
        except KeyError:
            raise KeyError(f"no model {name!r} in pool {self.name!r} ({', '.join(self.entries)})") from None

    # -- admission: the request's side ---------------------------------------------------------------

    def touch(self, entry: Entry) -> None:
        self._clock += 1
        entry.used = self._clock

    def leave(self, entry: Entry) -> None:
        """`entry`'s last reference went: an unload or a waiter for room may go on."""
        self._notify()

    async def admit(self, entry: Entry) -> ModelHandle:
        """The resident version's handle with a reference taken: loaded first when it is not (one
        load for every request waiting for it), after evicting idle models for room."""
        room_until: float | None = None
        while True:
            self._check_open()
            if entry.state == "ready":
                assert entry.handle is not None
                entry.refs += 1
                self.touch(entry)
                return entry.handle
            if entry.state == "unloading":
                await self._wait_for_change()
                continue
            if entry.state == "loading":
                if await self._await_load(entry):
                    assert entry.handle is not None
                    return entry.handle
                continue  # unloaded before this request got it: start over
            need = self._need(entry)
            if self.budget_bytes - self.used_bytes >= need or self._make_room(need):
                # Its bytes reserved now: the room evictions make is this model's. The load waits
                # for those releases to end.
                self._begin_load(entry, need)
                continue
            if room_until is None:
                room_until = anyio.current_time() + self.wait_s
            if not await self._wait_for_change(room_until):
                raise PoolFull(
                    entry.name, need, self.budget_bytes, self.used_bytes, retry_after_s=self.retry_after_s
                )

    async def _await_load(self, entry: Entry) -> bool:
        """Wait for the load under way holding a reference, so the version it makes cannot be
        evicted before this request uses it: True with the reference kept once it is resident,
        False when it was unloaded first; what the load raised when it failed."""
        attempt = entry.attempt
        entry.refs += 1
        try:
            while entry.state == "loading" and entry.attempt == attempt:
                await self._wait_for_change()
            if entry.state == "ready" and entry.attempt == attempt:
                self.touch(entry)
                return True
        except BaseException:
            self._drop(entry)
            raise
        self._drop(entry)
        if entry.state == "failed" and entry.attempt == attempt and entry.error is not None:
            raise entry.error
        return False

    def _drop(self, entry: Entry) -> None:
        entry.refs -= 1
        if not entry.refs:
            self.leave(entry)

    def _check_open(self) -> None:
        if self._closing:
            raise HTTPError(
                503, f"the model pool {self.name!r} is shutting down", headers=[("retry-after", "1")]
            )

    def _need(self, entry: Entry) -> int:
        """The bytes to find for `entry`; `ModelTooLarge` when more than the whole budget."""
        need = entry.estimate
        # Without a measurement and with a dtype cast, the file's size says little: let the load tell.
        judged = entry.measured is not None or entry.model.spec.dtype is None
        if judged and need > self.budget_bytes:
            raise ModelTooLarge(entry.name, need, self.budget_bytes, measured=entry.measured is not None)
        return min(need, self.budget_bytes)

    def _make_room(self, need: int) -> bool:
        """Evict the least recently used idle models until `need` more bytes will be free once the
        releases under way end (the bytes of loads under way are theirs already); False, evicting
        nothing, when even every idle model would not be enough."""
        coming = sum(e.held for e in self.entries.values() if e.state == "unloading")
        short = need - (self.budget_bytes - self.used_bytes) - coming
        if short <= 0:
            return True
        idle = sorted(
            (e for e in self.entries.values() if e.state == "ready" and not e.refs and not e.pinned),
            key=lambda e: e.used,
        )
        if sum(e.held for e in idle) < short:
            return False
        for victim in idle:
            if short <= 0:
                break
            short -= victim.held
            logger.info("pool %r evicts %r (%s, idle) for room", self.name, victim.name, mib(victim.held))
            self._unload(victim, eviction=True)
        return True

    async def _wait_for_change(self, until: float = math.inf) -> bool:
        """Wait for the next change of any model's state or references; False at `until`."""
        if self._changed is None:
            self._changed = anyio.Event()
        event = self._changed
        with anyio.move_on_at(until):
            await event.wait()
            return True
        return False

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- loads and releases: the pool's own tasks --------------------------------------------------

    def _begin_load(self, entry: Entry, need: int) -> None:
        entry.state, entry.held, entry.error = "loading", need, None
        entry.attempt += 1
        assert self._tasks is not None
        self._tasks.start_soon(self._load, entry, name=f"asgi_host pool load {entry.name}")

    async def _load(self, entry: Entry) -> None:
        serving: _Serving | None = None
        measured: list[int] = []
        device = self.device
        assert device is not None

        def load() -> tuple[nn.Module, ModelVersion]:
            module, version, size = load_measured(entry.model, device)
            measured.append(size)
            return module, version

        try:
            while self.used_bytes > self.budget_bytes:  # the releases that make its room
                self._check_open()
                self._make_room(0)  # (a load measured more than its file said: back within budget)
                await self._wait_for_change()
            async with self._load_lock:  # one at a time: each load's memory is its own
                self._check_open()
                started = time.perf_counter()
                serving = await entry.model.start_version(load)
                entry.model.loaded = serving.loaded
                size = measured[0]
                if size > self.budget_bytes:
                    entry.measured = size
                    raise ModelTooLarge(entry.name, size, self.budget_bytes)
                for check in list(entry.checks):
                    await check(serving.handle)
                entry.load_s = time.perf_counter() - started
        except Exception as exc:
            if serving is not None:
                await self._release(entry, serving)
            entry.state, entry.held, entry.serving, entry.handle = "failed", 0, None, None
            entry.error = exc if isinstance(exc, HTTPError) else load_failed(entry.name, exc)
            entry.failures += 1
            logger.error("pool %r: loading %r failed: %s", self.name, entry.name, entry.error.message)
            self._notify()
            return
        entry.serving, entry.handle, entry.held, entry.measured = serving, serving.handle, size, size
        entry.state = "ready"
        entry.loads += 1
        self.touch(entry)
        logger.info(
            "pool %r loaded %r: %s in %.3f s; %s of %s held",
            self.name,
            entry.name,
            mib(size),
            entry.load_s,
            mib(self.used_bytes),
            mib(self.budget_bytes),
        )
        if self._closing:
            self._unload(entry, eviction=False)
        elif self.used_bytes > self.budget_bytes:
            # Its first measurement was more than its weights file said: back within the budget.
            self._make_room(0)
        self._notify()

    def _unload(self, entry: Entry, *, eviction: bool) -> None:
        """Mark `entry` unloading (no request takes it from now) and release it once its references
        are gone, in the pool's task group."""
        entry.state, entry.handle = "unloading", None
        assert self._tasks is not None
        name = f"asgi_host pool unload {entry.name}"
        self._tasks.start_soon(self._finish_unload, entry, eviction, name=name)
        self._notify()

    async def _finish_unload(self, entry: Entry, eviction: bool) -> None:
        try:
            while entry.refs:
                await self._wait_for_change()
            serving, entry.serving = entry.serving, None
            if serving is not None:
                await self._release(entry, serving)
        finally:
            entry.state, entry.held = "unloaded", 0
            if eviction:
                entry.evictions += 1
            elif not self._closing:
                entry.unloads += 1
            self._notify()

    async def _release(self, entry: Entry, serving: _Serving) -> None:
        try:
            await entry.model.release_version(serving)
        except Exception:
            logger.exception("pool %r: releasing %r failed", self.name, entry.name)

    # -- the operator's side: Triton's repository API calls these ----------------------------------

    async def load(self, name: str) -> None:
        """Make `name` resident (evicting idle models for room) and leave it there, unreferenced."""
        entry = self.entry(name)
        await self.admit(entry)
        self._drop(entry)

    async def unload(self, name: str) -> bool:
        """Release `name` once its passes in flight end (a load under way first finishes); False when
        it was not loaded."""
        entry = self.entry(name)
        while entry.state == "loading":
            await self._wait_for_change()
        if entry.state == "ready":
            self._unload(entry, eviction=False)
        elif entry.state != "unloading":
            return False
        while entry.state == "unloading":
            await self._wait_for_change()
        return True

    # -- the lifespan ----------------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, host: HostView) -> AsyncIterator[dict[str, PooledModel]]:
        device = resolve_device(self.configured_device)
        self.device = device
        self.budget_bytes = self.configured_budget or default_budget(device)
        for entry in self.entries.values():
            entry.reset()
        self.handles = {name: PooledModel(self, entry, device) for name, entry in self.entries.items()}
        logger.info(
            "pool %r: %d models on %s within %s", self.name, len(self.entries), device, mib(self.budget_bytes)
        )
        failure: Exception | None = None  # raised out of the task group, which would wrap it
        async with anyio.create_task_group() as tasks:
            self._tasks, self._closing = tasks, False
            try:
                for index, entry in enumerate(e for e in self.entries.values() if e.pinned):
                    host.progress.report(f"loading pinned model {entry.name}", index / len(self.entries))
                    await self.load(entry.name)
            except Exception as exc:
                failure = exc
            try:
                if failure is None:
                    yield dict(self.handles)
            finally:
                await self._shut_down()
        self._tasks = None
        if failure is not None:
            raise failure
        if str(self.configured_device) == "auto" and device.type == "cuda" and torch.cuda.device_count() > 1:
            release_claim()
        logger.info("pool %r released every model%s", self.name, memory_note(device))

    async def _shut_down(self) -> None:
        """Refuse new requests, let loads under way end, release every model once its passes end."""
        self._closing = True
        self._notify()
        while any(entry.state != "unloaded" and entry.state != "failed" for entry in self.entries.values()):
            for entry in self.entries.values():
                if entry.state == "ready":
                    self._unload(entry, eviction=False)
            await self._wait_for_change()

    # -- metrics ---------------------------------------------------------------------------------------

    def metric_families(self) -> Iterator[MetricFamily]:
        """The pool's series for `/metrics` (`asgi_host.metrics` reads them at each scrape)."""
        return metric_families(self.name, self.budget_bytes, self.used_bytes, list(self.entries.values()))
