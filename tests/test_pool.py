"""`ModelPool`: loads on demand (one at a time, one per model), evicts by bytes, never under a pass,
waits then refuses, and gives everything back; the races driven step by step with gates."""

from __future__ import annotations

import gc
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
import torch

from asgi_host import Host, HTTPError, LifespanFailed, ModelLoadError, ModelTooLarge, PoolFull
from asgi_host.model import ModelPool, PooledModel, TorchModel
from asgi_host.testing import LifespanDriver
from tests._wait import until
from tests.pool_models import UNIT, WIDTH, Gated, Record, gated_pass, pool_of, stack

pytestmark = pytest.mark.anyio

X = torch.zeros(1, WIDTH)


def states(pool: ModelPool) -> dict[str, str]:
    return {name: detail["state"] for name, detail in pool.models().items()}


def resident(pool: ModelPool) -> set[str]:
    return {name for name, state in states(pool).items() if state == "ready"}


async def use(model: PooledModel) -> Any:
    return await model.run(lambda module, x: module(x).shape, X)


def model_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"asgi_host-{name}-")]


# ---- loading on demand ----------------------------------------------------------------------------


async def test_a_cold_model_loads_once_for_every_request_waiting_for_it(tmp_path: Path) -> None:
    pool, models, _record = pool_of(tmp_path, 2, budget_units=2)
    models["m0"].load_gate.clear()
    async with LifespanDriver(Host(resources=[pool])) as life:
        assert states(pool) == {"m0": "unloaded", "m1": "unloaded"}  # nothing loads at startup
        shapes: list[Any] = []

        async def ask() -> None:
            shapes.append(await use(life.state["m0"]))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(ask)
            await until(models["m0"].loading.is_set)
            await until(lambda: pool.entries["m0"].refs == 10)  # every request waits on the one load
            assert states(pool)["m0"] == "loading"
            assert not life.state["m0"].ready
            models["m0"].load_gate.set()
        assert shapes == [torch.Size([1, WIDTH])] * 10
        assert models["m0"].builds == 1
        assert pool.models()["m0"]["loads"] == 1
        assert life.state["m0"].ready
        assert pool.used_bytes == UNIT  # measured: the parameters' bytes
        assert pool.models()["m0"]["measured_bytes"] == UNIT


async def test_the_least_recently_used_idle_model_is_evicted_for_room(tmp_path: Path) -> None:
    pool, _, record = pool_of(tmp_path, 3, budget_units=2)
    async with LifespanDriver(Host(resources=[pool])) as life:
        for name in ("m0", "m1", "m0"):
            await use(life.state[name])
        assert resident(pool) == {"m0", "m1"}
        await use(life.state["m2"])  # m1 was used least recently
        await until(lambda: states(pool)["m1"] == "unloaded")
        assert resident(pool) == {"m0", "m2"}
        assert pool.models()["m1"]["evictions"] == 1
        assert pool.used_bytes == 2 * UNIT
        assert record.events.index("release m1") < record.events.index("load m2")  # room first


async def test_eviction_counts_bytes_not_models(tmp_path: Path) -> None:
    record = Record()
    small = [Gated(f"s{i}", tmp_path, record) for i in range(3)]
    big = Gated("big", tmp_path, record, layers=2)
    pool = ModelPool([*small, big], budget_bytes=3 * UNIT, device="cpu")
    record.pool = pool
    async with LifespanDriver(Host(resources=[pool])) as life:
        for name in ("s0", "s1", "s2"):
            await use(life.state[name])
        assert resident(pool) == {"s0", "s1", "s2"}
        await life.state["big"].run(lambda module: None)  # two units: the two least recently used go
        await until(lambda: resident(pool) == {"s2", "big"})
        assert pool.models()["big"]["measured_bytes"] == 2 * UNIT
        assert pool.used_bytes == 3 * UNIT


