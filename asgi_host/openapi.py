"""OpenAPI 3.1 for the host's routes (`GET /openapi.json`) and Swagger UI to browse it (`GET /docs`).

The document is built from what the host routes, with msgspec's own JSON Schema:

- every `StructEndpoint`: its request type (JSON and MessagePack bodies), its
  response type (`response_type=`, or the handler's return annotation), and
  the error JSON for each status the host answers it with (400, 408, 413, 415,
  422, 500, 503, 504 with a batcher, and the endpoint's own `errors=`);
- the probes: `/livez`, `/readyz` (its `Readiness` body), `/metrics` when on,
  and `/openapi.json` and `/docs` themselves;
- an endpoint with an `openapi_operation` method (`DescribesItself`): what it says;
- any other `Route`: its methods, with a response left undescribed.

Mounted sub-apps are not described: the host cannot see their routes (a
FastAPI sub-app serves its own document under its prefix).

The document is built at the first request for it, after every route is in,
and kept; a route added later (`host.route()` before startup) rebuilds it.
Swagger UI's files come from the `swagger-ui-bundle-v2` package (the
`openapi` extra), served by the host itself: no CDN, nothing fetched.
"""

from __future__ import annotations

import html
import inspect
import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from ._batching import Batcher
from ._errors import HTTPError
from ._health import Readiness
from ._http import Request, Response
from ._routing import Endpoint, Router
from ._structured import JSON, MSGPACK_TYPES, StructEndpoint
from ._version import __version__

__all__ = ["DescribesItself", "Error", "ErrorDetail", "openapi_document"]

logger = logging.getLogger("asgi_host.openapi")


class HostLike(Protocol):
    """What the document is built from: a `Host`'s routes and probes (no import of the host
    module, which imports this one)."""

    @property
    def router(self) -> Router: ...

    @property
    def metrics(self) -> Any: ...

    async def _livez(self, request: Request) -> Response: ...

    async def _readyz(self, request: Request) -> Response: ...


REF_TEMPLATE = "#/components/schemas/{name}"
OPENAPI_VERSION = "3.1.0"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class ErrorDetail(msgspec.Struct, omit_defaults=True):
    """What went wrong. `type` names the status (`validation_error` for 422, ...); `path`, for a
    body that does not match the schema, is where (`$.inputs[0]`)."""

    status: int
    type: str
    message: str
    path: str | None = None


class Error(msgspec.Struct):
    """The error JSON every error status carries, whatever the `Accept` header asked for."""

    error: ErrorDetail


class Liveness(msgspec.Struct):
    """The `/livez` body: the process answers."""

    status: Literal["alive"]


