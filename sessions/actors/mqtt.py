"""The ``mqtt`` kind: one supervised MQTT 3.1.1 client (paho-mqtt 2.x) per resource.

One actor owns one ``paho.mqtt.client.Client``: calls (publish, subscribe, unsubscribe)
run on the actor thread, one at a time. The client's network loop is a thread of the
connection (``sessions-<name>-mqtt-loop``, started with ``context.spawn``, joined by the
runtime) calling ``client.loop()``: it is the only code that reads the socket, and it
resolves publish acknowledgements, SUBACKs and incoming messages. paho's own automatic
reconnect is off (``reconnect_on_failure=False``): the supervisor reconnects. A
connection the loop sees break is reported with ``context.report_fault``, the resource
restarts on a new client, and a replay step subscribes again (paho forgets the
subscriptions of a broken connection; a broker restarted without persistence forgets
them too).

Configuration (``[resources.NAME]`` with ``kind = "mqtt"``; see :class:`MQTTOptions`)::

    [resources.telemetry]
    kind = "mqtt"
    host = "broker.example"
    port = 1883
    client_id = "plant-telemetry"     # default: sessions-<resource name>
    clean_session = true              # false: a persistent session on the broker
    username = "plant"
    password = "${MQTT_PASSWORD}"
    tls = true
    ca_certs = "/etc/ssl/certs/broker-ca.pem"
    will = { topic = "plant/status", payload = "offline", qos = 1, retain = true }
    queue_size = 1000                 # messages queued per subscription callback

Calls (through a handle; each returns a future):

* ``publish(topic, payload, qos=0, retain=False)``: resolves (``None``) once the broker
  acknowledged per QoS: QoS 0 when written to the socket, QoS 1 on PUBACK, QoS 2 on
  PUBCOMP (paho's ``on_publish``). The actor does not wait: a ``Deferred`` reply.
* ``subscribe(topic_filter, callback, qos=0)``: resolves once the broker granted it
  (SUBACK). ``callback(message)`` (an :class:`MQTTMessage`) runs on the subscription's
  own delivery thread (``sessions-<name>-mqtt-sub-<n>``) with a bounded queue
  (``queue_size``; the oldest message is dropped and counted when the callback falls
  behind). Subscribing the same filter again replaces its callback and QoS. Replayed
  after every reconnect.
* ``unsubscribe(topic_filter)``: resolves once the broker confirmed (UNSUBACK).
* ``subscriptions()``: each filter's QoS and delivery counters (delivered, dropped,
  errors, queued).

What is a fault, and what goes to the caller:

==============================================  ========================  ========================
what happened                                   the caller gets           the resource
==============================================  ========================  ========================
a bad topic (empty, wildcards in a publish      ``ValueError`` or         keeps running; nothing
topic, an invalid filter, NUL, longer than      ``TypeError``             was sent
65535 bytes), a payload of the wrong type or
larger than ``max_payload``, a QoS not 0..2,
a callback that is not callable
the broker refuses a subscription (SUBACK       ``SubscriptionRefused``   keeps running
0x80, e.g. an ACL)                              (a ``ValueError``)
the connection is refused (CONNACK), reset,     ``ResourceFault`` (cause: **fault**: restarted on a
closed, or keepalive expires; the network       ``ConnectionError``)      new client; subscriptions
loop dies                                                                 replayed
... while publishes wait for their ack          each of them:             **fault** (outcome of
                                                ``ResourceFault``         those publishes unknown)
a publish whose ack never comes                 ``CallTimeout``           keeps running; the reply
                                                (``started=True``) at     is dropped at
                                                ``stall_timeout``         ``stall_timeout``
no CONNACK or SUBACK within ``timeout``         ``ResourceFault`` (cause: **fault** (at connect: a
                                                ``TimeoutError``)         failed start, retried
                                                                          with backoff)
at connect: the login refused (``CONNACK: Not   nobody (calls wait for    failed start, retried
authorized``), the TLS handshake failed         the start, at most        with backoff
(certificate verification), the broker down     ``call_timeout``)
a call still blocked at ``stall_timeout``       ``ResourceFault``         **fault**: ``abort()``
                                                                          shuts the socket down
==============================================  ========================  ========================

Delivery is as MQTT promises it: QoS 0 at most once; QoS 1 and 2 survive a reconnect
only with ``clean_session = false`` (the broker keeps the session) and a broker that
keeps its sessions (mosquitto ``persistence true``). A message matching two
subscriptions of the resource goes to both callbacks.

paho-mqtt is imported lazily (when a resource connects), so this module, and
``MQTTSessionManager`` with it, can be imported without the ``mqtt`` extra.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from sessions._redact import describe
from sessions._runtime.abort import shutdown_socket
from sessions._runtime.contract import Deferred, ResourceActor
from sessions._runtime.fanout import Delivery

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__ = ["MQTTActor", "MQTTMessage", "MQTTOptions", "SubscriptionRefused", "WillOptions"]

log = logging.getLogger("sessions.mqtt")

#: The largest payload MQTT can carry (the remaining length is at most 268,435,455).
MAX_PAYLOAD = 268_435_455
#: The longest topic (a UTF-8 string with a 16-bit length).
MAX_TOPIC = 65_535

_LOOP_SLICE = 0.5  # seconds one client.loop() waits for the socket (a wake-up pair cuts it)
_DISCONNECT_WAIT = 1.0  # seconds disconnect() lets the loop write the DISCONNECT
_DELIVERY_JOIN = 2.0  # seconds disconnect() waits for running callbacks

_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]

Callback = Callable[["MQTTMessage"], object]


class SubscriptionRefused(ValueError):
    """The broker refused a subscription (SUBACK failure code, e.g. an ACL): the
    caller's problem, the connection is fine."""


