"""`ModelHandle`: what a `TorchModel` yields into the state, the way to run one version of it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from ._device import memory_text, oom_detail
from ._errors import HTTPError, OutOfMemory
from ._inflight import InFlight
from ._loading import ModelVersion
from ._versions import record_version
from ._worker import PassThreads

__all__ = ["ModelHandle"]

logger = logging.getLogger("asgi_host.model")

T = TypeVar("T")


class ModelHandle:
    """What a `TorchModel` yields into the state: the way to run the model.

    Handlers call `await handle.run(fn, *args)`; `fn(module, *args)` runs under
    `torch.inference_mode()` on the model's own worker threads (`max_concurrency`
    of them; the thread that loaded and warmed the model runs its passes), or,
    when `inline` (see `TorchModel(execution=...)`), on the event loop itself.
    The handle counts passes in flight so shutdown can wait for them,
    and it is the only holder of the module, so dropping it frees the weights
    even if request scopes still hold (copies of) the state.

    A pass that runs out of CUDA memory (`torch.cuda.OutOfMemoryError`) has its
    memory released (the exception and its frames are dropped, then the cache
    is emptied) and raises `OutOfMemory`, a 503 with `Retry-After`; a `Batcher`
    retries its batch in halves on it. `out_of_memory` counts such passes.
    `loaded` describes the version this handle runs (`version`, `device`, ...).
    """

    def __init__(
        self,
        module: nn.Module,
        loaded: ModelVersion,
        threads: PassThreads,
        *,
        on_out_of_memory: Callable[[], None] | None = None,
    ) -> None:
        self._module: nn.Module | None = module
        self.loaded = loaded
        # Read by every request: plain attributes.
        self.device = loaded.device
        self.dtype = loaded.dtype
        self.inline = loaded.inline
        self.version: str | None = loaded.version  # the x-model-version header
        self._threads = None if loaded.inline else threads
        self._in_flight = InFlight()
        self._closing = False
        self._on_out_of_memory = on_out_of_memory
        self.forward_passes = 0
        self.out_of_memory = 0
        # Set when a reload retired this handle: passes asked of it afterwards run on the new one.
        self.successor: ModelHandle | None = None

    @property
    def in_flight(self) -> int:
        return self._in_flight.count

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def module(self) -> nn.Module:
        if self._module is None:
            raise HTTPError(503, "the model has been released (the server is shutting down)")
        return self._module

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(module, *args)` on the model's thread (or inline, on the loop); 503 once shutdown began."""
        if self._closing:
            if self.successor is not None:
                # A request that copied the state just before a reload swapped it: the new version answers.
                return await self.successor.run(fn, *args)
            raise HTTPError(503, "the model is shutting down", headers=[("retry-after", "1")])
        record_version(self.version)
        module = self._module
        if module is None:
            module = self.module  # raises: released
        if self._threads is None:
            # No await: nothing else runs on the loop meanwhile, so nothing to count.
            return self._call(fn, module, args)
        with self._in_flight:
            # Cancelled (its client left) while still queued, the pass is withdrawn and never runs;
            # once started it is not abandoned: the thread keeps using the module, so the count
            # must cover it until it really ends.
            return await self._threads.run(self._call, fn, module, args, withdraw_on_cancel=True)

    @property
    def busy(self) -> bool:
        """A pass asked for now would wait for the model's thread (never when passes run inline)."""
        return self._threads is not None and self._threads.busy

    def _call(self, fn: Callable[..., T], module: nn.Module, args: tuple[Any, ...]) -> T:
        try:
            with torch.inference_mode():
                return fn(module, *args)
        except torch.cuda.OutOfMemoryError as exc:
            detail = oom_detail(exc)
        finally:
            self.forward_passes += 1  # where the pass runs: a withdrawn one never counts
        # Out of the except block: the exception and the pass's frames (its tensors) are gone,
        # so emptying the cache gives their blocks back.
        self.out_of_memory += 1
        if self._on_out_of_memory is not None:
            self._on_out_of_memory()
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            torch.cuda.empty_cache()
        logger.warning(
            "out of memory in a forward pass on %s (%s); cache emptied%s",
            self.device,
            detail,
            f", {memory_text(self.device)}" if self.device.type == "cuda" else "",
        )
        raise OutOfMemory(detail)

    async def close(self) -> None:
        """Refuse new passes, wait for those in flight, then drop the module. Idempotent.

        The threads are the `TorchModel`'s to stop: it releases memory on them first.
        """
        self._closing = True
        await self._in_flight.wait_idle()
        self._module = None
