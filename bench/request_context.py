"""What request ids, trace context and the access log cost on the request path, in process.

    python -m bench.request_context                              # this tree's cases
    python -m bench.request_context --against /tmp/asgi_before   # and an older checkout's, in one process
    python -m bench.request_context --app constant --rounds 400  # the host's own work only
    python -m bench.request_context --otel --backends asyncio    # also under OpenTelemetry's middleware
    python -m bench.request_context --app constant --metrics     # also with Metrics() on

The Iris classifier behind `POST /predict` (execution "auto": its pass runs on the event loop;
metrics off), built the same way from each package's public names and driven with raw ASGI
messages (`bench.predict.in_process`), `-n` requests per case in each of `--rounds` rounds, the
cases taking turns (their order rotating): a case's cost is the median over the rounds of its
difference from the reference in the same round, so that a microsecond shows through the noise of
a shared machine, which moves whole rounds by several.

With `--app constant` the route reads the body and answers a constant instead: the host's own work
alone, where a microsecond is a larger share.

- `before`: the `asgi_host` of the checkout given with `--against` (copied and imported as a second
  package, so both run in this process);
- `off`: this tree with nothing asked (an id made per request, no access log, no trace context);
- `x-request-id sent`: the client's id checked and echoed;
- `access log json + traceparent`: one JSON line per request through a handler that formats it
  and writes to /dev/null, and a `traceparent` parsed;
- `OpenTelemetry middleware, tracing` (with `--otel`): under `OpenTelemetryMiddleware` with an SDK
  tracer provider whose spans go nowhere (the middleware's own spans, and the host's queue-wait and
  forward-pass spans). Run it alone: once opentelemetry is imported, every model request also asks
  it whether the request is traced.
- `metrics on` (with `--metrics`): `Metrics()` counting and timing each request.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import torch

import asgi_host
import asgi_host.model
from bench.predict import ONE_ROW, in_process, running
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP

TRACEPARENT = (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
JSON = (b"content-type", b"application/json")


def iris(package: ModuleType, model: ModuleType, **options: Any) -> Any:
    """The Iris classifier app of `package` (this tree's `asgi_host` or an older one)."""
    torch_model = model.TorchModel(IrisMLP, WEIGHTS, device="cpu", warmup=torch.zeros(1, len(FEATURES)))
    return package.Host(
        resources=[torch_model], routes=[model.Classifier(labels=LABELS, n_features=len(FEATURES))], **options
    )


def constant(package: ModuleType, model: ModuleType | None = None, **options: Any) -> Any:
    """A route that reads the body and answers a constant: the host's own work and nothing else."""

    async def answer(request: Any) -> Any:
        await request.body()
        return package.Response(b'{"ok":true}', media_type="application/json")

    return package.Host(routes=[package.Route("/predict", answer, methods=["POST"])], **options)


def older_package(checkout: Path) -> tuple[ModuleType, ModuleType]:
    """`asgi_host` and `asgi_host.model` of another checkout, imported as `asgi_host_before`."""
    where = Path(tempfile.mkdtemp(prefix="asgi_host_before-"))
    shutil.copytree(checkout / "asgi_host", where / "asgi_host_before")
    sys.path.insert(0, str(where))
    return importlib.import_module("asgi_host_before"), importlib.import_module("asgi_host_before.model")


def quiet_access_log() -> None:
    """The access log's lines formatted as the host's default handler would, written to /dev/null."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - for the whole run
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("asgi_host.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False


def otel_app(app: Any) -> Any | None:
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return None
    trace.set_tracer_provider(TracerProvider())  # no processor: spans are made and dropped
    return OpenTelemetryMiddleware(app)


Case = tuple[Any, list[tuple[bytes, bytes]]]  # the app, the request's headers


def cases(against: Path | None, otel: bool, app: str, metrics: bool = False) -> dict[str, Case]:
    build = iris if app == "iris" else constant
    found: dict[str, Case] = {}
    if against is not None:
        found["before"] = (build(*older_package(against)), [JSON])
    found["off"] = (build(asgi_host, asgi_host.model), [JSON])
    found["x-request-id sent"] = (build(asgi_host, asgi_host.model), [JSON, (b"x-request-id", b"req-12345")])
    if metrics:
        from asgi_host.metrics import Metrics

        found["metrics on"] = (build(asgi_host, asgi_host.model, metrics=Metrics()), [JSON])
    quiet_access_log()
    found["access log json + traceparent"] = (
        build(asgi_host, asgi_host.model, access_log="json"),
        [JSON, TRACEPARENT],
    )
    if otel:
        traced = otel_app(build(asgi_host, asgi_host.model))
        if traced is None:
            raise SystemExit("--otel needs the otel extra: pip install 'asgi_host[otel]'")
        found["OpenTelemetry middleware, tracing"] = (traced, [JSON, TRACEPARENT])
    return found


async def measure(
    n: int, rounds: int, against: Path | None, otel: bool, app: str, metrics: bool = False
) -> dict[str, list[float]]:
    """Seconds per request of each case in each round; the order of the cases turns every round."""
    apps = cases(against, otel, app, metrics)
    times: dict[str, list[float]] = {name: [] for name in apps}
    async with AsyncExitStack() as stack:
        states = {name: (await stack.enter_async_context(running(app)))[0] for name, (app, _) in apps.items()}
        names = list(apps)
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                app, headers = apps[name]
                times[name].append(await in_process(app, states[name], ONE_ROW, JSON[1], n, headers=headers))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description="the request path's cost of request ids and access logs")
    parser.add_argument("-n", type=int, default=500, help="requests per case and round")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--against", type=Path, help="an older checkout whose asgi_host to compare with")
    parser.add_argument("--backends", nargs="+", default=["asyncio", "trio"])
    parser.add_argument(
        "--app", choices=["iris", "constant"], default="iris", help="constant: a route answering a constant"
    )
    parser.add_argument(
        "--otel", action="store_true", help="also under OpenTelemetry's middleware (imports opentelemetry)"
    )
    parser.add_argument("--metrics", action="store_true", help="also with Metrics() on (metrics extra)")
    args = parser.parse_args()
    print(
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs {platform.machine()}, python "
        f"{platform.python_version()}, torch {torch.__version__}; -n {args.n}, {args.rounds} rounds"
    )
    for backend in args.backends:
        times = anyio.run(
            measure, args.n, args.rounds, args.against, args.otel, args.app, args.metrics, backend=backend
        )
        imported = "opentelemetry.trace" in sys.modules
        print(f"\n{backend}: opentelemetry {'imported' if imported else 'not imported'} in this process")
        label = "before" if "before" in times else "off"
        reference = times[label]
        print(
            f"\n| {backend} | us/request (best round) | against {label}: median of the rounds' differences |"
            "\n|---|---|---|"
        )
        for name, seconds in times.items():
            differences = sorted(a - b for a, b in zip(seconds, reference, strict=True))
            print(
                f"| {name} | {min(seconds) * 1e6:.2f} | {statistics.median(differences) * 1e6:+.2f} us "
                f"(middle half {differences[len(differences) // 4] * 1e6:+.2f} to "
                f"{differences[3 * len(differences) // 4] * 1e6:+.2f}) |"
            )


if __name__ == "__main__":
    main()
