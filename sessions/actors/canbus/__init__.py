"""The CAN bus resource kind (``kind = "canbus"``), on python-can.

Why an actor, and why its own reader: python-can's ``BusABC`` has no locks, several
threads reading one channel steal each other's frames, and a bus allows one
``can.Notifier`` whose thread dies on the first receive error. So one actor owns the
bus: calls (send, periodic tasks, filters) run one at a time on the actor's thread,
and a single reader thread per connection (``sessions-<name>-reader``, started with
``context.spawn``: the runtime owns it) is the only code that calls ``recv``. The reader

* resolves pending :meth:`CANBusActor.request` calls with the first matching frame,
  so a request in flight never holds the actor: other calls run meanwhile;
* fans every frame out to subscribers without ever blocking: each callback
  subscriber has a bounded queue and its own delivery thread
  (``sessions-<name>-deliver-<id>``; a :class:`sessions._runtime.fanout.Delivery`),
  each pull subscriber a bounded ``queue.Queue``; a full queue drops its oldest frame
  and counts the drop;
* turns a receive error that is a fault, or a bus-off error frame, into a crash of
  the actor (``report_fault``), so the supervisor reopens the bus.

What outlives a restart: subscriptions are actor state and simply continue; periodic
tasks and bus filters live in the bus object, so they are re-created on the new bus
by replay steps. Undelivered frames stay queued for their subscriber: its delivery is
paused with the connection and resumed by the next one (a callback still running then
carries on as its one delivery thread).

Hangs: no wait is unbounded (``recv()`` in 50 ms slices, a send at most
``send_timeout``, a request's reply ``timeout``; both keys finite). ``abort(bus)`` (the
runtime gave up on a stalled call) ends, from another thread and without blocking,
everything that connection runs: its reader, its waiting requests, its periodic tasks,
its delivery threads (once their callback returns); later sends fail at once (EBADF, a
fault). A send already inside python-can ends at its ``send_timeout``. Each connection
keeps its own state, so the late ``disconnect()`` of an abandoned one never touches the
bus that replaced it.

python-can is imported lazily (in functions), so importing this module - and the
``CANBusSessionManager`` facade - works without the ``can`` extra installed; a config
naming the kind without it fails validation with a hint to install it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import functools
import importlib
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sessions._errors import ResourceFault
from sessions._redact import describe
from sessions._runtime.contract import Deferred, ResourceActor
from sessions._runtime.fanout import WARN_EVERY, Delivery


class _LazyCan:
    """Stands in for the ``can`` module and imports it on first use: python-can is
    an optional extra, and this module must import without it."""

    _module: ModuleType | None = None

    def __getattr__(self, name: str) -> Any:
        module = _LazyCan._module
        if module is None:
            module = _LazyCan._module = importlib.import_module("can")
        return getattr(module, name)


if TYPE_CHECKING:
    import can
    from can.broadcastmanager import CyclicSendTaskABC
else:
    can = _LazyCan()

__all__ = [
    "BusOffError",
    "CANBusActor",
    "FilterSpec",
    "PendingReply",
]

log = logging.getLogger(__name__)

CAN_ERR_BUSOFF = 0x00000040
"""SocketCAN error class "bus off" (linux/can/error.h), carried in an error frame's id."""


def is_bus_off_frame(msg: can.Message) -> bool:
    """True if ``msg`` reports bus-off (from a SocketCAN interface or the simulator)."""
    return bool(msg.is_error_frame and msg.arbitration_id & CAN_ERR_BUSOFF)

FAULT_ERRNOS = frozenset({errno.ENETDOWN, errno.ENODEV, errno.ENXIO, errno.EBADF})
"""``error_code``/``errno`` values of a receive or send error that mean the bus is gone."""

_MAX_ID = 0x1FFFFFFF
_RECV_SLICE = 0.05  # longest recv() wait: bounds how late stop and request timeouts are seen
_ERROR_PAUSE = 0.05  # pause after a non-fault receive error, so a broken driver cannot spin
_READER_JOIN = 2.0
_DELIVERY_JOIN = 1.0  # total budget for delivery threads at disconnect
_PERIODIC_JOIN = 1.0  # total budget for python-can's periodic send threads at disconnect

Match = int | tuple[int, int] | Callable[["can.Message"], bool]
"""What a reply must look like: an arbitration id, an ``(id, mask)`` pair, or a predicate."""

_Filter = tuple[int, int, bool | None]  # (can_id, can_mask, extended or None)


class BusOffError(ConnectionError):
    """The CAN controller went bus-off (an error frame carrying ``CAN_ERR_BUSOFF``).

    A fault: the actor is restarted, which reopens the bus (on SocketCAN a reopened
    socket does not clear bus-off by itself; configure ``restart-ms`` on the interface).
    """


class FilterSpec(BaseModel):
    """One acceptance filter in python-can's form: a frame passes if
    ``frame_id & can_mask == can_id & can_mask`` (and, if ``extended`` is set, its
    extended-id flag equals it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    can_id: int = Field(ge=0, le=_MAX_ID, description="Identifier bits to compare.")
    can_mask: int = Field(ge=0, le=_MAX_ID, description="Which identifier bits must match.")
    extended: bool | None = Field(
        None, description="Only 29-bit (true) or only 11-bit (false) frames; omitted: both."
    )


_FILTERS: TypeAdapter[list[FilterSpec] | None] = TypeAdapter(list[FilterSpec] | None)


FilterList = Iterable[FilterSpec | Mapping[str, Any]]
"""Filters as ``FilterSpec`` objects or python-can's ``{can_id, can_mask, extended}`` dicts."""


