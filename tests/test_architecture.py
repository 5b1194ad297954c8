"""docs/architecture.md cannot drift from the package: every module is named, none is too long."""

from __future__ import annotations

import re

from tests._server import ROOT

PACKAGE = ROOT / "asgi_host"
DOC = ROOT / "docs" / "architecture.md"
MAX_LINES = 450


def modules() -> list[str]:
    """Every module of the package, as the doc names it: `_host.py`, `kserve/` for a package's."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        names.append(relative.as_posix())
    return names


def test_the_architecture_names_every_module() -> None:
    text = DOC.read_text()
    named = set(re.findall(r"`([A-Za-z_/]+(?:\.py|/))`", text))
    missing = []
    for module in modules():
        package, _, name = module.rpartition("/")
        # A package's modules are named inside its row: `kserve/` with `_tensors.py`, ...
        if module not in named and not (
            package and f"{package}/" in named and name in named | {"__init__.py"}
        ):
            missing.append(module)
    assert missing == [], f"docs/architecture.md does not name {missing}: add a row for each"


def test_the_architecture_names_no_module_that_is_gone() -> None:
    text = DOC.read_text()
    existing = {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")}
    existing |= {path.name for path in PACKAGE.rglob("*.py")}
    existing |= {f"{path.relative_to(PACKAGE).as_posix()}/" for path in PACKAGE.iterdir() if path.is_dir()}
    rows = "\n".join(line for line in text.splitlines() if line.startswith("| `"))
    gone = sorted(name for name in re.findall(r"`([A-Za-z_/]+(?:\.py|/))`", rows) if name not in existing)
    assert gone == [], f"docs/architecture.md names modules that do not exist: {gone}"


def test_no_module_is_over_450_lines() -> None:
    long = {
        path.relative_to(PACKAGE).as_posix(): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these by concept (docs/architecture.md): {long}"
