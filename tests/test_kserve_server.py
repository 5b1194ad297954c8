"""`hypercorn examples.app:app` spoken to with Triton's own client, `tritonclient.http`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

import asgi_host
from asgi_host.testing import ServerProcess, free_port, server_command
from examples.iris import LABELS, load_dataset
from tests._server import ROOT, run_server
from tests.test_doc_snippets import python_block

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def iris_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    tmp_path = tmp_path_factory.mktemp("kserve")
    with run_server(
        server_command("hypercorn", "examples.app:app", port), port, tmp_path, env={"IRIS_METRICS": "false"}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def datatypes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    tmp_path = tmp_path_factory.mktemp("kserve-datatypes")
    with run_server(server_command("hypercorn", "tests.kserve_apps:app", port), port, tmp_path) as server:
        yield server


@pytest.fixture
def client(iris_server: ServerProcess) -> Iterator[Any]:
    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{iris_server.port}")
    yield triton
    triton.close()


def predict_probabilities(server: ServerProcess, rows: list[list[float]]) -> np.ndarray[Any, Any]:
    response = httpx.post(server.url + "/predict", json={"inputs": rows}, timeout=10)
    assert response.status_code == 200
    return np.array(response.json()["outputs"], dtype=np.float32)


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", model_version="1")
    assert not client.is_model_ready("resnet")
    server = client.get_server_metadata()
    assert server["version"] == asgi_host.__version__
    assert "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata("iris")
    assert model["platform"] == "pytorch"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert len(model["parameters"]["model_version"]) == 12  # the weights' version, which reloads change
    assert client.get_model_config("iris")["max_batch_size"] == 1024


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_all_150_rows_match_predict(iris_server: ServerProcess, client: Any, binary: bool) -> None:
    rows, species = load_dataset()
    features = np.array(rows, dtype=np.float32)
    tensor = httpclient.InferInput("input", list(features.shape), "FP32")
    tensor.set_data_from_numpy(features, binary_data=binary)
    wanted = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer("iris", [tensor], outputs=[wanted], request_id="all-rows")
    assert result.get_response()["id"] == "all-rows"
    output = result.get_output("probabilities")
    assert ("parameters" in output) is binary  # binary_data_size only when sent as binary
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (150, 3)
    np.testing.assert_allclose(probabilities, predict_probabilities(iris_server, rows), rtol=1e-6, atol=1e-7)
    predicted = [LABELS[i] for i in probabilities.argmax(axis=1)]
    accuracy = sum(p == s for p, s in zip(predicted, species, strict=True)) / len(species)
    assert accuracy >= 0.95


def test_no_outputs_named_answers_all_in_binary_and_versions_path(client: Any) -> None:
    tensor = httpclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
    result = client.infer("iris", [tensor], model_version="1")
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 12
    assert result.as_numpy("probabilities").argmax() == 0


def test_a_wrong_shape_is_400_with_the_reason(client: Any) -> None:
    tensor = httpclient.InferInput("input", [2, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("iris", [tensor])
    assert caught.value.status() == "400"
    assert caught.value.message() == (
        "unexpected shape for input 'input' for model 'iris': expected [-1, 4] (-1: any size), got [2, 3]"
    )
    assert client.is_server_live()  # and the connection is still good


def test_an_unknown_model_is_404(client: Any) -> None:
    tensor = httpclient.InferInput("input", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(InferenceServerException) as caught:
        client.infer("resnet", [tensor])
    assert caught.value.status() == "404"
    assert caught.value.message() == "Request for unknown model: 'resnet' is not found"
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("resnet")


def test_the_tritonclient_snippet_in_protocols_md_runs(iris_server: ServerProcess, capsys: Any) -> None:
    code = python_block("docs/protocols.md", "## The Open Inference Protocol")
    assert 'url="localhost:8000"' in code
    code = code.replace('url="localhost:8000"', f'url="127.0.0.1:{iris_server.port}"')
    exec(compile(code, str(ROOT / "docs/protocols.md"), "exec", dont_inherit=True), {"__name__": "snippet"})
    assert capsys.readouterr().out.splitlines()[-1] == "['setosa', 'virginica']"


def test_the_protocols_benchmark_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "protocols", "-n", "20", "--http-n", "5", "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ratios to /predict, 150 rows: v2 infer json" in result.stdout
    assert "tritonclient, v2 infer binary" in result.stdout


NUMPY_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_every_datatype_with_tritonclient(datatypes_server: ServerProcess, binary: bool) -> None:
    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{datatypes_server.port}")
    try:
        for datatype, numpy_type in NUMPY_TYPES.items():
            values = (
                np.array([[1, 0, 1], [0, 1, 1]]) if datatype == "BOOL" else np.array([[1, -2, 3], [4, 5, 6]])
            )
            array: np.ndarray[Any, Any] = (
                values * (1 if datatype.startswith(("UINT", "BOOL")) else -1)
            ).astype(numpy_type)
            if datatype.startswith("FP"):
                array = (array / 4).astype(numpy_type)  # quarters: exact in every float type
            tensor = httpclient.InferInput("x", [2, 3], datatype)
            tensor.set_data_from_numpy(array, binary_data=binary)
            wanted = httpclient.InferRequestedOutput("y", binary_data=binary)
            result = triton.infer(f"echo_{datatype.lower()}", [tensor], outputs=[wanted])
            answer = result.as_numpy("y")
            assert answer.dtype == array.dtype, datatype
            np.testing.assert_array_equal(answer, array)

        texts = np.array([["héllo".encode()], [b"ab"]], dtype=object)
        tensor = httpclient.InferInput("texts", [2, 1], "BYTES")
        tensor.set_data_from_numpy(texts, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("upper", "lengths")]
        result = triton.infer("text", [tensor], outputs=wanted)
        upper = result.as_numpy("upper").ravel().tolist()
        # The client gives BYTES answered in JSON back as str, in binary as bytes.
        assert upper == (["HéLLO".encode(), b"AB"] if binary else ["HéLLO", "AB"])
        assert result.as_numpy("lengths").tolist() == [[6], [2]]
    finally:
        triton.close()
