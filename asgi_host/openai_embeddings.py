"""OpenAI-compatible embeddings: `POST /v1/embeddings` and `GET /v1/models` over any embedding function.

The official `openai` client (and anything built on it) talks to a host with these routes::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.embeddings.create(model="sentence-transformers/all-MiniLM-L6-v2", input=["a", "b"])

The routes are a thin msgspec layer: the host's model, batcher, limits and
readiness stay as they are; only the wire format is OpenAI's. You give an
async function that embeds a list of texts and counts the tokens each was run
with::

    async def embed(texts: list[str], request: Request) -> tuple[list[list[float]], list[int]]:
        ...

    openai = OpenAIEmbeddings(embed, model="my-model", dimensions=384, max_inputs=64, max_chars=2000)
    app = Host(resources=[...], routes=[*openai.routes()])

Every error of these routes is OpenAI's error object, `{"error": {"message", "type",
"param", "code"}}`, the ones the host answers before the endpoint runs included (503
while loading, 405, 408, 413): invalid requests are 400 (OpenAI answers 400 where the
host's own routes answer 422), an unknown model 404, a body over `max_body_bytes` 413,
another content type than JSON 415, and the host's own 503/504 (queue full, out of
memory, timeout) keep their status and `Retry-After`. See docs/protocols.md.
"""

from __future__ import annotations

import array
import base64
import math
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import msgspec

from ._errors import OpenAIError
from ._http import Request, Response
from ._openai import (
    Model,
    ModelList,
    OpenAIOperation,
    check_json,
    check_model,
    check_model_id,
    decode_request,
    model_routes,
    openai_error_response,
)
from ._resources import Resource
from ._routing import Mount, Route

__all__ = [
    "EmbedFn",
    "Embedding",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "Model",
    "ModelList",
    "OpenAIEmbeddings",
    "Usage",
    "openai_error_response",
]

EmbedFn = Callable[[list[str], Request], Awaitable[tuple[Sequence[Sequence[float]], Sequence[int]]]]
"""`embed(texts, request) -> (vectors, token_counts)`: one vector and one token count per text, in order."""


class EmbeddingsRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of `POST /v1/embeddings` (OpenAI's fields; any other is refused, as OpenAI does)."""

    # Text, a list of texts, or OpenAI's token-id forms (list[int], list[list[int]]), which
    # are decoded only to be refused with a clear message: the ids are another tokenizer's.
    input: str | list[str | int | list[int]]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None  # accepted and ignored


class Embedding(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # floats, or base64 of little-endian float32


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


def _base64_float32(vector: Sequence[float]) -> str:
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


class OpenAIEmbeddings:
    """OpenAI's embeddings and models routes for one model, served by `embed`.

    - `model`: the id clients send and `GET /v1/models` lists; another id is 404
      (`model_not_found`).
    - `dimensions`: the length of the model's vectors. A request's `dimensions`
      must be absent or equal to it (400 otherwise): truncating a model that was
      not trained for shorter vectors (Matryoshka) answers worse embeddings, silently.
    - `max_inputs`, `max_chars`: texts per request and characters per text, at
      most (400 past them); `max_body_bytes` overrides the host's body limit.
    - `created`, `owned_by`: what the models list says (`created` defaults to
      when this object was made).
    - `resources` (a batcher, say) start with the host, as a `StructEndpoint`'s.

    `embed(texts, request)` returns one vector and one token count per text;
    `usage.prompt_tokens` is the sum of the counts, so count what the model saw
    (after truncation). An adapter like `Classifier` and `KServe`: give it to the
    host's `routes` (or take `routes()`); `prefix` is where its three routes live.
    """

    def __init__(
        self,
        embed: EmbedFn,
        *,
        model: str,
        dimensions: int,
        max_inputs: int = 2048,
        max_chars: int | None = None,
        max_body_bytes: int | None = None,
        created: int | None = None,
        owned_by: str = "asgi_host",
        resources: Sequence[Resource] = (),
        prefix: str = "/v1",
    ) -> None:
        check_model_id(model)
        for name, value in (("dimensions", dimensions), ("max_inputs", max_inputs), ("max_chars", max_chars)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.embed = embed
        self.model = model
        self.dimensions = dimensions
        self.max_inputs = max_inputs
        self.max_chars = max_chars
        self.max_body_bytes = max_body_bytes
        self.created = int(time.time()) if created is None else created
        self.owned_by = owned_by
        self.resources = tuple(resources)
        self.prefix = prefix.rstrip("/")
        self._decoder = msgspec.json.Decoder(EmbeddingsRequest)

    def routes(self) -> list[Route | Mount]:
        """`POST {prefix}/embeddings`, `GET {prefix}/models` and `GET {prefix}/models/{model}`."""
        create = OpenAIOperation(self.create, EmbeddingsResponse, EmbeddingsRequest)
        return [
            Route(f"{self.prefix}/embeddings", create, methods=["POST"], resources=self.resources),
            *model_routes(self.prefix, self.model_card()),
        ]

    def model_card(self) -> Model:
        return Model(id=self.model, created=self.created, owned_by=self.owned_by)

    async def create(self, request: Request) -> Response:
        """Creates an embedding vector for each input text (OpenAI's embeddings API)."""
        check_json(request)
        if self.max_body_bytes is not None:
            request.max_body_bytes = self.max_body_bytes
        body = self._decode(await request.body())
        check_model(body.model, self.model)
        if body.dimensions is not None and body.dimensions != self.dimensions:
            raise OpenAIError(
                400,
                f"dimensions={body.dimensions} is not supported: `{self.model}` answers "
                f"{self.dimensions} floats, and shorter embeddings need a model trained for them; "
                f"leave dimensions out or send {self.dimensions}",
                param="dimensions",
            )
        texts = self._texts(body.input)
        vectors, counts = await self.embed(texts, request)
        data = self._encode(vectors, counts, len(texts), body.encoding_format)
        tokens = sum(counts)
        usage = Usage(prompt_tokens=tokens, total_tokens=tokens)
        return Response.json(EmbeddingsResponse(data=data, model=self.model, usage=usage))

    def _decode(self, raw: bytes) -> EmbeddingsRequest:
        try:
            body: EmbeddingsRequest = decode_request(self._decoder, raw)
        except OpenAIError as exc:
            if exc.param == "encoding_format":
                raise OpenAIError(400, f"{exc.message}; send 'float' or 'base64'", param=exc.param) from None
            raise
        return body

    def _texts(self, value: str | list[str | int | list[int]]) -> list[str]:
        items: list[Any] = [value] if isinstance(value, str) else value
        if not items:
            raise OpenAIError(
                400, "input is an empty list; send a string or a list of strings", param="input"
            )
        if len(items) > self.max_inputs:
            raise OpenAIError(
                400,
                f"{len(items)} inputs is more than max_inputs={self.max_inputs}; split them",
                param="input",
            )
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise OpenAIError(
                    400,
                    f"input[{i}] is a token id or token-id array; this server takes text only "
                    "(the ids would be another tokenizer's): send strings",
                    param="input",
                )
            if not item:
                raise OpenAIError(400, f"input[{i}] is an empty string", param="input")
            if self.max_chars is not None and len(item) > self.max_chars:
                raise OpenAIError(
                    400,
                    f"input[{i}] has {len(item)} characters, more than max_chars={self.max_chars}",
                    param="input",
                )
        return items

    def _encode(
        self, vectors: Sequence[Sequence[float]], counts: Sequence[int], n: int, encoding: str
    ) -> list[Embedding]:
        if len(vectors) != n or len(counts) != n:
            raise RuntimeError(
                f"embed returned {len(vectors)} vectors and {len(counts)} counts for {n} texts"
            )
        data: list[Embedding] = []
        for i, vector in enumerate(vectors):
            if len(vector) != self.dimensions:
                raise RuntimeError(
                    f"embed returned {len(vector)} floats for input[{i}], not {self.dimensions}"
                )
            # Never answer NaN as an embedding. The sum is NaN or infinite when any element is (and
            # rarely when finite ones overflow it): only then look at each element.
            if not math.isfinite(sum(vector)) and not all(math.isfinite(x) for x in vector):
                raise OpenAIError(400, f"the model's output for input[{i}] is not finite", param="input")
            embedding: list[float] | str
            if encoding == "base64":
                embedding = _base64_float32(vector)
            else:  # Python floats as they are (the common case); anything else converted
                embedding = vector if type(vector) is list else [float(x) for x in vector]
            data.append(Embedding(index=i, embedding=embedding))
        return data
