"""What the Kafka producer and consumer share: the errors both raise, the options base
(our keys as fields, kafka-python settings passed through and checked), opening a
driver with a trap for its network client, watching the broker link, and the abort
machinery that tears a connection down under a blocked call (see the package docstring
for the fault table and the bounded waits).
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from kafka import KafkaConsumer
from kafka import errors as kerr
from kafka.net.compat import KafkaNetClient
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from sessions._redact import describe
from sessions.actors.kafka import memory

log = logging.getLogger("sessions.kafka")

ABORT_JOIN = 0.5
"""Seconds a disconnect after ``abort()`` waits for the driver's own thread (the
producer's sender, the consumer's IO thread) to end: abort() has told it to stop, and
the runtime gives an aborted incarnation about a second to end."""

PRODUCER_STATE_ERRORS: tuple[type[BaseException], ...] = (
    kerr.UnknownProducerIdError,
    kerr.OutOfOrderSequenceNumberError,
    kerr.InvalidProducerEpochError,
    kerr.ProducerFencedError,
)
"""Errors that leave an idempotent producer's id/sequence state unusable."""


# -- errors ---------------------------------------------------------------------------


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


def aborted_error(name: str) -> KafkaAborted:
    return KafkaAborted(
        f"the connection of resource {name!r} was aborted by the runtime (a call ran past "
        "stall_timeout, or a stop past shutdown_timeout)"
    )


# -- opening a driver -----------------------------------------------------------------


class ClientTrap:
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
            abort_client(client, self.aborted)
        return client

    def abort(self, error: BaseException) -> None:
        """From another thread: make the constructor's bootstrap fail now."""
        self.aborted = error
        for client in list(self.clients):
            abort_client(client, error)

    def close_all(self) -> None:
        for client in self.clients:
            try:
                close_client(client, aborted=self.aborted is not None)
            except Exception as exc:  # best effort: we are already failing
                log.debug("closing a kafka client after a failed start: %r", exc)


def open_driver(
    cls: Callable[..., Any], driver: Mapping[str, Any], trap: ClientTrap | None = None
) -> tuple[Any, Any]:
    """``cls(**driver)`` (a KafkaProducer or KafkaConsumer) and the network client it
    built; that client is closed if the constructor fails (see ``ClientTrap``).

    ``bootstrap_servers = "memory://NAME"``: the in-memory stand-in for ``cls`` on the
    broker NAME (:mod:`sessions.actors.kafka.memory`), which is its own client."""
    if memory.is_memory_url(driver.get("bootstrap_servers")):
        consumer = isinstance(cls, type) and issubclass(cls, KafkaConsumer)
        client = memory.open_client("consumer" if consumer else "producer", driver)
        return client, client
    if trap is None:
        trap = ClientTrap(driver.get("kafka_client", KafkaNetClient))
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


