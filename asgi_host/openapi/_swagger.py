"""Swagger UI at `GET /docs`, served by the host from the `swagger-ui-bundle-v2` package (no CDN)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from .._describe import SchemaOf, json_response, probe_operation
from .._errors import HTTPError
from .._http import Error, Request, Response
from .._routing import Endpoint
from .._view import HostView
from ._document import OpenAPIEndpoint

__all__ = ["DocsPage", "openapi_routes"]

# Swagger UI's files the page loads; served from the installed package, read once.
_ASSETS = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
_NOT_INSTALLED = (
    "Swagger UI is not installed: pip install 'asgi_host[openapi]' (the swagger-ui-bundle-v2 package), or "
    "read the document at {openapi}"
)


class _SwaggerUI:
    """The installed Swagger UI's folder and files, looked up at the first request."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}
        self._problem: str | None = None
        self._looked = False

    def problem(self) -> str | None:
        """Why the page cannot be served (None: it can)."""
        if not self._looked:
            self._looked = True
            self._problem = _check_swagger_ui()
        return self._problem

    def read(self, name: str) -> bytes:
        data = self._files.get(name)
        if data is None:
            folder = _swagger_ui_folder()
            if folder is None:  # uninstalled since the first look
                raise HTTPError(404, "Swagger UI is no longer installed")
            data = folder.joinpath(name).read_bytes()
            self._files[name] = data
        return data


def _swagger_ui_folder() -> Traversable | None:
    """`swagger_ui_bundle/vendor/swagger-ui-<version>/` of the installed package, if any."""
    try:
        vendor = resources.files("swagger_ui_bundle").joinpath("vendor")
    except ModuleNotFoundError:
        return None
    if not vendor.is_dir():
        return None
    folders = sorted(
        (f for f in vendor.iterdir() if f.is_dir() and f.name.startswith("swagger-ui-")), key=lambda f: f.name
    )
    return folders[-1] if folders else None


def _check_swagger_ui() -> str | None:
    folder = _swagger_ui_folder()
    if folder is None:
        return "not installed"
    match = re.fullmatch(r"swagger-ui-(\d+)\..*", folder.name)
    if match is None or int(match.group(1)) < 5:
        return (
            f"the installed Swagger UI ({folder.name}) is older than 5 and cannot show OpenAPI 3.1: install "
            "swagger-ui-bundle-v2 (the `openapi` extra) instead of swagger-ui-bundle"
        )
    if not all(folder.joinpath(name).is_file() for name in _ASSETS):
        return f"the Swagger UI package ({folder.name}) lacks some of {', '.join(_ASSETS)}"
    return None


class DocsPage:
    """Answers `GET docs_path` with Swagger UI's page for the document at `openapi_path`."""

    def __init__(self, docs_path: str, openapi_path: str, swagger_ui: _SwaggerUI) -> None:
        self.docs_path = docs_path
        self.openapi_path = openapi_path
        self._swagger_ui = swagger_ui

    async def __call__(self, request: Request) -> Response:
        root_path: str = request.scope.get("root_path", "")
        openapi_url = root_path + self.openapi_path
        problem = self._swagger_ui.problem()
        if problem == "not installed":
            raise HTTPError(404, _NOT_INSTALLED.format(openapi=openapi_url))
        if problem is not None:
            raise HTTPError(404, f"Swagger UI cannot be served: {problem}; the document is at {openapi_url}")
        return Response(
            _page(root_path + self.docs_path.rstrip("/"), openapi_url).encode(),
            media_type="text/html; charset=utf-8",
        )

    def openapi_operation(self, method: str, schema: SchemaOf) -> dict[str, Any]:
        return probe_operation(
            "Swagger UI for this document.",
            {
                "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                "404": json_response("Swagger UI is not installed (the `openapi` extra).", schema(Error)),
            },
        )


class _DocsAsset:
    """One of Swagger UI's files under `docs_path` (left out of the document)."""

    openapi_hidden = True

    def __init__(self, name: str, swagger_ui: _SwaggerUI) -> None:
        self.name = name
        self._swagger_ui = swagger_ui

    async def __call__(self, request: Request) -> Response:
        problem = self._swagger_ui.problem()
        if problem is not None:
            raise HTTPError(404, f"Swagger UI is not served here: {problem}")
        return Response(
            self._swagger_ui.read(self.name),
            media_type=_ASSETS[self.name],
            headers=[("cache-control", "public, max-age=3600")],
        )


def _page(docs_url: str, openapi_url: str) -> str:
    def script_string(value: str) -> str:
        return json.dumps(value).replace("<", "\\u003c")

    base = html.escape(docs_url, quote=True)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>API documentation</title>
<link rel="stylesheet" href="{base}/swagger-ui.css">
<link rel="icon" type="image/png" href="{base}/favicon-32x32.png">
<style>body {{ margin: 0; }}</style>
</head>
<body>
<div id="swagger-ui"></div>
<script src="{base}/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{
  url: {script_string(openapi_url)},
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout"
}});
</script>
</body>
</html>
"""


def openapi_routes(
    host: HostView, openapi_path: str, docs_path: str | None
) -> Iterator[tuple[str, Endpoint]]:
    """The host's routes for the document, and for Swagger UI unless `docs_path` is None."""
    yield openapi_path, OpenAPIEndpoint(host)
    if docs_path is None:
        return
    swagger_ui = _SwaggerUI()
    yield docs_path, DocsPage(docs_path, openapi_path, swagger_ui)
    for name in _ASSETS:
        yield f"{docs_path.rstrip('/')}/{name}", _DocsAsset(name, swagger_ui)
