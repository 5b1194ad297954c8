"""`KServe`: the Open Inference Protocol's routes for some `V2Model`s, with the protocol's errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from .._errors import HTTPError
from .._http import Request, Response
from .._resources import Resource
from .._routing import Mount, Route, route_path
from .._version import __version__
from .._view import HostView
from ._model import RESERVED_PARAMETERS, V2Model
from ._openapi import CONFIG, LIVE, MODEL_METADATA, READY, SERVER_METADATA, get_operation, infer_operation

__all__ = ["EXTENSIONS", "KServe", "v2_error_response"]

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ("binary_tensor_data",)
# Answers with more elements than this are encoded off the event loop (JSON of 64 Ki floats takes
# a few milliseconds; a whole 1 MiB request's worth of outputs, much longer).
ENCODE_ON_LOOP_ELEMENTS = 65_536

_json_encoder = msgspec.json.Encoder()


Handler = Callable[[Request], Awaitable[Response]]


def v2_error_response(error: HTTPError) -> Response:
    """The protocol's error: `{"error": "<message>"}` with the status (and headers) of `error`."""
    return Response(
        _json_encoder.encode({"error": error.message}),
        status=error.status,
        media_type="application/json",
        headers=error.headers,
    )


class V2Operation:
    """A v2 endpoint: the protocol's error object for every status of its route, and its own
    operation (summary, request, answers) in /openapi.json."""

    error_format = staticmethod(v2_error_response)

    def __init__(self, endpoint: Handler, operation: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.operation = operation

    async def __call__(self, request: Request) -> Response:
        return await self.endpoint(request)

    def openapi_operation(self, method: str, schema: Any) -> dict[str, Any]:
        return self.operation


class KServe:
    """The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) for `models`.

    ::

        app = Host(resources=[model], routes=[KServe(iris)])

    Exact routes for `/v2`, `/v2/health/live`, `/v2/health/ready` and, per model,
    `/v2/models/{name}` (and `/versions/{version}`) with `/ready`, `/infer` and `/config`,
    then a prefix route `/v2` for the protocol's 404 on any other path under `/v2` (an
    unknown model, say). Every error, the host's own 503 while loading and 405 included, is
    the protocol's `{"error": "..."}`. The endpoints carry their resources (each model's
    output check and batcher, and the one that gives `/v2/health/ready` the host's
    readiness), so the host starts them after the models.
    """

    error_format = staticmethod(v2_error_response)

    def __init__(self, *models: V2Model, server_name: str = "asgi_host") -> None:
        if not models:
            raise ValueError("KServe needs at least one V2Model")
        names = [model.name for model in models]
        if len(set(names)) != len(names):
            raise ValueError(f"two v2 models share a name in {names}")
        self.models = {model.name: model for model in models}
        self.server_name = server_name
        self.host: HostView | None = None
        self.resources: tuple[Resource, ...] = (
            Resource(self._attach, name="kserve v2 server"),
            *(resource for model in models for resource in model.resources),
        )

    def routes(self) -> list[Route | Mount]:
        def route(path: str, handler: Handler, operation: dict[str, Any], **options: Any) -> Route:
            return Route(path, V2Operation(handler, operation), **options)

        not_ready = "Not ready (loading, draining, a model not resident); the reason in `error`."
        routes: list[Route | Mount] = [
            route(
                "/v2",
                self.server_metadata,
                get_operation("The server: name, version, extensions.", SERVER_METADATA),
                resources=self.resources[:1],
            ),
            route("/v2/health/live", self.live, get_operation("Liveness: the server answers.", LIVE)),
            route(
                "/v2/health/ready",
                self.ready,
                get_operation("Readiness: every model can answer now.", READY, not_ready),
            ),
        ]
        for model in self.models.values():
            base, name = f"/v2/models/{model.name}", repr(model.name)
            infer, metadata = self._infer(model), self._metadata(model)
            ready, config = self._model_ready(model), self._config(model)
            operations = {
                "": get_operation(f"{name}: its inputs, outputs and versions.", MODEL_METADATA),
                "/ready": get_operation(f"Whether {name} can answer now.", READY, not_ready),
                "/config": get_operation(
                    f"The configuration of {name}, as Triton's clients read it.", CONFIG
                ),
            }
            for prefix in (base, f"{base}/versions/{model.version}"):
                routes += [
                    route(prefix, metadata, operations[""]),
                    route(f"{prefix}/ready", ready, operations["/ready"]),
                    route(f"{prefix}/config", config, operations["/config"]),
                    route(
                        f"{prefix}/infer",
                        infer,
                        infer_operation(model),
                        methods=["POST"],
                        resources=model.resources,
                    ),
                ]
        routes.append(Route("/v2", self.not_found, methods=None, prefix=True, error_format=v2_error_response))
        return routes

    @asynccontextmanager
    async def _attach(self, host: HostView) -> AsyncIterator[None]:
        self.host = host
        try:
            yield
        finally:
            self.host = None

    async def server_metadata(self, request: Request) -> Response:
        return Response.json(
            {"name": self.server_name, "version": __version__, "extensions": list(EXTENSIONS)}
        )

    async def live(self, request: Request) -> Response:
        return Response.json({"live": True})

    async def ready(self, request: Request) -> Response:
        host = self.host
        if host is None:
            raise HTTPError(503, "the server has not started")
        readiness = host.readiness()
        if readiness.status != "ready":
            reason = f": {readiness.reason}" if readiness.reason else ""
            raise HTTPError(503, f"the server is not ready ({readiness.status}{reason})")
        waiting = [name for name, model in self.models.items() if not model.available(request.state)]
        if waiting:
            raise HTTPError(503, f"models not ready: {', '.join(waiting)}")
        return Response.json({"ready": True})

    def _metadata(self, model: V2Model) -> Handler:
        static = model.metadata()

        async def metadata(request: Request) -> Response:
            # The version of the weights serving now (it changes with a reload), beside the
            # protocol's own `versions` (the route's, fixed): `parameters.model_version`.
            version = getattr(request.state.get(model.resource), "version", None)
            if version is None:
                return Response.json(static)
            return Response.json({**static, "parameters": {"model_version": version}})

        return metadata

    def _config(self, model: V2Model) -> Handler:
        body = _json_encoder.encode(model.config())

        async def config(request: Request) -> Response:
            return Response(body, media_type="application/json")

        return config

    def _model_ready(self, model: V2Model) -> Handler:
        async def ready(request: Request) -> Response:
            if self.host is None or not model.ready(request.state):
                raise HTTPError(503, f"model {model.name!r} is not ready")
            return Response.json({"name": model.name, "ready": True})

        return ready

    def _infer(self, model: V2Model) -> Handler:
        async def infer(request: Request) -> Response:
            encoding = request.headers.get("content-encoding", "identity").strip().lower()
            if encoding != "identity":
                raise HTTPError(415, f"Content-Encoding {encoding!r} is not supported; send the body as is")
            if model.max_body_bytes is not None:
                request.max_body_bytes = model.max_body_bytes
            body = await request.body()
            parsed, arrays = model.parse(body, request.headers.get(HEADER_LENGTH))
            chosen = model.requested(parsed)
            parameters: dict[str, Any] = {
                key: value
                for key, value in (parsed.parameters or {}).items()
                if key not in RESERVED_PARAMETERS
            }
            outputs = await model.run(arrays, parameters, request)
            if sum(outputs[index].size for index, _ in chosen) <= ENCODE_ON_LOOP_ELEMENTS:
                return model.respond(parsed, outputs, chosen)
            # A large answer is encoded on a worker thread: the loop keeps serving (probes included).
            response: Response = await anyio.to_thread.run_sync(model.respond, parsed, outputs, chosen)
            return response

        return infer

    async def not_found(self, request: Request) -> Response:
        """Every other path under `/v2`: the protocol's 404 (an unknown model, version or route)."""
        path = request.path
        parts = route_path(request.scope).strip("/").split("/")[1:]  # after "v2"
        message = f"no route for {path!r} in the Open Inference Protocol"
        if len(parts) >= 2 and parts[0] == "models":
            model = self.models.get(parts[1])
            if model is None:
                message = f"Request for unknown model: '{parts[1]}' is not found"
            elif len(parts) >= 4 and parts[2] == "versions" and parts[3] != model.version:
                message = f"Request for unknown model: '{parts[1]}' version {parts[3]} is not found"
        raise HTTPError(404, message)
