"""Micro-batching at the protocol level: coalescing, backpressure, timeouts, failures, drain."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
import torch

from asgi_host import Batcher, Batching, Host, HTTPError, Request, Resource, Response, Route
from asgi_host.model import Classifier, TorchModel
from asgi_host.testing import HTTPResult, LifespanDriver
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP, load_dataset
from tests._wait import until

pytestmark = pytest.mark.anyio


class Recorder:
    """A batch function that doubles numbers, records each batch, and can be held shut."""

    def __init__(self, fail_on: int | None = None, *, held: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = anyio.Event()  # held: batches wait until the test sets it
        if not held:
            self.gate.set()
        self.entered = anyio.Event()
        self.fail_on = fail_on

    async def __call__(self, state: Mapping[str, Any], rows: list[int]) -> Sequence[int]:
        self.batches.append(list(rows))
        self.entered.set()
        await self.gate.wait()
        if self.fail_on is not None and self.fail_on in rows:
            raise RuntimeError("kernel exploded")
        return [2 * r for r in rows]


def doubling_host(recorder: Recorder, settings: Batching) -> tuple[Host, Batcher[int, int]]:
    batcher: Batcher[int, int] = Batcher(recorder, settings)

    async def double(request: Request) -> Response:
        rows = msgspec.json.decode(await request.body(), type=list[int])
        return Response.json(await batcher.submit(rows, request))

    return Host(resources=[batcher], routes=[Route("/double", double, methods=["POST"])]), batcher


async def post_all(lifespan: LifespanDriver, bodies: list[list[int]], **kwargs: Any) -> list[HTTPResult]:
    results: list[HTTPResult | None] = [None] * len(bodies)

    async def one(i: int) -> None:
        results[i] = await lifespan.request("POST", "/double", json=bodies[i], **kwargs)

    async with anyio.create_task_group() as tg:
        for i in range(len(bodies)):
            tg.start_soon(one, i)
    return [r for r in results if r is not None]


async def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    recorder = Recorder()
    host, batcher = doubling_host(recorder, Batching(max_batch_rows=64, max_wait_s=0.05))
    bodies = [[i, 100 + i] for i in range(16)]
    async with LifespanDriver(host) as lifespan:
        results = await post_all(lifespan, bodies)
    assert [r.json() for r in results] == [[2 * a, 2 * b] for a, b in bodies]
    assert len(recorder.batches) < len(bodies)
    assert sorted(row for batch in recorder.batches for row in batch) == sorted(r for b in bodies for r in b)
    assert batcher.batches == len(recorder.batches)


async def test_max_batch_rows_splits_batches_and_an_oversized_request_runs_alone() -> None:
    recorder = Recorder(held=True)
    host, _ = doubling_host(recorder, Batching(max_batch_rows=4, max_wait_s=0.0))
    async with LifespanDriver(host) as lifespan:
        results: list[HTTPResult] = []

        async def blocked_first() -> None:
            results.append(await lifespan.request("POST", "/double", json=[0]))

        async with anyio.create_task_group() as tg:
            tg.start_soon(blocked_first)
            await recorder.entered.wait()  # the first batch holds the model; the rest queue up
            queued = 0
            for body in ([1, 2], [3, 4], [5, 6, 7, 8, 9, 10]):
                # One at a time, so the queue order is fixed (trio randomises task order).
                tg.start_soon(_post_into, lifespan, body, results)
                queued += len(body)
                await wait_queued(host, queued)
            recorder.gate.set()
    assert recorder.batches[0] == [0]
    assert [1, 2, 3, 4] in recorder.batches  # two requests, four rows: one batch
    assert [5, 6, 7, 8, 9, 10] in recorder.batches  # six rows > max_batch_rows: alone
    assert sorted(tuple(r.json()) for r in results) == sorted(
        [(0,), (2, 4), (6, 8), (10, 12, 14, 16, 18, 20)]
    )


async def test_passes_are_padded_to_the_next_bucket_and_the_padding_is_dropped() -> None:
    recorder = Recorder(held=True)
    settings = Batching(max_batch_rows=8, bucket_rows="powers-of-two")
    host, batcher = doubling_host(recorder, settings)
    async with LifespanDriver(host) as lifespan:
        results: list[HTTPResult] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_post_into, lifespan, [1], results)
            await recorder.entered.wait()  # the first pass (one row) holds the model
            queued = 0
            for body in ([2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12, 13]):
                tg.start_soon(_post_into, lifespan, body, results)
                queued += len(body)
                await wait_queued(host, queued)
            recorder.gate.set()
    assert recorder.batches == [
        [1],  # 1 row: a size of its own
        [2, 3, 4, 4],  # 3 rows padded to 4 with the last row again
        [5, 6, 7, 8, 9, 10, 11, 12, 13],  # more than max_batch_rows: alone, as it is
    ]
    assert sorted(tuple(r.json()) for r in results) == sorted(
        [(2,), (4, 6), (8,), (10, 12, 14, 16, 18, 20, 22, 24, 26)]
    )
    assert (batcher.padded_rows, batcher.batched_rows) == (1, 13)  # metrics count the real rows


def test_bucket_sizes() -> None:
    assert Batching(max_batch_rows=6, bucket_rows="powers-of-two").pass_sizes() == (1, 2, 4, 6)
    declared = Batching(max_batch_rows=64, bucket_rows=(8, 32))
    assert declared.pass_sizes() == (8, 32, 64)
    assert [declared.padded(n) for n in (1, 8, 9, 33, 64, 65)] == [8, 8, 32, 64, 64, 65]
    assert Batching().pass_sizes() == ()
    with pytest.raises((ValueError, msgspec.ValidationError), match="go past max_batch_rows=8"):
        Batching(max_batch_rows=8, bucket_rows=(16,))
    assert msgspec.json.decode(b'{"bucket_rows": "powers-of-two"}', type=Batching).pass_sizes()[-1] == 64


@pytest.mark.one_loop
@pytest.mark.server  # inductor compiles in worker processes
async def test_a_model_compiled_per_shape_warmed_at_the_buckets_never_compiles_on_a_request() -> None:
    from torch._dynamo.utils import counters

    settings = Batching(max_batch_rows=8, bucket_rows="powers-of-two")
    model = TorchModel(
        IrisMLP,
        WEIGHTS,
        device="cpu",
        warmup=torch.zeros(1, 4),
        warmup_batch_sizes=settings.pass_sizes(),
        compile={"dynamic": False},  # a graph per shape, as CUDA graphs record one per shape
    )
    endpoint = Classifier(labels=LABELS, n_features=4, batching=settings).endpoint
    host = Host(
        resources=[model], routes=[Route("/predict", endpoint, methods=["POST"])], startup_timeout_s=300
    )
    inputs, _ = load_dataset()
    async with LifespanDriver(host, startup_timeout_s=300) as lifespan:
        compiles = counters["frames"]["total"]
        for rows in (1, 3, 5, 7, 2, 8):
            result = await lifespan.request("POST", "/predict", json={"inputs": inputs[:rows]})
            assert result.status == 200
            assert len(result.json()["outputs"]) == rows
        assert counters["frames"]["total"] == compiles  # 3, 5 and 7 rows ran padded to 4 and 8


def batcher_queue_rows(host: Host) -> int:
    batcher = next(r for r in host.resources if isinstance(r, Batcher))
    return batcher.queued_rows


async def wait_queued(host: Host, rows: int) -> None:
    await until(lambda: batcher_queue_rows(host) >= rows)


async def _post_into(lifespan: LifespanDriver, body: list[int], results: list[HTTPResult]) -> None:
    results.append(await lifespan.request("POST", "/double", json=body))


async def test_full_queue_is_503_with_a_computed_retry_after() -> None:
    recorder = Recorder(held=True)
    host, batcher = doubling_host(recorder, Batching(max_batch_rows=2, max_wait_s=0.0, max_queue_rows=4))
    async with LifespanDriver(host) as lifespan:
        results: list[HTTPResult] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_post_into, lifespan, [1], results)
            await recorder.entered.wait()
            tg.start_soon(_post_into, lifespan, [2, 3], results)
            tg.start_soon(_post_into, lifespan, [4, 5], results)
            await until(lambda: batcher.queued_rows >= 4)
            refused = await lifespan.request("POST", "/double", json=[6])
            recorder.gate.set()
    assert refused.status == 503
    assert "max_queue_rows=4" in refused.json()["error"]["message"]
    retry_after = refused.header("retry-after")
    assert retry_after is not None
    assert int(retry_after) >= 1
    assert sorted(r.status or 0 for r in results) == [200, 200, 200]


async def test_client_that_disconnects_while_queued_is_dropped_from_the_batch() -> None:
    recorder = Recorder(held=True)
    host, _ = doubling_host(recorder, Batching(max_batch_rows=8, max_wait_s=0.0))
    async with LifespanDriver(host) as lifespan:
        results: list[HTTPResult] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_post_into, lifespan, [1], results)
            await recorder.entered.wait()
            gone = await lifespan.request("POST", "/double", json=[99], then_disconnect=True)
            assert batcher_queue_rows(host) == 0  # its row stopped counting at once
            tg.start_soon(_post_into, lifespan, [2], results)
            await wait_queued(host, 1)
            recorder.gate.set()
    assert gone.status is None  # nobody to answer
    assert recorder.batches == [[1], [2]]  # 99 never reached the model
    assert sorted(r.json() for r in results) == [[2], [4]]


async def test_rows_of_clients_that_left_stop_counting_at_once() -> None:
    # 4,096 rows of clients that left filled the queue while one pass ran: the next client got 503.
    recorder = Recorder(held=True)
    host, batcher = doubling_host(recorder, Batching(max_batch_rows=64, max_wait_s=0.0, max_queue_rows=4096))
    async with LifespanDriver(host) as lifespan:
        results: list[HTTPResult] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_post_into, lifespan, [1], results)
            await recorder.entered.wait()
            gone = [
                await lifespan.request("POST", "/double", json=[99] * 32, then_disconnect=True)
                for _ in range(128)
            ]
            assert batcher.queued_rows == 0
            tg.start_soon(_post_into, lifespan, [2, 3], results)
            await wait_queued(host, 2)
            recorder.gate.set()
    assert {r.status for r in gone} == {None}
    assert sorted(r.json() for r in results) == [[2], [4, 6]]
    assert recorder.batches == [[1], [2, 3]]  # their rows never reached the model


async def test_retry_after_counts_the_pass_running_now() -> None:
    # Before any pass had finished, Retry-After was 1 whatever the pass took (1 against a 5 s pass).
    recorder = Recorder(held=True)
    host, batcher = doubling_host(recorder, Batching(max_batch_rows=2, max_wait_s=0.0, max_queue_rows=4))
    async with LifespanDriver(host) as lifespan:
        results: list[HTTPResult] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_post_into, lifespan, [1], results)
            await recorder.entered.wait()
            for body in ([2, 3], [4, 5]):
                tg.start_soon(_post_into, lifespan, body, results)
            await until(lambda: batcher.queued_rows == 4)
            await anyio.sleep(1.1)  # the pass has run this long at least: so will each of the next two
            refused = await lifespan.request("POST", "/double", json=[6])
            recorder.gate.set()
    assert refused.status == 503
    assert int(refused.header("retry-after") or 0) >= 3  # two passes ahead, each >= 1.1 s
    assert sorted(r.status or 0 for r in results) == [200, 200, 200]


async def test_request_timeout_is_504() -> None:
    """A request queued behind a pass that does not end gets 504 at timeout_s; the request whose
    pass it is (it found the model idle: a lone pass) waits for it, as an unbatched request does."""
    recorder = Recorder(held=True)
    host, _ = doubling_host(recorder, Batching(max_wait_s=0.0, timeout_s=0.1))
    async with LifespanDriver(host) as lifespan, anyio.create_task_group() as tg:
        first: list[HTTPResult] = []

        async def running() -> None:
            first.append(await lifespan.request("POST", "/double", json=[1]))

        tg.start_soon(running)
        await recorder.entered.wait()
        queued = await lifespan.request("POST", "/double", json=[2])
        recorder.gate.set()
    assert queued.status == 504
    assert queued.json()["error"]["message"].startswith("no answer within timeout_s=0.1")
    assert (first[0].status, first[0].json()) == (200, [2])
    assert recorder.batches == [[1]]  # the queued request's rows were dropped, never run


async def test_a_lone_request_runs_its_pass_in_its_own_task() -> None:
    """Nobody queued and the loop idle: the request's own task runs the pass (no hop to the
    loop's task, no Event); requests that arrive meanwhile are batched by the loop after it."""
    tasks: list[object] = []
    gate = anyio.Event()
    entered = anyio.Event()

    async def double(state: Mapping[str, Any], rows: list[int]) -> Sequence[int]:
        tasks.append(anyio.get_current_task().id)
        if rows == [1]:
            entered.set()
            await gate.wait()
        return [2 * r for r in rows]

    batcher: Batcher[int, int] = Batcher(double, Batching(max_wait_s=0.0))
    answers: dict[int, list[int]] = {}
    callers: dict[int, int] = {}

    async def submit(n: int) -> None:
        callers[n] = anyio.get_current_task().id
        answers[n] = await batcher.submit([n])

    async with LifespanDriver(Host(resources=[batcher])), anyio.create_task_group() as tg:
        tg.start_soon(submit, 1)
        await entered.wait()  # the lone pass runs; two more requests arrive meanwhile
        tg.start_soon(submit, 2)
        tg.start_soon(submit, 3)
        await until(lambda: batcher.queued_rows == 2)
        assert len(tasks) == 1  # the loop started no pass while the lone one ran
        gate.set()
    assert answers == {1: [2], 2: [4], 3: [6]}
    assert tasks[0] == callers[1]  # the lone pass ran in its request's task
    assert len(tasks) == 2
    assert tasks[1] not in (callers[2], callers[3])  # the loop's task ran 2 and 3 in one pass
    assert batcher.batches == 2
    assert batcher.batched_rows == 3


