"""`V2Model`: one `TorchModel` as a model of the Open Inference Protocol, its requests and answers."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import numpy as np
import torch
from torch import nn

from .._batching import Batching
from .._errors import HTTPError
from .._http import Request, Response
from .._resources import Resource
from .._rows import Rows
from .._view import HostView
from ._tensors import (
    Array,
    InferRequest,
    TensorSpec,
    bad,
    check_finite,
    check_input_header,
    decode_request,
    flag,
    from_binary,
    from_json,
    has_data,
    shape_fits,
    to_binary,
    to_json,
    to_numpy,
    zeros,
)

__all__ = ["V2Model"]

Forward = Callable[..., Any]

_json_encoder = msgspec.json.Encoder()
# Request parameters the protocol (or Triton) gives a meaning of its own: never handed to `fn`.
RESERVED_PARAMETERS = frozenset(
    {"binary_data_output", "sequence_id", "sequence_start", "sequence_end", "priority", "timeout"}
)


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
    Serve it with `KServe(model, ...)`.
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
        self.rows: Rows[tuple[Array, ...], tuple[Array, ...]] = Rows(
            self._forward_rows, model=resource, batching=batching, name=f"{name} v2"
        )
        self.resources: tuple[Resource, ...] = (
            Resource(self._check, name=f"{name} v2 output check"),
            *self.rows.resources,
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
        """Its model answers now: there, not shutting down, and (a `ModelPool`'s) resident."""
        handle = state.get(self.resource)
        return self.available(state) and getattr(handle, "ready", True)

    def available(self, state: Mapping[str, Any]) -> bool:
        """A request would be answered: ready, or a `ModelPool`'s model that loads when asked for."""
        handle = state.get(self.resource)
        return handle is not None and not getattr(handle, "closing", False)

    # -- the forward pass, on the model's thread ------------------------------------------------

    def _forward(
        self,
        module: nn.Module,
        arrays: Sequence[Array],
        parameters: Mapping[str, Any] | None,
        device: torch.device,
        dtype: torch.dtype,
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
        arrays = [to_numpy(value, spec) for spec, value in zip(self.outputs, values, strict=True)]
        for spec, array in zip(self.outputs, arrays, strict=True):
            if not shape_fits(array.shape, spec.shape) or (rows is not None and array.shape[0] != rows):
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
        outputs = self._forward(module, arrays, None, device, dtype)
        return list(zip(*(list(output) for output in outputs), strict=True))

    async def run(
        self, arrays: list[Array], parameters: Mapping[str, Any] | None, request: Request
    ) -> list[Array]:
        """The outputs for one request's inputs (in declared order), through the batcher if any."""
        count = arrays[0].shape[0] if self.batched else 1
        if self.rows.batcher is not None:
            # Batched: each row its own item, so the batcher can pass rows of many requests at once.
            per_row = await self.rows.run(list(zip(*(list(a) for a in arrays), strict=True)), request)
            if len(per_row) != count:
                raise RuntimeError(f"the model returned {len(per_row)} rows for {count}")
            return [np.stack([row[i] for row in per_row]) for i in range(len(self.outputs))]
        # Unbatched: the request's arrays in one pass, with no Python work per row.
        outputs: list[Array] = await self.rows.call(request, self._forward, arrays, parameters, rows=count)
        return outputs

    @asynccontextmanager
    async def _check(self, host: HostView) -> AsyncIterator[None]:
        # After the model loaded: outputs that do not fit the declaration fail startup with the
        # reason, instead of every request answering 500.
        state = host.state
        handle: Any = state.get(self.resource)
        if not hasattr(handle, "run"):
            raise RuntimeError(
                f"v2 model {self.name!r} runs the model under the state key {self.resource!r}, which no "
                f"resource yielded (keys: {', '.join(map(repr, state)) or 'none'}): pass resource= the "
                "TorchModel's name, and the TorchModel to the host's resources"
            )
        if not self.check_outputs or any(spec.datatype == "BYTES" for spec in self.inputs):
            yield
            return
        checks = getattr(handle, "checks", None)
        if checks is None:
            await self._check_outputs(handle)
            yield
            return
        # A `ModelPool`'s model: checked on each version it loads (a failure fails that load), not
        # loaded here for it; checked now if it is resident already (pinned).
        checks.append(self._check_outputs)
        try:
            if handle.ready:
                async with handle.use() as version:  # held: not evicted meanwhile
                    await self._check_outputs(version)
            yield
        finally:
            checks.remove(self._check_outputs)

    async def _check_outputs(self, handle: Any) -> None:
        arrays = [zeros(spec, 2 if self.batched else 1) for spec in self.inputs]
        try:
            await handle.run(self._forward, arrays, None, handle.device, handle.dtype)
        except Exception as exc:
            raise RuntimeError(
                f"v2 model {self.name!r}: fn on zeros of the declared input shapes failed: {exc} "
                "(fix fn or the TensorSpecs, or pass check_outputs=False)"
            ) from exc

    # -- a request ------------------------------------------------------------------------------

    def parse(self, body: bytes, header_length: str | None) -> tuple[InferRequest, list[Array]]:
        """The request and its input arrays in declared order; `HTTPError` 400/413 when invalid."""
        if header_length is not None:
            digits = header_length.strip()
            # ASCII digits, and few enough for a byte count: int() refuses more than 4,300 of them.
            if not (digits.isascii() and digits.isdigit()) or len(digits) > 19:
                shown = header_length if len(header_length) <= 40 else f"{header_length[:40]}..."
                raise bad(f"Inference-Header-Content-Length must be a byte count, got {shown!r}")
            length = int(digits)
            if length > len(body):
                raise bad(
                    f"Inference-Header-Content-Length is {length} but the body has only {len(body)} bytes"
                )
            header, binary = body[:length], memoryview(body)[length:]
        else:
            header, binary = body, memoryview(b"")
        request = decode_request(header)
        arrays: list[Array | None] = [None] * len(self.inputs)
        offset = 0
        for tensor in request.inputs:
            index = self._input_index.get(tensor.name)
            if index is None:
                known = ", ".join(s.name for s in self.inputs)
                raise bad(
                    f"unexpected inference input {tensor.name!r} for model {self.name!r} (inputs: {known})"
                )
            if arrays[index] is not None:
                raise bad(f"input {tensor.name!r} is given twice")
            check_input_header(tensor, self.inputs[index], self.name)
            size = (tensor.parameters or {}).get("binary_data_size")
            if size is not None:
                if has_data(tensor):
                    raise bad(f"input {tensor.name!r} has both data and binary_data_size")
                if header_length is None:
                    raise bad(
                        f"input {tensor.name!r} has binary_data_size but the request has no "
                        "Inference-Header-Content-Length header"
                    )
                if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                    raise bad(f"input {tensor.name!r}: binary_data_size must be a byte count, got {size!r}")
                if offset + size > len(binary):
                    raise bad(
                        f"input {tensor.name!r}: binary_data_size {size} goes past the end of the body "
                        f"({len(binary) - offset} bytes of binary data left)"
                    )
                arrays[index] = from_binary(binary[offset : offset + size], tensor)
                offset += size
            elif has_data(tensor):
                arrays[index] = from_json(tensor)
            else:
                raise bad(f"input {tensor.name!r} has neither data nor binary_data_size")
        if offset != len(binary):
            raise bad(
                f"the body has {len(binary) - offset} bytes of binary data after the inputs' "
                "binary_data_size add up"
            )
        missing = [spec.name for spec, array in zip(self.inputs, arrays, strict=True) if array is None]
        if missing:
            raise bad(f"expected {len(self.inputs)} inputs for model {self.name!r}, missing {missing}")
        complete = [a for a in arrays if a is not None]
        for spec, array in zip(self.inputs, complete, strict=True):
            check_finite(array, f"input {spec.name!r}")
        if self.batched:
            counts = {a.shape[0] for a in complete}
            if len(counts) != 1:
                raise bad(f"the inputs' batch dimensions differ: {sorted(counts)}")
            (count,) = counts
            if count == 0:
                raise bad("the batch has no rows (the first dimension is 0)")
            if count > self.max_rows:
                raise HTTPError(413, f"{count} rows is more than max_rows={self.max_rows}; split the batch")
        return request, complete

    def requested(self, request: InferRequest) -> list[tuple[int, bool]]:
        """(output index, as binary) for each output to answer with, in order."""
        default_binary = flag((request.parameters or {}).get("binary_data_output"), "binary_data_output")
        if request.outputs is None:
            return [(i, default_binary) for i in range(len(self.outputs))]
        chosen: list[tuple[int, bool]] = []
        asked: set[int] = set()
        for output in request.outputs:
            index = self._output_index.get(output.name)
            if index is None:
                known = ", ".join(s.name for s in self.outputs)
                raise bad(
                    f"unexpected inference output {output.name!r} for model {self.name!r} (outputs: {known})"
                )
            if index in asked:  # each answered once: repeats would multiply the response
                raise bad(f"output {output.name!r} is asked for twice")
            asked.add(index)
            parameters = output.parameters or {}
            if parameters.get("classification"):
                raise bad("the classification extension is not supported; ask for the output itself")
            binary = parameters.get("binary_data")
            chosen.append((index, default_binary if binary is None else flag(binary, "binary_data")))
        return chosen

    def respond(
        self, request: InferRequest, outputs: list[Array], chosen: list[tuple[int, bool]]
    ) -> Response:
        entries: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for index, binary in chosen:
            spec, array = self.outputs[index], outputs[index]
            check_finite(array, f"the model's output {spec.name!r} (inputs outside what it can compute)")
            entry: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype, "shape": list(array.shape)}
            if binary:
                blob = to_binary(array, spec)
                entry["parameters"] = {"binary_data_size": len(blob)}
                blobs.append(blob)
            else:
                entry["data"] = to_json(array, spec)
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
