"""The README's and docs' Python snippets run as written."""

from __future__ import annotations

import ast
import re
import sys
import types
from typing import Any

import pytest

from asgi_host import Host, LifespanProtocolError
from asgi_host.testing import LifespanDriver
from tests._server import ROOT

pytestmark = pytest.mark.anyio


def python_block(markdown: str, after: str) -> str:
    """The first ```python block after the line starting with `after`."""
    text = (ROOT / markdown).read_text()
    start = text.index(after)
    match = re.search(r"```python\n(.*?)```", text[start:], re.DOTALL)
    assert match is not None, f"no python block after {after!r} in {markdown}"
    return match.group(1)


def test_the_readme_own_model_block_is_the_example_file() -> None:
    block = python_block("README.md", "## Your own model")
    assert block == (ROOT / "examples" / "own_model.py").read_text()


async def test_the_own_model_example_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # its weights path is relative to where the server starts
    from examples.own_model import app

    async with LifespanDriver(app) as lifespan:
        result = await lifespan.request("POST", "/predict", json={"inputs": [[1, 2, 3, 4, 5, 6, 7, 8]] * 3})
        assert result.status == 200, result.body
        answer = result.json()
        assert len(answer["outputs"]) == 3
        assert answer["labels"][0] in ("cat", "dog")
        assert sum(answer["outputs"][0]) == pytest.approx(1.0)
        wrong = await lifespan.request("POST", "/predict", json={"inputs": [[1, 2, 3]]})
        assert wrong.status == 422


async def test_the_struct_endpoint_snippet_in_predict_md_serves() -> None:
    namespace: dict[str, Any] = {"__name__": "predict_md_snippet"}
    code = compile(
        python_block("docs/predict.md", "## Your own schema"), "docs/predict.md", "exec", dont_inherit=True
    )
    exec(code, namespace)
    async with LifespanDriver(namespace["app"]) as lifespan:
        result = await lifespan.request("POST", "/score", json={"texts": ["a b c", "hello"]})
        assert result.status == 200, result.body
        assert len(result.json()["scores"]) == 2
        empty = await lifespan.request("POST", "/score", json={"texts": []})
        assert empty.status == 422
        assert empty.json()["error"]["path"] == "$.texts"


async def test_the_call_snippet_in_testing_md_runs() -> None:
    # Top-level `await` as in the doc; `app` is a host, whose lifespan refuses a stray first message.
    namespace: dict[str, Any] = {
        "app": Host(),
        "pytest": pytest,
        "LifespanProtocolError": LifespanProtocolError,
    }
    block = python_block("docs/testing.md", "## Anything else: `call`")
    code = compile(block, "docs/testing.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    await eval(code, namespace)
    assert namespace["transcript"][-1] == (
        "send",
        {"type": "websocket.close", "code": 1008, "reason": "no websocket route here"},
    )


def exec_block(markdown: str, after: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run the block as a module of its own (frameworks look their handlers' modules up)."""
    module = types.ModuleType("doc_snippet")
    monkeypatch.setitem(sys.modules, "doc_snippet", module)
    exec(compile(python_block(markdown, after), markdown, "exec", dont_inherit=True), module.__dict__)
    return module.__dict__


async def test_the_litestar_snippet_in_embedding_md_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    app = exec_block("docs/embedding.md", "## The host under Litestar", monkeypatch)["app"]
    async with LifespanDriver(app) as lifespan:
        result = await lifespan.request("POST", "/model/predict", json={"inputs": [[5.1, 3.5, 1.4, 0.2]]})
    assert result.json()["labels"] == ["setosa"]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # Quart runs on asyncio only
async def test_the_quart_snippet_in_embedding_md_serves(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = exec_block("docs/embedding.md", "The other direction, an existing Quart app", monkeypatch)["app"]
    async with LifespanDriver(app) as lifespan:
        hello = await lifespan.request("GET", "/quart/hello")
    assert hello.json() == {"hello": "from Quart"}


@pytest.mark.server
def test_the_run_server_snippet_in_testing_md_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # `examples.app:app` is imported from the repository root
    code = python_block("docs/testing.md", "## Under a real server: `run_server`")
    exec(compile(code, "docs/testing.md", "exec", dont_inherit=True), {"__name__": "testing_md_snippet"})
