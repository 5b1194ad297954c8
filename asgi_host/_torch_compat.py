"""Work-arounds for torch itself, each with the torch behaviour it works around."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["cuda_graph_thread_state", "skipped_init"]


def cuda_graph_thread_state() -> None:
    """Give this thread the state torch.compile's CUDA graph trees keep per thread.

    Up to torch 2.11 it existed only on the thread that imported torch._inductor (and the
    autograd threads that copy it): recording graphs on the model's own thread failed with a
    bare `AssertionError` in `cudagraph_trees.get_obj` (seen on an H100, torch 2.11). Newer
    torch sets it up itself; this is a no-op there.
    """
    try:
        from torch._inductor import cudagraph_trees as trees
    except ImportError:  # pragma: no cover - a torch without inductor cannot compile anyway
        return
    local = getattr(trees, "local", None)
    if local is None or hasattr(local, "tree_manager_containers"):
        return
    if torch._C._is_key_in_tls("tree_manager_containers"):
        return
    local.tree_manager_containers = {}
    local.tree_manager_locks = collections.defaultdict(threading.Lock)


_SKIP_INIT_LOCK = threading.Lock()


@contextmanager
def skipped_init() -> Iterator[None]:
    """No random init in this thread while building on the meta device: there is nothing to fill,
    and on meta `normal_` runs through torch._refs, whose first use imports torch._dynamo (1.0-1.5 s
    of MiniLM's startup, measured). The weights replace every parameter afterwards anyway.

    `torch.nn.init` is patched for the duration, but other threads calling it meanwhile get the real
    functions, and meta builds take turns (a lock), so nothing else ever skips its init.
    """
    owner = threading.get_ident()

    def keeping(original: Callable[..., Any]) -> Callable[..., Any]:
        def keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == owner:
                return tensor
            return original(tensor, *args, **kwargs)

        return keep

    with _SKIP_INIT_LOCK:
        names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
        saved = {name: getattr(nn.init, name) for name in names}
        try:
            for name in names:
                setattr(nn.init, name, keeping(saved[name]))
            yield
        finally:
            for name, fn in saved.items():
                setattr(nn.init, name, fn)
