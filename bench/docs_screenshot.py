"""Render `/docs` (Swagger UI, served by the host) in headless Chromium: the DOM, or a screenshot.

    python -m bench.docs_screenshot                      # writes docs/openapi_docs.png
    python -m bench.docs_screenshot --out /tmp/docs.png  # elsewhere

It starts `examples.app` under hypercorn on a free port of 127.0.0.1, waits
until `/readyz` answers 200, and points Chromium at `/docs` (Debian's
`chromium` package: `apt-get install chromium`). Nothing is fetched from
outside: Swagger UI's files come from the host (tests/test_openapi.py checks
the page lists `/predict`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx

from asgi_host.testing import free_port, run_server, server_command

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "openapi_docs.png")
    args = parser.parse_args(argv)
    port = free_port()
    command = server_command("hypercorn", "examples.app:app", port, ["-w", "0"])
    with run_server(
        command, port=port, cwd=ROOT, ready=lambda url: httpx.get(url + "/readyz").status_code == 200
    ):
        render(f"http://127.0.0.1:{port}/docs", screenshot=args.out.resolve())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
