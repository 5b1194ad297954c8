"""The PyTorch model resource: loading, errors, draining and release."""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from asgi_host import Host, HTTPError, LifespanFailed, LifespanPhase, Request, Response, Route
from asgi_host.model import (
    TIMED_PASSES,
    Execution,
    ModelHandle,
    TorchModel,
    release_cuda_memory,
    resolve_device,
)
from asgi_host.testing import LifespanDriver
from examples.iris import WEIGHTS, IrisMLP
from tests._wait import until

pytestmark = pytest.mark.anyio


def host_with(model: TorchModel, *routes: Route) -> Host:
    return Host(resources=[model], routes=list(routes))


async def start_and_get_handle(model: TorchModel) -> tuple[ModelHandle, str, torch.dtype]:
    async with LifespanDriver(host_with(model)) as lifespan:
        handle: ModelHandle = lifespan.state["model"]
        module = handle.module
        device = str(next(module.parameters()).device)
        return handle, device, next(module.parameters()).dtype


def _recording_forward(ran_in: list[int]) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    """A forward pass that records the thread it ran in and checks inference mode."""

    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        ran_in.append(threading.get_ident())
        assert torch.is_inference_mode_enabled()
        result: torch.Tensor = module(x)
        return result

    return forward


async def test_loads_safetensors_and_runs_off_the_loop() -> None:
    loop_thread = threading.get_ident()
    async with LifespanDriver(host_with(TorchModel(IrisMLP, WEIGHTS, device="cpu"))) as lifespan:
        handle: ModelHandle = lifespan.state["model"]
        assert not handle.module.training
        ran_in: list[int] = []
        logits = await handle.run(_recording_forward(ran_in), torch.tensor([[5.1, 3.5, 1.4, 0.2]]))
    assert logits.argmax().item() == 0  # setosa
    assert ran_in
    assert ran_in[0] != loop_thread
    assert handle.forward_passes == 1


async def test_inline_runs_on_the_loop_and_still_refuses_after_shutdown() -> None:
    loop_thread = threading.get_ident()
    ran_in: list[int] = []
    forward = _recording_forward(ran_in)
    async with LifespanDriver(
        host_with(TorchModel(IrisMLP, WEIGHTS, device="cpu", execution="inline"))
    ) as lifespan:
        handle: ModelHandle = lifespan.state["model"]
        logits = await handle.run(forward, torch.tensor([[5.1, 3.5, 1.4, 0.2]]))
        assert handle.inline
        assert handle.in_flight == 0
    assert logits.argmax().item() == 0
    assert ran_in == [loop_thread]
    assert handle.forward_passes == 1
    with pytest.raises(HTTPError) as refused:
        await handle.run(forward, torch.zeros(1, 4))
    assert refused.value.status == 503


class _SlowForward(IrisMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.003)
        return super().forward(x)


async def test_inline_warns_when_a_forward_pass_is_too_slow_for_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cases: list[tuple[type[nn.Module], Execution, bool]] = [
        (_SlowForward, "inline", True),
        (_SlowForward, "thread", False),
        (_SlowForward, "auto", False),
        (IrisMLP, "inline", False),
    ]
    for model_cls, execution, warned in cases:
        caplog.clear()
        model = TorchModel(model_cls, WEIGHTS, device="cpu", execution=execution, warmup=torch.zeros(1, 4))
        async with LifespanDriver(host_with(model)):
            pass
        assert ("blocks the event loop" in caplog.text) is warned, (model_cls, execution)


