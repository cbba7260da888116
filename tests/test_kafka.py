"""The Kafka kinds (``kafka_producer``, ``kafka_consumer``) against a real broker (Tansu).

Tansu keeps everything in memory: a broker restart loses records, committed offsets and
producer ids. Tests through a restart therefore check the writes acknowledged *after*
recovery (every one must be readable), and that sends made during the outage either
failed with a clear error or were acknowledged after it (and are then readable too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer
from kafka import errors as kerr
from kafka.structs import TopicPartition

import sessions
from sessions.actors.kafka import (
    AckTimeout,
    ConsumerOptions,
    KafkaAborted,
    KafkaConsumerActor,
    KafkaProducerActor,
    ProducerOptions,
    Record,
    RecordDecodeError,
    SendResult,
)
from sessions.kafka import KafkaSessionManager
from sessions.messages import ChildFaulted, ChildStarted, CircuitChanged
from tests.servers import FAST_GROUP_CONSUMER, KafkaServer, _reserve_port
from tests.support import Recorder, abort_from_another_thread, in_thread, wait_until

pytestmark = pytest.mark.timeout(180)

CLEAR_ERRORS = (sessions.ResourceFault, sessions.CallTimeout, sessions.ResourceUnavailable)
"""What a send during an outage may fail with: each says what happened to the call."""

SUPERVISOR = {
    "max_restarts": 100,
    "period": 5.0,
    "backoff": {"initial": 0.05, "max": 0.5, "jitter": 0.0},
}


def _kafka_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("kafka") and t.is_alive()}


@pytest.fixture(autouse=True)
def no_leaked_kafka_threads() -> Iterator[None]:
    """Every KafkaProducer/KafkaConsumer the actors created must be closed by the end."""
    before = _kafka_threads()
    yield
    deadline = time.monotonic() + 10
    leaked = _kafka_threads() - before
    while leaked and time.monotonic() < deadline:
        next(iter(leaked)).join(0.1)
        leaked = _kafka_threads() - before
    assert not leaked, f"kafka client threads left running: {sorted(t.name for t in leaked)}"


def start(resources: dict[str, dict[str, Any]], **supervisor: Any) -> sessions.System:
    return sessions.start({"supervisor": {**SUPERVISOR, **supervisor}, "resources": resources})


def producer_spec(server: KafkaServer, **options: Any) -> dict[str, Any]:
    return {
        "kind": "kafka_producer",
        "bootstrap_servers": server.bootstrap,
        "call_timeout": 10.0,
        **options,
    }


def consumer_spec(server: KafkaServer, group: str, **options: Any) -> dict[str, Any]:
    return {
        "kind": "kafka_consumer",
        "bootstrap_servers": server.bootstrap,
        "group_id": group,
        "call_timeout": 10.0,
        **FAST_GROUP_CONSUMER,
        **options,
    }


def read_topic(server: KafkaServer, topic: str, count: int, timeout: float = 20.0) -> list[Any]:
    """The records of ``topic`` (at least ``count``; partition order), with a plain client.

    Every partition is read: a client racing the test broker's restart can get the topic
    auto-created with 4 partitions before the server re-creates it with 1.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=server.bootstrap, enable_auto_commit=False, bootstrap_timeout_ms=5000
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records += batch
        return records
    finally:
        consumer.close(autocommit=False)


