"""Typed endpoints: msgspec Structs in and out, JSON or MessagePack on the wire.

Decoders are built once per endpoint, encoders once per process. Bad bytes
answer 400, well-formed data of the wrong shape 422 (with the field path), an
unknown content type 415, an oversized body 413, all as the host's error JSON.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar, get_type_hints

import msgspec

from ._errors import HTTPError
from ._http import Request, Response, media_type
from ._resources import Resource
from ._streaming import EventStream, as_stream

__all__ = ["StructEndpoint"]

T = TypeVar("T")

JSON = "application/json"
_PLAIN_JSON = (JSON.encode("latin-1"), None)  # a content type that needs no parsing to mean JSON
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")

_json_encoder = msgspec.json.Encoder()
_msgpack_encoder = msgspec.msgpack.Encoder()


class StructEndpoint(Generic[T]):
    """An endpoint that decodes the body into `request_type` and encodes what `handler` returns.

    ::

        class Query(msgspec.Struct, forbid_unknown_fields=True):
            text: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]

        class Answer(msgspec.Struct):
            length: int

        async def handle(query: Query, request: Request) -> Answer:
            return Answer(len(query.text))

        Route("/length", StructEndpoint(handle, Query), methods=["POST"])

    The request body may be JSON (`application/json`, also when no content
    type is given) or MessagePack (`application/msgpack`,
    `application/x-msgpack`). The response is JSON unless `Accept` prefers
    MessagePack. A handler that returns an async iterator (of Structs, say) streams them as
    Server-Sent Events, or NDJSON when `Accept` asks for `application/x-ndjson`
    (`EventStream`). Errors are always the error JSON. `max_body_bytes` overrides
    the host's limit for this endpoint. `resources` (a batcher, say) are
    entered by the host after its own resources, so they start after the
    model and stop before it.

    For the OpenAPI document (`asgi_host.openapi`): `response_type` is what
    the handler returns (by default its return annotation, when msgspec can
    describe it), and `errors` maps the statuses the handler raises
    `HTTPError` with to when (the host's own, 400 to 503, are described
    already).
    """

    def __init__(
        self,
        handler: Callable[[T, Request], Awaitable[Any]],
        request_type: type[T],
        *,
        response_type: Any = None,
        errors: Mapping[int, str] | None = None,
        max_body_bytes: int | None = None,
        resources: Sequence[Resource] = (),
    ) -> None:
        self.handler = handler
        self.resources = tuple(resources)
        self.request_type = request_type
        self.max_body_bytes = max_body_bytes
        if response_type is not None:
            _check_describable(response_type, "response_type")
        self.response_type: Any = response_type if response_type is not None else _return_type(handler)
        self.errors = dict(errors or {})
        for status in self.errors:
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise ValueError(f"errors maps 4xx and 5xx statuses to when they happen, got {status!r}")
        self._json_decoder = msgspec.json.Decoder(request_type)
        self._msgpack_decoder = msgspec.msgpack.Decoder(request_type)

    async def __call__(self, request: Request) -> Response | EventStream:
        content_type = request.raw_header(b"content-type")
        decode = self._json_decoder.decode if content_type in _PLAIN_JSON else self._decoder_for(content_type)
        raw_accept = request.raw_header(b"accept")
        accept = None if raw_accept is None else raw_accept.decode("latin-1")
        if self.max_body_bytes is not None:
            request.max_body_bytes = self.max_body_bytes
        body = await request.body()
        try:
            value = decode(body)
        except (msgspec.DecodeError, RecursionError) as exc:
            raise decode_error(exc) from None
        result = await self.handler(value, request)
        if hasattr(result, "__aiter__"):  # a stream of Structs: SSE, or NDJSON by `Accept`
            return as_stream(result, accept)
        if not accept:
            return Response.raw(_json_encoder.encode(result), _HEADERS[JSON])
        return encode(result, response_media_type(accept))

    def _decoder_for(self, content_type: bytes | None) -> Callable[[bytes], T]:
        given = media_type(None if content_type is None else content_type.decode("latin-1"))
        if given == JSON:
            return self._json_decoder.decode
        if given in MSGPACK_TYPES:
            return self._msgpack_decoder.decode
        raise HTTPError(
            415,
            f"content type {given!r} is not supported; send {JSON} or {MSGPACK_TYPES[0]}",
        )


def _check_describable(type_: Any, name: str) -> None:
    try:
        msgspec.json.schema(type_)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}={type_!r} is not a type msgspec can describe: {exc}") from None


def _return_type(handler: Callable[..., Any]) -> Any:
    """The handler's return annotation when msgspec can describe it, else None (undescribed)."""
    try:
        hints = get_type_hints(handler)
    except Exception:  # annotations naming what is not importable from the handler's module
        return None
    returned = hints.get("return")
    if returned is None or returned is Any or returned is type(None):
        return None
    try:
        msgspec.json.schema(returned)
    except (TypeError, ValueError):
        return None
    return returned


def decode_error(exc: msgspec.DecodeError | RecursionError) -> HTTPError:
    """The answer to a body msgspec refused: 422 with the path for the wrong shape, else 400."""
    if isinstance(exc, msgspec.ValidationError):  # a subclass of DecodeError: checked first
        message, _, path = str(exc).partition(" - at `")
        return HTTPError(422, message, path=path.rstrip("`") or "$")
    if isinstance(exc, RecursionError):  # msgspec's answer to JSON or MessagePack nested thousands deep
        return HTTPError(400, "malformed request body: nested too deeply")
    return HTTPError(400, f"malformed request body: {exc}")


def encode(value: Any, media_type: str) -> Response:
    if media_type == JSON:
        return Response.raw(_json_encoder.encode(value), _HEADERS[JSON])
    return Response.raw(_msgpack_encoder.encode(value), _HEADERS[media_type])


# The answer's headers, per media type, built once.
_HEADERS = {
    media_type: ((b"content-type", media_type.encode()), (b"vary", b"accept"))
    for media_type in (JSON, *MSGPACK_TYPES)
}


def response_media_type(accept: str | None) -> str:
    """The response type for an `Accept` header: JSON unless MessagePack is preferred.

    Highest `q` wins; at equal `q` a specific type beats a wildcard (RFC 9110),
    then the one listed first. Nothing acceptable still gets JSON (no 406).
    Clients send the same few `Accept` values: the answers for the last up to 256 are kept.
    """
    if not accept:
        return JSON
    known = _ACCEPTED.get(accept)
    if known is None:
        known = _negotiate(accept)
        if len(_ACCEPTED) >= 256:  # clients choose the header: start afresh rather than grow
            _ACCEPTED.clear()
        _ACCEPTED[accept] = known
    return known


_ACCEPTED: dict[str, str] = {}


def _negotiate(accept: str) -> str:
    best, best_rank = JSON, (0.0, -1, 0)
    for index, item in enumerate(accept.split(",")):
        media_type, _, params = item.partition(";")
        media_type = media_type.strip().lower()
        q = _quality(params)
        if media_type in MSGPACK_TYPES:
            candidate, specificity = media_type, 2
        elif media_type in _JSON_RANGES:
            candidate, specificity = JSON, _JSON_RANGES[media_type]
        else:
            continue
        rank = (q, specificity, -index)
        if q > 0 and rank > best_rank:
            best, best_rank = candidate, rank
    return best


_JSON_RANGES = {JSON: 2, "application/*": 1, "*/*": 0}


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0
