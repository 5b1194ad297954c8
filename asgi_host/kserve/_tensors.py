"""The Open Inference Protocol's tensors: datatypes, declarations, and their JSON and binary codecs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import torch

from .._errors import HTTPError

__all__ = [
    "DATATYPES",
    "Array",
    "InferRequest",
    "InputTensor",
    "TensorSpec",
    "bad",
    "check_input_header",
    "decode_request",
    "flag",
    "from_binary",
    "from_json",
    "has_data",
    "shape_fits",
    "to_binary",
    "to_json",
    "to_numpy",
    "zeros",
]

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
class InputTensor(msgspec.Struct):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty: not given


class _RequestedOutput(msgspec.Struct):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(msgspec.Struct):
    inputs: list[InputTensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[_RequestedOutput] | None = None


_request_decoder = msgspec.json.Decoder(InferRequest)
_data_decoders: dict[tuple[str, int], msgspec.json.Decoder[Any]] = {}


def bad(message: str) -> HTTPError:
    return HTTPError(400, message)


def check_finite(array: Array, what: str) -> None:
    """A float tensor with NaN or an infinity (sent, or out of range for its type: 1e39 as FP32) is
    422, as `/predict` answers it: never computed on, never answered as `null`."""
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        where = np.argwhere(~np.isfinite(array))[0].tolist()
        raise HTTPError(
            422,
            f"{what} is not finite (NaN or infinity, or out of range for its type) at index {where}",
        )


def flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"parameter {name} must be true or false, got {value!r}")
    return value


def shape_fits(shape: Sequence[int], declared: Sequence[int]) -> bool:
    return len(shape) == len(declared) and all(
        d == -1 or d == s for s, d in zip(shape, declared, strict=True)
    )


def check_input_header(tensor: InputTensor, spec: TensorSpec, model: str) -> None:
    if tensor.datatype != spec.datatype:
        raise bad(
            f"inference input {tensor.name!r} has datatype {tensor.datatype}, model {model!r} expects "
            f"{spec.datatype}"
        )
    if any(d < 0 for d in tensor.shape) or not shape_fits(tensor.shape, spec.shape):
        raise bad(
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


def has_data(tensor: InputTensor) -> bool:
    return len(tensor.data) > 0 and bytes(tensor.data) != b"null"


def from_json(tensor: InputTensor) -> Array:
    raw = bytes(tensor.data)
    depth = raw.count(b"[", 0, _first_value(raw))  # 1: flat, more: nested
    if depth > 1 and depth != len(tensor.shape):
        raise bad(
            f"input {tensor.name!r}: data is nested {depth} deep; send it flat or nested as deep as "
            f"its shape {tensor.shape} has dimensions"
        )
    count = math.prod(tensor.shape)
    try:
        values = _decoder(tensor.datatype, max(depth, 1)).decode(raw)
    except msgspec.ValidationError as exc:
        raise bad(
            f"input {tensor.name!r}: data is not a flat or a nested list of {tensor.datatype} values: {exc}"
        ) from None
    except msgspec.DecodeError as exc:
        raise bad(f"input {tensor.name!r}: malformed data: {exc}") from None
    except RecursionError:
        raise bad(f"input {tensor.name!r}: malformed data: nested too deeply") from None
    dtype = DATATYPES[tensor.datatype][0]
    try:
        if dtype is None:
            items = [value.encode() for value in _flatten(values, depth)]
            array = np.empty(len(items), dtype=object)
            array[:] = items
        else:
            with np.errstate(over="ignore"):  # out of range for the type is infinity: 422 below
                array = np.asarray(values, dtype=dtype)
    except (ValueError, OverflowError) as exc:
        raise bad(f"input {tensor.name!r}: data does not make a {tensor.datatype} tensor: {exc}") from None
    if dtype is not None and array.ndim > 1 and list(array.shape) != tensor.shape:
        raise bad(
            f"input {tensor.name!r}: nested data has shape {list(array.shape)}, "
            f"the header says {tensor.shape}"
        )
    if array.size != count:
        raise bad(f"input {tensor.name!r}: {array.size} values in data, shape {tensor.shape} needs {count}")
    return array.reshape(tensor.shape)


def _first_value(raw: bytes) -> int:
    """Where the first element starts: every `[` before it is one level of nesting."""
    return len(raw) - len(raw.lstrip(b"[ \t\r\n"))


def _flatten(values: Any, depth: int) -> list[Any]:
    for _ in range(depth - 1):
        values = [v for inner in values for v in inner]
    return list(values)


def from_binary(data: memoryview, tensor: InputTensor) -> Array:
    count = math.prod(tensor.shape)
    dtype = DATATYPES[tensor.datatype][0]
    if dtype is None:
        return _decode_bytes(data, count, tensor).reshape(tensor.shape)
    if len(data) != count * dtype.itemsize:
        raise bad(
            f"input {tensor.name!r}: binary_data_size is {len(data)} bytes, shape {tensor.shape} of "
            f"{tensor.datatype} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(tensor.shape)


def _decode_bytes(data: memoryview, count: int, tensor: InputTensor) -> Array:
    """BYTES in binary: each element is a 4-byte little-endian length, then that many bytes."""
    items: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise bad(f"input {tensor.name!r}: BYTES data ends inside an element's 4-byte length")
        length = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(data):
            raise bad(f"input {tensor.name!r}: a BYTES element of {length} bytes goes past its data")
        items.append(bytes(data[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise bad(f"input {tensor.name!r}: {len(items)} BYTES elements, shape {tensor.shape} needs {count}")
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def to_numpy(value: Any, spec: TensorSpec) -> Array:
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


def to_json(array: Array, spec: TensorSpec) -> list[Any]:
    flat: list[Any] = array.ravel().tolist()
    if spec.datatype != "BYTES":
        return flat
    try:
        return [item.decode() for item in flat]
    except UnicodeDecodeError:
        raise bad(
            f"output {spec.name!r} holds bytes that are not UTF-8: ask for it with binary_data"
        ) from None


def to_binary(array: Array, spec: TensorSpec) -> bytes:
    if spec.datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return b"".join(len(item).to_bytes(4, "little") + item for item in array.ravel().tolist())


def zeros(spec: TensorSpec, rows: int) -> Array:
    dtype = DATATYPES[spec.datatype][0]
    shape = [rows if i == 0 and d == -1 else 1 if d == -1 else d for i, d in enumerate(spec.shape)]
    return np.zeros(shape, dtype=dtype)


def decode_request(header: bytes) -> InferRequest:
    try:
        return _request_decoder.decode(header)
    except msgspec.DecodeError as exc:
        raise bad(f"malformed inference request: {exc}") from None
    except RecursionError:  # msgspec's answer to JSON nested thousands deep (data, parameters)
        raise bad("malformed inference request: nested too deeply") from None
