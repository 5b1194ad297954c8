"""Builders the Ray Serve tests deploy; they run inside the replicas.

`recorded` wraps a host so each replica writes what its lifespan did to a
file of its own (replicas are other processes, and shutdown happens after
the last request, so a file is the only witness), and tags each response with
the replica's pid; each request is recorded when it reaches the replica.
"""

from __future__ import annotations

import gc
import json
import os
import time
import weakref
from pathlib import Path
from typing import Any

from asgi_host import Host
from asgi_host._health import Readiness
from asgi_host._types import Message, Receive, Scope, Send
from examples.app import IrisConfig, make_app


class Recorded:
    """An ASGI middleware around a host that records its lifespan to `events_dir/<pid>.jsonl`."""

    def __init__(self, host: Host, events_dir: str) -> None:
        self.host = host
        self.path = Path(events_dir) / f"{os.getpid()}.jsonl"
        self._module: weakref.ref[Any] | None = None

    def readiness(self) -> Readiness:
        return self.host.readiness()

    def _write(self, event: str, **fields: Any) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), "t": time.time(), **fields}) + "\n")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.host(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http":
            await self.host(scope, receive, send)
            return

        self._write("request", path=scope["path"])

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [*message["headers"], (b"x-replica-pid", b"%d" % os.getpid())],
                }
            await send(message)

        await self.host(scope, receive, tagged)

    def _lifespan_send(self, send: Send) -> Send:
        async def recording(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                handle = self.host.state.get("model")
                if handle is not None:
                    self._module = weakref.ref(handle.module)
                self._write("startup", status=self.host.readiness().status, model_loaded=handle is not None)
            elif kind == "lifespan.shutdown.complete":
                gc.collect()
                released = self._module is not None and self._module() is None
                self._write("shutdown", model_released=released)
            elif kind.endswith(".failed"):
                self._write(kind, message=message.get("message", ""))
            await send(message)

        return recording


def recorded_iris(events_dir: str, config: IrisConfig) -> Recorded:
    return Recorded(make_app(config), events_dir)


def recorded_slow(events_dir: str) -> Recorded:
    """Iris whose forward pass takes 0.3 s, batched: requests are still running when Ray stops it."""
    from asgi_host import Batching
    from tests.model_apps import _predict_app

    return Recorded(_predict_app(background=False, batching=Batching(max_batch_rows=4)), events_dir)
