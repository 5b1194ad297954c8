"""`python -m examples.ray_serve` as a user runs it: serves, and SIGTERM stops it gracefully.

A module of its own (it runs before tests/test_ray_serve.py), because the
example starts a Ray cluster of its own and two on one machine would compete.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from asgi_host.testing import free_port
from tests._server import run_server

pytestmark = [pytest.mark.ray, pytest.mark.server]


def test_the_example_serves_and_sigterm_releases_the_model(tmp_path: Path) -> None:
    pytest.importorskip("ray.serve")
    port = free_port()
    command = [sys.executable, "-m", "examples.ray_serve", "--replicas", "1", "--cpus", "0.5"]
    command += ["--num-cpus", "2", "--port", str(port)]
    with run_server(command, port, tmp_path, wait_ready=False) as server:
        deadline = time.monotonic() + 90
        while "replicas ready in" not in server.output():
            assert server.process.poll() is None, server.output()
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.2)
        response = httpx.post(f"{server.url}/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["labels"] == ["setosa"]
        exit_code = server.stop(signal.SIGTERM, timeout_s=60)
        output = server.output()
    assert exit_code == 0, output
    assert "stopping: each replica drains and runs lifespan.shutdown" in output
    assert "model 'model' released" in output, output
