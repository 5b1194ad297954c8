"""Mounted sub-apps get no lifespan events: see for yourself.

    hypercorn examples.mounts:app
    curl localhost:8000/raw/lifespan        # {"lifespan_events":[]}

`/raw` is a raw ASGI app that records every lifespan message it receives. The
host runs its own lifespan (startup and shutdown of its resources) but does not
forward it to mounts, exactly like Starlette and FastAPI, so the list stays
empty. At shutdown the host's `report` resource prints what `/raw` saw, so the
claim holds for the whole life of the process, not just while it serves.
See docs/mounts.md for why, and for running a sub-app's lifespan on purpose.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_host import Host, Mount, Request, Response, Route
from asgi_host._types import Receive, Scope, Send


class LifespanRecorder:
    """A raw ASGI sub-app: records lifespan messages, serves them at `GET <mount>/lifespan`."""

    def __init__(self) -> None:
        self.lifespan_events: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan_events.append(message["type"])
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path = scope["path"][len(scope["root_path"]) :]
        if path == "/lifespan" and scope["method"] in ("GET", "HEAD"):
            response = Response.json({"lifespan_events": self.lifespan_events})
        else:
            response = Response.json({"error": "not found"}, status=404)
        await response.send(send, head=scope["method"] == "HEAD")


raw = LifespanRecorder()


@asynccontextmanager
async def report(host: Host) -> AsyncIterator[None]:
    print("startup: host resources ready", file=sys.stderr, flush=True)
    yield
    print(f"shutdown: /raw saw lifespan events {raw.lifespan_events}", file=sys.stderr, flush=True)


async def index(request: Request) -> Response:
    return Response.json({"mounts": ["/raw"], "try": "GET /raw/lifespan"})


app = Host(resources=[report], routes=[Route("/", index), Mount("/raw", raw)])
