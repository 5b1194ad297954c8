"""GPU serving behaviours, testable on CPU: out of memory survived, compiled warmup, output checks.

`torch.cuda.OutOfMemoryError` exists in CPU builds, so a module that raises it
above a row count stands in for a GPU that runs out of memory; the `cuda`
tests in tests/test_gpu_cuda.py do the same on a real GPU.
"""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any, cast

import anyio
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from asgi_host import Batching, Host, LifespanFailed, OutOfMemory, Route
from asgi_host.metrics import Metrics
from asgi_host.model import Classifier, ModelHandle, TorchModel
from asgi_host.testing import LifespanDriver
from examples.iris import LABELS, WEIGHTS, IrisMLP, load_dataset

pytestmark = pytest.mark.anyio

FITS = 8  # rows a pass of the fake model can hold


class RunsOutAbove(nn.Module):
    """A linear model that raises CUDA's out-of-memory error for passes of more than `limit` rows."""

    def __init__(self, limit: int = FITS) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.limit = limit
        self.pass_rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.pass_rows.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {x.shape[0]}.00 GiB. GPU 0 has a total capacity of "
                "79.19 GiB of which 1.00 GiB is free. Of the allocated memory 70 GiB is allocated by PyTorch"
            )
        out: torch.Tensor = self.linear(x)
        return out


def predict_host(model: nn.Module, batching: Batching | None, **kwargs: Any) -> Host:
    endpoint = Classifier(labels=LABELS, n_features=4, batching=batching).endpoint
    return Host(
        resources=[TorchModel(lambda: model, None, device="cpu", **kwargs)],
        routes=[Route("/predict", endpoint, methods=["POST"])],
        metrics=Metrics(),
    )


def expected(model: nn.Module, rows: list[list[float]]) -> list[list[float]]:
    with torch.inference_mode():
        linear: nn.Module = cast(Any, model).linear
        out: list[list[float]] = torch.softmax(linear(torch.tensor(rows)), dim=-1).tolist()
    return out


async def test_a_batch_that_runs_out_of_memory_is_split_and_every_request_answered() -> None:
    model = RunsOutAbove()
    inputs, _ = load_dataset()
    rows = [inputs[i * 4] for i in range(32)]
    answers: list[Any] = [None] * len(rows)
    batching = Batching(max_batch_rows=64, max_wait_s=0.05)
    async with LifespanDriver(predict_host(model, batching)) as lifespan:
        model.pass_rows.clear()

        async def one(i: int) -> None:
            answers[i] = await lifespan.request("POST", "/predict", json={"inputs": [rows[i]]})

        async with anyio.create_task_group() as tg:
            for i in range(len(rows)):
                tg.start_soon(one, i)
        assert [a.status for a in answers] == [200] * len(rows)
        for row, answer in zip(rows, answers, strict=True):
            # Exactly what an unsplit pass gives for that row.
            assert answer.json()["outputs"] == [pytest.approx(expected(model, [row])[0], abs=1e-6)]
        assert max(model.pass_rows) > FITS  # the batch really ran out of memory first
        assert sum(n for n in model.pass_rows if n <= FITS) == len(rows)  # then every row ran once
        handle: ModelHandle = lifespan.state["model"]
        assert handle.out_of_memory >= 1
        metrics = (await lifespan.request("GET", "/metrics")).body.decode()
        assert 'asgi_host_out_of_memory_passes{model="model"}' in metrics
        assert 'asgi_host_batch_oom_splits{batcher="model batcher"} ' in metrics
        assert 'asgi_host_out_of_memory_passes{model="model"} 0.0' not in metrics


async def test_a_request_that_does_not_fit_alone_is_503_and_the_others_are_served() -> None:
    model = RunsOutAbove()
    inputs, _ = load_dataset()
    poison = inputs[: FITS + 1]
    batching = Batching(max_batch_rows=64, max_wait_s=0.05)
    results: dict[str, Any] = {}
    async with LifespanDriver(predict_host(model, batching)) as lifespan:

        async def send(key: str, body: list[list[float]]) -> None:
            results[key] = await lifespan.request("POST", "/predict", json={"inputs": body})

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(send, f"small{i}", [inputs[50 + i]])
            tg.start_soon(send, "poison", poison)
        failed = results.pop("poison")
        assert failed.status == 503
        assert failed.header("retry-after") == "1"
        error = failed.json()["error"]
        assert error["type"] == "out_of_memory"
        assert f"a forward pass of {FITS + 1} row(s) did not fit" in error["message"]
        assert "Tried to allocate" in error["message"]
        assert all(r.status == 200 for r in results.values())
        # The server goes on serving, the big request too once it is small enough.
        again = await lifespan.request("POST", "/predict", json={"inputs": poison[:FITS]})
        assert again.status == 200


