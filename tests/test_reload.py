"""Swapping a model while serving: `host.reload`, the admin route, and both under load."""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import re
import shutil
import subprocess
import threading
import weakref
from functools import partial
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import httpx
import msgspec
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from asgi_host import Batching, Host, HTTPError, ReloadError, ReloadInProgress, Response, Route
from asgi_host.config import HostConfig, load_config
from asgi_host.model import Classifier, ModelHandle, TorchModel
from asgi_host.testing import HTTPResult, LifespanDriver, free_port, server_command
from examples.app import IrisConfig, make_app
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP
from tests._server import ROOT, run_server
from tests._wait import until

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-admin-token-0123456789"
AUTH = [("authorization", f"Bearer {TOKEN}")]
ROW = [5.1, 3.5, 1.4, 0.2]
RELOAD = "/admin/models/model/reload"


def enough(statuses: list[int | None], wanted: int) -> bool:
    return len(statuses) >= wanted


def version_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.fixture
def weights(tmp_path: Path) -> tuple[Path, Path]:
    """Two Iris weights files in one directory: the trained one, and one with other numbers."""
    folder = tmp_path / "models"
    folder.mkdir()
    first = folder / "a.safetensors"
    shutil.copy(WEIGHTS, first)
    state = load_file(str(WEIGHTS))
    second = folder / "b.safetensors"
    save_file({k: v * 1.5 if k.startswith("layers") else v for k, v in state.items()}, str(second))
    return first, second


def iris_app(first: Path, **settings: Any) -> Host:
    return make_app(IrisConfig(weights=str(first), device="cpu", admin_token=TOKEN, metrics=True, **settings))


def markdown_block(markdown: str, after: str, language: str, index: int = 0) -> str:
    """The `index`-th ```language block after the line starting with `after`."""
    text = (ROOT / markdown).read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text[text.index(after) :], re.DOTALL)
    return str(blocks[index])


def shell_block(markdown: str, after: str, index: int = 0) -> str:
    return markdown_block(markdown, after, "sh", index)


def every_object() -> list[object]:
    """Every object the collector tracks, after a full collection. A running host has frozen what
    its startup made (gc_freeze), which `gc.get_objects()` does not list: unfrozen first (the
    host's next release freezes again)."""
    gc.unfreeze()
    gc.collect()
    return gc.get_objects()


def live_iris_modules() -> int:
    return sum(1 for obj in every_object() if type(obj) is IrisMLP)


async def admin(life: LifespanDriver, body: Any = None, **kwargs: Any) -> HTTPResult:
    kwargs.setdefault("headers", AUTH)
    return await life.request("POST", RELOAD, json=body, timeout_s=30.0, **kwargs)


# ---- under load ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [{"execution": "thread"}, {"execution": "inline"}, {"execution": "thread", "batching": Batching()}],
    ids=["thread", "inline", "batched"],
)
@pytest.mark.slow
async def test_swaps_under_load_answer_every_request_and_free_the_old_model(
    weights: tuple[Path, Path], settings: dict[str, Any]
) -> None:
    first, second = weights
    versions = {version_of(first), version_of(second)}
    app = iris_app(first, **settings)
    statuses: list[int | None] = []
    seen: list[str | None] = []
    stop = anyio.Event()

    async with LifespanDriver(app) as life:
        baseline = live_iris_modules()

        async def client() -> None:
            while not stop.is_set():
                result = await life.request("POST", "/predict", json={"inputs": [ROW, ROW]}, timeout_s=30.0)
                statuses.append(result.status)
                seen.append(result.header("x-model-version"))
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(client)
            for i in range(6):
                served = life.state["model"]
                old = weakref.ref(served.module)
                target = second if i % 2 == 0 else first
                if i % 2:
                    result = await admin(life, {"weights": str(target)})
                    assert result.status == 200, result.body
                    answer = result.json()
                else:
                    answer = msgspec.to_builtins(await app.reload("model", weights=target))
                assert answer["version"] == version_of(target)
                assert answer["previous"] == served.version
                assert life.state["model"] is not served  # what the next request's copy gets
                assert app.state["model"] is life.state["model"]
                assert served.closing
                gc.collect()
                assert old() is None, "the old module is still referenced after the swap"
                assert live_iris_modules() == baseline  # one model alive, never two after a swap
                wanted = len(statuses) + 32  # some answers on this version before the next swap
                await until(partial(enough, statuses, wanted), 30)
            stop.set()

    assert statuses
    assert set(statuses) == {200}, {s for s in statuses if s != 200}
    assert set(seen) == versions  # both versions answered, and every answer said which


