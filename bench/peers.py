"""The apps asgi_host is measured against, serving the same Iris model and the same answer.

- `floor_app`, **the work floor**: the least an app can do for the answer
  `POST /predict` gives. A raw ASGI callable that reads the body, msgspec-decodes
  `{"inputs": ...}`, runs the same IrisMLP under `torch.inference_mode()` on the
  event loop, applies softmax, picks the labels and msgspec-encodes
  `{"outputs", "labels"}`. No routing, no checks, no thread.
- `fastapi_app`: written the way the FastAPI docs teach (a lifespan that fills a
  dict with the model, a pydantic request body, a sync `def` endpoint, which
  FastAPI runs in its thread pool), returning the same JSON.
- `bare_app`: a raw ASGI app that answers every request with a constant body:
  what any app costs before doing work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import torch
from fastapi import FastAPI
from pydantic import BaseModel

from asgi_host.model import TorchModel
from examples.iris import LABELS, WEIGHTS, IrisMLP


def load_iris() -> torch.nn.Module:
    module: torch.nn.Module = TorchModel(IrisMLP, WEIGHTS, device="cpu").load()[0]
    return module


# ---- the work floor ----------------------------------------------------------------------------


class _Inputs(msgspec.Struct):
    inputs: list[list[float]]


class _Answer(msgspec.Struct):
    outputs: list[list[float]]
    labels: list[str]


_decoder = msgspec.json.Decoder(_Inputs)
_encoder = msgspec.json.Encoder()
_floor_model: list[torch.nn.Module] = []


async def _lifespan(receive: Any, send: Any, models: list[torch.nn.Module]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            models.append(load_iris())
            await send({"type": "lifespan.startup.complete"})
        else:
            models.clear()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, _floor_model)
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    inputs = _decoder.decode(body).inputs
    with torch.inference_mode():
        probabilities = torch.softmax(_floor_model[0](torch.tensor(inputs)), dim=-1)
    answer = _Answer(probabilities.tolist(), [LABELS[i] for i in probabilities.argmax(dim=-1).tolist()])
    payload = _encoder.encode(answer)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# ---- FastAPI, as its docs teach -------------------------------------------------------------------

ml_models: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    ml_models["iris"] = load_iris()
    yield
    ml_models.clear()


fastapi_app = FastAPI(lifespan=lifespan)


class PredictBody(BaseModel):
    inputs: list[list[float]]


@fastapi_app.post("/predict")
def predict(body: PredictBody) -> dict[str, Any]:
    with torch.inference_mode():
        probabilities = torch.softmax(ml_models["iris"](torch.tensor(body.inputs)), dim=-1)
    return {
        "outputs": probabilities.tolist(),
        "labels": [LABELS[i] for i in probabilities.argmax(dim=-1).tolist()],
    }


# ---- a constant ---------------------------------------------------------------------------------

_BARE_BODY = b'{"outputs":[[1.0,0.0,0.0]],"labels":["setosa"]}'
_BARE_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BARE_BODY)).encode())]


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, [])
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": _BARE_HEADERS})
    await send({"type": "http.response.body", "body": _BARE_BODY})
