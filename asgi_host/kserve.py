"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) for any `TorchModel`.

Needs the `torch` extra. Existing clients (`tritonclient.http`, KServe's `InferenceRESTClient`,
`perf_analyzer`) talk to the host unchanged::

    iris = V2Model(
        name="iris",
        resource="model",                                   # the TorchModel's name
        inputs=[TensorSpec("input", "FP32", [-1, 4])],      # -1: the batch dimension
        outputs=[TensorSpec("probabilities", "FP32", [-1, 3])],
        fn=lambda module, x: torch.softmax(module(x), dim=-1),
    )
    app = Host(resources=[model], routes=[*kserve_routes(iris)])

Routes: exact routes per model (`/v2/models/{name}[/versions/{v}]`, `/ready`, `/infer`,
`/config`) plus `/v2`, `/v2/health/live` and `/v2/health/ready`, and a `Mount("/v2", ...)` that
answers every other path under `/v2` with the protocol's 404 (an unknown model, say). Errors are
the protocol's `{"error": "..."}`. The binary tensor data extension is supported both ways. See
docs/protocols.md.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import torch
from torch import nn

from ._batching import Batcher, Batching
from ._errors import ClientDisconnect, HTTPError, OutOfMemory
from ._http import Request, Response, settle_body
from ._resources import Resource
from ._routing import Mount, Route
from ._types import Receive, Scope, Send, send_message
from ._version import __version__

__all__ = ["DATATYPES", "TensorSpec", "V2Model", "kserve_routes"]

logger = logging.getLogger("asgi_host.kserve")

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ("binary_tensor_data",)

# The protocol's datatypes this module serves: numpy dtype (None: BYTES) and torch dtype.
DATATYPES: dict[str, tuple[np.dtype[Any] | None, torch.dtype | None]] = {
    "BOOL": (np.dtype(np.bool_), torch.bool),
    "UINT8": (np.dtype(np.uint8), torch.uint8),
    "INT8": (np.dtype(np.int8), torch.int8),
    "INT16": (np.dtype(np.int16), torch.int16),
    "INT32": (np.dtype(np.int32), torch.int32),
    "INT64": (np.dtype(np.int64), torch.int64),
    "FP16": (np.dtype(np.float16), torch.float16),
    "FP32": (np.dtype(np.float32), torch.float32),
    "FP64": (np.dtype(np.float64), torch.float64),
    "BYTES": (None, None),
}
# The element type JSON `data` is decoded as, per datatype.
_JSON_ELEMENT: dict[str, type] = {
    "BOOL": bool,
    "UINT8": int,
    "INT8": int,
    "INT16": int,
    "INT32": int,
    "INT64": int,
    "FP16": float,
    "FP32": float,
    "FP64": float,
    "BYTES": str,
}

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as the model's metadata declares it: name, datatype (`FP32`, ...), shape (-1: any)."""

    name: str
    datatype: str
    shape: Sequence[int]

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a tensor needs a name")
        if self.datatype not in DATATYPES:
            raise ValueError(
                f"tensor {self.name!r}: datatype {self.datatype!r} is not one of {', '.join(DATATYPES)}"
            )
        if not all(isinstance(d, int) and d >= -1 for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: shape {list(self.shape)} has a dimension below -1")
        object.__setattr__(self, "shape", tuple(self.shape))

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


# The request header, as the protocol's JSON. `data` stays raw until the datatype is known.
class _InputTensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty: not given


class _RequestedOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class _InferRequest(msgspec.Struct):
    inputs: list[_InputTensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_RequestedOutput] | None = None


_request_decoder = msgspec.json.Decoder(_InferRequest)
_json_encoder = msgspec.json.Encoder()
_data_decoders: dict[tuple[str, int], msgspec.json.Decoder[Any]] = {}
# Request parameters the protocol (or Triton) gives a meaning of its own: never handed to `fn`.
_RESERVED_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)


