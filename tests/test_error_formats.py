"""One error path: every status a route answers is in that route's error format.

The host's own refusals (503 while loading, 405, 408, 413, a 500 for a bug) come before, or
instead of, the endpoint; they are answered in the shape of the route's protocol all the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import pytest
import torch
from torch import nn

from asgi_host import Host, HTTPError, Request, Response, Route
from asgi_host.kserve import KServe, TensorSpec, V2Model
from asgi_host.model import Classifier, TorchModel
from asgi_host.openai_embeddings import OpenAIEmbeddings
from asgi_host.testing import HTTPResult, LifespanDriver, call, http_scope, request
from tests._wait import until

pytestmark = pytest.mark.anyio

V2_INFER = "/v2/models/echo/infer"
EMBEDDINGS = "/v1/embeddings"
PREDICT = "/predict"


def v2_shape(result: HTTPResult) -> str:
    """KServe's error: `{"error": "<message>"}`."""
    body = result.json()
    assert list(body) == ["error"], result.body
    assert isinstance(body["error"], str), result.body
    message: str = body["error"]
    return message


def openai_shape(result: HTTPResult) -> str:
    """OpenAI's error object: message, type, param, code (param and code may be null)."""
    error = result.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, result.body
    assert error["type"] == (
        "server_error" if result.status and result.status >= 500 else "invalid_request_error"
    )
    message: str = error["message"]
    return message


def host_shape(result: HTTPResult) -> str:
    """The host's error JSON: status, type, message (and path)."""
    error = result.json()["error"]
    assert error["status"] == result.status, result.body
    assert {"status", "type", "message"} <= set(error), result.body
    message: str = error["message"]
    return message


SHAPES = {V2_INFER: v2_shape, EMBEDDINGS: openai_shape, PREDICT: host_shape}


class Gate:
    """A resource that holds startup until opened, so requests meet a host that is loading."""

    def __init__(self) -> None:
        self.opened = anyio.Event()

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        await self.opened.wait()
        yield


async def embed(texts: list[str], request: Request) -> tuple[list[list[float]], list[int]]:
    if texts == ["bug"]:
        raise ZeroDivisionError("a bug in embed")
    return [[1.0, 0.0] for _ in texts], [1 for _ in texts]


def echo_unless_seven(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if bool((x == 7).any()):
        raise ZeroDivisionError("a bug in fn")
    return x


def app(*, gate: Gate | None = None, **settings: Any) -> Host:
    echo = V2Model(
        name="echo",
        resource="model",
        inputs=[TensorSpec("x", "FP32", [-1, 4])],
        outputs=[TensorSpec("y", "FP32", [-1, 4])],
        fn=echo_unless_seven,
    )

    return Host(
        resources=[TorchModel(lambda: nn.Linear(4, 2), None, name="model"), *([gate] if gate else [])],
        routes=[
            KServe(echo),
            OpenAIEmbeddings(embed, model="m", dimensions=2),
            Classifier(labels=["a", "b"], n_features=4),
        ],
        background_startup=gate is not None,
        **settings,
    )


BODIES: dict[str, bytes] = {
    V2_INFER: msgspec.json.encode(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}
    ),
    EMBEDDINGS: msgspec.json.encode({"input": "hello", "model": "m"}),
    PREDICT: msgspec.json.encode({"inputs": [[1, 2, 3, 4]]}),
}


@pytest.mark.parametrize("path", SHAPES)
async def test_503_while_loading_is_in_the_routes_shape(path: str) -> None:
    gate = Gate()
    async with LifespanDriver(app(gate=gate)) as lifespan:
        result = await lifespan.request("POST", path, body=BODIES[path])
        assert result.status == 503
        assert result.header("retry-after") is not None
        assert "loading" in SHAPES[path](result)
        gate.opened.set()
        await until(lambda: app_ready(lifespan))
        served = await lifespan.request("POST", path, body=BODIES[path])
        assert served.status == 200, served.body


def app_ready(lifespan: LifespanDriver) -> bool:
    return "model" in lifespan.state


@pytest.mark.parametrize("path", SHAPES)
async def test_405_413_and_408_are_in_the_routes_shape(path: str) -> None:
    async with LifespanDriver(app(max_body_bytes=64, body_timeout_s=0.05)) as lifespan:
        wrong_method = await lifespan.request("GET", path)
        assert wrong_method.status == 405
        assert wrong_method.header("allow") == "POST"
        assert "not allowed" in SHAPES[path](wrong_method)

        too_large = await lifespan.request("POST", path, body=b"x" * 65)
        assert too_large.status == 413
        assert "max_body_bytes=64" in SHAPES[path](too_large)

        # A body that stops arriving: 2 bytes of a declared 20, then nothing.
        scope = http_scope("POST", path, headers=[("content-length", "20")], state=lifespan.state)
        stalled = HTTPResult.of(
            await call(lifespan.app, scope, [{"type": "http.request", "body": b"{}", "more_body": True}])
        )
        assert stalled.status == 408
        assert "body_timeout_s" in SHAPES[path](stalled)


async def test_a_bug_is_a_500_in_the_routes_shape_and_the_traceback_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with LifespanDriver(app()) as lifespan:
        v2 = msgspec.json.encode(
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [7] * 4}]}
        )
        bugs = {
            EMBEDDINGS: msgspec.json.encode({"input": "bug", "model": "m"}),
            V2_INFER: v2,
        }
        for path, body in bugs.items():
            result = await lifespan.request("POST", path, body=body)
            assert result.status == 500, result.body
            message = SHAPES[path](result)
            assert "traceback is in the server log" in message
            assert "ZeroDivisionError" not in message
            assert "bug" not in message
    assert "ZeroDivisionError: a bug in embed" in caplog.text
    assert "ZeroDivisionError: a bug in fn" in caplog.text


async def test_a_route_carries_its_error_format_and_other_routes_keep_the_hosts() -> None:
    def teapot(error: HTTPError) -> Response:
        return Response(
            f"{error.status}: {error.message}".encode(),
            status=error.status,
            media_type="text/plain",
            headers=error.headers,
        )

    async def brew(request: Request) -> Response:
        raise HTTPError(418, "short and stout")

    async def plain(request: Request) -> Response:
        raise HTTPError(409, "busy")

    host = Host(routes=[Route("/brew", brew, error_format=teapot), Route("/plain", plain)])
    brewed = await request(host, "GET", "/brew")
    assert (brewed.status, brewed.body, brewed.header("content-type")) == (
        418,
        b"418: short and stout",
        "text/plain",
    )
    refused = await request(host, "POST", "/brew")
    assert (refused.status, refused.header("allow")) == (405, "GET, HEAD")
    assert refused.body.startswith(b"405: method POST is not allowed")
    busy = await request(host, "GET", "/plain")
    assert busy.json() == {"error": {"status": 409, "type": "conflict", "message": "busy"}}
    unmatched = await request(host, "GET", "/elsewhere")
    assert unmatched.json()["error"]["type"] == "not_found"  # no route: the host's own shape
