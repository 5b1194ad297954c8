"""The garbage collector while a host runs: what startup made is frozen out of every collection.

A model server's heap is mostly what startup made (torch and the model: 176,000 objects for the
Iris example, millions with a transformers model). Python's full collection walks all of it, 85 ms
for the Iris example (measured), and it runs whenever enough objects have outlived the younger
collections: under load, every few seconds, and every request in flight waits for it. Once a
host's resources have started (`freeze_startup`), a collection of the young generations frees the
garbage startup just left (cheap; a full one would cost those 85 ms at every startup, and a test
process starts hosts by the hundred) and `gc.freeze()` moves every object there is into a
generation no collection walks (a constant-time move): full collections then walk only what was
made since. Older garbage (cycles that outlived a collection during startup) is frozen with the
rest, until the next release that collects or until the last host that froze stops.

The collector is the process's: a freeze holds for every object, whoever made it, and an unfreeze
undoes a freeze of the user's own too. So a release that collects (CUDA, a compiled model, or a
module a reference cycle still holds) includes the frozen objects (`collect()`: unfreeze, collect,
freeze what is left, so the version now serving is frozen too), and when the last host that froze
stops (`thaw`), nothing is frozen any more. Meanwhile a reference cycle that forms among frozen
objects waits for the next release that collects, or for that stop.
"""

from __future__ import annotations

import gc
import threading

__all__ = ["collect", "freeze_startup", "thaw"]

_lock = threading.RLock()  # releases run on model and worker threads; a finalizer may re-enter
_holders = 0  # the hosts that froze and have not stopped


def freeze_startup() -> None:
    """Collect the young, then leave every object there is now out of later collections (a host
    started)."""
    global _holders
    gc.collect(1)  # the young generations: what startup just left; a full one costs 85 ms+
    with _lock:  # not held above: a finalizer the collection runs may wait for a release
        gc.freeze()
        _holders += 1


def thaw() -> None:
    """A host that froze has stopped: the last one to stop unfreezes."""
    global _holders
    with _lock:
        _holders = max(_holders - 1, 0)
        if _holders == 0:
            gc.unfreeze()


def collect() -> None:
    """A full collection that includes what the hosts froze; what is left is frozen again."""
    with _lock:
        if _holders == 0:
            gc.collect()
            return
        gc.unfreeze()
        try:
            gc.collect()
        finally:
            gc.freeze()
