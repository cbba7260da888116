"""Redis throughput: a ``sessions`` handle (automatic pipelining) vs. redis-py direct.

Every variant runs 8 client threads for ``--seconds`` against a throwaway
``redis-server`` (from ``tests.servers``) and counts completed commands; each thread
does SET then GET on keys of its own. Variants:

* ``direct``: one ``redis.Redis`` shared by the 8 threads (its thread-safe pool grows
  to 8 connections), each thread calling synchronously: what redis-py code does.
* ``handle wN pK``: a ``redis`` resource with ``pool_size = K``; each thread fires N
  calls (futures) and then waits for all of them before firing the next N. ``w1`` is
  the synchronous style of ``direct`` (one call in flight per thread); larger windows
  let queued calls meet in the actor's mailbox, so they go out as one pipeline.

Rounds are interleaved: each round runs every variant once, back to back, so each
round gives a ratio to ``direct`` measured under the same machine load. Reported per
variant: the median and best rate, and the median of the per-round ratios (the figure
to quote: on a busy machine ``direct`` swings by 2x between rounds). Run:
``python bench/_redis_probe.py [--seconds S] [--rounds R] [--threads T]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sessions
from tests.servers import RedisServer

Worker = Callable[[int, threading.Event], int]


def run_threads(n: int, seconds: float, worker: Worker) -> float:
    """Run ``worker(thread_index, stop)`` in ``n`` threads; commands per second."""
    stop = threading.Event()
    counts = [0] * n
    start_gate = threading.Barrier(n + 1)

    def body(i: int) -> None:
        start_gate.wait()
        counts[i] = worker(i, stop)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start_gate.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - began)


def direct(url: str, threads: int, seconds: float) -> float:
    client = redis.Redis.from_url(url)
    try:

        def worker(i: int, stop: threading.Event) -> int:
            key, done = f"direct:{i}", 0
            while not stop.is_set():
                client.set(key, "value")
                client.get(key)
                done += 2
            return done

        return run_threads(threads, seconds, worker)
    finally:
        client.close()


def handle(url: str, threads: int, seconds: float, window: int, pool: int) -> float:
    config = {
        "resources": {
            "cache": {"kind": "redis", "url": url, "pool_size": pool, "call_timeout": 30.0}
        }
    }
    with sessions.start(config) as system:
        cache = system.get("cache")

        def worker(i: int, stop: threading.Event) -> int:
            key, done = f"handle:{i}", 0
            while not stop.is_set():
                futures = [
                    cache.set(key, "value") if j % 2 == 0 else cache.get(key) for j in range(window)
                ]
                for f in futures:
                    f.result()
                done += len(futures)
            return done

        return run_threads(threads, seconds, worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    variants: dict[str, Callable[[str], float]] = {
        "direct": lambda url: direct(url, args.threads, args.seconds),
        "handle w1 p1": lambda url: handle(url, args.threads, args.seconds, 1, 1),
        "handle w1 p4": lambda url: handle(url, args.threads, args.seconds, 1, 4),
        "handle w16 p1": lambda url: handle(url, args.threads, args.seconds, 16, 1),
        "handle w16 p2": lambda url: handle(url, args.threads, args.seconds, 16, 2),
        "handle w16 p4": lambda url: handle(url, args.threads, args.seconds, 16, 4),
        "handle w64 p2": lambda url: handle(url, args.threads, args.seconds, 64, 2),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with RedisServer() as server:
        for _ in range(args.rounds):
            for name, run in variants.items():
                rates[name].append(run(server.url))
                server.flushall()
    base = rates["direct"]
    print(f"{args.threads} threads, {args.rounds} interleaved rounds of {args.seconds}s")
    print(f"{'variant':<16}{'median/s':>11}{'best/s':>11}{'median ratio':>14}")
    for name, values in rates.items():
        ratio = statistics.median(v / b for v, b in zip(values, base, strict=True))
        print(f"{name:<16}{statistics.median(values):>11,.0f}{max(values):>11,.0f}{ratio:>13.2f}x")


if __name__ == "__main__":
    main()