async def test_with_max_wait_a_lone_request_still_waits_for_company() -> None:
    tasks: list[object] = []

    async def double(state: Mapping[str, Any], rows: list[int]) -> Sequence[int]:
        tasks.append(anyio.get_current_task().id)
        return [2 * r for r in rows]

    batcher: Batcher[int, int] = Batcher(double, Batching(max_wait_s=0.05))
    async with LifespanDriver(Host(resources=[batcher])), anyio.create_task_group() as tg:
        for n in (1, 2):
            tg.start_soon(batcher.submit, [n])
    assert len(tasks) == 1  # one pass, both requests in it
    assert batcher.batched_rows == 2


async def test_a_failing_batch_fails_only_its_requests_and_the_batcher_goes_on() -> None:
    recorder = Recorder(fail_on=13)
    host, _ = doubling_host(recorder, Batching(max_wait_s=0.0))
    async with LifespanDriver(host) as lifespan:
        failed = await lifespan.request("POST", "/double", json=[13])
        ok = await lifespan.request("POST", "/double", json=[1])
    assert failed.status == 500
    assert b"kernel exploded" not in failed.body
    assert (ok.status, ok.json()) == (200, [2])


async def test_shutdown_finishes_admitted_work_then_refuses_and_leaves_no_task() -> None:
    recorder = Recorder(held=True)
    host, batcher = doubling_host(recorder, Batching(max_batch_rows=1, max_wait_s=0.0, drain_timeout_s=5))
    async with LifespanDriver(host) as lifespan:
        results: list[HTTPResult] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_post_into, lifespan, [1], results)
            await recorder.entered.wait()
            tg.start_soon(_post_into, lifespan, [2], results)
            await until(lambda: batcher.queued_rows >= 1)
            tg.start_soon(lifespan.shutdown)
            await until(lambda: host.readiness().status == "draining")
            late = await lifespan.request("POST", "/double", json=[3])
            assert not batcher.closing  # the host drains its requests before the batcher stops
            recorder.gate.set()
    assert batcher.closing
    assert late.status == 503
    assert late.json()["error"]["message"] == "the server is shutting down"
    assert sorted(r.json() for r in results) == [[2], [4]]
    assert recorder.batches == [[1], [2]]