def _error(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    return Response(
        _json_encoder.encode({"error": message}),
        status=status,
        media_type="application/json",
        headers=headers,
    )


def _bad(message: str) -> HTTPError:
    return HTTPError(400, message)


Forward = Callable[..., Any]


class V2Model:
    """A `TorchModel` (the state key `resource`) served as one model of the Open Inference Protocol.

    `inputs` and `outputs` declare the tensors (`TensorSpec`); a request must send every input
    with its declared datatype and a shape that matches (-1 matches any size). `fn(module,
    *tensors)` runs the forward pass on the model's thread, under `torch.inference_mode()`: the
    tensors come in the order of `inputs`, on the model's device, in their declared datatype
    (`FP32` ones in the model's dtype, so FP32 clients reach a half-precision model; `BYTES` as a
    numpy array of `bytes`). It returns one tensor, a sequence of them in the order of `outputs`,
    or a mapping from output names (`BYTES` outputs: arrays or nested lists of `bytes` or `str`).
    The default is `module(*tensors)`. An `fn` with a `parameters` keyword gets the request's own
    `parameters` (without the protocol's reserved ones); not with batching, which mixes requests.

    When every input and output starts with the batch dimension (-1), that dimension is the
    rows: more than `max_rows` is 413, and with `batching` concurrent requests share passes
    through a `Batcher` (each request's rows stay together). `max_body_bytes` overrides the
    host's limit for this model's requests. At startup, `fn` runs once on zeros (two rows) to
    check its outputs against `outputs`, unless `check_outputs=False` or an input is `BYTES`.
    """

    def __init__(
        self,
        *,
        name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        resource: str = "model",
        fn: Forward | None = None,
        version: str = "1",
        platform: str = "pytorch",
        max_rows: int = 1024,
        max_body_bytes: int | None = None,
        batching: Batching | None = None,
        check_outputs: bool = True,
    ) -> None:
        if not name or "/" in name:
            raise ValueError(f"a model name is non-empty and has no '/', got {name!r}")
        if not version or "/" in version:
            raise ValueError(f"a model version is non-empty and has no '/', got {version!r}")
        if not inputs or not outputs:
            raise ValueError(f"model {name!r} needs at least one input and one output TensorSpec")
        for kind, specs in (("input", inputs), ("output", outputs)):
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"model {name!r}: two {kind}s share a name in {names}")
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self.name = name
        self.version = version
        self.platform = platform
        self.resource = resource
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.fn: Forward = fn if fn is not None else _call_module
        self.max_rows = max_rows
        self.max_body_bytes = max_body_bytes
        self.check_outputs = check_outputs
        self.batched = all(spec.shape and spec.shape[0] == -1 for spec in (*self.inputs, *self.outputs))
        self.takes_parameters = _takes_parameters(self.fn)
        if batching is not None and not self.batched:
            raise ValueError(
                f"model {name!r}: batching needs every input and output to start with the batch "
                "dimension (-1)"
            )
        if batching is not None and self.takes_parameters:
            raise ValueError(
                f"model {name!r}: an fn that takes the request's parameters cannot be batched "
                "(a pass mixes requests): drop batching or the parameters keyword"
            )
        self._input_index = {spec.name: i for i, spec in enumerate(self.inputs)}
        self._output_index = {spec.name: i for i, spec in enumerate(self.outputs)}
        self.batcher: Batcher[tuple[Array, ...], tuple[Array, ...]] | None = (
            Batcher(self._run_rows, batching, name=f"{name} v2 batcher") if batching is not None else None
        )
        self.resources: tuple[Resource, ...] = (
            Resource(self._check, name=f"{name} v2 output check"),
            *((self.batcher,) if self.batcher is not None else ()),
        )

    def __repr__(self) -> str:
        return f"V2Model({self.name!r}, resource={self.resource!r})"

    # -- metadata -------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.platform,
            "inputs": [spec.metadata() for spec in self.inputs],
            "outputs": [spec.metadata() for spec in self.outputs],
        }

    def config(self) -> dict[str, Any]:
        """Triton's model configuration, the part its clients read (`max_batch_size`, tensors)."""
        skip = 1 if self.batched else 0

        def tensors(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
            return [
                {
                    "name": s.name,
                    "data_type": f"TYPE_{'STRING' if s.datatype == 'BYTES' else s.datatype}",
                    "dims": list(s.shape[skip:]),
                }
                for s in specs
            ]

        return {
            "name": self.name,
            "platform": self.platform,
            "backend": self.platform,
            "max_batch_size": self.max_rows if self.batched else 0,
            "input": tensors(self.inputs),
            "output": tensors(self.outputs),
        }

    def ready(self, state: Mapping[str, Any]) -> bool:
        handle = state.get(self.resource)
        return handle is not None and not getattr(handle, "closing", False)

    # -- the forward pass, on the model's thread ------------------------------------------------

    def _forward(
        self,
        module: nn.Module,
        arrays: Sequence[Array],
        device: torch.device,
        dtype: torch.dtype,
        parameters: Mapping[str, Any] | None,
    ) -> list[Array]:
        tensors: list[Any] = []
        for spec, array in zip(self.inputs, arrays, strict=True):
            if spec.datatype == "BYTES":
                tensors.append(array)
                continue
            tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
            if spec.datatype == "FP32" and dtype.is_floating_point and dtype != torch.float32:
                tensor = tensor.to(dtype)
            tensors.append(tensor if device.type == "cpu" else tensor.to(device))
        kwargs = {"parameters": dict(parameters or {})} if self.takes_parameters else {}
        result = self.fn(module, *tensors, **kwargs)
        rows = arrays[0].shape[0] if self.batched and arrays else None
        return self._collect(result, rows)

    def _collect(self, result: Any, rows: int | None) -> list[Array]:
        if isinstance(result, Mapping):
            missing = [spec.name for spec in self.outputs if spec.name not in result]
            if missing:
                raise RuntimeError(f"model {self.name!r}: fn returned no output named {missing}")
            values = [result[spec.name] for spec in self.outputs]
        elif isinstance(result, list | tuple) and len(self.outputs) > 1:
            values = list(result)
        elif isinstance(result, list | tuple) and len(result) == 1 and isinstance(result[0], torch.Tensor):
            values = [result[0]]  # one output, as a sequence of one
        else:
            values = [result]
        if len(values) != len(self.outputs):
            raise RuntimeError(
                f"model {self.name!r}: fn returned {len(values)} outputs, the model declares "
                f"{len(self.outputs)} ({', '.join(s.name for s in self.outputs)})"
            )
        arrays = [_to_numpy(value, spec) for spec, value in zip(self.outputs, values, strict=True)]
        for spec, array in zip(self.outputs, arrays, strict=True):
            if not _shape_fits(array.shape, spec.shape) or (rows is not None and array.shape[0] != rows):
                expected = list(spec.shape) if rows is None else [rows, *spec.shape[1:]]
                raise RuntimeError(
                    f"model {self.name!r}: output {spec.name!r} has shape {list(array.shape)}, "
                    f"the model declares {expected} (-1: any size)"
                )
        return arrays

    def _forward_rows(
        self, module: nn.Module, rows: list[tuple[Array, ...]], device: torch.device, dtype: torch.dtype
    ) -> list[tuple[Array, ...]]:
        arrays = [np.stack([row[i] for row in rows]) for i in range(len(self.inputs))]
        outputs = self._forward(module, arrays, device, dtype, None)
        return list(zip(*(list(output) for output in outputs), strict=True))

    async def _run_rows(
        self, state: Mapping[str, Any], rows: list[tuple[Array, ...]]
    ) -> list[tuple[Array, ...]]:
        handle = _handle(state, self)
        result: list[tuple[Array, ...]] = await handle.run(
            self._forward_rows, rows, handle.device, handle.dtype
        )
        return result

    async def run(
        self,
        state: Mapping[str, Any],
        arrays: list[Array],
        parameters: Mapping[str, Any] | None,
        request: Request | None = None,
    ) -> list[Array]:
        """The outputs for one request's inputs (in declared order), through the batcher if any."""
        if self.batcher is not None:
            count = arrays[0].shape[0]
            per_row = await self.batcher.submit(list(zip(*(list(a) for a in arrays), strict=True)), request)
            if len(per_row) != count:
                raise RuntimeError(f"the batcher returned {len(per_row)} rows for {count}")
            return [np.stack([row[i] for row in per_row]) for i in range(len(self.outputs))]
        handle = _handle(state, self)
        try:
            outputs: list[Array] = await handle.run(
                self._forward, arrays, handle.device, handle.dtype, parameters
            )
        except OutOfMemory as exc:
            raise exc.for_rows(arrays[0].shape[0] if self.batched else 1) from None
        return outputs

    @asynccontextmanager
    async def _check(self, host: Any) -> AsyncIterator[None]:
        # After the model loaded: outputs that do not fit the declaration fail startup with the
        # reason, instead of every request answering 500.
        state = host.state
        handle = state.get(self.resource)
        if not hasattr(handle, "run"):
            raise RuntimeError(
                f"v2 model {self.name!r} runs the model under the state key {self.resource!r}, which no "
                f"resource yielded (keys: {', '.join(map(repr, state)) or 'none'}): pass resource= the "
                "TorchModel's name, and the TorchModel to the host's resources"
            )
        if self.check_outputs and all(spec.datatype != "BYTES" for spec in self.inputs):
            arrays = [_zeros(spec, 2 if self.batched else 1) for spec in self.inputs]
            try:
                await handle.run(self._forward, arrays, handle.device, handle.dtype, None)
            except Exception as exc:
                raise RuntimeError(
                    f"v2 model {self.name!r}: fn on zeros of the declared input shapes failed: {exc} "
                    "(fix fn or the TensorSpecs, or pass check_outputs=False)"
                ) from exc
        yield

    # -- a request ------------------------------------------------------------------------------

    def parse(self, body: bytes, header_length: str | None) -> tuple[_InferRequest, list[Array]]:
        """The request and its input arrays in declared order; `HTTPError` 400/413 when invalid."""
        if header_length is not None:
            if not header_length.strip().isdecimal():
                raise _bad(f"Inference-Header-Content-Length must be a byte count, got {header_length!r}")
            length = int(header_length)
            if length > len(body):
                raise _bad(
                    f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes"
                )
            header, binary = body[:length], memoryview(body)[length:]
        else:
            header, binary = body, memoryview(b"")
        try:
            request = _request_decoder.decode(header)
        except msgspec.DecodeError as exc:
            raise _bad(f"malformed inference request: {exc}") from None
        arrays: list[Array | None] = [None] * len(self.inputs)
        offset = 0
        for tensor in request.inputs:
            index = self._input_index.get(tensor.name)
            if index is None:
                known = ", ".join(s.name for s in self.inputs)
                raise _bad(
                    f"unexpected inference input {tensor.name!r} for model {self.name!r} (inputs: {known})"
                )
            if arrays[index] is not None:
                raise _bad(f"input {tensor.name!r} is given twice")
            spec = self.inputs[index]
            _check_input_header(tensor, spec, self.name)
            size = (tensor.parameters or {}).get("binary_data_size")
            if size is not None:
                if _has_data(tensor):
                    raise _bad(f"input {tensor.name!r} has both data and binary_data_size")
                if header_length is None:
                    raise _bad(
                        f"input {tensor.name!r} has binary_data_size but the request has no "
                        "Inference-Header-Content-Length header"
                    )
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise _bad(f"input {tensor.name!r}: binary_data_size must be a byte count, got {size!r}")
                if offset + size > len(binary):
                    raise _bad(
                        f"input {tensor.name!r}: binary_data_size {size} goes past the end of the body "
                        f"({len(binary) - offset} bytes of binary data left)"
                    )
                arrays[index] = _from_binary(binary[offset : offset + size], tensor)
                offset += size
            elif _has_data(tensor):
                arrays[index] = _from_json(tensor)
            else:
                raise _bad(f"input {tensor.name!r} has neither data nor binary_data_size")
        if offset != len(binary):
            raise _bad(
                f"the body has {len(binary) - offset} bytes of binary data after the inputs' "
                "binary_data_size add up"
            )
        missing = [spec.name for spec, array in zip(self.inputs, arrays, strict=True) if array is None]
        if missing:
            raise _bad(f"expected {len(self.inputs)} inputs for model {self.name!r}, missing {missing}")
        complete = [a for a in arrays if a is not None]
        if self.batched:
            counts = {a.shape[0] for a in complete}
            if len(counts) != 1:
                raise _bad(f"the inputs' batch dimensions differ: {sorted(counts)}")
            (count,) = counts
            if count == 0:
                raise _bad("the batch has no rows (the first dimension is 0)")
            if count > self.max_rows:
                raise HTTPError(413, f"{count} rows is more than max_rows={self.max_rows}; split the batch")
        return request, complete

    def requested(self, request: _InferRequest) -> list[tuple[int, bool]]:
        """(output index, as binary) for each output to answer with, in order."""
        default_binary = _flag((request.parameters or {}).get("binary_data_output"), "binary_data_output")
        if request.outputs is None:
            return [(i, default_binary) for i in range(len(self.outputs))]
        chosen: list[tuple[int, bool]] = []
        for output in request.outputs:
            index = self._output_index.get(output.name)
            if index is None:
                known = ", ".join(s.name for s in self.outputs)
                raise _bad(
                    f"unexpected inference output {output.name!r} for model {self.name!r} (outputs: {known})"
                )
            parameters = output.parameters or {}
            if parameters.get("classification"):
                raise _bad("the classification extension is not supported; ask for the output itself")
            binary = parameters.get("binary_data")
            chosen.append((index, default_binary if binary is None else _flag(binary, "binary_data")))
        return chosen

    def respond(
        self, request: _InferRequest, outputs: list[Array], chosen: list[tuple[int, bool]]
    ) -> Response:
        entries: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for index, binary in chosen:
            spec, array = self.outputs[index], outputs[index]
            entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
            if binary:
                blob = _to_binary(array, spec)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = _to_json(array, spec)
            entries.append(entry)
        answer: dict[str, Any] = {"model_name": self.name, "model_version": self.version}
        if request.id is not None:
            answer["id"] = request.id
        answer["outputs"] = entries
        header = _json_encoder.encode(answer)
        if not blobs:
            return Response(header, media_type="application/json")
        return Response(
            b"".join([header, *blobs]),
            media_type="application/octet-stream",
            headers=[("inference-header-content-length", str(len(header)))],
        )


def _call_module(module: nn.Module, *tensors: Any) -> Any:
    return module(*tensors)


def _takes_parameters(fn: Forward) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    parameter = signature.parameters.get("parameters")
    return parameter is not None and parameter.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


def _handle(state: Mapping[str, Any], model: V2Model) -> Any:
    handle = state.get(model.resource)
    if handle is None or not hasattr(handle, "run"):
        raise HTTPError(
            503,
            f"model {model.name!r} is not ready: the state has no model handle under {model.resource!r}",
        )
    return handle


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"parameter {name} must be true or false, got {value!r}")
    return value


