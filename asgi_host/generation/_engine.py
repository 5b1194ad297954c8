"""`Generator`: one decode loop per model, stepping every active sequence together (continuous batching).

Each step of the loop, on the model's own thread (one `ModelHandle.run`):

1. a chunk of prompt is prefilled (`prefill_chunk` tokens at most, of the sequences given a slot
   last, in order), and a sequence whose prompt is in gets its first token;
2. every sequence past its prompt feeds its last token, all in one batch (`[B, 1]`), and gets its
   next one.

Between steps, on the event loop: the new tokens go to their sequences (text, stop strings,
`max_tokens`); a finished or cancelled sequence leaves and its cache slot is free for the next
request at once; waiting requests take free slots. A request joins the running batch at the next
step; a reader that leaves (`generate()` closed) cancels its sequence, which is gone by the end of
the step that is running. Bounds: `max_sequences` slots of `max_sequence_tokens` tokens each (the
KV cache, allocated at startup), and `max_waiting` requests queued; past them, 503 with
`Retry-After`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from collections.abc import Sequence as Seq
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import torch
from torch import nn

from .._errors import HTTPError, OutOfMemory
from .._resources import Resource
from .._rows import model_handle
from .._view import HostView
from ._prefix import PrefixIndex
from ._sampling import Sampler, SamplingParams, sample_rows
from ._sequence import Delta, Sequence

__all__ = ["GenerationEvent", "Generator"]

logger = logging.getLogger("asgi_host.generation")

NewCache = Callable[[nn.Module, int, int], Any]
"""`new_cache(module, slots, tokens_per_slot)`: the model's KV cache (run on the model's thread)."""


@dataclass(frozen=True)
class GenerationEvent:
    """What the metrics observe: `kind` is `queued` (seconds waiting for a slot), `first_token` (time
    to first token), `token` (seconds since the sequence's previous token), `finished` (seconds
    from the request to its end), with the sequence's `reason` and token counts when finished, or
    `cancelled` (a cancelled sequence left its slot: seconds since its reader left)."""

    kind: str
    seconds: float
    reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class _Plan:
    """One step: cached prefixes to copy (source slot, target slot, tokens), prompt chunks to prefill
    (sequence, start, end) and the sequences to decode."""

    copies: list[tuple[int, int, int]] = field(default_factory=list)
    prefill: list[tuple[Sequence, int, int]] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)


class Generator(Resource):
    """Continuous batching for a decoder model that a `TorchModel` (state key `model`) serves.

    The model is called as `module(tokens, positions, slots, cache)` with `tokens` and `positions`
    `[B, T]` and `slots` `[B]`, and returns the logits of each row's last token `[B, vocab]`; it
    writes the rows' keys and values into `cache` at those slots and positions and attends to what
    the slot holds before them (`examples/smollm2.py` is one). `new_cache(module, slots, tokens)`
    makes that cache at startup. `detokenize(ids)` turns tokens into text (special tokens left
    out); `eos_token_ids` end a sequence. Use it with `generate()`, which streams `Delta`s.
    """

    def __init__(
        self,
        *,
        new_cache: NewCache,
        detokenize: Callable[[list[int]], str],
        eos_token_ids: Iterable[int],
        model: str = "model",
        max_sequences: int = 16,
        max_sequence_tokens: int = 2048,
        prefill_chunk: int = 256,
        max_waiting: int = 256,
        name: str = "generator",
    ) -> None:
        for setting, value in (
            ("max_sequences", max_sequences),
            ("max_sequence_tokens", max_sequence_tokens),
            ("prefill_chunk", prefill_chunk),
            ("max_waiting", max_waiting),
        ):
            if value < 1:
                raise ValueError(f"{setting} must be at least 1, got {value}")
        self.new_cache = new_cache
        self.detokenize = detokenize
        self.eos_token_ids = frozenset(eos_token_ids)
        self.model = model
        self.max_sequences = max_sequences
        self.max_sequence_tokens = max_sequence_tokens
        self.prefill_chunk = prefill_chunk
        self.max_waiting = max_waiting
        self.observers: list[Callable[[GenerationEvent], None]] = []
        self._cache: Any = None
        self._device = torch.device("cpu")
        self._waiting: deque[Sequence] = deque()
        self._active: dict[int, Sequence] = {}  # by slot
        self._free: list[int] = []
        self._wake: anyio.Event | None = None
        self._running = False
        self._prefixes = PrefixIndex()
        self._copies: list[tuple[int, int, int]] = []  # to run at the start of the next step
        self._can_copy = False  # the cache has copy_prefix (else a prefix is reused in its own slot)
        self._seconds_per_sequence = 0.0  # moving average, for Retry-After
        # Counted over the process's life: what /metrics and the benchmarks read.
        self.steps = 0
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.finished = 0
        self.cancelled = 0
        self.prefix_queried_tokens = 0  # prompt tokens looked up in the cache
        self.prefix_hit_tokens = 0  # ... and found there (not prefilled again)
        super().__init__(self._lifespan, name=name)

    @property
    def active(self) -> int:
        """Sequences holding a slot (prefilling or decoding)."""
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def detail(self) -> dict[str, Any]:
        return {
            "max_sequences": self.max_sequences,
            "max_sequence_tokens": self.max_sequence_tokens,
            "active": self.active,
            "waiting": self.waiting,
        }

    # -- requests ------------------------------------------------------------------------------

    async def generate(self, prompt: Seq[int], params: SamplingParams) -> AsyncGenerator[Delta, None]:
        """The generation of `prompt`, as `Delta`s as soon as there is something new (merged while
        the reader was busy); the last has `finish_reason`. Closing the iterator cancels it.

        Raises `HTTPError` 400 when the prompt and `max_tokens` do not fit a slot, 503 when the
        queue is full or the server is shutting down.
        """
        sequence = self._submit(list(prompt), params)
        try:
            while True:
                delta = sequence.take()
                if delta is None:
                    await sequence.wait()
                    continue
                if sequence.error is not None:
                    raise sequence.error
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if not sequence.finished:  # the reader left (or was cancelled) before the end
                self.cancelled += 1
                sequence.cancel()
                self._poke()

    async def complete(self, prompt: Seq[int], params: SamplingParams) -> Delta:
        """The whole generation as one `Delta` (its text, tokens and counts)."""
        merged = Delta([], "")
        stream = self.generate(prompt, params)
        try:
            async for delta in stream:
                merged.token_ids += delta.token_ids
                merged.text += delta.text
                merged.finish_reason = delta.finish_reason
                merged.prompt_tokens, merged.completion_tokens = delta.prompt_tokens, delta.completion_tokens
        finally:
            await stream.aclose()
        return merged

    def _submit(self, prompt: list[int], params: SamplingParams) -> Sequence:
        if not self._running:
            raise HTTPError(503, "the generator is not running (starting or shutting down)", headers=_RETRY)
        if not prompt:
            raise HTTPError(400, "the prompt has no tokens")
        needed = len(prompt) + params.max_tokens - 1  # the last new token is never fed back
        if needed > self.max_sequence_tokens:
            raise HTTPError(
                400,
                f"this model's context is {self.max_sequence_tokens} tokens, but {len(prompt)} in the "
                f"prompt and max_tokens={params.max_tokens} need {needed + 1}: shorten the prompt or "
                "lower max_tokens",
            )
        # Requests that arrived since the loop last admitted will take the slots free now: only
        # those beyond them wait (a burst into free slots was refused while the loop ran a step).
        waiting = len(self._waiting) - len(self._free)
        if waiting >= self.max_waiting:
            raise HTTPError(
                503,
                f"{waiting} requests are waiting for one of {self.max_sequences} sequence slots "
                f"(max_waiting={self.max_waiting}); retry later",
                headers=[("retry-after", str(self.retry_after_s()))],
            )
        sequence = Sequence(prompt, params, self.detokenize, self.eos_token_ids | set(params.stop_token_ids))
        if params.ignore_eos:
            sequence.stop_token_ids = frozenset(params.stop_token_ids)
        self._waiting.append(sequence)
        self._poke()
        return sequence

    def retry_after_s(self) -> int:
        """Seconds until the queue as it is now would have got slots, from recent sequences' times."""
        rounds = math.ceil((len(self._waiting) + 1) / self.max_sequences)
        return max(1, min(60, math.ceil(rounds * self._seconds_per_sequence)))

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- the decode loop -----------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, host: HostView) -> AsyncIterator[None]:
        handle = model_handle(host.state, self.model)
        self._cache = await handle.run(self.new_cache, self.max_sequences, self.max_sequence_tokens)
        self._device = handle.device
        self._free = list(range(self.max_sequences))
        self._can_copy = callable(getattr(self._cache, "copy_prefix", None))
        logger.info(
            "generator %r: %d sequences of up to %d tokens, KV cache %.0f MiB",
            self.name,
            self.max_sequences,
            self.max_sequence_tokens,
            getattr(self._cache, "nbytes", 0) / 2**20,
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._loop, host.state)
                self._running = True
                try:
                    yield
                finally:
                    self._running = False
                    tg.cancel_scope.cancel()
        finally:
            shutting_down = HTTPError(503, "the server is shutting down", headers=_RETRY)
            for sequence in [*self._waiting, *self._active.values()]:
                sequence.fail(shutting_down)
            self._waiting.clear()
            self._active.clear()
            self._cache = None

    async def _loop(self, state: Any) -> None:
        while True:
            # A step waits for the model's thread shielded (the thread goes on with the cache
            # anyway): this is where shutdown's cancellation reaches the loop, between steps.
            await anyio.lowlevel.checkpoint()
            self._leave()
            self._admit()
            if not self._active:
                self._wake = anyio.Event()
                await self._wake.wait()
                self._wake = None
                continue
            plan = self._plan()
            try:
                handle = model_handle(state, self.model)
                samplers = [s.sampler_for(self._device) for s, _, end in plan.prefill if end == len(s.prompt)]
                samplers += [s.sampler_for(self._device) for s in plan.decode]
                first, following = await handle.run(
                    _step, self._cache, _inputs(plan), samplers, handle.device
                )
            except Exception as exc:
                self._fail(plan, exc)
                continue
            self.steps += 1
            self._apply(plan, first, following)

    def _leave(self) -> None:
        """Finished and cancelled sequences give their slots back (what the slot holds stays known, for
        a prompt that begins the same way); cancelled waiting ones go."""
        for slot, sequence in list(self._active.items()):
            if sequence.finished:
                del self._active[slot]
                self._free.append(slot)
                self._prefixes.leave(slot, sequence.cached_tokens())
                sequence.slot = None
                if sequence.cancelled_at is not None:
                    self._observe(GenerationEvent("cancelled", time.monotonic() - sequence.cancelled_at))
        if any(s.finished for s in self._waiting):
            self._waiting = deque(s for s in self._waiting if not s.finished)

    def _admit(self) -> None:
        """Waiting sequences take free slots; each starts after the longest prefix of its prompt the
        cache holds (in the slot it takes, or copied there from another)."""
        while self._waiting and self._free:
            sequence = self._waiting.popleft()
            active = [(slot, s.cached_tokens()) for slot, s in self._active.items()]
            source, reused = self._prefixes.best(sequence.prompt, active)
            if source is not None and source in self._free:
                slot = source
                self._free.remove(slot)
            else:
                slot = self._free.pop()
                if source is not None and self._can_copy:
                    self._copies.append((source, slot, reused))
                else:
                    reused = 0
            self._prefixes.forget(slot)  # its old tokens are about to be overwritten
            sequence.slot, sequence.prefilled = slot, reused
            self.prefix_queried_tokens += len(sequence.prompt)
            self.prefix_hit_tokens += reused
            sequence.started_at = time.monotonic()
            self._active[slot] = sequence
            self._observe(GenerationEvent("queued", sequence.started_at - sequence.queued_at))

    def _plan(self) -> _Plan:
        plan = _Plan(copies=self._copies)
        self._copies = []
        budget = self.prefill_chunk
        for sequence in self._active.values():  # in the order they got slots
            if sequence.prompt_done:
                plan.decode.append(sequence)
            elif budget > 0:
                end = min(len(sequence.prompt), sequence.prefilled + budget)
                plan.prefill.append((sequence, sequence.prefilled, end))
                budget -= end - sequence.prefilled
        return plan

    def _apply(self, plan: _Plan, first: list[int], following: list[int]) -> None:
        firsts = iter(first)
        for sequence, _, end in plan.prefill:
            sequence.prefilled = end
            if end == len(sequence.prompt):
                self.prompt_tokens += len(sequence.prompt)
                self._give(sequence, next(firsts))
        for sequence, token in zip(plan.decode, following, strict=True):
            self._give(sequence, token)

    def _give(self, sequence: Sequence, token: int) -> None:
        if sequence.finished:  # cancelled while the step ran: the token is dropped
            return
        previous = sequence.last_token_at
        sequence.add(token, self.max_sequence_tokens - sequence.length - 1)
        self.generated_tokens += 1
        now = sequence.last_token_at or time.monotonic()
        if previous is None:
            self._observe(GenerationEvent("first_token", now - sequence.queued_at))
        else:
            self._observe(GenerationEvent("token", now - previous))
        if sequence.finished:
            self.finished += 1
            elapsed = now - sequence.queued_at
            self._seconds_per_sequence = (
                elapsed if self.finished == 1 else 0.9 * self._seconds_per_sequence + 0.1 * elapsed
            )
            self._observe(
                GenerationEvent(
                    "finished", elapsed, sequence.finish_reason, len(sequence.prompt), len(sequence.generated)
                )
            )

    def _fail(self, plan: _Plan, error: Exception) -> None:
        """A step failed: its sequences end with the error (out of memory: 503), the rest go on."""
        if isinstance(error, OutOfMemory | HTTPError):
            failure: HTTPError = error
        else:
            logger.error("a generation step failed", exc_info=error)
            failure = HTTPError(500, "internal server error; the traceback is in the server log")
        for sequence in [s for s, _, _ in plan.prefill] + plan.decode:
            sequence.fail(failure)

    def _observe(self, event: GenerationEvent) -> None:
        for observe in self.observers:
            observe(event)


