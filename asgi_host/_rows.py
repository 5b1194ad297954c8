"""A request's rows through a model: one pass on its handle, or a place in a batcher's pass.

Every protocol adapter over a model (the classifier's /predict, KServe v2, the embeddings
example) runs rows the same way, with `Rows`: the forward function runs on the model's
`ModelHandle` (on its thread, or inline), through the `Batcher` when batching is on, and a pass
that runs out of device memory is a 503 naming the request's size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from ._batching import Batcher, Batching
from ._errors import HTTPError, OutOfMemory
from ._http import Request
from ._resources import Resource

__all__ = ["Forward", "Rows", "model_handle"]

T = TypeVar("T")
R = TypeVar("R")

Forward = Callable[..., Sequence[R]]
"""`forward(module, rows, device, dtype) -> outputs`: one output per row, in order, run on the model's
thread under `torch.inference_mode()`."""


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
    """

    def __init__(
        self, forward: Forward[R], *, model: str = "model", batching: Batching | None = None, name: str = ""
    ) -> None:
        self.forward = forward
        self.model = model
        label = name or model
        self.batcher: Batcher[T, R] | None = (
            Batcher(self._pass, batching, name=f"{label} batcher") if batching is not None else None
        )
        self.resources: tuple[Resource, ...] = (self.batcher,) if self.batcher is not None else ()

    async def run(self, rows: list[T], request: Request) -> list[R]:
        """The outputs for one request's rows; `OutOfMemory` names the request's row count."""
        if self.batcher is not None:
            return await self.batcher.submit(rows, request)
        outputs: Sequence[R] = await self.call(request, self.forward, rows, rows=len(rows))
        return outputs if type(outputs) is list else list(outputs)

    async def call(self, request: Request, fn: Callable[..., Any], *args: Any, rows: int) -> Any:
        """One pass of `fn(module, *args, device, dtype)` for one request of `rows` rows, unbatched
        (a whole request at once); `OutOfMemory` names its row count."""
        handle = model_handle(request.state, self.model)
        try:
            return await handle.run(fn, *args, handle.device, handle.dtype)
        except OutOfMemory as exc:
            raise exc.for_rows(rows) from None

    async def _pass(self, state: Mapping[str, Any], rows: list[T]) -> list[R]:
        handle = model_handle(state, self.model)
        outputs: Sequence[R] = await handle.run(self.forward, rows, handle.device, handle.dtype)
        return outputs if type(outputs) is list else list(outputs)
