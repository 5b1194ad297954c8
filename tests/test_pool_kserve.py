"""A `ModelPool` over the Open Inference Protocol, in process: v2 per model (ready, metadata, infer),
Triton's model repository extension behind the admin token, and what /readyz and /metrics show."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from asgi_host import Host
from asgi_host.kserve import KServe, ModelRepository, TensorSpec, V2Model
from asgi_host.metrics import Metrics
from asgi_host.model import ModelPool
from asgi_host.testing import HTTPResult, LifespanDriver
from tests._wait import until
from tests.pool_models import UNIT, WIDTH, Gated, Record, gated_pass, pool_of

pytestmark = pytest.mark.anyio

TOKEN = "pool-admin-token-0123456789"
AUTH = [("authorization", f"Bearer {TOKEN}")]
ROW = [0.5] * WIDTH


def v2(name: str, width: int = WIDTH) -> V2Model:
    return V2Model(
        name=name,
        resource=name,
        inputs=[TensorSpec("input", "FP32", [-1, WIDTH])],
        outputs=[TensorSpec("output", "FP32", [-1, width])],
    )


def served(pool: ModelPool, *, token: str | None = TOKEN, **host: Any) -> Host:
    models = [v2(name) for name in pool.entries]
    return Host(resources=[pool], routes=[KServe(*models), ModelRepository(pool, admin_token=token)], **host)


def infer_body(rows: int = 1) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, WIDTH], "data": [ROW] * rows}]}


async def infer(life: LifespanDriver, name: str) -> HTTPResult:
    return await life.request("POST", f"/v2/models/{name}/infer", json=infer_body(), timeout_s=30)


async def repository(life: LifespanDriver, path: str, body: Any = None, **kwargs: Any) -> HTTPResult:
    kwargs.setdefault("headers", AUTH)
    return await life.request("POST", f"/v2/repository{path}", json=body, timeout_s=30, **kwargs)


def states(pool: ModelPool) -> dict[str, str]:
    return {name: detail["state"] for name, detail in pool.models().items()}


async def test_v2_per_model_ready_metadata_and_infer_load_on_demand(tmp_path: Path) -> None:
    pool, _models, _ = pool_of(tmp_path, 3, budget_units=2)
    async with LifespanDriver(served(pool)) as life:
        assert (await life.request("GET", "/v2/health/ready")).status == 200  # loads on demand: ready
        ready = await life.request("GET", "/v2/models/m0/ready")
        assert ready.status == 503
        assert ready.json() == {"error": "model 'm0' is not ready"}
        answer = await infer(life, "m0")
        assert answer.status == 200, answer.body
        assert answer.json()["outputs"][0]["shape"] == [1, WIDTH]
        assert answer.header("x-model-version") == pool.models()["m0"]["version"]
        assert (await life.request("GET", "/v2/models/m0/ready")).json() == {"name": "m0", "ready": True}
        assert (await life.request("GET", "/v2/models/m0/versions/1/ready")).status == 200
        metadata = (await life.request("GET", "/v2/models/m0")).json()
        assert metadata["parameters"] == {"model_version": pool.models()["m0"]["version"]}
        for name in ("m1", "m2"):
            assert (await infer(life, name)).status == 200
        await until(lambda: states(pool)["m0"] == "unloaded")  # evicted for m2
        assert (await life.request("GET", "/v2/models/m0/ready")).status == 503
        assert (await life.request("GET", "/v2/health/ready")).status == 200


async def test_v2_errors_of_the_pool_are_the_protocols(tmp_path: Path) -> None:
    record = Record()
    models = [Gated(name, tmp_path, record) for name in ("m0", "m1")]
    models.append(Gated("big", tmp_path, record, layers=2))
    pool = ModelPool(models, budget_bytes=UNIT, device="cpu", wait_s=0)
    started, gate = threading.Event(), threading.Event()
    host = Host(resources=[pool], routes=[KServe(v2("m0"), v2("m1"), v2("big"))])
    async with LifespanDriver(host) as life:
        too_large = await infer(life, "big")
        assert too_large.status == 507
        assert too_large.json()["error"].startswith(f"model 'big' needs 0.0 MiB ({2 * UNIT} bytes, its")
        async with anyio.create_task_group() as tg:
            tg.start_soon(life.state["m0"].run, gated_pass(started, gate))
            await until(started.is_set)
            full = await infer(life, "m1")  # m0 is busy: no room, and no wait
            gate.set()
        assert full.status == 503
        assert full.header("retry-after") == "1"
        assert full.json()["error"].startswith("no room for model 'm1'")
        assert (await infer(life, "m1")).status == 200


async def test_the_output_check_runs_on_each_load_not_at_startup(tmp_path: Path) -> None:
    record = Record()
    good, wrong = Gated("good", tmp_path, record), Gated("wrong", tmp_path, record)
    pool = ModelPool([good, wrong], budget_bytes=2 * UNIT, device="cpu", pinned=["good"])
    host = Host(resources=[pool], routes=[KServe(v2("good"), v2("wrong", width=3))])
    async with LifespanDriver(host) as life:
        # The pinned one is checked at startup; the other is not loaded for its check.
        assert (good.builds, wrong.builds) == (1, 0)
        answer = await infer(life, "wrong")
        assert answer.status == 503
        assert "v2 model 'wrong': fn on zeros of the declared input shapes failed" in answer.json()["error"]
        assert "output 'output' has shape [2, 64], the model declares [2, 3]" in answer.json()["error"]
        assert states(pool) == {"good": "ready", "wrong": "failed"}
        assert pool.used_bytes == UNIT  # the failed version is released
        assert (await infer(life, "good")).status == 200


# ---- Triton's model repository extension ------------------------------------------------------------


async def test_the_repository_index_load_and_unload(tmp_path: Path) -> None:
    pool, _, record = pool_of(tmp_path, 3, budget_units=2)
    async with LifespanDriver(served(pool)) as life:
        index = await repository(life, "/index")
        assert index.status == 200
        assert index.json() == [{"name": "m0"}, {"name": "m1"}, {"name": "m2"}]  # never loaded: name only
        for name in ("m0", "m1"):
            loaded = await repository(life, f"/models/{name}/load")
            assert (loaded.status, loaded.body) == (200, b"")
        assert states(pool) == {"m0": "ready", "m1": "ready", "m2": "unloaded"}
        assert (await life.request("GET", "/v2/models/m1/ready")).status == 200
        unloaded = await repository(life, "/models/m0/unload", {"parameters": {"unload_dependents": False}})
        assert (unloaded.status, unloaded.body) == (200, b"")
        assert (await life.request("GET", "/v2/models/m0/ready")).status == 503
        assert (await repository(life, "/index")).json() == [
            {"name": "m0", "state": "UNAVAILABLE", "reason": "unloaded"},
            {"name": "m1", "state": "READY", "reason": ""},
            {"name": "m2"},
        ]
        assert (await repository(life, "/index", {"ready": True})).json() == [
            {"name": "m1", "state": "READY", "reason": ""}
        ]
        assert (await repository(life, "/models/m0/unload")).status == 200  # again: nothing to do
        assert record.events == ["load m0", "load m1", "release m0"]


async def test_the_repository_needs_the_token_before_anything_else(tmp_path: Path) -> None:
    pool, _, record = pool_of(tmp_path, 1, budget_units=1)
    async with LifespanDriver(served(pool)) as life:
        for path in ("/index", "/models/m0/load", "/models/nope/load", "/nowhere"):
            missing = await repository(life, path, headers=[])
            assert missing.status == 401, path
            assert missing.json() == {"error": "the admin routes need 'Authorization: Bearer <admin token>'"}
            assert missing.header("www-authenticate") == 'Bearer realm="asgi_host admin"'
            wrong = await repository(life, path, headers=[("authorization", "Bearer not-the-token-at-all")])
            assert (wrong.status, wrong.json()) == (403, {"error": "the admin token is wrong"}), path
        unknown = await repository(life, "/models/nope/load")
        assert unknown.status == 404
        assert unknown.json() == {"error": "Request for unknown model: 'nope' is not found"}
        assert (await repository(life, "/nowhere")).status == 404
        get = await life.request("GET", "/v2/repository/index", headers=AUTH)
        assert (get.status, get.header("allow")) == (405, "POST")
        override = await repository(life, "/models/m0/load", {"parameters": {"config": "{}"}})
        assert override.status == 400
        assert "loading with ['config'] is not supported" in override.json()["error"]
        assert (await repository(life, "/index", [1])).status == 400
        assert record.events == []


async def test_without_a_token_there_is_no_repository(tmp_path: Path) -> None:
    pool, _, _ = pool_of(tmp_path, 1, budget_units=1)
    async with LifespanDriver(served(pool, token=None)) as life:
        answer = await repository(life, "/index")
        assert answer.status == 404
        assert answer.json()["error"] == "no route for '/v2/repository/index' in the Open Inference Protocol"
    with pytest.raises(ValueError, match="at least 16 characters"):
        ModelRepository(pool, admin_token="short")


# ---- /readyz and /metrics -------------------------------------------------------------------------


async def test_readyz_and_metrics_show_each_model(tmp_path: Path) -> None:
    pool, _, _ = pool_of(tmp_path, 3, budget_units=2)
    async with LifespanDriver(served(pool, metrics=Metrics())) as life:
        for name in ("m0", "m1", "m2"):
            assert (await infer(life, name)).status == 200
        await until(lambda: states(pool)["m0"] == "unloaded")
        detail = (await life.request("GET", "/readyz")).json()["resources"]["pool"]
        assert detail["device"] == "cpu"
        assert (detail["budget_bytes"], detail["used_bytes"]) == (2 * UNIT, 2 * UNIT)
        m0, m2 = detail["models"]["m0"], detail["models"]["m2"]
        assert (m0["state"], m0["bytes"], m0["loads"], m0["evictions"]) == ("unloaded", 0, 1, 1)
        assert (m2["state"], m2["bytes"], m2["loads"], m2["evictions"]) == ("ready", UNIT, 1, 0)
        assert m2["load_s"] > 0
        assert m2["version"]
        assert not m2["pinned"]
        text = (await life.request("GET", "/metrics")).body.decode()
        for line in (
            f'asgi_host_pool_budget_bytes{{pool="pool"}} {float(2 * UNIT)}',
            'asgi_host_pool_model_state{model="m0",pool="pool",state="unloaded"} 1.0',
            'asgi_host_pool_model_state{model="m2",pool="pool",state="ready"} 1.0',
            f'asgi_host_pool_model_bytes{{model="m2",pool="pool"}} {float(UNIT)}',
            'asgi_host_pool_model_bytes{model="m0",pool="pool"} 0.0',
            'asgi_host_pool_model_loads_total{model="m0",pool="pool"} 1.0',
            'asgi_host_pool_model_evictions_total{model="m0",pool="pool"} 1.0',
            'asgi_host_pool_model_in_flight{model="m1",pool="pool"} 0.0',
        ):
            assert line in text.splitlines(), line
        seconds = 'asgi_host_pool_model_load_seconds{model="m2",pool="pool"} '
        assert float(next(line for line in text.splitlines() if line.startswith(seconds)).split()[-1]) > 0
