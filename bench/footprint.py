"""The host's footprint: what its code costs beside the model's work, and what it costs that work.

    python -m bench.footprint                  # 15 rounds of 1,500 requests per app
    python -m bench.footprint --rounds 30

Every app here answers `POST /predict` with the same function, `work` (the Iris MLP under
`torch.inference_mode()`, softmax, labels), timed inside with `perf_counter_ns`: so the table
shows both each app's time per request and how long the very same model work took inside it.

- `floor`: a raw ASGI app around `work` (the work floor of `bench.peers`).
- `host`: a `Host` whose `StructEndpoint` handler calls `work` (metrics off, no `Rows`, no
  handle, no classifier checks: the host's own layers and nothing else).
- `floor after the host's constant route`: the floor, which first lets a `Host` answer the same
  request on a route that returns a constant (the host's code runs, then the same work).
- `the Iris example`: `examples.app` as served (`Classifier`, `Rows`, the model's handle, metrics
  on), whose model work is its own: its total against the floor's, for the layers below the
  endpoint.

Then, with no model work anywhere: a raw ASGI app that decodes the body and encodes an answer of
its rows, a `Host` route that returns a constant, and a `StructEndpoint` that does what the raw app
does (the host's layers alone).

A request's Python and the model's C++ share each core's caches (on the 2-vCPU machine of
docs/benchmarks.md: 32 KiB of L1 instruction cache per core). The host's code then costs more
beside the work than alone, and the same work costs more after it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec
import torch

from asgi_host import Host, Request, Response, Route, StructEndpoint
from asgi_host.types import Receive, Scope, Send
from bench.predict import ONE_ROW, in_process, running
from examples.app import IrisConfig, make_app
from examples.iris import LABELS


class Inputs(msgspec.Struct):
    inputs: list[list[float]]


class Answer(msgspec.Struct):
    outputs: list[list[float]]
    labels: list[str]


MODEL: list[torch.nn.Module] = []
WARMUP = 200  # requests before each measurement: their work's times are left out
WORK_NS: dict[str, list[int]] = {}  # app -> the work's nanoseconds, one per request


def work(inputs: list[list[float]], app: str) -> Answer:
    """The model's work, the same in every app, timed."""
    started = time.perf_counter_ns()
    with torch.inference_mode():
        probabilities = torch.softmax(MODEL[0](torch.tensor(inputs)), dim=-1)
    answer = Answer(probabilities.tolist(), [LABELS[i] for i in probabilities.argmax(dim=-1).tolist()])
    WORK_NS[app].append(time.perf_counter_ns() - started)
    return answer


_decode = msgspec.json.Decoder(Inputs).decode
_encode = msgspec.json.Encoder().encode
CONSTANT = b'{"outputs":[[0.98,0.01,0.01]],"labels":["setosa"]}'
JSON_HEADERS = [(b"content-type", b"application/json")]


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


async def answer(send: Send, payload: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def floor(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    message = await receive()
    await answer(send, _encode(work(_decode(message["body"]).inputs, "floor")))


async def constant(request: Request) -> Response:
    return Response.raw(CONSTANT, JSON_HEADERS)


async def host_work(body: Inputs, request: Request) -> Answer:
    return work(body.inputs, "host")


async def echo(body: Inputs, request: Request) -> Answer:
    return Answer(body.inputs, ["setosa"])


def post(path: str, endpoint: Any) -> Route:
    return Route(path, endpoint, methods=["POST"])


constant_host = Host(routes=[post("/predict", constant)], gc_freeze=False)


async def floor_after_the_host(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    message = await receive()

    async def again() -> Any:
        return message

    statuses: list[int] = []

    async def drop(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await constant_host(dict(scope), again, drop)
    assert statuses == [200], statuses  # its route, not a refusal: the host has started
    name = "floor after the host's constant route"
    await answer(send, _encode(work(_decode(message["body"]).inputs, name)))


async def raw_echo(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    message = await receive()
    await answer(send, _encode(Answer(_decode(message["body"]).inputs, ["setosa"])))


WITH_WORK = {
    "floor": floor,
    "host": Host(routes=[post("/predict", StructEndpoint(host_work, Inputs))], gc_freeze=False),
    "floor after the host's constant route": floor_after_the_host,
}
# The whole example, for the layers below the endpoint: its model work is its own, not `work`.
EXAMPLE = {"the Iris example (Classifier, Rows, handle, metrics)": make_app(IrisConfig())}
ALONE = {
    "raw ASGI echo": raw_echo,
    "host, a constant route": constant_host,
    "host, StructEndpoint echo": Host(
        routes=[post("/predict", StructEndpoint(echo, Inputs))], gc_freeze=False
    ),
}


async def measure(n: int, rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per request of each app per round, and the median of its work's seconds per round."""
    from bench.peers import load_iris  # here: peers imports FastAPI, and FastAPI opentelemetry

    apps = {**WITH_WORK, **EXAMPLE, **ALONE}
    totals: dict[str, list[float]] = {name: [] for name in apps}
    works: dict[str, list[float]] = {name: [] for name in WITH_WORK}
    MODEL.append(load_iris())
    async with AsyncExitStack() as stack:
        states = {name: (await stack.enter_async_context(running(app)))[0] for name, app in apps.items()}
        names = list(apps)
        for round_ in range(rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                WORK_NS[name] = []
                totals[name].append(
                    await in_process(apps[name], states[name], ONE_ROW, b"application/json", n, warmup=WARMUP)
                )
                if name in works:
                    works[name].append(statistics.median(WORK_NS[name][WARMUP:]) / 1e9)
    return totals, works


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1500, help="requests per app per round")
    parser.add_argument("--rounds", type=int, default=15, help="rounds, the apps taking turns in each")
    args = parser.parse_args()
    totals, works = anyio.run(measure, args.n, args.rounds)
    print(f"python {platform.python_version()}, torch {torch.__version__}, {args.rounds} rounds of {args.n}")
    print()
    print("| with the model's work | us/request | its work, us | / floor | its work / the floor's |")
    print("|---|---|---|---|---|")
    floor_total, floor_work = totals["floor"], works["floor"]
    for name in WITH_WORK:
        ratio = statistics.median(a / b for a, b in zip(totals[name], floor_total, strict=True))
        work_ratio = statistics.median(a / b for a, b in zip(works[name], floor_work, strict=True))
        print(
            f"| {name} | {us(statistics.median(totals[name]))} | {us(statistics.median(works[name]))} "
            f"| {ratio:.2f}x | {work_ratio:.2f}x |"
        )
    for name in EXAMPLE:
        ratio = statistics.median(a / b for a, b in zip(totals[name], floor_total, strict=True))
        print(f"| {name} | {us(statistics.median(totals[name]))} | - | {ratio:.2f}x | - |")
    print()
    print("| alone, no model work | us/request | over the raw echo, us |")
    print("|---|---|---|")
    raw = totals["raw ASGI echo"]
    for name in ALONE:
        over = statistics.median(a - b for a, b in zip(totals[name], raw, strict=True))
        print(f"| {name} | {us(statistics.median(totals[name]))} | {us(over)} |")
    print()
    gap = statistics.median(a - b for a, b in zip(totals["host"], floor_total, strict=True))
    slower = statistics.median(a - b for a, b in zip(works["host"], floor_work, strict=True))
    alone = statistics.median(a - b for a, b in zip(totals["host, StructEndpoint echo"], raw, strict=True))
    print(
        f"host over floor: {us(gap)} us a request; of it, the same work running slower inside the "
        f"host: {us(slower)} us; the host's layers alone (echo over the raw app): {us(alone)} us"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
