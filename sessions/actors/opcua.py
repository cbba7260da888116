"""The ``opcua`` kind: one supervised OPC UA client session (asyncua) per resource.

asyncua is asyncio-only, and the actor thread must never run an event loop itself: each
connection has a private event loop on a thread of its own (``sessions-<name>-opcua-loop``,
started with ``context.spawn``, joined by the runtime after ``disconnect()``). The actor
thread submits one coroutine per call with ``asyncio.run_coroutine_threadsafe`` and waits
for it, so calls still run one at a time, in arrival order. asyncua's own reconnect is
off: a lost connection is reported with ``context.report_fault`` (asyncua's watchdog,
which reads the server's state every ``keepalive`` seconds, calls the client's
``connection_lost_callback``), the supervisor restarts the resource on a new client and
session, and a replay step creates the subscriptions again. With ``health_interval`` set
on the resource, ``health_check()`` also reads ``ServerStatus.State`` (``ns=0;i=2259``).

Configuration (``[resources.NAME]`` with ``kind = "opcua"``; see :class:`OPCUAOptions`)::

    [resources.line]
    kind = "opcua"
    url = "opc.tcp://10.0.0.7:4840/plant"
    timeout = 4.0             # seconds the server has to answer each request
    keepalive = 1.0           # seconds between asyncua's server-state probes
    username = "operator"     # optional, with password
    password = "${OPCUA_PASSWORD}"
    security = "Basic256Sha256,SignAndEncrypt,cert.der,key.pem"   # optional
    queue_size = 1000         # data changes queued per subscription callback

Calls (through a handle; each returns a future of plain data). A node is named by its
node id string (``"ns=2;s=Plant.Temperature"``, ``"ns=2;i=1001"``, ``"i=2259"``):

* ``read(node_id)``: the value; ``read_many(node_ids)``: their values, one request.
* ``write(node_id, value, variant_type=None)``: ``None``. Without ``variant_type`` (an
  ``asyncua.ua.VariantType`` or its name, ``"Int32"``) the node's data type is read once
  per connection, so that ``write("ns=2;s=Count", 5)`` writes an Int32 to an Int32 node.
* ``browse_path(path)``: the node id string at ``path``, a list of qualified names from
  the root (``["0:Objects", "2:Plant", "2:Temperature"]``).
* ``call_method(object_id, method_id, *args)``: the method's output (one value, a list
  of several, or ``None``); ``method_id`` is a node id or a qualified name (``"2:Add"``).
  Also named ``call``, which a handle reaches as ``handle.call("call", ...)``
  (``handle.call`` itself is the handle's generic call).
* ``subscribe(node_id, callback, period=0.25)``: ``callback(change)`` (an
  :class:`OPCUADataChange`) runs for the current value and every data change, on the
  subscription's own delivery thread (``sessions-<name>-opcua-sub-<n>``) with a bounded
  queue (``queue_size``; the oldest change is dropped and counted when the callback falls
  behind). Subscribing a node again replaces its callback and period. Replayed after
  every reconnect (the callback then gets the current value again).
* ``unsubscribe(node_id)``; ``subscriptions()``: each node's period and delivery counters.

What is a fault, and what goes to the caller:

==============================================  ========================  ========================
what happened                                   the caller gets           the resource
==============================================  ========================  ========================
a malformed node id, an unknown node            ``NodeError`` naming the  keeps running
(BadNodeIdUnknown), a type the node refuses     node, the operation and
(BadTypeMismatch, the server's or the kind's    the status (``status``,
own check before sending), not writable for     ``status_code``)
the session's user (BadUserAccessDenied,
BadNotWritable), a browse path or method name
that matches nothing (BadNoMatch), a method's
bad arguments (the server's status)
a bad argument (not a str, an unknown           ``TypeError`` or          keeps running; nothing
variant type, a callback not callable)          ``ValueError``            was sent
no answer within ``timeout`` (a frozen          ``ResourceFault`` (cause: **fault**: restarted on a
server)                                         ``TimeoutError``)         new session
the connection is refused, reset or closed;     ``ResourceFault`` (cause: **fault**: restarted;
a session or channel error (BadSessionId-       ``ConnectionError``,      subscriptions replayed
Invalid, BadSessionClosed, BadConnection-       ``OSError`` or the
Closed, BadSecureChannel..., BadTimeout,        ``UaStatusCodeError``)
BadServerHalted, BadShutdown...)
the watchdog (every ``keepalive`` s) finds the  nobody (reported with     **fault**: restarted
server gone, no call waiting                    ``report_fault``)
the connect at start fails or times out; the    nobody (calls wait, at    failed start: retried
login is refused (BadUserAccessDenied,          most ``call_timeout``)    with backoff
BadIdentityTokenRejected...: a
``ConnectionRefusedError`` naming the user and
the status); no endpoint has the ``security``
asked for (a ``ConnectionRefusedError``)
a call still blocked at ``stall_timeout``       ``ResourceFault``         **fault**: ``abort()``
                                                                          closes the transport
==============================================  ========================  ========================

``NodeError`` is this module's :class:`NodeError`, a ``sessions.SessionsError`` and a
``ValueError``; it pickles like every ``sessions`` error.

asyncua is imported lazily (when a resource connects), so that this module, and
``OPCUASessionManager`` with it, can be imported without the ``opcua`` extra.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from sessions._errors import SessionsError
from sessions._redact import describe, redact
from sessions._runtime.contract import ResourceActor
from sessions._runtime.fanout import Delivery
from sessions.actors._opcua_sim import simulated_name, simulator

if TYPE_CHECKING:
    from asyncua.client.client import Client
    from asyncua.common.subscription import Subscription

__all__ = ["NodeError", "OPCUAActor", "OPCUADataChange", "OPCUAOptions"]

log = logging.getLogger("sessions.opcua")

T = TypeVar("T")

#: ServerStatus.State: what health_check() and check_connection() read.
SERVER_STATE = "i=2259"

#: Status codes that mean the session, the channel or the connection is broken (a new
#: connection is the cure), not that the request was wrong.
FAULT_STATUS = frozenset({
    "BadSessionIdInvalid", "BadSessionClosed", "BadSessionNotActivated",
    "BadConnectionClosed", "BadConnectionRejected", "BadSecureChannelIdInvalid",
    "BadSecureChannelClosed", "BadSecureChannelTokenUnknown", "BadTimeout",
    "BadRequestTimeout", "BadServerNotConnected", "BadCommunicationError",
    "BadDisconnect", "BadShutdown", "BadServerHalted", "BadNoCommunication",
    "BadTcpInternalError", "BadTooManySessions", "BadTooManyOperations",
})

#: Status codes of a refused login (ActivateSession): a failed start, said plainly.
LOGIN_STATUS = frozenset({
    "BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected",
    "BadUserSignatureInvalid",
})

_CLOSE_WAIT = 1.0  # seconds disconnect() lets the client close its session
_DELIVERY_JOIN = 2.0  # seconds disconnect() waits for running callbacks
_MARGIN = 1.0  # seconds the actor waits past the driver's own timeout

_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]

Callback = Callable[["OPCUADataChange"], object]


class NodeError(SessionsError, ValueError):
    """The server refused an operation on a node (unknown node, wrong type, not writable,
    no match for a browse path, bad method arguments) or the node id is malformed: the
    caller's problem, the session is fine. ``node_id``, ``operation``, ``status`` (the
    status code's name, e.g. ``"BadNodeIdUnknown"``, or ``None`` for a malformed id) and
    ``status_code`` (its value, or ``None``) say which."""

    node_id: str
    operation: str
    status: str | None
    status_code: int | None


@dataclasses.dataclass(frozen=True)
class OPCUADataChange:
    """A data change of a subscribed node (plain data, safe to keep)."""

    node_id: str
    value: Any
    source_timestamp: datetime | None
    server_timestamp: datetime | None
    status: str


class OPCUAOptions(BaseModel):
    """Config keys of an ``opcua`` resource (besides the supervision keys); the one place
    they and their defaults are declared (``OPCUAActor.Options``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        pattern=r"^opc\.tcp://[^/\s]+", description="The server's endpoint, "
        "opc.tcp://host:port/path. opc.tcp://sim/NAME: an in-process simulated server "
        "(asyncua's own), for tests."
    )
    timeout: _Seconds = Field(
        4.0, description="Seconds the server has to answer each request (and the connect); "
        "no answer in time is a fault. Keep it below call_timeout."
    )
    keepalive: _Seconds = Field(
        1.0, description="Seconds between asyncua's reads of the server's state; a failed "
        "read is a lost connection (a fault)."
    )
    username: str | None = Field(None, description="User name, if the server wants one.")
    password: SecretStr | None = Field(
        None, description="Password (needs username); \"${ENV}\" reads it from the "
        "environment. Never logged."
    )
    security: str | None = Field(
        None, description="asyncua's set_security_string: \"Policy,Mode,certificate,"
        "private_key[,server_certificate]\" (e.g. \"Basic256Sha256,SignAndEncrypt,"
        "cert.der,key.pem\"); omitted: no security."
    )
    queue_size: int = Field(1000, ge=1, description="Data changes queued per subscription "
                            "callback; when it falls further behind the oldest is dropped "
                            "and counted.")

    @model_validator(mode="after")
    def _dependent_keys(self) -> OPCUAOptions:
        if self.password is not None and self.username is None:
            raise ValueError("password needs username")
        return self