_RETRY = [("retry-after", "1")]


Inputs = tuple[list[tuple[int, int, int]], list[tuple[int, list[int], int, bool]], list[tuple[int, int, int]]]


def _inputs(plan: _Plan) -> Inputs:
    """Plain data for the model's thread: prefix copies (source, target, tokens), prefill (slot,
    tokens, first position, last chunk?) and decode (slot, last token, its position) rows."""
    prefill = [
        (s.slot or 0, s.prompt[start:end], start, end == len(s.prompt)) for s, start, end in plan.prefill
    ]
    decode = [(s.slot or 0, s.generated[-1], s.length - 1) for s in plan.decode]
    return plan.copies, prefill, decode


def _step(
    module: nn.Module, cache: Any, inputs: Inputs, samplers: list[Sampler], device: torch.device
) -> tuple[list[int], list[int]]:
    """On the model's thread: the prefix copies, the prefill chunks, then one decode step for every
    decoding row; the first token of each sequence whose prompt is in, and the next token of each
    decoding row."""
    copies, prefill, decode = inputs
    for source, target, length in copies:  # before any write of this step
        cache.copy_prefix(source, target, length)
    first: list[int] = []
    chosen = iter(samplers)
    for slot, tokens, start, last in prefill:
        logits = module(
            torch.tensor([tokens], device=device),
            torch.arange(start, start + len(tokens), device=device)[None],
            torch.tensor([slot], device=device),
            cache,
        )
        if last:
            first.append(next(chosen).sample(logits[0]))
    following: list[int] = []
    if decode:
        slots, tokens, positions = (list(column) for column in zip(*decode, strict=True))
        logits = module(
            torch.tensor(tokens, device=device)[:, None],
            torch.tensor(positions, device=device)[:, None],
            torch.tensor(slots, device=device),
            cache,
        )
        following = sample_rows(logits, list(chosen))
    return first, following
