"""The host says its model loaded, where and how fast, with no logging set up, and never twice."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests._server import ROOT

SCRIPT = """
import logging, sys
import anyio
from asgi_host import Host
from asgi_host.model import TorchModel
from asgi_host.testing import LifespanDriver
from examples.iris import WEIGHTS, IrisMLP

mode = sys.argv[1]
if mode == "configured":
    logging.basicConfig(level=logging.INFO, format="ROOT %(name)s: %(message)s")

async def main():
    async with LifespanDriver(Host(resources=[TorchModel(IrisMLP, WEIGHTS)])):  # as a user writes it
        if mode == "configured later":  # a framework that sets logging up after the host started
            logging.basicConfig(level=logging.INFO, format="ROOT %(name)s: %(message)s")

anyio.run(main)
"""


def run(mode: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


@pytest.mark.server
def test_with_no_logging_set_up_the_model_load_is_logged() -> None:
    lines = run("bare")
    loaded = [line for line in lines if "model IrisMLP loaded" in line]
    assert len(loaded) == 1
    assert "device=cpu" in loaded[0]
    assert "ready_s=" in loaded[0]
    assert "[INFO] asgi_host.model:" in loaded[0]
    assert len([line for line in lines if "model 'model' released" in line]) == 1


@pytest.mark.server
@pytest.mark.parametrize("mode", ["configured", "configured later"])
def test_configured_logging_prints_each_line_once(mode: str) -> None:
    lines = run(mode)
    released = [line for line in lines if "model 'model' released" in line]
    assert len(released) == 1
    line = r"ROOT asgi_host\.model: model 'model' released \(version [0-9a-f]{12}\)"
    assert re.fullmatch(line, released[0])
    if mode == "configured":
        assert len([line for line in lines if "model IrisMLP loaded" in line]) == 1
