"""`Classifier`: POST /predict for a model that maps feature rows to class logits."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import torch
from torch import nn

from ._batching import Batching
from ._errors import HTTPError
from ._http import Request
from ._resources import Resource
from ._routing import Mount, Route
from ._rows import Rows, model_handle
from ._structured import StructEndpoint
from ._view import HostView

__all__ = ["Classifier", "ClassifierOutput"]


class ClassifierOutput(msgspec.Struct):
    """Class probabilities per row, and the most likely label per row."""

    outputs: list[list[float]]
    labels: list[str]


class Classifier:
    """`POST /predict` for a classifier that maps `n_features` floats to `len(labels)` logits.

    ::

        app = Host(resources=[TorchModel(...)], routes=[Classifier(labels=["cat", "dog"], n_features=8)])

    Request `{"inputs": [[f, ...], ...]}`, answer `{"outputs": [[p, ...], ...], "labels": [...]}`:
    the softmax of the model's logits and the most likely label per row. Empty batches, rows of
    the wrong width and non-finite numbers are 422; more than `max_rows` rows is 413. `model` is
    the state key of the `TorchModel`'s handle, `path` the route's path. With `batching`,
    concurrent requests share forward passes (see `Batching`). At startup, after the model
    loads, a pass on zeros checks that the model answers one column per label.

    An adapter like `KServe` and `OpenAIEmbeddings`: give it to the host's `routes`, or
    take `routes()`; `endpoint` is the route's endpoint and `resources` what it carries.
    """

    def __init__(
        self,
        *,
        labels: Sequence[str],
        n_features: int,
        model: str = "model",
        path: str = "/predict",
        max_rows: int = 1024,
        max_body_bytes: int | None = None,
        batching: Batching | None = None,
    ) -> None:
        if n_features < 1:
            raise ValueError(f"a classifier needs at least one feature, got n_features={n_features}")
        if not labels:
            raise ValueError("a classifier needs labels: pass labels=[...], one per output column")
        self.labels = list(labels)
        self.n_features = n_features
        self.model = model
        self.path = path
        self.max_rows = max_rows
        self.rows: Rows[list[float], list[float]] = Rows(self._forward, model=model, batching=batching)
        checker = Resource(self._check_output, name=f"{model} output check")
        self.resources: tuple[Resource, ...] = (checker, *self.rows.resources)
        self.endpoint = StructEndpoint(
            self.predict,
            self._request_type(),
            response_type=ClassifierOutput,
            errors={
                413: f"More than max_rows={max_rows} rows.",
                422: "A number is not finite, or the model's output for a row is not (inputs outside what it "
                "can compute); `path` names the row.",
            },
            max_body_bytes=max_body_bytes,
            resources=self.resources,
        )

    def routes(self) -> list[Route | Mount]:
        return [Route(self.path, self.endpoint, methods=["POST"])]

    def _request_type(self) -> type[Any]:
        row = Annotated[
            list[float],
            msgspec.Meta(
                min_length=self.n_features,
                max_length=self.n_features,
                description=f"One row: {self.n_features} finite numbers.",
            ),
        ]
        # More than max_rows rows is 413 (the handler checks it, not the decoder); the document says so.
        inputs = msgspec.Meta(
            min_length=1,
            description=f"Rows to classify, at most max_rows={self.max_rows} (more is 413).",
            extra_json_schema={"maxItems": self.max_rows},
        )
        return msgspec.defstruct(
            "PredictRequest", [("inputs", Annotated[list[row], inputs])], forbid_unknown_fields=True
        )

    async def predict(self, body: Any, request: Request) -> ClassifierOutput:
        """Classify rows of features: each row's class probabilities and most likely label."""
        inputs: list[list[float]] = body.inputs
        if len(inputs) > self.max_rows:
            raise HTTPError(413, f"{len(inputs)} rows is more than max_rows={self.max_rows}; split the batch")
        if not _all_finite(inputs):
            _refuse_non_finite(inputs)
        outputs = await self.rows.run(inputs, request)
        if not _all_finite(outputs):
            _refuse_non_finite_outputs(outputs)
        labels = self.labels
        best = [labels[max(range(len(row)), key=row.__getitem__)] for row in outputs]
        return ClassifierOutput(outputs=outputs, labels=best)

    def _forward(
        self, module: nn.Module, inputs: list[list[float]], device: torch.device, dtype: torch.dtype
    ) -> list[list[float]]:
        x = torch.tensor(inputs, dtype=dtype, device=device)
        probabilities = torch.softmax(module(x).float(), dim=-1)
        expected = (len(inputs), len(self.labels))
        if probabilities.shape != expected:
            raise RuntimeError(f"model returned shape {tuple(probabilities.shape)}, expected {expected}")
        outputs: list[list[float]] = probabilities.cpu().tolist()
        return outputs

    def _output_shape(self, module: nn.Module, device: torch.device, dtype: torch.dtype) -> tuple[int, ...]:
        return tuple(module(torch.zeros(2, self.n_features, dtype=dtype, device=device)).shape)

    @asynccontextmanager
    async def _check_output(self, host: HostView) -> AsyncIterator[None]:
        # At startup, after the model loaded: a model whose output does not fit the labels fails
        # startup here instead of answering every request with a 500.
        handle = model_handle(host.state, self.model)
        shape = await handle.run(self._output_shape, handle.device, handle.dtype)
        if shape != (2, len(self.labels)):
            columns = f"{shape[1]} columns per row" if len(shape) == 2 else f"shape {shape} for 2 rows"
            raise RuntimeError(
                f"model {self.model!r} returns {columns} but the endpoint has {len(self.labels)} labels "
                f"({', '.join(self.labels)}): give Classifier the labels the model was trained "
                "on, or load the weights that match them"
            )
        yield


def _refuse_non_finite_outputs(outputs: list[list[float]]) -> None:
    """A row whose probabilities are not finite (inputs the model cannot compute, like 1e38) is
    refused with 422 naming it, never answered with NaN (an overflowing sum of finite ones passes)."""
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


def _refuse_non_finite(rows: list[list[float]]) -> None:
    """422 naming the first number that is not finite (none: the sum overflowed, the rows pass)."""
    for i, values in enumerate(rows):
        for j, value in enumerate(values):
            if value != value or value in (float("inf"), float("-inf")):
                raise HTTPError(422, f"Expected a finite number, got {value}", path=f"$.inputs[{i}][{j}]")
