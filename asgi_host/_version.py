"""The installed distribution's version (pyproject.toml's), or "unknown" when run from a bare checkout."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("asgi_host")
except PackageNotFoundError:  # pragma: no cover - imported from a source tree that was never installed
    __version__ = "unknown"