async def test_a_model_with_a_pass_in_flight_is_never_evicted(tmp_path: Path) -> None:
    pool, _models, record = pool_of(tmp_path, 2, budget_units=1, wait_s=30)
    started, gate = threading.Event(), threading.Event()
    async with LifespanDriver(Host(resources=[pool])) as life:
        answers: dict[str, Any] = {}

        async def long_pass() -> None:
            answers["m0"] = await life.state["m0"].run(gated_pass(started, gate))

        async def other() -> None:
            answers["m1"] = await use(life.state["m1"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_pass)
            await until(started.is_set)
            tg.start_soon(other)
            await until(lambda: pool._changed is not None)  # m1 waits for room
            assert states(pool) == {"m0": "ready", "m1": "unloaded"}  # m0 is in use: kept
            gate.set()
        assert answers == {"m0": "done", "m1": torch.Size([1, WIDTH])}
        assert record.events == ["load m0", "release m0", "load m1"]
        assert record.evicted_in_use == []


async def test_no_room_within_the_wait_is_503_with_retry_after(tmp_path: Path) -> None:
    pool, _, _record = pool_of(tmp_path, 2, budget_units=1, wait_s=0, retry_after_s=3)
    started, gate = threading.Event(), threading.Event()
    async with LifespanDriver(Host(resources=[pool])) as life:
        async with anyio.create_task_group() as tg:
            tg.start_soon(life.state["m0"].run, gated_pass(started, gate))
            await until(started.is_set)
            with pytest.raises(PoolFull) as caught:
                await use(life.state["m1"])
            gate.set()
        error = caught.value
        assert (error.status, error.type, error.headers) == (503, "pool_full", (("retry-after", "3"),))
        sizes = (error.needed_bytes, error.budget_bytes, error.in_use_bytes)
        assert (error.model, sizes) == ("m1", (UNIT, UNIT, UNIT))
        assert "no room for model 'm1'" in error.message
        assert states(pool)["m0"] == "ready"
        assert await use(life.state["m1"]) == torch.Size([1, WIDTH])  # once m0 is idle it gives way


async def test_a_model_larger_than_the_whole_budget_fails_naming_both_sizes(tmp_path: Path) -> None:
    pool, models, _ = pool_of(tmp_path, 1, budget_units=0.5)
    async with LifespanDriver(Host(resources=[pool])) as life:
        with pytest.raises(ModelTooLarge) as caught:
            await use(life.state["m0"])
        assert isinstance(caught.value, ModelLoadError)
        assert caught.value.status == 507
        message = caught.value.message
        assert f"({UNIT} bytes, its weights file), more than the pool's whole budget of" in message
        assert f"({UNIT // 2} bytes)" in caught.value.message
        assert models["m0"].builds == 0  # its file said so: nothing loaded


async def test_a_model_measured_larger_than_the_budget_is_released_and_refused_after(tmp_path: Path) -> None:
    record = Record()
    # Cast to float64 at load: the file's size (float32) fits the budget, the model then does not.
    model = Gated("wide", tmp_path, record, dtype=torch.float64)
    pool = ModelPool([model], budget_bytes=int(1.5 * UNIT), device="cpu")
    async with LifespanDriver(Host(resources=[pool])) as life:
        for _ in range(2):
            with pytest.raises(ModelTooLarge) as caught:
                await use(life.state["wide"])
            assert f"needs 0.0 MiB ({2 * UNIT} bytes, measured at its load)" in caught.value.message
        assert model.builds == 1  # the second request knew without loading
        gc.collect()
        assert model.alive() == 0
        assert pool.used_bytes == 0
        assert states(pool)["wide"] == "failed"


async def test_a_failed_load_answers_its_waiters_and_the_next_request_tries_again(tmp_path: Path) -> None:
    pool, models, _ = pool_of(tmp_path, 1, budget_units=1)
    broken = models["m0"]
    real_build = broken.spec.build
    broken.spec = type(broken.spec)(**{**vars(broken.spec), "build": lambda: 1 / 0})
    async with LifespanDriver(Host(resources=[pool])) as life:
        errors: list[HTTPError] = []

        async def ask() -> None:
            try:
                await use(life.state["m0"])
            except HTTPError as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(ask)
        assert [e.status for e in errors] == [503, 503, 503]
        reason = "building the architecture failed: ZeroDivisionError"
        assert f"model 'm0' failed to load: {reason}" in errors[0].message
        assert pool.models()["m0"]["failures"] == 1  # one load for the three
        assert pool.models()["m0"]["reason"] == errors[0].message
        broken.spec = type(broken.spec)(**{**vars(broken.spec), "build": real_build})
        assert await use(life.state["m0"]) == torch.Size([1, WIDTH])
        assert states(pool)["m0"] == "ready"


async def test_pinned_models_load_at_startup_and_are_never_evicted(tmp_path: Path) -> None:
    pool, _, _ = pool_of(tmp_path, 3, budget_units=2, pinned=["m2"], wait_s=0)
    async with LifespanDriver(Host(resources=[pool])) as life:
        assert states(pool) == {"m0": "unloaded", "m1": "unloaded", "m2": "ready"}
        for name in ("m0", "m1", "m0"):
            await use(life.state[name])
        await until(lambda: resident(pool) == {"m0", "m2"})
        assert pool.models()["m2"]["evictions"] == 0
        assert await pool.unload("m2")  # an explicit unload still unloads it
        assert states(pool)["m2"] == "unloaded"


async def test_pinned_models_that_do_not_fit_fail_startup(tmp_path: Path) -> None:
    pool, _, _ = pool_of(tmp_path, 2, budget_units=1, pinned=["m0", "m1"], wait_s=0)
    with pytest.raises(LifespanFailed, match="no room for model 'm1'"):
        async with LifespanDriver(Host(resources=[pool])):
            pass


# ---- the races --------------------------------------------------------------------------------------


async def test_a_load_racing_the_eviction_of_the_same_model_waits_for_the_release(tmp_path: Path) -> None:
    pool, models, record = pool_of(tmp_path, 2, budget_units=1)
    async with LifespanDriver(Host(resources=[pool])) as life:
        await use(life.state["m0"])
        models["m0"].release_gate.clear()
        answers: list[Any] = []

        async def ask(name: str) -> None:
            answers.append((name, await use(life.state[name])))

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "m1")  # evicts m0, whose release is held at the gate
            await until(models["m0"].releasing.is_set)
            assert states(pool) == {"m0": "unloading", "m1": "loading"}  # its room, reserved
            tg.start_soon(ask, "m0")  # m0 again, while its eviction is under way
            await until(lambda: pool._changed is not None and len(record.events) == 2)
            assert states(pool)["m0"] == "unloading"  # not handed the version being released,
            assert models["m0"].builds == 1  # nor loaded again before it is released
            models["m0"].release_gate.set()
        assert sorted(answers) == [("m0", torch.Size([1, WIDTH])), ("m1", torch.Size([1, WIDTH]))]
        assert record.events == ["load m0", "release m0", "load m1", "release m1", "load m0"]
        gc.collect()
        assert models["m0"].alive() == 1  # never two versions of m0 alive
        assert pool.models()["m0"]["loads"] == 2
        assert record.evicted_in_use == []
        assert record.most_loading == 1


