"""A TCP proxy that adds a fixed round-trip time, for benchmarks over a "network".

This kernel has no ``netem`` (``tc qdisc ... netem delay`` needs the ``sch_netem``
module), so the delay is added in user space: every chunk read from one side is written
to the other ``rtt / 2`` seconds later, in order, in both directions. It is a
propagation delay, not a bandwidth limit: chunks in flight overlap, so a pipelining
client gains exactly what it would gain on a real link of that round-trip time.

Run it in its own process (``LatencyProxy``): in the benchmarked process it would share
the GIL with what it measures.

    with LatencyProxy("127.0.0.1", 5432, rtt=0.0005) as proxy:
        url = f"postgresql+psycopg://u@127.0.0.1:{proxy.port}/db"

Standalone: ``python bench/latency_proxy.py TARGET_HOST TARGET_PORT RTT_MS [LISTEN_PORT]``.
"""

from __future__ import annotations

import multiprocessing
import queue
import socket
import sys
import threading
import time
from types import TracebackType


def _pump(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Copy ``src`` to ``dst``, each chunk ``delay`` seconds after it was read: a reader
    and a writer thread with a queue between them, so chunks in flight overlap.
    (asyncio's timers would round every delay up to a whole millisecond: epoll's.)"""
    chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def write() -> None:
        try:
            while True:
                due, chunk = chunks.get()
                if not chunk:
                    dst.shutdown(socket.SHUT_WR)
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(chunk)
        except OSError:
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        while True:
            chunk = src.recv(65536)
            chunks.put((time.monotonic() + delay, chunk))
            if not chunk:
                break
    except OSError:
        chunks.put((0.0, b""))
    writer.join()


def _connection(client: socket.socket, target: tuple[str, int], rtt: float) -> None:
    try:
        upstream = socket.create_connection(target)
    except OSError:
        client.close()
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pump, args=(upstream, client, rtt / 2), daemon=True)
    back.start()
    _pump(client, upstream, rtt / 2)
    back.join()
    client.close()
    upstream.close()


def _run(listener: socket.socket, host: str, port: int, rtt: float) -> None:
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_connection, args=(client, (host, port), rtt),
                         daemon=True).start()


class LatencyProxy:
    """The proxy in a child process, listening on ``127.0.0.1:port`` (a free port)."""

    def __init__(self, host: str, port: int, rtt: float) -> None:
        self.target = (host, port)
        self.rtt = rtt
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.port: int = self.listener.getsockname()[1]
        self.process = multiprocessing.get_context("fork").Process(
            target=_run, args=(self.listener, host, port, rtt), daemon=True)

    def __enter__(self) -> LatencyProxy:
        self.process.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.process.terminate()
        self.process.join(5)
        self.listener.close()


def main() -> None:
    host, port, rtt_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(sys.argv[4]) if len(sys.argv) > 4 else 0))
    listener.listen(512)
    print(f"127.0.0.1:{listener.getsockname()[1]} -> {host}:{port}, +{rtt_ms} ms RTT",
          flush=True)
    _run(listener, host, port, rtt_ms / 1000)


if __name__ == "__main__":
    main()