def _shape_fits(shape: Sequence[int], declared: Sequence[int]) -> bool:
    return len(shape) == len(declared) and all(
        d == -1 or d == s for s, d in zip(shape, declared, strict=True)
    )


def _check_input_header(tensor: _InputTensor, spec: TensorSpec, model: str) -> None:
    if tensor.datatype != spec.datatype:
        raise _bad(
            f"inference input {tensor.name!r} has datatype {tensor.datatype}, model {model!r} expects "
            f"{spec.datatype}"
        )
    if any(d < 0 for d in tensor.shape) or not _shape_fits(tensor.shape, spec.shape):
        raise _bad(
            f"unexpected shape for input {tensor.name!r} for model {model!r}: expected {list(spec.shape)} "
            f"(-1: any size), got {tensor.shape}"
        )


def _decoder(datatype: str, depth: int) -> msgspec.json.Decoder[Any]:
    decoder = _data_decoders.get((datatype, depth))
    if decoder is None:
        kind: Any = _JSON_ELEMENT[datatype]
        for _ in range(depth):
            kind = list[kind]
        decoder = _data_decoders[(datatype, depth)] = msgspec.json.Decoder(kind)
    return decoder


def _has_data(tensor: _InputTensor) -> bool:
    return len(tensor.data) > 0 and bytes(tensor.data) != b"null"


