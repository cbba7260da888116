"""The ``kafka_consumer`` kind: one ``KafkaConsumer`` in a group, polled from the runtime's
``poll()`` hook; a handler per record committed after it returns (at-least-once, with
retry, skip or dead-letter on a handler error), or manual ``fetch()``/``commit()``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.net.compat import KafkaNetClient
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition
from pydantic import BaseModel, Field, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from sessions._redact import describe
from sessions._runtime.contract import ResourceActor
from sessions.actors.kafka._common import (
    ABORT_JOIN,
    PRODUCER_STATE_ERRORS,
    AckTimeout,
    ClientTrap,
    Conn,
    KafkaAborted,
    KafkaOptions,
    LinkWatch,
    abort_client,
    abort_producer,
    aborted_error,
    close_client,
    close_producer,
    is_link_fault,
    log,
    open_driver,
    unbounded_driver_waits,
)

_LINK_CHECK = 0.2
"""Seconds between broker-connection checks while acknowledgements are awaited."""


# -- records --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record, fully materialized (safe to keep and pass between threads)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    """Milliseconds since the epoch, -1 if unknown."""
    key: bytes | None
    value: Any
    """``bytes`` (deserializer ``raw``), ``str`` (``str``), any JSON value (``json``);
    ``None`` for a tombstone."""
    headers: tuple[tuple[str, bytes], ...]


class RecordDecodeError(ValueError):
    """A record's value could not be decoded with the consumer's ``deserializer``.

    ``fetch()`` returns the records before it; the next ``fetch()`` raises again until
    the caller moves past it with ``seek(topic, partition, offset + 1)``.
    """

    def __init__(self, message: str, topic: str, partition: int, offset: int) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.offset = offset

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.topic, self.partition, self.offset))


# -- helpers --------------------------------------------------------------------------


def _resolve_handler(spec: str) -> Callable[[Record], Any]:
    """``"package.module:function"`` -> the function."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected 'package.module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r}: {err}") from err
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _await_acks(
    futures: Sequence[Any], timeout: float, fault_after: float, client: Any
) -> BaseException | None:
    """Wait until every kafka future is done; at most ``timeout`` seconds, and give up
    early once no broker connection has been up for ``fault_after`` seconds.

    Returns None when all are done, else the error for the ones still pending. Waiting
    on each future in turn (``get`` in slices, so the link is checked in between) costs
    no callbacks on the driver's thread: records of one request resolve together.
    """
    deadline = time.monotonic() + timeout
    link = LinkWatch()
    for future in futures:
        while not future.is_done:
            now = time.monotonic()
            if now >= deadline:
                return AckTimeout(
                    f"no acknowledgement from the broker within ack_timeout={timeout}s"
                )
            # Raises when the wait times out, or when the record failed (is_done then).
            with contextlib.suppress(Exception):
                future.get(min(deadline - now, _LINK_CHECK))
            if future.is_done:
                break
            if link.down_for(client, time.monotonic()) >= fault_after:
                error: BaseException = kerr.KafkaConnectionError(
                    f"no connection to any broker for fault_after={fault_after}s while "
                    f"waiting for acknowledgements"
                )
                return error
    return None


def _close_consumer(consumer: Any, client: Any, timeout: float, *, aborted: bool) -> None:
    """Close a KafkaConsumer: leave the group without committing, within ``timeout``.

    An aborted consumer's IO thread is stopped and its broker may be frozen, so its
    ``close()`` (which leaves the group through the IO thread) would wait for nothing:
    close the network client directly instead (the group notices the member's absence
    after ``session_timeout_ms``).
    """
    if not aborted:
        consumer.close(autocommit=False, timeout_ms=int(timeout * 1000))
        return
    consumer._closed = True  # a late poll() raises IllegalStateError, close() is a no-op
    metrics = getattr(consumer, "_metrics", None)
    try:
        if client is not None:
            close_client(client, aborted=True)
    finally:
        if metrics is not None:
            metrics.close()


# -- options --------------------------------------------------------------------------