class _RedactPasswords(logging.Filter):
    """On asyncua's client loggers: asyncua logs every request it sends at DEBUG, the
    ActivateSessionRequest with the user's password in its identity token (in plain text
    without security). A record whose text holds a password is logged masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        if "assword" in text:
            record.msg, record.args = redact(text), ()
        return True


_REDACT = _RedactPasswords()
_REDACT_LOCK = threading.Lock()
#: asyncua's loggers that log requests; made here (a driver's logger may not exist yet)
#: so that the filter is on them before the first request.
_DRIVER_LOGGERS = ("asyncua.client.ua_client.UASocketProtocol",
                   "asyncua.client.ua_client.UaClient", "asyncua.client.ua_session.UaSession",
                   "asyncua.client.client")


def _guard_driver_logs() -> None:
    """Put the password filter on asyncua's client loggers (idempotent)."""
    with _REDACT_LOCK:
        names = {*_DRIVER_LOGGERS, *(
            name for name, logger in list(logging.root.manager.loggerDict.items())
            if name.startswith("asyncua.client") and isinstance(logger, logging.Logger))}
        for name in names:
            logger = logging.getLogger(name)
            if _REDACT not in logger.filters:
                logger.addFilter(_REDACT)


class _Subscription:
    """One subscribed node: its period and its callback's delivery (kept across restarts,
    paused between connections)."""

    __slots__ = ("delivery", "node_id", "period")

    def __init__(self, node_id: str, period: float,
                 delivery: Delivery[OPCUADataChange]) -> None:
        self.node_id = node_id
        self.period = period
        self.delivery = delivery


