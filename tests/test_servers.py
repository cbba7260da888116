"""Tests of the throwaway test servers and their fixtures (tests/servers.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import redis
import requests
import sqlalchemy as sa
from kafka import KafkaConsumer, KafkaProducer
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests import fixtures_servers, servers
from tests.servers import (
    FAST_GROUP_CONSUMER,
    HttpServer,
    KafkaServer,
    PostgresServer,
    RedisServer,
    Server,
    ServerUnavailable,
    pid_alive,
    port_open,
)


def assert_gone(pids: list[int], port: int) -> None:
    assert pids, "expected the server to have had processes"
    assert not [p for p in pids if pid_alive(p)], "server processes left behind"
    assert not port_open(port)


def http_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("test-http-")]


# ------------------------------------------------------------------------ PostgreSQL


def test_postgres_answers(postgres_server: PostgresServer, postgres_url: str) -> None:
    assert postgres_url.startswith(
        f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/"
    )
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x int)"))
            conn.execute(sa.text("INSERT INTO t VALUES (1), (2)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT sum(x) FROM t")).scalar_one() == 3
    finally:
        engine.dispose()
    assert postgres_server.execute("SELECT 1", dbname=postgres_server.dbname) == [(1,)]


def test_postgres_terminate_connections(postgres_server: PostgresServer, postgres_url: str) -> None:
    dbname = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.conninfo(dbname), autocommit=True) as victim:
        victim.execute("SELECT 1")
        assert postgres_server.terminate_connections(dbname) == 1
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")


def test_postgres_kill_and_restart_on_same_port(
    make_postgres_server: Callable[..., PostgresServer],
) -> None:
    server = make_postgres_server()
    port = server.port
    server.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)", dbname=server.dbname)
    engine = sa.create_engine(server.url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:  # leaves a pooled connection to be killed
            conn.execute(sa.text("SELECT 1"))

        pids = server.process_ids()
        server.kill()
        assert_gone(pids, port)
        assert server.pid is None
        with pytest.raises(sa.exc.OperationalError), engine.connect():
            pass

        server.start()
        assert server.port == port
        with engine.connect() as conn:  # pre-ping replaces the dead pooled connection
            assert conn.execute(sa.text("SELECT x FROM t")).scalar_one() == 42

        server.restart()  # clean stop + start
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM t")).scalar_one() == 42
    finally:
        engine.dispose()

    pids = server.process_ids()
    datadir = server.datadir
    server.close()
    assert_gone(pids, port)
    assert not datadir.exists()


# ----------------------------------------------------------------------------- Redis


def test_redis_answers(redis_server: RedisServer, redis_url: str) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}


def test_redis_client_kill_all(redis_server: RedisServer) -> None:
    with redis_server.client() as client:
        before = client.client_id()
        assert redis_server.client_kill_all() >= 1
        # redis-py reconnects (and retries) on its own: a new connection, a new id.
        assert client.client_id() != before


@pytest.mark.parametrize("persistence", [False, True])
def test_redis_kill_and_restart_on_same_port(
    make_redis_server: Callable[..., RedisServer], persistence: bool
) -> None:
    server = make_redis_server(persistence=persistence)
    port = server.port
    with server.client() as client:
        client.set("k", "v")

    pids = server.process_ids()
    server.kill()
    assert_gone(pids, port)
    assert not server.running
    server.start()
    assert server.port == port
    with server.client() as client:
        assert client.get("k") == (b"v" if persistence else None)
        client.set("k2", "v2")

    server.restart()
    with server.client() as client:
        assert client.get("k2") == (b"v2" if persistence else None)

    pids = server.process_ids()
    server.close()
    assert_gone(pids, port)


# ----------------------------------------------------------------------------- Kafka


def produce(bootstrap: str, topic: str, value: bytes) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        producer.send(topic, value).get(timeout=10)
    finally:
        producer.close(timeout=5)


def consume_one(bootstrap: str, topic: str) -> bytes:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"group-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        consumer_timeout_ms=15000,
        **FAST_GROUP_CONSUMER,
    )
    try:
        for record in consumer:
            value: bytes = record.value
            consumer.commit()
            return value
        raise AssertionError(f"no record on {topic} within 15 s")
    finally:
        consumer.close()


def test_kafka_produce_and_group_consume(kafka_server: KafkaServer, kafka_topic: str) -> None:
    assert kafka_server.bootstrap == f"127.0.0.1:{kafka_server.port}"
    assert kafka_topic in kafka_server.list_topics()
    produce(kafka_server.bootstrap, kafka_topic, b"hello")
    started = time.monotonic()
    assert consume_one(kafka_server.bootstrap, kafka_topic) == b"hello"
    assert time.monotonic() - started < 10  # ~1 s group join with FAST_GROUP_CONSUMER


def test_kafka_kill_and_restart_on_same_port(
    make_kafka_server: Callable[..., KafkaServer],
) -> None:
    server = make_kafka_server()
    port = server.port
    topic = server.create_topic("orders", partitions=2)
    produce(server.bootstrap, topic, b"before")

    pids = server.process_ids()
    server.kill()
    assert_gone(pids, port)

    server.start()
    assert server.port == port
    # In-memory storage: records are gone, create_topic()'s topics are back.
    assert topic in server.list_topics()
    produce(server.bootstrap, topic, b"after-kill")
    assert consume_one(server.bootstrap, topic) == b"after-kill"

    server.restart()
    produce(server.bootstrap, topic, b"after-stop")
    assert consume_one(server.bootstrap, topic) == b"after-stop"

    pids = server.process_ids()
    server.close()
    assert_gone(pids, port)


# ------------------------------------------------------------------------------ HTTP


def test_http_endpoints(http_server: HttpServer) -> None:
    echo = requests.post(
        http_server.url_for("/echo?a=1"), data=b"payload", headers={"X-Test": "yes"}, timeout=5
    ).json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo?a=1"
    assert echo["headers"]["X-Test"] == "yes"
    assert echo["body"] == "payload"

    assert requests.get(http_server.url_for("/status/503"), timeout=5).status_code == 503
    assert requests.get(http_server.url_for("/status/204"), timeout=5).status_code == 204
    assert requests.get(http_server.url_for("/nope"), timeout=5).status_code == 404

    counts = [
        requests.get(http_server.url_for("/count/a"), timeout=5).json()["count"] for _ in "xyz"
    ]
    assert counts == [1, 2, 3]
    assert requests.get(http_server.url_for("/count"), timeout=5).json()["count"] == 1
    assert http_server.counts["/count/a"] == 3

    started = time.monotonic()
    assert requests.get(http_server.url_for("/slow?seconds=0.2"), timeout=5).json() == {
        "slept": 0.2
    }
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("mode", ["drop", "reset"])
def test_http_connection_dropping_modes(http_server: HttpServer, mode: Any) -> None:
    with requests.Session() as session:
        assert session.get(http_server.url_for("/count"), timeout=5).ok  # keep-alive conn
        http_server.mode = mode
        with pytest.raises(requests.ConnectionError):  # on the open keep-alive connection
            session.get(http_server.url_for("/count"), timeout=5)
        with pytest.raises(requests.ConnectionError):  # on a new connection
            requests.get(http_server.url_for("/count"), timeout=5)
        http_server.mode = "normal"
        assert session.get(http_server.url_for("/count"), timeout=5).ok
    if mode == "drop":  # dropped requests were read, so counted
        assert http_server.counts["/count"] == 4


def test_http_kill_cuts_requests_in_flight_and_start_reuses_port(http_server: HttpServer) -> None:
    port = http_server.port
    errors: list[BaseException] = []

    def slow_request() -> None:
        try:
            requests.get(http_server.url_for("/slow?seconds=30"), timeout=30)
        except requests.RequestException as exc:
            errors.append(exc)

    client = threading.Thread(target=slow_request)
    client.start()
    servers.wait_until(lambda: http_server.active_requests == 1, what="request in flight")
    started = time.monotonic()
    http_server.kill()
    client.join(10)
    assert not client.is_alive()
    assert time.monotonic() - started < 5
    assert len(errors) == 1
    assert isinstance(errors[0], requests.ConnectionError)
    assert not port_open(port)
    assert not http_threads()

    http_server.start()
    assert http_server.port == port
    assert requests.get(http_server.url_for("/count"), timeout=5).ok


def test_http_stop_lets_requests_in_flight_finish(http_server: HttpServer) -> None:
    results: list[int] = []
    client = threading.Thread(
        target=lambda: results.append(
            requests.get(http_server.url_for("/slow?seconds=0.3"), timeout=10).status_code
        )
    )
    client.start()
    servers.wait_until(lambda: http_server.active_requests == 1, what="request in flight")
    http_server.stop()
    client.join(10)
    assert results == [200]
    assert not port_open(http_server.port)
    http_server.restart()
    assert requests.get(http_server.url_for("/count"), timeout=5).ok


# ---------------------------------------------------------- fixtures and their cleanup


@pytest.mark.parametrize("server_type", [PostgresServer, RedisServer, KafkaServer])
def test_shared_fixture_leaves_no_process(server_type: type[Server]) -> None:
    fixture = fixtures_servers._shared(server_type)
    server = next(fixture)
    assert isinstance(server, servers.ProcessServer)
    pids, port = server.process_ids(), server.port
    assert port_open(port)
    fixture.close()  # what pytest does at the end of the session
    assert_gone(pids, port)
    assert not any(Path(d).exists() for d in server._tmp_dirs)


def test_http_fixture_leaves_no_thread() -> None:
    fixture = fixtures_servers._shared(HttpServer)
    server = next(fixture)
    with requests.Session() as session:  # an idle keep-alive connection stays open
        assert session.get(server.url_for("/count"), timeout=5).ok
        assert http_threads()
        fixture.close()
    assert not http_threads()
    assert not port_open(server.port)


@pytest.mark.parametrize(
    ("ci", "outcome"),
    [
        (None, pytest.skip.Exception),
        ("", pytest.skip.Exception),
        ("0", pytest.skip.Exception),
        ("false", pytest.skip.Exception),
        ("true", pytest.fail.Exception),
        ("1", pytest.fail.Exception),
    ],
)
def test_missing_binary_skips_loudly_but_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
    make_redis_server: Callable[..., RedisServer],
    ci: str | None,
    outcome: type[BaseException],
) -> None:
    def missing() -> str:
        raise ServerUnavailable("redis-server", "apt-get install -y redis-server")

    monkeypatch.setattr(servers, "find_redis_server", missing)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=r"SERVER BINARY MISSING: redis-server.*apt-get install"):
        make_redis_server()


# ------------------------------------------------------- freeze, thaw and black hole


def _stopped(pids: list[int]) -> bool:
    """Whether every process is stopped or gone (SIGSTOP is delivered asynchronously;
    short-lived PostgreSQL workers may have exited meanwhile)."""

    def stopped(pid: int) -> bool:
        try:
            return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)
        except psutil.NoSuchProcess:
            return True

    try:
        servers.wait_until(lambda: all(stopped(p) for p in pids), 5)
        return True
    except TimeoutError:
        return False


def test_redis_freeze_answers_nothing_until_thawed(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    server = make_redis_server()
    with server.client(socket_timeout=0.5, retry=Retry(NoBackoff(), 0)) as client:
        assert client.ping()
        server.freeze()
        assert server.frozen and _stopped(server.process_ids())
        with pytest.raises(redis.TimeoutError):
            client.set("k", "v")
        server.thaw()
        assert not server.frozen
        assert client.ping()


def test_postgres_freeze_stops_postmaster_and_backends(
    make_postgres_server: Callable[..., PostgresServer],
) -> None:
    server = make_postgres_server()
    with server.connect() as conn:  # a backend of its own
        pids = server.process_ids()
        assert len(pids) > 1
        server.freeze()
        assert _stopped(pids)
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError):  # the handshake is never answered
            psycopg.connect(server.conninfo(), connect_timeout=2)
        assert time.monotonic() - started >= 1.5
        server.thaw()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stop_kill_and_close_of_a_frozen_server(
    make_redis_server: Callable[..., RedisServer],
) -> None:
    server = make_redis_server()
    for end in (server.stop, server.kill, server.close):
        server.start()
        pids, port = server.process_ids(), server.port
        server.freeze()
        end()  # thaws first: a stopped process would never see SIGTERM
        assert not server.frozen
        assert_gone(pids, port)


def test_http_freeze_accepts_but_answers_nothing_until_thawed(http_server: HttpServer) -> None:
    with requests.Session() as session:
        assert session.post(http_server.url_for("/count/a"), timeout=5).ok  # keep-alive
        http_server.freeze()
        with pytest.raises(requests.ReadTimeout):  # on the open keep-alive connection
            session.post(http_server.url_for("/count/b"), timeout=0.5)
        with pytest.raises(requests.ReadTimeout):  # a new connection is accepted, then silence
            requests.post(http_server.url_for("/count/c"), timeout=(2, 0.5))
        assert set(http_server.counts) == {"/count/a"}
        http_server.thaw()  # what arrived meanwhile is served now
        servers.wait_until(
            lambda: http_server.counts["/count/b"] == 1 and http_server.counts["/count/c"] == 1,
            5,
        )
        assert session.post(http_server.url_for("/count/d"), timeout=5).ok


def test_http_kill_of_a_frozen_server_ends_its_threads(http_server: HttpServer) -> None:
    http_server.freeze()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(http_server.url_for("/count"), timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    servers.wait_until(lambda: http_server.open_connections == 1, 5)
    http_server.kill()
    caller.join(10)
    assert not caller.is_alive() and len(errors) == 1
    assert not http_threads()


def test_blackhole_refuses_outside_a_private_network_namespace() -> None:
    if servers.in_private_netns():
        pytest.skip("this test process already runs in a private network namespace")
    hole = servers.Blackhole(9)
    with pytest.raises(servers.BlackholeUnavailable):
        hole.start()
    assert not hole.active


_BLACKHOLE_SCRIPT = """
import subprocess, sys
sys.path.insert(0, sys.argv[1])
subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
import requests
from tests.servers import HttpServer
with HttpServer() as server, requests.Session() as session:
    assert session.get(server.url_for("/count"), timeout=5).ok
    with server.blackhole() as hole:
        for attempt in (session.get, requests.get):  # the open connection, a new one
            try:
                attempt(server.url_for("/count"), timeout=(0.5, 0.5))
            except requests.Timeout:
                continue
            raise SystemExit("answered through the black hole")
    assert not hole.active
    assert session.get(server.url_for("/count"), timeout=5).ok
print("BLACKHOLE-OK")
"""


def test_blackhole_drops_the_port_in_a_private_network_namespace() -> None:
    reason = servers.netns_unavailable()
    if reason is not None:
        message = f"!!! BLACK HOLE NOT TESTED: {reason} !!!"
        if fixtures_servers.in_ci():
            pytest.fail(f"{message} (CI is set: must not be skipped)", pytrace=False)
        pytest.skip(message)
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        ["unshare", "--net", "--", sys.executable, "-c", _BLACKHOLE_SCRIPT, root],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and "BLACKHOLE-OK" in done.stdout, done.stdout + done.stderr
