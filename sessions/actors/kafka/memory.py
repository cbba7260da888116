"""Kafka in memory: ``bootstrap_servers = "memory://NAME"`` for tests.

A :class:`MemoryBroker` per name, in this process (shared by every producer and
consumer naming it, forgotten after each test by the test harness), stands in for the
cluster; :class:`MemoryProducer` and :class:`MemoryConsumer` stand in for kafka-python's
``KafkaProducer`` and ``KafkaConsumer`` with the part of their surface the kinds use,
so the ``kafka_producer`` and ``kafka_consumer`` actors run unchanged on them: the same
calls, the ``Deferred`` sends, the poll hook, handler mode with its commits and retries,
dead letters, manual ``fetch()``/``commit()``, and the same fault rules (the driver's
errors are kafka-python's own classes).

What it keeps of Kafka's delivery semantics:

* topics with partitions (created on first use with the broker's ``partitions``, or
  beforehand with :meth:`MemoryBroker.create_topic`); a keyed record goes to
  ``murmur2(key) % partitions`` as kafka-python's default partitioner sends it, a
  record without a key round-robin; offsets per partition from 0, in send order;
* a send's future resolves once the broker *acknowledged* it (appended it to the log);
  while the broker is down (:meth:`MemoryBroker.down`) records wait unacknowledged, as
  they do in the real driver's retry loop, so ``ack_timeout`` makes them a fault, and
  they are appended when it comes back if their producer still lives;
* consumer groups: a topic's partitions are shared out among the group's members
  subscribed to it (round-robin, rebalanced when one joins or leaves), a partition's
  position starts at the group's committed offset or at ``auto_offset_reset``; a
  commit for a partition the member no longer owns is ``CommitFailedError``;
* a broker that is down raises nothing to a polling consumer (the kinds' link watch
  makes it a fault after ``fault_after``), fails connects (a failed start) and commits
  (``KafkaTimeoutError`` with no link: a fault).

What it does not: replication, retention, transactions, compression, record batches,
quotas, the wire protocol, or timing (every ack is immediate while the broker is up).
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import errors as kerr
from kafka.partitioner.default import murmur2
from kafka.structs import ConsumerGroupMetadata, MemberState, TopicPartition

from sessions._runtime import substitutes

__all__ = [
    "SCHEME",
    "MemoryBroker",
    "MemoryClient",
    "MemoryConsumer",
    "MemoryFuture",
    "MemoryProducer",
    "StoredRecord",
    "broker",
    "is_memory_url",
    "parse_memory_url",
]

SCHEME = "memory://"
_FAMILY = "kafka-memory"
_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_MAX_REQUEST_SIZE = 1_048_576
"""kafka-python's default ``max_request_size``: a larger record is refused at send."""


def is_memory_url(servers: object) -> bool:
    """Whether ``bootstrap_servers`` selects the in-memory broker."""
    if isinstance(servers, (list, tuple)) and len(servers) == 1:
        servers = servers[0]
    return isinstance(servers, str) and servers.startswith(SCHEME)


def parse_memory_url(servers: object) -> tuple[str, int]:
    """``(broker name, partitions of a new topic)`` of ``memory://NAME[?partitions=N]``
    (ValueError saying what is wrong otherwise)."""
    if isinstance(servers, (list, tuple)):
        if len(servers) != 1:
            raise ValueError(
                "a memory:// broker cannot be listed with other bootstrap servers: "
                "give it alone, bootstrap_servers = \"memory://NAME\""
            )
        servers = servers[0]
    if not isinstance(servers, str) or not servers.startswith(SCHEME):
        raise ValueError(f"not a memory:// url: {servers!r}")
    parts = urllib.parse.urlsplit(servers)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"partitions"})
    if parts.path not in ("", "/") or parts.fragment or unknown:
        raise ValueError(
            f"{servers!r}: an in-memory broker is memory://NAME[?partitions=N]"
            + (f" (unknown option {', '.join(unknown)})" if unknown else "")
        )
    partitions = 1
    if "partitions" in query:
        text = query["partitions"][-1]
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"{servers!r}: partitions must be a whole number >= 1, got {text!r}")
        partitions = int(text)
    return parts.netloc, partitions


