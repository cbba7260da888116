"""Kafka resources: ``kafka_producer`` and ``kafka_consumer`` (kafka-python 3.x).

A ``kafka_producer`` owns one ``KafkaProducer``. ``send`` hands the record to the driver
and returns a ``Deferred``: the actor thread moves on at once and the caller's future
resolves on the driver's thread when the broker acknowledges, so the records of all
callers are in flight together (the driver batches and pipelines them). The poll hook
watches the records in flight: no acknowledgement within ``ack_timeout``, or no broker
connection for ``fault_after``, is a fault.

A ``kafka_consumer`` owns one ``KafkaConsumer`` (not thread-safe: the actor is its only
user). It polls from the runtime's ``poll()`` hook between calls. With a handler
(``handler = "module:function"`` or ``consume(callback)``) it runs the handler per
record and commits after the handler returned (at-least-once); without one, callers
pull records with ``fetch()`` and ``commit()`` themselves ("manual mode"; the issue
calls it ``poll``, but ``poll`` is the runtime's hook name).

What is a fault (the resource is broken: the caller gets ``ResourceFault`` with the
driver error as ``__cause__``, outcome unknown, and the actor restarts) and what goes to
the caller (the actor keeps running):

=========================================================  ================================
error                                                      outcome
=========================================================  ================================
``KafkaConnectionError``, ``NodeNotReadyError``            fault
no broker connection for ``fault_after`` seconds while     fault (``KafkaConnectionError``)
acks are awaited or a consumer has a subscription
(a dead broker raises nothing by itself)
no acknowledgement within ``ack_timeout`` (the driver      fault (``AckTimeout``)
retries inside one producer instance for 2 minutes)
``KafkaTimeoutError`` with no live broker connection       fault
``KafkaTimeoutError`` while connected (a topic's           caller
metadata not found within ``max_block_ms``)
any error once the client is closed                        fault
``UnknownProducerIdError``, ``OutOfOrderSequenceNumber``,  fault (a new producer gets a
``InvalidProducerEpoch``, ``ProducerFenced``, any error    new producer id)
while the producer's idempotence state is fatal
a record in flight when its producer broke, was aborted    fault: why it broke
or closed (its ack will never come)                        (``AckTimeout``, ...), else
                                                           ``ProducerClosed``
``KafkaAborted`` (``abort()``: the runtime gave up on a    fault
stalled call and tore the connection down)
non-retriable record errors: ``MessageSizeTooLarge``,      caller
``InvalidTopic``, authorization, ...
``CommitFailedError`` (the group rebalanced)               caller (records come again)
``TypeError``/``ValueError`` (value, key, topic, header),  caller
``RecordDecodeError``
a handler exception                                        ``on_handler_error`` applies
=========================================================  ================================

A broker that cannot be reached at start is a failed start: the driver's bootstrap is
bounded by ``bootstrap_timeout_ms`` (default 5 s here instead of kafka-python's 30 s)
and retried by the supervisor with backoff.

Bounded waits (issue 9, "hangs are faults"). Every wait on the actor thread has a
finite default below ``call_timeout`` (5 s), so a frozen or black-holed broker makes the
kind report the fault itself, with its cause, before the runtime's stall watchdog
(``stall_timeout``, default twice ``call_timeout``) has to: ``connect()`` by
``bootstrap_timeout_ms`` (5 s; passing ``api_version`` skips that bootstrap), a
``send()`` waiting for a topic's metadata by ``max_block_ms`` (``ack_timeout``, 4 s;
kafka-python: 60 s), ``flush()`` by ``ack_timeout``, a consumer poll by
``rebalance_poll_timeout`` (2 s), ``fetch()`` by its own finite ``timeout``, commits,
``committed()`` and dead-letter acks by ``commit_timeout`` (4 s), a disconnect by
``close_timeout`` (2 s). The driver's other timeouts (``request_timeout_ms`` 30 s,
``delivery_timeout_ms`` 2 min, ``connections_max_idle_ms``, ``session_timeout_ms``,
``max_poll_interval_ms``) run on the driver's own thread, not the actor's; records in
flight are watched by ``ack_timeout`` instead. None of our keys accepts ``inf``;
``bootstrap_timeout_ms``/``max_block_ms`` set to None or inf (kafka-python: "forever")
are reported by ``sessions check`` (``Options.unbounded_waits()``).

``abort(resource)`` (the runtime gave up on a stalled incarnation) works from another
thread without blocking: it shuts the client's broker sockets down, stops the
producer's sender thread (every record in flight fails) or the consumer's IO thread,
and fails every caller waiting on the driver (a ``send()`` waiting for metadata, a
``flush()``, a consumer ``poll()``/``commit()``/``committed()``) with
``KafkaAborted``. The disconnect that follows closes the aborted client without
flushing or leaving the group.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import json
import logging
import math
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from kafka import KafkaConsumer, KafkaProducer
from kafka import errors as kerr
from kafka.net.compat import KafkaNetClient
from kafka.structs import MemberState, OffsetAndMetadata, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from sessions._redact import redact
from sessions._runtime.contract import Deferred, ResourceActor

__all__ = [
    "AckTimeout",
    "ConsumerOptions",
    "KafkaAborted",
    "KafkaConsumerActor",
    "KafkaProducerActor",
    "ProducerClosed",
    "ProducerOptions",
    "Record",
    "RecordDecodeError",
    "SendResult",
]

log = logging.getLogger("sessions.kafka")

_LINK_CHECK = 0.2
"""Seconds between broker-connection checks while acknowledgements are awaited."""

_ABORT_JOIN = 0.5
"""Seconds a disconnect after ``abort()`` waits for the driver's own thread (the
producer's sender, the consumer's IO thread) to end: abort() has told it to stop, and
the runtime gives an aborted incarnation about a second to end."""

_PRODUCER_STATE_ERRORS: tuple[type[BaseException], ...] = (
    kerr.UnknownProducerIdError,
    kerr.OutOfOrderSequenceNumberError,
    kerr.InvalidProducerEpochError,
    kerr.ProducerFencedError,
)
"""Errors that leave an idempotent producer's id/sequence state unusable."""


