"""Apps with a model the real-server tests run (`hypercorn tests.model_apps:NAME`): drain,
readiness and batching under a real server. They log to ASGI_HOST_TEST_LOG as tests/apps.py does.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from asgi_host import Batching, EventStream, Host, Request, Response, Route
from asgi_host.model import Classifier, ModelHandle, ModelVersion, TorchModel
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP
from tests.apps import log


class SlowIris(IrisMLP):
    """The Iris model, with each forward pass taking FORWARD_S longer (a big model's work)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log(f"forward start {x.shape[0]}")
        time.sleep(float(os.environ.get("FORWARD_S", "0.3")))
        result = super().forward(x)
        log(f"forward end {x.shape[0]}")
        return result


class LoggedModel(TorchModel):
    """Logs the release, so a test can check it came after the last forward pass."""

    def _free(self, loaded: ModelVersion, final: bool, *, collect: bool = True) -> None:
        super()._free(loaded, final, collect=collect)
        log("model released")


def _slow_build() -> nn.Module:
    time.sleep(float(os.environ.get("BUILD_S", "0")))
    return SlowIris()


def _predict_app(*, background: bool, batching: Batching | None) -> Host:
    predict = Classifier(labels=LABELS, n_features=len(FEATURES), batching=batching).endpoint

    async def logged_predict(request: Request) -> Response | EventStream:
        log("request received")
        return await predict(request)

    async def stats(request: Request) -> Response:
        handle: ModelHandle = request.state["model"]
        return Response.json({"forward_passes": handle.forward_passes})

    return Host(
        resources=[LoggedModel(_slow_build, WEIGHTS)],
        routes=[
            Route("/predict", logged_predict, methods=["POST"], resources=predict.resources),
            Route("/stats", stats),
        ],
        background_startup=background,
    )


slow_batched_app = _predict_app(background=False, batching=Batching(max_batch_rows=64, max_wait_s=0.05))
background_app = _predict_app(background=True, batching=None)