class _Connection:
    """One asyncua client, its private event loop and the loop's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.client: Client | None = None
        self.thread: threading.Thread | None = None
        self.closed = threading.Event()
        """Set by disconnect() and abort(): a lost connection is no news any more."""
        self.lock = threading.Lock()
        self.pending: set[concurrent.futures.Future[Any]] = set()
        self.live: dict[str, Subscription] = {}
        """node id -> the asyncua subscription of this connection."""
        self.variant_types: dict[str, Any] = {}
        """node id -> its VariantType, read once per connection by write()."""

    def call_soon(self, function: Callable[[], object]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to do
            self.loop.call_soon_threadsafe(function)

    def cancel_pending(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, set()
        for future in pending:
            future.cancel()


class _Handler:
    """asyncua's subscription handler (called on the loop thread): into the delivery."""

    def __init__(self, node_id: str, delivery: Delivery[OPCUADataChange]) -> None:
        self.node_id = node_id
        self.delivery = delivery

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        item = getattr(getattr(data, "monitored_item", None), "Value", None)
        self.delivery.put(OPCUADataChange(
            node_id=self.node_id, value=value,
            source_timestamp=getattr(item, "SourceTimestamp", None),
            server_timestamp=getattr(item, "ServerTimestamp", None),
            status=_status_name(getattr(item, "StatusCode", None)) or "Good",
        ))

    def status_change_notification(self, status: Any) -> None:
        log.info("opcua subscription of %s: status %s", self.node_id, status)


