"""Opt-in lifespan propagation to mounted sub-apps, at the protocol level."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest

from asgi_host import Host, LifespanFailed, Mount, Request, Resource, Response, Route
from asgi_host._types import Receive, Scope, Send
from asgi_host.testing import LifespanDriver

pytestmark = pytest.mark.anyio


def sub_app(
    name: str,
    events: list[str],
    *,
    startup: str = "complete",
    shutdown: str = "complete",
    state: dict[str, Any] | None = None,
) -> Any:
    """A raw ASGI app whose lifespan behaves as told and whose HTTP side shows the state."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            if startup == "raise_before":
                raise RuntimeError("lifespan? never heard of it")
            message = await receive()
            events.append(f"{name} {message['type']}")
            if startup == "hang":
                await anyio.sleep_forever()
            if startup == "raise_after":
                raise RuntimeError("connection refused")
            if startup == "failed":
                await send({"type": "lifespan.startup.failed", "message": "database down"})
                return
            scope["state"].update(state or {})
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
            events.append(f"{name} {message['type']}")
            if shutdown == "failed":
                await send({"type": "lifespan.shutdown.failed", "message": f"{name} cache flush failed"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
            return
        await Response.json(sorted(scope.get("state", {}))).send(send)

    return app


def host_resource(events: list[str]) -> Resource:
    @asynccontextmanager
    async def model() -> AsyncIterator[dict[str, str]]:
        events.append("model up")
        yield {"model": "m"}
        events.append("model down")

    return Resource(model, name="model")


async def test_without_propagation_sub_apps_get_nothing() -> None:
    events: list[str] = []
    host = Host(resources=[host_resource(events)], routes=[Mount("/a", sub_app("a", events))])
    async with LifespanDriver(host):
        pass
    assert events == ["model up", "model down"]


async def test_sub_apps_start_after_the_host_in_mount_order_and_stop_before_it_in_reverse() -> None:
    events: list[str] = []
    host = Host(
        resources=[host_resource(events)],
        routes=[
            Mount("/a", sub_app("a", events), lifespan=True),
            Mount("/b", sub_app("b", events), lifespan=True),
        ],
    )
    async with LifespanDriver(host):
        assert events == ["model up", "a lifespan.startup", "b lifespan.startup"]
    assert events[3:] == ["b lifespan.shutdown", "a lifespan.shutdown", "model down"]


async def test_sub_apps_share_one_state_with_the_host_and_its_requests() -> None:
    events: list[str] = []
    host = Host(
        resources=[host_resource(events)],
        routes=[
            Mount("/a", sub_app("a", events, state={"a_cache": 1}), lifespan=True),
            Mount("/b", sub_app("b", events, state={"b_pool": 2}), lifespan=True),
        ],
    )
    for with_state in (True, False):
        async with LifespanDriver(host, with_state=with_state) as lifespan:
            seen = (await lifespan.request("GET", "/b/x")).json()
        assert seen == ["a_cache", "b_pool", "model"]


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (
            "failed",
            "resource 'mount /b' failed to start: SubAppLifespanError: it answered "
            "lifespan.startup.failed: database down",
        ),
        (
            "raise_after",
            "resource 'mount /b' failed to start: SubAppLifespanError: it raised "
            "RuntimeError: connection refused without answering lifespan.startup",
        ),
    ],
)
async def test_a_failing_sub_app_fails_startup_naming_the_mount_and_rolls_back(
    behaviour: str, message: str
) -> None:
    events: list[str] = []
    host = Host(
        resources=[host_resource(events)],
        routes=[
            Mount("/a", sub_app("a", events), lifespan=True),
            Mount("/b", sub_app("b", events, startup=behaviour), lifespan=True),
            Mount("/c", sub_app("c", events), lifespan=True),
        ],
    )
    with pytest.raises(LifespanFailed) as raised:
        async with LifespanDriver(host):
            pass
    assert raised.value.message == message
    assert events == [
        "model up",
        "a lifespan.startup",
        "b lifespan.startup",
        "a lifespan.shutdown",
        "model down",
    ]


