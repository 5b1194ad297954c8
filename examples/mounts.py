"""Mounted sub-apps get no lifespan events, unless you ask: see for yourself.

    hypercorn examples.mounts:app
    curl localhost:8000/raw/lifespan          # {"lifespan_events":[]}
    curl localhost:8000/starlette/lifespan    # {"lifespan_events":[]}

    hypercorn examples.mounts:app_propagating
    curl localhost:8000/raw/lifespan          # {"lifespan_events":["lifespan.startup"]}
    curl localhost:8000/starlette/lifespan    # {"lifespan_events":["lifespan.startup"]}

`/raw` is a raw ASGI app that records every lifespan message it receives;
`/starlette` is a Starlette app whose own lifespan records startup and
shutdown (Starlette is a dependency of this example only). `app` mounts them
the default way: the host runs its own lifespan but does not forward it, like
Starlette and FastAPI, so both lists stay empty. `app_propagating` mounts them
with `lifespan=True`: they start after the host's resources and stop before
them. At shutdown the host's `report` resource prints what each saw, so the
claim holds for the whole life of the process. See docs/mounts.md.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from asgi_host import Host, Mount, Request, Response, Route
from asgi_host.types import ASGIApp, Receive, Scope, Send


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


def starlette_app() -> tuple[ASGIApp, list[str]]:
    """A Starlette app with a lifespan of its own, and the list it records that lifespan in."""
    from starlette.applications import Starlette
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import JSONResponse
    from starlette.routing import Route as StarletteRoute

    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("lifespan.startup")
        yield
        events.append("lifespan.shutdown")

    async def show(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"lifespan_events": events})

    return Starlette(routes=[StarletteRoute("/lifespan", show)], lifespan=lifespan), events


def build(*, propagate: bool) -> Host:
    raw = LifespanRecorder()
    starlette, starlette_events = starlette_app()

    @asynccontextmanager
    async def report(host: Host) -> AsyncIterator[None]:
        print("startup: host resources ready", file=sys.stderr, flush=True)
        yield
        # Runs last: with propagation the mounts have already shut down.
        print(f"shutdown: /raw saw lifespan events {raw.lifespan_events}", file=sys.stderr, flush=True)
        print(f"shutdown: /starlette saw lifespan events {starlette_events}", file=sys.stderr, flush=True)

    async def index(request: Request) -> Response:
        return Response.json({"mounts": ["/raw", "/starlette"], "propagating": propagate})

    return Host(
        resources=[report],
        routes=[
            Route("/", index),
            Mount("/raw", raw, lifespan=propagate),
            Mount("/starlette", starlette, lifespan=propagate),
        ],
    )


app = build(propagate=False)
app_propagating = build(propagate=True)