# -- results ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendResult:
    """Where the broker stored a record: returned by ``send`` once it is acknowledged."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    """Milliseconds since the epoch (the broker's LogAppendTime or the record's
    CreateTime), -1 if unknown."""


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


class AckTimeout(kerr.KafkaTimeoutError):  # type: ignore[misc]  # kafka is untyped
    """No acknowledgement within ``ack_timeout``: a fault, whatever the connection says.

    The driver retries every retriable error itself (lost connections, leader changes,
    and after a broker restart ``UnknownProducerIdError`` in a loop that only ends at
    ``delivery_timeout_ms``, 2 minutes), so a record that gets no answer in time means
    this producer instance is not making progress: replace it. The record may still be
    written (outcome unknown), which is what ``ResourceFault`` says.
    """


class KafkaAborted(kerr.KafkaError):  # type: ignore[misc]  # kafka is untyped
    """The runtime aborted this connection (``abort()``: a call ran past
    ``stall_timeout``, or a stop past ``shutdown_timeout``); what was blocked on it
    fails with this. A fault. Not retriable, so that kafka-python's own retry loops
    (a metadata wait in ``send()``) give up at once instead of retrying it."""

    retriable = False


class ProducerClosed(kerr.KafkaError):  # type: ignore[misc]  # kafka is untyped
    """A record's producer was closed before the broker acknowledged the record: the
    resource broke (for another reason than the one its ``__cause__`` may show) or was
    stopped while the record was in flight. A fault: its caller gets ``ResourceFault``,
    outcome unknown. ``__cause__`` is the closing driver's own error."""


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


# -- helpers ------------------------------------------------------------------------------


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


class _ClientTrap:
    """A ``kafka_client`` factory that keeps the network client it builds.

    kafka-python 3.0.12 starts a consumer's IO thread before bootstrapping and leaves
    it running when the bootstrap fails (the constructor raises, so the caller never
    gets the object to close). Keeping the client lets ``connect`` close it. It also
    gives the actor the connection table to watch (a dead broker raises nothing), and
    ``abort()`` a client to tear down while the constructor still bootstraps.
    """

    def __init__(self, base: Callable[..., Any]) -> None:
        self.base = base
        self.clients: list[Any] = []
        self.aborted: BaseException | None = None

    def __call__(self, **configs: Any) -> Any:
        client = self.base(**configs)
        self.clients.append(client)
        if self.aborted is not None:  # abort() came while this client was being built
            _abort_client(client, self.aborted)
        return client

    def abort(self, error: BaseException) -> None:
        """From another thread: make the constructor's bootstrap fail now."""
        self.aborted = error
        for client in list(self.clients):
            _abort_client(client, error)

    def close_all(self) -> None:
        for client in self.clients:
            try:
                _close_client(client, aborted=self.aborted is not None)
            except Exception as exc:  # best effort: we are already failing
                log.debug("closing a kafka client after a failed start: %r", exc)


def _open(
    cls: Callable[..., Any], driver: Mapping[str, Any], trap: _ClientTrap | None = None
) -> tuple[Any, Any]:
    """``cls(**driver)`` (a KafkaProducer or KafkaConsumer) and the network client it
    built; that client is closed if the constructor fails (see ``_ClientTrap``)."""
    if trap is None:
        trap = _ClientTrap(driver.get("kafka_client", KafkaNetClient))
    try:
        made = cls(**{**driver, "kafka_client": trap})
    except BaseException:
        trap.close_all()
        raise
    return made, (trap.clients[-1] if trap.clients else None)