@dataclasses.dataclass(frozen=True)
class MQTTMessage:
    """A message received on a subscription (plain data, safe to keep)."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


def check_topic(topic: Any, *, filter: bool = False) -> str:
    """``topic`` if it is a valid publish topic (``filter``: a valid topic filter);
    ``ValueError``/``TypeError`` otherwise."""
    what = "topic_filter" if filter else "topic"
    if not isinstance(topic, str):
        raise TypeError(f"{what} must be a str, got {topic!r}")
    if not topic:
        raise ValueError(f"{what} must not be empty")
    if "\0" in topic:
        raise ValueError(f"{what} must not contain NUL: {topic!r}")
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC:
        raise ValueError(f"{what} is longer than {MAX_TOPIC} bytes")
    if not filter:
        if "+" in topic or "#" in topic:
            raise ValueError(f"a publish topic must not contain wildcards (+, #): {topic!r}")
        return topic
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"'#' must be a whole last level of the filter: {topic!r}")
        if "+" in level and level != "+":
            raise ValueError(f"'+' must be a whole level of the filter: {topic!r}")
    return topic


def check_qos(qos: Any) -> int:
    if isinstance(qos, bool) or not isinstance(qos, int):
        raise TypeError(f"qos must be an int, got {qos!r}")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos}")
    return qos


def _payload_bytes(payload: Any, limit: int) -> bytes:
    if payload is None:
        data = b""
    elif isinstance(payload, str):
        data = payload.encode("utf-8")
    elif isinstance(payload, bytes | bytearray | memoryview):
        data = bytes(payload)
    elif isinstance(payload, int | float) and not isinstance(payload, bool):
        data = str(payload).encode("ascii")
    else:
        raise TypeError(
            f"payload must be bytes, str, int, float or None, got {type(payload).__name__}")
    if len(data) > limit:
        raise ValueError(f"payload of {len(data)} bytes is larger than max_payload ({limit})")
    return data


class WillOptions(BaseModel):
    """``will = { topic, payload, qos, retain }``: the message the broker publishes when
    the connection ends without a DISCONNECT (cut, keepalive expired, ``abort()``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(description="The will's topic (no wildcards).")
    payload: str = Field("", description="The will's payload (UTF-8 text).")
    qos: int = Field(0, ge=0, le=2, description="QoS 0, 1 or 2.")
    retain: bool = Field(False, description="Whether the broker retains the will.")

    @field_validator("topic")
    @classmethod
    def _topic(cls, topic: str) -> str:
        return check_topic(topic)


class MQTTOptions(BaseModel):
    """Config keys of an ``mqtt`` resource (besides the supervision keys); the one place
    they and their defaults are declared (``MQTTActor.Options``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("localhost", min_length=1, description="The broker's host.")
    port: int = Field(1883, ge=1, le=65535, description="The broker's TCP port (1883; "
                      "8883 is usual with TLS).")
    client_id: str | None = Field(
        None, min_length=1, description="The MQTT client id (default: sessions-<resource "
        "name>). Two clients with one id kick each other off the broker."
    )
    clean_session: bool = Field(
        True, description="MQTT 3.1.1 clean session. false: the broker keeps the session "
        "(subscriptions, QoS 1/2 messages queued while disconnected) under client_id."
    )
    keepalive: int = Field(60, ge=1, le=65535, description="Seconds between PINGREQs; "
                           "a broker silent for 1.5x this long is a lost connection.")
    username: str | None = Field(None, description="User name, if the broker wants one.")
    password: SecretStr | None = Field(
        None, description="Password (needs username); \"${ENV}\" reads it from the "
        "environment. Never logged."
    )
    tls: bool = Field(False, description="Connect with TLS (certificate verified).")
    ca_certs: str | None = Field(
        None, description="tls: a CA bundle file to verify the broker with (default: the "
        "system's)."
    )
    will: WillOptions | None = Field(None, description="The last will: {topic, payload, "
                                     "qos, retain}.")
    queue_size: int = Field(1000, ge=1, description="Messages queued per subscription "
                            "callback; when it falls further behind the oldest is dropped "
                            "and counted.")
    timeout: _Seconds = Field(5.0, description="Seconds to wait for the TCP connect, the "
                              "CONNACK, a SUBACK or an UNSUBACK; no answer in time is a "
                              "fault.")
    max_payload: int = Field(MAX_PAYLOAD, ge=0, le=MAX_PAYLOAD, description="The largest "
                             "payload publish() accepts (bytes); larger is a caller error.")

    @model_validator(mode="after")
    def _dependent_keys(self) -> MQTTOptions:
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        if self.ca_certs is not None and not self.tls:
            raise ValueError("ca_certs needs tls = true")
        return self


class _Subscription:
    """One topic filter: its QoS and its callback's delivery (kept across restarts,
    paused between connections)."""

    __slots__ = ("delivery", "qos", "topic_filter")

    def __init__(self, topic_filter: str, qos: int, delivery: Delivery[MQTTMessage]) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.delivery = delivery


class _Connection:
    """One paho client, its loop thread's state and the acknowledgements it owes."""

    def __init__(self, client: paho.Client) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.pending: dict[int, concurrent.futures.Future[Any]] = {}
        """mid -> the future of a publish/subscribe/unsubscribe awaiting its ack."""
        self.early: dict[int, Any] = {}
        """mid -> result of an ack that came before the actor registered its future."""
        self.closed = threading.Event()
        """Set by disconnect() and abort(): the loop ends quietly."""
        self.stopping = threading.Event()
        """Set by disconnect() before its DISCONNECT: the loop ends quietly."""
        self.connack: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        """The CONNACK: ``None`` if it accepted the connection, else the refusal's reason
        (paho's name of the reason code, e.g. ``"Not authorized"``)."""
        self.thread: threading.Thread | None = None

    def expect(self, mid: int) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self.lock:
            if self.closed.is_set():
                future.set_exception(ConnectionError("the MQTT connection is closed"))
            elif mid in self.early:
                _settle(future, self.early.pop(mid))
            else:
                self.pending[mid] = future
        return future

    def acked(self, mid: int, result: Any) -> None:
        """An acknowledgement (loop thread): ``result`` is a value or an exception."""
        with self.lock:
            future = self.pending.pop(mid, None)
            if future is None:
                if not self.closed.is_set():
                    self.early[mid] = result
                return
        _settle(future, result)

    def fail_all(self, error: BaseException) -> None:
        with self.lock:
            owed, self.pending = list(self.pending.values()), {}
            self.early.clear()
        for future in owed:
            _settle(future, error)
        if not self.connack.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self.connack.set_exception(error)


