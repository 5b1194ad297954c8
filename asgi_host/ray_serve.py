"""Run a host as Ray Serve replicas: the same app, its lifespan once per replica.

::

    from asgi_host.ray_serve import deployment
    from examples.app import IrisConfig, make_app

    iris = deployment(make_app, name="iris", num_replicas=2, max_ongoing_requests=64)
    app = iris.bind(IrisConfig())  # `serve run module:app`, or serve.run(app)

`deployment(builder, **options)` wraps a function that returns an ASGI app (a
`Host`, or anything else) in a Ray Serve ingress deployment. The builder runs
in each replica with the arguments given to `.bind()`, so nothing is built,
loaded or pickled on the driver: pass a module-level function and picklable
arguments (a config struct, paths). Ray Serve then runs the app's lifespan in
the replica: `lifespan.startup` (the model loads) while the replica
initialises, so Ray routes no request to it before it is ready, and
`lifespan.shutdown` when it stops the replica gracefully, after its own drain.

The deployment's `check_health` maps the host's readiness: a replica whose
host reports `failed` (a background load that failed) is reported unhealthy,
and Ray replaces it; `ready`, `loading` and `draining` are healthy. Apps
without a `readiness()` method keep Ray's default check (the replica answers).

Needs Ray Serve: `pip install 'asgi_host[ray]'`. The core package never
imports ray; this module imports it only when `deployment()` is called.
See docs/deploy.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ._health import Readiness
from ._types import ASGIApp

if TYPE_CHECKING:
    from ray.serve import Deployment

__all__ = ["ReplicaUnhealthy", "deployment", "replica_health"]


class ReplicaUnhealthy(RuntimeError):
    """Raised from `check_health`: Ray marks the replica unhealthy and replaces it."""


class _ReportsReadiness(Protocol):
    def readiness(self) -> Readiness: ...


def replica_health(app: object) -> str | None:
    """Why Ray should replace the replica serving `app`, or None when it is healthy.

    A failed host cannot recover by itself (its model is gone), so restarting
    the replica is the fix. A loading host (background startup) is healthy:
    killing it would only restart the load. A draining one is being stopped.
    """
    report: Callable[[], Readiness] | None = getattr(app, "readiness", None)
    if report is None:
        return None
    state = report()
    if state.status == "failed":
        return f"the host failed: {state.reason}"
    if state.status == "not started":
        return f"the host has not started: {state.reason}"
    return None


def deployment(builder: Callable[..., ASGIApp], *, name: str | None = None, **options: Any) -> Deployment:
    """A Ray Serve deployment whose replicas each serve `builder(*bind_args)`.

    `options` are Ray Serve's deployment options (`num_replicas`,
    `max_ongoing_requests`, `ray_actor_options`, `graceful_shutdown_timeout_s`,
    `health_check_period_s`, ...). `name` defaults to the builder's name.
    """
    from ray import serve

    if not callable(builder):
        raise TypeError(f"builder must be a function that returns an ASGI app, got {builder!r}")

    class HostIngress:
        """One replica: builds the app from the bind arguments, reports its health."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._build_args = args
            self._build_kwargs = kwargs
            self.asgi_app: ASGIApp | None = None

        def __serve_build_asgi_app__(self) -> ASGIApp:
            # Called by Ray in the replica after __init__; Ray then runs the
            # app's lifespan startup and only routes to the replica once it completes.
            app = builder(*self._build_args, **self._build_kwargs)
            if not callable(app):
                raise TypeError(f"{_label(builder)} returned {app!r}, which is not an ASGI app")
            self.asgi_app = app
            return app

        async def check_health(self) -> None:
            # Runs on the replica's event loop: a blocked loop times out too.
            reason = replica_health(self.asgi_app)
            if reason is not None:
                raise ReplicaUnhealthy(reason)

    label = name or getattr(builder, "__name__", None) or "asgi_host"
    HostIngress.__name__ = HostIngress.__qualname__ = label
    return serve.deployment(name=label, **options)(serve.ingress()(HostIngress))


def _label(builder: Callable[..., Any]) -> str:
    module = getattr(builder, "__module__", None)
    qualname = getattr(builder, "__qualname__", None) or repr(builder)
    return f"{module}.{qualname}" if module else qualname