# -- abort: tearing a connection down under a blocked call -----------------------------
#
# kafka-python 3.0.12 does all its socket I/O in one event loop (kafka.net.selector)
# over non-blocking sockets: the producer's sender thread drives it, the consumer runs
# it on its own IO thread. A caller is never blocked in a socket call but waits for the
# loop: in ``threading.Event.wait`` for a topic's metadata (producer ``send()``,
# ``partitions_for()``), on a batch's latch (``flush()``), or, in the consumer, in
# ``NetworkSelector.run()`` for a coroutine on the IO thread (``poll()``, ``commit()``,
# ``committed()``, ``close()``). So abort() releases those waits and stops the loop
# rather than relying on a socket error alone. It reaches into the driver's private
# attributes (checked against 3.0.12, each with getattr so another version degrades to
# "sockets shut down and the loop woken").


def _client_sockets(client: Any) -> list[socket.socket]:
    """Every socket of ``client``: established broker connections and the ones still
    being set up (registered in the loop's selector), not the loop's wake-up pair."""
    socks: list[socket.socket] = []
    conns = getattr(getattr(client, "_manager", None), "_conns", None)
    if isinstance(conns, dict):
        for conn in list(conns.values()):  # list() of a dict: one step under the GIL
            sock = getattr(getattr(conn, "transport", None), "_sock", None)
            if isinstance(sock, socket.socket):
                socks.append(sock)
    net = getattr(client, "_net", None)
    keys = getattr(getattr(net, "_selector", None), "_fd_to_key", None)
    wake = getattr(net, "_wakeup_r", None)
    if isinstance(keys, dict):
        for key in list(keys.values()):
            sock = getattr(key, "fileobj", None)
            if isinstance(sock, socket.socket) and sock is not wake and sock not in socks:
                socks.append(sock)
    return socks


def _abort_client(client: Any, error: BaseException) -> None:
    """Tear ``client`` (a kafka-python network client) down under whoever waits on it,
    from another thread, without blocking. Idempotent; never raises.

    1. ``shutdown(SHUT_RDWR)`` every socket: the broker sees the connection end, and
       the loop sees EOF and fails the requests in flight on it.
    2. Fail the waits callers are blocked in: the bootstrap future (a constructor still
       bootstrapping), the metadata future a producer's ``send()`` waits for (with a
       non-retriable error, so its retry loop ends), and with an IO thread (consumer):
       every caller blocked in ``NetworkSelector.run()``. ``_exception`` makes every
       later ``run()`` raise at once, and ``_stop`` ends the IO thread.
    3. Wake the loop's ``select()``.
    """
    manager: Any = getattr(client, "_manager", None)
    net: Any = getattr(client, "_net", None)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("shut its sockets down", lambda: _shutdown_all(_client_sockets(client))),
        ("fail its bootstrap", lambda: _fail_bootstrap(manager, error)),
        ("release its callers", lambda: _release_callers(manager, net, error)),
        ("wake its loop", lambda: net.wakeup() if net is not None else None),
    ]
    for what, step in steps:  # each on its own: abort() must do all it can, never raise
        try:
            step()
        except Exception as exc:
            log.warning("aborting a kafka client: could not %s: %r", what, exc)


def _shutdown_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _fail_bootstrap(manager: Any, error: BaseException) -> None:
    """A constructor still bootstrapping waits for this future (with or without an IO
    thread); failing it ends the wait."""
    bootstrap = getattr(manager, "_bootstrap_future", None)
    if bootstrap is not None and not getattr(bootstrap, "is_done", True):
        bootstrap.failure(error)


def _release_callers(manager: Any, net: Any, error: BaseException) -> None:
    if getattr(net, "_io_thread", None) is not None:
        # The loop runs on its own thread (consumer): its coroutines must not be resumed
        # from here. Fail the callers blocked in run() and stop the loop; later run()
        # calls raise at once.
        if getattr(net, "_exception", None) is None:
            net._exception = error
        net._stop = True
        fail = getattr(net, "_fail_pending_waiters", None)
        if callable(fail):
            fail(error)
    else:
        # No IO thread (producer): a send() waits on a threading.Event that the metadata
        # future's callbacks set; a non-retriable error ends its retry loop.
        failed_update = getattr(getattr(manager, "cluster", None), "failed_update", None)
        if callable(failed_update):
            failed_update(error)


def _close_client(client: Any, *, aborted: bool) -> None:
    """Close a network client; after ``_abort_client`` first let its IO thread end
    (``close()`` would otherwise block in a ``run()`` nobody serves, or raise the abort
    error from ``call_soon_threadsafe`` half-way)."""
    if aborted:
        net: Any = getattr(client, "_net", None)
        thread = getattr(net, "_io_thread", None)
        if isinstance(thread, threading.Thread):
            if thread is not threading.current_thread():
                thread.join(_ABORT_JOIN)
            if thread.is_alive():
                log.warning("kafka IO thread %s did not end after abort(); left behind",
                            thread.name)
                return
            net._io_thread = None
            net._exception = None  # the loop is gone: close() may run it on this thread
    client.close()


