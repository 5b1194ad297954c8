"""The admin route against what a hostile client tries: paths swapped under the load, encoded paths
past a proxy, one error vocabulary, and versions that would break headers."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from asgi_host import ReloadError
from asgi_host.model import TorchModel
from asgi_host.testing import LifespanDriver, free_port, server_command
from examples.app import IrisConfig, make_app
from examples.iris import WEIGHTS, IrisMLP
from tests._server import run_server

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-0123456789"
AUTH = [("authorization", f"Bearer {TOKEN}")]
RELOAD = "/admin/models/model/reload"
ROW = [5.1, 3.5, 1.4, 0.2]


def version_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def scaled_copy(path: Path, factor: float) -> None:
    state = load_file(str(WEIGHTS))
    save_file({k: v * factor if k.startswith("layers") else v for k, v in state.items()}, str(path))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(WEIGHTS, models / "a.safetensors")
    scaled_copy(models / "b.safetensors", 1.5)
    scaled_copy(tmp_path / "outside.safetensors", -1.0)
    return models


class Flipper:
    """A thread that keeps swapping `link` between two targets (symlink or rename), as fast as it can."""

    def __init__(self, swap: Iterator[None]) -> None:
        self._swap = swap
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            next(self._swap)
            time.sleep(0.0005)  # often enough to land inside reloads, without starving the loop

    def __enter__(self) -> Flipper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def flip_symlink(link: Path, targets: tuple[Path, Path]) -> Iterator[None]:
    spare = link.with_name(link.name + ".new")
    while True:
        for target in targets:
            spare.unlink(missing_ok=True)
            spare.symlink_to(target)
            os.replace(spare, link)  # atomic: the link always exists
            yield


def flip_rename(path: Path, contents: tuple[Path, Path]) -> Iterator[None]:
    spare = path.with_name(path.name + ".new")
    while True:
        for source in contents:
            shutil.copyfile(source, spare)
            os.replace(spare, path)
            yield


@pytest.mark.slow
@pytest.mark.one_loop  # a race on the file system: the event loop does not matter
async def test_a_symlink_swapped_during_reloads_never_loads_weights_from_outside(folder: Path) -> None:
    # Before: the path was checked, then opened again by the load; 59 of 511 reloads served the
    # weights outside. Now the file is opened once and what was opened is checked.
    link = folder / "link.safetensors"
    link.symlink_to(folder / "b.safetensors")
    outside = folder.parent / "outside.safetensors"
    inside_version, outside_version = version_of(folder / "b.safetensors"), version_of(outside)
    app = make_app(IrisConfig(weights=str(folder / "a.safetensors"), device="cpu", admin_token=TOKEN))
    statuses: dict[int | None, int] = {}
    async with LifespanDriver(app) as life:
        with Flipper(flip_symlink(link, (folder / "b.safetensors", outside))):
            for _ in range(30):
                result = await life.request(
                    "POST", RELOAD, json={"weights": "link.safetensors"}, headers=AUTH
                )
                statuses[result.status] = statuses.get(result.status, 0) + 1
                if result.status == 200:
                    assert result.json()["version"] == inside_version
                else:
                    assert result.status == 403, result.body
                    assert result.json()["error"]["type"] == "forbidden"
                assert life.state["model"].version != outside_version
    assert set(statuses) <= {200, 403}, statuses


@pytest.mark.one_loop
async def test_the_version_is_the_hash_of_the_bytes_loaded_under_renames(folder: Path) -> None:
    # Before: the hash read the path, the load read it again; under rename-flipping 33 of 94
    # reloads reported the version of the other weights.
    target = folder / "c.safetensors"
    shutil.copyfile(folder / "b.safetensors", target)
    expected = {}
    for name in ("a.safetensors", "b.safetensors"):
        module = IrisMLP()
        module.load_state_dict(load_file(str(folder / name)))
        with torch.inference_mode():
            expected[version_of(folder / name)] = torch.softmax(module(torch.tensor([ROW])), -1)[0].tolist()
    app = make_app(IrisConfig(weights=str(folder / "a.safetensors"), device="cpu", admin_token=TOKEN))
    async with LifespanDriver(app) as life:
        with Flipper(flip_rename(target, (folder / "a.safetensors", folder / "b.safetensors"))):
            for _ in range(20):
                result = await life.request("POST", RELOAD, json={"weights": "c.safetensors"}, headers=AUTH)
                assert result.status == 200, result.body
                version = result.json()["version"]
                predicted = await life.request("POST", "/predict", json={"inputs": [ROW]})
                assert predicted.header("x-model-version") == version
                assert predicted.json()["outputs"][0] == pytest.approx(expected[version], abs=1e-6)


async def test_refusals_speak_one_vocabulary(folder: Path) -> None:
    app = make_app(IrisConfig(weights=str(folder / "a.safetensors"), device="cpu", admin_token=TOKEN))
    async with LifespanDriver(app) as life:
        wrong = await life.request("POST", RELOAD, json={}, headers=[("authorization", "Bearer nope")])
        outside = await life.request("POST", RELOAD, json={"weights": "../outside.safetensors"}, headers=AUTH)
        (folder / "out.safetensors").symlink_to(folder.parent / "outside.safetensors")
        linked = await life.request("POST", RELOAD, json={"weights": "out.safetensors"}, headers=AUTH)
        for result in (wrong, outside, linked):
            assert result.status == 403
            assert result.json()["error"]["type"] == "forbidden"
        assert "outside the model's weights directory" in linked.json()["error"]["message"]
        # A refusal is not a failed version: /readyz still shows no failed reload.
        ready = (await life.request("GET", "/readyz")).json()["resources"]["model"]
        assert ready["last_reload"] is None


async def test_an_encoded_admin_path_is_not_the_admin_route(folder: Path) -> None:
    app = make_app(IrisConfig(weights=str(folder / "a.safetensors"), device="cpu", admin_token=TOKEN))
    async with LifespanDriver(app) as life:
        for path in (
            "/%61dmin/models/model/reload",
            "/admin/models/%6dodel/reload",
            "/admin%2Fmodels/model/reload",
        ):
            result = await life.request("POST", path, json={}, headers=AUTH)
            assert result.status == 404, path
            assert "the admin routes take an unencoded path" in result.json()["error"]["message"]
        assert (await life.request("POST", RELOAD, json={}, headers=AUTH)).status == 200


def test_a_version_that_would_break_headers_is_refused_when_set() -> None:
    for version in ("v1\r\nx-injected: 1", "v\u00e9rsion\u2603", "", "x" * 129, "tab\there"):
        with pytest.raises(ValueError, match="version"):
            TorchModel(IrisMLP, WEIGHTS, version=version)
    assert TorchModel(IrisMLP, WEIGHTS, version="2026-12-02 iris v2").given_version == "2026-12-02 iris v2"


async def test_a_reload_with_a_version_that_would_break_headers_is_400(folder: Path) -> None:
    app = make_app(IrisConfig(weights=str(folder / "a.safetensors"), device="cpu"))
    async with LifespanDriver(app) as life:
        served = life.state["model"].version
        resource = next(r for r in app.resources if isinstance(r, TorchModel))
        with pytest.raises(ReloadError) as refused:
            await app.reload("model", version="v2\r\nSet-Cookie: x")
        assert refused.value.status == 400
        assert resource.version == served
        assert (await life.request("GET", "/livez")).status == 200


@pytest.mark.server
def test_over_a_real_hypercorn_the_encoded_admin_path_is_404_and_the_plain_one_answers(
    folder: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {"IRIS_WEIGHTS": str(folder / "a.safetensors"), "IRIS_ADMIN_TOKEN": TOKEN, "IRIS_DEVICE": "cpu"}
    with run_server(server_command("hypercorn", "examples.app:app", port), port, tmp_path, env=env):
        for path, status in (("/%61dmin/models/model/reload", 404), (RELOAD, 200)):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
                )
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
