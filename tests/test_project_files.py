"""What a newcomer meets first: the Makefile's targets, the license, docs that speak of the project."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests._server import ROOT

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make_dry_run(target: str) -> str:
    result = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.server
@needs_make
def test_make_serve_runs_one_hypercorn_process_so_a_failed_load_exits_non_zero() -> None:
    assert re.search(r"hypercorn -w 0 examples\.app:app --bind 127\.0\.0\.1:8000", make_dry_run("serve"))


@pytest.mark.server
@needs_make
def test_make_serve_installs_the_serving_extras_only() -> None:
    serve = make_dry_run("serve")
    for extra in ("ray", "test", "dev", "embed"):
        assert not re.search(rf"\[[^\]]*\b{extra}\b[^\]]*\]", serve), serve


@pytest.mark.server
@needs_make
def test_make_help_lists_the_targets() -> None:
    result = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for target in ("serve", "test", "test-fast", "lint", "venv"):
        assert f"make {target}" in result.stdout


def test_the_license_is_the_one_pyproject_names() -> None:
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")


def test_the_docs_speak_of_the_project_alone() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        assert "../shared" not in text, page.name
        assert not re.search(r"\bseeds?'", text), page.name
