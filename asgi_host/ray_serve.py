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

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._batching import Batcher
from ._errors import ReplicaUnhealthy
from ._extras import raise_missing_extra
from ._health import Readiness
from ._types import ASGIApp

if TYPE_CHECKING:
    from ray.serve import Deployment

__all__ = ["batching_advice", "deployment", "replica_health"]

logger = logging.getLogger("asgi_host")


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


def batching_advice(app: object, max_ongoing_requests: int) -> str | None:
    """A warning when Ray lets fewer requests into a replica than one of the host's batches holds.

    Ray Serve admits at most `max_ongoing_requests` (default 5) requests into a
    replica at a time, so the host's batcher never sees more than that many
    one-row requests together, whatever its `max_batch_rows`.
    """
    for resource in getattr(app, "resources", ()):
        if isinstance(resource, Batcher) and resource.settings.max_batch_rows > max_ongoing_requests:
            rows = resource.settings.max_batch_rows
            return (
                f"Ray Serve's max_ongoing_requests={max_ongoing_requests} admits at most that many requests "
                f"into this replica, so batcher {resource.name!r} (max_batch_rows={rows}) never batches more "
                f"than {max_ongoing_requests} one-row requests: raise max_ongoing_requests to at least {rows}"
            )
    return None


def _max_ongoing_requests() -> int | None:
    """This replica's `max_ongoing_requests`, from Ray's replica context (None when unknown)."""
    try:
        from ray import serve

        config = getattr(serve.get_replica_context(), "_deployment_config", None)
    except Exception:  # not in a replica, or Ray changed its private fields: skip the advice
        return None
    limit = getattr(config, "max_ongoing_requests", None)
    return limit if isinstance(limit, int) else None


def deployment(builder: Callable[..., ASGIApp], *, name: str | None = None, **options: Any) -> Deployment:
    """A Ray Serve deployment whose replicas each serve `builder(*bind_args)`.

    `options` are Ray Serve's deployment options (`num_replicas`,
    `max_ongoing_requests`, `ray_actor_options`, `graceful_shutdown_timeout_s`,
    `health_check_period_s`, ...). `name` defaults to the builder's name.
    """
    try:
        from ray import serve
    except ImportError as error:
        raise_missing_extra(error, "ray", package="Ray Serve", extra="ray", needed_by="deployment()")

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
            limit = _max_ongoing_requests()
            advice = batching_advice(app, limit) if limit is not None else None
            if advice is not None:
                logger.warning(advice)
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
