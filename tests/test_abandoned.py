"""Work for clients that left: only the pass already running finishes, batched or not.

In process with the test kit (a model whose pass waits for the test), then under real servers
with raw sockets: clients that post and close their connection after 0.2 s.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest
import torch

from asgi_host import Host
from asgi_host._worker import PassThreads
from asgi_host.model import Classifier, ModelHandle, TorchModel
from asgi_host.testing import SERVERS, HTTPResult, LifespanDriver, free_port, server_command
from examples.iris import FEATURES, LABELS, WEIGHTS, IrisMLP
from tests._server import run_server
from tests._wait import until

ROW = {"inputs": [[5.1, 3.5, 1.4, 0.2]]}


class Gate:
    """Holds the model's passes (once `counting`) until the test opens it, and counts them."""

    def __init__(self) -> None:
        self.counting = False
        self.passes = 0
        self.entered = threading.Event()
        self.open = threading.Event()


class GatedIris(IrisMLP):
    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate
        if gate.counting:
            gate.passes += 1
            gate.entered.set()
            gate.open.wait(10)
        result: torch.Tensor = super().forward(x)
        return result


def gated_host(gate: Gate) -> Host:
    model = TorchModel(lambda: GatedIris(gate), WEIGHTS, device="cpu", execution="thread")
    return Host(resources=[model], routes=[Classifier(labels=LABELS, n_features=len(FEATURES))])


async def _post_into(lifespan: LifespanDriver, results: list[HTTPResult]) -> None:
    results.append(await lifespan.request("POST", "/predict", json=ROW))


@pytest.mark.anyio
async def test_queued_passes_of_clients_that_left_never_run() -> None:
    gate = Gate()
    async with LifespanDriver(gated_host(gate)) as lifespan:
        gate.counting = True
        first: list[HTTPResult] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_post_into, lifespan, first)
            await anyio.to_thread.run_sync(gate.entered.wait, 5)  # the first pass holds the thread
            # Eight clients post, then leave while their passes wait behind it.
            gone = [
                await lifespan.request("POST", "/predict", json=ROW, then_disconnect=True) for _ in range(8)
            ]
            gate.open.set()
        after = await lifespan.request("POST", "/predict", json=ROW)
        handle: ModelHandle = lifespan.state["model"]
        assert handle.in_flight == 0
    assert [r.status for r in gone] == [None] * 8  # nobody to answer
    assert [first[0].status, after.status] == [200, 200]
    assert gate.passes == 2  # the one running when they left, and the next client's


@pytest.mark.anyio
async def test_a_request_cancelled_while_its_pass_is_queued_takes_it_back() -> None:
    gate = Gate()
    async with LifespanDriver(gated_host(gate)) as lifespan:
        handle: ModelHandle = lifespan.state["model"]
        gate.counting = True
        first: list[HTTPResult] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(_post_into, lifespan, first)
            await anyio.to_thread.run_sync(gate.entered.wait, 5)
            with anyio.CancelScope() as cancelled:  # as a server that cancels the request's task
                async with anyio.create_task_group() as requests:
                    requests.start_soon(_post_into, lifespan, [])
                    await until(lambda: handle.in_flight == 2)
                    cancelled.cancel()
            assert handle.in_flight == 1  # at once, though the first pass still holds the thread
            gate.open.set()
    assert first[0].status == 200
    assert gate.passes == 1


@pytest.mark.anyio
async def test_pass_threads_withdraw_a_queued_job_and_wait_for_a_running_one() -> None:
    threads = PassThreads(1, "test-withdraw")
    ran: list[str] = []
    release = threading.Event()

    def job(name: str) -> str:
        ran.append(name)
        release.wait(5)
        return name

    results: list[str] = []

    async def run_in(scope: anyio.CancelScope, name: str) -> None:
        with scope:
            try:
                results.append(await threads.run(job, name, withdraw_on_cancel=True))
            except anyio.get_cancelled_exc_class():
                results.append(f"{name} cancelled")
                raise

    try:
        async with anyio.create_task_group() as tg:
            running, queued = anyio.CancelScope(), anyio.CancelScope()
            tg.start_soon(run_in, running, "running")
            await until(lambda: ran == ["running"])
            assert threads.busy
            tg.start_soon(run_in, queued, "queued")
            await anyio.sleep(0.05)
            queued.cancel()
            await until(lambda: results == ["queued cancelled"])  # at once: withdrawn
            running.cancel()
            await anyio.sleep(0.05)
            assert results == ["queued cancelled"]  # the running job's caller waits for its end
            release.set()
        assert results == ["queued cancelled", "running cancelled"]
        assert await threads.run(job, "after") == "after"
        assert ran == ["running", "after"]
        assert not threads.busy
    finally:
        threads.stop()
        threads.join(5)


# -- under real servers, raw sockets ------------------------------------------------------------


def post_and_leave(port: int, body: bytes, after_s: float = 0.2) -> None:
    """POST /predict, then close the connection after `after_s` without reading the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        time.sleep(after_s)


def passes(url: str) -> int:
    count: int = httpx.get(url + "/passes", timeout=5).json()["passes"]
    return count


@pytest.mark.server
@pytest.mark.parametrize("server", SERVERS)
def test_sixteen_clients_that_leave_cost_one_pass(server: str, tmp_path: Path) -> None:
    port = free_port()
    command = server_command(server, "tests.abandon_apps:unbatched_app", port)  # type: ignore[arg-type]
    body = msgspec.json.encode(ROW)
    with run_server(command, port, tmp_path) as running, ThreadPoolExecutor(16) as pool:
        before = passes(running.url)
        list(pool.map(lambda _: post_and_leave(port, body), range(16)))
        started = time.monotonic()
        next_client = httpx.post(running.url + "/predict", json=ROW, timeout=60)
        waited_s = time.monotonic() - started
        ran = passes(running.url) - before
    assert next_client.status_code == 200
    # Each pass takes 1 s: the one running when they left (maybe one more on a slow machine), then
    # the next client's; without withdrawing, all 16 ran first and the next client waited 16 s.
    assert ran <= 3, (ran, waited_s)


@pytest.mark.server
def test_a_queue_full_of_rows_of_clients_that_left_admits_the_next_client(tmp_path: Path) -> None:
    port = free_port()
    command = server_command("hypercorn", "tests.abandon_apps:batched_app", port)
    eight_rows = msgspec.json.encode({"inputs": ROW["inputs"] * 8})
    with run_server(command, port, tmp_path) as running, ThreadPoolExecutor(9) as pool:
        before = passes(running.url)
        first = pool.submit(httpx.post, running.url + "/predict", content=eight_rows, timeout=60)
        deadline = time.monotonic() + 10
        while passes(running.url) == before and time.monotonic() < deadline:
            time.sleep(0.02)  # until its 1 s pass has begun
        # Eight clients fill the queue (max_queue_rows=64) and leave during that pass.
        list(pool.map(lambda _: post_and_leave(port, eight_rows), range(8)))
        next_client = httpx.post(running.url + "/predict", content=eight_rows, timeout=60)
        ran = passes(running.url) - before
    assert first.result().status_code == 200
    assert next_client.status_code == 200, next_client.text  # was 503 "the batch queue is full"
    assert ran == 2