async def test_a_pass_in_flight_finishes_on_the_old_version_and_stale_handles_forward(
    weights: tuple[Path, Path],
) -> None:
    first, second = weights
    app = iris_app(first, execution="thread")
    entered, release = threading.Event(), threading.Event()

    def slow(module: nn.Module) -> int:
        entered.set()
        release.wait(10)
        return id(module)

    async with LifespanDriver(app) as life:
        old: ModelHandle = life.state["model"]
        old_module_id = id(old.module)
        outcome: dict[str, Any] = {}

        async def in_flight() -> None:
            outcome["module"] = await old.run(slow)

        async def reload() -> None:
            outcome["reload"] = await app.reload("model", weights=second)

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_flight)
            await until(entered.is_set, 10)
            tg.start_soon(reload)
            await until(lambda: life.state["model"] is not old, 20)  # swapped while the old pass runs
            assert old.in_flight == 1
            assert "reload" not in outcome
            release.set()
        assert outcome["module"] == old_module_id
        assert outcome["reload"].version == version_of(second)
        new: ModelHandle = life.state["model"]
        # A request that copied the state before the swap still holds `old`: it gets the new version.
        assert await old.run(lambda module: id(module)) == id(new.module)
        assert await old.run(lambda module: 0) == 0


# ---- the admin route's refusals ------------------------------------------------------------------


