"""The ``kafka_producer`` kind: one ``KafkaProducer`` whose sends are in flight together
(``send`` returns a ``Deferred`` resolved by the broker's acknowledgement), and the
poll hook that turns a stuck producer or a dead broker, which raise nothing by
themselves, into faults.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from kafka import KafkaProducer
from kafka import errors as kerr
from kafka.net.compat import KafkaNetClient
from pydantic import BaseModel, Field

from sessions._redact import describe
from sessions._runtime.contract import Deferred, ResourceActor
from sessions.actors.kafka._common import (
    ABORT_JOIN,
    PRODUCER_STATE_ERRORS,
    AckTimeout,
    ClientTrap,
    Conn,
    KafkaAborted,
    KafkaOptions,
    LinkWatch,
    abort_producer,
    aborted_error,
    close_producer,
    is_link_fault,
    open_driver,
)

# -- results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendResult:
    """Where the broker stored a record: returned by ``send`` once it is acknowledged."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    """Milliseconds since the epoch (the broker's LogAppendTime or the record's
    CreateTime), -1 if unknown."""


class ProducerClosed(kerr.KafkaError):  # type: ignore[misc]  # kafka is untyped
    """A record's producer was closed before the broker acknowledged the record: the
    resource broke (for another reason than the one its ``__cause__`` may show) or was
    stopped while the record was in flight. A fault: its caller gets ``ResourceFault``,
    outcome unknown. ``__cause__`` is the closing driver's own error."""


# -- helpers --------------------------------------------------------------------------


def _to_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)  # a copy: the caller's buffer may change after the call
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"{what} must be bytes or str, got {type(value).__name__}")


def _headers(
    headers: Mapping[str, Any] | Sequence[tuple[str, Any]] | None,
) -> list[tuple[str, bytes]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, bytes]] = []
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise TypeError(
                f"headers must be a mapping or (name, value) pairs, got {item!r}"
            ) from None
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, got {type(name).__name__}")
        out.append((name, _to_bytes(value, f"header {name!r}")))
    return out


# -- options --------------------------------------------------------------------------


class ProducerOptions(KafkaOptions):
    """Options of a ``kafka_producer``. Any other ``KafkaProducer`` setting (``acks``,
    ``linger_ms``, ``compression_type``, ``security_protocol``, ``sasl_*``, ``ssl_*``,
    ``max_block_ms``, ...) may be given too and is passed through; idempotence stays on
    unless those settings turn it off."""

    _driver_keys = frozenset(KafkaProducer.DEFAULT_CONFIG)
    _reserved = {
        "key_serializer": "not accepted: keys are bytes or str (UTF-8)",
        "value_serializer": 'not accepted: use serializer = "raw" or "json"',
    }

    fault_after: float = Field(
        2.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds without any broker connection while acknowledgements are awaited "
            "after which the producer counts as broken (its callers get ResourceFault) "
            "and is replaced. A dead broker makes kafka-python retry silently."
        ),
    )
    serializer: Literal["raw", "json"] = Field(
        "raw",
        description=(
            "'raw': values are bytes (str is encoded as UTF-8); 'json': values "
            "are encoded with json.dumps. None is always a tombstone (null value)."
        ),
    )
    ack_timeout: float = Field(
        4.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Longest wait for a record's acknowledgement (and for flush()); a "
            "timeout is a fault (outcome unknown) and replaces the producer. "
            "Also the default max_block_ms (wait for a topic's metadata; "
            "kafka-python: 60 s). Keep it below call_timeout (default 5 s) so "
            "callers see the fault, and so below stall_timeout."
        ),
    )


# -- the actor ------------------------------------------------------------------------