class Collector:
    """Records handled by a consumer's handler, with a condition to wait on."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.cond = threading.Condition()

    def __call__(self, record: Record) -> None:
        with self.cond:
            self.records.append(record)
            self.cond.notify_all()

    def values(self) -> list[Any]:
        with self.cond:
            return [r.value for r in self.records]

    def wait(
        self, pred: Callable[[list[Any]], bool], timeout: float = 30.0, what: str = "records"
    ) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred([r.value for r in self.records]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {what}; got {[r.value for r in self.records]}"
                    )
                self.cond.wait(left)
            return [r.value for r in self.records]


#: Records handled by ``collect`` (the config-named handler), per topic.
HANDLED: dict[str, Collector] = defaultdict(Collector)


def collect(record: Record) -> None:
    """A handler named in config: ``handler = "tests.test_kafka:collect"``."""
    HANDLED[record.topic](record)


def fetch_all(handle: sessions.Handle, count: int, timeout: float = 30.0) -> list[Record]:
    """Exactly ``count`` records from a manual-mode consumer (fails after ``timeout``)."""
    out: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(out) < count:
        assert time.monotonic() < deadline, f"fetched only {len(out)} of {count} records"
        out += handle.fetch(count - len(out), 1.0).result(15)
    return out


def sends(handle: sessions.Handle, topic: str, value: bytes) -> Callable[[], bool]:
    """A ``wait_until`` predicate: one send attempt; a clear error means "not yet"."""

    def attempt() -> bool:
        try:
            handle.send(topic, value).result(10)
            return True
        except CLEAR_ERRORS:
            return False

    return attempt


# -- producer ---------------------------------------------------------------------------


def test_sends_from_many_threads_are_acknowledged_and_readable(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    with start({"p": producer_spec(kafka_server)}) as system:
        p = system.get("p")
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [
                f
                for fs in pool.map(
                    lambda t: [
                        p.send(kafka_topic, f"t{t}-{i}", key=f"k{t}", headers={"n": str(i)})
                        for i in range(25)
                    ],
                    range(8),
                )
                for f in fs
            ]
        results = [f.result(15) for f in futures]
        assert all(isinstance(r, SendResult) for r in results)
        assert {r.topic for r in results} == {kafka_topic}
        assert sorted(r.offset for r in results) == list(range(200))
        assert all(r.timestamp > 0 for r in results)
        assert p.flush().result(5) is None
        assert p.partitions_for(kafka_topic).result(5) == [0]
    stored = read_topic(kafka_server, kafka_topic, 200)
    assert sorted(r.value for r in stored) == sorted(
        f"t{t}-{i}".encode() for t in range(8) for i in range(25)
    )
    first = next(r for r in stored if r.value == b"t3-7")
    assert first.key == b"k3" and first.headers == [("n", b"7")]


def test_json_serializer_and_tombstones(kafka_server: KafkaServer, kafka_topic: str) -> None:
    with start({"p": producer_spec(kafka_server, serializer="json")}) as system:
        p = system.get("p")
        p.send(kafka_topic, {"a": [1, 2]}).result(10)
        p.send(kafka_topic, None, key="gone").result(10)
    stored = read_topic(kafka_server, kafka_topic, 2)
    assert [r.value for r in stored] == [b'{"a":[1,2]}', None]


def test_caller_errors_go_to_the_caller_and_the_producer_keeps_running(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    spec = producer_spec(kafka_server, max_request_size=2000)
    with start({"p": spec}) as system:
        p = system.get("p")
        with pytest.raises(TypeError, match="value must be bytes or str"):
            p.send(kafka_topic, 42).result(10)
        with pytest.raises(kerr.MessageSizeTooLargeError):
            p.send(kafka_topic, b"x" * 5000).result(10)
        with pytest.raises(ValueError, match=r"[Tt]opic"):
            p.send("not a valid topic!", b"x").result(10)
        with pytest.raises(TypeError, match="header"):
            p.send(kafka_topic, b"x", headers=[("h", 1)]).result(10)
        # good and bad sends queued together: each caller gets its own outcome
        mixed = [p.send(kafka_topic, b"ok" if i % 2 else 1) for i in range(6)]
        for i, f in enumerate(mixed):
            if i % 2:
                assert isinstance(f.result(10), SendResult)
            else:
                with pytest.raises(TypeError):
                    f.result(10)
        assert p.send(kafka_topic, b"still fine").result(10).offset == 3
        assert p.restarts == 0 and p.state == "running"


def test_a_closed_producer_is_a_fault_and_is_replaced(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    rec = Recorder()
    with start({"p": producer_spec(kafka_server)}) as system:
        system.subscribe(rec)
        p = system.get("p")
        p.send(kafka_topic, b"one").result(10)
        p.transaction(lambda producer: producer.close(1)).result(10)
        with pytest.raises(sessions.ResourceFault) as info:
            p.send(kafka_topic, b"two").result(10)
        assert isinstance(info.value.__cause__, kerr.IllegalStateError)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert p.send(kafka_topic, b"three").result(10).offset == 1


def test_an_unreachable_broker_is_a_failed_start() -> None:
    port = _reserve_port()  # nothing listens there
    for spec in (
        {
            "kind": "kafka_producer",
            "bootstrap_servers": f"127.0.0.1:{port}",
            "bootstrap_timeout_ms": 300,
        },
        {
            "kind": "kafka_consumer",
            "bootstrap_servers": f"127.0.0.1:{port}",
            "group_id": "g",
            "bootstrap_timeout_ms": 300,
        },
    ):
        with pytest.raises(sessions.ResourceUnavailable, match="gave up") as info:
            start({"k": spec}, max_restarts=1)
        assert "Unable to bootstrap" in str(info.value)


def test_producer_rides_through_a_broker_restart(make_kafka_server: Any) -> None:
    server: KafkaServer = make_kafka_server()
    topic = server.create_topic()  # created again when the broker restarts
    rec = Recorder()
    spec = producer_spec(
        server, fault_after=1.0, ack_timeout=3.0, bootstrap_timeout_ms=1000, call_timeout=5.0
    )
    with start({"p": spec}) as system:
        system.subscribe(rec)
        p = system.get("p")
        assert [p.send(topic, f"before-{i}").result(10).offset for i in range(5)] == [0, 1, 2, 3, 4]
        server.stop()
        outage = [p.send(topic, f"outage-{i}") for i in range(5)]
        done, _ = concurrent.futures.wait(outage, timeout=30)
        assert len(done) == 5
        for f in outage:  # the broker is down: none can have been acknowledged
            assert isinstance(f.exception(), CLEAR_ERRORS), f.exception()
        rec.wait_for(lambda e: isinstance(e, ChildFaulted) and e.name == "p")
        late = [p.send(topic, f"late-{i}") for i in range(3)]  # queued while reconnecting
        server.start()
        # the first sends after recovery may fail clearly while the producer reconnects
        wait_until(sends(p, topic, b"recovered"), 60, "a send after the broker came back")
        acked = [b"recovered"]
        for i, f in enumerate(late):  # acknowledged after recovery, or a clear error
            try:
                assert isinstance(f.result(10), SendResult)
                acked.append(f"late-{i}".encode())
            except CLEAR_ERRORS:
                pass
        for i in range(20):
            p.send(topic, f"after-{i}").result(10)
            acked.append(f"after-{i}".encode())
    stored = {r.value for r in read_topic(server, topic, len(acked))}
    missing = [v for v in acked if v not in stored]
    assert not missing, f"acknowledged writes lost: {missing}"


def test_a_hung_broker_is_a_fault_after_ack_timeout(make_kafka_server: Any) -> None:
    server: KafkaServer = make_kafka_server()
    topic = server.create_topic()
    rec = Recorder()
    spec = producer_spec(
        server, ack_timeout=1.0, fault_after=1.0, bootstrap_timeout_ms=1000, call_timeout=8.0
    )
    with start({"p": spec}) as system:
        system.subscribe(rec)
        p = system.get("p")
        p.send(topic, b"before").result(10)
        pids = server.process_ids()
        for pid in pids:  # frozen: connections stay up, nothing is acknowledged
            os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(sessions.ResourceFault) as info:
                p.send(topic, b"hung").result(10)
            assert isinstance(info.value.__cause__, AckTimeout)
            assert "outcome is unknown" in str(info.value)
            fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted) and e.name == "p")[0]
            assert "AckTimeout" in fault.error
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        wait_until(sends(p, topic, b"after"), 60, "a send after the broker woke up")
    assert b"after" in {r.value for r in read_topic(server, topic, 2)}


def test_the_breaker_opens_against_a_stopped_broker_and_closes_after_it_is_back(
    make_kafka_server: Any,
) -> None:
    server: KafkaServer = make_kafka_server()
    topic = server.create_topic()
    rec = Recorder()
    spec = producer_spec(
        server,
        fault_after=0.5,
        ack_timeout=2.0,
        bootstrap_timeout_ms=500,
        call_timeout=3.0,
        breaker={"failures": 2, "reset_timeout": 1.0},
    )
    with start({"p": spec}) as system:
        system.subscribe(rec)
        p = system.get("p")
        p.send(topic, b"up").result(10)
        server.stop()
        with pytest.raises(CLEAR_ERRORS):
            p.send(topic, b"down").result(10)
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open", timeout=30)
        refused = p.send(topic, b"refused")
        assert refused.done()
        with pytest.raises(sessions.ResourceUnavailable, match="circuit open"):
            refused.result(0)
        server.start()
        wait_until(sends(p, topic, b"back"), 60, "the half-open probe to succeed")
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "closed")
        assert p.circuit == "closed"


def test_sends_failed_by_a_broken_producer_are_counted_as_faults(make_kafka_server: Any) -> None:
    """Issue 9's accounting bug: records in flight when the producer broke reached their
    callers as ResourceFault but were counted as "error" (fault = 0) in status and
    /metrics. The broker is killed with sends in flight; every ResourceFault a caller got
    must be a "fault" in the call statistics, and nothing an "error"."""
    server: KafkaServer = make_kafka_server()
    topic = server.create_topic()
    spec = producer_spec(
        server, fault_after=0.5, ack_timeout=3.0, bootstrap_timeout_ms=500, call_timeout=8.0
    )
    with start({"p": spec}, max_restarts=1000) as system:
        p = system.get("p")
        p.send(topic, b"up").result(10)
        server.kill()
        in_flight = [p.send(topic, f"in-flight-{i}") for i in range(10)]
        done, _ = concurrent.futures.wait(in_flight, timeout=30)
        assert len(done) == len(in_flight)
        errors = [f.exception() for f in in_flight]
        faults = [e for e in errors if isinstance(e, sessions.ResourceFault)]
        assert faults, errors
        assert all(isinstance(e, CLEAR_ERRORS) for e in errors), errors
        for err in faults:  # why the producer broke, as the cause
            assert isinstance(err.__cause__, (kerr.KafkaConnectionError, AckTimeout)), err
            assert "outcome is unknown" in str(err)
        calls = system.stats("p").outcomes
        assert calls["error"] == 0, calls
        assert calls["fault"] == len(faults), calls
        status = next(c for c in system.status()["children"] if c["name"] == "p")
        assert status["calls"]["fault"] == len(faults) and status["calls"]["error"] == 0


# -- abort: a frozen broker must not wedge a resource (issue 9) ---------------------------

JOIN = 10.0
"""Generous bound for a call blocked on a frozen broker to return after abort(): the
driver's own bounds in these tests are 60 s."""


