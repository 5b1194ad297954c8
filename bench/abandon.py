"""Work for clients that left: MiniLM /embed under hypercorn, clients that post and close after 0.2 s.

    python -m bench.abandon                      # 16 and 64 clients, unbatched; then batched
    python -m bench.abandon --clients 16 --texts 8 --batched-rows 4096

Unbatched (`EMBED_BATCHING=off`): `--clients` clients each post `--texts` texts and close their
connection after 0.2 s; then one more client posts the same and waits for its answer. Reported:
the server's CPU-seconds from the first post to that answer (its own pass included; every process
of the server counted, from /proc) and how long that next client waited, against one pass alone.

Batched (the example's default): one client's pass of 64 texts runs, clients that leave put
`--batched-rows` rows in the queue (64 texts each), then one more client posts 8 texts: its status
and Retry-After. Then a full queue of live rows (`EMBED_BATCHING__MAX_QUEUE_ROWS=128`, two clients
of 64 texts behind a running pass): the Retry-After a fourth client is given, against the time
the queue took to drain.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec

from asgi_host.testing import ServerProcess, free_port
from bench.http import serve

# A text of about 180 WordPiece tokens.
TEXT = "The quick brown fox jumps over the lazy dog while the band plays on. " * 12


def body(texts: int) -> bytes:
    return msgspec.json.encode({"texts": [TEXT] * texts})


def tree_cpu_s(pid: int) -> float:
    """User + system CPU-seconds of `pid` and every process under it (from /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(p, 0.0) for p in tree)


def post_and_leave(port: int, payload: bytes, after_s: float = 0.2) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /embed HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        time.sleep(after_s)


def start(port: int, env: dict[str, str]) -> ServerProcess:
    return serve(
        "hypercorn",
        "examples.embed:app",
        port,
        {"EMBED_DEVICE": "cpu", **env},
        ready_path="/embed",
        ready_json={"texts": ["warm up"]},
        wait_s=300,
    )


def unbatched(clients: list[int], texts: int) -> None:
    port = free_port()
    server = start(port, {"EMBED_BATCHING": "off"})
    url = f"http://127.0.0.1:{port}"
    payload = body(texts)
    try:
        httpx.post(url + "/embed", content=payload, timeout=60)  # warm
        cpu = tree_cpu_s(server.pid)
        began = time.perf_counter()
        httpx.post(url + "/embed", content=payload, timeout=60).raise_for_status()
        one_s, one_cpu = time.perf_counter() - began, tree_cpu_s(server.pid) - cpu
        print(f"one pass of {texts} texts alone: {one_s:.2f} s, {one_cpu:.2f} CPU-s")
        print("| clients that leave | server CPU-s until the next client's answer | next client waited s |")
        print("|---|---|---|")
        for n in clients:
            cpu = tree_cpu_s(server.pid)
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(lambda _: post_and_leave(port, payload), range(n)))
            began = time.perf_counter()
            answer = httpx.post(url + "/embed", content=payload, timeout=600)
            waited = time.perf_counter() - began
            answer.raise_for_status()
            print(f"| {n} | {tree_cpu_s(server.pid) - cpu:.1f} | {waited:.1f} |", flush=True)
    finally:
        server.stop()


def batched(abandoned_rows: int) -> None:
    port = free_port()
    server = start(port, {})
    url = f"http://127.0.0.1:{port}"
    try:
        httpx.post(url + "/embed", content=body(64), timeout=120)  # warm
        with ThreadPoolExecutor(abandoned_rows // 64 + 1) as pool:
            began = time.perf_counter()
            running = pool.submit(httpx.post, url + "/embed", content=body(64), timeout=600)
            time.sleep(0.3)  # its pass has begun
            list(pool.map(lambda _: post_and_leave(port, body(64)), range(abandoned_rows // 64)))
            answer = httpx.post(url + "/embed", content=body(8), timeout=600)
            print(
                f"{abandoned_rows} rows of clients that left, then a client of 8 texts: "
                f"{answer.status_code}, Retry-After {answer.headers.get('retry-after')}, after "
                f"{time.perf_counter() - began:.1f} s (the live pass of 64 texts took "
                f"{running.result().elapsed.total_seconds():.1f} s)"
            )
    finally:
        server.stop()
    port = free_port()
    server = start(port, {"EMBED_BATCHING__MAX_QUEUE_ROWS": "128"})
    url = f"http://127.0.0.1:{port}"
    try:
        httpx.post(url + "/embed", content=body(64), timeout=120)  # warm
        with ThreadPoolExecutor(3) as pool:
            began = time.perf_counter()
            live = [pool.submit(httpx.post, url + "/embed", content=body(64), timeout=600)]
            time.sleep(0.3)
            for _ in range(2):
                live.append(pool.submit(httpx.post, url + "/embed", content=body(64), timeout=600))
            time.sleep(0.5)  # queued: 128 rows, the queue is full
            refused = httpx.post(url + "/embed", content=body(8), timeout=60)
            asked_at = time.perf_counter() - began
            statuses = [future.result().status_code for future in live]
            drained = time.perf_counter() - began - asked_at
        print(
            f"a full queue of 128 live rows behind a pass of 64: {refused.status_code}, Retry-After "
            f"{refused.headers.get('retry-after')}; the queue drained {drained:.1f} s later ({statuses})"
        )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="work done for clients that left (MiniLM under hypercorn)")
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--texts", type=int, default=8, help="texts per request, unbatched")
    parser.add_argument("--batched-rows", type=int, default=4096)
    parser.add_argument("--skip-batched", action="store_true")
    parser.add_argument("--skip-unbatched", action="store_true")
    args = parser.parse_args()
    machine = f"{os.cpu_count()} CPUs {platform.machine()}, python {platform.python_version()}"
    print(f"{time.strftime('%Y-%m-%d')}, {machine}")
    if not args.skip_unbatched:
        unbatched(args.clients, args.texts)
    if not args.skip_batched:
        batched(args.batched_rows)


if __name__ == "__main__":
    main()
