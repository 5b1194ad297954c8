"""Settings as msgspec Structs whose constraints hold however they are built."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Literal

import msgspec

__all__ = ["Batching", "check_constraints"]

_checking: ContextVar[bool] = ContextVar("asgi_host_checking", default=False)


def check_constraints(settings: msgspec.Struct) -> None:
    """Validate `Meta` constraints of a Struct built in Python (msgspec checks them only when decoding).

    Call it from `__post_init__`. It round-trips through `msgspec.convert`,
    which builds the Struct again and so calls `__post_init__` again: the
    context variable stops that recursion.
    """
    if _checking.get():
        return
    token = _checking.set(True)
    try:
        msgspec.convert(msgspec.to_builtins(settings), type(settings))
    finally:
        _checking.reset(token)


class Batching(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Micro-batching settings (units in the names; checked on construction)."""

    max_batch_rows: Annotated[int, msgspec.Meta(ge=1)] = 64
    """Rows in one forward pass at most. A single request with more rows runs alone."""
    max_wait_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """How long the first queued request waits for company. 0 (the default) batches what queued up
    while the previous pass ran: no delay for a lone request (see docs/benchmarks.md)."""
    max_queue_rows: Annotated[int, msgspec.Meta(ge=1)] = 4096
    """Rows waiting at most; beyond, 503 with Retry-After."""
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = 30.0
    """Per-request limit from queueing to answer; past it, 504. A request that finds the model idle
    and nobody queued runs its pass at once and waits for it, as an unbatched request does."""
    drain_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    """At shutdown, how long admitted requests may take to finish before they get 503."""
    bucket_rows: tuple[Annotated[int, msgspec.Meta(ge=1)], ...] | Literal["powers-of-two"] | None = None
    """Pad each pass to the next of these sizes (rows): `"powers-of-two"` (1, 2, 4, ... up to
    `max_batch_rows`, which is always one), or the sizes given (`max_batch_rows` added). Padding
    repeats the pass's last row; its answers are dropped. A compiled model (CUDA graphs above all)
    then meets a few shapes, warmed up at startup (`pass_sizes()` as `warmup_batch_sizes`),
    instead of recording one per batch size. None (the default): passes as they come."""

    def __post_init__(self) -> None:
        check_constraints(self)
        if isinstance(self.bucket_rows, tuple) and max(self.bucket_rows, default=0) > self.max_batch_rows:
            raise ValueError(
                f"bucket_rows {list(self.bucket_rows)} go past max_batch_rows={self.max_batch_rows}"
            )

    def pass_sizes(self) -> tuple[int, ...]:
        """The sizes passes are padded to (empty without `bucket_rows`): warm the model up at each."""
        if self.bucket_rows is None:
            return ()
        if self.bucket_rows == "powers-of-two":
            sizes = {1 << i for i in range(self.max_batch_rows.bit_length()) if 1 << i <= self.max_batch_rows}
        else:
            sizes = set(self.bucket_rows)
        return tuple(sorted(sizes | {self.max_batch_rows}))

    def padded(self, rows: int) -> int:
        """The rows of a pass of `rows`: the next size up (`rows` itself past the largest)."""
        return next((size for size in self.pass_sizes() if size >= rows), rows)
