"""OpenAI's chat and completions API over a `Generator`: `POST /v1/chat/completions`, `POST
/v1/completions`, `GET /v1/models`, streaming or not.

The official `openai` client (and anything built on it) talks to a host with these routes::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    for chunk in client.chat.completions.create(model=..., messages=[...], stream=True):
        print(chunk.choices[0].delta.content or "", end="")

Streams are Server-Sent Events as OpenAI sends them: `chat.completion.chunk`s (the role first,
then the content, then an empty delta with `finish_reason`), a usage chunk with no choices when
`stream_options.include_usage` is set, then `data: [DONE]`. What a slow reader has not read yet is
merged into one chunk. A client that leaves, streaming or not, cancels its generation at once.
Every error is OpenAI's error object (the host's own 503 while loading and 405 included); one
after a stream began is `data: {"error": ...}`, which the client raises. See docs/streaming.md.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec

from ._errors import OpenAIError
from ._http import Request, Response
from ._openai import (
    POST_FAILURES,
    Model,
    OpenAIOperation,
    check_json,
    check_model,
    check_model_id,
    decode_request,
    model_routes,
    openai_error_event,
)
from ._openai_chat_types import (
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ChatRequest,
    ChunkChoice,
    ChunkDelta,
    Common,
    Completion,
    CompletionChunk,
    CompletionRequest,
    TextChoice,
    Usage,
)
from ._routing import Mount, Route
from ._streaming import EventStream
from .generation import Delta, Generator, SamplingParams

FAILURES = {
    **POST_FAILURES,
    "400": "An invalid request (a field, a limit, the context length): OpenAI's error object.",
    "503": "Loading, shutting down, or every slot taken and the queue full (`Retry-After`).",
}

__all__ = [
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatRequest",
    "Completion",
    "CompletionChunk",
    "CompletionRequest",
    "OpenAIChat",
]


class OpenAIChat:
    """OpenAI's chat completions, completions and models routes over `generator`.

    - `encode(text)`: the prompt's token ids (the tokenizer's, special tokens parsed);
    - `chat_prompt(messages)`: the prompt for a list of `{"role", "content"}` messages, the model's
      chat template with the generation prompt added;
    - `model`: the id clients send and the models list names (another is 404, `model_not_found`);
    - `max_tokens`: the default when a request gives none (None: as many as the slot holds).

    An adapter like `OpenAIEmbeddings`: give it to the host's `routes`; `prefix` is where its
    routes live. The `Generator` is a resource of the host, after the model.
    """

    def __init__(
        self,
        generator: Generator,
        *,
        encode: Callable[[str], list[int]],
        chat_prompt: Callable[[list[dict[str, str]]], str],
        model: str,
        max_tokens: int | None = None,
        owned_by: str = "asgi_host",
        created: int | None = None,
        prefix: str = "/v1",
    ) -> None:
        check_model_id(model)
        self.generator = generator
        self.encode = encode
        self.chat_prompt = chat_prompt
        self.model = model
        self.max_tokens = max_tokens
        self.prefix = prefix.rstrip("/")
        created = int(time.time()) if created is None else created
        self.card = Model(id=model, created=created, owned_by=owned_by)
        self._chat = msgspec.json.Decoder(ChatRequest)
        self._completion = msgspec.json.Decoder(CompletionRequest)

    def routes(self) -> list[Route | Mount]:
        prefix = self.prefix
        chat = OpenAIOperation(self.chat, ChatCompletion, ChatRequest, streams=True, failures=FAILURES)
        complete = OpenAIOperation(
            self.complete, Completion, CompletionRequest, streams=True, failures=FAILURES
        )
        return [
            Route(f"{prefix}/chat/completions", chat, methods=["POST"]),
            Route(f"{prefix}/completions", complete, methods=["POST"]),
            *model_routes(prefix, self.card),
        ]

    async def chat(self, request: Request) -> Response | EventStream:
        """Creates a model response for the given chat conversation (OpenAI's chat completions)."""
        body: ChatRequest = await self._read(request, self._chat)
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        prompt = self.encode(self.chat_prompt(messages))
        params = self._params(body, prompt, body.max_completion_tokens or body.max_tokens)
        answer = _Answer("chatcmpl", self.model, body)
        if body.stream:
            stream = _chat_chunks(answer, self.generator.generate(prompt, params))
            return EventStream(stream, coalesce=_merge_chat, error_event=openai_error_event)
        delta = await _until_disconnect(request, self.generator.complete(prompt, params))
        choice = ChatChoice(0, ChatMessage("assistant", delta.text), _finish(delta))
        completion = ChatCompletion(
            id=answer.id, created=answer.created, model=self.model, choices=[choice], usage=_usage(delta)
        )
        return Response.json(completion)

    async def complete(self, request: Request) -> Response | EventStream:
        """Creates a completion for the given prompt (OpenAI's legacy completions)."""
        body: CompletionRequest = await self._read(request, self._completion)
        prompt = self.encode(body.prompt if isinstance(body.prompt, str) else body.prompt[0])
        params = self._params(body, prompt, body.max_tokens)
        answer = _Answer("cmpl", self.model, body)
        if body.stream:
            stream = _text_chunks(answer, self.generator.generate(prompt, params))
            return EventStream(stream, coalesce=_merge_text, error_event=openai_error_event)
        delta = await _until_disconnect(request, self.generator.complete(prompt, params))
        choice = TextChoice(0, delta.text, _finish(delta))
        completion = Completion(
            id=answer.id, created=answer.created, model=self.model, choices=[choice], usage=_usage(delta)
        )
        return Response.json(completion)

    async def _read(self, request: Request, decoder: msgspec.json.Decoder[Any]) -> Any:
        check_json(request)
        body = decode_request(decoder, await request.body())
        check_model(body.model, self.model)
        if body.stream_options is not None and not body.stream:
            raise OpenAIError(
                400, "stream_options is only allowed when stream is true", param="stream_options"
            )
        return body

    def _params(self, body: Common, prompt: list[int], max_tokens: int | None) -> SamplingParams:
        room = self.generator.max_sequence_tokens - len(prompt) + 1
        if room < 1:
            raise OpenAIError(
                400,
                f"this model's maximum context length is {self.generator.max_sequence_tokens} tokens, "
                f"and the prompt has {len(prompt)}",
                param="messages" if isinstance(body, ChatRequest) else "prompt",
                code="context_length_exceeded",
            )
        wanted = max_tokens or self.max_tokens or room
        if max_tokens is not None and max_tokens > room:
            raise OpenAIError(
                400,
                f"this model's maximum context length is {self.generator.max_sequence_tokens} tokens: the "
                f"prompt has {len(prompt)} and max_tokens={max_tokens} asks for more than the {room} left",
                param="max_tokens",
                code="context_length_exceeded",
            )
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if any(not s for s in stop):
            raise OpenAIError(400, "a stop sequence is not empty", param="stop")
        return SamplingParams(
            max_tokens=min(wanted, room) if max_tokens is None else wanted,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            seed=body.seed,
            stop=stop,
        )


class _Answer:
    """What every chunk of one answer shares."""

    def __init__(self, kind: str, model: str, body: Common) -> None:
        self.id = f"{kind}-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model
        self.usage = body.stream_options is not None and body.stream_options.include_usage


async def _until_disconnect(request: Request, work: Awaitable[Delta]) -> Delta:
    """A whole (not streamed) answer; the client leaving cancels it, as it cancels a stream."""
    return await request.unless_client_leaves(lambda: work, "the client left before its answer")


def _finish(delta: Delta) -> str | None:
    return delta.finish_reason if delta.finish_reason != "cancelled" else None


def _usage(delta: Delta) -> Usage:
    return Usage(delta.prompt_tokens, delta.completion_tokens, delta.prompt_tokens + delta.completion_tokens)


async def _chat_chunks(answer: _Answer, deltas: AsyncIterator[Delta]) -> AsyncIterator[Any]:
    def chunk(choices: list[ChunkChoice], usage: Any = None) -> ChatCompletionChunk:
        usage = usage if answer.usage else msgspec.UNSET
        return ChatCompletionChunk(
            id=answer.id, created=answer.created, model=answer.model, choices=choices, usage=usage
        )

    try:
        first = await anext(deltas)  # before any byte: a full queue is still a 503
        yield chunk([ChunkChoice(0, ChunkDelta(role="assistant", content=""))])
        delta: Delta | None = first
        while delta is not None:
            if delta.text:
                yield chunk([ChunkChoice(0, ChunkDelta(content=delta.text))])
            if delta.finish_reason is not None:
                yield chunk([ChunkChoice(0, ChunkDelta(), _finish(delta))])
                if answer.usage:
                    yield chunk([], _usage(delta))
                yield "[DONE]"
                return
            delta = await anext(deltas, None)
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


async def _text_chunks(answer: _Answer, deltas: AsyncIterator[Delta]) -> AsyncIterator[Any]:
    def chunk(choices: list[TextChoice], usage: Any = None) -> Completion:
        usage = usage if answer.usage else msgspec.UNSET
        return Completion(
            id=answer.id, created=answer.created, model=answer.model, choices=choices, usage=usage
        )

    try:
        async for delta in deltas:
            if delta.text or delta.finish_reason is not None:
                yield chunk([TextChoice(0, delta.text, _finish(delta))])
            if delta.finish_reason is not None:
                if answer.usage:
                    yield chunk([], _usage(delta))
                yield "[DONE]"
                return
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]


def _merge_chat(pending: Any, new: Any) -> Any:
    """Two content chunks the client has not read yet, as one (nothing else merges)."""
    if not (isinstance(pending, ChatCompletionChunk) and isinstance(new, ChatCompletionChunk)):
        return None
    if len(pending.choices) != 1 or len(new.choices) != 1:
        return None
    a, b = pending.choices[0], new.choices[0]
    if a.finish_reason or b.finish_reason or a.delta.role or b.delta.role or a.delta.content is None:
        return None
    merged = ChunkChoice(0, ChunkDelta(content=a.delta.content + (b.delta.content or "")))
    return msgspec.structs.replace(pending, choices=[merged])


def _merge_text(pending: Any, new: Any) -> Any:
    if not (isinstance(pending, Completion) and isinstance(new, Completion)):
        return None
    if len(pending.choices) != 1 or len(new.choices) != 1 or pending.choices[0].finish_reason:
        return None
    a, b = pending.choices[0], new.choices[0]
    return msgspec.structs.replace(pending, choices=[TextChoice(0, a.text + b.text, b.finish_reason)])
