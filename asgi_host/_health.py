"""Liveness and readiness: what `/livez` and `/readyz` answer, and when routes are refused."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import msgspec

from ._describe import SchemaOf, json_response, probe_operation
from ._errors import HTTPError
from ._http import Request, Response
from ._lifespan import LifespanPhase, LifespanTracker
from ._resources import Progress, Resource

__all__ = ["Liveness", "LivenessProbe", "Readiness", "ReadinessProbe", "readiness", "refusal"]

Status = Literal["ready", "not started", "loading", "draining", "failed"]


class Readiness(msgspec.Struct, omit_defaults=True):
    """The `/readyz` body: `status`, and why it is not `ready`."""

    status: Status
    reason: str | None = None
    stage: str | None = None
    elapsed_s: float | None = None
    fraction: float | None = None
    in_flight: int | None = None
    # Once ready: what each resource that has something to say shows (a model: where its passes run).
    resources: dict[str, Mapping[str, Any]] | None = None


def readiness(
    tracker: LifespanTracker, progress: Progress, in_flight: int, resources: Iterable[Resource] = ()
) -> Readiness:
    phase = tracker.phase
    if phase is LifespanPhase.IDLE:
        return Readiness(
            "not started",
            reason="no lifespan.startup received yet: run the app under a server that sends lifespan "
            "events (hypercorn, uvicorn, granian), or start the host from the embedding app",
        )
    if phase is LifespanPhase.STARTING or tracker.loading:
        stage = progress.resource
        if stage is not None and progress.stage:
            stage = f"{stage}: {progress.stage}"
        return Readiness(
            "loading",
            stage=stage,
            elapsed_s=round(progress.elapsed_s, 3),
            fraction=None if progress.fraction is None else round(progress.fraction, 3),
        )
    if tracker.load_error is not None:
        return Readiness("failed", reason=tracker.load_error)
    if phase is LifespanPhase.FAILED:
        return Readiness("failed", reason="startup or shutdown failed; the reason is in the server log")
    if phase in (LifespanPhase.STOPPING, LifespanPhase.STOPPED):
        return Readiness("draining", in_flight=in_flight)
    details = {r.name: d for r in resources if (d := r.detail())}
    return Readiness("ready", resources=details or None)


def refusal(state: Readiness) -> HTTPError | None:
    """The 503 a route answers with while the host cannot serve it (None: serve)."""
    if state.status == "loading":
        return HTTPError(
            503,
            f"the model is loading ({state.stage or 'starting'}, {state.elapsed_s} s so far); retry shortly",
            headers=[("retry-after", str(_eta_s(state)))],
        )
    if state.status == "failed":
        return HTTPError(503, f"the model failed to load: {state.reason}")
    if state.status == "draining":
        return HTTPError(503, "the server is shutting down", headers=[("retry-after", "1")])
    return None


def _eta_s(state: Readiness) -> int:
    """Seconds to ready, from the fraction done so far; 1 when unknown, at most 60."""
    if not state.fraction or not state.elapsed_s:
        return 1
    remaining = state.elapsed_s * (1 - state.fraction) / state.fraction
    return min(60, max(1, math.ceil(remaining)))


class Liveness(msgspec.Struct):
    """The `/livez` body: the process answers."""

    status: Literal["alive"]


class LivenessProbe:
    """`GET /livez`: 200 while the process answers, in every phase."""

    _body = msgspec.json.encode(Liveness("alive"))

    async def __call__(self, request: Request) -> Response:
        return Response(self._body, media_type="application/json")

    def openapi_operation(self, method: str, schema: SchemaOf) -> dict[str, Any]:
        return probe_operation(
            "Liveness: the process answers (answered while loading too).",
            {"200": json_response("Alive.", schema(Liveness))},
        )


class ReadinessProbe:
    """`GET /readyz`: 200 when routes are served, else 503 with why (`Readiness`)."""

    def __init__(self, report: Callable[[], Readiness]) -> None:
        self._report = report

    async def __call__(self, request: Request) -> Response:
        state = self._report()
        return Response.json(state, status=200 if state.status == "ready" else 503)

    def openapi_operation(self, method: str, schema: SchemaOf) -> dict[str, Any]:
        body = schema(Readiness)
        return probe_operation(
            "Readiness: whether routes are served now, and why not.",
            {
                "200": json_response("Ready: routes are served.", body),
                "503": json_response("Not ready: `status` and `reason` say why.", body),
            },
        )
