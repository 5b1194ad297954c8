"""How the next token is chosen: greedy, or sampled with temperature and top-p from a seeded generator."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Annotated

import msgspec
import torch

from .._config import check_constraints

__all__ = ["Sampler", "SamplingParams", "sample_rows"]


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a generation does: at most `max_tokens` new tokens; greedy at `temperature` 0, else
    sampled from the softmax of the logits divided by `temperature`, among the most likely tokens
    whose probabilities add up to `top_p`; `seed` makes a sampled answer reproducible. It stops at
    the model's end-of-sequence token (unless `ignore_eos`), at any of `stop_token_ids`, or when
    its text reaches one of the `stop` strings (left out of the answer)."""

    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 256
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] = 1.0
    top_p: Annotated[float, msgspec.Meta(gt=0, le=1)] = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        check_constraints(self)
        if any(not text for text in self.stop):
            raise ValueError("a stop string is not empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """One sequence's choice of tokens: its settings and, when it samples, its own seeded generator
    (so a seed gives the same answer whatever else shares the batch)."""

    __slots__ = ("generator", "params")

    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        self.params = params
        self.generator: torch.Generator | None = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor) -> int:
        """The next token from one row of logits [vocab]."""
        params = self.params
        if self.generator is None:
            return int(logits.argmax())
        scaled = logits.float() / params.temperature
        if params.top_p < 1.0:
            sorted_logits, order = torch.sort(scaled, descending=True)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
            # Keep the smallest set whose probability reaches top_p: drop a token once the ones
            # before it already reach it (the most likely token always stays).
            drop = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= params.top_p
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
        probabilities = torch.softmax(scaled, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self.generator))


def sample_rows(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[int]:
    """One token per row of `logits` [rows, vocab]: the greedy rows at once, the others one by one."""
    if all(sampler.generator is None for sampler in samplers):
        chosen: list[int] = logits.argmax(dim=-1).tolist()
        return chosen
    return [sampler.sample(row) for sampler, row in zip(samplers, logits, strict=True)]
