"""Apps the real-server tests run (`hypercorn tests.apps:NAME`), with no model: nothing here
imports torch, so a server of one starts in well under a second (the model apps are in
tests/model_apps.py).

Resources append lines to the file named by ASGI_HOST_TEST_LOG, so a test can
see what happened inside the server process, shutdown included.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from asgi_host import Host, Request, Response, Route


def log(line: str) -> None:
    path = os.environ.get("ASGI_HOST_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@asynccontextmanager
async def database() -> AsyncIterator[dict[str, str]]:
    log("database up")
    yield {"db": "connected"}
    log("database down")


@asynccontextmanager
async def broken_model() -> AsyncIterator[None]:
    raise FileNotFoundError("weights.safetensors not found: run bench/train first")
    yield


async def show_state(request: Request) -> Response:
    return Response.json({"db": request.state["db"]})


ok_app = Host(resources=[database], routes=[Route("/state", show_state)])
failing_app = Host(resources=[database, broken_model], routes=[Route("/state", show_state)])


async def http_only_app(scope: dict[str, object], receive: object, send: object) -> None:
    """An app without lifespan support: it raises on any scope but http."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']!r}")


async def raises_after_startup_app(
    scope: dict[str, object], receive: Callable[[], Awaitable[object]], send: object
) -> None:
    """An app that receives `lifespan.startup` and then raises instead of answering it: a failed startup."""
    if scope["type"] == "lifespan":
        await receive()
        raise ConnectionRefusedError("cache at 127.0.0.1:6379 refused the connection")


# --- a stream whose source is busy between items, under a real server -------


async def busy_tokens(request: Request) -> AsyncIterator[dict[str, int]]:
    """`GET /tokens`: an item, then "work" for 30 s (a model between tokens) before the next. The
    log says when the source was cancelled, in wall-clock seconds."""

    async def tokens() -> AsyncIterator[dict[str, int]]:
        try:
            for n in range(1000):
                yield {"n": n}
                if n >= 1:
                    await anyio.sleep(30)  # busy: only a cancellation ends this early
                else:
                    await anyio.sleep(0.01)
        finally:
            log(f"source ended {time.time():.6f}")

    return tokens()


stream_app = Host(routes=[Route("/tokens", busy_tokens)])
