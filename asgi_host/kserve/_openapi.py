"""How the v2 routes describe themselves in /openapi.json: each model's request body (JSON, and the
binary tensor extension with its header), its answers, and the protocol's error object.

The schemas are written per model from its `TensorSpec`s (input names, datatypes and shapes), so a
client generator or a fuzzer builds requests this model takes. What JSON Schema cannot say (that
`data` holds as many values as the shape's product) stays a documented 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .._describe import RETRY_AFTER
from ._model import V2Model
from ._tensors import DATATYPES, TensorSpec

__all__ = [
    "CONFIG",
    "LIVE",
    "MODEL_METADATA",
    "READY",
    "SERVER_METADATA",
    "get_operation",
    "infer_operation",
]

JSON = "application/json"
BINARY = "application/octet-stream"
HEADER_LENGTH_PARAMETER = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": (
        "The binary tensor extension: the body is this many bytes of the JSON request, then each "
        "input with `parameters.binary_data_size`, in order (application/octet-stream)."
    ),
    "schema": {"type": "string", "pattern": "^[0-9]{1,19}$"},
}
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
    "description": "The protocol's error object.",
}
FAILURES = {
    "400": "A request this model cannot take (the inputs, their shapes, datatypes or data, the "
    "outputs asked for, the binary framing); the reason in `error`.",
    "408": "The body did not arrive within the host's body_timeout_s.",
    "413": "The body is larger than max_body_bytes, or the batch has more rows than max_rows.",
    "415": "A Content-Encoding (send the body as is).",
    "422": "A float input that is not finite (NaN, infinity, out of range for its type), or an "
    "output the model computed that is not.",
    "500": "A bug: the model's function failed; the traceback is in the server log.",
    "503": "Loading, shutting down, the batch queue full, or out of device memory (`Retry-After`).",
    "504": "No answer within the batcher's timeout_s.",
}


SERVER_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "version", "extensions"],
}
_TENSOR = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "datatype": {"type": "string"}, "shape": {"type": "array"}},
}
MODEL_METADATA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR},
        "outputs": {"type": "array", "items": _TENSOR},
        "parameters": {"type": "object"},
    },
    "required": ["name", "platform", "inputs", "outputs"],
}
CONFIG = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "max_batch_size": {"type": "integer"}},
    "required": ["name", "max_batch_size"],
}
READY = {"type": "object", "properties": {"ready": {"const": True}}, "required": ["ready"]}
LIVE = {"type": "object", "properties": {"live": {"const": True}}, "required": ["live"]}


def _json_type(datatype: str) -> dict[str, Any]:
    if datatype == "BOOL":
        return {"type": "boolean"}
    if datatype == "BYTES":
        return {"type": "string"}
    if datatype.startswith("FP"):
        return {"type": "number"}
    dtype = DATATYPES[datatype][0]
    info = np.iinfo(dtype)
    return {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}


def _input(spec: TensorSpec, max_rows: int) -> dict[str, Any]:
    dims = [
        {"type": "integer", "minimum": 1, "maximum": max_rows}
        if i == 0 and d == -1
        else {"type": "integer", "minimum": 1}
        if d == -1
        else {"const": d}
        for i, d in enumerate(spec.shape)
    ]
    return {
        "type": "object",
        "properties": {
            "name": {"const": spec.name},
            "shape": {"type": "array", "prefixItems": dims, "minItems": len(dims), "maxItems": len(dims)},
            "datatype": {"const": spec.datatype},
            "data": {"type": "array", "items": _json_type(spec.datatype), "minItems": 1},
            "parameters": {"type": "object"},
        },
        "required": ["name", "shape", "datatype", "data"],
    }


def request_schema(model: V2Model) -> dict[str, Any]:
    inputs = [_input(spec, model.max_rows) for spec in model.inputs]
    return {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "inputs": {
                "type": "array",
                "items": inputs[0] if len(inputs) == 1 else {"oneOf": inputs},
                "minItems": len(inputs),
                "maxItems": len(inputs),
            },
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"enum": [spec.name for spec in model.outputs]},
                        "parameters": {"type": "object"},
                    },
                    "required": ["name"],
                },
                "maxItems": len(model.outputs),
                "uniqueItems": True,
            },
            "parameters": {"type": "object"},
        },
        "required": ["inputs"],
        "description": f"Inputs for {model.name!r}; see its metadata (`GET /v2/models/{model.name}`).",
    }


def response_schema(model: V2Model) -> dict[str, Any]:
    output = {
        "type": "object",
        "properties": {
            "name": {"enum": [spec.name for spec in model.outputs]},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array"},
            "parameters": {"type": "object"},
        },
        "required": ["name", "datatype", "shape"],
    }
    return {
        "type": "object",
        "properties": {
            "model_name": {"const": model.name},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": output},
        },
        "required": ["model_name", "outputs"],
    }


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(statuses: Mapping[str, str]) -> dict[str, Any]:
    answers = {status: _answer(text, ERROR) for status, text in statuses.items()}
    if "503" in answers:
        answers["503"]["headers"] = RETRY_AFTER
    return answers


def infer_operation(model: V2Model) -> dict[str, Any]:
    request = request_schema(model)
    return {
        "summary": f"Run {model.name!r} on the inputs: JSON tensors, or binary ones after a JSON header.",
        "tags": ["v2"],
        "parameters": [HEADER_LENGTH_PARAMETER],
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": request},
                BINARY: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "With Inference-Header-Content-Length: the JSON request "
                        "(as application/json describes it), then the inputs' bytes.",
                    },
                },
            },
        },
        "responses": {
            "200": {
                "description": "The outputs asked for (all when none are named), in that order; "
                "binary ones after a JSON header of Inference-Header-Content-Length bytes.",
                "content": {
                    JSON: {"schema": response_schema(model)},
                    BINARY: {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_errors(FAILURES),
        },
    }


def get_operation(summary: str, answer: dict[str, Any], not_ready: str | None = None) -> dict[str, Any]:
    """A GET route's operation: its answer, and the 503 it gives while loading or not ready."""
    failures = {"503": not_ready or "Loading or shutting down (`Retry-After`)."}
    return {
        "summary": summary,
        "tags": ["v2"],
        "responses": {"200": _answer("The answer.", answer), **_errors(failures)},
    }