def _abort_producer(producer: Any, client: Any, error: BaseException) -> None:
    """``abort()`` of a KafkaProducer: its sender thread stops (failing every record
    still in flight: their callers get the abort as a fault), and a ``send()`` waiting
    for a topic's metadata or a ``flush()`` returns now. Never blocks or raises."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        try:
            sender.force_close()  # flags and a wake-up: the sender ends its loop
        except Exception as exc:
            log.warning("aborting a kafka producer's sender failed: %r", exc)
    if client is not None:
        _abort_client(client, error)


def _link_up(client: Any) -> bool:
    """Whether the client has at least one live broker connection.

    kafka-python 3.0.12's ``bootstrap_connected()`` is only true while a bootstrap is
    in progress, so it cannot tell a dead broker from a live one; the connection table
    can. An unknown client implementation counts as connected (no false faults).
    """
    conns = getattr(getattr(client, "_manager", None), "_conns", None)
    if conns is None:
        return True
    return any(getattr(conn, "connected", False) for conn in list(conns.values()))


def _is_link_fault(exc: BaseException, client: Any, closed: bool) -> bool:
    """The fault rules shared by producer and consumer (see the module table)."""
    if closed:
        return True
    if isinstance(exc, (kerr.KafkaConnectionError, kerr.NodeNotReadyError)):
        return True
    if isinstance(exc, kerr.KafkaTimeoutError):
        return not _link_up(client)
    return False


class _LinkWatch:
    """How long no broker connection has been up: a dead broker makes kafka-python
    retry silently, so the producer, the consumer and the dead-letter wait watch it."""

    __slots__ = ("down_since",)

    def __init__(self) -> None:
        self.down_since: float | None = None

    def down_for(self, client: Any, now: float) -> float:
        """Seconds without any broker connection as of ``now`` (0 while one is up, and
        at the first look that finds none)."""
        if _link_up(client):
            self.down_since = None
            return 0.0
        if self.down_since is None:
            self.down_since = now
        return now - self.down_since

    def reset(self) -> None:
        self.down_since = None


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
    link = _LinkWatch()
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


def _close_producer(producer: Any, timeout: float, *, aborted: bool = False) -> None:
    """Close a KafkaProducer within about ``timeout`` seconds, whatever state it is in.

    kafka-python 3.0.12's ``close(timeout)`` flushes first and *raises* when records
    cannot be delivered in time (dead broker), leaving its sender thread running and
    ``__del__`` to raise again later. Then we force the sender down ourselves. An
    aborted producer is not flushed at all (its sender is already told to stop).
    """
    if not aborted:
        try:
            producer.close(timeout=timeout)
            return
        except Exception as exc:
            log.debug("KafkaProducer.close() gave up (%r); forcing it", exc)
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()  # fails the pending records, closes the network client
        sender.join(timeout)
        if sender.is_alive():
            log.warning("kafka producer sender thread did not end within %ss; left behind",
                        timeout)
    metrics = getattr(producer, "_metrics", None)
    if metrics is not None:
        metrics.close()
    unregister = getattr(producer, "_unregister_cleanup", None)
    if callable(unregister):
        unregister()  # its atexit hook would only find it closed
    producer._closed = True  # so that __del__ does not try (and raise) again


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
            _close_client(client, aborted=True)
    finally:
        if metrics is not None:
            metrics.close()


# -- options ------------------------------------------------------------------------------


class _KafkaOptions(BaseModel):
    """Common shape: our own keys as fields, kafka-python settings as extra keys.

    Extra keys are checked against the driver's own settings so a typo is a
    ``ConfigError`` naming the key (never echoing its value: it may be a password).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    _driver_keys: ClassVar[frozenset[str]] = frozenset()
    _reserved: ClassVar[Mapping[str, str]] = {}

    bootstrap_servers: str | list[str] = Field(
        description="Broker addresses, 'host:port' or a list of them."
    )
    fault_after: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "Seconds without any broker connection (while there is work: acks "
            "awaited, a subscription) after which the resource counts as broken "
            "and is restarted. A dead broker makes kafka-python retry silently."
        ),
    )
    close_timeout: float = Field(
        2.0,
        ge=0,
        allow_inf_nan=False,
        description=(
            "Seconds a disconnect may spend flushing/leaving the group. Keep it below "
            "shutdown_timeout (default 5 s). An aborted connection is not flushed."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _check_driver_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        errors: list[InitErrorDetails] = []
        for key, value in data.items():
            if key in cls.model_fields:
                continue
            if key in cls._reserved:  # serializer-like keys: their values are no secret
                shown = value if isinstance(value, (str, bool, int, type(None))) else "..."
                errors.append(
                    InitErrorDetails(
                        type=PydanticCustomError("reserved_key", cls._reserved[key]),
                        loc=(key,),
                        input=shown,
                    )
                )
            elif key not in cls._driver_keys:
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=None))
        if data.get("on_handler_error") == "dead_letter" and not data.get("dead_letter_topic"):
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError(
                        "dead_letter_topic", "on_handler_error = 'dead_letter' needs it"
                    ),
                    loc=("dead_letter_topic",),
                    input=None,
                )
            )
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data

    def unbounded_waits(self) -> list[tuple[str, str]]:
        """``(config path, message)`` per kafka-python setting that makes a wait on the
        actor thread unbounded (``sessions check`` warns about each)."""
        extra = self.model_extra or {}
        found = [
            (key, message)
            for key, why in _BOUNDED_DRIVER_KEYS.items()
            if key in extra and (message := _unbounded_message(extra[key], why)) is not None
        ]
        dead_letter = getattr(self, "dead_letter_options", None) or {}
        value = dead_letter.get("max_block_ms")
        if "max_block_ms" in dead_letter and (
            message := _unbounded_message(value, _BOUNDED_DRIVER_KEYS["max_block_ms"])
        ):
            found.append(("dead_letter_options.max_block_ms", message))
        return found


