"""`python -m asgi_host check`: exit codes, the report, on our apps and others'."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import msgspec
import pytest

from asgi_host import Host
from asgi_host._doctor import check
from examples.app import IrisConfig, make_app
from tests._server import ROOT


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asgi_host", "check", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.server
def test_clean_app_exits_0_with_timings() -> None:
    result = run_check("examples.app:app")
    assert result.returncode == 0, result.stderr
    assert "lifespan supported: yes" in result.stdout
    assert "startup: ok in " in result.stdout
    assert "shutdown: ok in " in result.stdout
    assert "state keys: model" in result.stdout
    assert "model: execution=inline, execution_reason=a pass takes" in result.stdout
    assert result.stdout.rstrip().endswith("result: ok")


@pytest.mark.server
def test_json_report_on_a_fastapi_app() -> None:
    result = run_check("examples.embed_fastapi:app", "--json")
    assert result.returncode == 0, result.stderr
    report = msgspec.json.decode(result.stdout)
    assert report["supported"] is True
    assert report["startup"]["ok"] is True
    assert report["shutdown"]["ok"] is True
    assert report["state_keys"] == ["model"]
    assert "cuda_memory" not in report  # no CUDA here


@pytest.mark.server
def test_startup_failure_exits_1_with_the_message() -> None:
    result = run_check("examples.app:app", "--json", env={"IRIS_WEIGHTS": "/nonexistent.safetensors"})
    assert result.returncode == 1
    report = msgspec.json.decode(result.stdout)
    assert report["startup"]["ok"] is False
    assert report["startup"]["message"].startswith("resource 'model' failed to start: ModelLoadError")
    assert "shutdown" not in report


@pytest.mark.server
def test_app_without_lifespan_exits_2() -> None:
    result = run_check("tests.apps:http_only_app")
    assert result.returncode == 2
    assert "lifespan supported: no" in result.stdout
    assert "RuntimeError: unsupported scope type 'lifespan'" in result.stdout
    assert "before its first receive()" in result.stdout
    assert result.stdout.rstrip().endswith("result: no lifespan support")


@pytest.mark.server
def test_app_that_raises_after_receiving_startup_exits_1_with_its_exception() -> None:
    # The one rule: raising after the first receive() is a failed startup, not "unsupported".
    result = run_check("tests.apps:raises_after_startup_app")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "lifespan supported: yes" in result.stdout
    assert "startup: FAILED after" in result.stdout
    assert "ConnectionRefusedError: cache at 127.0.0.1:6379 refused the connection" in result.stdout
    assert "hypercorn and uvicorn would log the exception and serve the app without lifespan" in result.stdout
    assert result.stdout.rstrip().endswith("result: FAILED")
    report = msgspec.json.decode(run_check("tests.apps:raises_after_startup_app", "--json").stdout)
    assert report["supported"] is True
    assert report["exit_code"] == 1
    assert report["startup"] == {
        "ok": False,
        "seconds": report["startup"]["seconds"],
        "message": "ConnectionRefusedError: cache at 127.0.0.1:6379 refused the connection",
    }
    assert "serve the app without lifespan" in report["note"]


@pytest.mark.server
def test_bad_target_is_a_usage_error() -> None:
    result = run_check("examples.app")
    assert result.returncode == 3
    assert "expected MODULE:APP" in result.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("examples.app:nope", "asgi-host check: 'examples.app' has no attribute 'nope'"),
        ("nosuchmod:app", "asgi-host check: no module named 'nosuchmod' (from 'nosuchmod:app'"),
        ("examples.nosuch:app", "asgi-host check: no module named 'examples.nosuch'"),
    ],
)
@pytest.mark.server
def test_a_target_that_cannot_be_loaded_is_one_line_and_exit_3(target: str, message: str) -> None:
    result = run_check(target)
    assert result.returncode == 3
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.server
def test_version() -> None:
    import asgi_host

    result = subprocess.run(
        [sys.executable, "-m", "asgi_host", "--version"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"asgi-host {asgi_host.__version__}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{asgi_host.__version__}"' in pyproject


@pytest.mark.server
def test_a_target_that_is_not_callable_is_named() -> None:
    # Such as a Ray Serve Application (examples.ray_serve:app), which `serve run` takes instead.
    result = run_check("examples.iris:LABELS")
    assert result.returncode == 3
    assert "examples.iris:LABELS is a builtins.tuple, not an ASGI app" in result.stderr


@pytest.mark.anyio
async def test_check_in_process_on_both_backends() -> None:
    report = await check(make_app(IrisConfig(metrics=False)), "iris", timeout_s=30)
    assert report.exit_code == 0
    assert report.state_keys == ["model"]
    assert report.resources is not None
    assert report.resources["model"]["execution"] == "inline"  # the Iris pass is far under 0.5 ms
    assert report.startup is not None
    assert report.startup.seconds > 0


@pytest.mark.anyio
async def test_progress_is_shown_while_a_long_startup_runs() -> None:
    @asynccontextmanager
    async def slow() -> AsyncIterator[None]:
        await anyio.sleep(1.2)
        yield

    stream = io.StringIO()
    report = await check(Host(resources=[slow]), "slow", timeout_s=10, progress=stream)
    assert report.exit_code == 0
    shown = [float(s) for s in re.findall(r"\rstarting\.\.\. (\d+\.\d) s", stream.getvalue())]
    assert shown
    assert shown[0] >= 0.5  # every half second while it starts, never early
    assert stream.getvalue().endswith("\r")  # the line is cleared once startup ends


def test_the_trio_backend_without_trio_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from asgi_host._doctor import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trio" else real_find_spec(name, *a)
    )
    assert main(["check", "examples.app:app", "--backend", "trio"]) == 3
    err = capsys.readouterr().err
    assert err == "asgi-host check: --backend trio needs trio, which is not installed: pip install trio\n"
