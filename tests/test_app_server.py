"""`hypercorn examples.app:app`: the default model over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from safetensors.torch import save_file

from asgi_host.testing import ServerProcess, free_port, server_command
from examples.iris import IrisMLP, load_dataset
from tests._server import run_server

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def iris_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    tmp_path = tmp_path_factory.mktemp("iris")
    with run_server(server_command("hypercorn", "examples.app:app", port), port, tmp_path) as server:
        yield server


def test_readme_curl_answers_setosa(iris_server: ServerProcess) -> None:
    response = httpx.post(
        iris_server.url + "/predict",
        content=b'{"inputs":[[5.1,3.5,1.4,0.2]]}',
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["labels"] == ["setosa"]


def test_accuracy_over_http_json_batch_and_msgpack_rows(iris_server: ServerProcess) -> None:
    inputs, species = load_dataset()
    batch = httpx.post(iris_server.url + "/predict", json={"inputs": inputs}, timeout=10).json()["labels"]
    one_by_one = []
    with httpx.Client(base_url=iris_server.url, timeout=10) as client:
        for row in inputs:
            response = client.post(
                "/predict",
                content=msgspec.msgpack.encode({"inputs": [row]}),
                headers={"content-type": "application/msgpack", "accept": "application/msgpack"},
            )
            assert response.headers["content-type"] == "application/msgpack"
            one_by_one.extend(msgspec.msgpack.decode(response.content)["labels"])
    assert batch == one_by_one
    accuracy = sum(p == s for p, s in zip(batch, species, strict=True)) / len(species)
    assert accuracy >= 0.95


def test_errors_over_http(iris_server: ServerProcess) -> None:
    with httpx.Client(base_url=iris_server.url, timeout=10) as client:
        assert (
            client.post("/predict", content=b"{", headers={"content-type": "application/json"}).status_code
            == 400
        )
        assert client.post("/predict", json={"inputs": [[1, 2]]}).status_code == 422
        assert client.post("/predict", content=b"x", headers={"content-type": "text/csv"}).status_code == 415
        too_big = client.post(
            "/predict", content=b" " * (2 * 1024 * 1024), headers={"content-type": "application/json"}
        )
        assert too_big.status_code == 413
        wrong_method = client.get("/predict")
        assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
        assert client.get("/nope").status_code == 404
        # The server still answers after all of that.
        assert client.post("/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}).status_code == 200


def test_sigterm_releases_the_model(tmp_path: Path) -> None:
    port = free_port()
    with run_server(server_command("hypercorn", "examples.app:app", port), port, tmp_path) as server:
        assert (
            httpx.post(server.url + "/predict", json={"inputs": [[1, 1, 1, 1]]}, timeout=10).status_code
            == 200
        )
        exit_code = server.stop()
    output = server.output()
    assert exit_code == 0, output
    assert "model IrisMLP loaded: device=cpu" in output
    assert output.index("model IrisMLP loaded") < output.index("model 'model' released")


@pytest.mark.parametrize("problem", ["missing", "mismatched"])
def test_bad_weights_make_hypercorn_exit_nonzero(tmp_path: Path, problem: str) -> None:
    weights = tmp_path / "iris.safetensors"
    if problem == "mismatched":
        save_file(dict(IrisMLP(hidden=4).state_dict()), str(weights))
    port = free_port()
    command = server_command("hypercorn", "examples.app:app", port, ["-w", "0"])
    env = {"IRIS_WEIGHTS": str(weights)}
    with run_server(command, port, tmp_path, env=env, wait_ready=False) as server:
        exit_code = server.wait(60)
    output = server.output()
    assert exit_code != 0
    expected = "does not exist" if problem == "missing" else "do not fit IrisMLP"
    assert "resource 'model' failed to start: ModelLoadError: " in output
    assert expected in output


def _workers_that_logged(output: str, line: str) -> set[str]:
    """The worker tags (PIDs) of the log lines that contain `line`."""
    return {entry.split("] [")[1] for entry in output.splitlines() if line in entry}


def test_two_workers_each_load_and_release_their_own_model(tmp_path: Path) -> None:
    port = free_port()
    with run_server(
        server_command("hypercorn", "examples.app:app", port, ["-w", "2"]), port, tmp_path
    ) as server:
        # Ready means one worker listens; the other may still be loading. Stopped then, hypercorn's
        # supervisor terminates it as soon as the first has exited, before it has loaded.
        deadline = time.monotonic() + 60
        while len(_workers_that_logged(server.output(), "model IrisMLP loaded")) < 2:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        for _ in range(4):
            response = httpx.post(
                server.url + "/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, timeout=10
            )
            assert response.json()["labels"] == ["setosa"]
        exit_code = server.stop()
    output = server.output()
    assert exit_code == 0, output
    loaded = _workers_that_logged(output, "model IrisMLP loaded")
    released = _workers_that_logged(output, "model 'model' released")
    assert len(loaded) == 2, output  # two worker processes, one model each
    assert released == loaded