def _from_json(tensor: _InputTensor) -> Array:
    raw = bytes(tensor.data)
    depth = raw.count(b"[", 0, _first_value(raw))  # 1: flat, more: nested
    if depth > 1 and depth != len(tensor.shape):
        raise _bad(
            f"input {tensor.name!r}: data is nested {depth} deep; send it flat or nested as deep as "
            f"its shape {tensor.shape} has dimensions"
        )
    count = math.prod(tensor.shape)
    try:
        values = _decoder(tensor.datatype, max(depth, 1)).decode(raw)
    except msgspec.ValidationError as exc:
        raise _bad(
            f"input {tensor.name!r}: data is not a flat or a nested list of {tensor.datatype} values: {exc}"
        ) from None
    except msgspec.DecodeError as exc:
        raise _bad(f"input {tensor.name!r}: malformed data: {exc}") from None
    dtype = DATATYPES[tensor.datatype][0]
    try:
        if dtype is None:
            items = [value.encode() for value in _flatten(values, depth)]
            array = np.empty(len(items), dtype=object)
            array[:] = items
        else:
            array = np.asarray(values, dtype=dtype)
    except (ValueError, OverflowError) as exc:
        raise _bad(f"input {tensor.name!r}: data does not make a {tensor.datatype} tensor: {exc}") from None
    if dtype is not None and array.ndim > 1 and list(array.shape) != tensor.shape:
        raise _bad(
            f"input {tensor.name!r}: nested data has shape {list(array.shape)}, "
            f"the header says {tensor.shape}"
        )
    if array.size != count:
        raise _bad(f"input {tensor.name!r}: {array.size} values in data, shape {tensor.shape} needs {count}")
    return array.reshape(tensor.shape)