class KafkaProducerActor(ResourceActor):
    """One ``KafkaProducer``; sends are in flight together (see the package docstring).

    A lease (``with producer.lease() as p``) holds one member, so one producer: the
    block's sends are handed to it in order with no other caller's in between (per
    partition, Kafka keeps that order). It is not a Kafka transaction: records already
    sent are not withdrawn if the block raises.
    """

    kind = "kafka_producer"
    Options: ClassVar[type[BaseModel]] = ProducerOptions
    config: ProducerOptions
    poll_interval = 0.1
    """How often the poll hook checks the records in flight (ack age, broker link)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        config = self.config
        # A send must not block the actor for kafka-python's default 60 s when the topic
        # metadata cannot be fetched.
        self._driver = {
            "max_block_ms": int(config.ack_timeout * 1000),
            **config.driver_settings(),
            "bootstrap_servers": config.bootstrap_servers,
        }
        self._client: Any = None
        self._in_flight: deque[tuple[float, Any]] = deque()
        """(handed to the driver at, kafka future) of the current producer, oldest first."""
        self._link = LinkWatch()
        self._conn: Conn | None = None
        """The current connection (None while disconnected)."""
        self._conns: dict[int, Conn] = {}
        """Every connection not yet disconnected, by id() of its KafkaProducer."""
        self._opening: ClientTrap | None = None
        """The client trap of a connect() in progress (for abort(None))."""

    # -- lifecycle ------------------------------------------------------------------------

    def connect(self) -> Any:
        """A new KafkaProducer (a new producer id: idempotence state starts fresh)."""
        trap = self._opening = ClientTrap(self._driver.get("kafka_client", KafkaNetClient))
        try:
            producer, client = open_driver(KafkaProducer, self._driver, trap)
        finally:
            self._opening = None
        conn = Conn(producer, client)
        self._conns[id(producer)] = conn
        if trap.aborted is not None:
            # abort(None) raced the constructor's last step: this incarnation has been
            # abandoned, and its successor may be serving. Leave the actor's state alone.
            conn.aborted, conn.broken = True, trap.aborted
            abort_producer(producer, client, trap.aborted)
            return producer
        self._conn, self._client = conn, client
        self._in_flight.clear()
        self._link.reset()
        return producer

    def disconnect(self, resource: Any) -> None:
        """Flush and close; records still unacknowledged then fail (their callers get
        ``ResourceFault``: the producer they were handed to is gone). An aborted
        producer is closed without flushing."""
        conn = self._conns.pop(id(resource), None)
        if conn is not None and conn is self._conn:
            self._conn = None  # from now on its records' failures are faults
        aborted = conn is not None and conn.aborted
        close_producer(resource, ABORT_JOIN if aborted else self.config.close_timeout,
                        aborted=aborted)

    def abort(self, resource: Any) -> None:
        """From another thread: stop the producer's sender (every record in flight fails
        with ``KafkaAborted``), shut its broker sockets down, and release a ``send()``
        waiting for a topic's metadata and a ``flush()``. ``resource`` None: make the
        constructor's bootstrap of a ``connect()`` in progress fail now."""
        error = aborted_error(self.name)
        if resource is None:
            trap = self._opening
            if trap is not None:
                trap.abort(error)
            return
        conn = self._conns.get(id(resource))
        if conn is None:  # not (or no longer) ours: still stop whatever it is doing
            abort_producer(resource, None, error)
            return
        if conn.broken is None:
            conn.broken = error
        conn.aborted = True
        abort_producer(resource, conn.client, error)

    def is_fault(self, exc: BaseException) -> bool:
        producer = self.resource
        if isinstance(exc, (*PRODUCER_STATE_ERRORS, AckTimeout, KafkaAborted, ProducerClosed)):
            return True
        manager = getattr(producer, "_transaction_manager", None)
        if manager is not None and manager.has_fatal_error():
            return True  # e.g. InitProducerId failed: this instance will never send again
        return is_link_fault(exc, self._client, bool(getattr(producer, "_closed", False)))

    def poll(self) -> None:
        """Runtime hook: a dead broker or a stuck producer raises nothing by itself, so
        watch the records in flight. A fault here restarts the producer."""
        in_flight = self._in_flight
        while in_flight and in_flight[0][1].is_done:
            in_flight.popleft()
        if not in_flight:
            self._link.reset()
            return
        now = time.monotonic()
        config = self.config
        broken: BaseException | None = None
        if now - in_flight[0][0] >= config.ack_timeout:
            broken = AckTimeout(
                f"no acknowledgement from the broker within ack_timeout={config.ack_timeout}s"
            )
        elif self._link.down_for(self._client, now) >= config.fault_after:
            broken = kerr.KafkaConnectionError(
                f"no connection to any broker for fault_after={config.fault_after}s while "
                f"records were waiting for acknowledgements"
            )
        if broken is not None:
            if self._conn is not None and self._conn.broken is None:
                self._conn.broken = broken  # what its records still in flight fail with
            raise broken

    # -- calls ----------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: Any = None,
        key: bytes | str | None = None,
        headers: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        partition: int | None = None,
        *,
        timestamp_ms: int | None = None,
    ) -> Deferred:
        """Send one record; the caller's future resolves to its :class:`SendResult` once
        the broker acknowledged it.

        The record is handed to the driver and the actor moves on at once (``Deferred``):
        the driver batches and pipelines the records of all callers, many in flight
        together (handed over in call order; idempotence keeps that order per
        partition). Errors the driver finds at once (a value too large, a bad topic
        name) raise here; the broker's verdict arrives on the driver's thread.
        """
        if not isinstance(topic, str) or not topic:
            raise TypeError(f"topic must be a non-empty str, got {topic!r}")
        if value is None:
            payload = None
        elif self.config.serializer == "json":
            payload = json.dumps(value, separators=(",", ":")).encode("utf-8")
        else:
            try:
                payload = _to_bytes(value, "value")
            except TypeError as err:
                raise TypeError(f'{err} (serializer = "json" sends other values)') from None
        key_bytes = None if key is None else _to_bytes(key, "key")
        conn = self._conn
        try:
            sent = self.resource.send(
                topic,
                value=payload,
                key=key_bytes,
                headers=_headers(headers),
                partition=partition,
                timestamp_ms=timestamp_ms,
            )
        except Exception as err:
            # Aborted under it (or just before: the driver then finds its network
            # selector closed): whatever the driver raised, it is the abort.
            if conn is not None and conn.aborted:
                raise aborted_error(self.name) from err
            raise
        done: concurrent.futures.Future[SendResult] = concurrent.futures.Future()
        self._in_flight.append((time.monotonic(), sent))
        sent.add_callback(_acknowledged, done)
        sent.add_errback(self._send_failed, done, self._conn)
        return Deferred(done)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record handed to the driver is acknowledged (or failed).

        ``timeout`` defaults to ``ack_timeout``; not flushed in time is a fault.
        """
        wait = timeout if timeout is not None else self.config.ack_timeout
        if not 0 <= wait < math.inf:
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {wait!r}")
        conn = self._conn
        try:
            self.resource.flush(wait)
        except kerr.KafkaTimeoutError as err:  # the same stuck producer as a late ack
            raise AckTimeout(f"records not acknowledged within {wait}s") from err
        if conn is not None and conn.aborted:  # abort() failed what was in flight
            raise conn.broken or aborted_error(self.name)

    def partitions_for(self, topic: str) -> list[int]:
        """The partition ids of ``topic`` (fetches its metadata if needed)."""
        return sorted(self.resource.partitions_for(topic) or ())

    # -- internals ------------------------------------------------------------------------

    def _send_failed(
        self, done: concurrent.futures.Future[SendResult], conn: Conn | None, exc: BaseException
    ) -> None:
        """The broker (or the closing driver) failed a record; on the driver's thread.

        The runner decides what the error means (``is_fault``) and builds the caller's
        ``ResourceFault`` itself, so that status and ``/metrics`` count a fault as a
        fault. While the record's producer is the live one, the driver's own error goes.
        Once its producer broke or closed (replaced, aborted, stopped), the record failed
        *because* of that: it fails with why the producer broke (``AckTimeout``,
        ``KafkaConnectionError``, ``KafkaAborted``), or with ``ProducerClosed`` chained
        from the closing driver's error. Each is a fault, so the caller gets
        ``ResourceFault`` (outcome unknown), counted as a fault. A record of a producer
        already replaced never crashes its successor: the runner reports the fault to
        the record's own (ended) incarnation only.
        """
        if conn is None or (conn is self._conn and conn.broken is None and not conn.aborted):
            done.set_exception(exc)
            return
        reason = conn.broken
        if reason is None:
            reason = ProducerClosed(
                f"the producer was closed before the broker acknowledged the record "
                f"({describe(exc)}); its outcome is unknown"
            )
            reason.__cause__ = exc
        done.set_exception(reason)


def _acknowledged(done: concurrent.futures.Future[SendResult], md: Any) -> None:
    timestamp = md.timestamp if md.timestamp is not None else -1
    done.set_result(SendResult(md.topic, md.partition, md.offset, timestamp))
