"""The host mounted in other stacks, started by their lifespan with `host.lifespan()`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI

from asgi_host import Host, HTTPError, LifespanFailed, LifespanPhase, StartupError
from asgi_host.testing import LifespanDriver, free_port, server_command
from asgi_host.types import ASGIApp, Message, Receive, Scope, Send
from examples import embed_fastapi, embed_starlette
from examples.app import IrisConfig, make_app
from tests._server import run_server

ROW = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


@pytest.mark.anyio
@pytest.mark.parametrize("parent", [embed_fastapi, embed_starlette], ids=["fastapi", "starlette"])
async def test_parent_lifespan_starts_and_stops_the_mounted_host(parent: Any) -> None:
    async with LifespanDriver(parent.app) as lifespan:
        assert parent.host.phase is LifespanPhase.STARTED
        handle = parent.host.state["model"]
        predicted = await lifespan.request("POST", "/model/predict", json=ROW)
        ready = await lifespan.request("GET", "/model/readyz")
    assert predicted.json()["labels"] == ["setosa"]
    assert ready.json()["status"] == "ready"
    assert ready.json()["resources"]["model"]["execution"] == "inline"  # the Iris pass is that short
    assert parent.host.phase.value == LifespanPhase.STOPPED.value  # mypy narrowed the phase earlier
    with pytest.raises(HTTPError, match="released"):
        _ = handle.module


@pytest.mark.anyio
async def test_the_parent_can_yield_the_hosts_state_and_keeps_its_own_routes() -> None:
    async with LifespanDriver(embed_fastapi.app) as lifespan:
        hello = await lifespan.request("GET", "/hello")
        assert set(lifespan.state) == {"model"}  # yielded by the parent: its routes see it too
    assert hello.json()["hello"] == "from FastAPI"


@pytest.mark.anyio
async def test_a_parent_that_forgets_to_start_the_host_gets_a_503_that_says_how() -> None:
    host = make_app(IrisConfig(metrics=False))
    parent = FastAPI()
    parent.mount("/model", host)
    async with LifespanDriver(parent) as lifespan:
        result = await lifespan.request("POST", "/model/predict", json=ROW)
    assert result.status == 503
    assert "async with host.lifespan():" in result.json()["error"]["message"]


@pytest.mark.anyio
async def test_a_host_that_fails_to_start_fails_the_parents_startup(tmp_path: Path) -> None:
    host = make_app(IrisConfig(weights=str(tmp_path / "missing.safetensors"), metrics=False))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with host.lifespan():
            yield

    parent = FastAPI(lifespan=lifespan)
    parent.mount("/model", host)
    with pytest.raises(
        LifespanFailed, match="resource 'model' failed to start: ModelLoadError: weights file"
    ):
        async with LifespanDriver(parent):
            pass
    assert host.phase is LifespanPhase.FAILED


class GuardedHost(Host):
    """A host whose own check fails on the lifespan scope, before or after its first receive()."""

    def __init__(self, when: str) -> None:
        super().__init__()
        self.when = when

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.when == "before":
            raise RuntimeError("license check failed")

        async def checked_receive() -> Message:
            message = await receive()
            if scope["type"] == "lifespan" and self.when == "after":
                raise RuntimeError("license check failed")
            return message

        await super().__call__(scope, checked_receive, send)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("when", "message"),
    [
        (
            "before",
            r"^GuardedHost did not start: it raised RuntimeError: license check failed before its first",
        ),
        ("after", r"^it raised RuntimeError: license check failed without answering lifespan\.startup$"),
    ],
)
async def test_host_lifespan_fails_startup_when_the_host_raises_before_or_after_receiving(
    when: str, message: str
) -> None:
    # Before the first receive() the driver's rule says "unsupported", after it "startup failed":
    # either way a host that must start has not, so the parent's startup fails.
    host = GuardedHost(when)
    with pytest.raises(StartupError, match=message) as raised:
        async with host.lifespan():
            pytest.fail("the host started")
    if when == "before":
        assert isinstance(raised.value.__cause__, RuntimeError)
    assert host.phase is LifespanPhase.IDLE


@pytest.mark.anyio
async def test_lifespan_context_directly_and_no_double_start() -> None:
    host = make_app(IrisConfig(metrics=False))
    async with host.lifespan() as state:
        assert set(state) == {"model"}
        with pytest.raises(StartupError, match="in state 'started'"):
            async with host.lifespan():
                pass
    assert host.phase.value == LifespanPhase.STOPPED.value


@pytest.mark.server
def test_fastapi_parent_under_hypercorn(tmp_path: Path) -> None:
    port = free_port()
    with run_server(
        server_command("hypercorn", "examples.embed_fastapi:app", port), port, tmp_path
    ) as server:
        predicted = httpx.post(server.url + "/model/predict", json=ROW, timeout=10)
        hello = httpx.get(server.url + "/hello", timeout=10)
        exit_code = server.stop()
    assert predicted.json()["labels"] == ["setosa"]
    assert hello.status_code == 200
    assert exit_code == 0
    assert "model 'model' released" in server.output()


@pytest.mark.anyio
async def test_litestar_mounts_and_starts_the_host() -> None:
    from examples import embed_litestar

    async with LifespanDriver(cast(ASGIApp, embed_litestar.app)) as lifespan:
        assert embed_litestar.host.phase is LifespanPhase.STARTED
        predicted = await lifespan.request("POST", "/model/predict", json=ROW)  # /predict/ inside
        ready = await lifespan.request("GET", "/model/readyz")
        hello = await lifespan.request("GET", "/hello")
    assert predicted.status == 200, predicted.body
    assert predicted.json()["labels"] == ["setosa"]
    assert ready.json()["status"] == "ready"
    assert ready.json()["resources"]["model"]["execution"] == "inline"  # the Iris pass is that short
    assert hello.json() == {"hello": "from Litestar"}
    assert embed_litestar.host.phase.value == LifespanPhase.STOPPED.value  # mypy narrowed the phase earlier


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # Quart runs on asyncio only
async def test_quart_mounted_in_the_host_gets_its_lifespan(anyio_backend: str) -> None:
    from examples import embed_quart

    embed_quart.events.clear()
    async with LifespanDriver(embed_quart.app) as lifespan:
        assert embed_quart.events == ["quart started"]
        hello = await lifespan.request("GET", "/quart/hello")
        predicted = await lifespan.request("POST", "/predict", json=ROW)
    assert hello.json() == {"hello": "from Quart"}
    assert predicted.json()["labels"] == ["setosa"]
    assert embed_quart.events == ["quart started", "quart stopped"]
