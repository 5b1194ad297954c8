"""The protocol test kit on apps nobody here wrote, and on broken apps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from fastapi import Request as FastAPIRequest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from asgi_host import AppTimeout, LifespanFailed, LifespanUnsupported, ProtocolViolation
from asgi_host._types import Receive, Scope, Send
from asgi_host.testing import (
    LifespanDriver,
    call,
    http_scope,
    lifespan_scope,
    request,
)

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    x: float


def fastapi_app(events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"factor": 3.0}
        events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.post("/times")
    async def times(item: Item, request: FastAPIRequest) -> dict[str, float]:
        factor: float = request.state.factor
        return {"y": item.x * factor}

    return app


async def test_fastapi_lifespan_state_and_validation() -> None:
    events: list[str] = []
    app = fastapi_app(events)
    async with LifespanDriver(app) as lifespan:
        assert events == ["startup"]
        assert lifespan.state == {"factor": 3.0}
        ok = await lifespan.request("POST", "/times", json={"x": 2})
        assert (ok.status, ok.json()) == (200, {"y": 6.0})
        bad = await lifespan.request("POST", "/times", json={"x": "two"})
        assert bad.status == 422
    assert events == ["startup", "shutdown"]
    assert [m["type"] for _, m in lifespan.transcript] == [
        "lifespan.startup",
        "lifespan.startup.complete",
        "lifespan.shutdown",
        "lifespan.shutdown.complete",
    ]


async def test_fastapi_startup_failure_is_reported_with_its_message() -> None:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("model file missing")
        yield

    with pytest.raises(LifespanFailed, match="model file missing") as raised:
        async with LifespanDriver(FastAPI(lifespan=lifespan)):
            pass
    assert raised.value.phase == "startup"


async def test_starlette_app_routes_and_shutdown() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, str]]:
        yield {"name": "starlette"}
        events.append("down")

    async def who(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"name": request.state.name})

    app = Starlette(routes=[StarletteRoute("/who", who)], lifespan=lifespan)
    async with LifespanDriver(app) as lifespan_driver:
        result = await lifespan_driver.request("GET", "/who")
    assert result.json() == {"name": "starlette"}
    assert events == ["down"]


async def test_app_that_raises_in_lifespan_is_reported_as_unsupported() -> None:
    async def http_only(scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http", "no lifespan here"

    with pytest.raises(LifespanUnsupported, match="AssertionError: no lifespan here") as raised:
        async with LifespanDriver(http_only):
            pass
    assert isinstance(raised.value.error, AssertionError)
    assert raised.value.transcript == []  # it never called receive()


async def test_app_that_raises_after_receiving_startup_has_failed_its_startup() -> None:
    # The one rule (asgi-lifespan's): only raising before the first receive() means "unsupported".
    async def refuses(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        raise ConnectionRefusedError("cache down")

    with pytest.raises(
        LifespanFailed,
        match=r"the app raised ConnectionRefusedError: cache down after receiving lifespan\.startup",
    ) as raised:
        async with LifespanDriver(refuses):
            pass
    assert raised.value.phase == "startup"
    assert raised.value.message == "ConnectionRefusedError: cache down"
    assert isinstance(raised.value.error, ConnectionRefusedError)
    assert raised.value.transcript == [("receive", {"type": "lifespan.startup"})]


async def test_app_that_raises_on_shutdown_has_failed_its_shutdown() -> None:
    async def flaky(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        raise OSError("flush failed")

    with pytest.raises(
        LifespanFailed, match=r"raised OSError: flush failed after receiving lifespan\.shutdown"
    ) as raised:
        async with LifespanDriver(flaky):
            pass
    assert raised.value.phase == "shutdown"
    assert isinstance(raised.value.error, OSError)


async def test_app_that_returns_without_answering_is_a_protocol_violation() -> None:
    async def silent(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    with pytest.raises(ProtocolViolation, match=r"the app returned without answering lifespan\.startup"):
        async with LifespanDriver(silent):
            pass


def test_lifespan_scope_is_what_the_driver_sends() -> None:
    state = {"kept": True}
    assert lifespan_scope(state=state) == {
        "type": "lifespan",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "state": {"kept": True},
    }
    assert lifespan_scope(state=state)["state"] is state  # the app fills in the caller's dict
    assert "state" not in lifespan_scope(with_state=False)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    assert LifespanDriver(app).scope == lifespan_scope()
    assert "state" not in LifespanDriver(app, with_state=False).scope


async def test_app_that_does_not_return_after_shutdown_is_caught() -> None:
    async def lingering(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        await anyio.sleep_forever()

    with pytest.raises(AppTimeout, match=r"did not return after answering lifespan\.shutdown"):
        async with LifespanDriver(lingering, shutdown_timeout_s=0.1):
            pass


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([{"type": "http.response.body", "body": b"x"}], "before 'http.response.start'"),
        (
            [
                {"type": "http.response.start", "status": 200, "headers": []},
                {"type": "http.response.start", "status": 200, "headers": []},
            ],
            "'http.response.start' twice",
        ),
        (
            [
                {"type": "http.response.start", "status": 200, "headers": []},
                {"type": "http.response.body", "body": b""},
                {"type": "http.response.body", "body": b""},
            ],
            "after its response was complete",
        ),
    ],
)
async def test_protocol_violations_are_caught(messages: list[dict[str, Any]], error: str) -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        for message in messages:
            await send(message)

    with pytest.raises(ProtocolViolation, match=error):
        await request(broken, "GET", "/")


async def test_receive_after_the_response_reports_disconnect() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        seen.append((await receive())["type"])

    transcript = await call(app, http_scope("GET", "/"), [{"type": "http.request", "body": b""}])
    assert seen == ["http.disconnect"]
    assert transcript[-1] == ("receive", {"type": "http.disconnect"})
