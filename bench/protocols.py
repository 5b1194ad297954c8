"""Per-request cost of the Open Inference Protocol's infer against POST /predict on Iris rows.

    python -m bench.protocols                  # in-process (asyncio and trio) and over hypercorn
    python -m bench.protocols --no-http        # in-process only

The same app (`examples.app`, metrics off) answers both routes through the same model handle,
so the difference is the protocol's own work: decoding the tensor header and data, the checks,
building the answer. In-process drives the ASGI app with raw messages in one event loop (as
`bench.predict` does); over HTTP one keep-alive client sends requests one after another to
`hypercorn examples.app:app`: httpx for every route, and Triton's own client (`tritonclient.http`,
geventhttpclient underneath) for v2, JSON and binary.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio
import msgspec
import numpy as np
import torch

from asgi_host.testing import ServerProcess, free_port, server_command
from bench.predict import ROOT, ROW, running
from bench.predict import in_process as predict_in_process
from examples.app import IrisConfig, make_app
from examples.iris import load_dataset

INFER = "/v2/models/iris/infer"

# name: (path, body, headers)
Case = tuple[str, bytes, list[tuple[bytes, bytes]]]


def cases(rows: list[list[float]] | None = None) -> dict[str, Case]:
    """The three requests for `rows` (default: one Iris row)."""
    rows = rows or [ROW]
    shape = [len(rows), 4]
    json_type = (b"content-type", b"application/json")
    predict = msgspec.json.encode({"inputs": rows})
    v2_json = msgspec.json.encode(
        {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": rows}]}
    )
    data = np.array(rows, dtype=np.float32).tobytes()
    header = msgspec.json.encode(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    return {
        "/predict json": ("/predict", predict, [json_type]),
        "v2 infer json": (INFER, v2_json, [json_type]),
        "v2 infer binary": (
            INFER,
            header + data,
            [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(len(header)).encode()),
            ],
        ),
    }


async def in_process(app: Any, state: dict[str, Any], case: Case, n: int, warmup: int = 200) -> float:
    path, body, headers = case
    return await predict_in_process(app, state, body, b"", n, path=path, headers=headers, warmup=warmup)


async def measure_in_process(n: int) -> dict[str, float]:
    app = make_app(IrisConfig(metrics=False))
    results: dict[str, float] = {}
    async with running(app) as (state, _):
        execution = "inline" if state["model"].inline else "thread"
        for label, rows, count in (("1 row", None, n), ("150 rows", load_dataset()[0], max(n // 5, 10))):
            # Ten interleaved rounds, the best of each route's: a slow moment of a shared machine
            # does not fall on one route only.
            rounds: dict[str, list[float]] = {name: [] for name in cases(rows)}
            for i in range(10):
                for name, case in cases(rows).items():
                    warmup = 200 if i == 0 else 0
                    rounds[name].append(await in_process(app, state, case, max(count // 10, 1), warmup))
            results.update({f"{name}, {label} ({execution})": min(times) for name, times in rounds.items()})
    return results


def interleaved(senders: dict[str, Callable[[], None]], n: int) -> dict[str, dict[str, float]]:
    """p50, p99 and mean per sender; the senders take turns request by request, so a slow moment
    of a shared machine falls on all of them alike."""
    for send in senders.values():
        for _ in range(200):
            send()
    times: dict[str, list[float]] = {name: [] for name in senders}
    for _ in range(n):
        for name, send in senders.items():
            started = time.perf_counter()
            send()
            times[name].append(time.perf_counter() - started)
    results = {}
    for name, values in times.items():
        values.sort()
        results[name] = {
            "p50": values[len(values) // 2],
            "p99": values[int(len(values) * 0.99)],
            "mean": statistics.fmean(values),
        }
    return results


def measure_http(n: int, port: int) -> dict[str, dict[str, float]]:
    import httpx
    import tritonclient.http as httpclient

    command = server_command("hypercorn", "examples.app:app", port)
    process = ServerProcess(command, port=port, env={"IRIS_METRICS": "false"}, cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        with httpx.Client(base_url=base, timeout=10) as client:
            while True:
                try:
                    client.get("/v2/health/ready")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            senders: dict[str, Callable[[], None]] = {}
            for name, (path, body, headers) in cases().items():
                plain = {k.decode(): v.decode() for k, v in headers}

                def post(path: str = path, body: bytes = body, plain: dict[str, str] = plain) -> None:
                    response = client.post(path, content=body, headers=plain)
                    assert response.status_code == 200, response.text

                senders[f"httpx, {name}"] = post
            triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{port}")
            try:
                row = np.array([ROW], dtype=np.float32)
                for binary in (False, True):
                    tensor = httpclient.InferInput("input", [1, 4], "FP32")
                    tensor.set_data_from_numpy(row, binary_data=binary)
                    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]

                    def infer(tensor: Any = tensor, wanted: list[Any] = wanted) -> None:
                        triton.infer("iris", [tensor], outputs=wanted)

                    senders[f"tritonclient, v2 infer {'binary' if binary else 'json'}"] = infer
                return interleaved(senders, n)
            finally:
                triton.close()
    finally:
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="v2 infer vs /predict: per-request cost, one Iris row")
    parser.add_argument("-n", type=int, default=5000, help="requests per in-process measurement")
    parser.add_argument("--http-n", type=int, default=2000, help="requests per route over HTTP")
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()
    args.port = args.port or free_port()
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cpus, {torch.get_num_threads()} torch threads"
    )
    for backend in ("asyncio", "trio"):
        results = anyio.run(measure_in_process, args.n, backend=backend)
        for name, seconds in results.items():
            print(f"in-process {backend:7s} {name:44s} {seconds * 1e6:8.1f} us/request")
        for label in ("1 row", "150 rows"):
            sized = {k.split(" (")[0]: v for k, v in results.items() if f", {label} (" in k}
            predict = sized[f"/predict json, {label}"]
            print(
                f"in-process {backend:7s} ratios to /predict, {label}: "
                + ", ".join(f"{k} {v / predict:.2f}x" for k, v in sized.items() if "v2" in k)
            )
    if not args.no_http:
        http = measure_http(args.http_n, args.port)
        reference = http["httpx, /predict json"]["p50"]
        for name, numbers in http.items():
            print(
                f"hypercorn, 1 keep-alive client, {name:34s} "
                + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in numbers.items())
                + f"  (p50 {numbers['p50'] / reference:.2f}x /predict's)"
            )


if __name__ == "__main__":
    main()