def _first_value(raw: bytes) -> int:
    """Where the first element starts: every `[` before it is one level of nesting."""
    return len(raw) - len(raw.lstrip(b"[ \t\r\n"))


def _flatten(values: Any, depth: int) -> list[Any]:
    for _ in range(depth - 1):
        values = [v for inner in values for v in inner]
    return list(values)


def _from_binary(data: memoryview, tensor: _InputTensor) -> Array:
    count = math.prod(tensor.shape)
    dtype = DATATYPES[tensor.datatype][0]
    if dtype is None:
        return _decode_bytes(data, count, tensor).reshape(tensor.shape)
    if len(data) != count * dtype.itemsize:
        raise _bad(
            f"input {tensor.name!r}: binary_data_size is {len(data)} bytes, shape {tensor.shape} of "
            f"{tensor.datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(tensor.shape)


def _decode_bytes(data: memoryview, count: int, tensor: _InputTensor) -> Array:
    """BYTES in binary: each element is a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise _bad(f"input {tensor.name!r}: BYTES data ends inside an element's 4-byte length")
        length = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(data):
            raise _bad(f"input {tensor.name!r}: a BYTES element of {length} bytes goes past its data")
        items.append(bytes(data[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise _bad(f"input {tensor.name!r}: {len(items)} BYTES elements, shape {tensor.shape} needs {count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def _to_numpy(value: Any, spec: TensorSpec) -> Array:
    dtype, torch_dtype = DATATYPES[spec.datatype]
    if dtype is None:
        items = value.tolist() if isinstance(value, np.ndarray | torch.Tensor) else value
        array = np.empty(np.shape(np.asarray(items, dtype=object)), dtype=object)
        array[...] = np.asarray(items, dtype=object)
        for index, item in np.ndenumerate(array):
            if isinstance(item, str):
                array[index] = item.encode()
            elif not isinstance(item, bytes):
                raise RuntimeError(
                    f"BYTES output {spec.name!r} holds a {type(item).__name__}, not bytes or str"
                )
        return array
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            value = value.detach()
        if value.dtype != torch_dtype or value.device.type != "cpu":
            value = value.to(device="cpu", dtype=torch_dtype)
        out: Array = value.numpy()
        return out
    return np.asarray(value, dtype=dtype)


def _to_json(array: Array, spec: TensorSpec) -> list[Any]:
    flat: list[Any] = array.ravel().tolist()
    if spec.datatype != "BYTES":
        return flat
    try:
        return [item.decode() for item in flat]
    except UnicodeDecodeError:
        raise _bad(
            f"output {spec.name!r} holds bytes that are not UTF-8: ask for it with binary_data"
        ) from None


def _to_binary(array: Array, spec: TensorSpec) -> bytes:
    if spec.datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return b"".join(len(item).to_bytes(4, "little") + item for item in array.ravel().tolist())


def _zeros(spec: TensorSpec, rows: int) -> Array:
    dtype = DATATYPES[spec.datatype][0]
    shape = [rows if i == 0 and d == -1 else 1 if d == -1 else d for i, d in enumerate(spec.shape)]
    return np.zeros(shape, dtype=dtype)


# -- the routes -----------------------------------------------------------------------------------

Handler = Callable[[Request], Any]


class _Endpoint:
    """A route's endpoint that answers every error in the protocol's `{"error": "..."}` shape."""

    def __init__(self, handler: Handler, resources: Sequence[Resource] = ()) -> None:
        self.handler = handler
        self.resources = tuple(resources)

    async def __call__(self, request: Request) -> Response:
        try:
            response: Response = await self.handler(request)
            return response
        except HTTPError as exc:
            return _error(exc.status, exc.message, exc.headers)
        except ClientDisconnect:
            raise
        except Exception:
            logger.exception("unhandled error in %s %s", request.method, request.path)
            return _error(500, "internal server error; the traceback is in the server log")


class _Server:
    """What the routes of one `kserve_routes()` call share: the models and, once started, the host."""

    def __init__(self, models: Sequence[V2Model], server_name: str) -> None:
        self.models = {model.name: model for model in models}
        self.server_name = server_name
        self.host: Any = None

    @asynccontextmanager
    async def attach(self, host: Any) -> AsyncIterator[None]:
        self.host = host
        try:
            yield
        finally:
            self.host = None

    async def server_metadata(self, request: Request) -> Response:
        return Response.json(
            {"name": self.server_name, "version": __version__, "extensions": list(EXTENSIONS)}
        )

    async def live(self, request: Request) -> Response:
        return Response.json({"live": True})

    async def ready(self, request: Request) -> Response:
        host = self.host
        if host is None:
            raise HTTPError(503, "the server has not started")
        readiness = host.readiness() if hasattr(host, "readiness") else None
        if readiness is not None and readiness.status != "ready":
            reason = f": {readiness.reason}" if readiness.reason else ""
            raise HTTPError(503, f"the server is not ready ({readiness.status}{reason})")
        waiting = [name for name, model in self.models.items() if not model.ready(request.state)]
        if waiting:
            raise HTTPError(503, f"models not ready: {', '.join(waiting)}")
        return Response.json({"ready": True})

    def model_metadata(self, model: V2Model) -> Handler:
        static = model.metadata()

        async def metadata(request: Request) -> Response:
            # The version of the weights serving now (it changes with a reload), beside the
            # protocol's own `versions` (the route's, fixed): `parameters.model_version`.
            version = getattr(request.state.get(model.resource), "version", None)
            if version is None:
                return Response.json(static)
            return Response.json({**static, "parameters": {"model_version": version}})

        return metadata

    def model_config(self, model: V2Model) -> Handler:
        body = _json_encoder.encode(model.config())

        async def config(request: Request) -> Response:
            return Response(body, media_type="application/json")

        return config

    def model_ready(self, model: V2Model) -> Handler:
        async def ready(request: Request) -> Response:
            if self.host is None or not model.ready(request.state):
                raise HTTPError(503, f"model {model.name!r} is not ready")
            return Response.json({"name": model.name, "ready": True})

        return ready

    def infer(self, model: V2Model) -> Handler:
        async def infer(request: Request) -> Response:
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding != "identity":
                raise HTTPError(415, f"Content-Encoding {encoding!r} is not supported; send the body as is")
            if model.max_body_bytes is not None:
                request.max_body_bytes = model.max_body_bytes
            body = await request.body()
            parsed, arrays = model.parse(body, request.headers.get(HEADER_LENGTH))
            chosen = model.requested(parsed)
            parameters = {
                key: value
                for key, value in (parsed.parameters or {}).items()
                if key not in _RESERVED_PARAMETERS
            }
            outputs = await model.run(request.state, arrays, parameters, request)
            return model.respond(parsed, outputs, chosen)

        return infer

    async def not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every other path under `/v2`: the protocol's 404 (an unknown model, version or route)."""
        if scope["type"] != "http":
            if (await receive()).get("type") == "websocket.connect":
                await send_message(
                    send, {"type": "websocket.close", "code": 1008, "reason": "no websocket here"}
                )
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        parts = (path[len(root) :] if path.startswith(root) else path).strip("/").split("/")
        message = f"no route for {path!r} in the Open Inference Protocol"
        if len(parts) >= 2 and parts[0] == "models":
            model = self.models.get(parts[1])
            if model is None:
                message = f"Request for unknown model: '{parts[1]}' is not found"
            elif len(parts) >= 4 and parts[2] == "versions" and parts[3] != model.version:
                message = f"Request for unknown model: '{parts[1]}' version {parts[3]} is not found"
        response = _error(404, message)
        await settle_body(response, Request(scope, receive, {}, max_body_bytes=None))
        await response.send(send, head=scope.get("method") == "HEAD")


def kserve_routes(*models: V2Model, server_name: str = "asgi_host") -> list[Route | Mount]:
    """The Open Inference Protocol's routes for `models`: add them to the host's `routes`.

    Exact routes for `/v2`, `/v2/health/live`, `/v2/health/ready` and, per model,
    `/v2/models/{name}` (and `/versions/{version}`) with `/ready`, `/infer` and `/config`,
    then a `Mount("/v2", ...)` for the protocol's 404 on any other path under `/v2`. The
    endpoints carry their resources (each model's output check and batcher, and the one that
    gives `/v2/health/ready` the host's readiness), so the host starts them after the models.
    """
    if not models:
        raise ValueError("kserve_routes needs at least one V2Model")
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"two v2 models share a name in {names}")
    server = _Server(models, server_name)
    attach = Resource(server.attach, name="kserve v2 server")
    routes: list[Route | Mount] = [
        Route("/v2", _Endpoint(server.server_metadata, [attach])),
        Route("/v2/health/live", _Endpoint(server.live)),
        Route("/v2/health/ready", _Endpoint(server.ready)),
    ]
    for model in models:
        base = f"/v2/models/{model.name}"
        for prefix, resources in ((base, model.resources), (f"{base}/versions/{model.version}", ())):
            routes += [
                Route(prefix, _Endpoint(server.model_metadata(model))),
                Route(f"{prefix}/ready", _Endpoint(server.model_ready(model))),
                Route(f"{prefix}/config", _Endpoint(server.model_config(model))),
                Route(f"{prefix}/infer", _Endpoint(server.infer(model), resources), methods=["POST"]),
            ]
    routes.append(Mount("/v2", server.not_found))
    return routes