async def test_without_batching_out_of_memory_is_503_naming_the_rows_and_serving_goes_on() -> None:
    model = RunsOutAbove()
    inputs, _ = load_dataset()
    async with LifespanDriver(predict_host(model, None)) as lifespan:
        failed = await lifespan.request("POST", "/predict", json={"inputs": inputs[:20]})
        assert failed.status == 503
        assert "a forward pass of 20 row(s) did not fit" in failed.json()["error"]["message"]
        ok = await lifespan.request("POST", "/predict", json={"inputs": inputs[:2]})
        assert ok.status == 200
        assert lifespan.state["model"].out_of_memory == 1


async def test_any_pass_through_the_handle_drops_its_tensors_before_raising_out_of_memory() -> None:
    seen: list[weakref.ref[torch.Tensor]] = []

    def pass_that_runs_out(module: nn.Module) -> None:
        activations = torch.ones(1000)
        seen.append(weakref.ref(activations))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    async with LifespanDriver(Host(resources=[TorchModel(IrisMLP, WEIGHTS, device="cpu")])) as lifespan:
        handle: ModelHandle = lifespan.state["model"]
        with pytest.raises(OutOfMemory, match=r"Tried to allocate 8\.00 GiB") as raised:
            await handle.run(pass_that_runs_out)
        assert raised.value.status == 503
        # By the time the error reaches the caller (and the cache was emptied) the pass's tensors are free.
        assert seen[0]() is None


async def test_out_of_memory_while_loading_fails_startup_and_keeps_nothing() -> None:
    built: list[weakref.ref[nn.Module]] = []

    def build() -> nn.Module:
        module = IrisMLP()
        built.append(weakref.ref(module))
        return module

    def warmup(module: nn.Module) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    model = TorchModel(build, WEIGHTS, device="cpu", warmup=warmup)
    with pytest.raises(
        LifespanFailed,
        match=r"out of memory loading the model onto cpu: Tried to allocate 20\.00 GiB; the weights file is "
        r"0 MiB; after releasing what the load held",
    ):
        async with LifespanDriver(Host(resources=[model])):
            pass
    gc.collect()
    assert built
    assert all(ref() is None for ref in built)


async def test_the_classifier_checks_the_model_output_at_startup() -> None:
    # Iris returns 3 columns; an endpoint with 2 labels must not start.
    endpoint = Classifier(labels=["cat", "dog"], n_features=4).endpoint
    host = Host(
        resources=[TorchModel(IrisMLP, WEIGHTS)], routes=[Route("/predict", endpoint, methods=["POST"])]
    )
    with pytest.raises(
        LifespanFailed, match=r"returns 3 columns per row but the endpoint has 2 labels \(cat, dog\)"
    ):
        async with LifespanDriver(host):
            pass


async def test_passes_run_on_the_thread_that_loaded_the_model() -> None:
    threads: dict[str, set[int]] = {"load": set(), "pass": set()}

    def build() -> nn.Module:
        threads["load"].add(threading.get_ident())
        return IrisMLP()

    async with LifespanDriver(Host(resources=[TorchModel(build, WEIGHTS, device="cpu")])) as lifespan:
        handle: ModelHandle = lifespan.state["model"]

        def record(module: nn.Module) -> None:
            threads["pass"].add(threading.get_ident())

        async with anyio.create_task_group() as tg:
            for _ in range(8):
                tg.start_soon(handle.run, record)
    assert threads["pass"] == threads["load"]
    assert threading.get_ident() not in threads["pass"]


async def test_a_cancelled_caller_waits_for_its_pass_before_shutdown_drops_the_module() -> None:
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def slow(module: nn.Module) -> None:
        started.set()
        release.wait(5)
        finished.append(module.training is False)

    async with LifespanDriver(Host(resources=[TorchModel(IrisMLP, WEIGHTS, device="cpu")])) as lifespan:
        handle: ModelHandle = lifespan.state["model"]
        with anyio.move_on_after(0.05) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(handle.run, slow)
                await anyio.to_thread.run_sync(started.wait, 5)
                tg.cancel_scope.cancel()
                release.set()
        assert not scope.cancelled_caught or finished
        assert handle.in_flight == 0
    assert finished == [True]


def warmups(seen: list[int | None]) -> Callable[..., None]:
    def warm(module: nn.Module, rows: int | None = None) -> None:
        seen.append(rows)
        module(torch.zeros(rows or 1, 4))

    return warm


async def test_warmup_runs_at_every_declared_batch_size() -> None:
    seen: list[int | None] = []
    model = TorchModel(IrisMLP, WEIGHTS, device="cpu", warmup=warmups(seen), warmup_batch_sizes=[1, 8, 64])
    async with LifespanDriver(Host(resources=[model])):
        # Then the largest declared size again, up to five times, to time a pass (execution="auto").
        assert seen[:4] == [None, 1, 8, 64]
        assert set(seen[4:]) == {64}