def broker(name: str, partitions: int | None = None) -> MemoryBroker:
    """The in-memory broker ``name``, made on first use with ``partitions`` (default 1)
    as the partition count of the topics it creates by itself (``num.partitions``).

    A broker setting, so every url naming the broker must agree: ``partitions`` given
    and different from the broker's is ``KafkaConfigurationError`` (a failed start),
    whichever resource connected first."""
    made = substitutes.peer(_FAMILY, name, lambda: MemoryBroker(name, partitions or 1))
    if partitions is not None and partitions != made.default_partitions:
        raise kerr.KafkaConfigurationError(
            f"{SCHEME}{name}?partitions={partitions}: that broker has partitions="
            f"{made.default_partitions} (every url naming one broker must give the same "
            "partitions; no ?partitions means 1)"
        )
    return made


# -- the broker ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record in a partition's log: what a consumer's poll returns (the attributes of
    kafka-python's ``ConsumerRecord`` that the kinds read)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class MemoryBroker:
    """Topics, partition logs, consumer groups and their committed offsets, in memory.

    Thread-safe (one lock, a condition for consumers waiting for records). A test can
    read it (:meth:`records`, :meth:`committed`, :meth:`topics`) or take it down and up
    again (:meth:`down`, :meth:`up`) to see what the application does when the cluster
    goes away.
    """

    def __init__(self, name: str, partitions: int = 1) -> None:
        self.name = name
        self.default_partitions = partitions
        self._cond = threading.Condition()
        self._logs: dict[str, list[list[StoredRecord]]] = {}
        self._round_robin: dict[str, int] = {}
        self._offsets: dict[tuple[str, TopicPartition], int] = {}
        self._members: dict[str, list[MemoryConsumer]] = {}
        self._waiting: list[tuple[MemoryProducer, str, int | None, StoredRecord, MemoryFuture]] = []
        self._up = True

    # -- for tests ----------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self._up

    def down(self) -> None:
        """Stop serving, as a cluster going away: connects fail, sends wait for an ack
        that does not come, consumers poll nothing, commits time out."""
        with self._cond:
            self._up = False

    def up(self) -> None:
        """Serve again: the records waiting for an ack of producers still open are
        appended (in send order) and acknowledged."""
        with self._cond:
            self._up = True
            waiting, self._waiting = self._waiting, []
            done = [
                (future, self._append(topic, partition, record))
                for producer, topic, partition, record, future in waiting
                if not producer.closed
            ]
            self._cond.notify_all()
        for future, stored in done:
            future.success(stored)

    def create_topic(self, topic: str, partitions: int) -> None:
        """Create ``topic`` with ``partitions`` partitions (ValueError if it exists with
        another count)."""
        _check_topic(topic)
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        with self._cond:
            existing = self._logs.get(topic)
            if existing is not None and len(existing) != partitions:
                raise ValueError(f"topic {topic!r} exists with {len(existing)} partitions")
            if existing is None:
                self._logs[topic] = [[] for _ in range(partitions)]
                self._rebalance_all()

    def topics(self) -> list[str]:
        with self._cond:
            return sorted(self._logs)

    def records(self, topic: str, partition: int | None = None) -> list[StoredRecord]:
        """The records of ``topic`` (one partition, or all, partition by partition)."""
        with self._cond:
            logs = self._logs.get(topic, [])
            chosen = logs if partition is None else logs[partition : partition + 1]
            return [r for log in chosen for r in log]

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        with self._cond:
            return self._offsets.get((group, TopicPartition(topic, partition)))

    # -- for the clients (under the lock unless said) -----------------------------------

    def _partitions(self, topic: str) -> list[list[StoredRecord]]:
        logs = self._logs.get(topic)
        if logs is None:
            _check_topic(topic)
            logs = self._logs[topic] = [[] for _ in range(self.default_partitions)]
            self._rebalance_all()
        return logs

    def _append(self, topic: str, partition: int | None, record: StoredRecord) -> StoredRecord:
        logs = self._partitions(topic)
        if partition is None:
            if record.key is not None:
                partition = (murmur2(record.key) & 0x7FFFFFFF) % len(logs)
            else:
                partition = self._round_robin.get(topic, 0) % len(logs)
                self._round_robin[topic] = partition + 1
        log = logs[partition]
        stored = StoredRecord(
            topic, partition, len(log), record.timestamp, record.key, record.value, record.headers
        )
        log.append(stored)
        self._cond.notify_all()
        return stored

    def _produce(
        self,
        producer: MemoryProducer,
        topic: str,
        partition: int | None,
        record: StoredRecord,
        future: MemoryFuture,
    ) -> None:
        with self._cond:
            logs = self._partitions(topic)
            if partition is not None and not 0 <= partition < len(logs):
                raise AssertionError(
                    f"partition {partition} of {topic!r} does not exist "
                    f"(it has {len(logs)})"
                )
            if not self._up:
                self._waiting.append((producer, topic, partition, record, future))
                return
            stored = self._append(topic, partition, record)
        future.success(stored)

    def _drop_waiting(self, producer: MemoryProducer) -> list[MemoryFuture]:
        with self._cond:
            mine = [w for w in self._waiting if w[0] is producer]
            self._waiting = [w for w in self._waiting if w[0] is not producer]
        return [w[4] for w in mine]

    def _join(self, member: MemoryConsumer) -> None:
        with self._cond:
            group = self._members.setdefault(member.group_id, [])
            if member not in group:
                group.append(member)
            for topic in member.topics:
                self._partitions(topic)
            self._rebalance(member.group_id)

    def _leave(self, member: MemoryConsumer) -> None:
        with self._cond:
            group = self._members.get(member.group_id, [])
            if member in group:
                group.remove(member)
                self._rebalance(member.group_id)
            self._cond.notify_all()

    def _rebalance_all(self) -> None:
        for group in list(self._members):
            self._rebalance(group)

    def _rebalance(self, group: str) -> None:
        """Share each subscribed topic's partitions among the group's members subscribed
        to it, round-robin in join order."""
        members = self._members.get(group, [])
        assignments: dict[int, set[TopicPartition]] = {id(m): set() for m in members}
        for topic in sorted({t for m in members for t in m.topics}):
            takers = [m for m in members if topic in m.topics]
            for p in range(len(self._logs.get(topic, ()))):
                assignments[id(takers[p % len(takers)])].add(TopicPartition(topic, p))
        for member in members:
            member._assign(assignments[id(member)])

    def _commit(self, member: MemoryConsumer, offsets: Mapping[TopicPartition, int]) -> None:
        with self._cond:
            lost = sorted(f"{tp.topic}[{tp.partition}]" for tp in offsets
                          if tp not in member._assigned)
            if lost:
                raise kerr.CommitFailedError(
                    f"partitions {', '.join(lost)} are not assigned to this member any more "
                    "(the group rebalanced): their records will be delivered again"
                )
            for tp, offset in offsets.items():
                self._offsets[(member.group_id, tp)] = offset

    def _fetch(
        self, member: MemoryConsumer, max_records: int
    ) -> dict[TopicPartition, list[StoredRecord]]:
        out: dict[TopicPartition, list[StoredRecord]] = {}
        room = max_records
        for tp in sorted(member._assigned):
            if room <= 0:
                break
            if tp in member._paused:
                continue
            log = self._logs[tp.topic][tp.partition]
            position = member._position(tp, log)
            taken = log[position : position + room]
            if taken:
                out[tp] = taken
                member._positions[tp] = position + len(taken)
                room -= len(taken)
        return out


