"""A host for the tritonclient tests: one v2 model per datatype that hands its input back, and one
with BYTES in and out (`hypercorn tests.kserve_apps:app`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from asgi_host import Host
from asgi_host.kserve import KServe, TensorSpec, V2Model
from asgi_host.model import TorchModel

ECHO_TYPES = ("BOOL", "UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64")


def _echo(datatype: str) -> V2Model:
    return V2Model(
        name=f"echo_{datatype.lower()}",
        inputs=[TensorSpec("x", datatype, [-1, 3])],
        outputs=[TensorSpec("y", datatype, [-1, 3])],
        fn=lambda module, x: x.clone(),
    )


def _upper(module: nn.Module, texts: np.ndarray[Any, Any]) -> tuple[list[list[bytes]], torch.Tensor]:
    lengths = torch.tensor([[len(t)] for t in texts.ravel()], dtype=torch.int64)
    return [[t.upper()] for t in texts.ravel()], lengths


text = V2Model(
    name="text",
    inputs=[TensorSpec("texts", "BYTES", [-1, 1])],
    outputs=[TensorSpec("upper", "BYTES", [-1, 1]), TensorSpec("lengths", "INT64", [-1, 1])],
    fn=_upper,
)

app = Host(
    resources=[TorchModel(nn.Identity, None, name="model")],
    routes=KServe(*(_echo(datatype) for datatype in ECHO_TYPES), text).routes(),
)
