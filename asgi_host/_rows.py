"""A request's rows through a model: one pass on its handle, or a place in a batcher's pass.

Every protocol adapter over a model (the classifier's /predict, KServe v2, the embeddings
example) runs rows the same way, with `Rows`: the forward function runs on the model's
`ModelHandle` (on its thread, or inline), through the `Batcher` when batching is on, and a pass
that runs out of device memory is a 503 naming the request's size. A pass that has to wait for the
model's thread is withdrawn when its client leaves first (only a pass already running finishes),
and a traced request gets spans for its wait and its pass (`_tracing.py`).

`prepare` and `finish` keep per-request Python off the model's thread: a request's rows are
prepared (tokenized, say) in its own task before they queue, and its outputs finished (turned into
lists, say) in its own task once its slice of the pass arrives, so the thread that launches the
kernels, which every request of a batch waits for, does only the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

from ._batching import Batcher, Batching
from ._errors import HTTPError, OutOfMemory
from ._http import Request
from ._resources import Resource
from ._tracing import PassTimes, record_pass, timed_forward, traced

__all__ = ["Forward", "Rows", "model_handle"]

T = TypeVar("T")
R = TypeVar("R")

Forward = Callable[..., Sequence[R]]
"""`forward(module, rows, device, dtype) -> outputs`: one output per row, in order, run on the model's
thread under `torch.inference_mode()`. `outputs` may be a tensor whose first dimension is the rows
(each row of it is then one output; `list(outputs)` splits it, off the model's thread)."""


def model_handle(state: Mapping[str, Any], key: str) -> Any:
    """The `ModelHandle` under `key` in a request's state; 503 when there is none (not started)."""
    handle = state.get(key)
    if handle is None or not hasattr(handle, "run"):
        raise HTTPError(
            503,
            f"the model is not ready: the state has no model handle under {key!r}",
            headers=[("retry-after", "1")],
        )
    return handle


class Rows(Generic[T, R]):
    """Runs rows through `forward` on the model under the state key `model`, batched or not.

    With `batching`, concurrent requests share passes through a `Batcher` (in `resources`:
    give them to the host with the endpoint that uses this); a request's rows stay in one
    pass. Without, each request is one pass.

    Two optional hooks run in the request's own task, on the event loop, never on the model's
    thread (which then only runs `forward`, the one step every request of a batch waits for):

    - `prepare(rows) -> items`: one item per row (token ids for texts, say), before the rows queue
      for a pass; `forward` gets items, from this request and others, instead of rows. Padding a
      pass to a bucket (`Batching.bucket_rows`) repeats the pass's last item.
    - `finish(items, outputs) -> results`: one result per row (lists of floats from a tensor's
      rows, say), from this request's items and its own outputs of the pass, in order; `run()`
      returns them.

    Without a hook, that step is the identity. Both must be quick (each blocks the loop while it
    runs) and give one element per row.
    """

    def __init__(
        self,
        forward: Callable[..., Any],
        *,
        model: str = "model",
        batching: Batching | None = None,
        name: str = "",
        prepare: Callable[[list[T]], Sequence[Any]] | None = None,
        finish: Callable[[list[Any], list[Any]], Sequence[R]] | None = None,
    ) -> None:
        self.forward = forward
        self.prepare = prepare
        self.finish = finish
        self.model = model
        label = name or model
        self.batcher: Batcher[Any, Any] | None = (
            Batcher(self._pass, batching, name=f"{label} batcher") if batching is not None else None
        )
        self.resources: tuple[Resource, ...] = (self.batcher,) if self.batcher is not None else ()

    async def run(self, rows: list[T], request: Request) -> list[R]:
        """The outputs for one request's rows; `OutOfMemory` names the request's row count."""
        items: list[Any] = rows if self.prepare is None else _one_each(self.prepare(rows), rows, "prepare")
        if self.batcher is not None:
            outputs: list[Any] = await self.batcher.submit(items, request)
        else:
            outputs = _as_list(await self.call(request, self.forward, items, rows=len(items)))
        if self.finish is None:
            return outputs
        return _one_each(self.finish(items, outputs), rows, "finish")

    async def call(self, request: Request, fn: Callable[..., Any], *args: Any, rows: int) -> Any:
        """One pass of `fn(module, *args, device, dtype)` for one request of `rows` rows, unbatched
        (a whole request at once); `OutOfMemory` names its row count. A pass that has to wait for
        the model's thread is withdrawn if the client leaves first (`ClientDisconnect`)."""
        handle = model_handle(request.state, self.model)
        try:
            if not handle.busy and not traced():  # the common case: the pass starts at once
                return await handle.run(fn, *args, handle.device, handle.dtype)
            times = PassTimes(rows) if traced() else None
            forward = fn if times is None else times.timed(fn)
            run = partial(handle.run, forward, *args, handle.device, handle.dtype)
            if handle.busy:
                outputs = await request.unless_client_leaves(run, _LEFT_WHILE_QUEUED)
            else:
                outputs = await run()
        except OutOfMemory as exc:
            raise exc.for_rows(rows) from None
        if times is not None:
            record_pass(times.began, times, rows, batched=False)
        return outputs

    async def _pass(self, state: Mapping[str, Any], rows: list[Any]) -> list[Any]:
        handle = model_handle(state, self.model)
        forward = timed_forward(self.forward)  # a traced batch's forward pass is timed
        return _as_list(await handle.run(forward, rows, handle.device, handle.dtype))


_LEFT_WHILE_QUEUED = "the client left while its pass waited for the model"


def _as_list(outputs: Any) -> list[Any]:
    """A pass's outputs as a list, one per row (a tensor is split into its rows here, on the loop)."""
    return outputs if type(outputs) is list else list(outputs)


def _one_each(results: Sequence[Any], rows: Sequence[Any], hook: str) -> list[Any]:
    """A hook's results as a list, checked to hold one per row."""
    if len(results) != len(rows):
        raise RuntimeError(f"Rows' {hook} returned {len(results)} results for {len(rows)} rows")
    return results if type(results) is list else list(results)
