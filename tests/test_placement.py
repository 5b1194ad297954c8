"""device="auto" with several GPUs: processes started together spread across them.

torch.cuda is faked (four GPUs with fixed free memory) in real processes that
race for the claims file, as `hypercorn -w 4` workers would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from asgi_host._placement import choose_cuda_device, release_claim
from asgi_host.model import resolve_device
from tests._server import ROOT

GIB = 2**30
FREE = [40 * GIB, 70 * GIB, 10 * GIB, 60 * GIB]  # most free: 1, then 3, 0, 2

CHILD = """
import os, sys, time
from pathlib import Path
import torch
free = {free!r}
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: len(free)
torch.cuda.mem_get_info = lambda i=None: (free[i], 80 * 2**30)
from asgi_host.model import resolve_device
here = Path(sys.argv[1])
(here / f"ready-{{os.getpid()}}").touch()
deadline = time.monotonic() + 10
while not (here / "go").exists() and time.monotonic() < deadline:  # start together
    time.sleep(0.001)
print(resolve_device("auto").index, flush=True)
deadline = time.monotonic() + 10
while not (here / "stop").exists() and time.monotonic() < deadline:  # keep the claim alive
    time.sleep(0.01)
"""


@pytest.fixture
def four_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(FREE))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (FREE[i], 80 * GIB))
    claims = tmp_path / "claims.json"
    monkeypatch.setenv("ASGI_HOST_PLACEMENT_FILE", str(claims))
    return claims


@pytest.mark.server
def test_processes_started_together_spread_over_the_gpus(tmp_path: Path) -> None:
    env = {**os.environ, "ASGI_HOST_PLACEMENT_FILE": str(tmp_path / "claims.json"), "PYTHONPATH": str(ROOT)}
    code = CHILD.format(free=FREE)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.glob("ready-*"))) < len(children):  # all imported torch, at the line
            assert time.monotonic() < deadline, "the children did not get ready"
            assert all(child.poll() is None for child in children), "a child exited early"
            time.sleep(0.01)
        (tmp_path / "go").touch()
        chosen = []
        for child in children:
            assert child.stdout is not None
            chosen.append(int(child.stdout.readline()))
        assert sorted(chosen) == [0, 1, 2, 3]
        claims = json.loads((tmp_path / "claims.json").read_text())
        assert sorted(claims.values()) == [0, 1, 2, 3]
        assert {int(pid) for pid in claims} == {child.pid for child in children}
    finally:
        (tmp_path / "stop").touch()
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
            if child.stdout is not None:
                child.stdout.close()


def test_alone_the_gpu_with_most_free_memory_wins(four_gpus: Path) -> None:
    assert resolve_device("auto") == torch.device("cuda:1")
    assert json.loads(four_gpus.read_text()) == {str(os.getpid()): 1}
    # Asking again replaces this process's claim instead of adding one.
    assert choose_cuda_device() == torch.device("cuda:1")
    assert json.loads(four_gpus.read_text()) == {str(os.getpid()): 1}


@pytest.mark.server
def test_claims_of_dead_processes_are_dropped(four_gpus: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    four_gpus.write_text(json.dumps({str(gone.pid): 1}))
    assert choose_cuda_device() == torch.device("cuda:1")
    assert json.loads(four_gpus.read_text()) == {str(os.getpid()): 1}


def test_a_live_claim_sends_the_next_process_elsewhere(four_gpus: Path) -> None:
    four_gpus.write_text(json.dumps({"1": 1}))  # pid 1 (init) is alive and holds the freest GPU
    assert choose_cuda_device() == torch.device("cuda:3")


def test_a_corrupt_claims_file_is_started_afresh(four_gpus: Path) -> None:
    four_gpus.write_text("{not json")
    assert choose_cuda_device() == torch.device("cuda:1")


def test_an_unusable_lock_file_falls_back_to_free_memory(
    four_gpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    four_gpus.write_text(json.dumps({"1": 1}))  # would send us to cuda:3, but cannot be read
    missing = tmp_path / "no-such-dir" / "claims.json"  # the lock file cannot be created there
    with caplog.at_level("WARNING", logger="asgi_host.model"):
        assert choose_cuda_device(missing) == torch.device("cuda:1")
    assert "choosing by free memory alone" in caplog.text
    release_claim(missing)  # never raises


def test_placement_is_logged(four_gpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    four_gpus.write_text(json.dumps({"1": 1}))
    with caplog.at_level("INFO", logger="asgi_host.model"):
        choose_cuda_device()
    assert "cuda:3 (free 61440 MiB of 81920 MiB; other processes per GPU: [0, 1, 0, 0])" in caplog.text


def test_release_forgets_this_process(four_gpus: Path) -> None:
    choose_cuda_device()
    release_claim()
    assert json.loads(four_gpus.read_text()) == {}
    release_claim()  # idempotent


def test_an_explicit_device_is_respected(four_gpus: Path) -> None:
    assert resolve_device("cuda:2") == torch.device("cuda:2")
    assert not four_gpus.exists()


def test_one_gpu_needs_no_claims(monkeypatch: pytest.MonkeyPatch, four_gpus: Path) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert not four_gpus.exists()