@contextlib.contextmanager
def frozen(server: KafkaServer) -> Iterator[None]:
    """The broker stopped (SIGSTOP): connections stay up, nothing answers."""
    pids = server.process_ids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)






def test_abort_releases_a_producer_blocked_on_a_frozen_broker(make_kafka_server: Any) -> None:
    """The driver's bounds are 60 s here; abort() from another thread makes a send()
    waiting for a topic's metadata and a flush() waiting for acks return at once with
    KafkaAborted (a fault), fails the record in flight the same way, and ends the
    sender thread; disconnect() works after."""
    server: KafkaServer = make_kafka_server()
    topic = server.create_topic()
    actor = KafkaProducerActor(
        bootstrap_servers=server.bootstrap, ack_timeout=60.0, fault_after=60.0,
        max_block_ms=60_000,
    )
    producer = actor.resource = actor.connect()
    assert isinstance(actor.send(topic, b"up").future.result(10), SendResult)
    sender = producer._sender
    with frozen(server):
        in_flight = actor.send(topic, b"in flight").future
        flushing = in_thread(actor.flush)
        metadata = in_thread(lambda: actor.send(f"{topic}-new", b"x"))
        abort_from_another_thread(actor, producer)
        for blocked in (flushing, metadata, in_flight):
            with pytest.raises(KafkaAborted) as info:
                blocked.result(JOIN)
            assert actor.is_fault(info.value)
        sender.join(JOIN)
        assert not sender.is_alive()
        actor.abort(producer)  # idempotent
        assert in_thread(lambda: actor.disconnect(producer)).result(JOIN) is None
    assert producer._closed


