"""Apps the real-server tests run (`hypercorn tests.apps:NAME`).

Resources append lines to the file named by ASGI_HOST_TEST_LOG, so a test can
see what happened inside the server process, shutdown included.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_host import Host, Request, Response, Route


def _log(line: str) -> None:
    path = os.environ.get("ASGI_HOST_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@asynccontextmanager
async def database() -> AsyncIterator[dict[str, str]]:
    _log("database up")
    yield {"db": "connected"}
    _log("database down")


@asynccontextmanager
async def broken_model() -> AsyncIterator[None]:
    raise FileNotFoundError("weights.safetensors not found: run bench/train first")
    yield


async def show_state(request: Request) -> Response:
    return Response.json({"db": request.state["db"]})


ok_app = Host(resources=[database], routes=[Route("/state", show_state)])
failing_app = Host(resources=[database, broken_model], routes=[Route("/state", show_state)])