def _normalize_filters(filters: FilterList | None) -> tuple[_Filter, ...]:
    """Validate filters given as dicts or ``FilterSpec``; ``()`` means "everything".

    Raises ``ValueError`` (pydantic's ``ValidationError``) naming the bad entry.
    """
    if filters is None:
        return ()
    specs = _FILTERS.validate_python(list(filters)) or []
    return tuple((f.can_id, f.can_mask, f.extended) for f in specs)


def _python_can_filters(filters: tuple[_Filter, ...]) -> can.typechecking.CanFilters | None:
    """``filters`` in the shape ``can.BusABC.set_filters`` takes (None: accept all)."""
    if not filters:
        return None
    out: list[dict[str, Any]] = []
    for can_id, can_mask, extended in filters:
        entry: dict[str, Any] = {"can_id": can_id, "can_mask": can_mask}
        if extended is not None:
            entry["extended"] = extended
        out.append(entry)
    return cast("can.typechecking.CanFilters", out)


def _passes(filters: tuple[_Filter, ...], msg: can.Message) -> bool:
    """python-can's filter rule, applied in software for one subscriber."""
    if not filters:
        return True
    for can_id, can_mask, extended in filters:
        if extended is not None and extended != msg.is_extended_id:
            continue
        if (can_id ^ msg.arbitration_id) & can_mask == 0:
            return True
    return False


def _matcher(match: Match) -> tuple[Callable[[can.Message], bool], str]:
    """A predicate for ``match`` and a description for error messages."""
    if isinstance(match, bool):
        raise TypeError("match must be an arbitration id, an (id, mask) tuple or a predicate")
    if isinstance(match, int):
        if not 0 <= match <= _MAX_ID:
            raise ValueError(f"match id must be in 0..{_MAX_ID:#x}, got {match:#x}")
        wanted = match
        return (lambda m: m.arbitration_id == wanted), f"id {wanted:#x}"
    if isinstance(match, tuple):
        if len(match) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _MAX_ID for v in match
        ):
            raise ValueError(f"match tuple must be (can_id, can_mask) of CAN ids, got {match!r}")
        can_id, can_mask = match
        return (
            lambda m: (m.arbitration_id ^ can_id) & can_mask == 0
        ), f"id {can_id:#x} mask {can_mask:#x}"
    if callable(match):
        return match, getattr(match, "__qualname__", repr(match))
    raise TypeError(
        f"match must be an arbitration id, an (id, mask) tuple or a predicate, got {match!r}"
    )


class PendingReply(concurrent.futures.Future["can.Message"]):
    """The reply of one :meth:`CANBusActor.request`, resolved by the bus's reader thread.

    Resolves with the first matching frame, or fails with ``can.CanTimeoutError`` (a
    ``TimeoutError``) after the request's ``timeout``, or with ``ResourceFault`` if the
    bus is closed (restart or stop) while waiting. ``cancel()`` withdraws the request's
    claim on a reply frame. Await it with ``asyncio.wrap_future``.
    """

    def __init__(self, request: can.Message, timeout: float) -> None:
        super().__init__()
        self.request = request
        """The frame that was sent."""
        self.timeout = timeout
        """Seconds the reply is waited for."""

    def __repr__(self) -> str:
        return f"<PendingReply to {self.request.arbitration_id:#x} {self._state.lower()}>"


class _Waiter:
    __slots__ = ("deadline", "describe", "future", "matches")

    def __init__(
        self,
        future: PendingReply,
        matches: Callable[[can.Message], bool],
        describe: str,
        deadline: float,
    ) -> None:
        self.future = future
        self.matches = matches
        self.describe = describe
        self.deadline = deadline


class _Subscription:
    """One subscriber: its filters and either a callback's :class:`Delivery` (bounded
    queue, counters, delivery thread; kept across restarts, paused between connections)
    or a pull subscriber's bounded ``queue.Queue`` and its counters."""

    def __init__(
        self,
        sub_id: str,
        filters: tuple[_Filter, ...],
        delivery: Delivery[can.Message] | None,
        out: queue.Queue[can.Message] | None,
    ) -> None:
        self.id = sub_id
        self.filters = filters
        self.delivery = delivery
        self.out = out
        self.owner: _Link | None = None
        """The connection whose delivery thread this is; only it may pause the delivery
        (an abandoned connection's late teardown must not stop its successor's).
        Guarded by the actor's ``_lock``."""
        # A pull subscriber's counters (a callback's are its delivery's); reader thread.
        self.delivered = 0
        self.dropped = 0
        self.last_drop_warning = -math.inf

    def offer(self, msg: can.Message, resource: str) -> None:
        """Queue ``msg`` without blocking (reader thread); drop the oldest when full."""
        if self.delivery is not None:
            self.delivery.put(msg)  # drops, counts and warns itself
            return
        assert self.out is not None
        dropped = False
        while True:
            try:
                self.out.put_nowait(msg)
                break
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.out.get_nowait()
                    self.dropped += 1
                    dropped = True
        self.delivered += 1
        if dropped:
            now = time.monotonic()
            if now - self.last_drop_warning >= WARN_EVERY:
                self.last_drop_warning = now
                log.warning(
                    "CAN bus %r: subscriber %s is too slow; dropped its oldest frames (%d so far)",
                    resource,
                    self.id,
                    self.dropped,
                )

    def counters(self) -> dict[str, Any]:
        """What ``stats()`` shows for this subscriber."""
        if self.delivery is not None:
            d = self.delivery
            return {"type": "callback", "delivered": d.delivered, "dropped": d.dropped,
                    "errors": d.errors, "queued": d.pending()}
        assert self.out is not None
        return {"type": "queue", "delivered": self.delivered, "dropped": self.dropped,
                "errors": 0, "queued": self.out.qsize()}


