"""One generation's state: its tokens and text so far, when it stops, and what its reader has not taken.

The decode loop appends tokens (`add`), which never waits: the reader (`Sequence.take`, behind
`Generator.generate`) takes everything new since its last take as one `Delta`. A reader that is
slow gets what it missed merged, as vLLM's per-request collector does, and the decode loop is
never held up by it; what is held is this sequence's own text, bounded by `max_tokens`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import anyio

from ._sampling import Sampler, SamplingParams

__all__ = ["Delta", "FinishReason", "Sequence"]

FinishReason = Literal["stop", "length", "cancelled"]

# Incremental detokenization re-decodes this many tokens before the new ones: enough for a byte-level
# BPE to join the bytes of one character, or a word piece to its word (vLLM uses 5 as well).
_CONTEXT_TOKENS = 5


@dataclass
class Delta:
    """What a sequence produced since its reader last took: new tokens, their text, and whether it is
    finished (`finish_reason`) with its token counts."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(eq=False)
class Sequence:
    """A generation from `prompt` under `params`; the decode loop gives it a cache slot."""

    prompt: list[int]
    params: SamplingParams
    detokenize: Callable[[list[int]], str]
    stop_token_ids: frozenset[int]
    sampler: Sampler | None = None
    slot: int | None = None
    prefilled: int = 0  # prompt tokens in the cache so far
    generated: list[int] = field(default_factory=list)
    text: str = ""  # the text of `generated`, stop strings cut off
    finish_reason: FinishReason | None = None
    cancelled: bool = False
    error: Exception | None = None  # why it ended without finishing (a failed pass, shutdown)
    # Timings (time.monotonic) for the metrics: queued, given a slot, first token, last token.
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    cancelled_at: float | None = None
    _taken_tokens: int = 0
    _taken_text: int = 0
    # Incremental detokenization: the last prompt tokens as context (a tokenizer may decode a first
    # token differently alone), then the generated ones; offsets into `_context + generated`.
    _context: list[int] = field(default_factory=list)
    _prefix: int = 0
    _read: int = 0
    _ready: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self._context = self.prompt[-_CONTEXT_TOKENS:]
        self._prefix = self._read = len(self._context)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def prompt_done(self) -> bool:
        return self.prefilled >= len(self.prompt)

    @property
    def length(self) -> int:
        """Tokens in the cache once the last generated one is fed back: where the next one goes."""
        return len(self.prompt) + len(self.generated)

    def add(self, token: int, room: int) -> None:
        """Take the model's next token; `room` is the slot's size less the sequence's length with this
        token (below 0: the slot cannot take the token that would make the next one)."""
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = now
        self.last_token_at = now
        self.generated.append(token)
        params = self.params
        if token in self.stop_token_ids:
            self._finish("stop")
            return
        before = len(self.text)
        self._extend_text()
        if self._cut_at_stop_string(before):
            self._finish("stop")
        elif len(self.generated) >= params.max_tokens or room < 0:
            self._finish("length")
        else:
            self._ready.set()

    def cached_tokens(self) -> list[int]:
        """The tokens whose keys and values are surely in the slot, in order: the prompt so far, and
        once it is in, the generated tokens fed back (all but the last)."""
        if not self.prompt_done:
            return self.prompt[: self.prefilled]
        return self.prompt + self.generated[:-1]

    def cancel(self) -> None:
        """The reader left: the decode loop drops the sequence at its next step."""
        self.cancelled = True
        self.cancelled_at = time.monotonic()
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        self._ready.set()

    def fail(self, error: Exception) -> None:
        """End it with `error`, which its reader raises."""
        self.error = error
        self._finish("cancelled")

    def _finish(self, reason: FinishReason) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
        self._ready.set()

    def _extend_text(self) -> None:
        """Decode the new token into text, vLLM's way: the tokens from `_prefix` decoded with and
        without the new ones; the difference is the new text, unless it ends inside a character
        (then it waits for the next token)."""
        ids = self._context + self.generated
        before = self.detokenize(ids[self._prefix : self._read])
        after = self.detokenize(ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(ids)

    def _cut_at_stop_string(self, before: int) -> bool:
        """Cut the text at the first stop string the new text completed; True if one did."""
        for stop in self.params.stop:
            at = self.text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                self.text = self.text[:at]
                return True
        return False

    def _held_back(self) -> int:
        """Characters at the end of the text that may be the start of a stop string: not sent yet."""
        held = 0
        for stop in self.params.stop:
            for size in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:size]):
                    held = size
                    break
        return held

    def take(self) -> Delta | None:
        """Everything new since the last take, merged; None when there is nothing yet."""
        end = len(self.text) if self.finished else len(self.text) - self._held_back()
        end = max(end, self._taken_text)
        tokens = self.generated[self._taken_tokens :]
        if not tokens and end == self._taken_text and not self.finished:
            self._ready = anyio.Event()
            return None
        delta = Delta(tokens, self.text[self._taken_text : end], self.finish_reason)
        if self.finished:
            delta.prompt_tokens, delta.completion_tokens = len(self.prompt), len(self.generated)
        self._taken_tokens, self._taken_text = len(self.generated), end
        self._ready = anyio.Event()
        return delta

    async def wait(self) -> None:
        """Until there is something to take (or the sequence finished)."""
        await self._ready.wait()

    def sampler_for(self, device: object) -> Sampler:
        if self.sampler is None:
            self.sampler = Sampler(self.params, device)  # type: ignore[arg-type]
        return self.sampler