def test_a_send_that_reaches_the_driver_after_abort_is_aborted(make_kafka_server: Any) -> None:
    """The race the test above can lose: abort() lands before send() reaches the driver,
    which then finds its network selector closed. The caller still gets KafkaAborted (a
    fault), not the driver's RuntimeError."""
    server: KafkaServer = make_kafka_server()
    topic = server.create_topic()
    actor = KafkaProducerActor(bootstrap_servers=server.bootstrap)
    producer = actor.resource = actor.connect()
    try:
        actor.abort(producer)
        with pytest.raises(KafkaAborted) as info:
            actor.send(f"{topic}-new", b"x")
        assert actor.is_fault(info.value)
    finally:
        assert in_thread(lambda: actor.disconnect(producer)).result(JOIN) is None


def test_abort_releases_a_consumer_blocked_on_a_frozen_broker(
    make_kafka_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A commit() waiting on a frozen broker (bounded by 60 s here) returns at once with
    KafkaAborted after abort(); the consumer's IO thread ends; disconnect() closes the
    aborted consumer without waiting for the broker."""
    server: KafkaServer = make_kafka_server()
    topic = server.create_topic()
    actor = KafkaConsumerActor(
        bootstrap_servers=server.bootstrap, group_id="g-abort", commit_timeout=60.0,
        fault_after=60.0, **FAST_GROUP_CONSUMER,
    )
    consumer = actor.resource = actor.connect()
    actor.subscribe([topic])
    deadline = time.monotonic() + 30
    while not actor.assignment():  # join the group
        assert time.monotonic() < deadline, "the consumer never got its partition"
        actor.poll()
    assert actor.commit({(topic, 0): 0}) == {(topic, 0): 0}
    io_threads = [t for t in _kafka_threads() if t.name.startswith("kafka-io")]
    assert io_threads
    with frozen(server):
        committing = in_thread(lambda: actor.commit({(topic, 0): 0}))
        abort_from_another_thread(actor, consumer)
        with pytest.raises(KafkaAborted) as info:
            committing.result(JOIN)
        assert actor.is_fault(info.value)
        with pytest.raises(KafkaAborted):  # a later call on the aborted consumer: at once
            in_thread(lambda: actor.committed(topic, 0)).result(JOIN)
        actor.abort(consumer)  # idempotent
        closer = in_thread(lambda: actor.disconnect(consumer))
        assert closer.result(JOIN) is None
    for thread in io_threads:
        thread.join(JOIN)
        assert not thread.is_alive()
    assert "did not end after abort" not in caplog.text


@pytest.mark.parametrize("kind", ["producer", "consumer"])
def test_abort_of_a_pending_connect_ends_its_bootstrap(make_kafka_server: Any, kind: str) -> None:
    """abort(None): connect() is still bootstrapping against a frozen broker (bounded by
    60 s here); it fails at once and leaves no client thread behind."""
    server: KafkaServer = make_kafka_server()
    actor: Any = (
        KafkaProducerActor(bootstrap_servers=server.bootstrap, bootstrap_timeout_ms=60_000)
        if kind == "producer"
        else KafkaConsumerActor(bootstrap_servers=server.bootstrap, group_id="g-abort-connect",
                                bootstrap_timeout_ms=60_000)
    )
    with frozen(server):
        connecting = in_thread(actor.connect)
        wait_until(lambda: actor._opening is not None and actor._opening.clients, JOIN,
                   "the constructor to build its client")
        abort_from_another_thread(actor, None)
        with pytest.raises((KafkaAborted, kerr.KafkaTimeoutError)):
            connecting.result(JOIN)


def test_a_send_stalled_on_a_frozen_broker_is_a_fault_and_its_thread_ends(
    make_kafka_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the runtime: a send waiting for a topic's metadata past stall_timeout
    (max_block_ms raised to 60 s by the user) is a fault; abort() ends the stuck thread
    within the runtime's grace (it is not left behind), and the producer serves again
    once the broker is back."""
    server: KafkaServer = make_kafka_server()
    topic = server.create_topic()
    rec = Recorder()
    spec = producer_spec(
        server, max_block_ms=60_000, ack_timeout=4.0, bootstrap_timeout_ms=500,
        call_timeout=0.5, stall_timeout=1.0,
    )
    with start({"p": spec}) as system:
        system.subscribe(rec)
        p = system.get("p")
        p.send(topic, b"up").result(10)
        with frozen(server):
            with pytest.raises(sessions.ResourceFault, match="stall_timeout"):
                p.send(f"{topic}-new", b"stuck").result(JOIN)
            fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted) and e.name == "p")[0]
            assert "stalled" in fault.error
        wait_until(lambda: system.status()["children"][0]["abandoned"] == 0, JOIN,
                   "the aborted incarnation's thread to end")
        wait_until(sends(p, topic, b"after"), 60, "a send after the broker woke up")
    assert "still blocked" not in caplog.text
    assert b"after" in {r.value for r in read_topic(server, topic, 2)}


