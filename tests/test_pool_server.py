"""`hypercorn examples.pool:app` spoken to with Triton's own client: the repository API (index, load,
unload behind the token), per-model readiness, inference loading models on demand, 16 clients over
the eight models; and docs/pool.md's snippets, as written."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from asgi_host.testing import ServerProcess, free_port, server_command
from examples.pool import CLASSES, FEATURES, MLP, MODEL_BYTES, make_weights, names, weights_path
from tests._server import ROOT, run_server

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.server

DOC = "docs/pool.md"
TOKEN = "change-me-to-a-long-secret"  # docs/pool.md's
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def start(tmp_path: Path, cache: Path) -> Any:
    port = free_port()
    env = {"POOL_ADMIN_TOKEN": TOKEN, "POOL_CACHE_DIR": str(cache), "POOL_DEVICE": "cpu"}
    return run_server(server_command("hypercorn", "examples.pool:app", port), port, tmp_path, env=env)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pool-cache")


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Iterator[ServerProcess]:
    with start(tmp_path_factory.mktemp("pool"), cache) as server:
        yield server


@pytest.fixture
def client(pool_server: ServerProcess) -> Iterator[Any]:
    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{pool_server.port}", concurrency=4)
    yield triton
    triton.close()


def rows(count: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).uniform(-1, 1, (count, FEATURES)).astype(np.float32)


def expected(cache: Path, name: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The probabilities computed here from the same weights file."""
    module = MLP()
    module.load_state_dict(load_file(str(weights_path(cache, names().index(name)))))
    with torch.inference_mode():
        return torch.softmax(module(torch.from_numpy(x)), dim=-1).numpy()


def infer(client: Any, name: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    answer: np.ndarray[Any, Any] = client.infer(name, [tensor]).as_numpy("probabilities")
    return answer


def states(client: Any) -> dict[str, str | None]:
    return {m["name"]: m.get("state") for m in client.get_model_repository_index(headers=HEADERS)}


def test_the_weights_are_sixteen_mib_each_and_the_same_every_time(cache: Path, tmp_path: Path) -> None:
    assert MODEL_BYTES == 16 * 2**20
    first = make_weights(cache)
    again = make_weights(tmp_path)
    for a, b in zip(first, again, strict=True):
        assert a.stat().st_size == b.stat().st_size
        assert a.read_bytes() == b.read_bytes()
    state = load_file(str(first[0]))
    assert sum(t.numel() * t.element_size() for t in state.values()) == MODEL_BYTES


def test_load_ready_infer_unload_with_tritonclient(client: Any, cache: Path) -> None:
    assert client.is_server_ready()
    client.load_model("mlp-3", headers=HEADERS)
    assert client.is_model_ready("mlp-3")
    assert client.is_model_ready("mlp-3", model_version="1")
    assert states(client)["mlp-3"] == "READY"
    x = rows(4)
    np.testing.assert_allclose(infer(client, "mlp-3", x), expected(cache, "mlp-3", x), rtol=1e-5, atol=1e-7)
    client.unload_model("mlp-3", headers=HEADERS)
    assert not client.is_model_ready("mlp-3")
    assert states(client)["mlp-3"] == "UNAVAILABLE"
    assert client.is_server_ready()  # a pooled model not resident does not make the server unready
    # Inference loads it again, on demand.
    np.testing.assert_allclose(infer(client, "mlp-3", x), expected(cache, "mlp-3", x), rtol=1e-5, atol=1e-7)
    assert client.is_model_ready("mlp-3")
    metadata = client.get_model_metadata("mlp-3")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, FEATURES]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, CLASSES]}]


