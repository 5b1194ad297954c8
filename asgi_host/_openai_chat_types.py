"""OpenAI's chat and completions bodies, requests and answers, as msgspec Structs (`openai_chat`)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = [
    "ChatChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatMessage",
    "ChatRequest",
    "ChunkChoice",
    "ChunkDelta",
    "Common",
    "Completion",
    "CompletionChunk",
    "CompletionRequest",
    "Message",
    "TextChoice",
    "Usage",
]

Positive = Annotated[int, msgspec.Meta(ge=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0, le=2)]
TopP = Annotated[float, msgspec.Meta(gt=0, le=1)]
Stop = str | Annotated[list[str], msgspec.Meta(max_length=4)]


class TextPart(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["text"]
    text: str


class Message(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(msgspec.Struct, forbid_unknown_fields=True):
    include_usage: bool = False


class Common(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    seed: int | None = None
    stop: Stop | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] | None = None  # one choice per request
    user: str | None = None  # accepted and ignored
    frequency_penalty: Annotated[float, msgspec.Meta(ge=0, le=0)] | None = None  # 0 only: not supported
    presence_penalty: Annotated[float, msgspec.Meta(ge=0, le=0)] | None = None


class ChatRequest(Common, kw_only=True):
    """The body of `POST /v1/chat/completions` (any other field is refused, as OpenAI does)."""

    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    max_tokens: Positive | None = None
    max_completion_tokens: Positive | None = None
    logprobs: Literal[False] | None = None  # not supported


class CompletionRequest(Common, kw_only=True):
    """The body of `POST /v1/completions` (the legacy text completions)."""

    prompt: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=1)]
    max_tokens: Positive | None = 16  # OpenAI's default for completions
    echo: Literal[False] | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(msgspec.Struct):
    role: Literal["assistant"]
    content: str


class ChatChoice(msgspec.Struct):
    index: int
    message: ChatMessage
    finish_reason: str | None
    logprobs: None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(msgspec.Struct, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    # With stream_options.include_usage: null, then the totals in a last chunk; else left out.
    usage: Usage | msgspec.UnsetType | None = msgspec.UNSET


class TextChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | msgspec.UnsetType | None = msgspec.UNSET


CompletionChunk = Completion  # a streamed piece has the same shape