async def test_an_unload_during_a_pass_waits_for_the_pass(tmp_path: Path) -> None:
    pool, models, record = pool_of(tmp_path, 1, budget_units=1)
    started, gate = threading.Event(), threading.Event()
    async with LifespanDriver(Host(resources=[pool])) as life:
        answers: list[Any] = []

        async def long_pass() -> None:
            answers.append(await life.state["m0"].run(gated_pass(started, gate)))

        async def unload() -> None:
            answers.append(await pool.unload("m0"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_pass)
            await until(started.is_set)
            tg.start_soon(unload)
            await until(lambda: states(pool)["m0"] == "unloading")
            assert not life.state["m0"].ready
            assert record.events == ["load m0"]  # not released under the pass
            gate.set()
        assert answers == ["done", True]
        assert record.events == ["load m0", "release m0"]
        assert record.evicted_in_use == []
        gc.collect()
        assert models["m0"].alive() == 0
        assert pool.models()["m0"]["unloads"] == 1
        assert not await pool.unload("m0")  # nothing loaded: nothing to do


async def test_shutdown_during_a_load_waits_for_it_then_releases_it(tmp_path: Path) -> None:
    pool, models, record = pool_of(tmp_path, 1, budget_units=1)
    models["m0"].load_gate.clear()
    outcome: list[Any] = []
    # drain_timeout_s=0: shutdown reaches the pool while the request still waits for the load.
    async with LifespanDriver(Host(resources=[pool], drain_timeout_s=0)) as life:

        async def ask() -> None:
            try:
                outcome.append(await use(life.state["m0"]))
            except HTTPError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await until(models["m0"].loading.is_set)
            tg.start_soon(life.shutdown)
            await until(lambda: pool.closing)
            assert states(pool)["m0"] == "loading"  # the load cannot be stopped: shutdown waits
            models["m0"].load_gate.set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], HTTPError)
    assert outcome[0].status == 503
    assert "shutting down" in outcome[0].message
    assert record.events == ["load m0", "release m0"]
    gc.collect()
    assert models["m0"].alive() == 0
    assert model_threads("m0") == []
    assert states(pool)["m0"] == "unloaded"


async def test_shutdown_releases_every_model_and_their_threads(tmp_path: Path) -> None:
    pool, models, _record = pool_of(tmp_path, 3, budget_units=3)
    async with LifespanDriver(Host(resources=[pool])) as life:
        for name in models:
            await use(life.state[name])
        assert len(model_threads("m0")) == 1
    gc.collect()
    assert [model.alive() for model in models.values()] == [0, 0, 0]
    assert [model_threads(name) for name in models] == [[], [], []]
    assert pool.used_bytes == 0
    with pytest.raises(HTTPError, match="shutting down"):
        await use(life.state["m0"])