def _check_topic(topic: str) -> None:
    if not isinstance(topic, str) or not _LEGAL_TOPIC.fullmatch(topic) or topic in (".", ".."):
        raise kerr.InvalidTopicError(
            f"{topic!r} is not a legal topic name (letters, digits, '.', '_', '-'; "
            "at most 249)"
        )


# -- the clients ---------------------------------------------------------------------


class MemoryFuture:
    """A send's future, with the part of kafka-python's ``FutureRecordMetadata`` the
    kinds use: callbacks and errbacks (given their extra arguments first), ``is_done``,
    ``get(timeout)``, ``exception``."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.value: StoredRecord | None = None
        self.exception: BaseException | None = None
        self._callbacks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._errbacks: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    @property
    def is_done(self) -> bool:
        return self._done.is_set()

    def succeeded(self) -> bool:
        return self.is_done and self.exception is None

    def success(self, value: StoredRecord) -> None:
        self._resolve(value, None)

    def failure(self, error: BaseException) -> None:
        self._resolve(None, error)

    def _resolve(self, value: StoredRecord | None, error: BaseException | None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.value, self.exception = value, error
            self._done.set()
            calls = self._callbacks if error is None else self._errbacks
            self._callbacks, self._errbacks = [], []
        for fn, args in calls:
            fn(*args, value if error is None else error)

    def add_callback(self, fn: Callable[..., Any], *args: Any) -> MemoryFuture:
        self._add(self._callbacks, fn, args, success=True)
        return self

    def add_errback(self, fn: Callable[..., Any], *args: Any) -> MemoryFuture:
        self._add(self._errbacks, fn, args, success=False)
        return self

    def _add(
        self,
        table: list[tuple[Callable[..., Any], tuple[Any, ...]]],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        success: bool,
    ) -> None:
        with self._lock:
            if not self._done.is_set():
                table.append((fn, args))
                return
        if (self.exception is None) == success:
            fn(*args, self.value if success else self.exception)

    def get(self, timeout: float | None = None) -> StoredRecord | None:
        if not self._done.wait(timeout):
            raise kerr.KafkaTimeoutError(f"no acknowledgement within {timeout}s")
        if self.exception is not None:
            raise self.exception
        return self.value


class MemoryClient:
    """What a memory producer and consumer share: the broker, the link and the abort.

    The kinds treat it as both the driver object and its network client (``link_up``
    instead of a connection table, ``abort`` instead of sockets to shut down)."""

    def __init__(self, servers: object) -> None:
        name, partitions = parse_memory_url(servers)
        self.broker = broker(name, partitions)
        if not self.broker.is_up:
            # kafka-python's bootstrap gives up the same way (a failed start)
            raise kerr.KafkaConnectionError(f"no broker available at {SCHEME}{name} (it is down)")
        self.closed = False
        self._aborted: BaseException | None = None

    @property
    def _closed(self) -> bool:  # what the kinds read on a kafka-python client
        return self.closed

    @_closed.setter
    def _closed(self, value: bool) -> None:
        self.closed = value

    def link_up(self) -> bool:
        """Whether the broker serves (the kinds' link watch asks this)."""
        return self.broker.is_up and not self.closed

    def abort(self, error: BaseException) -> None:
        """From another thread, never blocking: every later call raises ``error``, and
        whatever waits on this client returns now."""
        self._aborted = error
        self.closed = True
        with self.broker._cond:
            self.broker._cond.notify_all()

    def _check_open(self) -> None:
        if self._aborted is not None:
            raise self._aborted
        if self.closed:
            raise kerr.IllegalStateError("the client is closed")


class MemoryProducer(MemoryClient):
    """``KafkaProducer`` on a :class:`MemoryBroker`: ``send``, ``flush``,
    ``partitions_for``, ``close``. Settings other than ``bootstrap_servers`` and
    ``max_request_size`` are accepted and ignored."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(settings.get("bootstrap_servers"))
        self.max_request_size = int(settings.get("max_request_size", _MAX_REQUEST_SIZE))
        self._sent: list[MemoryFuture] = []

    def send(
        self,
        topic: str,
        value: bytes | None = None,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> MemoryFuture:
        self._check_open()
        _check_topic(topic)
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers or ())
        if size > self.max_request_size:
            raise kerr.MessageSizeTooLargeError(
                f"the record is {size} bytes, more than max_request_size={self.max_request_size}"
            )
        if partition is not None and (not isinstance(partition, int) or partition < 0):
            raise ValueError(f"partition must be an int >= 0, got {partition!r}")
        stamp = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        record = StoredRecord(topic, -1, -1, stamp, key, value, tuple(headers or ()))
        future = MemoryFuture()
        # an unknown partition: AssertionError, as kafka-python's own check raises
        self.broker._produce(self, topic, partition, record, future)
        self._sent = [f for f in self._sent if not f.is_done]
        self._sent.append(future)
        return future

    def flush(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in list(self._sent):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not future._done.wait(left):
                if self._aborted is not None:
                    raise self._aborted
                raise kerr.KafkaTimeoutError(f"records not acknowledged within {timeout}s")
        self._sent.clear()

    def partitions_for(self, topic: str) -> set[int]:
        self._check_open()
        with self.broker._cond:
            return set(range(len(self.broker._partitions(topic))))

    def close(self, timeout: float | None = None) -> None:
        """Close; records still waiting for an ack fail (their producer is gone)."""
        if self.closed and self._aborted is None:
            return
        self.closed = True
        error = self._aborted or kerr.KafkaConnectionError("the producer was closed")
        for future in self.broker._drop_waiting(self):
            future.failure(error)

    def abort(self, error: BaseException) -> None:
        super().abort(error)
        for future in self.broker._drop_waiting(self):
            future.failure(error)


class MemoryConsumer(MemoryClient):
    """``KafkaConsumer`` in a group of a :class:`MemoryBroker`: ``subscribe``,
    ``unsubscribe``, ``subscription``, ``assignment``, ``poll``, ``pause``, ``resume``,
    ``seek``, ``commit``, ``committed``, ``group_metadata``, ``close``. Settings other
    than ``bootstrap_servers``, ``group_id`` and ``auto_offset_reset`` are accepted and
    ignored. Never auto-commits (the kinds commit themselves)."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(settings.get("bootstrap_servers"))
        group = settings.get("group_id")
        if not isinstance(group, str) or not group:
            raise kerr.KafkaConfigurationError("the in-memory broker needs a group_id")
        reset = settings.get("auto_offset_reset", "latest")
        if reset not in ("earliest", "latest"):
            raise kerr.KafkaConfigurationError(
                f"auto_offset_reset must be 'earliest' or 'latest', got {reset!r}"
            )
        self.group_id = group
        self.auto_offset_reset = reset
        self.topics: frozenset[str] = frozenset()
        self._assigned: set[TopicPartition] = set()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()

    # called by the broker, under its lock
    def _assign(self, partitions: set[TopicPartition]) -> None:
        for tp in self._assigned - partitions:
            self._positions.pop(tp, None)
            self._paused.discard(tp)
        self._assigned = set(partitions)

    def _position(self, tp: TopicPartition, log: Sequence[StoredRecord]) -> int:
        if tp not in self._positions:
            committed = self.broker._offsets.get((self.group_id, tp))
            if committed is not None:
                self._positions[tp] = committed
            else:
                self._positions[tp] = 0 if self.auto_offset_reset == "earliest" else len(log)
        return self._positions[tp]

    def subscribe(self, topics: Iterable[str] = ()) -> None:
        self._check_open()
        names = frozenset(topics)
        for topic in names:
            _check_topic(topic)
        self.topics = names
        if names:
            self.broker._join(self)
        else:
            self.broker._leave(self)

    def unsubscribe(self) -> None:
        self._check_open()
        self.topics = frozenset()
        self.broker._leave(self)
        with self.broker._cond:
            self._assign(set())

    def subscription(self) -> set[str] | None:
        return set(self.topics) if self.topics else None

    def assignment(self) -> set[TopicPartition]:
        with self.broker._cond:
            return set(self._assigned)

    def group_metadata(self) -> ConsumerGroupMetadata:
        state = MemberState.STABLE if self.topics else MemberState.UNJOINED
        return ConsumerGroupMetadata(self.group_id, 1, f"member-{id(self):x}", None, state)

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[StoredRecord]]:
        """Records of the assigned, unpaused partitions from their positions, waiting
        up to ``timeout_ms`` for the first; nothing while the broker is down."""
        self._check_open()
        deadline = time.monotonic() + max(timeout_ms, 0) / 1000
        limit = max_records if max_records is not None else 500
        with self.broker._cond:
            while True:
                if self.broker.is_up:
                    batch = self.broker._fetch(self, limit)
                    if batch:
                        return batch
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    self._check_open()
                    return {}
                self.broker._cond.wait(left)

    def pause(self, *partitions: TopicPartition) -> None:
        with self.broker._cond:
            self._paused.update(tp for tp in partitions if tp in self._assigned)

    def resume(self, *partitions: TopicPartition) -> None:
        with self.broker._cond:
            self._paused.difference_update(partitions)
            self.broker._cond.notify_all()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._check_open()
        with self.broker._cond:
            if partition not in self._assigned:
                raise kerr.IllegalStateError(f"no current assignment for partition {partition}")
            if offset < 0:
                raise ValueError(f"offset must be >= 0, got {offset}")
            self._positions[partition] = offset

    def commit(
        self, offsets: Mapping[TopicPartition, Any] | None = None, timeout_ms: int | None = None
    ) -> None:
        """Commit ``offsets`` ({partition: OffsetAndMetadata or int}) for the group."""
        self._check_open()
        if not self.broker.is_up:
            raise kerr.KafkaTimeoutError(
                f"commit not acknowledged within {timeout_ms} ms (the broker is down)"
            )
        chosen = (
            dict(self._positions)
            if offsets is None
            else {tp: int(getattr(o, "offset", o)) for tp, o in offsets.items()}
        )
        self.broker._commit(self, chosen)

    def committed(self, partition: TopicPartition, timeout_ms: int | None = None) -> int | None:
        self._check_open()
        if not self.broker.is_up:
            raise kerr.KafkaTimeoutError(
                f"no committed offset within {timeout_ms} ms (the broker is down)"
            )
        return self.broker.committed(self.group_id, partition.topic, partition.partition)

    def close(self, autocommit: bool = False, timeout_ms: int | None = None) -> None:
        """Leave the group (its partitions go to the other members); no commit."""
        if self.closed and self._aborted is None:
            return
        self.closed = True
        self.broker._leave(self)

    def abort(self, error: BaseException) -> None:
        super().abort(error)
        self.broker._leave(self)


def open_client(kind: str, settings: Mapping[str, Any]) -> MemoryClient:
    """A memory ``"producer"`` or ``"consumer"`` from kafka-python settings."""
    if kind == "consumer":
        return MemoryConsumer(**settings)
    return MemoryProducer(**settings)
