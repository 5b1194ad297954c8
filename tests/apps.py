"""Apps the real-server tests run (`hypercorn tests.apps:NAME`).

Resources append lines to the file named by ASGI_HOST_TEST_LOG, so a test can
see what happened inside the server process, shutdown included.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import torch
from torch import nn

from asgi_host import Batching, Host, Request, Response, Route
from asgi_host.model import Classifier, ModelHandle, ModelVersion, TorchModel
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP


def _log(line: str) -> None:
    path = os.environ.get("ASGI_HOST_TEST_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


@asynccontextmanager
async def database() -> AsyncIterator[dict[str, str]]:
    _log("database up")
    yield {"db": "connected"}
    _log("database down")


@asynccontextmanager
async def broken_model() -> AsyncIterator[None]:
    raise FileNotFoundError("weights.safetensors not found: run bench/train first")
    yield


async def show_state(request: Request) -> Response:
    return Response.json({"db": request.state["db"]})


ok_app = Host(resources=[database], routes=[Route("/state", show_state)])
failing_app = Host(resources=[database, broken_model], routes=[Route("/state", show_state)])


# --- drain, readiness and batching under a real server ---------------------


class SlowIris(IrisMLP):
    """The Iris model, with each forward pass taking FORWARD_S longer (a big model's work)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _log(f"forward start {x.shape[0]}")
        time.sleep(float(os.environ.get("FORWARD_S", "0.3")))
        result = super().forward(x)
        _log(f"forward end {x.shape[0]}")
        return result


class LoggedModel(TorchModel):
    """Logs the release, so a test can check it came after the last forward pass."""

    def _free(self, loaded: ModelVersion, final: bool) -> None:
        super()._free(loaded, final)
        _log("model released")


def _slow_build() -> nn.Module:
    time.sleep(float(os.environ.get("BUILD_S", "0")))
    return SlowIris()


def _predict_app(*, background: bool, batching: Batching | None) -> Host:
    predict = Classifier(labels=LABELS, n_features=len(FEATURES), batching=batching).endpoint

    async def logged_predict(request: Request) -> Response:
        _log("request received")
        return await predict(request)

    logged_predict.resources = predict.resources  # type: ignore[attr-defined]

    async def stats(request: Request) -> Response:
        handle: ModelHandle = request.state["model"]
        return Response.json({"forward_passes": handle.forward_passes})

    return Host(
        resources=[LoggedModel(_slow_build, WEIGHTS)],
        routes=[Route("/predict", logged_predict, methods=["POST"]), Route("/stats", stats)],
        background_startup=background,
    )


slow_batched_app = _predict_app(background=False, batching=Batching(max_batch_rows=64, max_wait_s=0.05))
background_app = _predict_app(background=True, batching=None)


async def http_only_app(scope: dict[str, object], receive: object, send: object) -> None:
    """An app without lifespan support: it raises on any scope but http."""
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope type {scope['type']!r}")


async def raises_after_startup_app(
    scope: dict[str, object], receive: Callable[[], Awaitable[object]], send: object
) -> None:
    """An app that receives `lifespan.startup` and then raises instead of answering it: a failed startup."""
    if scope["type"] == "lifespan":
        await receive()
        raise ConnectionRefusedError("cache at 127.0.0.1:6379 refused the connection")