def abort_client(client: Any, error: BaseException) -> None:
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

    A memory client (``memory://``) has no sockets nor loop: its own ``abort``.
    """
    if isinstance(client, memory.MemoryClient):
        client.abort(error)
        return
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
            log.warning("aborting a kafka client: could not %s: %s", what, describe(exc))


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


def close_client(client: Any, *, aborted: bool) -> None:
    """Close a network client; after ``abort_client`` first let its IO thread end
    (``close()`` would otherwise block in a ``run()`` nobody serves, or raise the abort
    error from ``call_soon_threadsafe`` half-way)."""
    if aborted:
        net: Any = getattr(client, "_net", None)
        thread = getattr(net, "_io_thread", None)
        if isinstance(thread, threading.Thread):
            if thread is not threading.current_thread():
                # run_forever() clears _stop when it begins: a stop set by abort()
                # before the new IO thread ran is lost, so set it again until it ends.
                deadline = time.monotonic() + ABORT_JOIN
                while thread.is_alive() and time.monotonic() < deadline:
                    net._stop = True
                    with contextlib.suppress(Exception):
                        net.wakeup()
                    thread.join(0.05)
            if thread.is_alive():
                log.warning("kafka IO thread %s did not end after abort(); left behind",
                            thread.name)
                return
            net._io_thread = None
            net._exception = None  # the loop is gone: close() may run it on this thread
    client.close()


def abort_producer(producer: Any, client: Any, error: BaseException) -> None:
    """``abort()`` of a KafkaProducer: its sender thread stops (failing every record
    still in flight: their callers get the abort as a fault), and a ``send()`` waiting
    for a topic's metadata or a ``flush()`` returns now. Never blocks or raises."""
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        try:
            sender.force_close()  # flags and a wake-up: the sender ends its loop
        except Exception as exc:
            log.warning("aborting a kafka producer's sender failed: %s", describe(exc))
    if client is not None:
        abort_client(client, error)


# -- the broker link ------------------------------------------------------------------


def link_up(client: Any) -> bool:
    """Whether the client has at least one live broker connection.

    kafka-python 3.0.12's ``bootstrap_connected()`` is only true while a bootstrap is
    in progress, so it cannot tell a dead broker from a live one; the connection table
    can. An unknown client implementation counts as connected (no false faults). A
    memory client (``memory://``) is connected while its broker is up.
    """
    if isinstance(client, memory.MemoryClient):
        return client.link_up()
    conns = getattr(getattr(client, "_manager", None), "_conns", None)
    if conns is None:
        return True
    return any(getattr(conn, "connected", False) for conn in list(conns.values()))


def is_link_fault(exc: BaseException, client: Any, closed: bool) -> bool:
    """The fault rules shared by producer and consumer (see the package docstring)."""
    if closed:
        return True
    if isinstance(exc, (kerr.KafkaConnectionError, kerr.NodeNotReadyError)):
        return True
    if isinstance(exc, kerr.KafkaTimeoutError):
        return not link_up(client)
    return False


class LinkWatch:
    """How long no broker connection has been up: a dead broker makes kafka-python
    retry silently, so the producer, the consumer and the dead-letter wait watch it."""

    __slots__ = ("down_since",)

    def __init__(self) -> None:
        self.down_since: float | None = None

    def down_for(self, client: Any, now: float) -> float:
        """Seconds without any broker connection as of ``now`` (0 while one is up, and
        at the first look that finds none)."""
        if link_up(client):
            self.down_since = None
            return 0.0
        if self.down_since is None:
            self.down_since = now
        return now - self.down_since

    def reset(self) -> None:
        self.down_since = None


# -- closing --------------------------------------------------------------------------


def close_producer(producer: Any, timeout: float, *, aborted: bool = False) -> None:
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


# -- options --------------------------------------------------------------------------


class KafkaOptions(BaseModel):
    """Common shape: our own keys as fields, kafka-python settings as extra keys.

    Extra keys are checked against the driver's own settings so a typo is a
    ``ConfigError`` naming the key (never echoing its value: it may be a password).
    Each kind declares its own ``fault_after`` (what counts as work differs).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    _driver_keys: ClassVar[frozenset[str]] = frozenset()
    _reserved: ClassVar[Mapping[str, str]] = {}

    bootstrap_servers: str | list[str] = Field(
        description="Broker addresses, 'host:port' or a list of them. 'memory://NAME' "
        "(optionally '?partitions=N'): the in-process broker NAME, for tests."
    )
    bootstrap_timeout_ms: int | float | None = Field(
        5000,
        description=(
            "Milliseconds connect() waits for a first broker (kafka-python's bootstrap; "
            "its default: 30000); passing api_version skips that bootstrap. None or inf: "
            "forever (sessions check warns)."
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

    @field_validator("bootstrap_servers")
    @classmethod
    def _memory_url(cls, value: str | list[str]) -> str | list[str]:
        """A ``memory://`` url is well formed and stands alone."""
        items = [value] if isinstance(value, str) else value
        if any(isinstance(v, str) and v.startswith(memory.SCHEME) for v in items):
            memory.parse_memory_url(value)
        return value

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
        errors += cls._cross_check(data)
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data

    @classmethod
    def _cross_check(cls, data: Mapping[str, Any]) -> list[InitErrorDetails]:
        """Problems between keys, reported with the unknown keys (a kind's own rules)."""
        return []

    def unbounded_waits(self) -> list[tuple[str, str]]:
        """``(config path, message)`` per kafka-python setting that makes a wait on the
        actor thread unbounded (``sessions check`` warns about each)."""
        return unbounded_driver_waits(self.driver_settings())

    def driver_settings(self) -> dict[str, Any]:
        """The kafka-python settings given: the ones declared here, then every one
        passed through."""
        return {"bootstrap_timeout_ms": self.bootstrap_timeout_ms, **(self.model_extra or {})}


def unbounded_driver_waits(driver: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """``(prefix + key, message)`` per setting of ``driver`` (kafka-python settings) that
    makes a wait on the actor thread unbounded."""
    return [
        (prefix + key, message)
        for key, why in _BOUNDED_DRIVER_KEYS.items()
        if key in driver and (message := _unbounded_message(driver[key], why)) is not None
    ]


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


# -- one connection -------------------------------------------------------------------


class Conn:
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
