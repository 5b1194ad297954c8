"""What the OpenAI-compatible routes share: the error object, the model card, the request decoder,
and the content type and model checks."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import msgspec

from ._describe import SchemaOf, json_response
from ._errors import HTTPError, OpenAIError, openai_type
from ._http import Request, Response, media_type
from ._routing import Route
from ._streaming import Event
from ._structured import JSON

__all__ = [
    "ErrorBody",
    "Model",
    "ModelList",
    "OpenAIOperation",
    "check_json",
    "check_model",
    "check_model_id",
    "decode_request",
    "model_routes",
    "openai_error_event",
    "openai_error_response",
]


class ErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None  # always present, null when no single field is at fault (as OpenAI)
    code: str | None


class ErrorBody(msgspec.Struct):
    """OpenAI's error object."""

    error: ErrorDetail


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


_json_encoder = msgspec.json.Encoder()


def _body(error: HTTPError) -> tuple[int, ErrorBody]:
    if isinstance(error, OpenAIError):
        status, kind, param, code = error.status, error.type, error.param, error.code
    else:
        status = 400 if error.status == 422 else error.status
        kind, param, code = openai_type(status), None, error.type
    return status, ErrorBody(ErrorDetail(message=error.message, type=kind, param=param, code=code))


def openai_error_response(error: HTTPError) -> Response:
    """`error` as OpenAI's error object; the host's own errors (a 413, a 503) keep their status.

    A 422 becomes 400, the status OpenAI uses for every invalid request; the host's
    error type (`payload_too_large`, `out_of_memory`, ...) becomes the `code`.
    """
    status, body = _body(error)
    return Response(_json_encoder.encode(body), status=status, media_type=JSON, headers=error.headers)


def openai_error_event(error: HTTPError) -> Event:
    """An error after a stream began: `data: {"error": {...}}`, which OpenAI's clients raise as they
    read it (as vLLM sends it)."""
    return Event(_body(error)[1])


def check_json(request: Request) -> None:
    given = media_type(request.headers.get("content-type"))
    if given != JSON:
        raise OpenAIError(415, f"content type {given!r} is not supported; send application/json")


def check_model_id(model: str) -> None:
    """A served model id must be one path segment (it is also in `/v1/models/{id}`)."""
    if not model or "?" in model or "#" in model:
        raise ValueError(f"model id {model!r} must be a non-empty path segment (no '?' or '#')")


def check_model(asked: str, served: str) -> None:
    if asked != served:
        raise OpenAIError(
            404,
            f"The model `{asked}` does not exist; this server serves `{served}` (the models list names it)",
            param="model",
            code="model_not_found",
        )


def decode_request(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    """The body decoded, or a 400 in OpenAI's shape naming the field at fault (`param`)."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: check it first
        message, _, path = str(exc).partition(" - at `")
        path = path.rstrip("`")
        # The top-level field at fault: from the path, or named in the message when the path is
        # the object itself ("Object missing required field `model`", "... unknown field `x`").
        named = re.search(r"field `([^`]+)`", message)
        top = path.removeprefix("$").removeprefix(".").partition("[")[0].partition(".")[0]
        field = top or (named.group(1) if named else None)
        raise OpenAIError(400, f"{message} (at {path})" if path else message, param=field) from None
    except msgspec.DecodeError as exc:
        raise OpenAIError(400, f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise OpenAIError(400, "malformed JSON body: nested too deeply") from None


# What a POST route of these APIs may answer besides 200, each with OpenAI's error object.
POST_FAILURES = {
    "400": "An invalid request (a field, a limit): OpenAI's error object, naming the field in `param`.",
    "404": "Another model than this server's (`model_not_found`).",
    "408": "The body did not arrive within the host's body_timeout_s.",
    "413": "The body is larger than max_body_bytes.",
    "415": "Another content type than JSON.",
    "500": "A bug: the traceback is in the server log.",
    "503": "Loading, shutting down, or the queue full (`Retry-After`).",
}
GET_FAILURES = {"503": "Loading or shutting down (`Retry-After`)."}


class OpenAIOperation:
    """An endpoint of an OpenAI-compatible API: answered in OpenAI's error shape (every status of its
    route, the host's own included) and described in /openapi.json with its request and answer.

    `request_type`: the body's Struct (None for a GET); `streams`: a 200 may also be Server-Sent
    Events (`stream: true`); the summary is the first line of the endpoint's docstring.
    """

    error_format = staticmethod(openai_error_response)

    def __init__(
        self,
        endpoint: Callable[[Request], Awaitable[Any]],
        response_type: type,
        request_type: type | None = None,
        *,
        streams: bool = False,
        failures: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.response_type = response_type
        self.request_type = request_type
        self.streams = streams
        self.failures = dict(failures or (POST_FAILURES if request_type is not None else GET_FAILURES))

    async def __call__(self, request: Request) -> Any:
        return await self.endpoint(request)

    def openapi_operation(self, method: str, schema: SchemaOf) -> dict[str, Any]:
        error = schema(ErrorBody)
        content: dict[str, Any] = {"application/json": {"schema": schema(self.response_type)}}
        description = "The answer."
        if self.streams:
            content["text/event-stream"] = {"schema": {"type": "string"}}
            description = "The answer; with `stream: true`, Server-Sent Events, then `data: [DONE]`."
        operation: dict[str, Any] = {
            "summary": (self.endpoint.__doc__ or "").strip().split("\n")[0],
            "tags": ["openai"],
            "responses": {
                "200": {"description": description, "content": content},
                **{status: json_response(text, error) for status, text in self.failures.items()},
            },
        }
        if self.request_type is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema(self.request_type)}},
            }
        return operation


def model_routes(prefix: str, card: Model) -> list[Route]:
    """`GET {prefix}/models` and `GET {prefix}/models/{id}`: the one model a server serves."""

    async def list_models(request: Request) -> Response:
        """Lists the models this server serves (one)."""
        return Response.json(ModelList(data=[card]))

    async def retrieve_model(request: Request) -> Response:
        """The model this server serves."""
        return Response.json(card)

    return [
        Route(f"{prefix}/models", OpenAIOperation(list_models, ModelList), methods=["GET"]),
        Route(f"{prefix}/models/{card.id}", OpenAIOperation(retrieve_model, Model), methods=["GET"]),
    ]
