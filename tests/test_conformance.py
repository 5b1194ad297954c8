"""The same apps under every server and harness: startup, failure, shutdown, state.

    pytest -m conformance

Servers run in subprocesses on 127.0.0.1. Quirks found, and handled here:

- hypercorn's supervisor loses a worker's exit code (issue #269): startup
  failures are checked with `-w 0` (serve in the main process);
- hypercorn's trio worker with `-w 0` installs no signal handler: SIGTERM kills
  it without lifespan shutdown, so shutdown is checked in its default
  supervisor mode;
- uvicorn finishes its graceful shutdown and then re-raises the signal, so a
  clean SIGTERM shutdown exits with -15, not 0;
- asgi-lifespan on trio raises the app's startup error inside an ExceptionGroup.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.testclient import TestClient

from asgi_host import StartupError
from asgi_host.testing import free_port
from tests import apps
from tests._server import run_server

pytestmark = pytest.mark.conformance

Command = Callable[[str, int, bool], list[str]]


def hypercorn(worker: str) -> Command:
    def command(app: str, port: int, failing: bool) -> list[str]:
        # -w 0 for failures (exit code); trio needs the supervisor for SIGTERM.
        workers = ["-w", "0"] if failing or worker != "trio" else []
        return [sys.executable, "-m", "hypercorn", *workers, "-k", worker, "--bind", f"127.0.0.1:{port}", app]

    return command


def uvicorn(app: str, port: int, failing: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "on",
    ]


def granian(app: str, port: int, failing: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        app,
    ]


SERVERS: dict[str, Command] = {
    "hypercorn-asyncio": hypercorn("asyncio"),
    "hypercorn-uvloop": hypercorn("uvloop"),
    "hypercorn-trio": hypercorn("trio"),
    "uvicorn": uvicorn,
    "granian": granian,
}
# How each server exits after a clean SIGTERM shutdown.
CLEAN_EXIT = {name: 0 for name in SERVERS} | {"uvicorn": -15}


@pytest.mark.parametrize("server_name", SERVERS)
def test_startup_state_and_shutdown(tmp_path: Path, server_name: str) -> None:
    log = tmp_path / "resources.log"
    port = free_port()
    command = SERVERS[server_name]("tests.apps:ok_app", port, False)
    with run_server(command, port, tmp_path, env={"ASGI_HOST_TEST_LOG": str(log)}) as server:
        state = httpx.get(server.url + "/state", timeout=5)
        ready = httpx.get(server.url + "/readyz", timeout=5)
        exit_code = server.stop()
    assert (state.status_code, state.json()) == (200, {"db": "connected"})
    assert ready.json() == {"status": "ready"}
    assert exit_code == CLEAN_EXIT[server_name], server.output()
    assert log.read_text() == "database up\ndatabase down\n"


@pytest.mark.parametrize("server_name", SERVERS)
def test_startup_failure_stops_the_server_with_the_reason(tmp_path: Path, server_name: str) -> None:
    log = tmp_path / "resources.log"
    port = free_port()
    command = SERVERS[server_name]("tests.apps:failing_app", port, True)
    env = {"ASGI_HOST_TEST_LOG": str(log)}
    with run_server(command, port, tmp_path, env=env, wait_ready=False) as server:
        exit_code = server.wait(60)
    assert exit_code != 0, server.output()
    assert "resource 'broken_model' failed to start: FileNotFoundError" in server.output()
    assert log.read_text() == "database up\ndatabase down\n"  # rolled back


@pytest.mark.parametrize("server_name", SERVERS)
def test_propagated_mount_lifespans(tmp_path: Path, server_name: str) -> None:
    port = free_port()
    command = SERVERS[server_name]("examples.mounts:app_propagating", port, False)
    with run_server(command, port, tmp_path) as server:
        during = httpx.get(server.url + "/starlette/lifespan", timeout=5).json()
        exit_code = server.stop()
    assert during == {"lifespan_events": ["lifespan.startup"]}
    assert exit_code == CLEAN_EXIT[server_name], server.output()
    assert (
        "shutdown: /starlette saw lifespan events ['lifespan.startup', 'lifespan.shutdown']"
        in server.output()
    )


@pytest.mark.anyio
async def test_asgi_lifespan_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "resources.log"
    monkeypatch.setenv("ASGI_HOST_TEST_LOG", str(log))
    async with LifespanManager(apps.ok_app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/state")
    assert response.json() == {"db": "connected"}
    assert log.read_text() == "database up\ndatabase down\n"
    # asgi-lifespan ignores `.failed` alone; the host also raises, so it fails.
    with pytest.raises((StartupError, BaseExceptionGroup)) as raised:
        async with LifespanManager(apps.failing_app):
            pass
    assert "resource 'broken_model' failed to start" in " ".join(map(str, leaves(raised.value)))


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def test_starlette_test_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "resources.log"
    monkeypatch.setenv("ASGI_HOST_TEST_LOG", str(log))
    with TestClient(apps.ok_app) as client:
        response = client.get("/state")
    assert response.json() == {"db": "connected"}
    assert log.read_text() == "database up\ndatabase down\n"
    # TestClient treats `.failed` followed by a normal return as success; the host raises.
    with (
        pytest.raises(Exception, match="resource 'broken_model' failed to start"),
        TestClient(apps.failing_app),
    ):
        pass
