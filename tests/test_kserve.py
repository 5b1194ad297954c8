"""The Open Inference Protocol (KServe v2) routes, in process with the test kit."""

from __future__ import annotations

import math
import struct
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
import msgspec
import numpy as np
import pytest
import torch
from torch import nn

import asgi_host
from asgi_host import Batching, Host, LifespanFailed, Route
from asgi_host.kserve import KServe, TensorSpec, V2Model
from asgi_host.model import TorchModel
from asgi_host.testing import HTTPResult, LifespanDriver
from examples.app import IrisConfig, make_app
from tests.test_doc_snippets import python_block

pytestmark = pytest.mark.anyio

SETOSA = [5.1, 3.5, 1.4, 0.2]
INFER = "/v2/models/iris/infer"


def host_with(*models: V2Model, dtype: torch.dtype | None = None, **host_kwargs: Any) -> Host:
    """A host whose model hands its input back (its dtype: what FP32 inputs are cast to)."""
    return Host(
        resources=[TorchModel(nn.Identity, None, name="model", dtype=dtype)],
        routes=KServe(*models).routes(),
        **host_kwargs,
    )


def binary_body(header: Mapping[str, Any], *blobs: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    head = msgspec.json.encode(header)
    return head + b"".join(blobs), [("inference-header-content-length", str(len(head)))]


def split_binary(result: HTTPResult) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The JSON header of a binary answer and each output's bytes by name."""
    length = result.header("inference-header-content-length")
    assert length is not None, result.headers
    header: dict[str, Any] = msgspec.json.decode(result.body[: int(length)])
    blobs, offset = {}, int(length)
    for output in header["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blobs[output["name"]] = result.body[offset : offset + size]
            offset += size
    assert offset == len(result.body)
    return header, blobs


def bytes_elements(items: Sequence[bytes]) -> bytes:
    """BYTES in binary, as Triton's client writes them (checked against it below)."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_bytes_elements_is_what_tritonclient_sends() -> None:
    utils = pytest.importorskip("tritonclient.utils")
    items = [b"\xff\x00raw", b"", b"xyz"]
    assert utils.serialize_byte_tensor(np.array(items, dtype=object)).item() == bytes_elements(items)
    assert utils.deserialize_bytes_tensor(bytes_elements(items)).tolist() == items


@pytest.fixture
async def iris() -> AsyncIterator[LifespanDriver]:
    async with LifespanDriver(make_app(IrisConfig(metrics=False, max_rows=200))) as lifespan:
        yield lifespan


# -- the iris example -------------------------------------------------------------------------------


async def test_metadata_health_and_readiness(iris: LifespanDriver) -> None:
    server = await iris.request("GET", "/v2")
    assert server.status == 200
    assert server.json() == {
        "name": "asgi_host",
        "version": asgi_host.__version__,
        "extensions": ["binary_tensor_data"],
    }
    assert (await iris.request("GET", "/v2/health/live")).status == 200
    assert (await iris.request("GET", "/v2/health/ready")).status == 200
    for base in ("/v2/models/iris", "/v2/models/iris/versions/1"):
        meta = await iris.request("GET", base)
        assert meta.json() == {
            "name": "iris",
            "versions": ["1"],
            "platform": "pytorch",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}],
            # The weights' version (sha256 of the file, 12 digits): what a reload changes.
            "parameters": {"model_version": iris.state["model"].version},
        }
        assert len(iris.state["model"].version) == 12
        assert (await iris.request("GET", base + "/ready")).status == 200
        config = (await iris.request("GET", base + "/config")).json()
        assert config["max_batch_size"] == 200
        assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [4]}]


async def test_json_infer_matches_predict_and_echoes_the_id(iris: LifespanDriver) -> None:
    rows = [SETOSA, [6.7, 3.0, 5.2, 2.3]]
    predict = (await iris.request("POST", "/predict", json={"inputs": rows})).json()["outputs"]
    for data in (rows, [v for row in rows for v in row]):  # nested and flat
        result = await iris.request(
            "POST",
            INFER,
            json={
                "id": "req-7",
                "inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": data}],
            },
        )
        assert result.status == 200, result.body
        answer = result.json()
        assert answer["id"] == "req-7"
        assert answer["model_name"] == "iris"
        assert answer["model_version"] == "1"
        (output,) = answer["outputs"]
        assert output["name"] == "probabilities"
        assert output["datatype"] == "FP32"
        assert output["shape"] == [2, 3]
        assert output["data"] == [p for row in predict for p in row]


async def test_binary_in_and_out(iris: LifespanDriver) -> None:
    rows = np.array([SETOSA, [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)
    body, headers = binary_body(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        rows.tobytes(),
    )
    result = await iris.request("POST", INFER, body=body, headers=headers)
    assert result.status == 200, result.body
    assert result.header("content-type") == "application/octet-stream"
    header, blobs = split_binary(result)
    assert header["outputs"][0]["shape"] == [3, 3]
    probabilities = np.frombuffer(blobs["probabilities"], dtype="<f4").reshape(3, 3)
    predict = (await iris.request("POST", "/predict", json={"inputs": rows.tolist()})).json()["outputs"]
    np.testing.assert_array_equal(probabilities, np.array(predict, dtype=np.float32))
    assert probabilities.argmax(axis=1).tolist() == [0, 2, 1]


async def test_errors_have_the_protocol_shape_and_status(iris: LifespanDriver) -> None:
    def tensor(**changes: Any) -> dict[str, Any]:
        return {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SETOSA, **changes}]}

    cases: list[tuple[dict[str, Any] | bytes, int, str]] = [
        (b"{", 400, "malformed inference request"),
        (b'{"inputs": 3}', 400, "malformed inference request"),
        (tensor(shape=[1, 3], data=SETOSA[:3]), 400, "unexpected shape for input 'input'"),
        (tensor(shape=[4]), 400, "unexpected shape"),
        (tensor(shape=[-1, 4]), 400, "unexpected shape"),
        (tensor(shape=[2, 4]), 400, "4 values in data, shape [2, 4] needs 8"),
        (tensor(data=[[5.1, 3.5], [1.4, 0.2]]), 400, "nested data has shape [2, 2]"),
        (tensor(data=[[SETOSA]]), 400, "data is nested 3 deep; send it flat or nested as deep as"),
        (tensor(data=[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]] * 4), 400, "nested 20 deep"),
        (tensor(data=[[5.1, 3.5, 1.4], [0.2]]), 400, "does not make a FP32 tensor"),
        (tensor(data=["a", "b", "c", "d"]), 400, "not a flat or a nested list of FP32"),
        (tensor(data=5.1), 400, "not a flat or a nested list"),
        (tensor(datatype="INT32", data=[1, 2, 3, 4]), 400, "has datatype INT32, model 'iris' expects FP32"),
        (tensor(name="x"), 400, "unexpected inference input 'x'"),
        (tensor(data=None), 400, "neither data nor binary_data_size"),
        (tensor(parameters={"binary_data_size": 16}, data=None), 400, "no Inference-Header-Content-Length"),
        ({"inputs": []}, 400, "missing ['input']"),
        (
            {**tensor(), "outputs": [{"name": "logits"}]},
            400,
            "unexpected inference output 'logits' for model 'iris' (outputs: probabilities)",
        ),
        (
            {**tensor(), "outputs": [{"name": "probabilities", "parameters": {"binary_data": "yes"}}]},
            400,
            "binary_data must be true or false",
        ),
        (
            {**tensor(), "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]},
            400,
            "classification extension is not supported",
        ),
        (tensor(shape=[0, 4], data=[]), 400, "no rows"),
        (tensor(shape=[201, 4], data=SETOSA * 201), 413, "201 rows is more than max_rows=200"),
        # Each output once: repeats would multiply the answer (4,000 of them: 262 MB from 125 KB).
        (
            {**tensor(), "outputs": [{"name": "probabilities"}] * 2},
            400,
            "output 'probabilities' is asked for twice",
        ),
        # Nested past msgspec's recursion limit: a 400, not the RecursionError's 500.
        (
            b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": '
            + b"[" * 10_000
            + b"]" * 10_000
            + b"}]}",
            400,
            "nested too deeply",
        ),
        (
            msgspec.json.encode(tensor())[:-1]
            + b', "parameters": {"p": '
            + b"[" * 10_000
            + b"]" * 10_000
            + b"}}",
            400,
            "nested too deeply",
        ),
        # Not finite, as /predict answers it: 422.
        (tensor(data=[5.1, 1e39, 1.4, 0.2]), 422, "input 'input' is not finite"),
    ]
    for body, status, message in cases:
        raw = body if isinstance(body, bytes) else msgspec.json.encode(body)
        result = await iris.request("POST", INFER, body=raw, headers=[("content-type", "application/json")])
        assert result.status == status, (body, result.body)
        error = result.json()["error"]
        assert isinstance(error, str), result.body
        assert message in error, (body, error)


async def test_binary_framing_errors_are_400(iris: LifespanDriver) -> None:
    row = np.array([SETOSA], dtype=np.float32).tobytes()

    def header(size: Any, shape: list[int] | None = None) -> dict[str, Any]:
        return {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape or [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }

    head = msgspec.json.encode(header(16))
    cases: list[tuple[bytes, str, str]] = [
        (head + row, "abc", "must be a byte count"),
        (head + row, "-5", "must be a byte count"),
        (head + row, "\u00b2", "must be a byte count"),  # a digit to str.isdigit, not to int()
        (head + row, "1" * 5000, "must be a byte count"),  # past int()'s 4,300-digit limit
        (head + row, "9" * 20, "must be a byte count"),
        (head + row, str(len(head) + 100), "but the body has only"),
        (head + row, str(len(head) - 1), "malformed inference request"),
        (head + row + b"xx", str(len(head)), "2 bytes of binary data after"),
        (head + row[:8], str(len(head)), "goes past the end of the body"),
    ]
    for size, message in (
        (12, "binary_data_size is 12 bytes, shape [1, 4] of FP32 needs 16"),
        (-1, "byte count"),
    ):
        wrong = msgspec.json.encode(header(size))
        cases.append((wrong + row[: max(size, 0)], str(len(wrong)), message))
    for body, length, message in cases:
        result = await iris.request(
            "POST", INFER, body=body, headers=[("inference-header-content-length", length)]
        )
        assert result.status == 400, (message, result.body)
        assert message in result.json()["error"]


async def test_unknown_models_versions_and_paths_are_404(iris: LifespanDriver) -> None:
    for method, path, message in [
        ("GET", "/v2/models/resnet", "Request for unknown model: 'resnet' is not found"),
        ("POST", "/v2/models/resnet/infer", "unknown model: 'resnet'"),
        ("GET", "/v2/models/iris/versions/2/ready", "'iris' version 2 is not found"),
        ("GET", "/v2/repository/index", "no route for '/v2/repository/index'"),
    ]:
        result = await iris.request(method, path, json={"inputs": []} if method == "POST" else None)
        assert result.status == 404
        assert result.json() == {"error": result.json()["error"]}
        assert message in result.json()["error"]
        assert result.header("connection") is None  # the body was read: the connection stays usable


async def test_body_over_the_limit_is_413_in_the_protocol_shape() -> None:
    app = make_app(IrisConfig(metrics=False, max_body_bytes=1000))
    async with LifespanDriver(app) as lifespan:
        body = msgspec.json.encode(
            {"inputs": [{"name": "input", "shape": [100, 4], "datatype": "FP32", "data": SETOSA * 100}]}
        )
        result = await lifespan.request("POST", INFER, body=body)
        assert result.status == 413
        assert result.json() == {"error": "request body is larger than max_body_bytes=1000"}


async def test_compressed_bodies_are_refused(iris: LifespanDriver) -> None:
    result = await iris.request("POST", INFER, body=b"\x1f\x8b", headers=[("content-encoding", "gzip")])
    assert result.status == 415
    assert "Content-Encoding 'gzip'" in result.json()["error"]


async def test_with_batching_requests_share_passes_and_get_their_own_rows() -> None:
    app = make_app(IrisConfig(metrics=False, batching=Batching(max_wait_s=0.05)))
    rows = [SETOSA, [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5], [4.9, 3.0, 1.4, 0.2]]
    async with LifespanDriver(app) as lifespan:
        expected = (await lifespan.request("POST", "/predict", json={"inputs": rows})).json()["outputs"]
        passes = lifespan.state["model"].forward_passes
        results: dict[int, HTTPResult] = {}

        async def send(i: int) -> None:
            tensor = {"name": "input", "shape": [i + 1, 4], "datatype": "FP32", "data": rows[: i + 1]}
            results[i] = await lifespan.request("POST", INFER, json={"inputs": [tensor]})

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(send, i)
        for i, result in results.items():
            assert result.status == 200, result.body
            output = result.json()["outputs"][0]
            assert output["shape"] == [i + 1, 3]
            assert np.allclose(np.array(output["data"]).reshape(i + 1, 3), expected[: i + 1], atol=1e-6)
        assert lifespan.state["model"].forward_passes - passes < 4  # they did share passes


# -- datatypes, on a model that hands its inputs back -----------------------------------------------

NUMERIC: dict[str, list[Any]] = {
    "FP32": [0.5, -1.25, 3.0e10],
    "FP16": [0.5, -1.25, 2048.0],
    "FP64": [0.1, -1e300, 2.0],
    "INT8": [-128, 0, 127],
    "UINT8": [0, 7, 255],
    "INT16": [-32768, 1, 32767],
    "INT32": [-(2**31), 0, 2**31 - 1],
    "INT64": [-(2**63), 5, 2**63 - 1],
    "BOOL": [True, False, True],
}


def echo(datatype: str) -> V2Model:
    return V2Model(
        name="echo",
        inputs=[TensorSpec("x", datatype, [-1, 3])],
        outputs=[TensorSpec("y", datatype, [-1, 3])],
        fn=lambda module, x: x.clone(),
    )


@pytest.mark.parametrize("datatype", list(NUMERIC))
async def test_each_numeric_datatype_round_trips_in_json_and_binary(datatype: str) -> None:
    values = NUMERIC[datatype]
    dtype = {"FP32": "<f4", "FP16": "<f2", "FP64": "<f8", "BOOL": "?"}.get(datatype, datatype.lower())
    array = np.array([values, values[::-1]], dtype=dtype)
    async with LifespanDriver(host_with(echo(datatype))) as lifespan:
        json_answer = await lifespan.request(
            "POST",
            "/v2/models/echo/infer",
            json={"inputs": [{"name": "x", "shape": [2, 3], "datatype": datatype, "data": array.tolist()}]},
        )
        assert json_answer.status == 200, json_answer.body
        (output,) = json_answer.json()["outputs"]
        assert output["datatype"] == datatype
        assert output["data"] == array.ravel().tolist()
        body, headers = binary_body(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2, 3],
                        "datatype": datatype,
                        "parameters": {"binary_data_size": array.nbytes},
                    }
                ],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            },
            array.tobytes(),
        )
        binary = await lifespan.request("POST", "/v2/models/echo/infer", body=body, headers=headers)
        assert binary.status == 200, binary.body
        header, blobs = split_binary(binary)
        assert header["outputs"][0]["parameters"] == {"binary_data_size": array.nbytes}
        np.testing.assert_array_equal(np.frombuffer(blobs["y"], dtype=dtype).reshape(2, 3), array)


async def test_out_of_range_json_integers_are_400() -> None:
    async with LifespanDriver(host_with(echo("INT32"))) as lifespan:
        result = await lifespan.request(
            "POST",
            "/v2/models/echo/infer",
            json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 2**40]}]},
        )
        assert result.status == 400
        assert "does not make a INT32 tensor" in result.json()["error"]
        floats = await lifespan.request(
            "POST",
            "/v2/models/echo/infer",
            json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 2.5]}]},
        )
        assert floats.status == 400


def text_model(**kwargs: Any) -> V2Model:
    def upper(module: nn.Module, texts: np.ndarray[Any, Any], scale: torch.Tensor) -> dict[str, Any]:
        assert texts.dtype == object
        assert all(isinstance(t, bytes) for t in texts.ravel())
        lengths = torch.tensor([[len(t)] for t in texts.ravel()], dtype=torch.int64) * scale
        return {"lengths": lengths, "upper": [[t.upper()] for t in texts.ravel()]}

    return V2Model(
        name="text",
        inputs=[TensorSpec("texts", "BYTES", [-1, 1]), TensorSpec("scale", "INT64", [1])],
        outputs=[TensorSpec("upper", "BYTES", [-1, 1]), TensorSpec("lengths", "INT64", [-1, 1])],
        fn=upper,
        **kwargs,
    )


async def test_bytes_in_json_and_binary_and_outputs_in_the_order_asked() -> None:
    async with LifespanDriver(host_with(text_model())) as lifespan:
        json_answer = await lifespan.request(
            "POST",
            "/v2/models/text/infer",
            json={
                "inputs": [
                    {"name": "scale", "shape": [1], "datatype": "INT64", "data": [10]},
                    {"name": "texts", "shape": [2, 1], "datatype": "BYTES", "data": [["héllo"], ["ab"]]},
                ],
                "outputs": [{"name": "lengths"}, {"name": "upper"}],
            },
        )
        assert json_answer.status == 200, json_answer.body
        outputs = json_answer.json()["outputs"]
        assert [o["name"] for o in outputs] == ["lengths", "upper"]
        assert outputs[0]["data"] == [60, 20]  # "héllo" is 6 bytes in UTF-8
        assert outputs[1] == {"name": "upper", "datatype": "BYTES", "shape": [2, 1], "data": ["HéLLO", "AB"]}

        texts = bytes_elements([b"\xff\x00raw", b"", b"xyz"])
        scale = np.array([1], dtype="<i8").tobytes()

        def binary_request(upper_in_binary: bool) -> tuple[bytes, list[tuple[str, str]]]:
            return binary_body(
                {
                    "inputs": [
                        {
                            "name": "texts",
                            "shape": [3, 1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(texts)},
                        },
                        {
                            "name": "scale",
                            "shape": [1],
                            "datatype": "INT64",
                            "parameters": {"binary_data_size": 8},
                        },
                    ],
                    "outputs": [
                        {"name": "upper", "parameters": {"binary_data": upper_in_binary}},
                        {"name": "lengths"},
                    ],
                },
                texts,
                scale,
            )

        body, headers = binary_request(True)
        binary = await lifespan.request("POST", "/v2/models/text/infer", body=body, headers=headers)
        assert binary.status == 200, binary.body
        header, blobs = split_binary(binary)
        assert blobs["upper"] == bytes_elements([b"\xff\x00RAW", b"", b"XYZ"])
        assert header["outputs"][1]["data"] == [5, 0, 3]  # JSON beside binary

        body, headers = binary_request(False)
        refused = await lifespan.request("POST", "/v2/models/text/infer", body=body, headers=headers)
        assert refused.status == 400
        assert "not UTF-8: ask for it with binary_data" in refused.json()["error"]

        for broken, message in [
            (bytes_elements([b"ab"])[:5], "goes past its data"),
            (bytes_elements([b"ab", b"c"]) + b"\x01\x00", "ends inside an element's 4-byte length"),
            (bytes_elements([b"ab", b"c"]), "2 BYTES elements, shape [3, 1] needs 3"),
        ]:
            body, headers = binary_body(
                {
                    "inputs": [
                        {
                            "name": "texts",
                            "shape": [3, 1],
                            "datatype": "BYTES",
                            "parameters": {"binary_data_size": len(broken)},
                        },
                        {"name": "scale", "shape": [1], "datatype": "INT64", "data": [1]},
                    ]
                },
                broken,
            )
            result = await lifespan.request("POST", "/v2/models/text/infer", body=body, headers=headers)
            assert result.status == 400, result.body
            assert message in result.json()["error"]


async def test_fn_with_a_parameters_keyword_gets_the_request_parameters() -> None:
    seen: list[dict[str, Any]] = []

    def scaled(module: nn.Module, x: torch.Tensor, *, parameters: dict[str, Any]) -> torch.Tensor:
        seen.append(parameters)
        scaled_x: torch.Tensor = x * parameters.get("scale", 1)
        return scaled_x

    model = V2Model(
        name="scaled",
        inputs=[TensorSpec("x", "FP32", [-1, 2])],
        outputs=[TensorSpec("y", "FP32", [-1, 2])],
        fn=scaled,
        check_outputs=False,
    )
    async with LifespanDriver(host_with(model)) as lifespan:
        result = await lifespan.request(
            "POST",
            "/v2/models/scaled/infer",
            json={
                "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}],
                "parameters": {"scale": 3, "binary_data_output": False, "priority": 1},
            },
        )
        assert result.json()["outputs"][0]["data"] == [3.0, 6.0]
    assert seen == [{"scale": 3}]  # the protocol's own parameters are not handed on
    with pytest.raises(ValueError, match="cannot be batched"):
        V2Model(name="s", inputs=model.inputs, outputs=model.outputs, fn=scaled, batching=Batching())


# -- readiness, startup and model bugs ---------------------------------------------------------------


async def test_a_model_missing_from_the_state_fails_startup() -> None:
    model = V2Model(
        name="ghost",
        resource="not-loaded",
        inputs=[TensorSpec("x", "FP32", [-1, 1])],
        outputs=[TensorSpec("y", "FP32", [-1, 1])],
        check_outputs=False,
    )
    with pytest.raises(LifespanFailed, match="under the state key 'not-loaded', which no resource yielded"):
        async with LifespanDriver(host_with(model)):
            pass


async def test_a_released_model_is_not_ready_and_infer_is_503() -> None:
    async with LifespanDriver(host_with(echo("FP32"))) as lifespan:
        assert (await lifespan.request("GET", "/v2/models/echo/ready")).status == 200
        await lifespan.state["model"].close()  # as shutdown does, before the host drains
        assert (await lifespan.request("GET", "/v2/health/live")).status == 200
        ready = await lifespan.request("GET", "/v2/health/ready")
        assert ready.status == 503
        assert ready.json() == {"error": "models not ready: echo"}
        model_ready = await lifespan.request("GET", "/v2/models/echo/ready")
        assert model_ready.json() == {"error": "model 'echo' is not ready"}
        infer = await lifespan.request(
            "POST",
            "/v2/models/echo/infer",
            json={"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
        )
        assert infer.status == 503
        assert infer.json() == {"error": "the model is shutting down"}
        assert infer.header("retry-after") == "1"


async def test_outputs_that_do_not_fit_the_declaration_fail_startup() -> None:
    model = V2Model(
        name="wide",
        inputs=[TensorSpec("x", "FP32", [-1, 2])],
        outputs=[TensorSpec("y", "FP32", [-1, 3])],
        fn=lambda module, x: x,
    )
    with pytest.raises(LifespanFailed, match=r"output 'y' has shape \[2, 2\], the model declares \[2, 3\]"):
        async with LifespanDriver(host_with(model)):
            pass


async def test_a_failing_fn_is_a_500_in_the_protocol_shape_and_the_next_request_works() -> None:
    def picky(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 100:
            raise RuntimeError("boom")
        return x

    model = V2Model(
        name="picky",
        inputs=[TensorSpec("x", "FP32", [-1, 1])],
        outputs=[TensorSpec("y", "FP32", [-1, 1])],
        fn=picky,
    )

    def body(value: float) -> dict[str, Any]:
        return {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [value]}]}

    async with LifespanDriver(host_with(model)) as lifespan:
        failed = await lifespan.request("POST", "/v2/models/picky/infer", json=body(1000))
        assert failed.status == 500
        assert failed.json() == {"error": "internal server error; the traceback is in the server log"}
        assert (await lifespan.request("POST", "/v2/models/picky/infer", json=body(1))).status == 200


def test_declarations_are_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="datatype 'FP8'"):
        TensorSpec("x", "FP8", [1])
    with pytest.raises(ValueError, match="below -1"):
        TensorSpec("x", "FP32", [-2])
    x = [TensorSpec("x", "FP32", [3])]
    with pytest.raises(ValueError, match="batching needs every input and output to start with"):
        V2Model(name="m", inputs=x, outputs=x, batching=Batching())
    with pytest.raises(ValueError, match="no '/'"):
        V2Model(name="a/b", inputs=x, outputs=x)
    model = V2Model(name="m", inputs=x, outputs=x)
    with pytest.raises(ValueError, match="share a name"):
        KServe(model, model).routes()


async def test_routes_sit_beside_other_routes_and_their_default_is_module_of_the_inputs() -> None:
    class Double(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    async def hello(request: Any) -> Any:
        return asgi_host.Response.json({"hello": True})

    model = V2Model(
        name="double", inputs=[TensorSpec("x", "FP64", [3])], outputs=[TensorSpec("y", "FP64", [3])]
    )
    host = Host(
        resources=[TorchModel(Double, None)],
        routes=[Route("/hello", hello), *KServe(model, server_name="mine").routes()],
    )
    async with LifespanDriver(host) as lifespan:
        assert (await lifespan.request("GET", "/hello")).json() == {"hello": True}
        assert (await lifespan.request("GET", "/v2")).json()["name"] == "mine"
        result = await lifespan.request(
            "POST",
            "/v2/models/double/versions/1/infer",
            json={"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1, 2, math.pi]}]},
        )
        assert result.json()["outputs"][0]["data"] == [2.0, 4.0, 2 * math.pi]


async def test_fp32_inputs_come_in_the_models_dtype() -> None:
    seen: list[torch.dtype] = []

    def record(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen.append(x.dtype)
        return x

    model = V2Model(
        name="half",
        inputs=[TensorSpec("x", "FP32", [-1, 2])],
        outputs=[TensorSpec("y", "FP32", [-1, 2])],
        fn=record,
    )
    async with LifespanDriver(host_with(model, dtype=torch.float64)) as lifespan:
        result = await lifespan.request(
            "POST",
            "/v2/models/half/infer",
            json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.5, 2]}]},
        )
        assert result.json()["outputs"][0]["data"] == [0.5, 2.0]  # and back in the declared FP32
    assert seen == [torch.float64, torch.float64]  # the startup check, then the request


async def test_the_own_model_snippet_in_protocols_md_serves() -> None:
    namespace: dict[str, Any] = {"__name__": "protocols_md_snippet"}
    code = python_block("docs/protocols.md", "### Your own model as a v2 model")
    exec(compile(code, "docs/protocols.md", "exec", dont_inherit=True), namespace)
    async with LifespanDriver(namespace["app"]) as lifespan:
        result = await lifespan.request(
            "POST",
            "/v2/models/scorer/infer",
            json={
                "inputs": [
                    {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [[1, 2, 3], [4, 5, 0]]},
                    {"name": "mask", "shape": [2, 3], "datatype": "BOOL", "data": [[1, 1, 1], [1, 1, 0]]},
                ],
                "outputs": [{"name": "embedding"}, {"name": "score"}],
            },
        )
        assert result.status == 400  # BOOL data is true/false in JSON, not 1/0
        assert "not a flat or a nested list of BOOL" in result.json()["error"]
        result = await lifespan.request(
            "POST",
            "/v2/models/scorer/infer",
            json={
                "inputs": [
                    {"name": "ids", "shape": [2, 3], "datatype": "INT64", "data": [[1, 2, 3], [4, 5, 0]]},
                    {"name": "mask", "shape": [2, 3], "datatype": "BOOL", "data": [True] * 5 + [False]},
                ],
                "outputs": [{"name": "embedding"}, {"name": "score"}],
            },
        )
        assert result.status == 200, result.body
        embedding, score = result.json()["outputs"]
        assert (embedding["shape"], score["shape"]) == ([2, 8], [2])
        too_many = await lifespan.request(
            "POST",
            "/v2/models/scorer/infer",
            json={
                "inputs": [
                    {"name": "ids", "shape": [257, 1], "datatype": "INT64", "data": [1] * 257},
                    {"name": "mask", "shape": [257, 1], "datatype": "BOOL", "data": [True] * 257},
                ]
            },
        )
        assert too_many.status == 413


async def test_under_a_root_path(iris: LifespanDriver) -> None:
    # Mounted in another app at /model: the routes and the 404 see paths below the root path.
    meta = await iris.request("GET", "/v2/models/iris", root_path="/model")
    assert meta.json()["name"] == "iris"
    missing = await iris.request("GET", "/v2/models/resnet/ready", root_path="/model")
    assert missing.json() == {"error": "Request for unknown model: 'resnet' is not found"}
    head = await iris.request("HEAD", "/v2/models/resnet", root_path="/model")
    assert (head.status, head.body) == (404, b"")


async def test_non_finite_binary_inputs_and_outputs_are_422_as_predict_answers_them() -> None:
    def overflow(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x * 1e38  # finite in, infinite out for |x| > 3.4

    model = V2Model(
        name="m",
        inputs=[TensorSpec("x", "FP32", [-1, 2])],
        outputs=[TensorSpec("y", "FP32", [-1, 2])],
        fn=overflow,
        check_outputs=False,
    )
    async with LifespanDriver(host_with(model)) as lifespan:
        for values, message in (
            (
                [1.0, math.nan],
                "input 'x' is not finite (NaN or infinity, or out of range for its type) at index [0, 1]",
            ),
            ([math.inf, 1.0], "input 'x' is not finite"),
            ([1.0, 5.0], "the model's output 'y' (inputs outside what it can compute) is not finite"),
        ):
            blob = np.array([values], dtype=np.float32).tobytes()
            header = {
                "inputs": [
                    {"name": "x", "shape": [1, 2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}
                ]
            }
            body, headers = binary_body(header, blob)
            result = await lifespan.request("POST", "/v2/models/m/infer", body=body, headers=headers)
            assert result.status == 422, result.body
            assert message in result.json()["error"]
        ok = await lifespan.request(
            "POST",
            "/v2/models/m/infer",
            json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
        )
        assert ok.json()["outputs"][0]["data"] == np.array([1e38, 2e38], dtype=np.float32).tolist()


async def test_a_large_answer_is_encoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from asgi_host.kserve import _routes

    model = V2Model(
        name="wide", inputs=[TensorSpec("x", "FP32", [-1, 64])], outputs=[TensorSpec("y", "FP32", [-1, 64])]
    )
    threads: list[int] = []
    respond = model.respond

    def recording(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return respond(*args)

    monkeypatch.setattr(model, "respond", recording)
    monkeypatch.setattr(_routes, "ENCODE_ON_LOOP_ELEMENTS", 64 * 10)
    async with LifespanDriver(host_with(model)) as lifespan:
        for rows in (10, 11):
            x = np.arange(rows * 64, dtype=np.float32)
            result = await lifespan.request(
                "POST",
                "/v2/models/wide/infer",
                json={"inputs": [{"name": "x", "shape": [rows, 64], "datatype": "FP32", "data": x.tolist()}]},
            )
            assert result.json()["outputs"][0]["data"] == x.tolist()
    loop_thread = threading.get_ident()
    assert threads[0] == loop_thread  # 640 elements: on the loop
    assert threads[1] != loop_thread  # 704: on a worker thread


async def test_every_v2_route_describes_itself_and_infer_its_models_body(iris: LifespanDriver) -> None:
    document = (await iris.request("GET", "/openapi.json")).json()
    v2 = {path: item for path, item in document["paths"].items() if path.startswith("/v2")}
    assert (
        len(v2) == 11
    )  # server, live, ready, and per model (and its version) metadata, ready, config, infer
    for path, item in v2.items():
        for operation in item.values():
            assert operation["summary"], path
            assert "default" not in operation["responses"], path
            assert operation["responses"]["503"]["content"]["application/json"]["schema"]["required"] == [
                "error"
            ]
    infer = v2[INFER]["post"]
    assert infer["parameters"][0]["name"] == "Inference-Header-Content-Length"
    body = infer["requestBody"]["content"]
    assert set(body) == {"application/json", "application/octet-stream"}
    tensor = body["application/json"]["schema"]["properties"]["inputs"]["items"]["properties"]
    assert tensor["name"] == {"const": "input"}
    assert tensor["datatype"] == {"const": "FP32"}
    assert tensor["shape"]["prefixItems"] == [{"type": "integer", "minimum": 1, "maximum": 200}, {"const": 4}]
    outputs = body["application/json"]["schema"]["properties"]["outputs"]
    assert outputs["items"]["properties"]["name"] == {"enum": ["probabilities"]}
    assert outputs["uniqueItems"] is True  # asking twice is a 400
    assert sorted(infer["responses"]) == ["200", "400", "408", "413", "415", "422", "500", "503", "504"]
    # What the document says a request looks like is what the route takes.
    example = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]}
    assert (await iris.request("POST", INFER, json=example)).status == 200