def _settle(future: concurrent.futures.Future[Any], result: Any) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class MQTTActor(ResourceActor):
    """One MQTT client connection (see the module docstring)."""

    kind: ClassVar[str] = "mqtt"

    Options = MQTTOptions
    config: MQTTOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # Actor state: survives restarts.
        self._subs: dict[str, _Subscription] = {}
        self._sub_list: tuple[_Subscription, ...] = ()  # the loop's lock-free snapshot
        self._sub_ids = itertools.count(1)
        self._retired: list[Delivery[MQTTMessage]] = []  # unsubscribed; joined at disconnect

    @classmethod
    def max_pool_size(cls, options: Mapping[str, Any]) -> tuple[int, str]:
        return 1, (
            "an MQTT client is one session on the broker: a pool would split "
            "subscriptions across members (configure another mqtt resource instead)"
        )

    # -- lifecycle --------------------------------------------------------------------

    def connect(self) -> _Connection:
        """Connect (TCP, TLS, CONNECT) and wait for the CONNACK; the loop thread runs
        from here on."""
        import paho.mqtt.client as paho  # noqa: PLC0415 - lazy driver import
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        config = self.config
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id(),
            clean_session=config.clean_session,
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        client.connect_timeout = config.timeout
        # Never write from the caller's thread: the loop thread does (it is woken).
        client.on_socket_register_write = _ignore
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        if config.tls:
            client.tls_set(ca_certs=config.ca_certs)
        if config.will is not None:
            will = config.will
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        conn = _Connection(client)
        client.on_connect = functools.partial(self._on_connect, conn)
        client.on_publish = functools.partial(self._on_publish, conn)
        client.on_subscribe = functools.partial(self._on_subscribe, conn)
        client.on_unsubscribe = functools.partial(self._on_unsubscribe, conn)
        client.on_message = self._on_message
        self._connection = conn  # what abort(None) shuts down while this runs
        try:
            client.connect(config.host, config.port, config.keepalive)
            if conn.closed.is_set():  # abort(None) while the TCP connect ran
                raise ConnectionAbortedError(f"the connect to {self._where()} was aborted")
            conn.thread = self.context.spawn(functools.partial(self._loop, conn),
                                             f"sessions-{self.name}-mqtt-loop")
            try:
                refusal = conn.connack.result(config.timeout)
            except concurrent.futures.TimeoutError:
                raise TimeoutError(
                    f"no CONNACK from {self._where()} within {config.timeout}s") from None
            if refusal is not None:
                raise ConnectionRefusedError(
                    f"{self._where()} refused the connection (CONNACK: {refusal})")
        except BaseException:
            self._close(conn)
            raise
        return conn

    def check_connection(self) -> str:
        """``sessions check --connect``: the broker sent a CONNACK accepting us."""
        return f"{self._where()}: connected as {self._client_id()!r}"

    def disconnect(self, resource: _Connection) -> None:
        deliveries = self._pause_deliveries()
        self._close(resource, graceful=True)
        retired, self._retired = self._retired, []
        deadline = time.monotonic() + _DELIVERY_JOIN
        for delivery in [*deliveries, *retired]:
            if not delivery.join(max(0.0, deadline - time.monotonic())):
                log.warning("mqtt %r: a subscriber callback is still running (%s); its "
                            "delivery thread ends when the callback returns",
                            self.name, delivery.name)

    def abort(self, resource: _Connection | None) -> None:
        """From another thread: shut the client's socket down (no DISCONNECT: the broker
        publishes the will). The loop wakes and ends; waiting acks fail. Non-blocking,
        idempotent, never raises."""
        conn = resource if resource is not None else getattr(self, "_connection", None)
        if conn is None:
            return
        conn.closed.set()
        with contextlib.suppress(Exception):
            shutdown_socket(conn.client.socket())
        with contextlib.suppress(Exception):
            conn.fail_all(ConnectionError("the MQTT connection was aborted"))
        for sub in self._sub_list:
            sub.delivery.pause()

    def is_fault(self, exc: BaseException) -> bool:
        """Connection errors (refused, reset, closed, timed out): any ``OSError``."""
        return isinstance(exc, OSError)

    # -- calls ------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes | str | float | None = b"",
                qos: int = 0, retain: bool = False) -> Deferred:
        """Publish ``payload`` on ``topic``; resolves once the broker acknowledged it per
        ``qos`` (0: written to the socket, 1: PUBACK, 2: PUBCOMP)."""
        import paho.mqtt.client as paho  # noqa: PLC0415

        check_topic(topic)
        check_qos(qos)
        if not isinstance(retain, bool):
            raise TypeError(f"retain must be a bool, got {retain!r}")
        data = _payload_bytes(payload, self.config.max_payload)
        conn = self.resource
        info = conn.client.publish(topic, data, qos, retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish on {topic!r} failed: {paho.error_string(info.rc)}")
        return Deferred(conn.expect(info.mid))

    def subscribe(self, topic_filter: str, callback: Callback, qos: int = 0) -> None:
        """Call ``callback(message)`` for every message matching ``topic_filter`` on the
        subscription's own delivery thread; returns once the broker granted it (SUBACK).
        Replayed after every reconnect; a filter subscribed again gets the new callback
        and QoS."""
        check_topic(topic_filter, filter=True)
        check_qos(qos)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        old = self._subs.get(topic_filter)
        sub_id = next(self._sub_ids)
        delivery: Delivery[MQTTMessage] = Delivery(
            callback, capacity=self.config.queue_size,
            name=f"sessions-{self.name}-mqtt-sub-{sub_id}",
            what=f"mqtt {self.name!r}: subscriber of {topic_filter!r}", start=False,
        )
        # In place before the SUBSCRIBE: a retained message may follow the SUBACK at once
        # (it waits in the delivery's queue until the delivery starts).
        self._set_sub(topic_filter, _Subscription(topic_filter, qos, delivery))
        try:
            self._request(self.resource, "subscribe", [(topic_filter, qos)])
        except BaseException:
            self._set_sub(topic_filter, old)  # as it was
            delivery.close(drain=False)
            raise
        if old is not None:
            self._retire(old)
        delivery.resume()
        self.replay("mqtt-subscriptions", self._replay)

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop ``topic_filter``'s subscription (UNSUBSCRIBE, confirmed by UNSUBACK); a
        callback running now finishes first. ``KeyError`` if it is not subscribed."""
        check_topic(topic_filter, filter=True)
        sub = self._subs.get(topic_filter)
        if sub is None:
            raise KeyError(f"{topic_filter!r} is not subscribed on {self.name!r}")
        self._set_sub(topic_filter, None)
        self._retire(sub)
        if not self._subs:
            self.forget("mqtt-subscriptions")
        self._request(self.resource, "unsubscribe", topic_filter)

    def subscriptions(self) -> dict[str, dict[str, int]]:
        """Each subscribed filter: its ``qos`` and its delivery's ``delivered``,
        ``dropped`` (queue full), ``errors`` (callback raised) and ``queued`` counts."""
        return {
            sub.topic_filter: {
                "qos": sub.qos,
                "delivered": sub.delivery.delivered,
                "dropped": sub.delivery.dropped,
                "errors": sub.delivery.errors,
                "queued": sub.delivery.pending(),
            }
            for sub in self._sub_list
        }

    # -- internals --------------------------------------------------------------------

    def _client_id(self) -> str:
        return self.config.client_id or f"sessions-{self.name}"

    def _where(self) -> str:
        return f"mqtt {self.config.host}:{self.config.port}"

    def _request(self, conn: _Connection, what: str, argument: Any) -> Any:
        """SUBSCRIBE or UNSUBSCRIBE, and wait (``timeout``) for the broker's answer."""
        import paho.mqtt.client as paho  # noqa: PLC0415

        rc, mid = getattr(conn.client, what)(argument)
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionError(f"{what} failed: {paho.error_string(rc)}")
        try:
            return conn.expect(mid).result(self.config.timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"{what}: no answer from {self._where()} within {self.config.timeout}s"
            ) from None

    def _replay(self, conn: _Connection) -> None:
        """A replay step (actor thread, after every reconnect): subscribe again, one
        SUBSCRIBE for every filter, and deliver again."""
        subs = self._sub_list
        if not subs:
            return
        try:
            self._request(conn, "subscribe", [(s.topic_filter, s.qos) for s in subs])
        except SubscriptionRefused as exc:
            log.error("mqtt %r: the broker refused a replayed subscription: %s",
                      self.name, exc)
        for sub in subs:
            sub.delivery.resume()

    def _set_sub(self, topic_filter: str, sub: _Subscription | None) -> None:
        if sub is None:
            self._subs.pop(topic_filter, None)
        else:
            self._subs[topic_filter] = sub
        self._sub_list = tuple(self._subs.values())

    def _retire(self, sub: _Subscription) -> None:
        sub.delivery.close(drain=False)
        self._retired = [d for d in self._retired if d.thread.is_alive()]
        self._retired.append(sub.delivery)

    def _pause_deliveries(self) -> list[Delivery[MQTTMessage]]:
        subs = self._sub_list
        for sub in subs:
            sub.delivery.pause()
        return [sub.delivery for sub in subs]

    def _close(self, conn: _Connection, *, graceful: bool = False) -> None:
        """End the connection: a DISCONNECT written by the loop thread (if ``graceful``
        and the loop still runs: bounded wait), then the socket shut down; the loop
        thread ends and closes it (the runtime joins it). Owed acks fail."""
        thread = conn.thread
        if graceful and not conn.closed.is_set() and thread is not None and thread.is_alive():
            conn.stopping.set()  # the loop ending now is no fault
            with contextlib.suppress(Exception):
                conn.client.disconnect()  # queued: the loop writes it, then closes
            thread.join(_DISCONNECT_WAIT)
        conn.closed.set()
        with contextlib.suppress(Exception):
            shutdown_socket(conn.client.socket())
        conn.fail_all(ConnectionError("the MQTT connection was closed"))

    # -- loop thread ------------------------------------------------------------------

    def _loop(self, conn: _Connection) -> None:
        """The connection's network loop: the only code that reads the socket."""
        import paho.mqtt.client as paho  # noqa: PLC0415

        rc = paho.MQTT_ERR_SUCCESS
        error: BaseException | None = None
        try:
            while not conn.closed.is_set():
                rc = conn.client.loop(_LOOP_SLICE)
                if rc != paho.MQTT_ERR_SUCCESS:
                    break
        except Exception as exc:
            error = exc
        finally:
            with contextlib.suppress(Exception):  # the socket and paho's wake-up pair
                conn.client._reset_sockets()
        if conn.closed.is_set() or conn.stopping.is_set():  # disconnect() or abort()
            conn.closed.set()
            return
        conn.closed.set()
        if error is None:
            error = ConnectionError(
                f"lost the connection to {self._where()}: {paho.error_string(rc)}")
        conn.fail_all(error if isinstance(error, OSError) else ConnectionError(describe(error)))
        log.warning("mqtt %r: %s", self.name, describe(error))
        self.context.report_fault(error, conn)

    # paho's callbacks (loop thread), VERSION2 signatures: (client, userdata, ...).

    def _on_connect(self, conn: _Connection, *args: Any) -> None:
        # client, userdata, flags, reason_code, properties. With MQTT 3.1.1 paho maps the
        # CONNACK return code to an MQTT 5 ReasonCode (5 "not authorised" becomes 135 "Not
        # authorized"): its name is the reason, its number is not the 3.1.1 code.
        reason_code = args[3]
        failed = getattr(reason_code, "is_failure", reason_code != 0)
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            conn.connack.set_result(str(reason_code) if failed else None)

    def _on_publish(self, conn: _Connection, *args: Any) -> None:
        conn.acked(args[2], None)  # client, userdata, mid, reason_code, properties

    def _on_subscribe(self, conn: _Connection, *args: Any) -> None:
        mid, reason_codes = args[2], args[3]  # client, userdata, mid, codes, properties
        refused = [c for c in reason_codes if getattr(c, "is_failure", False)]
        if refused:
            conn.acked(mid, SubscriptionRefused(
                f"the broker refused the subscription ({refused[0]})"))
        else:
            conn.acked(mid, [int(getattr(c, "value", c)) for c in reason_codes])

    def _on_unsubscribe(self, conn: _Connection, *args: Any) -> None:
        conn.acked(args[2], None)  # client, userdata, mid, reason_codes, properties

    def _on_message(self, client: paho.Client, userdata: Any, msg: Any) -> None:
        import paho.mqtt.client as paho  # noqa: PLC0415

        message = MQTTMessage(msg.topic, bytes(msg.payload), int(msg.qos), bool(msg.retain))
        for sub in self._sub_list:
            if paho.topic_matches_sub(sub.topic_filter, message.topic):
                sub.delivery.put(message)


def _ignore(*args: Any) -> None:
    """``on_socket_register_write``: paho then never writes from the caller's thread."""
