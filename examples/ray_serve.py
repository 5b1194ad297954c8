"""The Iris and MiniLM hosts as Ray Serve replicas, built from the same `make_app`.

    pip install 'asgi_host[ray]'                  # Ray Serve >= 2.56
    serve run examples.ray_serve:app              # Iris, 2 replicas, on a local Ray
    serve run examples.ray_serve:build replicas=1 model=embed
    python -m examples.ray_serve --replicas 2     # the same, loopback only; Ctrl-C or SIGTERM stops it

    curl -X POST localhost:8000/predict -H 'content-type: application/json' \\
         -d '{"inputs":[[5.1,3.5,1.4,0.2]]}'

Each replica runs `examples.app.make_app(config)` (or `examples.embed.make_app`)
and its lifespan: the model loads in the replica's init, before Ray routes to
it, and is released (CUDA memory included) after Ray's graceful drain. Nothing
is loaded on the driver; the config struct travels to the replicas pickled.

Batching stays the host's own (`Batching` in the config), once per replica:
it bounds its queue in rows and answers 503 with Retry-After when full, drops
requests whose client left, times out per request, and is the same code under
hypercorn. `@serve.batch` batches calls made through a `DeploymentHandle`; it
would add a second queue in front of the host's. With the host's batcher,
`max_ongoing_requests` must be well above one batch (Ray's default, 5, caps
every batch at 5 requests): it is the replica's concurrency, so the batch size.
"""

from __future__ import annotations

import argparse
import signal
import time
from typing import Any

from asgi_host import Batching
from asgi_host.ray_serve import deployment

from . import app as iris_app

GRACEFUL_SHUTDOWN_TIMEOUT_S = 40.0  # Ray kills a replica that takes longer to stop
# The host's own shutdown limits (its drain, then the release) stay inside Ray's graceful timeout.
HOST_DRAIN_TIMEOUT_S = 10.0
HOST_SHUTDOWN_TIMEOUT_S = 20.0
assert HOST_DRAIN_TIMEOUT_S + HOST_SHUTDOWN_TIMEOUT_S < GRACEFUL_SHUTDOWN_TIMEOUT_S


def gpus_per_replica() -> float:
    """1 GPU per replica when this machine has CUDA, else 0 (Ray then hides all GPUs)."""
    import torch

    return 1.0 if torch.cuda.is_available() else 0.0


def _options(replicas: int, cpus: float) -> dict[str, Any]:
    return {
        "num_replicas": replicas,
        # The host batches what is in flight: let enough in for a full batch.
        "max_ongoing_requests": 64,
        "ray_actor_options": {"num_cpus": cpus, "num_gpus": gpus_per_replica()},
        # Ray drains requests first (wait loop), then sends lifespan.shutdown,
        # which drains the host again (a no-op by then) and releases the model;
        # all of it must fit in the graceful timeout (see the host limits above).
        "graceful_shutdown_wait_loop_s": 1.0,
        "graceful_shutdown_timeout_s": GRACEFUL_SHUTDOWN_TIMEOUT_S,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 10.0,
    }


def _host_settings(request_timeout_s: float) -> dict[str, Any]:
    """Batching and shutdown limits shared by both apps; `request_timeout_s` bounds one request."""
    return {
        "batching": Batching(
            max_batch_rows=64, timeout_s=request_timeout_s, drain_timeout_s=HOST_DRAIN_TIMEOUT_S
        ),
        "drain_timeout_s": HOST_DRAIN_TIMEOUT_S,
        "shutdown_timeout_s": HOST_SHUTDOWN_TIMEOUT_S,
    }


def iris_config(**overrides: Any) -> iris_app.IrisConfig:
    settings: dict[str, Any] = {
        **_host_settings(request_timeout_s=10.0),
        "metrics": False,  # Ray Serve exports its own request metrics
        **overrides,
    }
    return iris_app.IrisConfig(**settings)


def iris(replicas: int = 2, cpus: float = 1.0, **config: Any) -> Any:
    """The Iris application: `serve.run(iris())`."""
    return deployment(iris_app.make_app, name="iris", **_options(replicas, cpus)).bind(iris_config(**config))


def embed(replicas: int = 1, cpus: float = 1.0, **config: Any) -> Any:
    """The MiniLM application (needs the `embed` extra)."""
    from . import embed as embed_app

    settings: dict[str, Any] = {**_host_settings(request_timeout_s=30.0), **config}
    options = _options(replicas, cpus)
    return deployment(embed_app.make_app, name="embed", **options).bind(embed_app.EmbedConfig(**settings))


def build(args: dict[str, str]) -> Any:
    """Application builder: `serve run examples.ray_serve:build replicas=2 model=iris|embed`."""
    unknown = set(args) - {"replicas", "model", "cpus"}
    if unknown:
        raise ValueError(f"unknown arguments {sorted(unknown)}; known: replicas, model, cpus")
    replicas = int(args.get("replicas", "2"))
    cpus = float(args.get("cpus", "1"))
    model = args.get("model", "iris")
    if model == "iris":
        return iris(replicas, cpus)
    if model == "embed":
        return embed(replicas, cpus)
    raise ValueError(f"model must be 'iris' or 'embed', got {model!r}")


app = iris()


def main(argv: list[str] | None = None) -> None:
    """Start Ray on this machine (loopback only), serve, stop on Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["iris", "embed"], default="iris")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--cpus", type=float, default=1.0, help="CPUs per replica")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the local Ray (default: all)")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1")
    # Ctrl-C and SIGTERM (a container stop) both shut Serve down gracefully. Installed
    # after ray.init, whose own SIGTERM handler would otherwise abort the process (-6)
    # once the graceful shutdown is done.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        started = time.perf_counter()
        application = build({"model": args.model, "replicas": str(args.replicas), "cpus": str(args.cpus)})
        serve.run(application, name=args.model, route_prefix="/")
        print(
            f"{args.model}: {args.replicas} replicas ready in {time.perf_counter() - started:.1f} s"
            f" on http://127.0.0.1:{args.port}/ (Ctrl-C stops)",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C kills at once
        print("stopping: each replica drains and runs lifespan.shutdown", flush=True)
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


if __name__ == "__main__":
    main()
