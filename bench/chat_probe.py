"""examples.chat with a probe for `bench.generate`'s cancel section.

Each time a cancelled generation leaves its cache slot, one line goes to `$BENCH_PROBE_FILE`: the
time (`time.monotonic()`, one clock for every process of the machine, so the client's own reading
compares with it) and the seconds since the host saw the client leave. No polling of the server.
"""

from __future__ import annotations

import os
import time

from asgi_host.generation import GenerationEvent, Generator
from examples.chat import app

__all__ = ["app"]

_PATH = os.environ["BENCH_PROBE_FILE"]
_generator = next(r for r in app.resources if isinstance(r, Generator))


def _observe(event: GenerationEvent) -> None:
    if event.kind == "cancelled":
        with open(_PATH, "a") as probe:
            probe.write(f"{time.monotonic()} {event.seconds}\n")


_generator.observers.append(_observe)
