"""`Rows(prepare=..., finish=...)`: per-request work in the request's task, the pass on the model's thread."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import msgspec
import pytest
import torch
from torch import nn

from asgi_host import Batcher, Batching, Host, Request, Response, Route, Rows
from asgi_host.model import TorchModel
from asgi_host.testing import LifespanDriver
from tests.test_doc_snippets import python_block

pytestmark = pytest.mark.anyio


class Double(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


class Recorded:
    """Hooks and a forward function that record the thread each call ran on and what it got."""

    def __init__(self) -> None:
        self.threads: dict[str, set[int]] = {"prepare": set(), "forward": set(), "finish": set()}
        self.passes: list[list[float]] = []

    def prepare(self, rows: list[int]) -> list[torch.Tensor]:
        self.threads["prepare"].add(threading.get_ident())
        return [torch.tensor([float(row), 0.5]) for row in rows]

    def forward(
        self, module: nn.Module, items: list[torch.Tensor], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        self.threads["forward"].add(threading.get_ident())
        self.passes.append([float(item[0]) for item in items])
        return module(torch.stack(items))  # type: ignore[no-any-return]  # a tensor: a row per item

    def finish(self, items: list[torch.Tensor], outputs: list[torch.Tensor]) -> list[list[float]]:
        self.threads["finish"].add(threading.get_ident())
        assert all(output.shape == (2,) for output in outputs)  # this request's own rows, one each
        return [[*output.tolist(), float(item[0])] for item, output in zip(items, outputs, strict=True)]


def recorded_host(recorded: Recorded, batching: Batching | None) -> tuple[Host, Rows[int, list[float]]]:
    rows: Rows[int, list[float]] = Rows(
        recorded.forward, batching=batching, prepare=recorded.prepare, finish=recorded.finish
    )

    async def double(request: Request) -> Response:
        numbers = msgspec.json.decode(await request.body(), type=list[int])
        return Response.json(await rows.run(numbers, request))

    model = TorchModel(Double, None, device="cpu", execution="thread")  # passes on the model's thread
    route = Route("/double", double, methods=["POST"], resources=rows.resources)
    return Host(resources=[model], routes=[route]), rows


BODIES = [[1, 2, 3], [4], [5, 6], [7, 8, 9], [10, 11, 12]]  # 12 rows


@pytest.mark.parametrize(
    "batching",
    [
        None,
        Batching(max_batch_rows=12, max_wait_s=30),  # one pass, closed when all 12 rows have queued
        Batching(max_batch_rows=16, bucket_rows=(16,)),  # every pass (of 12 rows at most) padded to 16
    ],
    ids=["unbatched", "batched", "bucketed"],
)
async def test_prepare_and_finish_run_in_the_request_task_and_only_the_pass_on_the_models_thread(
    batching: Batching | None,
) -> None:
    recorded = Recorded()
    host, rows = recorded_host(recorded, batching)
    answers: list[Any] = [None] * len(BODIES)
    async with LifespanDriver(host) as lifespan:

        async def one(i: int) -> None:
            answers[i] = (await lifespan.request("POST", "/double", json=BODIES[i])).json()

        async with anyio.create_task_group() as tg:
            for i in range(len(BODIES)):
                tg.start_soon(one, i)
        loop_thread = threading.get_ident()
    assert answers == [[[2.0 * row, 1.0, float(row)] for row in body] for body in BODIES]
    assert recorded.threads["prepare"] == recorded.threads["finish"] == {loop_thread}
    assert len(recorded.threads["forward"]) == 1
    assert loop_thread not in recorded.threads["forward"]
    if batching is None:
        assert sorted(recorded.passes) == sorted([float(row) for row in body] for body in BODIES)
    elif not batching.bucket_rows:
        assert len(recorded.passes) == 1  # every request's prepared rows in one pass
        assert sorted(recorded.passes[0]) == [float(row) for row in range(1, 13)]
    else:  # each pass padded with its last prepared row again (the rows differ); its answers dropped
        assert all(len(one_pass) == 16 for one_pass in recorded.passes)
        real = [one_pass[: one_pass.index(one_pass[-1]) + 1] for one_pass in recorded.passes]
        assert sorted(row for one_pass in real for row in one_pass) == [float(row) for row in range(1, 13)]
        assert isinstance(rows.batcher, Batcher)
        assert rows.batcher.padded_rows == 16 * len(recorded.passes) - 12 > 0


async def test_a_hook_that_returns_the_wrong_number_of_items_is_a_500() -> None:
    recorded = Recorded()
    recorded.prepare = lambda rows: [torch.zeros(2)]  # type: ignore[method-assign]
    host, _ = recorded_host(recorded, None)
    async with LifespanDriver(host) as lifespan:
        result = await lifespan.request("POST", "/double", json=[1, 2])
    assert result.status == 500
    assert recorded.passes == []


async def test_the_prepare_and_finish_snippet_in_model_md_serves() -> None:
    namespace: dict[str, Any] = {"__name__": "model_md_rows_snippet"}
    block = python_block("docs/model.md", "## Work off the model's thread")
    exec(compile(block, "docs/model.md", "exec", dont_inherit=True), namespace)
    async with LifespanDriver(namespace["app"]) as lifespan:
        result = await lifespan.request("POST", "/score", json=["a cat", "the weather today"])
    assert result.status == 200, result.body
    scores = result.json()["scores"]
    assert [len(score) for score in scores] == [3, 3]
