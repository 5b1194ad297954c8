"""The Iris host mounted under a Litestar app, started by Litestar's lifespan.

    hypercorn examples.embed_litestar:app
    curl -X POST localhost:8000/model/predict -H 'content-type: application/json' \\
         -d '{"inputs":[[5.1,3.5,1.4,0.2]]}'

Litestar mounts an ASGI app with `asgi(path, is_mount=True)` and passes it no
lifespan events; its `lifespan=` runs the host's with `host.lifespan()`. It
hands the mounted app the rest of the path with a trailing slash (`/predict/`),
which the host treats as `/predict`. Litestar is a dependency of this example only.
"""

from __future__ import annotations

from litestar import Litestar, asgi, get
from litestar.types import Receive, Scope, Send

from .app import IrisConfig, make_app

host = make_app(IrisConfig(metrics=False))


@asgi("/model", is_mount=True, copy_scope=True)
async def model(scope: Scope, receive: Receive, send: Send) -> None:
    await host(scope, receive, send)  # type: ignore[arg-type]


@get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "from Litestar"}


app = Litestar(route_handlers=[model, hello], lifespan=[lambda app: host.lifespan()])
