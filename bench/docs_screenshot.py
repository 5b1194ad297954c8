"""Render `/docs` (Swagger UI, served by the host) in headless Chromium: the DOM, or a screenshot.

    python -m bench.docs_screenshot                      # writes docs/openapi_docs.png
    python -m bench.docs_screenshot --out /tmp/docs.png  # elsewhere

It starts `examples.app` under hypercorn on a free port of 127.0.0.1, waits
until `/readyz` answers 200, and points Chromium at `/docs` (Debian's
`chromium` package: `apt-get install chromium`). Nothing is fetched from
outside: Swagger UI's files come from the host. tests/test_openapi.py uses
`render` to check that the page lists `/predict`.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"

# No sandbox (root in a container), no GPU, and nothing that calls out of the machine.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
)


def chromium_path() -> str | None:
    """Debian's chromium, if installed."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def render(
    url: str, *, screenshot: Path | None = None, budget_ms: int = 15000, timeout_s: float = 90.0
) -> str:
    """Load `url` in headless Chromium, let its scripts run for up to `budget_ms` of virtual time,
    and return the DOM (or, with `screenshot`, write a PNG of the window and return Chromium's output)."""
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("chromium is not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
        ]
        if screenshot is None:
            command.append("--dump-dom")
        else:
            command += [f"--screenshot={screenshot}", "--window-size=1280,1100"]
        result = subprocess.run(
            [*command, url], capture_output=True, text=True, timeout=timeout_s, cwd=profile, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout if screenshot is None else result.stderr


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} was not ready within {timeout_s} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "openapi_docs.png")
    args = parser.parse_args(argv)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "hypercorn",
        "-w",
        "0",
        "examples.app:app",
        "--bind",
        f"127.0.0.1:{port}",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(url, process, 60.0)
        render(f"{url}/docs", screenshot=args.out.resolve())
    finally:
        process.terminate()
        process.wait(timeout=20)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