# The statuses the host itself answers a StructEndpoint with, whatever the handler does.
_STRUCT_ERRORS: dict[int, str] = {
    400: "The body is not valid JSON or MessagePack.",
    408: "The body did not arrive within the host's body_timeout_s.",
    413: "The body is larger than max_body_bytes.",
    415: "The content type is neither JSON nor MessagePack.",
    422: "The body does not match the request schema; `path` says where.",
    500: "The endpoint failed; the traceback is in the server log.",
    503: "The host cannot serve it now: not started, loading, failed to load, shutting down, or out of "
    "device memory. `Retry-After` says when to retry, when it is known.",
}
_BATCHER_ERRORS: dict[int, str] = {
    503: "The batch queue is full.",
    504: "No answer within the batcher's timeout_s: the model is overloaded.",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def openapi_document(
    host: HostLike, *, title: str = "asgi_host", version: str = __version__, root_path: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for what `host` routes (mounts are not described).

    `root_path` (the ASGI scope's, when the host is mounted under a prefix)
    becomes the document's server URL, so clients call the right paths.
    """
    endpoints = [
        (path, method, endpoint)
        for path, table in sorted(host.router.paths.items())
        for method, endpoint in sorted(table.items())
        # A literal "{" in an exact path would read as a path template: such routes are left out.
        if method.lower() in _METHODS and not isinstance(endpoint, _DocsAsset) and not _templated(path)
    ]
    types: list[Any] = [Error, Readiness, Liveness]

    def collect(type_: Any) -> dict[str, Any]:
        types.append(type_)
        return {}

    for path, method, endpoint in endpoints:
        if isinstance(endpoint, StructEndpoint):
            types.append(endpoint.request_type)
            if endpoint.response_type is not None:
                types.append(endpoint.response_type)
        elif isinstance(endpoint, DescribesItself):
            _own_operation(endpoint, path, method, collect)  # first pass: the types it names
    schemas, components = _schemas(types)
    schema_of = dict(zip(map(id, types), schemas, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    for path, method, endpoint in endpoints:
        operation = _operation(host, path, method, endpoint, schema_of)
        operation["operationId"] = _operation_id(method, path)
        paths.setdefault(path, {})[method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "Generated by asgi_host from the routes' msgspec types. Mounted sub-apps are "
            "not described here.",
        },
        "paths": paths,
        "components": {"schemas": components},
    }
    if root_path:
        document["servers"] = [{"url": root_path}]
    return document


def _templated(path: str) -> bool:
    return "{" in path or "}" in path


def _schemas(types: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """msgspec's schemas for `types`; a type msgspec cannot describe gets `{}` (any value)."""
    try:
        schemas, components = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
        return list(schemas), dict(components)
    except (TypeError, ValueError):
        pass
    describable = []
    for t in types:
        try:
            msgspec.json.schema(t)
        except (TypeError, ValueError):
            continue
        describable.append(t)
    found, components = msgspec.json.schema_components(describable, ref_template=REF_TEMPLATE)
    by_id = dict(zip(map(id, describable), found, strict=True))
    return [by_id.get(id(t), {}) for t in types], dict(components)


@runtime_checkable
class DescribesItself(Protocol):
    """An endpoint that writes its own OpenAPI operation (a protocol layer with its own wire format).

    `openapi_operation(method, schema)` returns the operation object for `method`
    (`{"summary": ..., "requestBody": ..., "responses": ...}`); `schema(T)` is the
    JSON Schema of msgspec type `T` there, a `$ref` into the document's components.
    It is called twice per build (once to learn the types, once for the result), so it
    must not depend on anything else. The host's own statuses are added unless it
    lists them (or a `default`): 503 before startup and while loading or draining,
    500 for an unhandled error, both as the host's error JSON.
    """

    def openapi_operation(self, method: str, schema: Callable[[Any], dict[str, Any]]) -> dict[str, Any]: ...


def _own_operation(
    endpoint: DescribesItself, path: str, method: str, schema: Callable[[Any], dict[str, Any]]
) -> dict[str, Any] | None:
    try:
        operation = endpoint.openapi_operation(method, schema)
    except Exception:
        logger.exception(
            "the endpoint for %s %s could not describe itself; it is left undescribed", method, path
        )
        return None
    if not isinstance(operation, dict) or not isinstance(operation.get("responses"), dict):
        logger.error(
            "the endpoint for %s %s described itself without responses; it is left undescribed", method, path
        )
        return None
    return dict(operation)


def _operation(
    host: HostLike, path: str, method: str, endpoint: Endpoint, schema_of: Mapping[int, dict[str, Any]]
) -> dict[str, Any]:
    error = schema_of[id(Error)]  # a ref, named "Error" unless an app type has that name too
    if isinstance(endpoint, StructEndpoint):
        return _struct_operation(endpoint, schema_of)
    if isinstance(endpoint, DescribesItself):

        def schema(type_: Any) -> dict[str, Any]:
            return schema_of.get(id(type_), {})

        own = _own_operation(endpoint, path, method, schema)
        if own is not None:
            responses = own["responses"] = dict(own["responses"])
            if "default" not in responses:  # what the host answers before the endpoint runs
                responses.setdefault("500", _json_response(_STRUCT_ERRORS[500], error))
                responses.setdefault(
                    "503", {**_json_response(_STRUCT_ERRORS[503], error), "headers": _RETRY_AFTER}
                )
            return own
    if endpoint == host._livez:
        return _probe(
            "Liveness: the process answers (answered while loading too).",
            {"200": _json_response("Alive.", schema_of[id(Liveness)])},
        )
    if endpoint == host._readyz:
        readiness = schema_of[id(Readiness)]
        return _probe(
            "Readiness: whether routes are served now, and why not.",
            {
                "200": _json_response("Ready: routes are served.", readiness),
                "503": _json_response("Not ready: `status` and `reason` say why.", readiness),
            },
        )
    if host.metrics is not None and endpoint == host.metrics.endpoint:
        return _probe(
            "Prometheus metrics (text exposition format).",
            {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        )
    if isinstance(endpoint, OpenAPIEndpoint):
        return _probe("This document.", {"200": _json_response("The OpenAPI document.", {"type": "object"})})
    if isinstance(endpoint, DocsPage):
        return _probe(
            "Swagger UI for this document.",
            {
                "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                "404": _json_response("Swagger UI is not installed (the `openapi` extra).", error),
            },
        )
    summary = _summary(endpoint)
    operation: dict[str, Any] = {
        "responses": {"default": {"description": "The route's own response (not described)."}}
    }
    if summary:
        operation["summary"] = summary
    return operation


def _struct_operation(
    endpoint: StructEndpoint[Any], schema_of: Mapping[int, dict[str, Any]]
) -> dict[str, Any]:
    request = schema_of[id(endpoint.request_type)]
    response = {} if endpoint.response_type is None else schema_of[id(endpoint.response_type)]
    errors = dict(_STRUCT_ERRORS)
    if any(isinstance(r, Batcher) for r in endpoint.resources):
        for status, text in _BATCHER_ERRORS.items():
            errors[status] = f"{errors[status]} {text}" if status in errors else text
    for status, text in endpoint.errors.items():
        errors[status] = f"{errors[status]} {text}" if status in errors else text
    error = schema_of[id(Error)]  # a ref, named "Error" unless an app type has that name too
    responses: dict[str, Any] = {
        "200": {
            "description": "The answer: JSON, or MessagePack when `Accept` prefers it.",
            "content": _both_encodings(response),
        }
    }
    for status in sorted(errors):
        responses[str(status)] = _json_response(errors[status], error)
        if status == 503:
            responses[str(status)]["headers"] = _RETRY_AFTER
    operation: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "description": "JSON (also when no content type is given) or MessagePack.",
            "content": _both_encodings(request),
        },
        "responses": responses,
    }
    summary = _summary(endpoint.handler)
    if summary:
        operation["summary"] = summary
    return operation


def _both_encodings(schema: dict[str, Any]) -> dict[str, Any]:
    return {media_type: {"schema": schema} for media_type in (JSON, *MSGPACK_TYPES)}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _probe(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "tags": ["host"], "responses": responses}


def _summary(endpoint: Callable[..., Any]) -> str:
    doc = inspect.getdoc(endpoint)
    if not doc or (not inspect.isfunction(endpoint) and not inspect.ismethod(endpoint)):
        return ""
    return doc.strip().split("\n\n")[0].replace("\n", " ")


def _operation_id(method: str, path: str) -> str:
    name = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    return f"{method.lower()}_{name}"


def _route_count(host: HostLike) -> int:
    # Routes are only ever added, so their number tells whether the document is still current.
    return sum(len(table) for table in host.router.paths.values())


class OpenAPIEndpoint:
    """Answers `GET openapi_path` with the document, built once and kept."""

    def __init__(self, host: HostLike) -> None:
        self._host = host
        self._cache: dict[str, bytes] = {}
        self._routes = -1

    async def __call__(self, request: Request) -> Response:
        root_path: str = request.scope.get("root_path", "")
        count = _route_count(self._host)
        if count != self._routes:
            self._cache.clear()
            self._routes = count
        body = self._cache.get(root_path)
        if body is None:
            body = msgspec.json.encode(openapi_document(self._host, root_path=root_path))
            self._cache[root_path] = body
        return Response(body, media_type=JSON)


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


class _DocsAsset:
    """One of Swagger UI's files under `docs_path`."""

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
    host: HostLike, openapi_path: str, docs_path: str | None
) -> Iterator[tuple[str, Endpoint]]:
    """The host's routes for the document, and for Swagger UI unless `docs_path` is None."""
    yield openapi_path, OpenAPIEndpoint(host)
    if docs_path is None:
        return
    swagger_ui = _SwaggerUI()
    yield docs_path, DocsPage(docs_path, openapi_path, swagger_ui)
    for name in _ASSETS:
        yield f"{docs_path.rstrip('/')}/{name}", _DocsAsset(name, swagger_ui)
