"""What the OpenAI-compatible routes share: the error object, the model card, the request decoder,
and the content type and model checks."""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from ._errors import HTTPError, OpenAIError, openai_type
from ._http import Request, Response, media_type
from ._streaming import Event
from ._structured import JSON

__all__ = [
    "ErrorBody",
    "Model",
    "ModelList",
    "check_json",
    "check_model",
    "decode_request",
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