def test_batching_settings_are_checked() -> None:
    with pytest.raises(msgspec.ValidationError, match="Expected `int` >= 1"):
        Batching(max_batch_rows=0)
    with pytest.raises(TypeError, match="Unexpected keyword argument 'max_wait'"):
        Batching(max_wait=1)  # type: ignore[call-arg]


async def test_iris_batched_matches_unbatched_with_fewer_forward_passes() -> None:
    inputs, _ = load_dataset()

    def host(batching: Batching | None) -> Host:
        endpoint = Classifier(labels=LABELS, n_features=len(FEATURES), batching=batching).endpoint
        return Host(
            resources=[TorchModel(IrisMLP, WEIGHTS)], routes=[Route("/predict", endpoint, methods=["POST"])]
        )

    outputs: dict[str, list[Any]] = {}
    passes: dict[str, int] = {}
    for mode, batching in (("off", None), ("on", Batching(max_batch_rows=64, max_wait_s=0.05))):
        async with LifespanDriver(host(batching)) as lifespan:
            at_start = lifespan.state["model"].forward_passes  # the endpoint's output check ran one
            answers: list[Any] = [None] * 32

            async def one(i: int, lifespan: LifespanDriver = lifespan, answers: list[Any] = answers) -> None:
                result = await lifespan.request("POST", "/predict", json={"inputs": [inputs[i * 4]]})
                answers[i] = result.json()

            async with anyio.create_task_group() as tg:
                for i in range(32):
                    tg.start_soon(one, i)
            outputs[mode] = answers
            passes[mode] = lifespan.state["model"].forward_passes - at_start
    assert passes["off"] == 32
    assert passes["on"] < 32
    for off, on in zip(outputs["off"], outputs["on"], strict=True):
        assert on["labels"] == off["labels"]
        assert len(on["outputs"]) == 1
        assert on["outputs"][0] == pytest.approx(off["outputs"][0], abs=1e-6)


