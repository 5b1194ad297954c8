"""Drain, readiness and batching under a real hypercorn in a subprocess."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from asgi_host.testing import free_port, server_command
from examples.iris import load_dataset
from tests._server import run_server

pytestmark = pytest.mark.server


def wait_for_lines(log: Path, text: str, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count(text) >= count:
            return
        time.sleep(0.02)
    raise TimeoutError(f"{count} x {text!r} not in {log} within {timeout_s} s")


def test_sigterm_with_requests_in_flight_answers_every_one_then_releases(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    port = free_port()
    command = server_command(
        "hypercorn", "tests.model_apps:slow_batched_app", port, ["--graceful-timeout", "20"]
    )
    env = {"ASGI_HOST_TEST_LOG": str(log), "FORWARD_S": "0.5"}
    inputs, species = load_dataset()
    n = 24
    with run_server(command, port, tmp_path, env=env) as server, ThreadPoolExecutor(n) as pool:

        def predict(i: int) -> tuple[int, str]:
            # A fresh connection each: nothing is queued on a shared keep-alive socket.
            try:
                response = httpx.post(server.url + "/predict", json={"inputs": [inputs[i]]}, timeout=30)
            except httpx.TransportError as exc:  # a reset or refused connection fails the test
                return -1, repr(exc)
            return response.status_code, response.text

        futures = [pool.submit(predict, i) for i in range(n)]
        wait_for_lines(log, "request received", n)  # every request is inside the app
        exit_code = server.stop()  # SIGTERM while the batches run
        results = [f.result() for f in futures]
    assert exit_code == 0, server.output()
    statuses = [status for status, _ in results]
    assert all(status in (200, 503) for status in statuses), results
    assert statuses.count(200) >= 1
    for i, (status, text) in enumerate(results):
        if status == 200:
            assert httpx.Response(200, text=text).json()["labels"] == [species[i]]
    events = log.read_text().splitlines()
    assert events[-1] == "model released"
    forward_ends = [i for i, e in enumerate(events) if e.startswith("forward end")]
    forward_starts = [e for e in events if e.startswith("forward start")]
    assert forward_ends
    assert forward_ends[-1] < events.index("model released")  # released after the last pass
    assert len(forward_starts) == len(forward_ends)  # every pass that began also ended
    assert len(forward_starts) < n + 1  # batched: the warmup plus fewer passes than requests


def test_background_loading_listens_at_once_and_reports_readiness(tmp_path: Path) -> None:
    port = free_port()
    env = {"BUILD_S": "3", "FORWARD_S": "0"}
    command = server_command("hypercorn", "tests.model_apps:background_app", port)
    started = time.monotonic()
    with run_server(command, port, tmp_path, env=env, ready_path="/livez") as server:
        listening_after = time.monotonic() - started
        loading = httpx.get(server.url + "/readyz", timeout=5)
        early = httpx.post(server.url + "/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, timeout=5)
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/readyz", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "never became ready"
            time.sleep(0.1)
        ready_after = time.monotonic() - started
        late = httpx.post(server.url + "/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]}, timeout=5)
    assert loading.status_code == 503
    assert loading.json()["status"] == "loading"
    assert loading.json()["stage"] == "model: building the architecture"
    assert early.status_code == 503
    assert int(early.headers["retry-after"]) >= 1
    assert late.json()["labels"] == ["setosa"]
    assert ready_after - listening_after >= 1.0  # it served probes while the 3 s build ran


def test_concurrent_clients_share_forward_passes(tmp_path: Path) -> None:
    port = free_port()
    env = {"FORWARD_S": "0.2"}
    inputs, species = load_dataset()
    n = 32
    with (
        run_server(
            server_command("hypercorn", "tests.model_apps:slow_batched_app", port), port, tmp_path, env=env
        ) as server,
        ThreadPoolExecutor(n) as pool,
    ):
        before = httpx.get(server.url + "/stats", timeout=5).json()["forward_passes"]
        rows = [inputs[i * 4] for i in range(n)]
        responses = list(
            pool.map(
                lambda row: httpx.post(server.url + "/predict", json={"inputs": [row]}, timeout=30), rows
            )
        )
        after = httpx.get(server.url + "/stats", timeout=5).json()["forward_passes"]
    assert [r.status_code for r in responses] == [200] * n
    assert [r.json()["labels"][0] for r in responses] == [species[i * 4] for i in range(n)]
    assert after - before < n