_BOUNDED_DRIVER_KEYS: Mapping[str, str] = {
    "bootstrap_timeout_ms": (
        "the constructor's bootstrap in connect() then waits for a broker forever, until "
        "connect_timeout abandons it (default here: 5000)"
    ),
    "max_block_ms": (
        "send() and partitions_for() then wait on the actor thread for a topic's "
        "metadata forever, until the stall watchdog aborts them (default here: "
        "ack_timeout, or commit_timeout for the dead-letter producer)"
    ),
}
"""kafka-python settings that bound a wait on the actor thread, and what it means when
one is unbounded (``None``, ``inf``: kafka-python then waits forever)."""


def _unbounded_message(value: Any, why: str) -> str | None:
    """The warning for a setting of ``value`` if that is unbounded, else None."""
    if value is None or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and not value < math.inf
    ):
        return f"= {value!r} is unbounded: {why}"
    return None


class ProducerOptions(_KafkaOptions):
    """Options of a ``kafka_producer``. Any other ``KafkaProducer`` setting (``acks``,
    ``linger_ms``, ``compression_type``, ``security_protocol``, ``sasl_*``, ``ssl_*``,
    ``bootstrap_timeout_ms``, ``max_block_ms``, ...) may be given too and is passed
    through; idempotence stays on unless those settings turn it off."""

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


class ConsumerOptions(_KafkaOptions):
    """Options of a ``kafka_consumer``. Any other ``KafkaConsumer`` setting
    (``auto_offset_reset``, ``session_timeout_ms``, ``max_poll_interval_ms``,
    ``security_protocol``, ...) may be given too and is passed through."""

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


def _bounded(driver: Mapping[str, Any]) -> dict[str, Any]:
    """Driver settings with our fail-fast default for the bootstrap."""
    return {"bootstrap_timeout_ms": 5000, **driver}


class _Conn:
    """One connection (a KafkaProducer or KafkaConsumer) and what belongs to it alone.

    Kept per connection, not on the actor, because an abandoned incarnation may still
    be disconnecting (after ``abort()``) while its successor has connected: each
    ``disconnect(resource)`` and ``abort(resource)`` touches its own connection only.
    """

    __slots__ = ("aborted", "broken", "client", "dlq", "dlq_client", "resource")

    def __init__(self, resource: Any, client: Any) -> None:
        self.resource = resource
        self.client = client
        self.dlq: Any = None
        """The consumer's dead-letter producer, if any."""
        self.dlq_client: Any = None
        self.broken: BaseException | None = None
        """Why this producer was declared broken (the poll hook, or abort()): the error
        its records still in flight fail with."""
        self.aborted = False


def _aborted_error(name: str) -> KafkaAborted:
    return KafkaAborted(
        f"the connection of resource {name!r} was aborted by the runtime (a call ran past "
        "stall_timeout, or a stop past shutdown_timeout)"
    )


# -- producer -----------------------------------------------------------------------------