@pytest.mark.parametrize(
    ("kind", "options", "path"),
    [
        ("kafka_producer", {"ack_timeout": math.inf}, "resources.k.ack_timeout"),
        ("kafka_producer", {"fault_after": math.nan}, "resources.k.fault_after"),
        ("kafka_consumer", {"group_id": "g", "commit_timeout": math.inf},
         "resources.k.commit_timeout"),
        ("kafka_consumer", {"group_id": "g", "rebalance_poll_timeout": math.inf},
         "resources.k.rebalance_poll_timeout"),
        ("kafka_consumer", {"group_id": "g", "close_timeout": math.inf},
         "resources.k.close_timeout"),
    ],
)
def test_our_own_waits_must_be_finite(kind: str, options: dict[str, Any], path: str) -> None:
    spec = {"kind": kind, "bootstrap_servers": "127.0.0.1:1", **options}
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start({"resources": {"k": spec}})
    assert info.value.path == path


def test_unbounded_driver_waits_are_reported_for_sessions_check() -> None:
    """kafka-python takes None (or inf) as "wait forever": passed on, but reported."""
    bounded = ProducerOptions(bootstrap_servers="b:9092", max_block_ms=2000)
    assert bounded.unbounded_waits() == []
    producer = ProducerOptions(
        bootstrap_servers="b:9092", bootstrap_timeout_ms=None, max_block_ms=math.inf
    )
    assert [path for path, _ in producer.unbounded_waits()] == [
        "bootstrap_timeout_ms",
        "max_block_ms",
    ]
    assert all("unbounded" in message for _, message in producer.unbounded_waits())
    consumer = ConsumerOptions(
        bootstrap_servers="b:9092",
        group_id="g",
        dead_letter_topic="dead",
        dead_letter_options={"max_block_ms": None},
    )
    assert [path for path, _ in consumer.unbounded_waits()] == [
        "dead_letter_options.max_block_ms"
    ]


# -- consumer: handler mode -------------------------------------------------------------


