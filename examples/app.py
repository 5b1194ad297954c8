"""The default model server: Fisher's Iris classifier behind `POST /predict`, and as model `iris`
of the Open Inference Protocol (KServe v2: `POST /v2/models/iris/infer`, docs/protocols.md).

    hypercorn examples.app:app
    curl -X POST localhost:8000/predict -H 'content-type: application/json' \\
         -d '{"inputs":[[5.1,3.5,1.4,0.2]]}'

The model loads before hypercorn accepts connections and is released (CUDA
memory included) after the last request. Settings (`IrisConfig`) come from
`IRIS_CONFIG` (a TOML file, see examples/iris.toml) and `IRIS_*` environment
variables, read once at import: `IRIS_WEIGHTS`, `IRIS_DEVICE` (`auto`, `cpu`,
`cuda:0`, ...), `IRIS_MAX_ROWS`, `IRIS_BATCHING=on`,
`IRIS_BATCHING__MAX_BATCH_ROWS=32`, `IRIS_BACKGROUND_STARTUP=true`, `IRIS_EXECUTION=thread`,
`IRIS_COMPILE=reduce-overhead`, `IRIS_ACCESS_LOG=json` (one JSON line per request), ... An
unknown `IRIS_` variable stops the import with the list of known ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
import torch

from asgi_host import Host, Request, Response, Route
from asgi_host.config import HostConfig, load_config
from asgi_host.kserve import KServe, TensorSpec, V2Model
from asgi_host.model import Classifier, TorchModel

from ._compile import CompileMode, compile_setting
from .iris import FEATURES, LABELS, WEIGHTS, IrisMLP

if TYPE_CHECKING:
    from asgi_host.metrics import Metrics


async def index(request: Request) -> Response:
    """What this server serves and how to ask it."""
    return Response.json(
        {
            "model": "iris-mlp",
            "predict": "POST /predict {'inputs': [[" + ", ".join(FEATURES) + "], ...]}",
            "labels": list(LABELS),
        }
    )


class IrisConfig(HostConfig, frozen=True, kw_only=True):
    """The host's settings plus the model's."""

    weights: str = str(WEIGHTS)
    device: str = "auto"
    max_rows: Annotated[int, msgspec.Meta(ge=1)] = 1024
    metrics: bool = True  # GET /metrics (needs the `metrics` extra: prometheus-client)
    # Where forward passes run: "auto" times one at startup and runs it on the event loop when it
    # is shorter than a thread hand-off (this model's is), else on the model's thread (docs/model.md).
    execution: Literal["auto", "inline", "thread"] = "auto"
    # torch.compile at startup: "default", or a mode ("reduce-overhead" captures CUDA graphs on a GPU).
    compile: CompileMode = "off"


def make_app(config: IrisConfig | None = None) -> Host:
    config = config or IrisConfig()
    model = TorchModel(
        IrisMLP,
        Path(config.weights),
        name="model",
        device=config.device,
        warmup=torch.zeros(1, len(FEATURES)),
        execution=config.execution,
        compile=compile_setting(config.compile),
        # Compiled: warm up the smallest and the largest pass a request can cause, so none compiles.
        # Batched: the largest batch, so execution="auto" times the longest pass the batcher makes;
        # with bucket_rows, every size a pass is padded to.
        warmup_batch_sizes=config.batching.pass_sizes()
        if config.batching and config.batching.bucket_rows
        else (1, config.batching.max_batch_rows if config.batching else config.max_rows)
        if config.compile != "off"
        else (config.batching.max_batch_rows,)
        if config.batching
        else (),
    )
    predict = Classifier(
        labels=LABELS,
        n_features=len(FEATURES),
        model="model",
        max_rows=config.max_rows,
        batching=config.batching,
    )
    # The same model as v2 model `iris` (Open Inference Protocol: tritonclient, KServe clients),
    # answering /predict's probabilities: the softmax of the logits.
    iris = V2Model(
        name="iris",
        resource="model",
        inputs=[TensorSpec("input", "FP32", [-1, len(FEATURES)])],
        outputs=[TensorSpec("probabilities", "FP32", [-1, len(LABELS)])],
        fn=lambda module, x: torch.softmax(module(x).float(), dim=-1),
        max_rows=config.max_rows,
        batching=config.batching,
    )
    return Host(
        resources=[model],
        routes=[Route("/", index), predict, KServe(iris)],
        metrics=_metrics() if config.metrics else None,
        **config.host_kwargs(),
    )


def _metrics() -> Metrics:
    try:
        from asgi_host.metrics import Metrics
    except ImportError as exc:
        raise ImportError(
            f"{exc}: install the metrics extra (pip install 'asgi_host[metrics]') or set IRIS_METRICS=false"
        ) from exc
    return Metrics()


app = make_app(load_config(IrisConfig, env_prefix="IRIS_", toml_path=os.environ.get("IRIS_CONFIG")))
