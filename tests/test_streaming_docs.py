"""docs/streaming.md's snippets run as written: in process with the test kit, and under hypercorn
with curl and the official openai client."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asgi_host import Host, Route
from asgi_host.testing import ServerProcess, free_port, request, server_command
from tests._server import ROOT, run_server

DOC = "docs/streaming.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", (ROOT / DOC).read_text(), re.DOTALL)


def run_async_block(code: str, namespace: dict[str, Any]) -> None:
    compiled = compile(code, DOC, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    import anyio

    async def main() -> None:
        result = eval(compiled, namespace)
        if result is not None:
            await result

    anyio.run(main)


def test_the_countdown_the_event_stream_and_the_test_kit_snippets_run() -> None:
    countdown, tokens, kit = (code for code in blocks("python")[:3])
    namespace: dict[str, Any] = {"__name__": "streaming_md"}
    exec(compile(countdown, DOC, "exec", dont_inherit=True), namespace)
    exec(compile(tokens, DOC, "exec", dont_inherit=True), namespace)
    run_async_block(kit, namespace)  # its asserts are the checks
    app = Host(routes=[Route("/tokens", namespace["tokens"])])

    async def words() -> list[str]:
        result = await request(app, "GET", "/tokens")
        return [event.data for event in result.events()]

    import anyio

    assert anyio.run(words) == ["Once", " upon", " a", " time", "[DONE]"]


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@pytest.mark.server
@needs_curl
def test_the_countdown_curl_runs(tmp_path: Path) -> None:
    (tmp_path / "docs_countdown.py").write_text(blocks("python")[0])
    port = free_port()
    command = server_command("hypercorn", "docs_countdown:app", port)
    with run_server(
        command, port, tmp_path, env={"PYTHONPATH": f"{tmp_path}:{ROOT}"}, ready_path="/countdown?0"
    ) as server:
        curl = blocks("sh")[0].splitlines()[1].replace("localhost:8000", f"127.0.0.1:{server.port}")
        out = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.stdout.startswith('data: {"n":5}\n\ndata: {"n":4}\n\n'), out
    assert out.stdout.rstrip().endswith('data: {"n":0,"done":true}')


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    env = {"CHAT_MAX_SEQUENCES": "4", "CHAT_MAX_SEQUENCE_TOKENS": "512", "CHAT_DEVICE": "cpu"}
    tmp = tmp_path_factory.mktemp("chat")
    command = server_command("hypercorn", "examples.chat:app", port)
    with run_server(command, port, tmp, env=env, ready_path="/livez", timeout_s=120) as server:
        yield server


def readme_chat_block() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"```sh\n(.*?)```", text[text.index("## Stream a small language model") :], re.DOTALL)
    return str(found[1])  # [0] is `make chat`


@pytest.mark.server
@needs_curl
@pytest.mark.parametrize("where", ["docs/streaming.md", "README.md"])
def test_the_chat_curl_streams_the_answer(chat_server: ServerProcess, where: str) -> None:
    shell = blocks("sh")[1] if where == DOC else readme_chat_block()
    curl = "\n".join(line for line in shell.splitlines() if not line.startswith(("#", "hypercorn")))
    curl = re.sub(r"localhost:800\d", f"127.0.0.1:{chat_server.port}", curl)
    out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=120)
    events = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", out
    assert '"delta":{"role":"assistant","content":""}' in events[0]
    text = "".join(re.findall(r'"delta":\{"content":"([^"]*)"', "".join(events)))
    assert text == "The capital of France is Paris."


@pytest.mark.server
def test_the_openai_snippet_prints_the_answer(chat_server: ServerProcess) -> None:
    code = blocks("python")[3].replace("127.0.0.1:8002", f"127.0.0.1:{chat_server.port}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "The capital of France is Paris.", out.stderr
