"""Optional dependencies: an `ImportError` that names the extra to install.

`import asgi_host` needs none of them; the modules that do import them where
they need them, and turn "No module named 'prometheus_client'" into what to do
about it, as msgspec's toml module does for tomli.
"""

from __future__ import annotations

from typing import NoReturn

__all__ = ["raise_missing_extra"]


def raise_missing_extra(
    error: ImportError, module: str, *, extra: str, needed_by: str, package: str | None = None
) -> NoReturn:
    """Call in `except ImportError as error:` around `import module...`.

    When `module` (or a submodule of it) is what could not be imported, raises
    an ImportError saying which extra installs `package` (default: `module`);
    any other import error (a broken install, a bug inside the package) is
    re-raised as it is.
    """
    missing = error.name or ""
    if missing != module and not missing.startswith(module + "."):
        raise error
    raise ImportError(
        f"{needed_by} needs {package or module}, which is not installed;"
        f" install the extra: pip install 'asgi_host[{extra}]'",
        name=missing,
    ) from error
