"""Prompt prefixes already in the KV cache, reused instead of prefilled again.

Chat prompts share their beginning: the template's system prompt, a conversation's earlier turns.
A causal model's keys and values at a position depend only on the tokens up to it, so a new
sequence whose prompt begins as another slot's cached tokens do can take those positions as they
are: in place when it is given that (free) slot, else copied from it (`cache.copy_prefix(source,
target, tokens)`, when the model's cache has one) before the step's own writes. What each slot
holds is known from the sequence in it, or, once it left, from the tokens it had fed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["PrefixIndex", "common_prefix"]

MIN_REUSED_TOKENS = 8  # shorter prefixes are prefilled: a copy is not worth it


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens `a` and `b` share from their start."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixIndex:
    """What each free slot still holds (the tokens it fed, in order), until it is given away."""

    def __init__(self) -> None:
        self._left: dict[int, list[int]] = {}

    def leave(self, slot: int, tokens: list[int]) -> None:
        self._left[slot] = tokens

    def forget(self, slot: int) -> None:
        self._left.pop(slot, None)

    def best(self, prompt: Sequence[int], active: Iterable[tuple[int, list[int]]]) -> tuple[int | None, int]:
        """The slot holding the longest prefix of `prompt` (free ones first at equal length) and how
        many tokens of it can be reused: at most all but the prompt's last, which the step must feed
        to get the first token's logits. (None, 0) when nothing worth reusing is cached."""
        limit = len(prompt) - 1
        best_slot: int | None = None
        best_length = MIN_REUSED_TOKENS - 1
        for slot, tokens in [*self._left.items(), *active]:
            length = min(common_prefix(prompt, tokens), limit)
            if length > best_length:
                best_slot, best_length = slot, length
        return (best_slot, best_length) if best_slot is not None else (None, 0)
