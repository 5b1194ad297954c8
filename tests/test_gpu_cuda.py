"""GPU serving on a real GPU: out of memory, compiled CUDA graphs, memory back after shutdown.

Every test here is `cuda`-marked: skipped where torch sees no GPU, run by
`python -m bench.gpu --run-tests` on a GPU machine. The CPU versions of the
same behaviours are in tests/test_gpu_serving.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from asgi_host import Batching, Host, LifespanFailed, Route
from asgi_host.model import Classifier, ModelHandle, TorchModel, release_cuda_memory
from asgi_host.testing import LifespanDriver
from examples.iris import LABELS, WEIGHTS, IrisMLP, load_dataset

pytestmark = [pytest.mark.cuda, pytest.mark.anyio]

MIB = 2**20
CHUNK = 256 * MIB  # what one row of `Hungry` needs on the device


class Hungry(nn.Module):
    """A 4 -> 3 classifier whose pass needs 256 MiB of scratch memory per row."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.empty(x.shape[0] * CHUNK, dtype=torch.uint8, device=x.device).fill_(1)
        out: torch.Tensor = self.linear(x) + scratch[:1].float() * 0
        return out


@pytest.fixture
def baseline() -> Iterator[int]:
    release_cuda_memory()
    yield torch.cuda.memory_allocated()
    release_cuda_memory()


@contextmanager
def filled_leaving(free_bytes: int) -> Iterator[None]:
    """Hold the GPU's free memory but `free_bytes` (what other processes use stays theirs)."""
    release_cuda_memory()
    free, _ = torch.cuda.mem_get_info()
    filler = torch.empty(free - free_bytes, dtype=torch.uint8, device="cuda")
    try:
        yield
    finally:
        del filler
        release_cuda_memory()


async def test_real_out_of_memory_in_a_batch_is_split_and_memory_comes_back(baseline: int) -> None:
    inputs, _ = load_dataset()
    endpoint = Classifier(
        labels=LABELS, n_features=4, batching=Batching(max_batch_rows=64, max_wait_s=0.05)
    ).endpoint
    host = Host(
        resources=[TorchModel(Hungry, None, device="cuda")],
        routes=[Route("/predict", endpoint, methods=["POST"])],
    )
    results: dict[str, Any] = {}
    async with LifespanDriver(host) as lifespan:
        with filled_leaving(6 * CHUNK):  # room for about 5 rows once the model and cuBLAS are in

            async def send(key: str, rows: list[list[float]]) -> None:
                results[key] = await lifespan.request("POST", "/predict", json={"inputs": rows}, timeout_s=60)

            async with anyio.create_task_group() as tg:
                for i in range(16):
                    tg.start_soon(send, f"one{i}", [inputs[i * 9]])
                tg.start_soon(send, "too big", inputs[:40])
            too_big = results.pop("too big")
            assert too_big.status == 503, too_big.body
            assert too_big.json()["error"]["type"] == "out_of_memory"
            assert "a forward pass of 40 row(s) did not fit" in too_big.json()["error"]["message"]
            assert {key: r.status for key, r in results.items()} == {key: 200 for key in results}
            handle: ModelHandle = lifespan.state["model"]
            assert handle.out_of_memory >= 1
            # Served on after the out-of-memory, with nothing of the failed passes still allocated.
            after = await lifespan.request("POST", "/predict", json={"inputs": inputs[:2]})
            assert after.status == 200
    assert torch.cuda.memory_allocated() == baseline
    assert torch.cuda.memory_reserved() == 0


async def test_real_out_of_memory_while_loading_names_the_memory_and_keeps_nothing(baseline: int) -> None:
    with filled_leaving(64 * MIB):
        held = torch.cuda.memory_allocated()
        model = TorchModel(lambda: nn.Linear(16384, 16384), None, device="cuda")  # 1 GiB of weights
        with pytest.raises(
            LifespanFailed,
            match=r"out of memory loading the model onto cuda(:0)?: Tried to allocate "
            r".*device free \d+ MiB of \d+ MiB",
        ):
            async with LifespanDriver(Host(resources=[model])):
                pass
        assert torch.cuda.memory_allocated() == held


async def test_compiled_with_cuda_graphs_answers_like_eager_and_frees_its_graphs(baseline: int) -> None:
    inputs, _ = load_dataset()
    answers: dict[str, Any] = {}
    for mode, compile in (("eager", False), ("graphs", {"mode": "reduce-overhead"})):
        model = TorchModel(
            IrisMLP,
            WEIGHTS,
            device="cuda",
            warmup=torch.zeros(1, 4),
            warmup_batch_sizes=[1, 150],
            compile=compile,
        )
        endpoint = Classifier(labels=LABELS, n_features=4).endpoint
        routes = [Route("/predict", endpoint, methods=["POST"])]
        host = Host(resources=[model], routes=routes, startup_timeout_s=300)
        async with LifespanDriver(host, startup_timeout_s=600) as lifespan:
            compiles = counters["frames"]["total"]
            every = await lifespan.request("POST", "/predict", json={"inputs": inputs})
            ones: list[Any] = [None] * 16

            async def one(i: int, lifespan: LifespanDriver = lifespan, ones: list[Any] = ones) -> None:
                ones[i] = await lifespan.request("POST", "/predict", json={"inputs": [inputs[i]]})

            async with anyio.create_task_group() as tg:
                for i in range(16):
                    tg.start_soon(one, i)
            assert counters["frames"]["total"] == compiles  # nothing compiled on the request path
            assert model.compiled is bool(compile)
            answers[mode] = (every.json()["outputs"], [r.json()["outputs"][0] for r in ones])
    eager, graphs = answers["eager"], answers["graphs"]
    assert torch.allclose(torch.tensor(graphs[0]), torch.tensor(eager[0]), atol=1e-5)
    assert torch.allclose(torch.tensor(graphs[1]), torch.tensor(eager[1]), atol=1e-5)
    # The graphs' private memory pool went with the model.
    assert torch.cuda.memory_allocated() == baseline
    assert torch.cuda.memory_reserved() == 0


async def test_half_precision_model_memory_returns_to_baseline_after_shutdown(baseline: int) -> None:
    # Half-precision matmuls go through cuBLASLt, whose workspace is kept per thread: on an H100
    # 16 MiB of MiniLM's stayed allocated after shutdown until the release ran on the model's thread.
    model = TorchModel(
        lambda: nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 1024)),
        None,
        device="cuda",
        dtype=torch.float16,
        warmup=torch.zeros(8, 1024),
    )
    async with LifespanDriver(Host(resources=[model])) as lifespan:
        handle = lifespan.state["model"]
        shape = await handle.run(
            lambda m: tuple(m(torch.ones(64, 1024, device="cuda", dtype=torch.float16)).shape)
        )
        assert shape == (64, 1024)
        assert torch.cuda.memory_allocated() > baseline
    # At most the baseline: an earlier test's leftovers may be collected on the way.
    assert torch.cuda.memory_allocated() <= baseline
    assert torch.cuda.memory_reserved() == 0