class KafkaProducerActor(ResourceActor):
    """One ``KafkaProducer``; sends are in flight together (see the module docstring)."""

    kind = "kafka_producer"
    Options: ClassVar[type[BaseModel]] = ProducerOptions
    poll_interval = 0.1
    """How often the poll hook checks the records in flight (ack age, broker link)."""

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        serializer: Literal["raw", "json"] = "raw",
        ack_timeout: float = 4.0,
        fault_after: float = 2.0,
        close_timeout: float = 2.0,
        **driver_options: Any,
    ) -> None:
        super().__init__()
        self.serializer = serializer
        self.ack_timeout = ack_timeout
        self.fault_after = fault_after
        self.close_timeout = close_timeout
        # A send must not block the actor for kafka-python's default 60 s when the topic
        # metadata cannot be fetched.
        self._driver = {
            "max_block_ms": int(ack_timeout * 1000),
            **_bounded(driver_options),
            "bootstrap_servers": bootstrap_servers,
        }
        self._client: Any = None
        self._in_flight: deque[tuple[float, Any]] = deque()
        """(handed to the driver at, kafka future) of the current producer, oldest first."""
        self._link = _LinkWatch()
        self._conn: _Conn | None = None
        """The current connection (None while disconnected)."""
        self._conns: dict[int, _Conn] = {}
        """Every connection not yet disconnected, by id() of its KafkaProducer."""
        self._opening: _ClientTrap | None = None
        """The client trap of a connect() in progress (for abort(None))."""

    # -- lifecycle ------------------------------------------------------------------------

    def connect(self) -> Any:
        """A new KafkaProducer (a new producer id: idempotence state starts fresh)."""
        trap = self._opening = _ClientTrap(self._driver.get("kafka_client", KafkaNetClient))
        try:
            producer, client = _open(KafkaProducer, self._driver, trap)
        finally:
            self._opening = None
        conn = _Conn(producer, client)
        self._conns[id(producer)] = conn
        if trap.aborted is not None:
            # abort(None) raced the constructor's last step: this incarnation has been
            # abandoned, and its successor may be serving. Leave the actor's state alone.
            conn.aborted, conn.broken = True, trap.aborted
            _abort_producer(producer, client, trap.aborted)
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
        _close_producer(resource, _ABORT_JOIN if aborted else self.close_timeout,
                        aborted=aborted)

    def abort(self, resource: Any) -> None:
        """From another thread: stop the producer's sender (every record in flight fails
        with ``KafkaAborted``), shut its broker sockets down, and release a ``send()``
        waiting for a topic's metadata and a ``flush()``. ``resource`` None: make the
        constructor's bootstrap of a ``connect()`` in progress fail now."""
        error = _aborted_error(self.name)
        if resource is None:
            trap = self._opening
            if trap is not None:
                trap.abort(error)
            return
        conn = self._conns.get(id(resource))
        if conn is None:  # not (or no longer) ours: still stop whatever it is doing
            _abort_producer(resource, None, error)
            return
        if conn.broken is None:
            conn.broken = error
        conn.aborted = True
        _abort_producer(resource, conn.client, error)

    def is_fault(self, exc: BaseException) -> bool:
        producer = self.resource
        if isinstance(exc, (*_PRODUCER_STATE_ERRORS, AckTimeout, KafkaAborted, ProducerClosed)):
            return True
        manager = getattr(producer, "_transaction_manager", None)
        if manager is not None and manager.has_fatal_error():
            return True  # e.g. InitProducerId failed: this instance will never send again
        return _is_link_fault(exc, self._client, bool(getattr(producer, "_closed", False)))

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
        broken: BaseException | None = None
        if now - in_flight[0][0] >= self.ack_timeout:
            broken = AckTimeout(
                f"no acknowledgement from the broker within ack_timeout={self.ack_timeout}s"
            )
        elif self._link.down_for(self._client, now) >= self.fault_after:
            broken = kerr.KafkaConnectionError(
                f"no connection to any broker for fault_after={self.fault_after}s while "
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
        elif self.serializer == "json":
            payload = json.dumps(value, separators=(",", ":")).encode("utf-8")
        else:
            try:
                payload = _to_bytes(value, "value")
            except TypeError as err:
                raise TypeError(f'{err} (serializer = "json" sends other values)') from None
        key_bytes = None if key is None else _to_bytes(key, "key")
        sent = self.resource.send(
            topic,
            value=payload,
            key=key_bytes,
            headers=_headers(headers),
            partition=partition,
            timestamp_ms=timestamp_ms,
        )
        done: concurrent.futures.Future[SendResult] = concurrent.futures.Future()
        self._in_flight.append((time.monotonic(), sent))
        sent.add_callback(_acknowledged, done)
        sent.add_errback(self._send_failed, done, self._conn)
        return Deferred(done)

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record handed to the driver is acknowledged (or failed).

        ``timeout`` defaults to ``ack_timeout``; not flushed in time is a fault.
        """
        wait = timeout if timeout is not None else self.ack_timeout
        if not 0 <= wait < math.inf:
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {wait!r}")
        conn = self._conn
        try:
            self.resource.flush(wait)
        except kerr.KafkaTimeoutError as err:  # the same stuck producer as a late ack
            raise AckTimeout(f"records not acknowledged within {wait}s") from err
        if conn is not None and conn.aborted:  # abort() failed what was in flight
            raise conn.broken or _aborted_error(self.name)

    def partitions_for(self, topic: str) -> list[int]:
        """The partition ids of ``topic`` (fetches its metadata if needed)."""
        return sorted(self.resource.partitions_for(topic) or ())

    # -- internals ------------------------------------------------------------------------

    def _send_failed(
        self, done: concurrent.futures.Future[SendResult], conn: _Conn | None, exc: BaseException
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
                f"({redact(repr(exc))}); its outcome is unknown"
            )
            reason.__cause__ = exc
        done.set_exception(reason)



def _acknowledged(done: concurrent.futures.Future[SendResult], md: Any) -> None:
    timestamp = md.timestamp if md.timestamp is not None else -1
    done.set_result(SendResult(md.topic, md.partition, md.offset, timestamp))


# -- consumer -----------------------------------------------------------------------------


class KafkaConsumerActor(ResourceActor):
    """One ``KafkaConsumer`` in a group; handler mode or manual mode (module docstring)."""

    kind = "kafka_consumer"
    Options: ClassVar[type[BaseModel]] = ConsumerOptions

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        group_id: str,
        *,
        topics: Sequence[str] | str = (),
        handler: str | Callable[[Record], Any] | None = None,
        on_handler_error: Literal["retry", "skip", "dead_letter"] = "retry",
        dead_letter_topic: str | None = None,
        dead_letter_options: Mapping[str, Any] | None = None,
        max_retries: int | None = None,
        retry_backoff: float = 0.5,
        retry_backoff_max: float = 30.0,
        deserializer: Literal["raw", "str", "json"] = "raw",
        max_records: int = 100,
        poll_interval: float = 0.05,
        rebalance_poll_timeout: float = 2.0,
        commit_timeout: float = 4.0,
        fault_after: float = 10.0,
        close_timeout: float = 2.0,
        **driver_options: Any,
    ) -> None:
        super().__init__()
        if on_handler_error == "dead_letter" and not dead_letter_topic:
            raise ValueError("on_handler_error = 'dead_letter' needs dead_letter_topic")
        self.group_id = group_id
        self._handler = _resolve_handler(handler) if isinstance(handler, str) else handler
        self.on_handler_error = on_handler_error
        self.dead_letter_topic = dead_letter_topic
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.deserializer = deserializer
        self.max_records = max_records
        self.poll_interval = poll_interval
        self.rebalance_poll_timeout = rebalance_poll_timeout
        self.commit_timeout = commit_timeout
        self.fault_after = fault_after
        self.close_timeout = close_timeout
        self._driver = {
            "auto_offset_reset": "earliest",
            **_bounded(driver_options),
            "bootstrap_servers": bootstrap_servers,
            "group_id": group_id,
            "enable_auto_commit": False,
        }
        self._dlq_driver: dict[str, Any] | None = None
        if dead_letter_topic:
            shared = {
                k: v
                for k, v in self._driver.items()
                if k in KafkaProducer.DEFAULT_CONFIG
                and k not in ("client_id", "kafka_client", "max_in_flight_requests_per_connection")
            }
            # A dead-letter send runs on the actor thread: its metadata wait is bounded
            # like the rest of the consumer's waits (kafka-python: 60 s).
            self._dlq_driver = {
                "max_block_ms": int(commit_timeout * 1000),
                **shared,
                **(dead_letter_options or {}),
            }
        self._client: Any = None
        self._dlq: Any = None
        self._dlq_client: Any = None
        self._conn: _Conn | None = None
        """The current connection (None while disconnected)."""
        self._conns: dict[int, _Conn] = {}
        """Every connection not yet disconnected, by id() of its KafkaConsumer."""
        self._opening: _ClientTrap | None = None
        """The client trap of a connect() in progress (for abort(None))."""
        # Per-connection state (reset by connect):
        self._buffer: deque[Any] = deque()
        """Records polled but not yet handled/fetched, in poll order."""
        self._delivered: dict[TopicPartition, int] = {}
        """Manual mode: next offset per partition after the records fetch() returned."""
        self._retry_at: dict[TopicPartition, float] = {}
        """Partitions paused until a failed record's retry is due (monotonic time)."""
        self._link = _LinkWatch()
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
        topic_list = [topics] if isinstance(topics, str) else list(topics)
        if topic_list:
            self.replay("subscribe", self._subscribe_step(topic_list))

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
        trap = self._opening = _ClientTrap(self._driver.get("kafka_client", KafkaNetClient))
        dlq_trap: _ClientTrap | None = None
        try:
            consumer, client = _open(KafkaConsumer, self._driver, trap)
            conn = _Conn(consumer, client)
            if self._dlq_driver is not None:
                dlq_trap = self._opening = _ClientTrap(
                    self._dlq_driver.get("kafka_client", KafkaNetClient)
                )
                try:
                    conn.dlq, conn.dlq_client = _open(KafkaProducer, self._dlq_driver, dlq_trap)
                except BaseException:
                    if dlq_trap.aborted is not None:  # tear the consumer down the same way
                        _abort_client(client, dlq_trap.aborted)
                    _close_consumer(consumer, client, self.close_timeout,
                                    aborted=dlq_trap.aborted is not None)
                    raise
        finally:
            self._opening = None
        self._conns[id(consumer)] = conn
        if trap.aborted is not None or (dlq_trap is not None and dlq_trap.aborted is not None):
            # abort(None) raced the constructors' last steps: this incarnation has been
            # abandoned, and its successor may be serving. Leave the actor's state alone.
            self._abort_conn(conn, _aborted_error(self.name))
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
            conn = _Conn(resource, getattr(resource, "_client", None))
        if conn is self._conn:
            self._conn = None
            self._buffer.clear()
            self._dlq = self._dlq_client = None
        try:
            _close_consumer(resource, conn.client, self.close_timeout, aborted=conn.aborted)
        finally:
            if conn.dlq is not None:
                _close_producer(conn.dlq, _ABORT_JOIN if conn.aborted else self.close_timeout,
                                aborted=conn.aborted)

    def abort(self, resource: Any) -> None:
        """From another thread: fail every call blocked in the consumer (``poll()``,
        ``commit()``, ``committed()``, ``close()``) with ``KafkaAborted``, stop its IO
        thread, shut its broker sockets down; the same for the dead-letter producer.
        ``resource`` None: make the bootstrap of a ``connect()`` in progress fail now."""
        error = _aborted_error(self.name)
        if resource is None:
            trap = self._opening
            if trap is not None:
                trap.abort(error)
            return
        conn = self._conns.get(id(resource))
        if conn is None:
            conn = _Conn(resource, getattr(resource, "_client", None))
        self._abort_conn(conn, error)

    @staticmethod
    def _abort_conn(conn: _Conn, error: BaseException) -> None:
        conn.aborted = True
        if conn.client is not None:
            _abort_client(conn.client, error)
        if conn.dlq is not None:
            _abort_producer(conn.dlq, conn.dlq_client, error)

    def is_fault(self, exc: BaseException) -> bool:
        if isinstance(exc, (*_PRODUCER_STATE_ERRORS, AckTimeout, KafkaAborted)):
            return True  # (the first two: the dead-letter producer)
        closed = bool(getattr(self.resource, "_closed", False))
        return _is_link_fault(exc, self._client, closed)

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
        if down >= self.fault_after:
            raise kerr.KafkaConnectionError(
                f"no connection to any broker for {down:.1f}s (fault_after={self.fault_after}s)"
            )

    def _joining(self, consumer: Any) -> bool:
        return bool(consumer.group_metadata().state != MemberState.STABLE)

    def _poll_timeout(self, consumer: Any) -> float:
        """0 when the group is stable; while joining, long polls (see Options)."""
        return self.rebalance_poll_timeout if self._joining(consumer) else 0.0

    def _take(self, consumer: Any, timeout: float, limit: int | None = None) -> None:
        """Poll the driver into the buffer (bounded by max_records)."""
        room = (limit if limit is not None else self.max_records) - len(self._buffer)
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
        if value is not None and self.deserializer != "raw":
            try:
                text = value.decode("utf-8")
                value = json.loads(text) if self.deserializer == "json" else text
            except (UnicodeDecodeError, ValueError) as err:
                raise RecordDecodeError(
                    f"cannot decode the value of {raw.topic}[{raw.partition}]@{raw.offset} "
                    f"as {self.deserializer}: {err}",
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
                        redact(repr(exc)),
                    )

    def _after_failure(self, consumer: Any, tp: TopicPartition, raw: Any, exc: Exception) -> bool:
        """Apply on_handler_error; True: move past the record, False: retry it later."""
        where = f"{raw.topic}[{raw.partition}]@{raw.offset}"
        policy = self.on_handler_error
        if policy == "retry":
            key = (raw.topic, raw.partition, raw.offset)
            attempts = self._attempts.get(key, 0) + 1
            if self.max_retries is None or attempts <= self.max_retries:
                self._attempts[key] = attempts
                delay = min(self.retry_backoff * 2 ** (attempts - 1), self.retry_backoff_max)
                log.warning(
                    "kafka consumer %r: handler failed on %s (attempt %d), retrying in %.2fs: %s",
                    self.name,
                    where,
                    attempts,
                    delay,
                    redact(repr(exc)),
                )
                self._stats["retries"] += 1
                self._retry_later(consumer, tp, raw.offset, delay)
                return False
            self._attempts.pop(key, None)
            policy = "dead_letter" if self.dead_letter_topic else "skip"
            log.error(
                "kafka consumer %r: giving up on %s after %d retries (%s)",
                self.name,
                where,
                self.max_retries,
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
                    redact(repr(dlq_exc)),
                    self.retry_backoff_max,
                )
                self._retry_later(consumer, tp, raw.offset, self.retry_backoff_max)
                return False
            self._stats["dead_lettered"] += 1
            return True
        log.warning(
            "kafka consumer %r: handler failed on %s, skipped: %s",
            self.name,
            where,
            redact(repr(exc)),
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
            ("dlq.error", redact(repr(exc))[:1000].encode()),
        ]
        future = self._dlq.send(
            self.dead_letter_topic, value=raw.value, key=raw.key, headers=headers
        )
        stuck = _await_acks(
            [future], self._broker_wait_ms() / 1000, self.fault_after, self._dlq_client
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
        return int(min(self.commit_timeout, self.fault_after) * 1000)


# -- seed-compatible session manager ------------------------------------------------------