async def test_a_batched_endpoint_added_with_host_route_starts_its_batcher() -> None:
    # Before: only routes= endpoints had their resources started, so this answered 503 every time.
    host = Host(resources=[TorchModel(IrisMLP, WEIGHTS)])
    endpoint = Classifier(labels=LABELS, n_features=len(FEATURES), batching=Batching()).endpoint
    host.route("/predict", methods=["POST"])(endpoint)
    assert [r.name for r in host.resources] == ["model", "model output check", "model batcher"]
    async with LifespanDriver(host) as lifespan:
        result = await lifespan.request("POST", "/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
        assert result.status == 200, result.body
        assert result.json()["labels"] == ["setosa"]
        with pytest.raises(RuntimeError, match="add it before the host starts"):
            host.route("/late", methods=["POST"])(
                Classifier(labels=LABELS, n_features=len(FEATURES), batching=Batching()).endpoint
            )


async def test_a_shutdown_past_the_drain_timeout_lets_the_model_go_only_after_the_lone_pass() -> None:
    """A lone pass that does not stop when cancelled (a pass on the model's thread, waited out) holds
    the shutdown until it ends, as a pass of the loop's does: the model is never released under it."""
    events: list[str] = []
    entered = anyio.Event()

    async def uncancellable(state: Mapping[str, Any], rows: list[int]) -> Sequence[int]:
        entered.set()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.3)
        events.append("pass ended")
        return rows

    class Model(Resource):
        def __init__(self) -> None:
            super().__init__(self._lifespan, name="model")

        @asynccontextmanager
        async def _lifespan(self, host: Any) -> AsyncIterator[None]:
            yield
            events.append("model released")

    batcher: Batcher[int, int] = Batcher(uncancellable, Batching(drain_timeout_s=0.05))
    answers: list[object] = []

    async def submit() -> None:
        try:
            answers.append(await batcher.submit([1]))
        except HTTPError as exc:
            answers.append(exc.status)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            driver = LifespanDriver(Host(resources=[Model(), batcher]))
            await driver.__aenter__()
            tg.start_soon(submit)
            await entered.wait()
            await driver.__aexit__(None, None, None)
    assert events == ["pass ended", "model released"]
    assert answers == [[1]]  # the pass ended, so its answer is given, not thrown away for a 503
