"""`ModelPool` on a real GPU: measured bytes, evictions and shutdown giving the memory back, and the
default budget from free memory. `cuda`-marked: skipped where torch sees no GPU; the CPU versions
(with `torch.cuda` faked) are in tests/test_pool.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from asgi_host import Host
from asgi_host.model import ModelPool, TorchModel, release_cuda_memory
from asgi_host.testing import LifespanDriver

pytestmark = [pytest.mark.cuda, pytest.mark.anyio]

MIB = 2**20
SIDE = 4096  # nn.Linear(SIDE, SIDE): 64 MiB of float32 weights


@pytest.fixture
def baseline() -> Iterator[int]:
    release_cuda_memory()
    yield torch.cuda.memory_allocated()
    release_cuda_memory()


def big(name: str) -> TorchModel:
    return TorchModel(lambda: nn.Linear(SIDE, SIDE), None, name=name, warmup=torch.zeros(1, SIDE))


async def test_evictions_and_shutdown_give_the_cuda_memory_back(baseline: int) -> None:
    weights = 4 * (SIDE * SIDE + SIDE)
    pool = ModelPool([big(f"m{i}") for i in range(3)], budget_bytes=2 * weights + 96 * MIB, device="cuda")
    async with LifespanDriver(Host(resources=[pool])) as life:
        x = torch.zeros(2, SIDE)
        for name in ("m0", "m1", "m2", "m0"):
            await life.state[name].run(lambda module, x: module(x.to("cuda")).sum().item(), x)
        models = pool.models()
        for name in ("m0", "m2"):
            assert models[name]["state"] == "ready"
            # The allocated delta of its load: its weights, and what its thread's matmuls keep
            # (cuBLAS's workspace), no less.
            assert weights <= models[name]["measured_bytes"] <= weights + 64 * MIB, models[name]
        assert models["m1"]["state"] == "unloaded"
        assert models["m1"]["evictions"] == 1
        held = torch.cuda.memory_allocated() - baseline
        assert held <= pool.used_bytes  # what is allocated is what the pool counts, evicted ones gone
    assert torch.cuda.memory_allocated() == baseline
    assert torch.cuda.memory_reserved() == 0


async def test_the_default_budget_is_most_of_the_free_memory(baseline: int) -> None:
    pool = ModelPool([big("m0")], device="cuda")
    free, _ = torch.cuda.mem_get_info()
    async with LifespanDriver(Host(resources=[pool])):
        assert 0.85 * free <= pool.budget_bytes <= 0.95 * free
