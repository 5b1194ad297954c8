"""`classifier_endpoint`: POST /predict for a model that maps feature rows to class logits."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import torch
from torch import nn

from ._batching import Batcher, Batching
from ._errors import HTTPError, OutOfMemory
from ._http import Request
from ._resources import Resource
from ._structured import StructEndpoint

if TYPE_CHECKING:
    from ._torch_model import ModelHandle

__all__ = ["ClassifierOutput", "classifier_endpoint"]


class ClassifierOutput(msgspec.Struct):
    """Class probabilities per row, and the most likely label per row."""

    outputs: list[list[float]]
    labels: list[str]


def classifier_endpoint(
    *,
    labels: Sequence[str],
    n_features: int,
    model: str = "model",
    max_rows: int = 1024,
    max_body_bytes: int | None = None,
    batching: Batching | None = None,
) -> StructEndpoint[Any]:
    """A `/predict` endpoint for a classifier that maps `n_features` floats to `len(labels)` logits.

    Request `{"inputs": [[f, ...], ...]}`, answer `{"outputs": [[p, ...], ...], "labels": [...]}`.
    Empty batches, rows of the wrong width and non-finite numbers are 422;
    more than `max_rows` rows is 413. `model` is the state key of the handle.
    With `batching`, concurrent requests share forward passes (see `Batching`);
    the endpoint's batcher is in `endpoint.resources` and the host starts it.
    """
    if n_features < 1:
        raise ValueError(f"a classifier needs at least one feature, got n_features={n_features}")
    if not labels:
        raise ValueError("a classifier needs labels: pass labels=[...], one per output column")
    label_list = list(labels)
    row = Annotated[
        list[float],
        msgspec.Meta(
            min_length=n_features,
            max_length=n_features,
            description=f"One row: {n_features} finite numbers.",
        ),
    ]
    # More than max_rows rows is 413 (the handler checks it, not the decoder); the document says so.
    inputs = msgspec.Meta(
        min_length=1,
        description=f"Rows to classify, at most max_rows={max_rows} (more is 413).",
        extra_json_schema={"maxItems": max_rows},
    )
    request_type = msgspec.defstruct(
        "PredictRequest",
        [("inputs", Annotated[list[row], inputs])],
        forbid_unknown_fields=True,
    )

    def forward(
        module: nn.Module, inputs: list[list[float]], device: torch.device, dtype: torch.dtype
    ) -> Any:
        x = torch.tensor(inputs, dtype=dtype, device=device)
        probabilities = torch.softmax(module(x).float(), dim=-1)
        if probabilities.shape != (len(inputs), len(label_list)):
            expected = (len(inputs), len(label_list))
            raise RuntimeError(f"model returned shape {tuple(probabilities.shape)}, expected {expected}")
        return probabilities.cpu().tolist()

    async def run_rows(state: Mapping[str, Any], inputs: list[list[float]]) -> list[list[float]]:
        handle: ModelHandle = state[model]
        outputs: list[list[float]] = await handle.run(forward, inputs, handle.device, handle.dtype)
        return outputs

    def output_shape(module: nn.Module, device: torch.device, dtype: torch.dtype) -> tuple[int, ...]:
        return tuple(module(torch.zeros(2, n_features, dtype=dtype, device=device)).shape)

    @asynccontextmanager
    async def check_output(host: Any) -> AsyncIterator[None]:
        # At startup, after the model loaded: a model whose output does not fit the labels fails
        # startup here instead of answering every request with a 500.
        handle: ModelHandle = host.state[model]
        shape = await handle.run(output_shape, handle.device, handle.dtype)
        if shape != (2, len(label_list)):
            columns = f"{shape[1]} columns per row" if len(shape) == 2 else f"shape {shape} for 2 rows"
            raise RuntimeError(
                f"model {model!r} returns {columns} but the endpoint has {len(label_list)} labels "
                f"({', '.join(label_list)}): give classifier_endpoint the labels the model was trained "
                "on, or load the weights that match them"
            )
        yield

    batcher = Batcher(run_rows, batching, name=f"{model} batcher") if batching is not None else None

    async def predict(body: Any, request: Request) -> ClassifierOutput:
        """Classify rows of features: each row's class probabilities and most likely label."""
        inputs: list[list[float]] = body.inputs
        if len(inputs) > max_rows:
            raise HTTPError(413, f"{len(inputs)} rows is more than max_rows={max_rows}; split the batch")
        _check_finite(inputs)
        if batcher is not None:
            outputs = await batcher.submit(inputs, request)
        else:
            try:
                outputs = await run_rows(request.state, inputs)
            except OutOfMemory as exc:
                raise exc.for_rows(len(inputs)) from None
        _check_finite_outputs(outputs)
        best = [label_list[max(range(len(row)), key=row.__getitem__)] for row in outputs]
        return ClassifierOutput(outputs=outputs, labels=best)

    checker = Resource(check_output, name=f"{model} output check")
    resources = (checker, batcher) if batcher is not None else (checker,)
    return StructEndpoint(
        predict,
        request_type,
        response_type=ClassifierOutput,
        errors={
            413: f"More than max_rows={max_rows} rows.",
            422: "A number is not finite, or the model's output for a row is not (inputs outside what it "
            "can compute); `path` names the row.",
        },
        max_body_bytes=max_body_bytes,
        resources=resources,
    )


def _check_finite_outputs(outputs: list[list[float]]) -> None:
    """A row whose probabilities are not finite (inputs the model cannot compute, like 1e38) is
    refused with 422 naming it, never answered with NaN."""
    if _all_finite(outputs):
        return
    for i, values in enumerate(outputs):
        if not all(math.isfinite(value) for value in values):
            raise HTTPError(
                422,
                "the model's output for this row is not finite (NaN or infinity): the inputs are outside "
                "what it can compute",
                path=f"$.inputs[{i}]",
            )


def _all_finite(rows: list[list[float]]) -> bool:
    """A fast yes: a NaN or an infinity makes the sum non-finite. A non-finite sum may also be
    an overflow of finite values, so a no is checked value by value."""
    return math.isfinite(sum(map(sum, rows)))


def _check_finite(rows: list[list[float]]) -> None:
    if _all_finite(rows):
        return
    for i, values in enumerate(rows):
        for j, value in enumerate(values):
            if value != value or value in (float("inf"), float("-inf")):
                raise HTTPError(422, f"Expected a finite number, got {value}", path=f"$.inputs[{i}][{j}]")