@pytest.mark.parametrize(
    ("model_cls", "threshold_s", "inline"),
    [(IrisMLP, 0.05, True), (_SlowForward, 0.001, False)],
    ids=["fast-inline", "slow-thread"],
)
async def test_auto_execution_is_chosen_from_the_timed_warmup_pass(
    model_cls: type[IrisMLP], threshold_s: float, inline: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "asgi_host.model")
    loop_thread = threading.get_ident()
    model = TorchModel(
        model_cls, WEIGHTS, device="cpu", warmup=torch.zeros(1, 4), inline_threshold_s=threshold_s
    )
    async with LifespanDriver(host_with(model)) as lifespan:
        handle: ModelHandle = lifespan.state["model"]
        ran_in: list[int] = []
        await handle.run(_recording_forward(ran_in), torch.zeros(1, 4))
        ready = await lifespan.request("GET", "/readyz")
    assert handle.inline is inline
    assert (ran_in == [loop_thread]) is inline
    assert model.pass_s is not None
    assert (model.pass_s <= threshold_s) is inline
    if not inline:
        assert model.pass_s >= 0.003  # the slow module sleeps that long in every pass
    detail = json.loads(ready.body)["resources"]["model"]
    assert detail["execution"] == ("inline" if inline else "thread")
    assert detail["pass_ms"] == pytest.approx(model.pass_s * 1e3, abs=1e-3)
    assert ("within" if inline else "over") in detail["execution_reason"]
    assert f"execution={'inline' if inline else 'thread'}" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({}, "no warmup input"),
        ({"warmup": torch.zeros(1, 4), "max_concurrency": 2}, "max_concurrency=2"),
        ({"warmup": torch.zeros(1, 4), "execution": "thread"}, "execution='thread' was asked for"),
    ],
    ids=["no-warmup", "concurrency", "asked"],
)
async def test_auto_execution_keeps_the_thread_when_it_cannot_or_should_not_inline(
    kwargs: dict[str, Any], reason: str
) -> None:
    model = TorchModel(IrisMLP, WEIGHTS, device="cpu", inline_threshold_s=10.0, **kwargs)
    async with LifespanDriver(host_with(model)) as lifespan:
        assert not lifespan.state["model"].inline
    assert reason in (model.execution_reason or "")


