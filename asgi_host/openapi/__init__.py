"""OpenAPI 3.1 for the host's routes (`GET /openapi.json`) and Swagger UI to browse it (`GET /docs`).

The document is built from what the host routes, with msgspec's own JSON Schema:

- every `StructEndpoint`: its request type (JSON and MessagePack bodies), its
  response type (`response_type=`, or the handler's return annotation), and
  the error JSON for each status the host answers it with (400, 408, 413, 415,
  422, 500, 503, 504 with a batcher, and the endpoint's own `errors=`);
- every endpoint with an `openapi_operation` method (`DescribesItself`): what it
  says. The host's probes (`/livez`, `/readyz`), `/metrics`, this document and
  `/docs`, and the protocol adapters (KServe v2, OpenAI) describe themselves;
- any other `Route`: its methods, with a response left undescribed.

Mounted sub-apps and prefix routes are not described: the host cannot see their
routes (a FastAPI sub-app serves its own document under its prefix).

The document is built at the first request for it, after every route is in,
and kept; a route added later (`host.route()` before startup) rebuilds it.
Swagger UI's files come from the `swagger-ui-bundle-v2` package (the
`openapi` extra), served by the host itself: no CDN, nothing fetched.
"""

from .._describe import DescribesItself
from .._http import Error, ErrorDetail
from ._document import OpenAPIEndpoint, openapi_document
from ._swagger import DocsPage, openapi_routes

__all__ = [
    "DescribesItself",
    "DocsPage",
    "Error",
    "ErrorDetail",
    "OpenAPIEndpoint",
    "openapi_document",
    "openapi_routes",
]