class ConsumerOptions(KafkaOptions):
    """Options of a ``kafka_consumer``. Any other ``KafkaConsumer`` setting
    (``session_timeout_ms``, ``max_poll_interval_ms``, ``security_protocol``, ...) may be
    given too and is passed through."""

    _driver_keys = frozenset(KafkaConsumer.DEFAULT_CONFIG)
    _reserved = {
        "key_deserializer": "not accepted: keys are returned as bytes",
        "value_deserializer": 'not accepted: use deserializer = "raw", "str" or "json"',
        "enable_auto_commit": (
            "not accepted: the actor commits after the handler returns "
            "(at-least-once); in manual mode call commit()"
        ),
    }

    fault_after: float = Field(
        10.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds a subscribed consumer may have no broker connection before "
            "it counts as broken and is restarted (a dead broker makes poll() "
            "return nothing, silently)."
        ),
    )
    group_id: str = Field(description="Consumer group (offsets are committed to it).")
    auto_offset_reset: str = Field(
        "earliest",
        description=(
            "Where a partition without a committed offset starts: 'earliest' or "
            "'latest' (a KafkaConsumer setting; kafka-python's default: 'latest')."
        ),
    )
    topics: list[str] = Field(
        [], description="Topics to subscribe to at start; subscribe() can change them."
    )
    handler: str | None = Field(
        None,
        description=(
            "'package.module:function' called with each Record on the actor "
            "thread; omitted: manual mode (fetch/commit) unless consume() is called."
        ),
    )
    on_handler_error: Literal["retry", "skip", "dead_letter"] = Field(
        "retry",
        description=(
            "What a handler exception does: 'retry' the record (seek back, pause "
            "its partition for a backoff), 'skip' it, or 'dead_letter' it."
        ),
    )
    dead_letter_topic: str | None = Field(
        None,
        description=(
            "Topic that receives failed records (needed for 'dead_letter'; "
            "with 'retry' it receives records that exhausted max_retries)."
        ),
    )
    dead_letter_options: dict[str, Any] = Field(
        {}, description="Extra KafkaProducer settings for the dead-letter producer."
    )
    max_retries: int | None = Field(
        None,
        ge=0,
        description=(
            "'retry': attempts after the first failure before giving up on a "
            "record (then dead-lettered if dead_letter_topic is set, else "
            "skipped); omitted: retry forever."
        ),
    )
    retry_backoff: float = Field(
        0.5,
        ge=0,
        allow_inf_nan=False,
        description="Seconds before the first retry; doubles per attempt.",
    )
    retry_backoff_max: float = Field(
        30.0, ge=0, allow_inf_nan=False, description="Cap on the retry backoff (s)."
    )
    deserializer: Literal["raw", "str", "json"] = Field(
        "raw", description="How Record.value is decoded: bytes, UTF-8 str, or JSON."
    )
    max_records: int = Field(
        100,
        ge=1,
        description=(
            "Records taken per poll: the handler's batch (committed together "
            "after it), and in manual mode the most records buffered ahead of "
            "fetch(). max_records x handler time must stay well below "
            "max_poll_interval_ms."
        ),
    )
    poll_interval: float = Field(
        0.05,
        gt=0,
        allow_inf_nan=False,
        description="Seconds between polls of the broker (between calls).",
    )
    rebalance_poll_timeout: float = Field(
        2.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "While the consumer (re)joins its group, one poll may wait this long "
            "(kafka-python 3.0.12 drops a join result that arrives while nobody "
            "is inside poll(), so joins need long polls). Calls wait meanwhile: "
            "keep it below call_timeout."
        ),
    )
    commit_timeout: float = Field(
        4.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Longest wait for the broker in a commit (commit(), the handler's "
            "commit after each batch), a committed() lookup, and a dead-letter "
            "record's acknowledgement (also the dead-letter producer's default "
            "max_block_ms); fault_after if that is smaller. These wait on the actor "
            "thread: keep it below call_timeout (default 5 s). A timeout with no "
            "broker connection is a fault."
        ),
    )

    @field_validator("topics", mode="before")
    @classmethod
    def _one_topic(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("handler")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            _resolve_handler(value)
        return value

    @field_validator("dead_letter_options")
    @classmethod
    def _producer_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(k for k in value if k not in KafkaProducer.DEFAULT_CONFIG)
        if unknown:
            raise ValueError(f"unknown KafkaProducer settings: {', '.join(unknown)}")
        return value

    @classmethod
    def _cross_check(cls, data: Mapping[str, Any]) -> list[InitErrorDetails]:
        if data.get("on_handler_error") == "dead_letter" and not data.get("dead_letter_topic"):
            return [
                InitErrorDetails(
                    type=PydanticCustomError(
                        "dead_letter_topic", "on_handler_error = 'dead_letter' needs it"
                    ),
                    loc=("dead_letter_topic",),
                    input=None,
                )
            ]
        return []

    def driver_settings(self) -> dict[str, Any]:
        return {"auto_offset_reset": self.auto_offset_reset, **super().driver_settings()}

    def unbounded_waits(self) -> list[tuple[str, str]]:
        """The consumer's own and its dead-letter producer's (``dead_letter_options``)."""
        return [
            *super().unbounded_waits(),
            *unbounded_driver_waits(self.dead_letter_options, "dead_letter_options."),
        ]


# -- the actor ------------------------------------------------------------------------


class KafkaConsumerActor(ResourceActor):
    """One ``KafkaConsumer`` in a group; handler mode or manual mode (package docstring).

    A lease (``with consumer.lease() as c``) holds the consumer for the block: in manual
    mode, ``fetch()`` then ``commit()`` with no other caller's fetch or commit between
    them. The poll hook keeps running between the block's calls (group membership), and
    nothing is undone if the block raises: offsets committed stay committed.
    """

    kind = "kafka_consumer"
    Options: ClassVar[type[BaseModel]] = ConsumerOptions
    config: ConsumerOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        config = self.config
        self.poll_interval = config.poll_interval
        self._handler: Callable[[Record], Any] | None = (
            None if config.handler is None else _resolve_handler(config.handler)
        )
        self._driver = {
            **config.driver_settings(),
            "bootstrap_servers": config.bootstrap_servers,
            "group_id": config.group_id,
            "enable_auto_commit": False,
        }
        self._dlq_driver: dict[str, Any] | None = None
        if config.dead_letter_topic:
            shared = {
                k: v
                for k, v in self._driver.items()
                if k in KafkaProducer.DEFAULT_CONFIG
                and k not in ("client_id", "kafka_client", "max_in_flight_requests_per_connection")
            }
            # A dead-letter send runs on the actor thread: its metadata wait is bounded
            # like the rest of the consumer's waits (kafka-python: 60 s).
            self._dlq_driver = {
                "max_block_ms": int(config.commit_timeout * 1000),
                **shared,
                **config.dead_letter_options,
            }
        self._client: Any = None
        self._dlq: Any = None
        self._dlq_client: Any = None
        self._conn: Conn | None = None
        """The current connection (None while disconnected)."""
        self._conns: dict[int, Conn] = {}
        """Every connection not yet disconnected, by id() of its KafkaConsumer."""
        self._opening: ClientTrap | None = None
        """The client trap of a connect() in progress (for abort(None))."""
        # Per-connection state (reset by connect):
        self._buffer: deque[Any] = deque()
        """Records polled but not yet handled/fetched, in poll order."""
        self._delivered: dict[TopicPartition, int] = {}
        """Manual mode: next offset per partition after the records fetch() returned."""
        self._retry_at: dict[TopicPartition, float] = {}
        """Partitions paused until a failed record's retry is due (monotonic time)."""
        self._link = LinkWatch()
        # Survives restarts: a record keeps its attempt count.
        self._attempts: dict[tuple[str, int, int], int] = {}
        self._stats = {
            "handled": 0,
            "handler_errors": 0,
            "retries": 0,
            "skipped": 0,
            "dead_lettered": 0,
            "commits": 0,
            "commit_failures": 0,
        }
        if config.topics:
            self.replay("subscribe", self._subscribe_step(list(config.topics)))

    @classmethod
    def max_pool_size(cls, options: Mapping[str, Any]) -> tuple[int, str] | None:
        return 1, (
            "a call (subscribe, fetch, commit) would reach one member only; for "
            "parallel consumption configure several kafka_consumer resources "
            "with the same group_id"
        )

    # -- lifecycle ------------------------------------------------------------------------

    def connect(self) -> Any:
        """A new KafkaConsumer (joins the group on its first poll) and, for dead
        letters, a producer. Subscriptions come back through replay."""
        trap = self._opening = ClientTrap(self._driver.get("kafka_client", KafkaNetClient))
        dlq_trap: ClientTrap | None = None
        try:
            consumer, client = open_driver(KafkaConsumer, self._driver, trap)
            conn = Conn(consumer, client)
            if self._dlq_driver is not None:
                dlq_trap = self._opening = ClientTrap(
                    self._dlq_driver.get("kafka_client", KafkaNetClient)
                )
                try:
                    conn.dlq, conn.dlq_client = open_driver(
                        KafkaProducer, self._dlq_driver, dlq_trap
                    )
                except BaseException:
                    if dlq_trap.aborted is not None:  # tear the consumer down the same way
                        abort_client(client, dlq_trap.aborted)
                    _close_consumer(consumer, client, self.config.close_timeout,
                                    aborted=dlq_trap.aborted is not None)
                    raise
        finally:
            self._opening = None
        self._conns[id(consumer)] = conn
        if trap.aborted is not None or (dlq_trap is not None and dlq_trap.aborted is not None):
            # abort(None) raced the constructors' last steps: this incarnation has been
            # abandoned, and its successor may be serving. Leave the actor's state alone.
            self._abort_conn(conn, aborted_error(self.name))
            return consumer
        self._conn, self._client = conn, client
        self._dlq, self._dlq_client = conn.dlq, conn.dlq_client
        self._forget_partitions()
        self._link.reset()
        return consumer

    def disconnect(self, resource: Any) -> None:
        """Leave the group without committing (only handled records were committed).
        An aborted consumer is closed without talking to the broker."""
        conn = self._conns.pop(id(resource), None)
        if conn is None:  # not ours (never happens): close it the ordinary way
            conn = Conn(resource, getattr(resource, "_client", None))
        if conn is self._conn:
            self._conn = None
            self._buffer.clear()
            self._dlq = self._dlq_client = None
        try:
            _close_consumer(resource, conn.client, self.config.close_timeout, aborted=conn.aborted)
        finally:
            if conn.dlq is not None:
                close_producer(conn.dlq, ABORT_JOIN if conn.aborted else self.config.close_timeout,
                                aborted=conn.aborted)

    def abort(self, resource: Any) -> None:
        """From another thread: fail every call blocked in the consumer (``poll()``,
        ``commit()``, ``committed()``, ``close()``) with ``KafkaAborted``, stop its IO
        thread, shut its broker sockets down; the same for the dead-letter producer.
        ``resource`` None: make the bootstrap of a ``connect()`` in progress fail now."""
        error = aborted_error(self.name)
        if resource is None:
            trap = self._opening
            if trap is not None:
                trap.abort(error)
            return
        conn = self._conns.get(id(resource))
        if conn is None:
            conn = Conn(resource, getattr(resource, "_client", None))
        self._abort_conn(conn, error)

    @staticmethod
    def _abort_conn(conn: Conn, error: BaseException) -> None:
        conn.aborted = True
        if conn.client is not None:
            abort_client(conn.client, error)
        if conn.dlq is not None:
            abort_producer(conn.dlq, conn.dlq_client, error)

    def is_fault(self, exc: BaseException) -> bool:
        if isinstance(exc, (*PRODUCER_STATE_ERRORS, AckTimeout, KafkaAborted)):
            return True  # (the first two: the dead-letter producer)
        closed = bool(getattr(self.resource, "_closed", False))
        return is_link_fault(exc, self._client, closed)

    def poll(self) -> None:
        """Runtime hook, every ``poll_interval``: watch the link, poll the broker
        (keeps group membership), and in handler mode run the handler."""
        consumer = self.resource  # set: the runtime polls only while connected
        if not consumer.subscription() and not consumer.assignment():
            self._link.reset()
            return  # nothing to consume, nothing that could be broken
        self._check_link()
        self._resume_due(consumer)
        self._take(consumer, self._poll_timeout(consumer))
        if self._handler is not None:
            self._run_handler(consumer)

    # -- calls: subscription --------------------------------------------------------------

    def subscribe(self, topics: Sequence[str] | str) -> list[str]:
        """Subscribe to ``topics`` (replacing the current subscription); replayed after
        every restart. Returns the subscribed topics."""
        topic_list = [topics] if isinstance(topics, str) else list(topics)
        if not topic_list or not all(isinstance(t, str) and t for t in topic_list):
            raise ValueError(f"topics must be non-empty strings, got {topics!r}")
        step = self._subscribe_step(topic_list)
        step(self.resource)
        self.replay("subscribe", step)
        return sorted(topic_list)

    def unsubscribe(self) -> None:
        """Drop the subscription (and its replay); buffered records are discarded."""
        self.forget("subscribe")
        self.resource.unsubscribe()
        self._forget_partitions()

    def _forget_partitions(self) -> None:
        """Drop buffered records and per-partition progress (new connection, or no
        subscription any more)."""
        self._buffer.clear()
        self._delivered.clear()
        self._retry_at.clear()

    def subscription(self) -> list[str]:
        """The subscribed topics."""
        return sorted(self.resource.subscription() or ())

    def assignment(self) -> list[tuple[str, int]]:
        """The partitions assigned to this consumer by its group, as (topic, partition)."""
        return sorted((tp.topic, tp.partition) for tp in self.resource.assignment())

    def consume(self, callback: Callable[[Record], Any] | str | None) -> None:
        """Set the handler (a callable, or 'module:function'), run on the actor thread
        for each record; None returns to manual mode. Kept across restarts."""
        self._handler = _resolve_handler(callback) if isinstance(callback, str) else callback

    # -- calls: manual mode ---------------------------------------------------------------

    def fetch(self, max_records: int = 100, timeout: float = 0.0) -> list[Record]:
        """Manual mode: up to ``max_records`` records, waiting up to ``timeout`` seconds
        for the first. Their offsets are committed by ``commit()``, not before.

        (The issue's ``poll(max_records, timeout)``: ``poll`` is the runtime's hook.)
        """
        if self._handler is not None:
            raise RuntimeError(
                "this consumer has a handler: records go to it; fetch() is "
                "for manual mode (consume(None) switches to it)"
            )
        consumer = self.resource
        if not consumer.subscription() and not consumer.assignment():
            raise RuntimeError("not subscribed: configure topics or call subscribe(topics)")
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        if not 0 <= timeout < math.inf:  # it waits on the actor thread
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        if not self._buffer and timeout > 0:
            deadline = time.monotonic() + timeout
            while not self._buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                # Short polls back to back: no gap for a join result to get lost in.
                self._take(consumer, min(left, 0.1), limit=max_records)
        out: list[Record] = []
        while self._buffer and len(out) < max_records:
            raw = self._buffer[0]
            try:
                record = self._decode(raw)
            except RecordDecodeError:
                if out:
                    break
                raise
            self._buffer.popleft()
            out.append(record)
            self._delivered[TopicPartition(raw.topic, raw.partition)] = raw.offset + 1
        return out

    def commit(
        self, offsets: Mapping[tuple[str, int], int] | None = None
    ) -> dict[tuple[str, int], int]:
        """Commit the offsets after the records ``fetch()`` returned (or ``offsets``:
        {(topic, partition): next offset to read}). Returns what was committed."""
        if offsets is None:
            assigned = self.resource.assignment()
            chosen = {tp: off for tp, off in self._delivered.items() if tp in assigned}
        else:
            chosen = {TopicPartition(t, p): int(o) for (t, p), o in offsets.items()}
        if chosen:
            self._commit(chosen)
            for tp, off in chosen.items():
                if self._delivered.get(tp) == off:
                    del self._delivered[tp]
        return {(tp.topic, tp.partition): off for tp, off in chosen.items()}

    def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset for a partition (None if nothing committed)."""
        result = self.resource.committed(
            TopicPartition(topic, partition), timeout_ms=self._broker_wait_ms()
        )
        return None if result is None else int(result)

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read an assigned partition from ``offset`` next (drops its buffered records)."""
        tp = TopicPartition(topic, partition)
        self.resource.seek(tp, offset)
        self._drop_buffered(tp)

    def stats(self) -> dict[str, int]:
        """Counters since the resource was created (they survive restarts)."""
        return dict(self._stats)

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _subscribe_step(topics: list[str]) -> Callable[[Any], None]:
        def step(consumer: Any) -> None:
            consumer.subscribe(topics=list(topics))

        return step

    def _check_link(self) -> None:
        down = self._link.down_for(self._client, time.monotonic())
        fault_after = self.config.fault_after
        if down >= fault_after:
            raise kerr.KafkaConnectionError(
                f"no connection to any broker for {down:.1f}s (fault_after={fault_after}s)"
            )

    def _joining(self, consumer: Any) -> bool:
        return bool(consumer.group_metadata().state != MemberState.STABLE)

    def _poll_timeout(self, consumer: Any) -> float:
        """0 when the group is stable; while joining, long polls (see Options)."""
        return self.config.rebalance_poll_timeout if self._joining(consumer) else 0.0

    def _take(self, consumer: Any, timeout: float, limit: int | None = None) -> None:
        """Poll the driver into the buffer (bounded by max_records)."""
        room = (limit if limit is not None else self.config.max_records) - len(self._buffer)
        deadline = time.monotonic() + timeout
        while True:
            # Short polls, back to back while joining (kafka-python 3.0.12 drops a join
            # result that completes while nobody is inside poll()).
            timeout_ms = int(min(timeout, 0.1) * 1000)
            if room > 0:
                batch = consumer.poll(timeout_ms=timeout_ms, max_records=room)
            else:  # buffer full: keep the membership alive without fetching more
                batch = self._poll_paused(consumer, timeout_ms)
            for records in batch.values():
                self._buffer.extend(records)
                room -= len(records)
            left = deadline - time.monotonic()
            if batch or left <= 0 or not self._joining(consumer):
                break
            timeout = left
        self._forget_revoked(consumer)

    def _poll_paused(self, consumer: Any, timeout_ms: int) -> Any:
        """A poll that fetches nothing (every partition paused; fetched data stays parked
        in the driver): it only keeps the group membership alive."""
        assigned = set(consumer.assignment())
        consumer.pause(*assigned)
        try:
            return consumer.poll(timeout_ms=timeout_ms, max_records=1)
        finally:
            still = set(consumer.assignment()) & assigned
            consumer.resume(*(still - set(self._retry_at)))

    def _forget_revoked(self, consumer: Any) -> None:
        """Drop state of partitions this member no longer owns (their records go to the
        new owner from the last commit)."""
        assigned = consumer.assignment()  # TopicPartitions: plain tuples compare equal
        if self._buffer and any((r.topic, r.partition) not in assigned for r in self._buffer):
            self._keep_buffered(lambda r: (r.topic, r.partition) in assigned)
        for table in (self._delivered, self._retry_at):
            for tp in [tp for tp in table if tp not in assigned]:
                del table[tp]

    def _resume_due(self, consumer: Any) -> None:
        if not self._retry_at:
            return
        now = time.monotonic()
        assigned = consumer.assignment()
        for tp, due in list(self._retry_at.items()):
            if due <= now:
                del self._retry_at[tp]
                if tp in assigned:
                    consumer.resume(tp)

    def _drop_buffered(self, tp: TopicPartition) -> None:
        self._keep_buffered(lambda r: (r.topic, r.partition) != tp)

    def _keep_buffered(self, keep: Callable[[Any], bool]) -> None:
        self._buffer = deque(r for r in self._buffer if keep(r))

    def _decode(self, raw: Any) -> Record:
        value = raw.value
        if value is not None and self.config.deserializer != "raw":
            try:
                text = value.decode("utf-8")
                value = json.loads(text) if self.config.deserializer == "json" else text
            except (UnicodeDecodeError, ValueError) as err:
                raise RecordDecodeError(
                    f"cannot decode the value of {raw.topic}[{raw.partition}]@{raw.offset} "
                    f"as {self.config.deserializer}: {err}",
                    raw.topic,
                    raw.partition,
                    raw.offset,
                ) from err
        timestamp = raw.timestamp if raw.timestamp is not None else -1
        return Record(
            raw.topic,
            raw.partition,
            raw.offset,
            timestamp,
            raw.key,
            value,
            tuple((k, bytes(v) if v is not None else b"") for k, v in (raw.headers or ())),
        )

    def _run_handler(self, consumer: Any) -> None:
        """Run the handler over the buffered records, in order, then commit what it
        finished (at-least-once: a crash before the commit means they come again)."""
        handler = self._handler
        assert handler is not None
        handled: dict[TopicPartition, int] = {}
        try:
            while self._buffer:
                raw = self._buffer[0]
                tp = TopicPartition(raw.topic, raw.partition)
                try:
                    handler(self._decode(raw))
                except Exception as exc:
                    self._stats["handler_errors"] += 1
                    if not self._after_failure(consumer, tp, raw, exc):
                        continue  # retry later: its partition's records left the buffer
                else:
                    self._stats["handled"] += 1
                self._buffer.popleft()
                self._attempts.pop((raw.topic, raw.partition, raw.offset), None)
                handled[tp] = raw.offset + 1
        finally:
            if handled:
                try:
                    self._commit(handled)
                except Exception as exc:
                    if self.is_fault(exc):
                        raise
                    self._stats["commit_failures"] += 1
                    log.warning(
                        "kafka consumer %r: commit failed, its records will be delivered again: %s",
                        self.name,
                        describe(exc),
                    )

    def _after_failure(self, consumer: Any, tp: TopicPartition, raw: Any, exc: Exception) -> bool:
        """Apply on_handler_error; True: move past the record, False: retry it later."""
        where = f"{raw.topic}[{raw.partition}]@{raw.offset}"
        config = self.config
        policy = config.on_handler_error
        if policy == "retry":
            key = (raw.topic, raw.partition, raw.offset)
            attempts = self._attempts.get(key, 0) + 1
            if config.max_retries is None or attempts <= config.max_retries:
                self._attempts[key] = attempts
                delay = min(config.retry_backoff * 2 ** (attempts - 1), config.retry_backoff_max)
                log.warning(
                    "kafka consumer %r: handler failed on %s (attempt %d), retrying in %.2fs: %s",
                    self.name,
                    where,
                    attempts,
                    delay,
                    describe(exc),
                )
                self._stats["retries"] += 1
                self._retry_later(consumer, tp, raw.offset, delay)
                return False
            self._attempts.pop(key, None)
            policy = "dead_letter" if config.dead_letter_topic else "skip"
            log.error(
                "kafka consumer %r: giving up on %s after %d retries (%s)",
                self.name,
                where,
                config.max_retries,
                policy,
            )
        if policy == "dead_letter":
            try:
                self._dead_letter(raw, exc)
            except Exception as dlq_exc:
                if self.is_fault(dlq_exc):
                    raise
                log.error(
                    "kafka consumer %r: cannot dead-letter %s (%s); retrying it in %.2fs",
                    self.name,
                    where,
                    describe(dlq_exc),
                    config.retry_backoff_max,
                )
                self._retry_later(consumer, tp, raw.offset, config.retry_backoff_max)
                return False
            self._stats["dead_lettered"] += 1
            return True
        log.warning(
            "kafka consumer %r: handler failed on %s, skipped: %s",
            self.name,
            where,
            describe(exc),
        )
        self._stats["skipped"] += 1
        return True

    def _retry_later(self, consumer: Any, tp: TopicPartition, offset: int, delay: float) -> None:
        consumer.seek(tp, offset)
        consumer.pause(tp)
        self._retry_at[tp] = time.monotonic() + delay
        self._drop_buffered(tp)

    def _dead_letter(self, raw: Any, exc: Exception) -> None:
        headers = [
            *(raw.headers or ()),
            ("dlq.original.topic", raw.topic.encode()),
            ("dlq.original.partition", str(raw.partition).encode()),
            ("dlq.original.offset", str(raw.offset).encode()),
            ("dlq.error", describe(exc)[:1000].encode()),
        ]
        future = self._dlq.send(
            self.config.dead_letter_topic, value=raw.value, key=raw.key, headers=headers
        )
        stuck = _await_acks(
            [future], self._broker_wait_ms() / 1000, self.config.fault_after, self._dlq_client
        )
        if stuck is not None:
            raise stuck
        if future.exception is not None:
            raise future.exception

    def _commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.resource.commit(
            offsets={tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()},
            timeout_ms=self._broker_wait_ms(),
        )
        self._stats["commits"] += 1

    def _broker_wait_ms(self) -> int:
        """How long a commit, committed() or a dead letter's ack may wait (see Options)."""
        return int(min(self.config.commit_timeout, self.config.fault_after) * 1000)
