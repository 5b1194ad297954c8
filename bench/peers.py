"""The apps asgi_host is measured against, serving the same Iris model.

- `fastapi_app`: written the way the FastAPI docs teach (a lifespan that loads
  the model into a dict, a pydantic request body, an async endpoint that calls
  the model), returning the same JSON as `POST /predict`.
- `bare_app`: a raw ASGI app that answers every request with a constant body:
  the floor, what any app costs before doing work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_host.model import TorchModel
from examples.iris import LABELS, WEIGHTS, IrisMLP

ml_models: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    ml_models["iris"] = TorchModel(IrisMLP, WEIGHTS, device="cpu").load()[0]
    yield
    ml_models.clear()


fastapi_app = FastAPI(lifespan=lifespan)


class PredictBody(BaseModel):
    inputs: list[list[float]]


@fastapi_app.post("/predict")
async def predict(body: PredictBody) -> dict[str, Any]:
    with torch.inference_mode():
        probabilities = torch.softmax(ml_models["iris"](torch.tensor(body.inputs)), dim=-1)
    return {
        "outputs": probabilities.tolist(),
        "labels": [LABELS[i] for i in probabilities.argmax(dim=-1).tolist()],
    }


_BARE_BODY = b'{"outputs":[[1.0,0.0,0.0]],"labels":["setosa"]}'
_BARE_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BARE_BODY)).encode())]


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": _BARE_HEADERS})
    await send({"type": "http.response.body", "body": _BARE_BODY})
