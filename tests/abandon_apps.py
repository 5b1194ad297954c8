"""Apps whose forward pass counts itself and takes FORWARD_S (1 s by default): what runs for
clients that left, under a real server (`hypercorn tests.abandon_apps:unbatched_app`).
`GET /passes` says how many forward passes have begun (startup's output check included)."""

from __future__ import annotations

import os
import time

import torch

from asgi_host import Batching, Host, Request, Response, Route
from asgi_host.model import Classifier, TorchModel
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP

PASSES = [0]


class CountedIris(IrisMLP):
    """The Iris model, counting its passes, each FORWARD_S longer (a big model's work)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        PASSES[0] += 1
        time.sleep(float(os.environ.get("FORWARD_S", "1.0")))
        return super().forward(x)


async def passes(request: Request) -> Response:
    return Response.json({"passes": PASSES[0]})


def _app(batching: Batching | None) -> Host:
    return Host(
        resources=[TorchModel(CountedIris, WEIGHTS, execution="thread")],
        routes=[
            Classifier(labels=LABELS, n_features=len(FEATURES), batching=batching),
            Route("/passes", passes),
        ],
    )


unbatched_app = _app(None)
# A small queue: eight clients of eight rows fill it.
batched_app = _app(Batching(max_batch_rows=8, max_queue_rows=64))
