"""A Quart app mounted inside the host, its own lifespan run with the host's.

    hypercorn examples.embed_quart:app
    curl localhost:8000/quart/hello
    curl -X POST localhost:8000/predict -H 'content-type: application/json' \\
         -d '{"inputs":[[5.1,3.5,1.4,0.2]]}'

The other direction: the host serves `/predict` and the probes, and a Quart
app (an existing dashboard, say) under `/quart`. `Mount(..., lifespan=True)`
runs Quart's `before_serving` / `after_serving` with the host's startup and
shutdown. Quart is a dependency of this example only.
"""

from __future__ import annotations

from typing import cast

from quart import Quart

from asgi_host.types import ASGIApp

from .app import IrisConfig, make_app

quart = Quart(__name__)
events: list[str] = []


@quart.before_serving
async def started() -> None:
    events.append("quart started")


@quart.after_serving
async def stopped() -> None:
    events.append("quart stopped")


@quart.route("/hello")
async def hello() -> dict[str, str]:
    return {"hello": "from Quart"}


app = make_app(IrisConfig(metrics=False))
app.mount("/quart", cast(ASGIApp, quart), lifespan=True)
