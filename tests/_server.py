"""The tests' real servers: `asgi_host.testing`'s launcher, run from the repository root with the
server's output in the test's own `tmp_path`."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from asgi_host.testing import ServerProcess
from asgi_host.testing import run_server as launch

ROOT = Path(__file__).resolve().parent.parent


def run_server(
    command: list[str],
    port: int,
    tmp_path: Path,
    *,
    env: dict[str, str] | None = None,
    ready_path: str = "/__ready_probe__",
    wait_ready: bool = True,
    timeout_s: float = 60.0,
) -> AbstractContextManager[ServerProcess]:
    """`command` from the repository root; when `wait_ready`, until `ready_path` answers (any status)."""
    return launch(
        command,
        port=port,
        cwd=ROOT,
        env=env,
        ready=ready_path if wait_ready else None,
        timeout_s=timeout_s,
        log_path=tmp_path / f"server-{port}.log",
    )
