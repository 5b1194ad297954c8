"""The default model server: Fisher's Iris classifier behind `POST /predict`.

    hypercorn examples.app:app
    curl -X POST localhost:8000/predict -H 'content-type: application/json' \\
         -d '{"inputs":[[5.1,3.5,1.4,0.2]]}'

The model loads before hypercorn accepts connections and is released (CUDA
memory included) after the last request. Environment variables, read once at
import: `IRIS_WEIGHTS` (weights file), `IRIS_DEVICE` (`auto`, `cpu`,
`cuda:0`, ...), `IRIS_MAX_ROWS` (rows per request).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from asgi_host import Host, Request, Response, Route
from asgi_host.model import TorchModel, classifier_endpoint

from .iris import FEATURES, LABELS, WEIGHTS, IrisMLP

# hypercorn configures only its own loggers; show the model's load and release lines.
_log = logging.getLogger("asgi_host")
if not _log.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(
        logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s")
    )
    _log.addHandler(_handler)
    _log.setLevel(logging.INFO)


async def index(request: Request) -> Response:
    return Response.json(
        {
            "model": "iris-mlp",
            "predict": "POST /predict {'inputs': [[" + ", ".join(FEATURES) + "], ...]}",
            "labels": list(LABELS),
        }
    )


def make_app(
    weights: str | os.PathLike[str] = WEIGHTS,
    *,
    device: str = "auto",
    max_rows: int = 1024,
) -> Host:
    model = TorchModel(
        IrisMLP,
        Path(weights),
        name="model",
        device=device,
        warmup=torch.zeros(1, len(FEATURES)),
    )
    predict = classifier_endpoint(labels=LABELS, n_features=len(FEATURES), model="model", max_rows=max_rows)
    return Host(
        resources=[model],
        routes=[Route("/", index), Route("/predict", predict, methods=["POST"])],
    )


app = make_app(
    os.environ.get("IRIS_WEIGHTS", str(WEIGHTS)),
    device=os.environ.get("IRIS_DEVICE", "auto"),
    max_rows=int(os.environ.get("IRIS_MAX_ROWS", "1024")),
)
