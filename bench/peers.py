"""The apps asgi_host is measured against, serving the same Iris model and the same answer.

- `floor_app`, **the work floor**: the least an app can do for the answer
  `POST /predict` gives. A raw ASGI callable that reads the body, msgspec-decodes
  `{"inputs": ...}`, runs the same IrisMLP under `torch.inference_mode()` on the
  event loop, applies softmax, picks the labels and msgspec-encodes
  `{"outputs", "labels"}`. No routing, no checks, no thread.
- `checked_floor_app`: the work floor plus what the host checks and adds for that answer, written
  as one function: a request id (`x-request-id`), the content type (415), a validated decode (422
  with the path; 400), the row limit (413), finite inputs and outputs (422), `x-model-version`,
  `vary`, an in-flight count and a request count and latency per status. What the host's answer
  costs without its layers (routing, `Request`, the endpoint and adapter classes, the error
  formats, readiness), to read the host's figure against.
- `fastapi_app`: written the way the FastAPI docs teach (a lifespan that fills a
  dict with the model, a pydantic request body, a sync `def` endpoint, which
  FastAPI runs in its thread pool), returning the same JSON.
- `litestar_app`: Litestar, msgspec-native, in its fastest idiomatic form (a lifespan that puts the
  model in `app.state`, msgspec Structs in and out, an `async` handler that runs the model inline,
  as the floor and the host's `execution="auto"` do; a sync handler with `sync_to_thread=True`,
  which its docs advise for blocking work, is ~2.4x slower in process), returning the same JSON.
  Its logging is left off (`logging_config=None`): Litestar's default would configure the root
  logger of every process that imports this module.
- `bare_app`: a raw ASGI app that answers every request with a constant body:
  what any app costs before doing work.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import torch
from fastapi import FastAPI
from litestar import Litestar, post
from litestar.datastructures import State
from pydantic import BaseModel

from asgi_host.model import TorchModel
from asgi_host.types import Receive, Scope, Send
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP


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


# ---- the work floor with the host's checks, in one function -------------------------------------

_Row = Annotated[list[float], msgspec.Meta(min_length=len(FEATURES), max_length=len(FEATURES))]


class _CheckedInputs(msgspec.Struct, forbid_unknown_fields=True):
    inputs: Annotated[list[_Row], msgspec.Meta(min_length=1)]


_checked_decoder = msgspec.json.Decoder(_CheckedInputs)
_CHECKED_HEADERS = [(b"content-type", b"application/json"), (b"vary", b"accept")]
_checked_ids = itertools.count(1)
_checked_counts: dict[int, list[float]] = {}  # status -> [requests, seconds]
_checked_in_flight = [0]


def _checked_error(status: int, message: str) -> tuple[int, bytes]:
    return status, _encoder.encode({"error": {"status": status, "message": message}})


async def checked_floor_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send, _floor_model)
        return
    started = time.perf_counter()
    request_id = b"%x" % next(_checked_ids)
    content_type = b"application/json"
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            request_id = value
        elif name == b"content-type":
            content_type = value
    _checked_in_flight[0] += 1
    status = 500
    try:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = list(_CHECKED_HEADERS)
        if content_type != b"application/json":
            status, payload = _checked_error(415, "send application/json")
        else:
            try:
                inputs = _checked_decoder.decode(body).inputs
            except msgspec.ValidationError as exc:
                status, payload = _checked_error(422, str(exc))
            except msgspec.DecodeError as exc:
                status, payload = _checked_error(400, str(exc))
            else:
                if len(inputs) > 1024:
                    status, payload = _checked_error(413, "more than 1024 rows")
                elif not math.isfinite(sum(map(sum, inputs))):
                    status, payload = _checked_error(422, "a number is not finite")
                else:
                    with torch.inference_mode():
                        outputs = torch.softmax(_floor_model[0](torch.tensor(inputs)), dim=-1).tolist()
                    if not math.isfinite(sum(map(sum, outputs))):
                        status, payload = _checked_error(422, "an output is not finite")
                    else:
                        labels = [LABELS[max(range(len(row)), key=row.__getitem__)] for row in outputs]
                        status, payload = 200, _encoder.encode(_Answer(outputs, labels))
                        headers.append((b"x-model-version", b"iris"))
        headers += [(b"content-length", b"%d" % len(payload)), (b"x-request-id", request_id)]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
    finally:
        _checked_in_flight[0] -= 1
        counted = _checked_counts.setdefault(status, [0, 0.0])
        counted[0] += 1
        counted[1] += time.perf_counter() - started


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


# ---- Litestar, in its fastest idiomatic form -----------------------------------------------------


@asynccontextmanager
async def litestar_lifespan(app: Litestar) -> AsyncIterator[None]:
    app.state.iris = load_iris()
    yield
    del app.state.iris


@post("/predict", status_code=200)  # Litestar answers a POST with 201 unless told
async def litestar_predict(data: _Inputs, state: State) -> _Answer:
    with torch.inference_mode():
        probabilities = torch.softmax(state.iris(torch.tensor(data.inputs)), dim=-1)
    return _Answer(probabilities.tolist(), [LABELS[i] for i in probabilities.argmax(dim=-1).tolist()])


litestar_app = Litestar(route_handlers=[litestar_predict], lifespan=[litestar_lifespan], logging_config=None)


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