@pytest.mark.one_loop
@pytest.mark.server
async def test_compiled_model_answers_like_eager_and_the_first_request_needs_no_compile() -> None:
    inputs, _ = load_dataset()
    answers: dict[str, list[list[float]]] = {}
    stages: list[str] = []
    for mode, compile in (("eager", False), ("compiled", True)):
        model = TorchModel(
            IrisMLP,
            WEIGHTS,
            device="cpu",
            warmup=torch.zeros(1, 4),
            warmup_batch_sizes=[1, 150],
            compile=compile,
        )
        host = Host(
            resources=[model],
            routes=[Route("/predict", Classifier(labels=LABELS, n_features=4).endpoint, methods=["POST"])],
            startup_timeout_s=300,  # the first compile in a process on a GPU machine took over 60 s
        )
        original = host.progress.report

        def report(stage: str | None = None, fraction: float | None = None, original: Any = original) -> None:
            stages.append(stage or "")
            original(stage, fraction)

        host.progress.report = report  # type: ignore[method-assign]
        async with LifespanDriver(host, startup_timeout_s=300) as lifespan:
            assert model.compiled is compile
            compiles = counters["frames"]["total"]
            result = await lifespan.request("POST", "/predict", json={"inputs": inputs})
            assert result.status == 200
            answers[mode] = result.json()["outputs"]
            # The 150-row request was warmed up at startup: it compiles nothing.
            assert counters["frames"]["total"] == compiles
    assert any(s.startswith("compiling (torch.compile") for s in stages)
    assert torch.allclose(torch.tensor(answers["compiled"]), torch.tensor(answers["eager"]), atol=1e-5)


@pytest.mark.one_loop
@pytest.mark.server  # inductor compiles in worker processes
async def test_after_a_one_row_warmup_no_request_compiles_whatever_its_rows() -> None:
    # Before: the warmup tensor was made outside inference mode (the first request recompiled for
    # its dispatch keys), and the first request of 2 rows or more compiled again.
    model = TorchModel(IrisMLP, WEIGHTS, device="cpu", warmup=torch.zeros(1, 4), compile=True)
    host = Host(
        resources=[model],
        routes=[Route("/predict", Classifier(labels=LABELS, n_features=4).endpoint, methods=["POST"])],
        startup_timeout_s=300,
    )
    inputs, _ = load_dataset()
    async with LifespanDriver(host, startup_timeout_s=300) as lifespan:
        assert model.compiled
        compiles = counters["frames"]["total"]
        for rows in (1, 2, 3, 17, 150, 1):
            result = await lifespan.request("POST", "/predict", json={"inputs": inputs[:rows]})
            assert result.status == 200, result.body
            assert counters["frames"]["total"] == compiles, f"a request of {rows} rows compiled"


class BreaksTheGraph(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 1e9:  # data-dependent Python branch: a graph break
            x = x * 2
        out: torch.Tensor = self.linear(x)
        return out


async def test_a_failing_compile_fails_startup_with_the_reason() -> None:
    model = TorchModel(
        BreaksTheGraph,
        None,
        device="cpu",
        warmup=torch.zeros(1, 4),
        compile={"fullgraph": True, "backend": "eager"},
    )
    with pytest.raises(
        LifespanFailed, match=r"torch\.compile failed while warming up \(.+\); .*compile_fallback=True"
    ):
        async with LifespanDriver(Host(resources=[model])):
            pass


async def test_compile_fallback_serves_eager_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = TorchModel(
        BreaksTheGraph,
        None,
        device="cpu",
        warmup=torch.zeros(1, 4),
        compile={"fullgraph": True, "backend": "eager"},
        compile_fallback=True,
    )
    with caplog.at_level(logging.WARNING, logger="asgi_host.model"):
        async with LifespanDriver(Host(resources=[model])) as lifespan:
            assert model.compiled is False
            handle: ModelHandle = lifespan.state["model"]
            out = await handle.run(lambda m: m(torch.ones(2, 4)).shape)
            assert tuple(out) == (2, 3)
    assert any("serving cpu eager (compile_fallback=True)" in r.getMessage() for r in caplog.records)


def test_settings_that_cannot_work_are_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="compile needs a warmup input"):
        TorchModel(IrisMLP, WEIGHTS, compile=True)
    with pytest.raises(ValueError, match="use max_concurrency=1"):
        TorchModel(
            IrisMLP, WEIGHTS, warmup=torch.zeros(1, 4), compile={"mode": "reduce-overhead"}, max_concurrency=2
        )
    with pytest.raises(ValueError, match="compile and execution='inline' do not mix"):
        TorchModel(IrisMLP, WEIGHTS, warmup=torch.zeros(1, 4), compile=True, execution="inline")
    with pytest.raises(ValueError, match="max_concurrency must be at least 1"):
        TorchModel(IrisMLP, WEIGHTS, max_concurrency=0)