def test_execution_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="'auto', 'inline' or 'thread'"):
        TorchModel(IrisMLP, WEIGHTS, execution="loop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="inline_threshold_s"):
        TorchModel(IrisMLP, WEIGHTS, inline_threshold_s=-1)


async def test_loads_a_state_dict_with_weights_only(tmp_path: Path) -> None:
    trained = TorchModel(IrisMLP, WEIGHTS).load()[0]
    path = tmp_path / "iris.pt"
    torch.save(trained.state_dict(), path)
    async with LifespanDriver(host_with(TorchModel(IrisMLP, path))) as lifespan:
        module: Any = lifespan.state["model"].module
        assert torch.equal(module.layers[0].weight, cast(Any, trained).layers[0].weight)


class _Payload:
    """Unpickling this runs code: a weights file must never do that."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (self.marker,))


async def test_pickled_code_in_a_weights_file_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"layers.0.weight": _Payload(str(marker))}, path)
    with pytest.raises(LifespanFailed, match="weights_only=True: files with pickled code are refused"):
        async with LifespanDriver(host_with(TorchModel(IrisMLP, path))):
            pass
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make_weights", "message"),
    [
        (lambda d: d / "missing.safetensors", r"weights file .*missing\.safetensors does not exist"),
        (lambda d: _save(d, IrisMLP(hidden=8)), r"do not fit IrisMLP: .*size mismatch for layers\.0\.weight"),
        (lambda d: _save(d, nn.Linear(4, 3)), r"do not fit IrisMLP: .*Missing key\(s\)"),
        (lambda d: _touch(d / "weights.onnx"), r"has suffix '\.onnx'; use \.safetensors"),
        (lambda d: _touch(d / "broken.safetensors"), r"reading weights .*broken\.safetensors failed"),
    ],
)
async def test_load_errors_fail_startup_with_an_actionable_message(
    tmp_path: Path, make_weights: Any, message: str
) -> None:
    weights = make_weights(tmp_path)
    with pytest.raises(
        LifespanFailed, match=rf"(?s)resource 'model' failed to start: ModelLoadError: .*{message}"
    ):
        async with LifespanDriver(host_with(TorchModel(IrisMLP, weights))):
            pass


def _save(directory: Path, module: nn.Module) -> Path:
    path = directory / "other.safetensors"
    save_file(dict(module.state_dict()), str(path))
    return path


def _touch(path: Path) -> Path:
    path.write_bytes(b"not weights")
    return path


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
async def test_explicit_cuda_without_a_gpu_fails_startup_clearly() -> None:
    with pytest.raises(
        LifespanFailed, match=r"device 'cuda:1' was asked for, but torch.cuda.is_available\(\)"
    ):
        async with LifespanDriver(host_with(TorchModel(IrisMLP, WEIGHTS, device="cuda:1"))):
            pass


def test_auto_device_is_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


async def test_dtype_casts_weights_and_is_on_the_handle() -> None:
    async with LifespanDriver(host_with(TorchModel(IrisMLP, WEIGHTS, dtype=torch.float64))) as lifespan:
        handle: ModelHandle = lifespan.state["model"]
        assert handle.dtype == torch.float64
        assert cast(Any, handle.module).layers[0].weight.dtype == torch.float64


async def test_warmup_runs_and_a_failing_warmup_fails_startup() -> None:
    seen: list[tuple[int, ...]] = []

    def warm(module: nn.Module) -> None:
        seen.append(tuple(module(torch.zeros(2, 4, device=next(module.parameters()).device)).shape))

    async with LifespanDriver(host_with(TorchModel(IrisMLP, WEIGHTS, warmup=warm))):
        # Once to warm up, then up to five times more to time a pass (execution="auto").
        assert set(seen) == {(2, 3)}
        assert 2 <= len(seen) <= 1 + TIMED_PASSES
    with pytest.raises(LifespanFailed, match="warmup failed: RuntimeError"):
        async with LifespanDriver(host_with(TorchModel(IrisMLP, WEIGHTS, warmup=torch.zeros(1, 5)))):
            pass


async def test_slow_load_hits_the_startup_timeout_without_waiting_for_it() -> None:
    release = threading.Event()

    def slow_build() -> nn.Module:
        release.wait(10)
        return IrisMLP()

    host = Host(resources=[TorchModel(slow_build, None)], startup_timeout_s=0.2)
    try:
        with (
            anyio.fail_after(5),
            pytest.raises(LifespanFailed, match=r"did not start within startup_timeout_s=0\.2"),
        ):
            async with LifespanDriver(host):
                pass
    finally:
        release.set()


@pytest.mark.parametrize("drain_timeout_s", [30.0, 0.0])
async def test_shutdown_waits_for_the_forward_pass_in_flight_and_then_frees_the_model(
    drain_timeout_s: float,
) -> None:
    # With drain_timeout_s=0 the host stops waiting for requests at once; the
    # model handle must still wait for the pass that is running in its thread.
    entered = threading.Event()
    gate = threading.Event()
    order: list[str] = []

    def slow_forward(module: nn.Module) -> str:
        entered.set()
        gate.wait(10)
        order.append("forward done")
        return "ok"

    async def slow(request: Request) -> Response:
        handle: ModelHandle = request.state["model"]
        return Response.json(await handle.run(slow_forward))

    host = Host(
        resources=[TorchModel(IrisMLP, WEIGHTS)],
        routes=[Route("/slow", slow)],
        drain_timeout_s=drain_timeout_s,
    )
    results: dict[str, Any] = {}
    async with LifespanDriver(host) as lifespan:
        handle: ModelHandle = lifespan.state["model"]
        module_ref = weakref.ref(handle.module)

        async def in_flight() -> None:
            results["slow"] = await lifespan.request("GET", "/slow")

        async def shut_down() -> None:
            await lifespan.shutdown()
            order.append("shutdown complete")

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_flight)
            await anyio.to_thread.run_sync(entered.wait, 10)
            tg.start_soon(shut_down)
            if drain_timeout_s == 0:
                await until(lambda: handle.closing)
            else:
                await until(lambda: host.phase is LifespanPhase.STOPPING)
            # Draining: the module is still there for the running pass; new work is refused.
            assert module_ref() is not None
            refused = await lifespan.request("GET", "/slow")
            assert refused.status == 503
            assert refused.header("retry-after") == "1"
            assert order == []
            gate.set()
    assert results["slow"].status == 200
    assert order == ["forward done", "shutdown complete"]
    gc.collect()
    assert module_ref() is None, "the model must not be referenced after shutdown"
    with pytest.raises(HTTPError, match="released"):
        _ = handle.module


def test_release_cuda_memory_is_safe_without_cuda_and_idempotent() -> None:
    release_cuda_memory()
    release_cuda_memory()


@pytest.mark.cuda
async def test_cuda_memory_returns_to_baseline_after_shutdown() -> None:
    release_cuda_memory()
    baseline = torch.cuda.memory_allocated()
    big = TorchModel(lambda: nn.Sequential(nn.Linear(4096, 4096), nn.Linear(4096, 4096)), None, device="cuda")
    async with LifespanDriver(host_with(big), startup_timeout_s=60) as lifespan:
        assert torch.cuda.memory_allocated() > baseline
        handle: ModelHandle = lifespan.state["model"]
        await handle.run(lambda module: module(torch.zeros(8, 4096, device="cuda")).sum().item())
    assert torch.cuda.memory_allocated() == baseline
    assert torch.cuda.memory_reserved() == 0


class WithScratch(nn.Module):
    """A non-persistent buffer: not in the weights file, so a meta build cannot be used as is."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.register_buffer("scale", torch.full((3,), 2.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x) * self.scale
        return out


async def test_a_buffer_missing_from_the_weights_falls_back_to_a_real_build(tmp_path: Path) -> None:
    trained = WithScratch()
    path = tmp_path / "scratch.safetensors"
    save_file(dict(trained.state_dict()), str(path))
    async with LifespanDriver(host_with(TorchModel(WithScratch, path))) as lifespan:
        module = lifespan.state["model"].module
        assert not module.scale.is_meta
        assert torch.equal(module.scale.cpu(), torch.full((3,), 2.0))
        x = torch.ones(1, 4)
        with torch.inference_mode():  # on whichever device "auto" chose
            assert torch.allclose(module(x.to(module.scale.device)).cpu(), trained(x))


def test_weights_become_the_parameters_without_a_copy(tmp_path: Path) -> None:
    # The meta build + assign path: parameters are the loaded tensors, not random init.
    module = TorchModel(IrisMLP, WEIGHTS).load()[0]
    assert not any(t.is_meta for t in (*module.parameters(), *module.buffers()))
    reference = load_file(str(WEIGHTS))
    assert all(torch.equal(v.cpu(), reference[k]) for k, v in module.state_dict().items())


def test_skipping_init_on_meta_never_touches_other_threads() -> None:
    # The meta build skips random init in its own thread only; torch.nn.init is whole again after.
    originals = {name: getattr(nn.init, name) for name in ("ones_", "normal_", "kaiming_uniform_")}
    building, checked = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def build() -> nn.Module:
        building.set()
        checked.wait(10)
        return IrisMLP()

    def other_thread() -> None:
        building.wait(10)
        t = torch.zeros(3)
        nn.init.ones_(t)
        seen["filled"] = bool(torch.equal(t, torch.ones(3)))
        checked.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    module = TorchModel(build, WEIGHTS, device="cpu").load()[0]
    worker.join(10)
    assert seen == {"filled": True}
    assert all(getattr(nn.init, name) is fn for name, fn in originals.items())
    reference = load_file(str(WEIGHTS))
    assert all(torch.equal(v, reference[k]) for k, v in module.state_dict().items())


class _Cyclic(IrisMLP):
    """The Iris model holding a reference to itself: only a garbage collection frees it."""

    def __init__(self) -> None:
        super().__init__()
        self.itself = [self]


@pytest.mark.parametrize("build", [IrisMLP, _Cyclic], ids=["no cycle", "a cycle"])
async def test_on_the_cpu_the_release_collects_garbage_only_when_the_module_needs_it(
    monkeypatch: pytest.MonkeyPatch, build: Callable[[], nn.Module]
) -> None:
    real_collect = gc.collect
    collections: list[str] = []

    def counted(*args: Any) -> int:
        collections.append(threading.current_thread().name)
        return real_collect(*args)

    model = TorchModel(build, WEIGHTS, device="cpu", execution="thread")
    async with LifespanDriver(host_with(model)) as life:
        handle: ModelHandle = life.state["model"]
        await handle.run(lambda module: module(torch.zeros(1, 4)))
        module = weakref.ref(handle.module)
        gc.disable()  # nothing but the release may collect from here on
        try:
            monkeypatch.setattr(gc, "collect", counted)
            await life.shutdown()
            # Freed either way: by its last reference going, or by the release's collection.
            assert module() is None
        finally:
            monkeypatch.undo()
            gc.enable()
    if build is IrisMLP:
        assert collections == []  # a full collection would have freed nothing of the model's
    else:
        assert collections == ["asgi_host-model-0"]  # on the model's own thread