class OPCUAActor(ResourceActor):
    """One OPC UA client session (see the module docstring)."""

    kind: ClassVar[str] = "opcua"

    Options = OPCUAOptions
    config: OPCUAOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        # Actor state: survives restarts.
        self._subs: dict[str, _Subscription] = {}
        self._sub_ids = itertools.count(1)
        self._retired: list[Delivery[OPCUADataChange]] = []
        self._connecting: _Connection | None = None

    @classmethod
    def max_pool_size(cls, options: Mapping[str, Any]) -> tuple[int, str]:
        return 1, (
            "an OPC UA resource is one session: a pool would split subscriptions across "
            "members (configure another opcua resource instead)"
        )

    # -- lifecycle --------------------------------------------------------------------

    def connect(self) -> _Connection:
        """Start the connection's loop thread, then connect: a TCP connect, a secure
        channel, a session created and activated."""
        url = self._endpoint()
        conn = _Connection()
        self._connecting = conn  # what abort(None) closes while this runs
        conn.thread = self.context.spawn(functools.partial(_run_loop, conn.loop),
                                         f"sessions-{self.name}-opcua-loop")
        try:
            try:
                self._wait(conn, self._open(conn, url), "connect", self.config.timeout * 4)
            except Exception as exc:
                refusal = self._refusal(exc)
                if refusal is None:
                    raise
                raise refusal from exc
        except BaseException:
            self._close(conn)
            raise
        finally:
            self._connecting = None
        return conn

    def _refusal(self, exc: Exception) -> ConnectionRefusedError | None:
        """The server refused the login or has no endpoint with our security: that said
        plainly (naming the server, the user, the policy and mode), or ``None``."""
        from asyncua.ua.uaerrors._base import UaError, UaStatusCodeError  # noqa: PLC0415

        config = self.config
        if isinstance(exc, UaStatusCodeError):
            name = _status_name(exc.code)
            if name not in LOGIN_STATUS:
                return None
            who = (f"user {config.username!r}" if config.username is not None
                   else "an anonymous session")
            return ConnectionRefusedError(
                f"{self._where()} refused the login of {who}: {name}")
        if isinstance(exc, UaError) and str(exc).startswith("No matching endpoints"):
            wanted = ",".join(config.security.split(",")[:2]) if config.security else "None"
            return ConnectionRefusedError(
                f"{self._where()} has no endpoint with the security asked for ({wanted}): "
                f"{describe(exc)}")
        return None

    def check_connection(self) -> str:
        """``sessions check --connect``: read the server's state."""
        from asyncua.ua.uaprotocol_auto import ServerState  # noqa: PLC0415

        state = self.read(SERVER_STATE)
        with contextlib.suppress(ValueError, TypeError):
            state = ServerState(state)
        return f"{self._where()}: server state {_enum_name(state)}"

    def health_check(self) -> None:
        """Every ``health_interval`` (when set): read ``ServerStatus.State``."""
        self.read(SERVER_STATE)

    def disconnect(self, resource: _Connection) -> None:
        subs = list(self._subs.values())
        for sub in subs:
            sub.delivery.pause()
        self._close(resource, graceful=True)
        retired, self._retired = self._retired, []
        deadline = time.monotonic() + _DELIVERY_JOIN
        for delivery in [*(s.delivery for s in subs), *retired]:
            if not delivery.join(max(0.0, deadline - time.monotonic())):
                log.warning("opcua %r: a subscriber callback is still running (%s); its "
                            "delivery thread ends when the callback returns",
                            self.name, delivery.name)

    def abort(self, resource: _Connection | None) -> None:
        """From another thread: close the transport (on the loop thread, not waited
        for), stop the loop, fail the calls waiting. Non-blocking, idempotent, never
        raises."""
        conn = resource if resource is not None else self._connecting
        if conn is None:
            return
        conn.closed.set()
        conn.call_soon(functools.partial(_drop_transport, conn))
        conn.call_soon(conn.loop.stop)
        conn.cancel_pending()
        for sub in list(self._subs.values()):
            sub.delivery.pause()

    def is_fault(self, exc: BaseException) -> bool:
        """Connection errors, timeouts, and session or channel status codes."""
        from asyncua.ua.uaerrors._base import (  # noqa: PLC0415 - lazy driver import
            UaError,
            UaStatusCodeError,
        )

        if isinstance(exc, NodeError):
            return False
        if isinstance(exc, OSError | asyncio.TimeoutError | concurrent.futures.TimeoutError):
            return True
        if isinstance(exc, UaStatusCodeError):
            return _status_name(exc.code) in FAULT_STATUS
        return isinstance(exc, UaError)  # a protocol error: the channel is unusable

    # -- calls ------------------------------------------------------------------------

    def read(self, node_id: str) -> Any:
        """The node's value."""
        return self._do(node_id, "read", lambda client: self._read_one(client, node_id))

    def read_many(self, node_ids: Sequence[str]) -> list[Any]:
        """The values of ``node_ids``, in one request."""
        if isinstance(node_ids, str) or not isinstance(node_ids, Sequence):
            raise TypeError(f"node_ids must be a list of node id strings, got {node_ids!r}")
        ids = list(node_ids)
        if not ids:
            return []
        for node_id in ids:
            _parse(node_id, "read_many")

        async def run(client: Client) -> list[Any]:
            from asyncua.ua.attribute_ids import AttributeIds  # noqa: PLC0415

            nodes = [client.get_node(node_id) for node_id in ids]
            results = await client.read_attributes(nodes, AttributeIds.Value)
            values = []
            for node_id, result in zip(ids, results, strict=True):
                _check_status(result.StatusCode, node_id, "read_many")
                values.append(result.Value.Value if result.Value is not None else None)
            return values

        return self._do(ids[0], "read_many", run)

    def write(self, node_id: str, value: Any, variant_type: Any = None) -> None:
        """Write ``value`` to the node, as ``variant_type`` (a ``ua.VariantType`` or its
        name; default: the node's data type)."""
        wanted = _variant_type(variant_type)
        conn = self.resource

        async def run(client: Client) -> None:
            from asyncua import ua  # noqa: PLC0415
            from asyncua.ua.attribute_ids import AttributeIds  # noqa: PLC0415
            from asyncua.ua.status_codes import StatusCodes  # noqa: PLC0415
            from asyncua.ua.ua_binary import variant_to_binary  # noqa: PLC0415

            node = client.get_node(node_id)
            vtype = wanted or conn.variant_types.get(node_id)
            if vtype is None:
                vtype = await node.read_data_type_as_variant_type()
                conn.variant_types[node_id] = vtype
            try:
                variant = ua.Variant(value, vtype)
                variant_to_binary(variant)  # a value the type cannot carry: nothing sent
            except Exception as exc:  # asyncua checks the value against the type
                raise NodeError(
                    f"{node_id}: write: BadTypeMismatch ({value!r} is not a {vtype.name}: "
                    f"{exc}; nothing was sent)", node_id=node_id, operation="write",
                    status="BadTypeMismatch",
                    status_code=int(StatusCodes.BadTypeMismatch)) from exc
            await node.write_attribute(AttributeIds.Value, ua.DataValue(variant))

        self._do(node_id, "write", run)

    def browse_path(self, path: Sequence[str]) -> str:
        """The node id string of the node at ``path`` (qualified names from the root,
        ``["0:Objects", "2:Plant", "2:Temperature"]``)."""
        if isinstance(path, str) or not isinstance(path, Sequence) or not path or \
                not all(isinstance(p, str) for p in path):
            raise TypeError(f"path must be a non-empty list of qualified names, got {path!r}")
        names = list(path)
        where = "/".join(names)

        async def run(client: Client) -> str:
            node = await client.nodes.root.get_child(names)
            return str(node.nodeid.to_string())

        return self._do(where, "browse_path", run, parse=False)

    def call_method(self, object_id: str, method_id: str, *args: Any) -> Any:
        """Call the method ``method_id`` (a node id or a qualified name such as
        ``"2:Add"``) of the object ``object_id`` with ``args``; its output. Also
        callable as ``call`` (through a handle: ``handle.call("call", ...)``, since
        ``handle.call`` is the handle's own generic call)."""
        if not isinstance(method_id, str):
            raise TypeError(f"method_id must be a str, got {method_id!r}")

        method: Any = method_id
        if "=" in method_id:  # a node id ("ns=2;s=Plant.Add"), not a qualified name
            _parse(method_id, "call")
            from asyncua import ua  # noqa: PLC0415

            method = ua.NodeId.from_string(method_id)

        async def run(client: Client) -> Any:
            return await client.get_node(object_id).call_method(method, *args)

        return self._do(object_id, f"call {method_id}", run)

    call = call_method

    def subscribe(self, node_id: str, callback: Callback, period: float = 0.25) -> None:
        """Call ``callback(change)`` for the node's current value and every data change,
        on the subscription's own delivery thread; ``period`` is the publishing interval
        (seconds). Replayed after every reconnect; a node subscribed again gets the new
        callback and period."""
        _parse(node_id, "subscribe")
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if isinstance(period, bool) or not isinstance(period, int | float) or not period > 0:
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        old = self._subs.get(node_id)
        delivery: Delivery[OPCUADataChange] = Delivery(
            callback, capacity=self.config.queue_size,
            name=f"sessions-{self.name}-opcua-sub-{next(self._sub_ids)}",
            what=f"opcua {self.name!r}: subscriber of {node_id}", start=False,
        )
        sub = _Subscription(node_id, float(period), delivery)
        conn = self.resource
        try:
            if old is not None:
                self._drop_live(conn, node_id)
            self._create_live(conn, sub)
        except BaseException:
            delivery.close(drain=False)
            raise
        if old is not None:
            self._retire(old)
        self._subs[node_id] = sub
        delivery.resume()
        self.replay("opcua-subscriptions", self._replay)

    def unsubscribe(self, node_id: str) -> None:
        """End the node's subscription (deleted on the server); a callback running now
        finishes first. ``KeyError`` if it is not subscribed."""
        sub = self._subs.pop(node_id, None)
        if sub is None:
            raise KeyError(f"{node_id!r} is not subscribed on {self.name!r}")
        self._retire(sub)
        if not self._subs:
            self.forget("opcua-subscriptions")
        self._drop_live(self.resource, node_id)

    def subscriptions(self) -> dict[str, dict[str, float]]:
        """Each subscribed node: its ``period`` and its delivery's ``delivered``,
        ``dropped`` (queue full), ``errors`` (callback raised) and ``queued`` counts."""
        return {
            sub.node_id: {
                "period": sub.period,
                "delivered": sub.delivery.delivered,
                "dropped": sub.delivery.dropped,
                "errors": sub.delivery.errors,
                "queued": sub.delivery.pending(),
            }
            for sub in self._subs.values()
        }

    # -- internals --------------------------------------------------------------------

    def _where(self) -> str:
        return f"opcua {self.config.url}"

    def _endpoint(self) -> str:
        """The url to connect to: the configured one, or for ``opc.tcp://sim[/NAME]``
        the in-process simulated server's loopback endpoint (started on first use)."""
        name = simulated_name(self.config.url)
        if name is None:
            return self.config.url
        return simulator(name).url

    async def _open(self, conn: _Connection, url: str) -> None:
        """On the loop thread: a new client, connected to ``url``."""
        from asyncua.client.client import Client  # noqa: PLC0415 - lazy driver import

        config = self.config
        if config.password is not None:
            _guard_driver_logs()
        client = Client(url, timeout=config.timeout,
                        watchdog_intervall=config.keepalive)
        if config.username is not None:
            client.set_user(config.username)
        if config.password is not None:
            client.set_password(config.password.get_secret_value())
        if config.security is not None:
            await client.set_security_string(config.security)
        if hasattr(client, "connection_lost_callback"):
            client.connection_lost_callback = functools.partial(self._lost, conn)
        conn.client = client
        await client.connect()

    async def _lost(self, conn: _Connection, error: Exception) -> None:
        """asyncua's connection_lost_callback (loop thread): the watchdog found the
        server gone."""
        if conn.closed.is_set():
            return
        conn.closed.set()
        log.warning("opcua %r: lost the connection to %s: %s", self.name, self.config.url,
                    describe(error))
        conn.cancel_pending()
        if not isinstance(error, OSError):
            error = ConnectionError(f"lost the connection to {self.config.url}: "
                                    f"{describe(error)}")
        self.context.report_fault(error, conn)

    def _wait(self, conn: _Connection, coro: Coroutine[Any, Any, T], what: str,
              limit: float | None = None) -> T:
        """Run ``coro`` on the connection's loop and wait for it (at most ``limit``;
        default: the driver's timeout and a margin)."""
        if conn.closed.is_set():
            coro.close()
            raise ConnectionError(f"the connection to {self.config.url} is closed")
        limit = self.config.timeout + _MARGIN if limit is None else limit
        future = asyncio.run_coroutine_threadsafe(coro, conn.loop)
        with conn.lock:
            conn.pending.add(future)
        try:
            return future.result(limit)
        except concurrent.futures.CancelledError:
            raise ConnectionAbortedError(
                f"{what}: the connection to {self.config.url} was closed") from None
        except TimeoutError:
            if not future.done():
                future.cancel()
                raise TimeoutError(
                    f"{what}: no answer from {self.config.url} within {limit}s") from None
            raise
        finally:
            with conn.lock:
                conn.pending.discard(future)

    def _do(self, node_id: str, operation: str, run: Callable[[Client], Coroutine[Any, Any, T]],
            *, parse: bool = True) -> T:
        """One call: ``run(client)`` on the loop; a refusal of the server that is not a
        fault becomes a :class:`NodeError` naming ``node_id``."""
        from asyncua.ua.uaerrors._base import (  # noqa: PLC0415
            UaStatusCodeError,
            UaStringParsingError,
        )

        if parse:
            _parse(node_id, operation)
        conn = self.resource
        client = conn.client
        assert client is not None
        try:
            return self._wait(conn, run(client), operation)
        except UaStatusCodeError as exc:
            name = _status_name(exc.code)
            if name in FAULT_STATUS:
                raise
            raise NodeError(f"{node_id}: {operation}: {name}", node_id=node_id,
                            operation=operation, status=name,
                            status_code=int(exc.code)) from exc
        except (UaStringParsingError, ValueError) as exc:
            if isinstance(exc, NodeError):
                raise
            raise NodeError(f"{node_id}: {operation}: {exc}", node_id=node_id,
                            operation=operation, status=None, status_code=None) from exc

    async def _read_one(self, client: Client, node_id: str) -> Any:
        return await client.get_node(node_id).read_value()

    def _create_live(self, conn: _Connection, sub: _Subscription) -> None:
        """A subscription on the server for ``sub`` (its first notification: the current
        value)."""
        handler = _Handler(sub.node_id, sub.delivery)

        async def run(client: Client) -> None:
            live = await client.create_subscription(sub.period * 1000, handler)
            try:
                await live.subscribe_data_change(client.get_node(sub.node_id))
            except BaseException:
                with contextlib.suppress(Exception):
                    await live.delete()
                raise
            conn.live[sub.node_id] = live

        self._do(sub.node_id, "subscribe", run)

    def _drop_live(self, conn: _Connection, node_id: str) -> None:
        live = conn.live.pop(node_id, None)
        if live is not None:
            async def run(client: Client) -> None:
                await live.delete()

            self._do(node_id, "unsubscribe", run, parse=False)

    def _replay(self, conn: _Connection) -> None:
        """A replay step (actor thread, after every reconnect): create the subscriptions
        again, then deliver again."""
        for sub in list(self._subs.values()):
            try:
                self._create_live(conn, sub)
            except NodeError as exc:  # the node is gone from the server: log, go on
                log.error("opcua %r: cannot subscribe again to %s: %s", self.name,
                          sub.node_id, exc)
            sub.delivery.resume()

    def _retire(self, sub: _Subscription) -> None:
        sub.delivery.close(drain=False)
        self._retired = [d for d in self._retired if d.thread.is_alive()]
        self._retired.append(sub.delivery)

    def _close(self, conn: _Connection, *, graceful: bool = False) -> None:
        """End the connection: the session closed (if ``graceful`` and the loop runs:
        bounded wait), the transport closed, the loop stopped (its thread then closes
        it; the runtime joins it). Calls still waiting fail."""
        client = conn.client
        if graceful and client is not None and not conn.closed.is_set():
            with contextlib.suppress(Exception):
                self._wait(conn, client.disconnect(), "disconnect", _CLOSE_WAIT)
        conn.closed.set()
        conn.cancel_pending()
        conn.call_soon(functools.partial(_drop_transport, conn))
        conn.call_soon(conn.loop.stop)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The connection's loop thread: run until stopped, then cancel what is left and
    close the loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _drop_transport(conn: _Connection) -> None:
    """On the loop thread: close the client's socket (no CloseSession), quietly."""
    client = conn.client
    if client is None:
        return
    uaclient: Any = getattr(client, "uaclient", None)
    if uaclient is not None and hasattr(uaclient, "request_disconnect"):
        with contextlib.suppress(Exception):
            uaclient.request_disconnect()
    with contextlib.suppress(Exception):
        client.disconnect_socket()