class _Periodic:
    """A periodic transmission's spec, kept across restarts (its task on a bus is in
    that connection's ``_Link.tasks``)."""

    __slots__ = ("end", "id", "msgs", "period")

    def __init__(
        self, task_id: str, msgs: tuple[can.Message, ...], period: float, end: float | None
    ) -> None:
        self.id = task_id
        self.msgs = msgs
        self.period = period
        self.end = end


class _Link:
    """One open bus and what belongs to that connection alone: its reader, the requests
    waiting for a reply on it, its periodic tasks, its transmit lock.

    Kept per connection, not on the actor, because an abandoned incarnation may still
    be disconnecting (after ``abort()``) while its successor has connected: each
    ``disconnect(resource)`` and ``abort(resource)`` touches its own connection only.
    """

    __slots__ = ("aborted", "bus", "reader", "stop", "tasks", "tx_lock", "waiters")

    def __init__(self, bus: can.BusABC) -> None:
        self.bus = bus
        self.stop = threading.Event()
        """Ends the reader (set by disconnect and by abort)."""
        self.reader: threading.Thread | None = None
        self.waiters: list[_Waiter] = []
        """Requests waiting for a reply on this bus (guarded by the actor's ``_lock``)."""
        self.tasks: dict[str, CyclicSendTaskABC] = {}
        """python-can periodic tasks on this bus, by task id (the actor's ``_lock``)."""
        self.tx_lock = threading.Lock()
        self.aborted = False
        """Set by abort(): sends fail at once from then on."""


class _Opening:
    """A ``connect()`` in progress, for ``abort(None)``."""

    __slots__ = ("aborted", "link")

    def __init__(self) -> None:
        self.aborted = False
        self.link: _Link | None = None


def _stop_task(task: CyclicSendTaskABC) -> threading.Thread | None:
    """Stop a python-can periodic task; its sending thread (if it has one) to join."""
    try:
        task.stop()
    except Exception as exc:  # e.g. a BCM delete on a bus that is already down
        log.debug("stopping a periodic task failed (ignored): %r", exc)
    thread = getattr(task, "thread", None)
    return thread if isinstance(thread, threading.Thread) and thread.is_alive() else None


