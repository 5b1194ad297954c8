"""The Iris host mounted under a Starlette app, started by Starlette's lifespan.

    hypercorn examples.embed_starlette:app
    curl -X POST localhost:8000/model/predict -H 'content-type: application/json' \\
         -d '{"inputs":[[5.1,3.5,1.4,0.2]]}'

Starlette never passes lifespan events to mounted apps; the parent's lifespan
runs the host's with `host.lifespan()`. Starlette is a dependency of this
example only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.routing import Mount

from .app import IrisConfig, make_app

host = make_app(IrisConfig(metrics=False))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with host.lifespan():
        yield


app = Starlette(routes=[Mount("/model", app=host)], lifespan=lifespan)