async def test_the_admin_route_refuses_what_it_must(
    weights: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first, second = weights
    outside = tmp_path / "outside.safetensors"
    shutil.copy(second, outside)
    link = first.parent / "link.safetensors"
    link.symlink_to(outside)
    app = iris_app(first)
    async with LifespanDriver(app) as life:
        version = life.state["model"].version

        missing = await admin(life, headers=[])
        assert missing.status == 401
        assert missing.header("www-authenticate") == 'Bearer realm="asgi_host admin"'
        for header in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", TOKEN):
            wrong = await admin(life, headers=[("authorization", header)])
            assert wrong.status == 403, header
        # Authenticated first: without the token, nothing tells which models exist.
        unknown_anonymous = await life.request("POST", "/admin/models/nope/reload")
        assert unknown_anonymous.status == 401
        unknown = await life.request("POST", "/admin/models/nope/reload", headers=AUTH)
        assert unknown.status == 404
        assert "'nope'" in unknown.json()["error"]["message"]
        assert (await life.request("POST", "/admin/models/model/other", headers=AUTH)).status == 404
        get = await life.request("GET", RELOAD, headers=AUTH)
        assert get.status == 405
        assert get.header("allow") == "POST"

        for path in (
            "../outside.safetensors",
            str(outside),
            str(first.parent / ".." / "outside.safetensors"),
        ):
            escaped = await admin(life, {"weights": path})
            assert escaped.status == 403, path
        assert (await admin(life, {"weights": str(link)})).status == 403  # a symlink pointing out
        assert (await admin(life, {"weights": "a.safetensors\x00"})).status == 403
        assert (await admin(life, {"weights": 3})).status == 422
        assert (await admin(life, {"weights": "b.safetensors", "extra": 1})).status == 422
        assert (await life.request("POST", RELOAD, body=b"{", headers=AUTH)).status == 400

        broken = first.parent / "broken.safetensors"
        broken.write_bytes(b"not a safetensors file")
        failed = await admin(life, {"weights": "broken.safetensors"})
        assert failed.status == 422
        assert "broken.safetensors" in failed.json()["error"]["message"]
        nowhere = await admin(life, {"weights": "missing.safetensors"})
        assert nowhere.status == 422
        assert "does not exist" in nowhere.json()["error"]["message"]
        assert life.state["model"].version == version
        assert cast(TorchModel, app.resources[0]).weights == first  # a failed reload changes nothing

        # The old version still serves, the host is still ready, and /readyz says what failed.
        predict = await life.request("POST", "/predict", json={"inputs": [ROW]})
        assert predict.status == 200
        assert predict.header("x-model-version") == version
        ready = await life.request("GET", "/readyz")
        assert ready.status == 200
        detail = ready.json()["resources"]["model"]
        assert detail["version"] == version
        assert detail["last_reload"]["status"] == "failed"
        assert "missing.safetensors" in detail["last_reload"]["error"]
        metrics = (await life.request("GET", "/metrics")).body.decode()
        assert f'asgi_host_model_version_info{{model="model",version="{version}"}} 1.0' in metrics
        assert 'asgi_host_model_reloads_total{model="model",outcome="failed"} 2.0' in metrics

        ok = await admin(life)  # no body: the same file again
        assert ok.status == 200
        assert ok.json()["version"] == ok.json()["previous"] == version
        ok = await admin(life, {"weights": "b.safetensors"})
        answer = ok.json()
        assert 0 < answer["swap_s"] <= answer["seconds"]
        assert answer | {"seconds": 0, "swap_s": 0} == {
            "model": "model",
            "version": version_of(second),
            "previous": version,
            "seconds": 0,
            "swap_s": 0,
        }
        metrics = (await life.request("GET", "/metrics")).body.decode()
        assert f'asgi_host_model_version_info{{model="model",version="{version_of(second)}"}} 1.0' in metrics
        assert f'version="{version}"' not in metrics  # the old version's series is gone
        assert 'asgi_host_model_reloads_total{model="model",outcome="ok"} 2.0' in metrics
        assert TOKEN not in metrics
    assert TOKEN not in caplog.text
    assert "failed" in caplog.text  # the failure was logged


async def test_one_reload_at_a_time(weights: tuple[Path, Path]) -> None:
    first, second = weights
    builds = 0
    building, go_on = threading.Event(), threading.Event()

    def build() -> nn.Module:
        nonlocal builds
        builds += 1
        if builds > 1:  # the reload's build waits until the test says so
            building.set()
            go_on.wait(10)
        return IrisMLP()

    model = TorchModel(build, first, device="cpu", warmup=torch.zeros(1, len(FEATURES)))
    predict = Classifier(labels=LABELS, n_features=len(FEATURES)).endpoint
    app = Host(resources=[model], routes=[Route("/predict", predict, methods=["POST"])], admin_token=TOKEN)
    async with LifespanDriver(app) as life:
        results: list[HTTPResult] = []

        async def first_reload() -> None:
            results.append(await admin(life, {"weights": str(second)}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(first_reload)
            await until(building.is_set, 10)
            second_try = await admin(life)
            assert second_try.status == 409
            assert "already running" in second_try.json()["error"]["message"]
            with pytest.raises(ReloadInProgress, match="already running"):
                await app.reload("model")
            # Meanwhile the current version serves.
            served = await life.request("POST", "/predict", json={"inputs": [ROW]})
            assert served.status == 200
            assert served.header("x-model-version") == version_of(first)
            go_on.set()
        assert results[0].status == 200
        assert results[0].json()["version"] == version_of(second)
        assert (await admin(life)).status == 200  # and afterwards, again


async def test_a_reload_cut_short_by_shutdown_leaves_nothing(weights: tuple[Path, Path]) -> None:
    first, second = weights
    builds = 0
    building, go_on = threading.Event(), threading.Event()

    def build() -> nn.Module:
        nonlocal builds
        builds += 1
        if builds > 1:
            building.set()
            go_on.wait(10)
        return IrisMLP()

    model = TorchModel(build, first, device="cpu", warmup=torch.zeros(1, len(FEATURES)))
    app = Host(resources=[model])
    outcome: list[BaseException] = []

    async def reload() -> None:
        try:
            await app.reload("model", weights=second)
        except ReloadError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        driver = LifespanDriver(app)
        await driver.__aenter__()
        tg.start_soon(reload)
        await until(building.is_set, 10)
        await driver.__aexit__(None, None, None)  # shutdown while the new version is loading
        go_on.set()
    assert isinstance(outcome[0], ReloadError)
    assert outcome[0].status == 409
    assert "shut down" in str(outcome[0])
    assert model.weights == first  # what the load set is put back
    assert live_iris_modules() == 0  # neither the old version nor the half-built new one is left


async def test_host_reload_errors_and_the_route_is_off_by_default(weights: tuple[Path, Path]) -> None:
    first, _ = weights
    app = make_app(IrisConfig(weights=str(first), device="cpu"))
    with pytest.raises(ReloadError, match="not ready") as not_started:
        await app.reload("model")
    assert not_started.value.status == 409
    async with LifespanDriver(app) as life:
        assert (await life.request("POST", RELOAD, headers=AUTH)).status == 404
        with pytest.raises(ReloadError, match="no resource named 'nope'") as unknown:
            await app.reload("nope")
        assert unknown.value.status == 404
        with pytest.raises(ReloadError, match="cannot be reloaded"):
            await app.reload("model output check")
        with pytest.raises(ReloadError, match="does not exist"):
            await app.reload("model", weights=first.parent / "nothing.safetensors")
        assert (await life.request("GET", "/readyz")).json()["status"] == "ready"


async def test_a_given_version_and_compiled_models() -> None:
    model = TorchModel(IrisMLP, WEIGHTS, device="cpu", version="v3", warmup=torch.zeros(1, 4))
    predict = Classifier(labels=LABELS, n_features=len(FEATURES)).endpoint
    app = Host(resources=[model], routes=[Route("/predict", predict, methods=["POST"])])
    async with LifespanDriver(app) as life:
        result = await life.request("POST", "/predict", json={"inputs": [ROW]})
        assert result.header("x-model-version") == "v3"
        assert (await app.reload("model", version="v4")).version == "v4"
        result = await life.request("POST", "/predict", json={"inputs": [ROW]})
        assert result.header("x-model-version") == "v4"
        # Without a version, a reload names the new weights by their hash.
        assert (await app.reload("model")).version == version_of(WEIGHTS)
        assert (await life.request("GET", "/")).header("x-model-version") is None  # no pass, no header
    compiled = TorchModel(IrisMLP, WEIGHTS, device="cpu", warmup=torch.zeros(1, 4), compile=True)
    with pytest.raises(ReloadError, match="compiled"):
        await compiled.reload()


def test_the_admin_token_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(IrisConfig, env_prefix="IRIS_", environ={"IRIS_ADMIN_TOKEN": TOKEN})
    assert config.admin_token == TOKEN
    assert config.host_kwargs()["admin_token"] == TOKEN
    assert TOKEN not in repr(config)
    assert TOKEN not in str(config)
    assert "admin_token=<hidden>" in repr(config)
    assert "admin_token=None" in repr(HostConfig())
    with pytest.raises(Exception, match="length >= 16") as short:
        load_config(HostConfig, environ={"ASGI_HOST_ADMIN_TOKEN": "short-token"})
    assert "short-token" not in str(short.value)
    with pytest.raises(ValueError, match="at least 16") as too_short:
        Host(admin_token="short-token")
    assert "short-token" not in str(too_short.value)
    host = Host(admin_token=TOKEN)
    assert TOKEN not in repr(host.router.mounts)


# ---- memory across swaps -------------------------------------------------------------------------


class Wide(nn.Module):
    """About 64 MiB of float32 parameters: big enough for the process's memory to show each copy."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(nn.Linear(2048, 2048) for _ in range(4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.one_loop
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident memory from /proc")
async def test_memory_stays_at_one_model_across_swaps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    files = [tmp_path / "wide_a.safetensors", tmp_path / "wide_b.safetensors"]
    for path in files:
        save_file(Wide().state_dict(), str(path))
    size = files[0].stat().st_size
    model = TorchModel(Wide, files[0], device="cpu", warmup=torch.zeros(1, 2048), execution="thread")

    async def infer(request: Any) -> Any:
        handle: ModelHandle = request.state["model"]
        await handle.run(lambda module: module(torch.zeros(1, 2048)))
        return Response.json({})

    app = Host(resources=[model], routes=[Route("/infer", infer, methods=["POST"])])
    peak = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not sampling.wait(0.002):
            peak = max(peak, rss_bytes())

    async with LifespanDriver(app) as life:
        await life.request("POST", "/infer")
        gc.collect()
        baseline = rss_bytes()
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            for i in range(6):
                await app.reload("model", weights=files[(i + 1) % 2])
                assert (await life.request("POST", "/infer")).status == 200
                assert sum(1 for obj in every_object() if type(obj) is Wide) == 1
        finally:
            sampling.set()
            sampler.join()
        gc.collect()
        after = rss_bytes()
    # Six swaps leave one model: no copy is left behind (a leak would be `size` per swap).
    assert after - baseline < 0.5 * size, (after - baseline) / size
    # During a swap there are two models at most: the old one serving, the new one loading.
    assert peak - baseline < 1.6 * size, (peak - baseline) / size


# ---- a real server -------------------------------------------------------------------------------


@pytest.mark.server
def test_a_live_server_swaps_under_16_clients(weights: tuple[Path, Path], tmp_path: Path) -> None:
    first, second = weights
    port = free_port()
    env = {"IRIS_WEIGHTS": str(first), "IRIS_ADMIN_TOKEN": TOKEN, "IRIS_DEVICE": "cpu"}
    statuses: list[int] = []
    seen: set[str | None] = set()
    answers: list[dict[str, Any]] = []

    async def drive(url: str) -> None:
        stop = anyio.Event()
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as http:

            async def client() -> None:
                while not stop.is_set():
                    response = await http.post("/predict", json={"inputs": [ROW]})
                    statuses.append(response.status_code)
                    seen.add(response.headers.get("x-model-version"))

            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(client)
                for i in range(6):
                    target = second if i % 2 == 0 else first
                    response = await http.post(RELOAD, json={"weights": target.name}, headers=dict(AUTH))
                    assert response.status_code == 200, response.text
                    answers.append(response.json())
                    await anyio.sleep(0.2)  # some requests on each version
                refused = await http.post(RELOAD, json={"weights": "../../etc/passwd"}, headers=dict(AUTH))
                assert refused.status_code == 403
                assert (await http.post(RELOAD)).status_code == 401
                stop.set()

    shutil.copy(WEIGHTS, first.parent / WEIGHTS.name)  # the file docs/production.md's curl names
    curl = shell_block("docs/production.md", "### The admin route", 1).replace(
        "localhost:8000", f"127.0.0.1:{port}"
    )
    with run_server(server_command("hypercorn", "examples.app:app", port), port, tmp_path, env=env) as server:
        anyio.run(drive, server.url)
        documented = subprocess.run(
            ["bash", "-c", curl], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
        )
        log = server.output()
    assert documented.returncode == 0, documented.stderr
    assert msgspec.json.decode(documented.stdout)["version"] == version_of(WEIGHTS)
    assert statuses
    assert set(statuses) == {200}
    assert seen == {version_of(first), version_of(second)}
    assert [a["version"] for a in answers] == [version_of(second), version_of(first)] * 3
    assert TOKEN not in log


def test_the_reload_snippet_in_production_md_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = markdown_block("docs/production.md", "## Reloading a model", "python")
    exec(compile(code, "docs/production.md", "exec", dont_inherit=True), {"__name__": "production_md"})
    version = version_of(WEIGHTS)
    assert f"model {version} -> {version} in " in capsys.readouterr().out


# ---- found in review ------------------------------------------------------------------------------


async def test_a_version_noted_for_one_request_never_reaches_the_next() -> None:
    """A mount's pass (which the host never stamps) and a disconnect leave nothing behind."""
    from asgi_host import ClientDisconnect, Mount, Request, Response, Route
    from asgi_host._versions import record_version
    from asgi_host.testing import request as send_request

    async def raw_app(scope: Any, receive: Any, send: Any) -> None:
        record_version("v-mount")  # what ModelHandle.run does for a pass
        await Response.json({"ok": True}).send(send)

    async def gone(request: Request) -> Response:
        record_version("v-gone")
        raise ClientDisconnect("the client went away")

    host = Host(routes=[Route("/gone", gone), Mount("/raw", raw_app)])
    async with LifespanDriver(host):
        # The test kit serves every request in this one task, as a server may serve a connection's.
        assert (await send_request(host, "GET", "/raw/x")).status == 200
        after_mount = await send_request(host, "GET", "/livez")
        await send_request(host, "GET", "/gone")
        after_disconnect = await send_request(host, "GET", "/livez")
    assert after_mount.header("x-model-version") is None
    assert after_disconnect.header("x-model-version") is None


async def test_versions_noted_in_tasks_the_handler_starts_reach_its_response() -> None:
    from asgi_host import Request, Response, Route
    from asgi_host._versions import record_version
    from asgi_host.testing import request as send_request

    async def pass_at(version: str) -> None:
        await anyio.lowlevel.checkpoint()
        record_version(version)  # in a child task, as a pass run from a task group records it

    async def fan_out(request: Request) -> Response:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pass_at, "v-a")
            tg.start_soon(pass_at, "v-b")
        return Response.json({"ok": True})

    host = Host(routes=[Route("/fan", fan_out)])
    async with LifespanDriver(host):
        answer = await send_request(host, "GET", "/fan")
    assert sorted((answer.header("x-model-version") or "").split(", ")) == ["v-a", "v-b"]


async def test_the_admin_route_survives_a_client_that_leaves_and_keeps_connections_usable(
    weights: tuple[Path, Path],
) -> None:
    from asgi_host.testing import call, http_scope

    host = iris_app(weights[0])
    async with LifespanDriver(host) as life:
        scope = http_scope("POST", RELOAD, headers=[*AUTH, ("content-length", "100")], state=life.state)
        # 5 of 100 bytes, then the client is gone: nothing to answer, nothing raised to the server.
        transcript = await call(
            host,
            scope,
            [{"type": "http.request", "body": b'{"wei', "more_body": True}, {"type": "http.disconnect"}],
        )
        assert not [m for _, m in transcript if m.get("type") == "http.response.start"]
        # Refused before the body was read: the small body is dropped, so the connection stays usable.
        refused = await life.request(
            "POST", RELOAD, json={"weights": "x"}, headers=[("authorization", "Bearer no")]
        )
        assert refused.status == 403
        assert refused.header("connection") is None


async def test_a_non_ascii_admin_token_matches_its_utf8_bytes(weights: tuple[Path, Path]) -> None:
    token = "s3cret-tøken-with-ünicode-0123"
    host = make_app(IrisConfig(weights=str(weights[0]), device="cpu", admin_token=token, metrics=False))
    async with LifespanDriver(host) as life:
        # On the wire the header is the token's UTF-8 bytes; servers hand them over as latin-1 text.
        wire = f"Bearer {token}".encode().decode("latin-1")
        answer = await life.request("POST", RELOAD, headers=[("authorization", wire)], timeout_s=30.0)
    assert answer.status == 200, answer.body


async def test_a_batch_cut_short_by_the_drain_timeout_is_answered_503() -> None:
    from asgi_host import Batcher

    started = anyio.Event()

    async def stuck(state: Any, rows: list[int]) -> list[int]:
        started.set()
        await anyio.sleep(60)
        return rows

    batcher: Batcher[int, int] = Batcher(stuck, Batching(drain_timeout_s=0.1, timeout_s=None))
    statuses: list[int] = []

    async def submit() -> None:
        try:
            await batcher.submit([1])
        except HTTPError as exc:
            statuses.append(exc.status)

    with anyio.fail_after(20):  # before the fix the request waited forever (timeout_s=None)
        async with anyio.create_task_group() as tg:
            driver = LifespanDriver(Host(resources=[batcher]))
            await driver.__aenter__()
            tg.start_soon(submit)
            await started.wait()
            await driver.__aexit__(None, None, None)
    assert statuses == [503]
