"""Headless Chromium (Debian's `chromium`) for the tests: a page's DOM after its scripts ran."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str | None:
    """Debian's chromium, if installed."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def dom_of(url: str, *, budget_ms: int = 15000, timeout_s: float = 90.0) -> str:
    """Load `url`, let its scripts run for up to `budget_ms` of virtual time, return the DOM.

    As root in a container: no sandbox, no GPU, and nothing that calls out of the machine.
    """
    binary = chromium_path()
    if binary is None:
        raise FileNotFoundError("chromium is not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        quiet = ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
        command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *quiet]
        command += [f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=profile)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout
