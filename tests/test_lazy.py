"""Lazy start: no lifespan ever arrives, the first request starts the resources once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from asgi_host import Host, LifespanPhase, Request, Response, Route
from asgi_host.testing import HTTPResult, request
from tests._wait import until

pytestmark = pytest.mark.anyio


def gated(events: list[str], gate: anyio.Event, *, fail: bool = False) -> Any:
    @asynccontextmanager
    async def model() -> AsyncIterator[dict[str, str]]:
        events.append("up")
        await gate.wait()
        if fail:
            raise OSError("weights unreadable")
        yield {"model": "m"}
        events.append("down")

    return model


async def use(request: Request) -> Response:
    return Response.json(request.state["model"])


async def test_concurrent_first_requests_start_the_resources_exactly_once_and_wait() -> None:
    events: list[str] = []
    gate = anyio.Event()
    host = Host(resources=[gated(events, gate)], routes=[Route("/use", use)], lazy_start="wait")
    results: list[HTTPResult] = []

    async def one() -> None:
        results.append(await request(host, "GET", "/use"))

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
        await until(lambda: events == ["up"])
        gate.set()
    assert [(r.status, r.json()) for r in results] == [(200, "m")] * 5
    assert events == ["up"]
    assert host.phase is LifespanPhase.STARTED
    await host.aclose()
    assert events == ["up", "down"]
    assert host.phase.value == LifespanPhase.STOPPED.value  # mypy narrowed the phase earlier
    await host.aclose()  # idempotent


async def test_unavailable_mode_answers_503_while_loading() -> None:
    events: list[str] = []
    gate = anyio.Event()
    host = Host(resources=[gated(events, gate)], routes=[Route("/use", use)], lazy_start="unavailable")
    first = await request(host, "GET", "/use")
    assert first.status == 503
    assert first.header("retry-after") is not None
    await until(lambda: events == ["up"])
    assert (await request(host, "GET", "/readyz")).json()["status"] == "loading"
    gate.set()
    await until(lambda: host.readiness().status == "ready")
    assert (await request(host, "GET", "/use")).json() == "m"
    await host.aclose()
    assert events == ["up", "down"]


async def test_a_failing_lazy_start_is_reported_on_every_request() -> None:
    events: list[str] = []
    gate = anyio.Event()
    gate.set()
    host = Host(resources=[gated(events, gate, fail=True)], routes=[Route("/use", use)], lazy_start="wait")
    result = await request(host, "GET", "/use")
    assert result.status == 503
    assert (
        "resource 'model' failed to start: OSError: weights unreadable" in result.json()["error"]["message"]
    )
    again = await request(host, "GET", "/use")
    assert again.status == 503
    assert events == ["up"]  # not retried: one start, one failure
    await host.aclose()