def _parse(node_id: Any, operation: str) -> None:
    """A ``NodeError`` if ``node_id`` is not a valid node id string."""
    from asyncua import ua  # noqa: PLC0415

    if not isinstance(node_id, str):
        raise TypeError(f"{operation}: a node id must be a str, got {node_id!r}")
    try:
        ua.NodeId.from_string(node_id)
    except Exception as exc:
        raise NodeError(f"{node_id!r}: {operation}: not a valid node id ({exc})",
                        node_id=node_id, operation=operation, status=None,
                        status_code=None) from exc


def _check_status(code: Any, node_id: str, operation: str) -> None:
    if code is not None and not code.is_good():
        name = _status_name(code)
        if name in FAULT_STATUS:
            code.check()  # raises UaStatusCodeError: a fault
        raise NodeError(f"{node_id}: {operation}: {name}", node_id=node_id,
                        operation=operation, status=name, status_code=int(code.value))


def _status_name(code: Any) -> str | None:
    """The status code's name (``"BadNodeIdUnknown"``)."""
    if code is None:
        return None
    from asyncua.ua.status_codes import get_name_and_doc  # noqa: PLC0415

    value = getattr(code, "value", code)
    try:
        return str(get_name_and_doc(int(value))[0])
    except Exception:
        return f"0x{int(value):08X}"


def _variant_type(variant_type: Any) -> Any:
    if variant_type is None:
        return None
    from asyncua import ua  # noqa: PLC0415

    if isinstance(variant_type, ua.VariantType):
        return variant_type
    if isinstance(variant_type, str) and variant_type in ua.VariantType.__members__:
        return ua.VariantType[variant_type]
    raise ValueError(f"variant_type must be an asyncua ua.VariantType or its name "
                     f"(Double, Int32, String, ...), got {variant_type!r}")


def _enum_name(value: Any) -> str:
    return str(getattr(value, "name", value))
