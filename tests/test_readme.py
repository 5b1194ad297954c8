"""The README's commands as a newcomer runs them, against the servers `make serve` and `make embed`
run, with the output each block shows (`...` stands for anything)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from asgi_host.testing import ServerProcess, free_port
from tests._server import ROOT, run_server

pytestmark = [pytest.mark.server, pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")]

README = (ROOT / "README.md").read_text()


def sh_blocks(section: str) -> list[str]:
    start = README.index(section)
    end = README.find("\n## ", start + len(section))
    return re.findall(r"```sh\n(.*?)```", README[start : end if end > 0 else None], re.DOTALL)


def command_and_expected(block: str) -> tuple[str, str]:
    """The block's command (continuation lines joined by the shell) and the output it shows."""
    lines = block.splitlines()
    command = "\n".join(line for line in lines if not line.startswith("#"))
    expected = "\n".join(line[2:] for line in lines if line.startswith("# "))
    return command, expected


def matches(expected: str, output: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, output.strip(), re.DOTALL) is not None


def run_block(block: str, port: int, documented_port: int) -> str:
    command, expected = command_and_expected(block)
    command = command.replace(f"localhost:{documented_port}", f"127.0.0.1:{port}")
    # As in a shell where `. .venv/bin/activate` ran, which the README asks for: `python` is the
    # venv's (CI runs the tests without activating it).
    venv = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(venv.parent),
    }
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    assert matches(expected, result.stdout), f"README shows:\n{expected}\nthe run printed:\n{result.stdout}"
    return result.stdout


def serve(app: str, tmp: Path) -> Iterator[ServerProcess]:
    """`app` as the Makefile serves it: `hypercorn -w 0 APP --bind ...`."""
    port = free_port()
    hypercorn = str(Path(sys.executable).parent / "hypercorn")  # the venv's, as `make` runs it
    command = [hypercorn, "-w", "0", app, "--bind", f"127.0.0.1:{port}"]
    with run_server(command, port, tmp, ready_path="/livez", timeout_s=120) as server:
        yield server


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve("examples.app:app", tmp_path_factory.mktemp("iris"))


@pytest.fixture(scope="module")
def embed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serve("examples.embed:app", tmp_path_factory.mktemp("embed"))


def test_the_makefile_serves_what_the_readme_says() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "hypercorn -w 0 examples.app:app --bind $(HOST):$(PORT)" in makefile
    assert "hypercorn -w 0 examples.embed:app --bind $(HOST):$(EMBED_PORT)" in makefile
    assert "hypercorn -w 0 examples.chat:app --bind $(HOST):$(CHAT_PORT)" in makefile
    assert re.search(r"^EMBED_PORT \?= 8001$", makefile, re.MULTILINE)
    assert re.search(r"^CHAT_PORT \?= 8002$", makefile, re.MULTILINE)
    # Each example's packages come with its own target (a newcomer ran `make serve`, then the
    # embedding example, and met a bare ModuleNotFoundError).
    assert re.search(
        r"^\$\(EMBED_STAMP\):.*\n(?:\t.*\n)*?\t.*\[[a-z,]*embed[a-z,]*clients\]", makefile, re.MULTILINE
    )
    assert sh_blocks("## Sentence embeddings")[0].strip() == "make embed"
    assert sh_blocks("## Stream a small language model")[0].strip() == "make chat"


@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_ask_the_model_blocks_print_what_the_readme_shows(iris: ServerProcess, index: int) -> None:
    run_block(sh_blocks("## Ask the model")[index], iris.port, 8000)


def test_the_embeddings_block_prints_what_the_readme_shows(embed: ServerProcess) -> None:
    run_block(sh_blocks("## Sentence embeddings")[1], embed.port, 8001)