def test_the_repository_api_needs_the_token(client: Any) -> None:
    calls: list[Callable[[dict[str, str] | None], object]] = [
        lambda headers: client.get_model_repository_index(headers=headers),
        lambda headers: client.load_model("mlp-1", headers=headers),
        lambda headers: client.unload_model("mlp-1", headers=headers),
    ]
    for call in calls:
        with pytest.raises(InferenceServerException) as missing:
            call(None)
        assert missing.value.status() == "401"
        assert missing.value.message() == "the admin routes need 'Authorization: Bearer <admin token>'"
        with pytest.raises(InferenceServerException) as wrong:
            call({"Authorization": "Bearer someone-elses-token-000"})
        assert wrong.value.status() == "403"
    with pytest.raises(InferenceServerException) as unknown:
        client.load_model("resnet", headers=HEADERS)
    assert (unknown.value.status(), unknown.value.message()) == (
        "404",
        "Request for unknown model: 'resnet' is not found",
    )
    with pytest.raises(InferenceServerException, match="not supported"):
        client.load_model("mlp-1", headers=HEADERS, config='{"max_batch_size": 8}')


def test_sixteen_clients_round_robin_over_eight_models_in_a_budget_for_three(
    pool_server: ServerProcess, cache: Path
) -> None:
    x = rows(2, seed=1)
    wanted = {name: expected(cache, name, x) for name in names()}
    failures: list[str] = []

    def client_thread(first: int) -> None:
        triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{pool_server.port}")
        try:
            for step in range(8):
                name = names()[(first + step) % 8]
                try:
                    np.testing.assert_allclose(infer(triton, name, x), wanted[name], rtol=1e-5, atol=1e-7)
                except Exception as exc:
                    failures.append(f"{name}: {exc}")
        finally:
            triton.close()

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    detail = httpx.get(pool_server.url + "/readyz", timeout=10).json()["resources"]["pool"]
    assert detail["budget_bytes"] == 48 * 2**20
    assert detail["used_bytes"] <= detail["budget_bytes"]
    assert sum(m["state"] == "ready" for m in detail["models"].values()) <= 3
    assert sum(m["failures"] for m in detail["models"].values()) == 0
    metrics = httpx.get(pool_server.url + "/metrics", timeout=10).text
    series = r'^asgi_host_pool_model_evictions_total\{model="mlp-\d",pool="pool"\} (\S+)$'
    evictions = re.findall(series, metrics, re.MULTILINE)
    assert len(evictions) == 8
    assert sum(float(value) for value in evictions) > 0


# ---- docs/pool.md ------------------------------------------------------------------------------------


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / DOC).read_text(), re.DOTALL)


def test_the_pool_snippets_run_in_process() -> None:
    app_code, kit_code = blocks("python")[:2]
    namespace: dict[str, Any] = {"__name__": "pool_md"}
    exec(compile(app_code, DOC, "exec", dont_inherit=True), namespace)
    compiled = compile(kit_code, DOC, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)

    async def main() -> None:
        result = eval(compiled, namespace)
        if result is not None:
            await result  # its asserts are the checks

    anyio.run(main)


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@needs_curl
def test_the_tritonclient_and_curl_snippets_run_against_a_fresh_server(
    tmp_path: Path, cache: Path, capsys: Any
) -> None:
    serve = blocks("sh")[0].strip()
    assert serve == f"POOL_ADMIN_TOKEN={TOKEN} hypercorn examples.pool:app"
    with start(tmp_path, cache) as server:
        code = blocks("python")[2]
        assert 'url="localhost:8000"' in code
        code = code.replace('url="localhost:8000"', f'url="127.0.0.1:{server.port}"')
        exec(compile(code, DOC, "exec", dont_inherit=True), {"__name__": "snippet"})
        printed = capsys.readouterr().out.splitlines()
        comments = [line.removeprefix("# ") for line in code.splitlines() if line.startswith("# ")]
        assert printed == comments
        curl = [line for line in blocks("sh")[1].splitlines() if line.startswith("curl")]
        outputs = [
            subprocess.run(
                line.replace("localhost:8000", f"127.0.0.1:{server.port}"),
                shell=True,
                capture_output=True,
                text=True,
                timeout=30,
                cwd=tmp_path,
            ).stdout
            for line in curl
        ]
    assert outputs[0] == ""
    assert outputs[1].startswith('[{"name":"mlp-0","state":"READY","reason":""},')
    assert outputs[2] == '{"error":"the admin routes need \'Authorization: Bearer <admin token>\'"}'