class CANBusActor(ResourceActor):
    """A CAN bus: send, periodic transmission, subscriptions and request/response.

    A lease (``with can.lease() as c``) is exclusive use of the bus's actor for the
    block: its sends and requests go out in order, with no other caller's send in
    between. Frames still arrive for every subscriber meanwhile (the reader does not
    stop), and nothing is undone if the block raises.

    Config keys are the fields of :class:`CANBusActor.Options`; other keys go to
    ``can.Bus`` unchanged. Handle methods (each returns a future):

    * ``send(msg)`` or ``send(arbitration_id=..., data=..., ...)`` -> ``None``
    * ``send_periodic(msg, period, duration=None)`` -> task id (``"task-N"``)
    * ``stop_periodic(task_id)`` -> ``None``
    * ``subscribe(callback, filters=None, queue_size=None)`` -> subscription id
    * ``subscribe_queue(filters=None, maxsize=None)`` -> ``(subscription id, queue.Queue)``
    * ``unsubscribe(sub_id)`` -> ``None``
    * ``request(msg, match, timeout=None)`` -> :class:`PendingReply` (see there)
    * ``set_filters(filters)`` -> ``None`` (bus-level filters, kept across restarts)
    * ``bus_state()`` -> ``"active"``, ``"passive"`` or ``"error"``
    * ``stats()`` -> counters (frames, drops, callback errors, pending requests, tasks)

    ``handle.state`` is the resource's lifecycle state (every handle has it); the CAN
    controller's state is ``bus_state()``.
    """

    kind: ClassVar[str] = "canbus"
    fault_types: ClassVar[tuple[type[BaseException], ...]] = (BusOffError,)

    class Options(BaseModel):
        """Config keys of ``kind = "canbus"``; any other key is passed to ``can.Bus``."""

        model_config = ConfigDict(extra="allow", frozen=True)

        interface: str = Field(
            "virtual",
            validate_default=True,
            description="python-can interface: socketcan, pcan, kvaser, vector, virtual, ...",
        )
        channel: str | int | None = Field(
            None, description="Interface channel (e.g. 'can0'); omitted: the interface default."
        )
        bitrate: int | None = Field(
            None, gt=0, description="Bit rate in bit/s; omitted: as the interface is set up."
        )
        receive_own_messages: bool = Field(
            False, description="Also receive the frames this bus sends."
        )
        filters: list[FilterSpec] | None = Field(
            None,
            description="Bus-level acceptance filters [{can_id, can_mask, extended}]; "
            "omitted: receive everything. set_filters() replaces them at run time.",
        )
        fd: bool = Field(False, description="Open the bus in CAN FD mode.")
        send_timeout: float = Field(
            1.0,
            gt=0,
            allow_inf_nan=False,
            description="Max wait for room in the transmit queue per send (s); on the "
            "virtual interface per receiver. A send waits on the actor thread and abort() "
            "cannot cut it short: keep it below call_timeout.",
        )
        request_timeout: float = Field(
            1.0,
            gt=0,
            allow_inf_nan=False,
            description="Default reply timeout of request() (s); the reader expires it.",
        )
        subscriber_queue_size: int = Field(
            1000, ge=1, description="Frames queued per subscriber before the oldest is dropped."
        )

        @model_validator(mode="before")
        @classmethod
        def _not_can_filters(cls, data: Any) -> Any:
            if isinstance(data, Mapping) and "can_filters" in data:
                raise PydanticCustomError(
                    "can_filters", "use the 'filters' key, not 'can_filters'"
                )
            return data

        @field_validator("interface")
        @classmethod
        def _known_interface(cls, value: str) -> str:
            try:
                known = can.VALID_INTERFACES
            except ImportError as err:
                raise PydanticCustomError(
                    "can_missing",
                    "python-can is not installed ({error}); install it with: "
                    "pip install 'applib-sessions[can]'",
                    {"error": str(err)},
                ) from None
            if value not in known:
                raise PydanticCustomError(
                    "can_interface",
                    "unknown python-can interface (known: {known})",
                    {"known": ", ".join(sorted(known))},
                )
            return value

    config: Options

    def __init__(self, **options: Any) -> None:
        """``options``: the keys of :class:`CANBusActor.Options` (validated into
        ``self.config``; ValueError naming a bad key); any other key goes to ``can.Bus``."""
        super().__init__(**options)

        # Actor state: survives restarts.
        # Guards each link's waiters and tasks, and _subs (reader, actor and abort threads).
        self._lock = threading.Lock()
        self._subs: dict[str, _Subscription] = {}
        self._sub_list: tuple[_Subscription, ...] = ()  # the reader's lock-free snapshot
        self._periodic: dict[str, _Periodic] = {}
        self._sub_ids = itertools.count(1)
        self._task_ids = itertools.count(1)
        self._received = 0
        self._retired_tasks: list[threading.Thread] = []  # joined at disconnect
        self._retired_delivery: list[Delivery[can.Message]] = []  # joined at disconnect

        # Connection state: one _Link per open bus, by id() of the bus object. The
        # current one is the link of self.resource (never "the last connect()": a
        # connect the runtime abandoned may return late).
        self._links: dict[int, _Link] = {}
        self._opening: _Opening | None = None

    @classmethod
    def max_pool_size(cls, options: Mapping[str, Any]) -> tuple[int, str]:
        """One actor per bus: it runs the only reader of the bus."""
        return 1, (
            "a CAN bus has one owner: one reader thread receives every frame, and a pool "
            "would split requests, replies and subscriptions across several readers"
        )

    # -- lifecycle --------------------------------------------------------------------

    def connect(self) -> can.BusABC:
        """Open the bus, start the reader and the subscribers' delivery threads."""
        config = self.config
        kwargs: dict[str, Any] = dict(config.model_extra or {})
        if config.channel is not None:
            kwargs["channel"] = config.channel
        if config.bitrate is not None:
            kwargs["bitrate"] = config.bitrate
        opening = self._opening = _Opening()
        try:
            bus = can.Bus(
                interface=config.interface,
                receive_own_messages=config.receive_own_messages,
                can_filters=_python_can_filters(_normalize_filters(config.filters)),
                fd=config.fd,
                **kwargs,
            )
        except BaseException:
            self._opening = None
            raise
        link = _Link(bus)
        self._links[id(bus)] = link
        try:
            with self._lock:  # abort(None) looks under the same lock
                opening.link = link
                aborted = opening.aborted
            if aborted:  # the runtime gave up on this connect while the bus opened
                raise can.CanOperationError(
                    f"the CAN bus of {self.name!r} was aborted while connecting", errno.EBADF
                )
            # python-can's thread-based periodic tasks serialize their sends with this
            # lock (created lazily); sharing it keeps our sends from interleaving with
            # theirs on a bus without locks. Buses with their own scheduler ignore it.
            if not hasattr(bus, "_lock_send_periodic"):
                setattr(bus, "_lock_send_periodic", link.tx_lock)  # noqa: B010
            # Interfaces without hardware filters filter in recv() by id, error frames
            # included, so bus filters would hide a bus-off. SocketCAN never applies id
            # filters to error frames (they have their own mask, all enabled by
            # python-can): give every interface that rule.
            matches = getattr(bus, "_matches_filters", None)
            if callable(matches):
                setattr(  # noqa: B010
                    bus, "_matches_filters", lambda m: m.is_error_frame or matches(m)
                )
            link.reader = self.context.spawn(
                functools.partial(self._read_loop, link), f"sessions-{self.name}-reader"
            )
            for sub in self._sub_list:
                self._start_delivery(sub, link)
        except BaseException:
            self._teardown(link)
            raise
        finally:
            self._opening = None
        return bus

    def disconnect(self, resource: Any) -> None:
        """Stop periodic tasks, the reader and the delivery threads; close the bus.

        Requests still waiting fail with ``ResourceFault``; queued frames stay with
        their subscribers for the next connection.
        """
        link = self._links.get(id(resource))
        self._teardown(link if link is not None else _Link(resource))

    def abort(self, resource: Any) -> None:
        """From another thread, without blocking: end everything this connection runs.

        The reader stops (within 50 ms: it never waits in ``recv()`` longer), requests
        waiting for a reply fail with ``ResourceFault``, periodic tasks stop, delivery
        threads end once their callback returns, and every later send fails at once
        with ``CanOperationError`` (``EBADF``: a fault). A ``send()`` already inside
        the driver ends at ``send_timeout`` (finite): python-can gives no way to wake
        it (SocketCAN waits in ``select()``, which neither ``close()`` nor a
        ``shutdown()`` of a CAN socket interrupts; ``virtual`` waits on the receivers'
        queues). The bus is not shut down here: ``shutdown()`` is not thread-safe and
        may block; ``disconnect()`` does it on the actor's thread.
        ``resource`` None: a ``connect()`` in progress fails as soon as its bus opens.
        """
        if resource is None:
            opening = self._opening
            if opening is None:
                return
            with self._lock:
                opening.aborted = True
                link = opening.link
            if link is None:
                return
        else:
            found = self._links.get(id(resource))
            if found is None:
                return
            link = found
        link.aborted = True
        link.stop.set()
        with self._lock:
            waiters, link.waiters = link.waiters, []
            tasks = list(link.tasks.values())
        for waiter in waiters:
            self._settle(waiter.future, error=self._closed_error(waiter, "aborted"))
        for task in tasks:
            _stop_task(task)  # sets a flag (thread-based tasks) or deletes a BCM job
        for sub in self._sub_list:
            self._stop_delivery(sub, link)

    def _teardown(self, link: _Link) -> None:
        bus = link.bus
        # 1. Periodic tasks first, so nothing sends on a bus about to close.
        threads, self._retired_tasks = self._retired_tasks, []
        with self._lock:
            tasks = list(link.tasks.values())
            link.tasks.clear()
        for task in tasks:
            if (thread := _stop_task(task)) is not None:
                threads.append(thread)
        deadline = time.monotonic() + _PERIODIC_JOIN
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        # 2. The reader. The runtime joins it (context.spawn), but only after
        # disconnect(): it must be out of recv() before the bus closes (a bus is not
        # thread-safe, and a SocketCAN fd closed under it may be reused by the next bus).
        reader, link.reader = link.reader, None
        link.stop.set()
        if reader is not None and reader is not threading.current_thread():
            reader.join(_READER_JOIN)
            if reader.is_alive():
                log.error("CAN bus %r: reader thread stuck in recv(); abandoned", self.name)
        # 3. Requests waiting for a reply will not get one from this bus.
        with self._lock:
            waiters, link.waiters = link.waiters, []
        for waiter in waiters:
            error = self._closed_error(waiter, "closed (restart or stop)")
            self._settle(waiter.future, error=error)
        # 4. Delivery threads: undelivered frames stay queued for the next connection.
        deliveries, self._retired_delivery = self._retired_delivery, []
        for sub in self._sub_list:
            delivery = self._stop_delivery(sub, link)
            if delivery is not None:
                deliveries.append(delivery)
        deadline = time.monotonic() + _DELIVERY_JOIN
        for delivery in deliveries:
            if not delivery.join(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "CAN bus %r: a subscriber callback is still running (%s); its "
                    "delivery thread ends when the callback returns",
                    self.name,
                    delivery.name,
                )
        # 5. Close the bus (also stops any periodic task python-can still tracks).
        try:
            bus.shutdown()
        except Exception as exc:
            log.warning("CAN bus %r: shutdown failed (ignored): %s", self.name, describe(exc))
        finally:
            if self._links.get(id(bus)) is link:
                del self._links[id(bus)]

    def _closed_error(self, waiter: _Waiter, how: str) -> ResourceFault:
        return ResourceFault(
            f"the bus of {self.name!r} was {how} while request() waited for a reply "
            f"matching {waiter.describe}; the request had been sent, so its outcome is "
            "unknown",
            resource=self.name,
            method="request",
        )

    def _current(self) -> _Link:
        """The link of the open bus (calls run only while connected)."""
        return self._links[id(self.resource)]

    def is_fault(self, exc: BaseException) -> bool:
        """Bus-off, a failed open, a closed bus, or an errno meaning the interface is gone.

        Caller errors (not faults): ``CanTimeoutError``, a full transmit buffer
        (``ENOBUFS``, "Transmit buffer full"), a frame the driver rejects, bad arguments.
        """
        if isinstance(exc, BusOffError):
            return True
        if isinstance(exc, can.CanTimeoutError):
            return False
        if isinstance(exc, can.CanInitializationError):
            return True
        if isinstance(exc, can.CanOperationError):
            return exc.error_code in FAULT_ERRNOS or "closed" in str(exc).lower()
        if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
            return exc.errno in FAULT_ERRNOS
        return False

    def health_check(self) -> None:
        """A controller reporting ``BusState.ERROR`` (where the interface reports it) is
        a fault; runs only when ``health_interval`` is configured."""
        if self.resource is not None and self.resource.state == can.BusState.ERROR:
            raise BusOffError(f"CAN bus {self.name!r} reports state ERROR")

    # -- sending ----------------------------------------------------------------------

    def send(
        self,
        msg: can.Message | None = None,
        *,
        arbitration_id: int | None = None,
        data: bytes | bytearray | Sequence[int] | None = None,
        is_extended_id: bool = False,
        **fields: Any,
    ) -> None:
        """Transmit one frame: a ``can.Message``, or the keywords of one.

        A full transmit queue (after ``send_timeout``) raises to the caller and is
        not a fault; an interface that went down is.
        """
        self._send(self._message(msg, arbitration_id, data, is_extended_id, fields))

    def send_periodic(
        self,
        msg: can.Message | Sequence[can.Message],
        period: float,
        duration: float | None = None,
    ) -> str:
        """Start transmitting ``msg`` (or several frames in turn) every ``period`` s.

        Returns a task id that stays valid across restarts: the task is re-created on
        every new bus (for what is left of ``duration``, if one was given).
        """
        msgs = (msg,) if isinstance(msg, can.Message) else tuple(msg)
        if not msgs or not all(isinstance(m, can.Message) for m in msgs):
            raise TypeError("send_periodic needs a can.Message or a non-empty sequence of them")
        for m in msgs:
            self._check_frame(m)
        if not (isinstance(period, (int, float)) and 0 < period < math.inf):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        if duration is not None and not (isinstance(duration, (int, float)) and duration > 0):
            raise ValueError(f"duration must be positive or None, got {duration!r}")
        task_id = f"task-{next(self._task_ids)}"
        end = None if duration is None else time.monotonic() + duration
        spec = _Periodic(task_id, msgs, float(period), end)
        self._start_periodic(spec, self.resource)
        self._periodic[task_id] = spec
        self.replay(f"periodic:{task_id}", functools.partial(self._start_periodic, spec))
        return task_id

    def stop_periodic(self, task_id: str) -> None:
        """Stop a periodic task for good (one more frame may already be on its way)."""
        try:
            self._periodic.pop(task_id)
        except KeyError:
            raise KeyError(
                f"no periodic task {task_id!r} on {self.name!r} "
                f"(tasks: {', '.join(self._periodic) or 'none'})"
            ) from None
        self.forget(f"periodic:{task_id}")
        link = self._current()
        with self._lock:
            task = link.tasks.pop(task_id, None)
        if task is not None and (thread := _stop_task(task)) is not None:
            self._retired_tasks = [t for t in self._retired_tasks if t.is_alive()] + [thread]

    def _start_periodic(self, spec: _Periodic, bus: can.BusABC) -> None:
        duration = None
        if spec.end is not None:
            duration = spec.end - time.monotonic()
            if duration <= 0:  # ran its course before this bus opened
                self.forget(f"periodic:{spec.id}")
                return
        link = self._links[id(bus)]
        task = bus.send_periodic(list(spec.msgs), spec.period, duration)
        with self._lock:
            link.tasks[spec.id] = task
            aborted = link.aborted
        if aborted:  # abort() ran meanwhile and did not see this task
            _stop_task(task)

    # -- filters and state ------------------------------------------------------------

    def set_filters(self, filters: FilterList | None) -> None:
        """Replace the bus-level filters (``None``: receive everything).

        They apply to everything this actor receives - subscriptions and request
        replies alike - and are re-applied to every new bus after a restart.
        """
        normalized = _normalize_filters(filters)
        self._apply_filters(normalized, self.resource)
        self.replay("filters", functools.partial(self._apply_filters, normalized))

    @staticmethod
    def _apply_filters(filters: tuple[_Filter, ...], bus: can.BusABC) -> None:
        bus.set_filters(_python_can_filters(filters))

    def bus_state(self) -> str:
        """The controller state python-can reports: ``"active"``, ``"passive"`` or
        ``"error"`` (most interfaces always report active; bus-off shows as a fault)."""
        return str(self.resource.state.name).lower()

    def stats(self) -> dict[str, Any]:
        """Counters: frames received, pending requests, per-subscriber delivery and
        drops, periodic tasks. A snapshot; the reader keeps counting."""
        link = self._links.get(id(self.resource))
        with self._lock:
            pending = len(link.waiters) if link is not None else 0
            active = set(link.tasks) if link is not None else set()
        return {
            "received": self._received,
            "pending_requests": pending,
            "subscriptions": {
                sub.id: sub.counters() for sub in self._sub_list
            },
            "periodic_tasks": {
                spec.id: {
                    "arbitration_id": spec.msgs[0].arbitration_id,
                    "period": spec.period,
                    "active": spec.id in active,
                }
                for spec in self._periodic.values()
            },
        }

    # -- subscriptions ----------------------------------------------------------------

    def subscribe(
        self,
        callback: Callable[[can.Message], Any],
        filters: FilterList | None = None,
        queue_size: int | None = None,
    ) -> str:
        """Call ``callback(frame)`` for every received frame that passes ``filters``.

        Callbacks run on this subscription's own delivery thread, in bus order; one
        that raises is logged and keeps receiving, one that blocks only delays itself:
        its queue holds ``queue_size`` frames (default ``subscriber_queue_size``), then
        the oldest are dropped and counted in ``stats()``. Frames are shared between
        subscribers: treat them as read-only. The subscription survives restarts.
        """
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        size = self._check_size(queue_size, "queue_size")
        sub_id = f"sub-{next(self._sub_ids)}"
        delivery: Delivery[can.Message] = Delivery(
            callback,
            capacity=size,
            name=f"sessions-{self.name}-deliver-{sub_id}",
            what=f"CAN bus {self.name!r}: subscriber {sub_id}",
            start=False,  # started for the current connection below
        )
        sub = self._add_subscription(sub_id, filters, delivery, None)
        self._start_delivery(sub, self._current())  # handle calls run only while connected
        return sub.id

    def subscribe_queue(
        self,
        filters: FilterList | None = None,
        maxsize: int | None = None,
    ) -> tuple[str, queue.Queue[can.Message]]:
        """Pull-style subscription: ``(subscription id, queue.Queue)`` that receives
        every frame passing ``filters``. The queue holds ``maxsize`` frames (default
        ``subscriber_queue_size``); when full, the oldest frame is dropped and counted."""
        size = self._check_size(maxsize, "maxsize")
        out: queue.Queue[can.Message] = queue.Queue(size)
        sub = self._add_subscription(f"sub-{next(self._sub_ids)}", filters, None, out)
        return sub.id, out

    def unsubscribe(self, sub_id: str) -> None:
        """End a subscription (a callback running now finishes first)."""
        with self._lock:
            try:
                sub = self._subs.pop(sub_id)
            except KeyError:
                raise KeyError(f"no subscription {sub_id!r} on {self.name!r}") from None
            self._sub_list = tuple(self._subs.values())
            sub.owner = None
        if sub.delivery is not None:  # closed: a later resume() does nothing
            sub.delivery.close(drain=False)
            self._retired_delivery = [d for d in self._retired_delivery if d.thread.is_alive()]
            self._retired_delivery.append(sub.delivery)

    def _check_size(self, size: int | None, what: str) -> int:
        if size is None:
            return self.config.subscriber_queue_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {size!r}")
        return size

    def _add_subscription(
        self,
        sub_id: str,
        filters: FilterList | None,
        delivery: Delivery[can.Message] | None,
        out: queue.Queue[can.Message] | None,
    ) -> _Subscription:
        sub = _Subscription(sub_id, _normalize_filters(filters), delivery, out)
        with self._lock:
            self._subs[sub.id] = sub
            self._sub_list = tuple(self._subs.values())
        return sub

    def _start_delivery(self, sub: _Subscription, link: _Link) -> None:
        """Run ``sub``'s delivery for ``link`` (a thread still inside a callback from the
        last connection simply carries on instead); nothing for a pull subscriber."""
        if sub.delivery is None:
            return
        with self._lock:
            sub.owner = link
            sub.delivery.resume()

    def _stop_delivery(self, sub: _Subscription, link: _Link) -> Delivery[can.Message] | None:
        """Pause ``sub``'s delivery if ``link`` runs it (never another connection's); the
        delivery to join. Does not block: a callback running now finishes first."""
        with self._lock:
            if sub.delivery is None or sub.owner is not link:
                return None
            sub.owner = None
            sub.delivery.pause()
            return sub.delivery

    # -- request/response -------------------------------------------------------------

    def request(self, msg: can.Message, match: Match, timeout: float | None = None) -> Deferred:
        """Send ``msg``; the caller's future resolves with the first frame after it that
        matches ``match`` (an arbitration id, an ``(id, mask)`` pair, or a predicate run
        on the reader thread, which must be quick).

        The call returns a :class:`~sessions.Deferred`: the actor thread is free at once
        and the handle's future resolves when the reply arrives. Keep the resource's
        ``call_timeout`` above ``timeout``, or a bare ``result()`` gives up first with
        ``CallTimeout(started=True)``.

        The actor only sends and registers the waiter, so other calls run while the
        reply is awaited. A reply frame resolves one request - the oldest one waiting
        for it - and is delivered to subscribers as well. Error frames and this bus's
        own echoes never match (with ``receive_own_messages`` on SocketCAN, neither do
        frames sent by other sockets on this host: python-can marks every locally sent
        frame ``is_rx = False``, echo or not). ``timeout`` (default ``request_timeout``) expiring
        raises ``can.CanTimeoutError``: a caller error, not a fault. The runtime bounds
        the wait as for any ``Deferred`` (``CallTimeout(started=True)`` at
        ``stall_timeout``; ``ResourceFault`` at once if the bus closes first).
        """
        if not isinstance(msg, can.Message):
            raise TypeError(f"request needs a can.Message, got {type(msg).__name__}")
        matches, describe = _matcher(match)
        if timeout is None:
            timeout = self.config.request_timeout
        if not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        reply = PendingReply(msg, float(timeout))
        waiter = _Waiter(reply, matches, describe, time.monotonic() + timeout)
        link = self._current()
        with self._lock:  # registered before sending: a fast reply cannot be missed
            link.waiters.append(waiter)
        try:
            self._send(msg, link)
        except BaseException:
            with self._lock, contextlib.suppress(ValueError):
                link.waiters.remove(waiter)
            raise
        return Deferred(reply)

    # -- reader thread ----------------------------------------------------------------

    def _read_loop(self, link: _Link) -> None:
        """The one reader of ``link``'s bus: dispatch frames, expire requests, report
        faults.

        Runs under ``context.spawn`` but lets nothing escape: it reports a fault itself,
        naming ``link.bus``, so a stale reader of an earlier connection cannot crash the
        current one (spawn's own report is made while ``connect()`` runs, before the
        runtime knows the new connection, and so is not tied to it)."""
        bus, stop = link.bus, link.stop
        while not stop.is_set():
            try:
                msg = bus.recv(self._recv_wait(link))
            except Exception as err:
                if stop.is_set():
                    return
                if self.is_fault(err):
                    log.warning("CAN bus %r: receive failed: %s", self.name, describe(err))
                    self.report_fault(err, bus)
                    return
                log.warning(
                    "CAN bus %r: receive error (not a fault, retrying): %s",
                    self.name,
                    describe(err),
                )
                stop.wait(_ERROR_PAUSE)
                continue
            try:
                if msg is not None and not stop.is_set() and self._dispatch(link, msg):
                    return
                self._expire_waiters(link)
            except Exception:
                log.exception("CAN bus %r: dispatching a frame failed", self.name)

    def _recv_wait(self, link: _Link) -> float:
        with self._lock:
            if not link.waiters:
                return _RECV_SLICE
            nearest = min(w.deadline for w in link.waiters)
        return max(0.0, min(_RECV_SLICE, nearest - time.monotonic()))

    def _dispatch(self, link: _Link, msg: can.Message) -> bool:
        """Hand one frame to its request and subscribers; True if it was a bus-off."""
        if msg.is_fd and not self.config.fd:
            return False  # a classic SocketCAN socket never gets FD frames; virtual would
        self._received += 1
        if is_bus_off_frame(msg):
            self.report_fault(
                BusOffError(
                    f"CAN bus {self.name!r} went bus-off (error frame {msg.arbitration_id:#x})"
                ),
                link.bus,
            )
            return True
        # A bus receives its own frames only with receive_own_messages; only then must a
        # reply be told apart from an echo, by is_rx. SocketCAN (python-can) clears is_rx
        # for every frame sent on this host (MSG_DONTROUTE): a reply from a node in
        # another process on vcan, or from another resource, is is_rx False too.
        own_echoes = self.config.receive_own_messages
        if link.waiters and not msg.is_error_frame and (msg.is_rx or not own_echoes):
            self._match_waiter(link, msg)
        for sub in self._sub_list:
            if _passes(sub.filters, msg):
                sub.offer(msg, self.name)
        return False

    def _match_waiter(self, link: _Link, msg: can.Message) -> None:
        with self._lock:
            waiters = list(link.waiters)
        for waiter in waiters:
            if waiter.future.done():
                continue  # cancelled: dropped by _expire_waiters
            try:
                hit = waiter.matches(msg)
            except Exception as exc:  # a broken predicate fails its own request
                self._remove_waiter(link, waiter)
                self._settle(waiter.future, error=exc)
                continue
            if hit:
                self._remove_waiter(link, waiter)
                self._settle(waiter.future, result=msg)
                return

    def _remove_waiter(self, link: _Link, waiter: _Waiter) -> None:
        with self._lock, contextlib.suppress(ValueError):
            link.waiters.remove(waiter)

    def _expire_waiters(self, link: _Link) -> None:
        if not link.waiters:
            return
        now = time.monotonic()
        expired: list[_Waiter] = []
        kept: list[_Waiter] = []
        with self._lock:
            for w in link.waiters:  # one pass: a waiter cancelled meanwhile is in one list
                (expired if w.deadline <= now or w.future.done() else kept).append(w)
            if not expired:
                return
            link.waiters = kept
        for waiter in expired:
            reply = waiter.future
            self._settle(
                reply,
                error=can.CanTimeoutError(
                    f"no reply matching {waiter.describe} to request "
                    f"{reply.request.arbitration_id:#x} on {self.name!r} within {reply.timeout}s"
                ),
            )

    @staticmethod
    def _settle(
        future: PendingReply,
        *,
        result: can.Message | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Resolve ``future`` unless it was cancelled meanwhile."""
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(cast("can.Message", result))

    # -- helpers ----------------------------------------------------------------------

    def _check_frame(self, msg: can.Message) -> None:
        """A frame this bus can carry, else a ``ValueError`` saying why: SocketCAN rejects
        an FD frame on a classic socket (EINVAL) where python-can's ``virtual`` would
        pass it on, and a classic frame carries at most 8 data bytes."""
        if msg.is_fd and not self.config.fd:
            raise ValueError(
                f"a CAN FD frame (is_fd=True, id {msg.arbitration_id:#x}) on {self.name!r}, "
                "which was opened with fd = false: set fd = true to send FD frames"
            )
        if not msg.is_fd and len(msg.data) > 8:
            raise ValueError(
                f"a classic CAN frame carries at most 8 data bytes, got {len(msg.data)} "
                f"(id {msg.arbitration_id:#x}): send it as an FD frame (is_fd=True) on a "
                "bus with fd = true"
            )

    def _send(self, msg: can.Message, link: _Link | None = None) -> None:
        self._check_frame(msg)
        if link is None:
            link = self._current()
        if link.aborted:
            raise can.CanOperationError(
                f"the CAN bus of {self.name!r} was aborted (the runtime gave up on a "
                "stalled call)",
                errno.EBADF,
            )
        with link.tx_lock:
            link.bus.send(msg, timeout=self.config.send_timeout)

    @staticmethod
    def _message(
        msg: can.Message | None,
        arbitration_id: int | None,
        data: bytes | bytearray | Sequence[int] | None,
        is_extended_id: bool,
        fields: Mapping[str, Any],
    ) -> can.Message:
        if msg is not None:
            if arbitration_id is not None or data is not None or fields:
                raise TypeError("pass either a can.Message or its fields, not both")
            if not isinstance(msg, can.Message):
                raise TypeError(f"send needs a can.Message, got {type(msg).__name__}")
            return msg
        if arbitration_id is None:
            raise TypeError("send needs a can.Message or arbitration_id=...")
        return can.Message(
            arbitration_id=arbitration_id,
            data=data,
            is_extended_id=is_extended_id,
            check=True,
            **fields,
        )