async def test_a_sub_app_that_times_out_fails_startup_naming_the_mount() -> None:
    events: list[str] = []
    host = Host(
        resources=[host_resource(events)],
        routes=[Mount("/slow", sub_app("slow", events, startup="hang"), lifespan=True)],
        startup_timeout_s=0.2,
    )
    with pytest.raises(
        LifespanFailed, match=r"resource 'mount /slow' did not start within startup_timeout_s=0\.2"
    ):
        async with LifespanDriver(host):
            pass
    assert events == ["model up", "slow lifespan.startup", "model down"]


async def test_a_sub_app_without_lifespan_support_is_logged_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[str] = []
    host = Host(
        resources=[host_resource(events)],
        routes=[Mount("/old", sub_app("old", events, startup="raise_before"), lifespan=True)],
    )
    with caplog.at_level(logging.INFO, logger="asgi_host"):
        async with LifespanDriver(host) as lifespan:
            assert (await lifespan.request("GET", "/old/x")).status == 200
    assert events == ["model up", "model down"]
    assert "mount /old does not support lifespan" in caplog.text
    assert lifespan.transcript[-1] == ("send", {"type": "lifespan.shutdown.complete"})


async def test_sub_app_shutdown_failures_are_collected_and_everything_is_released() -> None:
    events: list[str] = []
    host = Host(
        resources=[host_resource(events)],
        routes=[
            Mount("/a", sub_app("a", events, shutdown="failed"), lifespan=True),
            Mount("/b", sub_app("b", events), lifespan=True),
            Mount("/c", sub_app("c", events, shutdown="failed"), lifespan=True),
        ],
    )
    with pytest.raises(LifespanFailed) as raised:
        async with LifespanDriver(host):
            pass
    assert raised.value.phase == "shutdown"
    assert raised.value.message == (
        "resource 'mount /c' failed to shut down: SubAppLifespanError: it answered lifespan.shutdown.failed: "
        "c cache flush failed; resource 'mount /a' failed to shut down: SubAppLifespanError: it answered "
        "lifespan.shutdown.failed: a cache flush failed"
    )
    assert events[-4:] == ["c lifespan.shutdown", "b lifespan.shutdown", "a lifespan.shutdown", "model down"]


async def test_mount_method_with_lifespan() -> None:
    events: list[str] = []
    host = Host(resources=[host_resource(events)])
    host.mount("/late", sub_app("late", events), lifespan=True)
    async with LifespanDriver(host):
        pass
    assert events == ["model up", "late lifespan.startup", "late lifespan.shutdown", "model down"]


def fastapi_sub_app(events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("fastapi startup")
        yield {"tokenizer": "loaded"}
        events.append("fastapi shutdown")

    api = FastAPI(lifespan=lifespan)

    @api.get("/items/{item_id}")
    async def item(item_id: int, request: FastAPIRequest) -> dict[str, Any]:
        return {
            "item_id": item_id,
            "root_path": request.scope["root_path"],
            "url": str(request.url_for("item", item_id=item_id)),
            "tokenizer": request.state.tokenizer,
            "model": request.state.model,
        }

    return api


async def test_a_fastapi_app_inside_the_host_with_routes_root_path_and_lifespan() -> None:
    events: list[str] = []

    async def own(request: Request) -> Response:
        return Response.json("host route")

    host = Host(
        resources=[host_resource(events)],
        routes=[Route("/own", own), Mount("/api", fastapi_sub_app(events), lifespan=True)],
    )
    async with LifespanDriver(host) as lifespan:
        item = await lifespan.request("GET", "/api/items/7")
        missing = await lifespan.request("GET", "/api/nope")
        own_route = await lifespan.request("GET", "/own")
        under_root = await lifespan.request("GET", "/api/items/8", root_path="/svc")
    assert item.json() == {
        "item_id": 7,
        "root_path": "/api",
        "url": "http://127.0.0.1:8000/api/items/7",
        "tokenizer": "loaded",
        "model": "m",
    }
    assert missing.status == 404
    assert own_route.json() == "host route"
    assert under_root.json()["url"] == "http://127.0.0.1:8000/svc/api/items/8"
    assert events == ["model up", "fastapi startup", "fastapi shutdown", "model down"]