def test_a_config_handler_gets_every_record_and_offsets_are_committed(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    spec = consumer_spec(
        kafka_server,
        "g-handler",
        topics=kafka_topic,
        handler="tests.test_kafka:collect",
        deserializer="str",
    )
    with start({"p": producer_spec(kafka_server), "c": spec}) as system:
        p, c = system.get("p"), system.get("c")
        for i in range(30):
            p.send(kafka_topic, f"v{i}", headers={"i": str(i)})
        values = HANDLED[kafka_topic].wait(lambda v: len(v) >= 30)
        assert values == [f"v{i}" for i in range(30)]
        first = HANDLED[kafka_topic].records[0]
        assert first.offset == 0 and first.headers == (("i", b"0"),) and first.timestamp > 0
        wait_until(lambda: c.committed(kafka_topic, 0).result(10) == 30, 20, "the commit")
        assert c.stats().result(5)["handled"] == 30
        assert c.assignment().result(5) == [(kafka_topic, 0)]


def test_every_record_is_handled_at_least_once_across_consumer_restarts(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    seen = Collector()
    spec = consumer_spec(kafka_server, "g-alo", topics=[kafka_topic], max_records=5)
    with start({"p": producer_spec(kafka_server), "c": spec}) as system:
        p, c = system.get("p"), system.get("c")
        c.consume(seen).result(10)
        for i in range(60):
            p.send(kafka_topic, f"r{i}")
        seen.wait(lambda v: len(v) >= 10)
        system.restart_child("c")  # stop between two polls, start a new consumer
        seen.wait(lambda v: len(v) >= 25)
        # and a crash: close the consumer under the actor's feet (a closed client)
        c.transaction(lambda consumer: consumer.close(autocommit=False)).result(10)
        wait_until(lambda: c.restarts >= 2 and c.state == "running", 30, "the crash restart")
        expected = {f"r{i}".encode() for i in range(60)}
        seen.wait(lambda v: expected <= set(v), what="every record")
        wait_until(lambda: c.committed(kafka_topic, 0).result(10) == 60, 20, "the commit")


def test_retry_seeks_back_and_keeps_partition_order(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    seen = Collector()
    failures = {"bad": 2}

    def flaky(record: Record) -> None:
        if record.value == b"bad" and failures["bad"] > 0:
            failures["bad"] -= 1
            raise RuntimeError("not yet")
        seen(record)

    spec = consumer_spec(kafka_server, "g-retry", topics=[kafka_topic], retry_backoff=0.05)
    with start({"p": producer_spec(kafka_server), "c": spec}) as system:
        p, c = system.get("p"), system.get("c")
        c.consume(flaky).result(10)
        for v in (b"a", b"b", b"bad", b"c", b"d"):
            p.send(kafka_topic, v)
        assert seen.wait(lambda v: len(v) >= 5) == [b"a", b"b", b"bad", b"c", b"d"]
        stats = c.stats().result(5)
        assert stats["retries"] == 2 and stats["handler_errors"] == 2
        wait_until(lambda: c.committed(kafka_topic, 0).result(10) == 5, 20, "the commit")


def test_retry_gives_up_after_max_retries_and_skips(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    seen = Collector()
    attempts: list[bytes] = []

    def picky(record: Record) -> None:
        if record.value == b"poison":
            attempts.append(record.value)
            raise ValueError("cannot handle this one")
        seen(record)

    spec = consumer_spec(
        kafka_server, "g-max", topics=[kafka_topic], retry_backoff=0.01, max_retries=2
    )
    with start({"p": producer_spec(kafka_server), "c": spec}) as system:
        p, c = system.get("p"), system.get("c")
        c.consume(picky).result(10)
        for v in (b"a", b"poison", b"b"):
            p.send(kafka_topic, v)
        assert seen.wait(lambda v: len(v) >= 2) == [b"a", b"b"]
        assert len(attempts) == 3  # the first try and 2 retries
        assert c.stats().result(5)["skipped"] == 1
        wait_until(lambda: c.committed(kafka_topic, 0).result(10) == 3, 20, "the commit")


def test_skip_moves_past_a_failing_record(kafka_server: KafkaServer, kafka_topic: str) -> None:
    seen = Collector()

    def picky(record: Record) -> None:
        if record.value == b"poison":
            raise ValueError("cannot handle this one")
        seen(record)

    spec = consumer_spec(kafka_server, "g-skip", topics=[kafka_topic], on_handler_error="skip")
    with start({"p": producer_spec(kafka_server), "c": spec}) as system:
        p, c = system.get("p"), system.get("c")
        c.consume(picky).result(10)
        for v in (b"a", b"poison", b"b"):
            p.send(kafka_topic, v)
        assert seen.wait(lambda v: len(v) >= 2) == [b"a", b"b"]
        assert c.stats().result(5)["skipped"] == 1
        wait_until(lambda: c.committed(kafka_topic, 0).result(10) == 3, 20, "the commit")
        assert c.restarts == 0


def test_dead_letter_sends_the_failing_record_to_the_dead_letter_topic(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    dead = kafka_server.create_topic()
    seen = Collector()

    def picky(record: Record) -> None:
        if record.value == b"poison":
            raise ValueError("cannot handle this one")
        seen(record)

    spec = consumer_spec(
        kafka_server,
        "g-dlq",
        topics=[kafka_topic],
        on_handler_error="dead_letter",
        dead_letter_topic=dead,
    )
    with start({"p": producer_spec(kafka_server), "c": spec}) as system:
        p, c = system.get("p"), system.get("c")
        c.consume(picky).result(10)
        for v in (b"a", b"poison", b"b"):
            p.send(kafka_topic, v, key="k")
        assert seen.wait(lambda v: len(v) >= 2) == [b"a", b"b"]
        assert c.stats().result(5)["dead_lettered"] == 1
        wait_until(lambda: c.committed(kafka_topic, 0).result(10) == 3, 20, "the commit")
    (letter,) = read_topic(kafka_server, dead, 1)
    assert letter.value == b"poison" and letter.key == b"k"
    headers = dict(letter.headers)
    assert headers["dlq.original.topic"] == kafka_topic.encode()
    assert headers["dlq.original.offset"] == b"1"
    assert headers["dlq.error"] == b"ValueError: cannot handle this one"


def test_a_consumer_restarts_when_its_broker_is_gone_for_fault_after(
    make_kafka_server: Any,
) -> None:
    server: KafkaServer = make_kafka_server()
    topic = server.create_topic()
    seen = Collector()
    rec = Recorder()
    resources = {
        "p": producer_spec(server, fault_after=1.0, ack_timeout=3.0, bootstrap_timeout_ms=1000),
        "c": consumer_spec(
            server, "g-fault", topics=[topic], fault_after=1.0, bootstrap_timeout_ms=1000
        ),
    }
    with start(resources) as system:
        system.subscribe(rec)
        p, c = system.get("p"), system.get("c")
        c.consume(seen).result(10)
        p.send(topic, b"before").result(10)
        seen.wait(lambda v: b"before" in v)
        server.stop()
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted) and e.name == "c", timeout=30)[0]
        assert "no connection to any broker" in fault.error
        server.start()
        wait_until(lambda: c.state == "running" and c.restarts >= 1, 60, "the consumer back")
        # the producer lived through the restart: its first send meets the broker that
        # forgot its producer id, a fault; the next one goes through a new producer
        wait_until(sends(p, topic, b"after"), 60, "a send after the broker came back")
        seen.wait(lambda v: b"after" in v, timeout=60, what="a record after the restart")
        assert c.subscription().result(10) == [topic]  # replayed on the new consumer


# -- consumer: manual mode --------------------------------------------------------------


def test_manual_fetch_and_commit_and_uncommitted_records_come_again(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    with start(
        {
            "p": producer_spec(kafka_server),
            "c": consumer_spec(kafka_server, "g-manual", topics=[kafka_topic]),
        }
    ) as system:
        p, c = system.get("p"), system.get("c")
        for i in range(10):
            p.send(kafka_topic, f"m{i}")
        records = fetch_all(c, 10)
        assert [r.value for r in records] == [f"m{i}".encode() for i in range(10)]
        assert c.commit().result(10) == {(kafka_topic, 0): 10}
        assert c.committed(kafka_topic, 0).result(10) == 10
        for i in range(10, 15):
            p.send(kafka_topic, f"m{i}").result(10)
        assert [r.offset for r in fetch_all(c, 4)] == [10, 11, 12, 13]
        assert c.commit({(kafka_topic, 0): 12}).result(10) == {(kafka_topic, 0): 12}
        system.restart_child("c")  # fetched-but-uncommitted records must come again
        assert [r.offset for r in fetch_all(c, 3)] == [12, 13, 14]
        assert c.commit().result(10) == {(kafka_topic, 0): 15}
        assert c.committed(kafka_topic, 0).result(10) == 15
        c.consume(lambda record: None).result(10)
        with pytest.raises(RuntimeError, match="manual mode"):
            c.fetch().result(10)


def test_a_full_fetch_buffer_pauses_fetching_and_loses_nothing(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    spec = consumer_spec(kafka_server, "g-buffer", topics=[kafka_topic], max_records=3)
    with start({"p": producer_spec(kafka_server), "c": spec}) as system:
        p, c = system.get("p"), system.get("c")
        for i in range(12):
            p.send(kafka_topic, f"b{i}")
        first = fetch_all(c, 1)
        tp = TopicPartition(kafka_topic, 0)

        def position() -> int:
            return int(c.transaction(lambda consumer: consumer.position(tp)).result(10))

        # the poll hook buffers max_records ahead of fetch(), then stops fetching
        wait_until(lambda: position() >= 4, 20, "the buffer to fill")
        assert position() == 4
        rest = fetch_all(c, 11)
        assert [r.value for r in first + rest] == [f"b{i}".encode() for i in range(12)]
        assert c.commit().result(10) == {(kafka_topic, 0): 12}


def test_fetch_decodes_json_and_stops_at_a_record_it_cannot_decode(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    spec = consumer_spec(kafka_server, "g-json", topics=[kafka_topic], deserializer="json")
    with start({"p": producer_spec(kafka_server), "c": spec}) as system:
        p, c = system.get("p"), system.get("c")
        for v in (b'{"a": 1}', b"not json", b'{"b": 2}'):
            p.send(kafka_topic, v).result(10)
        first = fetch_all(c, 1)
        assert [r.value for r in first] == [{"a": 1}]
        with pytest.raises(RecordDecodeError) as info:  # waits for the next record first
            c.fetch(10, 5.0).result(10)
        assert (info.value.topic, info.value.partition, info.value.offset) == (kafka_topic, 0, 1)
        c.seek(kafka_topic, 0, 2).result(10)
        assert [r.value for r in fetch_all(c, 1)] == [{"b": 2}]
        assert c.restarts == 0


def test_runtime_subscription_is_replayed_after_a_restart_via_the_registry(
    kafka_server: KafkaServer, kafka_topic: str
) -> None:
    registry = sessions.SessionRegistry(
        kafka_bootstrap_servers=kafka_server.bootstrap,
        kafka_group_id="g-registry",
        options={"kafka_consumer": {**FAST_GROUP_CONSUMER, "call_timeout": 10.0}},
    )
    with registry:
        assert registry.kafka.kind == "kafka_producer"
        consumer = registry.kafka_consumer
        assert consumer.subscription().result(10) == []
        with pytest.raises(RuntimeError, match="not subscribed"):
            consumer.fetch().result(10)
        assert consumer.subscribe([kafka_topic]).result(10) == [kafka_topic]
        registry.kafka.send(kafka_topic, b"one").result(10)
        assert [r.value for r in fetch_all(consumer, 1)] == [b"one"]
        consumer.commit().result(10)
        registry.system.restart_child("kafka_consumer")
        assert consumer.subscription().result(10) == [kafka_topic]
        registry.kafka.send(kafka_topic, b"two").result(10)
        assert [r.value for r in fetch_all(consumer, 1)] == [b"two"]


# -- seed manager and config ------------------------------------------------------------


def test_kafka_session_manager_sync_and_async(kafka_server: KafkaServer, kafka_topic: str) -> None:
    with KafkaSessionManager(bootstrap_servers=kafka_server.bootstrap) as kafka:
        assert kafka.kind == "kafka_producer"
        assert kafka.send(kafka_topic, b"sync").result(10).offset == 0

    async def main() -> list[Any]:
        async with KafkaSessionManager(bootstrap_servers=kafka_server.bootstrap) as producer:
            await producer.send(kafka_topic, b"async")
        manager = KafkaSessionManager(
            bootstrap_servers=kafka_server.bootstrap,
            group_id="g-seed",
            topics=[kafka_topic],
            call_timeout=10.0,
            **FAST_GROUP_CONSUMER,
        )
        async with manager as consumer:
            assert consumer.kind == "kafka_consumer"
            values: list[Any] = []
            deadline = time.monotonic() + 30
            while len(values) < 2 and time.monotonic() < deadline:
                values += [r.value for r in await consumer.fetch(10, 1.0)]
            await consumer.commit()
            return values

    assert asyncio.run(main()) == [b"sync", b"async"]


@pytest.mark.parametrize(
    ("kind", "options", "path", "message"),
    [
        ("kafka_producer", {"lingr_ms": 5}, "resources.k.lingr_ms", "unknown key"),
        ("kafka_producer", {"value_serializer": "x"}, "resources.k.value_serializer", "serializer"),
        ("kafka_producer", {"serializer": "pickle"}, "resources.k.serializer", "raw, json"),
        (
            "kafka_consumer",
            {"group_id": "g", "on_handler_error": "dead_letter"},
            "resources.k.dead_letter_topic",
            "needs it",
        ),
        (
            "kafka_consumer",
            {"group_id": "g", "handler": "nowhere.at_all:fn"},
            "resources.k.handler",
            "cannot import",
        ),
        (
            "kafka_consumer",
            {"group_id": "g", "enable_auto_commit": True},
            "resources.k.enable_auto_commit",
            "at-least-once",
        ),
        ("kafka_consumer", {}, "resources.k.group_id", "required"),
    ],
)
def test_config_errors_name_the_key(
    kind: str, options: dict[str, Any], path: str, message: str
) -> None:
    spec = {
        "kind": kind,
        "bootstrap_servers": "127.0.0.1:1",
        "sasl_plain_password": "s3cr3t",
        **options,
    }
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start({"resources": {"k": spec}})
    assert info.value.path == path
    assert message in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_a_consumer_pool_is_lowered_to_one(
    caplog: pytest.LogCaptureFixture, kafka_server: KafkaServer
) -> None:
    spec = consumer_spec(kafka_server, "g-pool", pool_size=3)
    with start({"c": spec}) as system:
        assert system.status()["children"][0]["type"] == "resource"
    assert "pool_size = 3 lowered to 1" in caplog.text


def test_an_io_thread_started_after_the_abort_still_ends() -> None:
    """kafka-python's ``run_forever()`` clears ``_stop`` when it begins: an abort that set
    it before the consumer's new IO thread ran was lost, and the thread ran for ever
    (a kafka-io thread left behind, seen once in CI). Closing an aborted client stops it
    whenever it started."""
    from kafka.net.selector import NetworkSelector  # noqa: PLC0415

    from sessions.actors.kafka._common import close_client  # noqa: PLC0415

    net = NetworkSelector(client_id="abort-race")
    net._stop = True  # what abort() does, before the IO thread runs...
    net.start()  # ...which then clears it and loops
    wait_until(lambda: net._io_thread is not None and not net._stop, what="the loop running")
    closed = threading.Event()

    class Client:
        _net = net

        def close(self) -> None:
            closed.set()
            net.close()

    close_client(Client(), aborted=True)
    assert closed.is_set()
    assert not any(t.name == "kafka-io-abort-race" for t in threading.enumerate())
