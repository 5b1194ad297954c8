"""The Iris host mounted under a FastAPI app, started by FastAPI's lifespan.

    hypercorn examples.embed_fastapi:app
    curl -X POST localhost:8000/model/predict -H 'content-type: application/json' \\
         -d '{"inputs":[[5.1,3.5,1.4,0.2]]}'
    curl localhost:8000/hello

FastAPI never passes lifespan events to mounted apps, so the parent's lifespan
runs the host's with `host.lifespan()`: the model loads before FastAPI answers
`startup.complete`, and is released when FastAPI shuts down. FastAPI is a
dependency of this example only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from .app import IrisConfig, make_app

host = make_app(IrisConfig(metrics=False))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    async with host.lifespan() as state:
        yield state  # FastAPI's own routes see the host's state (request.state.model) too


app = FastAPI(lifespan=lifespan)
app.mount("/model", host)


@app.get("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "from FastAPI", "model": "POST /model/predict"}
