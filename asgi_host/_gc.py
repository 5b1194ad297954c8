"""The garbage collector after startup: what startup made is frozen out of every collection.

A model server's heap is mostly what startup made (torch and the model: 176,000 objects for the
Iris example, millions with a transformers model). Python's full collection walks all of it, 85 ms
for the Iris example (measured), and it runs whenever enough objects have outlived the younger
collections: under load, every few seconds, and every request in flight waits for it. Once the
resources have started, `gc.freeze()` moves every object there is into a generation no collection
walks (a constant-time move), so a full collection walks only what was made since. One full
collection runs first, so that garbage startup left (a loader's reference cycles) is freed, not
kept: it costs the 85 ms once, at startup (less in a process that froze before: it walks only
what was made since).

A released model (reload, unload, eviction, shutdown) must still be collected, reference cycles
included: `collect()` unfreezes, collects everything and freezes what is left.
"""

from __future__ import annotations

import gc

__all__ = ["collect", "freeze_startup"]

_frozen = False  # set once the host has frozen: collect() then unfreezes first


def freeze_startup() -> None:
    """Collect, then leave every object there is now out of later collections (after the resources
    started)."""
    global _frozen
    gc.collect()
    gc.freeze()
    _frozen = True


def collect() -> None:
    """A full collection that includes what the host froze; what is left is frozen again."""
    if not _frozen:
        gc.collect()
        return
    gc.unfreeze()
    try:
        gc.collect()
    finally:
        gc.freeze()
