"""How an endpoint describes itself in the OpenAPI document, and the pieces operations are built of.

The document (`asgi_host.openapi`) asks every endpoint that has an `openapi_operation`
method for its operation; the host's probes, the metrics, the document itself and the
protocol adapters all describe themselves this way, so the builder needs no special
case for any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["RETRY_AFTER", "DescribesItself", "SchemaOf", "json_response", "probe_operation"]

JSON = "application/json"

SchemaOf = Callable[[Any], dict[str, Any]]
"""`schema(T)`: the JSON Schema of msgspec type `T` in the document, a `$ref` into its components."""


@runtime_checkable
class DescribesItself(Protocol):
    """An endpoint that writes its own OpenAPI operation.

    `openapi_operation(method, schema)` returns the operation object for `method`
    (`{"summary": ..., "requestBody": ..., "responses": ...}`); `schema(T)` is the
    JSON Schema of msgspec type `T` there. It is called twice per build (once to learn
    the types, once for the result), so it must not depend on anything else. Unless it
    lists them (or a `default`), the host adds the statuses it answers by itself: 503
    before startup and while loading or draining, 500 for an unhandled error.
    """

    def openapi_operation(self, method: str, schema: SchemaOf) -> dict[str, Any]: ...


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def probe_operation(summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    """An operation of the host's own (a probe, the metrics, the document), tagged `host`."""
    return {"summary": summary, "tags": ["host"], "responses": responses}
