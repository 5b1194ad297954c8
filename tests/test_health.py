"""Liveness, readiness, serving while loading, and draining, at the protocol level."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from torch import nn

from asgi_host import Host, Mount, Request, Response, Route, StartupError
from asgi_host._types import Message
from asgi_host.model import Classifier, TorchModel
from asgi_host.testing import LifespanDriver, lifespan_scope, request
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP
from tests._wait import until

pytestmark = pytest.mark.anyio


def gated_resource(gate: anyio.Event, events: list[str], *, fail: bool = False) -> Any:
    @asynccontextmanager
    async def model(host: Host) -> AsyncIterator[dict[str, str]]:
        host.progress.report("reading weights", 0.5)
        events.append("loading")
        await gate.wait()
        if fail:
            raise FileNotFoundError("weights.safetensors")
        yield {"model": "ready"}
        events.append("released")

    return model


async def use_model(request: Request) -> Response:
    return Response.json({"model": request.state["model"]})


async def test_livez_always_answers_and_readyz_says_not_started() -> None:
    host = Host()
    live = await request(host, "GET", "/livez")
    assert (live.status, live.json()) == (200, {"status": "alive"})
    ready = await request(host, "GET", "/readyz")
    assert ready.status == 503
    assert ready.json()["status"] == "not started"
    assert "lifespan.startup" in ready.json()["reason"]
    assert (await request(host, "HEAD", "/readyz")).body == b""


async def test_readyz_reports_loading_with_progress_during_a_foreground_startup() -> None:
    gate, events = anyio.Event(), list[str]()
    host = Host(resources=[gated_resource(gate, events)], routes=[Route("/use", use_model)])
    sent: list[Message] = []
    shutdown = anyio.Event()

    async def receive() -> Message:
        if not sent:
            return {"type": "lifespan.startup"}
        await shutdown.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: Message) -> None:
        sent.append(message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(host, lifespan_scope(), receive, send)
        await until(lambda: events == ["loading"])
        live = await request(host, "GET", "/livez")
        loading = await request(host, "GET", "/readyz")
        gate.set()
        await until(lambda: sent)
        ready = await request(host, "GET", "/readyz")
        shutdown.set()
    assert live.status == 200
    assert loading.status == 503
    body = loading.json()
    assert body["status"] == "loading"
    assert body["stage"] == "model: reading weights"
    assert body["fraction"] == 0.5
    assert body["elapsed_s"] >= 0
    assert (ready.status, ready.json()) == (200, {"status": "ready"})


async def test_background_startup_serves_health_at_once_and_503s_until_ready() -> None:
    gate, events = anyio.Event(), list[str]()
    host = Host(
        resources=[gated_resource(gate, events)], routes=[Route("/use", use_model)], background_startup=True
    )
    async with LifespanDriver(host) as lifespan:
        # startup.complete came before the model loaded: the server can listen.
        await until(lambda: events == ["loading"])
        assert (await lifespan.request("GET", "/livez")).status == 200
        readyz = await lifespan.request("GET", "/readyz")
        assert (readyz.status, readyz.json()["status"]) == (503, "loading")
        busy = await lifespan.request("GET", "/use")
        assert busy.status == 503
        assert busy.header("retry-after") is not None
        assert "the model is loading (model: reading weights" in busy.json()["error"]["message"]
        gate.set()
        await until(lambda: host.readiness().status == "ready")
        used = await lifespan.request("GET", "/use")
        assert (used.status, used.json()) == (200, {"model": "ready"})
    assert events == ["loading", "released"]


async def test_background_failure_is_reported_and_predict_keeps_answering_503() -> None:
    gate, events = anyio.Event(), list[str]()
    failures: list[StartupError] = []
    host = Host(
        resources=[gated_resource(gate, events, fail=True)],
        routes=[Route("/use", use_model)],
        background_startup=True,
        on_background_failure=failures.append,
    )
    async with LifespanDriver(host) as lifespan:
        gate.set()
        await until(lambda: host.readiness().status == "failed")
        readyz = await lifespan.request("GET", "/readyz")
        use = await lifespan.request("GET", "/use")
    assert readyz.status == 503
    assert (
        readyz.json()["reason"] == "resource 'model' failed to start: FileNotFoundError: weights.safetensors"
    )
    assert use.status == 503
    assert use.json()["error"]["message"].startswith("the model failed to load: resource 'model'")
    assert [str(f) for f in failures] == [readyz.json()["reason"]]
    # Shutdown is still clean: the failed load left nothing to release.
    assert lifespan.transcript[-1] == ("send", {"type": "lifespan.shutdown.complete"})


async def test_shutdown_during_a_background_load_cancels_it() -> None:
    gate, events = anyio.Event(), list[str]()
    host = Host(resources=[gated_resource(gate, events)], background_startup=True)
    with anyio.fail_after(5):
        async with LifespanDriver(host) as lifespan:
            await until(lambda: events == ["loading"])
    assert lifespan.transcript[-1] == ("send", {"type": "lifespan.shutdown.complete"})
    assert events == ["loading"]  # never entered, so never released


async def test_background_torch_model_reports_its_stages_and_becomes_ready() -> None:
    proceed = threading.Event()

    def slow_build() -> nn.Module:
        proceed.wait(10)
        return IrisMLP()

    endpoint = Classifier(labels=LABELS, n_features=len(FEATURES)).endpoint
    host = Host(
        resources=[TorchModel(slow_build, WEIGHTS)],
        routes=[Route("/predict", endpoint, methods=["POST"])],
        background_startup=True,
    )
    try:
        async with LifespanDriver(host) as lifespan:
            await until(lambda: host.progress.stage is not None)  # the loading thread has begun
            loading = await lifespan.request("GET", "/readyz")
            proceed.set()
            await until(lambda: host.readiness().status == "ready")
            predicted = await lifespan.request("POST", "/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    finally:
        proceed.set()
    assert loading.json()["stage"] == "model: building the architecture"
    assert predicted.json()["labels"] == ["setosa"]


async def test_readyz_says_draining_while_requests_finish() -> None:
    release = anyio.Event()
    entered = anyio.Event()

    async def slow(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response.json("done")

    host = Host(routes=[Route("/slow", slow)])
    results: dict[str, Any] = {}
    async with LifespanDriver(host) as lifespan:

        async def in_flight() -> None:
            results["slow"] = await lifespan.request("GET", "/slow")

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_flight)
            await entered.wait()
            tg.start_soon(lifespan.shutdown)
            await until(lambda: host.readiness().status == "draining")
            results["readyz"] = await lifespan.request("GET", "/readyz")
            results["late"] = await lifespan.request("GET", "/slow")
            release.set()
    assert results["readyz"].status == 503
    assert results["readyz"].json() == {"status": "draining", "in_flight": 1}
    assert results["late"].status == 503
    assert results["late"].header("retry-after") == "1"
    assert results["slow"].json() == "done"


async def test_drain_timeout_bounds_the_wait() -> None:
    entered = anyio.Event()

    async def stuck(request: Request) -> Response:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    host = Host(routes=[Route("/stuck", stuck)], drain_timeout_s=0.1)
    with anyio.fail_after(5):
        async with LifespanDriver(host) as lifespan, anyio.create_task_group() as tg:
            tg.start_soon(lambda: lifespan.request("GET", "/stuck", timeout_s=10))
            await entered.wait()
            await lifespan.shutdown()
            tg.cancel_scope.cancel()
    assert lifespan.transcript[-1] == ("send", {"type": "lifespan.shutdown.complete"})


async def test_health_paths_are_configurable_and_never_collide() -> None:
    host = Host(livez_path="/healthz", readyz_path=None)
    assert (await request(host, "GET", "/healthz")).status == 200
    assert (await request(host, "GET", "/readyz")).status == 404
    with pytest.raises(ValueError, match="two routes for GET /livez"):
        Host(routes=[Route("/livez", use_model)])
    with pytest.raises(ValueError, match="probe path '/readyz' is under mount '/readyz'"):
        Host(routes=[Mount("/readyz", Host())])
    host = Host()
    with pytest.raises(ValueError, match="probe path '/livez' is under mount '/livez'"):
        host.mount("/livez", Host())