async def test_sixteen_clients_over_eight_models_in_a_budget_for_three(tmp_path: Path) -> None:
    pool, _models, record = pool_of(tmp_path, 8, budget_units=3, wait_s=30)
    async with LifespanDriver(Host(resources=[pool])) as life:
        failures: list[BaseException] = []

        async def client(first: int) -> None:
            for step in range(6):
                try:
                    await use(life.state[f"m{(first + step) % 8}"])
                except Exception as exc:
                    failures.append(exc)

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(client, i)
        assert failures == []
        assert record.most_loading == 1  # one load at a time, so never two of one model
        assert record.evicted_in_use == []
        assert pool.used_bytes <= 3 * UNIT
    loads = sum(detail["loads"] for detail in pool.models().values())
    assert loads == sum(event.startswith("load") for event in record.events)


async def test_load_evict_cycles_leave_no_model_or_thread_behind(tmp_path: Path) -> None:
    pool, models, _ = pool_of(tmp_path, 2, budget_units=1)
    async with LifespanDriver(Host(resources=[pool])) as life:
        for i in range(12):
            await use(life.state[f"m{i % 2}"])
        gc.collect()
        assert sum(model.alive() for model in models.values()) == 1
        assert len(model_threads("m0")) + len(model_threads("m1")) == 1
        assert sum(detail["loads"] for detail in pool.models().values()) == 12


# ---- configuration ----------------------------------------------------------------------------------


def test_a_pool_refuses_what_it_cannot_serve(tmp_path: Path) -> None:
    record = Record()
    with pytest.raises(ValueError, match="distinct names"):
        ModelPool([Gated("a", tmp_path, record), Gated("a", tmp_path, record)])
    with pytest.raises(ValueError, match="pinned models \\['b'\\] are not in the pool"):
        ModelPool([Gated("a", tmp_path, record)], pinned=["b"])
    with pytest.raises(ValueError, match="asks for device 'cuda:1' but the pool loads on 'auto'"):
        ModelPool([Gated("a", tmp_path, record, device="cuda:1")])
    compiled = TorchModel(lambda: stack(1), None, name="c", compile=True, warmup=torch.zeros(1, WIDTH))
    with pytest.raises(ValueError, match="is compiled"):
        ModelPool([compiled])


# ---- memory figures: CUDA faked on the CPU (tests/test_pool_cuda.py has the real ones) ----------------


class FakeCuda:
    """`torch.cuda` as a GPU would answer: allocated memory the test moves, free memory fixed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, free: int) -> None:
        self.allocated = 1000
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: 1)
        monkeypatch.setattr(cuda, "mem_get_info", lambda device=None: (free, 80 * 2**30))
        monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(cuda, "memory_reserved", lambda device=None: self.allocated)


def test_on_cuda_a_version_holds_what_its_load_allocated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from asgi_host._pooled import load_measured, version_bytes

    cuda = FakeCuda(monkeypatch, free=10 * 2**30)
    module = stack(1)
    cuda.allocated = 1000 + 5 * UNIT  # the weights and, say, cuBLAS's workspace
    assert version_bytes(module, torch.device("cuda"), 1000) == 5 * UNIT
    cuda.allocated = 1000 + 10  # less than its tensors (something else freed meanwhile): the tensors
    assert version_bytes(module, torch.device("cuda"), 1000) == UNIT
    assert version_bytes(module, torch.device("cpu"), None) == UNIT

    model = Gated("m", tmp_path, Record())

    def load(**options: Any) -> Any:  # a load that allocates 3 units on the (fake) device
        assert options["device"] == torch.device("cuda")
        cuda.allocated += 3 * UNIT
        return module, None

    cuda.allocated = 2000
    monkeypatch.setattr(model, "load", load)
    assert load_measured(model, torch.device("cuda"))[2] == 3 * UNIT


async def test_the_default_budget_is_most_of_the_free_cuda_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda(monkeypatch, free=10 * 2**30)
    model = TorchModel(lambda: stack(1), None, name="m")
    pool = ModelPool([model], device="cuda")
    async with LifespanDriver(Host(resources=[pool])):
        assert pool.device == torch.device("cuda")
        assert pool.budget_bytes == int(0.9 * 10 * 2**30)


async def test_the_default_budget_on_the_cpu_is_half_the_available_ram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asgi_host._pooled

    monkeypatch.setattr(asgi_host._pooled, "ram_available", lambda: 8 * 2**30)
    pool = ModelPool([TorchModel(lambda: stack(1), None, name="m")], device="cpu")
    async with LifespanDriver(Host(resources=[pool])):
        assert pool.budget_bytes == 4 * 2**30
    assert asgi_host._pooled.RAM_BUDGET_FRACTION == 0.5
