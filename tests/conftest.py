"""What every test gets: the event loops, the markers' rules, and no process without `server`.

- `@pytest.mark.anyio` tests run on asyncio and trio (`ASGI_HOST_TEST_LOOPS=asyncio` for one:
  `make test-fast`), `one_loop` ones on asyncio only.
- `conformance` and `ray` imply `server`; a test that is not `server` cannot start a process.
- Under pytest-xdist (`make test`: `-n 2 --dist loadscope`), each test is a unit of its own,
  except that a module whose fixtures start a server or load a model for the whole module runs on
  one worker (so each starts once), and the Ray tests share one worker, in order (one Ray
  cluster at a time on a 2-core machine).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import pytest

LOOPS = [loop for loop in os.environ.get("ASGI_HOST_TEST_LOOPS", "asyncio,trio").split(",") if loop]

# Modules that start Ray: one worker, one after the other.
RAY_MODULES = {"test_ray_serve", "test_ray_example"}
# Modules whose module-scoped fixtures start a server or load a model: one worker each.
WHOLE_MODULES = {
    "test_app_server",
    "test_chat",
    "test_chat_server",
    "test_embed",
    "test_keepalive",
    "test_kserve_server",
    "test_openai_embeddings",
    "test_openapi",
    "test_pool_server",
    "test_readme",
    "test_smollm2",
    "test_streaming_docs",
}


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every `@pytest.mark.anyio` test runs on each loop of `LOOPS` (`one_loop` tests: asyncio only)."""
    backend: str = request.param
    return backend


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`cuda` tests run only where torch sees a GPU; `one_loop` tests on asyncio only; the markers
    that imply `server` add it."""
    for item in items:
        if item.get_closest_marker("conformance") or item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.server)
    items[:] = [item for item in items if not _on_a_second_loop(item)]
    if not any(item.get_closest_marker("cuda") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


def _on_a_second_loop(item: pytest.Item) -> bool:
    """A `one_loop` test's trio run: heavy tests (compiling, a browser, a fuzzer, a benchmark)
    prove nothing more on a second event loop, and cost as much again."""
    callspec = getattr(item, "callspec", None)
    return bool(
        item.get_closest_marker("one_loop") and callspec and callspec.params.get("anyio_backend") == "trio"
    )


@pytest.fixture(autouse=True)
def _processes_only_in_server_tests(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A test that starts a process must say so (`@pytest.mark.server`), so that `-m "not server"`
    (`make test-fast`) runs no process at all: any other test that tries fails, naming the command."""
    if request.node.get_closest_marker("server"):
        yield
        return
    real_init = subprocess.Popen.__init__

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        raise AssertionError(
            f"{request.node.nodeid} starts a process ({args!r}): mark it @pytest.mark.server"
        )

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    try:
        yield
    finally:
        monkeypatch.setattr(subprocess.Popen, "__init__", real_init)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` with the units described at the top: tests alone, but a whole module for
    those in `WHOLE_MODULES`, and all of Ray's together."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.partition("::")[0]
            module = PurePosixPath(path).stem
            if module in RAY_MODULES:
                return "ray"
            return path if module in WHOLE_MODULES else nodeid

    return Units(config, log)
