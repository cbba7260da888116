"""The thread side of a resource: its mailbox and the Pykka actor that serves it.

Why not Pykka's own inbox? Pykka fails every queued message with ``ActorDeadError``
when an actor stops, and a stopped actor cannot start again. A resource must keep
its queued calls across a restart (Akka keeps the mailbox; so do we), so the
``Mailbox`` belongs to the resource and outlives the actors. Each incarnation is a
fresh ``Runner`` (a ``pykka.ThreadingActor``) that reads the mailbox through an
``_InboxView``: control messages (Pykka's stop) addressed to that incarnation come
first, then calls while it is serving. When the incarnation ends, the view reports
itself empty so Pykka's teardown leaves the calls for the next incarnation.

A **lease** reserves the mailbox for one caller: its first call (the kind's
``begin_lease``) waits in line with the plain calls; once it runs, the incarnation serves
only the lease's own calls, in order, until the lease's last call (``end_lease``) has run.
Plain calls queued meanwhile wait behind it. A lease lives on one incarnation: if that
one ends (a fault, a stall, a stop), the lease is broken and its later calls fail with
``LeaseBroken``; they never go to the next incarnation. The runtime knows nothing of
what a lease means to a kind (a transaction, exclusive use of a bus): the kind's hooks
say that.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pykka

from sessions._errors import (
    CallTimeout,
    LeaseBroken,
    ResourceBroken,
    ResourceFault,
    ResourceUnavailable,
)
from sessions._redact import describe
from sessions._runtime.contract import IGNORE, Deferred
from sessions._runtime.inject import FaultPlan, InjectedStall
from sessions._runtime.stats import CallStats
from sessions.messages import Call, HealthCheck, KeyedCall, LeaseCall, Superseded

if TYPE_CHECKING:
    from sessions._runtime.breaker import Breaker
    from sessions._runtime.contract import ResourceActor
    from sessions._runtime.futures import SessionFuture

log = logging.getLogger("sessions.actor")

SPAWN_JOIN = 2.0
"""Seconds an ended incarnation waits for the threads it spawned (reader, delivery)."""

_HEALTH = HealthCheck()
_SERVE = object()  # tells the runner to serve calls until a control message arrives
_POLL = object()  # the actor's poll() is due


class _Fault:
    """A fault reported from another thread (``ResourceActor.report_fault``)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class LeaseToken:
    """One lease of one mailbox, as the runtime sees it (kind-agnostic).

    Pending from the moment its first call is queued, active once that call runs
    (``Mailbox.lease``), over once its last call has run or it is broken. Fields are
    written under the mailbox's ``cond``, except ``last_active`` (a timestamp) and
    ``abandoned`` (a flag set by a finalizer), which are plain stores.
    """

    __slots__ = ("abandoned", "broken", "closed", "end", "idle_timeout", "label",
                 "last_active", "revoked", "view")

    def __init__(self, label: str, idle_timeout: float | None = None) -> None:
        self.label = label
        """How messages name it, e.g. ``lease #3 of 'db' (member 'db#1')``."""
        self.idle_timeout = idle_timeout
        """Seconds without a call after which the supervisor revokes it; None: never."""
        self.last_active = time.monotonic()
        """When it last had a call queued or finished."""
        self.closed = False
        """Its last call is queued (or it is broken): no further call is accepted."""
        self.broken: str | None = None
        """Why it is broken (its incarnation ended, the mailbox closed), or None."""
        self.revoked: str | None = None
        """Why the supervisor ended it on the owner's behalf (idle, garbage), or None."""
        self.end: LeaseCall | None = None
        """Its last call; the mailbox is free again once that has run."""
        self.view: _InboxView | None = None
        """The incarnation it is active on (set when its first call runs)."""
        self.abandoned = False
        """Set when the owner's lease object was garbage collected without an exit."""

    def error(self, resource: str) -> LeaseBroken:
        """Why a call of this lease is refused now."""
        if self.broken is not None:
            why = (f"{self.label} is broken: {self.broken}; whatever it did on "
                   f"{resource!r} may be lost, and its calls are not sent to another "
                   "connection (leave the block and take a new lease)")
        elif self.revoked is not None:
            why = f"{self.label} was revoked ({self.revoked})"
        elif self.closed:
            why = f"{self.label} has ended"
        else:
            why = f"{self.label} has not begun"
        return LeaseBroken(why, resource=resource, lease=self.label)

    def __repr__(self) -> str:
        return f"<LeaseToken {self.label}>"


class Mailbox:
    """A resource's FIFO of calls; survives restarts, refuses calls once closed.

    Two exceptions to FIFO, both decided when a call is queued (``queue()``), never
    touching a call that has started: an **urgent** call goes ahead of every plain call
    queued, behind the urgent ones before it; a **keyed** call (latest value wins) takes
    the place of a queued older call with its key, which resolves with ``Superseded``.
    """

    def __init__(self, resource: str) -> None:
        self.resource = resource
        self.stats = CallStats()
        self.cond = threading.Condition(threading.Lock())
        self.calls: deque[Call] = deque()
        """Queued calls, urgent ones first. Callers' threads append, the serving
        incarnation takes from the head; all under ``cond``."""
        self.urgent = 0
        """How many calls at the head of ``calls`` are urgent (under ``cond``)."""
        self.keyed: dict[str, KeyedCall] = {}
        """The queued keyed calls by key, one per key (under ``cond``)."""
        self.refusal: str | None = None
        """Why calls are refused (set while closed), or None while open."""
        self.running = 0
        """1 while a call from this mailbox runs (for least-loaded routing in pools)."""
        self.lease: LeaseToken | None = None
        """The active lease: while set, only its calls (``lease_calls``) are served."""
        self.lease_calls: deque[LeaseCall] = deque()
        """The active lease's queued calls."""
        self.leases: set[LeaseToken] = set()
        """Leases pending (first call queued) or active here (for pool routing)."""
        self.injected: FaultPlan | None = None
        """Faults injected on cue (``System.faults``): set once, by the injecting
        thread; read by the incarnations before each connect and call."""

    def put(self, call: Call) -> None:
        """Queue ``call``, or fail its future at once if the mailbox is closed (a call of
        a lease: unless that lease is active here and not closed)."""
        if type(call) is LeaseCall:
            self._put_leased(call)
            return
        with self.cond:
            refusal = self.refusal
            if refusal is None:
                self.calls.append(call)
                self.cond.notify()  # one serving incarnation waits at most
                return
        self.stats.count_only("refused")
        call.future.set_exception(ResourceUnavailable(refusal, resource=self.resource))

    def queue(self, call: Call, *, urgent: bool) -> None:
        """Queue ``call`` (not a lease's), ahead of every plain call if ``urgent``; a
        ``KeyedCall`` replaces a queued call with its key, in that call's place in line
        if both are in the same lane (urgent or not), and the replaced call resolves
        with ``Superseded``. Refused at once if the mailbox is closed."""
        old: KeyedCall | None = None
        with self.cond:
            refusal = self.refusal
            if refusal is None:
                calls = self.calls
                at = len(calls)
                if type(call) is KeyedCall:
                    old = self.keyed.get(call.key)
                    self.keyed[call.key] = call
                if old is not None:
                    i = next(i for i, queued in enumerate(calls) if queued is old)
                    del calls[i]
                    if i < self.urgent:
                        self.urgent -= 1
                        at = i if urgent else len(calls)
                    elif not urgent:
                        at = i
                if urgent:
                    at = min(at, self.urgent)
                    self.urgent += 1
                calls.insert(at, call)
                self.cond.notify()
        if refusal is not None:
            self.stats.count_only("refused")
            call.future.set_exception(ResourceUnavailable(refusal, resource=self.resource))
            return
        if old is None:
            return
        future = old.future
        if future.claim():
            self.stats.count_only("superseded")
            future.set_result(Superseded(self.resource, future.method, old.key))
        elif not future.cancelled():
            self.stats.count_only("timeout")

    def take(self) -> Call:
        """Under ``cond``: take the call at the head (there must be one)."""
        call = self.calls.popleft()
        if self.urgent:
            self.urgent -= 1
        if type(call) is KeyedCall and self.keyed.get(call.key) is call:
            del self.keyed[call.key]
        return call

    def _put_leased(self, call: LeaseCall) -> None:
        lease = call.lease
        with self.cond:
            if self.lease is lease and not lease.closed:
                self.lease_calls.append(call)
                lease.last_active = time.monotonic()
                self.cond.notify()
                return
        self.stats.count_only("refused")
        call.future.set_exception(lease.error(self.resource))

    def begin(self, call: LeaseCall) -> None:
        """Queue a lease's first call (``call.lease``) with the plain calls: the lease
        becomes active when it runs. Refused at once if the mailbox is closed."""
        lease = call.lease
        with self.cond:
            refusal = self.refusal
            if refusal is None:
                self.calls.append(call)
                self.leases.add(lease)
                self.cond.notify()
                return
        self.stats.count_only("refused")
        call.future.set_exception(ResourceUnavailable(refusal, resource=self.resource))

    def end(self, call: LeaseCall, revoked: str | None = None) -> bool:
        """Queue a lease's last call (``call.lease``) behind its other calls, and accept
        no more. False if the lease is not active here (it never began, is broken or
        has ended already): the caller resolves ``call``'s future itself. ``revoked``:
        the supervisor ends it on the owner's behalf, for that reason."""
        lease = call.lease
        with self.cond:
            if lease.closed or self.lease is not lease:
                lease.closed = True
                return False
            lease.closed = True
            lease.revoked = revoked
            lease.end = call
            self.lease_calls.append(call)
            self.cond.notify()
            return True

    def activate(self, lease: LeaseToken, view: _InboxView) -> bool:
        """A lease's first call is about to run on ``view``'s incarnation: from now on
        that incarnation serves only its calls. False (and the lease dropped) if the
        owner has given it up already or the incarnation has stopped serving."""
        with self.cond:
            if lease.closed or not view.serving or self.lease is not None:
                self.leases.discard(lease)
                lease.closed = True
                return False
            self.lease = lease
            lease.view = view
            lease.last_active = time.monotonic()
            return True

    def finish(self, lease: LeaseToken, broken: str | None = None) -> None:
        """``lease`` is over (its last call ran; or ``broken``, for that reason): the
        mailbox serves plain calls again. Calls of it still queued fail."""
        with self.cond:
            leftover = self._unlease(lease, broken)
        self._refuse(leftover)

    def _unlease(self, lease: LeaseToken, broken: str | None) -> list[LeaseCall]:
        """Under ``cond``: end ``lease`` if it is the active one; its queued calls."""
        self.leases.discard(lease)
        if self.lease is not lease:
            return []
        self.lease = None
        lease.closed = True
        if broken is not None and lease.broken is None:
            lease.broken = broken
        leftover = list(self.lease_calls)
        self.lease_calls.clear()
        self.cond.notify_all()
        return leftover

    def break_lease(self, view: _InboxView, reason: str) -> None:
        """``view``'s incarnation stops serving: a lease active on it is broken."""
        with self.cond:
            lease = self.lease
            if lease is None or lease.view is not view:
                return
            leftover = self._unlease(lease, reason)
        self._refuse(leftover)

    def _refuse(self, calls: list[LeaseCall]) -> None:
        """Fail calls of a lease that is over with ``LeaseBroken``."""
        for call in calls:
            if _try_fail(call.future, call.lease.error(self.resource)):
                self.stats.count_only("refused")

    def close(self, reason: str) -> None:
        """Refuse new calls and fail the queued ones with ``ResourceUnavailable(reason)``
        (an active lease is broken, its calls fail with ``LeaseBroken``)."""
        with self.cond:
            self.refusal = reason
            dropped = list(self.calls)
            self.calls.clear()
            self.urgent = 0
            self.keyed.clear()
            leftover = [] if self.lease is None else self._unlease(self.lease, reason)
            self.leases.clear()
            self.cond.notify_all()
        for call in dropped:
            if call.future.claim():
                self.stats.count_only("refused")
                call.future.set_exception(ResourceUnavailable(reason, resource=self.resource))
        self._refuse(leftover)

    def reopen(self) -> None:
        """Accept calls again (the resource is being started anew)."""
        with self.cond:
            self.refusal = None

    def expire_overdue(self, now: float) -> float:
        """Expire queued calls past their deadline; return the next deadline (or inf).

        Used while no incarnation is serving, so that a caller waiting through a
        callback (``asyncio``, ``as_completed``) still sees its timeout on time. Urgent
        and keyed calls are queued out of arrival order, so every call is looked at.
        """
        overdue: list[Call] = []
        soonest = math.inf
        with self.cond:
            calls = self.calls
            keep: list[Call] = []
            urgent = 0
            for i, call in enumerate(calls):
                deadline = call.future.deadline
                if deadline <= now or call.future.done():
                    overdue.append(call)
                    continue
                keep.append(call)
                soonest = min(soonest, deadline)
                urgent += i < self.urgent
            if overdue:
                calls.clear()
                calls.extend(keep)
                self.urgent = urgent
                for call in overdue:
                    if type(call) is LeaseCall:  # a lease that never began
                        self.leases.discard(call.lease)
                        call.lease.closed = True
                    elif type(call) is KeyedCall and self.keyed.get(call.key) is call:
                        del self.keyed[call.key]
        for call in overdue:
            call.future.expire()  # unless its caller expired it already, or cancelled it
            if not call.future.cancelled():
                self.stats.count_only("timeout")
        return soonest

    def ready(self) -> bool:
        """Under ``cond``: a call is waiting that the serving incarnation may take."""
        return bool(self.lease_calls if self.lease is not None else self.calls)

    def __len__(self) -> int:
        return len(self.calls) + len(self.lease_calls)


class _Envelope:
    """Pykka's envelope shape (``message``, ``reply_to``); calls never use ``reply_to``."""

    __slots__ = ("message", "reply_to")

    def __init__(self, message: Any, reply_to: pykka.Future[Any] | None = None) -> None:
        self.message = message
        self.reply_to = reply_to


_SERVE_ENVELOPE = _Envelope(_SERVE)


class _InboxView:
    """One incarnation's view of the mailbox, in the shape of ``pykka.ActorInbox``.

    Besides calls it schedules the actor's own periodic work: ``health_check`` every
    ``health_interval`` and ``poll`` every ``poll_interval`` (for drivers that must be
    polled from their owning thread, like a Kafka consumer). Due periodic work runs
    before the next call, so a busy mailbox cannot starve it.
    """

    def __init__(self, mailbox: Mailbox, health_interval: float | None,
                 poll_interval: float | None) -> None:
        self.mailbox = mailbox
        self.control: deque[Any] = deque()
        self.serving = False
        self.ended = False
        """Set when the incarnation stops serving for good (crash or stop)."""
        self.health_interval = health_interval
        self.poll_interval = poll_interval
        self.next_health = math.inf
        self.next_poll = math.inf
        self.timed = bool(health_interval) or poll_interval is not None

    def put(self, envelope: Any, /) -> None:
        """Pykka's own messages (stop) and reported faults for this incarnation."""
        with self.mailbox.cond:
            self.control.append(envelope)
            self.mailbox.cond.notify_all()

    def _due(self) -> Any:
        """Due periodic work, or the seconds until some is due (inf if none)."""
        if not self.timed:
            return math.inf
        soonest = min(self.next_health, self.next_poll)
        if soonest == math.inf:
            return math.inf
        now = time.monotonic()
        if self.next_health <= now:
            return _HEALTH
        if self.next_poll <= now:
            return _POLL
        return soonest - now

    def get(self) -> Any:
        """Next message for Pykka's loop: a control message, or ``_SERVE`` when there
        is work; the serve loop then takes calls itself until a control message comes."""
        mb = self.mailbox
        with mb.cond:
            while True:
                if self.control:
                    taken = self._take_control()
                    if taken is not None:
                        return taken
                timeout = None
                if self.serving:
                    due = self._due()
                    if mb.ready() or type(due) is not float:
                        return _SERVE_ENVELOPE
                    timeout = None if due == math.inf else due
                mb.cond.wait(timeout)

    def _take_control(self) -> Any:
        """Under the mailbox's ``cond``: the oldest control message that may be taken
        now, or None. A fault reported before the incarnation serves (a reader started
        by ``connect()``) waits until it serves: handled earlier, it would end an
        incarnation the supervisor has not recorded as started yet, and the restart
        would be taken for a failed start. Other control messages (stop) go first."""
        control = self.control
        if self.serving or self.ended:
            return control.popleft()
        for i, envelope in enumerate(control):
            if type(getattr(envelope, "message", None)) is not _Fault:
                del control[i]
                return envelope
        return None

    def next_work(self) -> Any:
        """For the serve loop: due periodic work, else the oldest call; None when a
        control message is waiting or serving has ended (back to Pykka's loop)."""
        mb = self.mailbox
        with mb.cond:
            while True:
                if self.control or not self.serving:
                    return None
                due = self._due()
                if type(due) is not float:
                    return due
                if mb.lease is not None:  # leased: only the lease's calls
                    if mb.lease_calls:
                        return mb.lease_calls.popleft()
                elif mb.calls:
                    return mb.take()
                mb.cond.wait(None if due == math.inf else due)

    def take_batch(self, fns: frozenset[Any], limit: int,
                   lease: LeaseToken | None = None) -> list[Call]:
        """More calls from the head of the mailbox whose function is in ``fns``: plain
        calls, or the calls of ``lease`` while it is the active one."""
        batch: list[Call] = []
        mb = self.mailbox
        with mb.cond:
            if mb.lease is not lease:
                return batch
            calls = mb.calls if lease is None else mb.lease_calls
            take = mb.take if lease is None else calls.popleft
            while calls and len(batch) < limit and calls[0].fn in fns and not self.control:
                batch.append(take())
        return batch

    def empty(self) -> bool:
        """Only control messages count: queued calls wait for the next incarnation."""
        return not self.control

    def start_serving(self) -> None:
        """Begin serving calls (from the supervision thread, once it has recorded the
        start), unless the incarnation has already ended."""
        with self.mailbox.cond:
            if self.ended:
                return
            self.serving = True
            self.mailbox.cond.notify_all()
            now = time.monotonic()
            if self.health_interval:
                self.next_health = now + self.health_interval
            if self.poll_interval is not None:
                self.next_poll = now

    def stop_serving(self, reason: str = "") -> None:
        """The incarnation serves no more calls; a lease active on it is broken
        (``reason``: why, for its later calls' error)."""
        with self.mailbox.cond:
            self.serving = False
            self.ended = True
        self.mailbox.break_lease(
            self, reason or f"resource {self.mailbox.resource!r} stopped serving")


class Runner(pykka.ThreadingActor):
    """One incarnation of a resource: connects, replays, serves calls until told to stop
    or until a fault, then disconnects. Never raises into Pykka (which would stop or,
    for a ``BaseException``, kill every actor).

    The supervision thread may give up on an incarnation at any time (a stalled call,
    a connect past ``connect_timeout``, a stop past ``shutdown_timeout``):
    :meth:`abandon` fails every future it still owes and sets ``abandoned``. Whatever
    the actor thread does afterwards (a blocked driver call returning late) resolves
    nothing and reports nothing: every resolution goes through ``_resolve``, which
    yields to a future already failed by ``abandon``.
    """

    # A driver call stuck past shutdown_timeout must not keep the process alive.
    use_daemon_thread = True

    def __init__(
        self,
        actor: ResourceActor,
        mailbox: Mailbox,
        health_interval: float | None,
        on_fault: Callable[[Runner, BaseException | None, str, list[Owed]], None],
        register: Callable[[Runner], None],
        *,
        breaker: Breaker | None = None,
    ) -> None:
        self.view = _InboxView(mailbox, health_interval, actor.poll_interval)
        super().__init__()  # calls _create_actor_inbox(), which hands Pykka the view
        self.actor = actor
        self.on_fault = on_fault
        self.breaker = breaker
        self.started: concurrent.futures.Future[Any] = concurrent.futures.Future()
        """Resolved once connect and replay finished (None; ``IGNORE`` if connect()
        decided not to run) or failed; cancelled if abandoned."""
        self.thread: threading.Thread | None = None
        self.entered = threading.Event()
        """Set once the actor thread runs (``thread`` is known from then on)."""
        self.connected = False
        self.conn: Any = None
        """This incarnation's own connection. ``actor.resource`` is the current
        incarnation's, which an abandoned one must never touch again."""
        # Stall watchdog: written by the actor thread around each piece of work, read
        # by the supervision thread. busy_since is 0.0 while idle.
        self.busy_since = 0.0
        self.busy_what = ""
        self.current: SessionFuture[Any] | list[SessionFuture[Any]] | None = None
        """The future(s) of the call or batch in progress (actor thread writes)."""
        self.deferred: set[SessionFuture[Any]] = set()
        """Calls that returned a ``Deferred`` still waiting for their reply. Added on
        the actor thread, discarded on whichever thread resolves the reply."""
        self.abandoned = False
        """Set once, by the supervision or a stopper thread, when the runtime gives up
        on this incarnation; never cleared."""
        self.threads: list[threading.Thread] = []
        """Threads of this connection (``context.spawn``), joined after disconnect.
        Appended on the actor thread, which alone joins them."""
        self.batch_fns = frozenset(
            getattr(type(actor), name) for name in actor.batch_methods
        )
        self.stall: InjectedStall | None = None
        """An injected stall holding the call in progress (actor thread writes)."""
        register(self)  # before the thread starts, so the owner can always reach it

    def report(self, error: BaseException) -> None:
        """Ask this incarnation to crash with ``error`` (from any thread)."""
        self.view.put(_Envelope(_Fault(error)))

    def spawned(self, thread: threading.Thread) -> None:
        """``thread`` belongs to this connection (``context.spawn``; actor thread).
        Threads that already ended are dropped, so a connection that spawns many
        short-lived threads keeps no list of dead ones."""
        self.threads = [t for t in self.threads if t.is_alive()]
        self.threads.append(thread)

    def _join_spawned(self) -> None:
        """Join this connection's threads once it is closed (what they blocked on is
        gone). Bounded: a thread still running after ``SPAWN_JOIN`` is logged, not
        waited for, so a stuck driver cannot wedge a restart."""
        threads, self.threads = self.threads, []
        deadline = time.monotonic() + SPAWN_JOIN
        for thread in threads:
            if thread is threading.current_thread():
                continue
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("thread %s of %r did not end within %.1f s of its "
                            "disconnect (left running)", thread.name, self.actor.name,
                            SPAWN_JOIN)

    def _create_actor_inbox(self) -> _InboxView:  # type: ignore[override]
        return self.view

    # -- lifecycle (actor thread) -----------------------------------------------------

    def on_start(self) -> None:
        self.thread = threading.current_thread()
        self.thread.name = f"sessions-{self.actor.name}"
        self.entered.set()
        if self.abandoned:  # given up on before its thread even ran
            self.stop()
            return
        # Attached before connect(): a reader thread started by connect() may report a
        # fault at once; it is queued and crashes this incarnation as soon as it serves.
        self.actor.context.attach(self)
        try:
            self.busy_what = "connect()"
            plan = self.view.mailbox.injected
            if plan is not None and (failure := plan.take_connect()) is not None:
                raise failure
            resource = self.actor.connect()
            if resource is IGNORE:  # decided not to run: nothing to disconnect
                self._close()
                self.stop()
                if self.started.set_running_or_notify_cancel():
                    self.started.set_result(IGNORE)
                return
            self.conn, self.connected = resource, True
            if self.abandoned:  # given up on while connecting: never publish it
                raise _Abandoned()
            self.actor.resource = resource
            for step in self.actor.context.replay_steps():
                step(resource)
                if self.abandoned:
                    raise _Abandoned()
        except BaseException as exc:  # a failed start, whatever it raised
            self._close()
            self.stop()
            if self.started.set_running_or_notify_cancel():
                self.started.set_exception(exc)
            return
        if not self.started.set_running_or_notify_cancel():  # abandoned: took too long
            self._close()
            self.stop()
            return
        # Connected. Calls are served once the supervisor has recorded the (re)start
        # (serve()), so a caller answered by this incarnation sees the handle's state
        # "running" and its restart counted.
        self.started.set_result(None)

    def serve(self) -> None:
        """Start serving calls (called by the supervision thread after the start)."""
        self.view.start_serving()

    def on_stop(self) -> None:
        self._close()

    def _close(self, why: str = "was stopped") -> None:
        """Stop serving for good (a fault reported later is moot) and close the
        resource. Idempotent: a crash does it at once, Pykka's stop again."""
        self.actor.context.detach(self)
        self.view.stop_serving(f"resource {self.actor.name!r} {why}")
        self._disconnect()
        self._join_spawned()
        if self.deferred:  # replies this connection can no longer bring: fail them now
            owed = list(self.deferred)
            self.deferred.clear()
            self._fail_owed(owed, f"resource {self.actor.name!r} {why} before the "
                                  "deferred reply came")

    def on_receive(self, message: Any) -> None:
        if message is _SERVE:
            self._serve()
        elif type(message) is _Fault and not self.view.ended:
            self._crash(message.error, "reported fault")

    # -- giving up (supervision or stopper thread) ------------------------------------

    def abandon(self, reason: str) -> None:
        """Give up on this incarnation: it serves no more calls, and every future it
        still owes (the call in progress, replies it deferred) fails now with
        ``ResourceFault`` naming ``reason``.

        Safe against the actor thread finishing the same call at the same moment:
        whoever resolves a future first wins, the other side's resolution is dropped.
        """
        self.abandoned = True
        self.view.stop_serving(reason)
        self.started.cancel()  # a connect still running will not be published
        owed: list[SessionFuture[Any]] = []
        current = self.current
        if isinstance(current, list):
            owed += current
        elif current is not None:
            owed.append(current)
        owed += list(self.deferred)  # list() of a set is atomic under the GIL
        self._fail_owed(owed, reason)

    def _fail_owed(self, owed: list[SessionFuture[Any]], reason: str) -> None:
        """Fail ``owed`` (started calls) with ``ResourceFault`` naming ``reason`` (one
        already resolved is left alone, and not counted again)."""
        mailbox = self.view.mailbox
        for future in owed:
            err = ResourceFault(
                f"call {future.method}() on resource {self.actor.name!r} was in progress "
                f"when {reason}; its outcome is unknown",
                resource=self.actor.name, method=future.method,
            )
            if _try_fail(future, err):
                mailbox.stats.record("fault", self._elapsed(future))

    def abort(self) -> None:
        """Tear this incarnation's connection down under a blocked call (kind's hook).
        Called from a stopper thread; errors are logged, never raised."""
        stall = self.stall
        if stall is not None:  # a call held by an injected stall fails as on a torn link
            stall.abort()
        try:
            self.actor.abort(self.conn)
        except Exception as exc:
            log.warning("abort() of %r raised (ignored): %s", self.actor.name,
                        describe(exc))

    # -- work -------------------------------------------------------------------------

    def _serve(self) -> None:
        """Run calls in arrival order until a control message (stop) or a fault.

        Serving here rather than one Pykka message per call keeps Pykka's per-message
        dispatch off the hot path; control messages still win between any two calls.
        """
        next_work, run, actor = self.view.next_work, self._run, self.actor
        context = actor.context
        batch_fns = self.batch_fns
        while (work := next_work()) is not None:
            if work is _HEALTH:
                self._health()
            elif work is _POLL:
                self._poll()
            elif type(work) is LeaseCall:
                self._run_leased(work)
            elif batch_fns and work.fn in batch_fns and actor.batch_ready() and (
                more := self.view.take_batch(batch_fns, actor.max_batch - 1)
            ):
                self._run_batch([work, *more])
            else:  # a lone call, batchable or not, runs as itself
                run(work)
            if (reason := context.take_exit_reason()) is not None and self.view.serving:
                self._crash(None, reason)
            work = None  # an idle actor must not pin the last call's arguments

    def _run_leased(self, call: LeaseCall) -> None:
        """A call of a lease: its first one (taken from the plain calls) makes the
        lease active on this incarnation before it runs; its last one frees the
        mailbox after it has run, whatever its outcome."""
        lease = call.lease
        mailbox = self.view.mailbox
        if mailbox.lease is lease:
            batch_fns = self.batch_fns
            if batch_fns and call.fn in batch_fns and self.actor.batch_ready() and (
                more := self.view.take_batch(batch_fns, self.actor.max_batch - 1, lease)
            ):
                self._run_batch([call, *more])
            else:
                self._run(call)
            lease.last_active = time.monotonic()
            if call is lease.end:
                mailbox.finish(lease)
            return
        future = call.future
        if not future.claim():  # expired in the queue, or cancelled: never began
            mailbox.finish(lease)
            if not future.cancelled():
                mailbox.stats.count_only("timeout")
            return
        if not mailbox.activate(lease, self.view):
            _try_fail(future, lease.error(self.actor.name))
            return
        self._run(call, claimed=True)
        if mailbox.lease is lease and (
            future.done() and not future.cancelled() and future.exception() is not None
        ):  # the kind's begin_lease raised: the lease never began
            mailbox.finish(lease, "its first call, begin_lease(), failed")

    def _run(self, call: Call, claimed: bool = False) -> None:
        future = call.future
        mailbox = self.view.mailbox
        if not claimed and not future.claim():
            if not future.cancelled():
                mailbox.stats.count_only("timeout")
            return
        mailbox.running = 1
        self.current, self.busy_what = future, future.method
        self.busy_since = time.monotonic()
        try:
            plan = mailbox.injected
            if plan is not None and plan.armed:
                self._inject(plan)
            result = call.fn(self.actor, *call.args, **call.kwargs)
        except BaseException as exc:
            self.busy_since, self.current = 0.0, None
            mailbox.running = 0
            self._failed(future, exc)
        else:
            self.busy_since, self.current = 0.0, None
            mailbox.running = 0
            if type(result) is Deferred:
                self.deferred.add(future)
                result.future.add_done_callback(
                    lambda inner: self._settle(future, inner)
                )
                return
            self._succeeded(future, result)

    def _succeeded(self, future: SessionFuture[Any], value: Any) -> None:
        """A call returned ``value`` (directly or through a ``Deferred``)."""
        if self.abandoned or not _try_set(future, value):
            return  # failed already by abandon(): the caller has its answer
        self.view.mailbox.stats.record("ok", self._elapsed(future))
        if self.breaker is not None:
            self.breaker.record(True)

    def _failed(self, future: SessionFuture[Any], exc: BaseException,
                deferred: bool = False) -> None:
        """A call raised ``exc``: a fault (restart) or the caller's own error."""
        if self.abandoned:
            return  # e.g. the error an abort() caused; abandon() failed the future
        fault = self._is_fault(exc)
        if not fault or deferred:
            error = self._fault_error(exc, future.method) if fault else exc
            if not _try_fail(future, error):
                return
        elif future.done():
            return
        if self.breaker is not None:
            self.breaker.record(not (fault or self._counts(exc)), exc)
        self.view.mailbox.stats.record("fault" if fault else "error", self._elapsed(future))
        if fault:
            if deferred:  # resolved on some other thread: ask this incarnation to crash
                self.report(exc)  # (a no-op if it has already ended)
            else:  # the caller learns of it once the supervisor has decided (_crash)
                self._crash(exc, future.method, [(future, self._fault_error(exc, future.method))])

    def _settle(self, future: SessionFuture[Any],
                inner: concurrent.futures.Future[Any]) -> None:
        """A ``Deferred`` result arrived (on whatever thread resolved it)."""
        self.deferred.discard(future)
        if inner.cancelled():
            self._failed(future, concurrent.futures.CancelledError(
                f"{future.method}() was cancelled by resource {self.actor.name!r}"), True)
            return
        exc = inner.exception()
        if exc is not None:
            self._failed(future, exc, deferred=True)
        else:
            self._succeeded(future, inner.result())

    def expire_deferred(self, now: float, limit: float) -> None:
        """Fail the calls whose ``Deferred`` reply has not come ``limit`` seconds
        (``stall_timeout``) after they were queued, with ``CallTimeout(started=True)``:
        a reply that never arrives must not leave a future unresolved. Not a fault (the
        resource may be fine; the kind's own timeouts decide that). Kernel thread. A
        reply arriving later is dropped."""
        for future in list(self.deferred):  # list() of a set is atomic under the GIL
            if now - future.queued_at <= limit:
                continue
            self.deferred.discard(future)
            error = CallTimeout(
                f"call {future.method}() on resource {future.resource!r} started, but its "
                f"deferred reply did not come within stall_timeout={limit:g}s; its outcome "
                "is unknown", resource=future.resource, started=True)
            if _try_fail(future, error):
                self.view.mailbox.stats.record("timeout", self._elapsed(future))

    @staticmethod
    def _elapsed(future: SessionFuture[Any]) -> float:
        """Seconds since the caller queued the call."""
        return time.monotonic() - future.queued_at

    def _counts(self, exc: BaseException) -> bool:
        try:
            return bool(self.actor.counts_as_failure(exc))
        except Exception:
            return True

    def _run_batch(self, calls: list[Call]) -> None:
        """Several queued calls in one ``run_batch`` (e.g. one Redis pipeline); each
        caller still gets its own result or its own error."""
        mailbox = self.view.mailbox
        claimed = []
        for c in calls:
            if c.future.claim():
                claimed.append(c)
            elif not c.future.cancelled():
                mailbox.stats.count_only("timeout")
        calls = claimed
        if not calls:
            return
        mailbox.running = 1
        self.current, self.busy_what = [c.future for c in calls], "run_batch()"
        self.busy_since = time.monotonic()
        try:
            plan = mailbox.injected
            if plan is not None and plan.armed:
                self._inject(plan)
            outcomes = self.actor.run_batch(
                [(c.future.method, c.args, c.kwargs) for c in calls]
            )
            if len(outcomes) != len(calls):  # a bug of the kind: fail the batch, go on
                raise ValueError(f"run_batch() of {self.actor.name!r} returned "
                                 f"{len(outcomes)} outcomes for {len(calls)} calls")
        except BaseException as exc:
            self.busy_since, self.current = 0.0, None
            mailbox.running = 0
            if self.abandoned:
                return
            fault = self._is_fault(exc)
            if self.breaker is not None:
                self.breaker.record(not (fault or self._counts(exc)), exc)
            if fault:
                self._crash(exc, "batch", [(c.future, self._fault_error(exc, c.future.method))
                                           for c in calls])
            else:
                for c in calls:
                    _try_fail(c.future, exc)
            return
        self.busy_since, self.current = 0.0, None
        mailbox.running = 0
        if self.abandoned:
            return
        broken: BaseException | None = None
        owed: list[Owed] = []
        now = time.monotonic()
        for c, (ok, value) in zip(calls, outcomes, strict=True):
            if ok:
                outcome = "ok" if _try_set(c.future, value) else ""
            elif self._is_fault(value):
                broken = value
                owed.append((c.future, self._fault_error(value, c.future.method)))
                outcome = "fault"
            else:
                outcome = "error" if _try_fail(c.future, value) else ""
            if outcome:
                mailbox.stats.record(outcome, now - c.future.queued_at)
        if self.breaker is not None:
            self.breaker.record(broken is None, broken)
        if broken is not None:
            self._crash(broken, "batch", owed)

    def _inject(self, plan: FaultPlan) -> None:
        """Before a call or batch: raise an injected fault, or hold on a stall."""
        taken = plan.take_call()
        if isinstance(taken, InjectedStall):
            self.stall = taken
            try:
                taken.hold()
            finally:
                self.stall = None
        elif taken is not None:
            raise taken

    def _fault_error(self, exc: BaseException, method: str) -> ResourceFault:
        err = ResourceFault(
            f"call {method}() on resource {self.actor.name!r} broke the resource: "
            f"{describe(exc)}; the call had started, so its outcome is unknown",
            resource=self.actor.name,
            method=method,
        )
        err.__cause__ = exc
        return err

    def _poll(self) -> None:
        self._periodic(self.actor.poll, "poll()")
        if self.view.poll_interval is not None:
            self.view.next_poll = time.monotonic() + self.view.poll_interval

    def _health(self) -> None:
        self._periodic(self.actor.health_check, "health_check()")
        if self.view.health_interval:
            self.view.next_health = time.monotonic() + self.view.health_interval

    def _periodic(self, hook: Callable[[], None], where: str) -> None:
        """Run a periodic hook: a fault crashes the actor, anything else is logged."""
        self.busy_what, self.busy_since = where, time.monotonic()
        try:
            hook()
        except BaseException as exc:
            self.busy_since = 0.0
            if self.abandoned:
                return
            if self._is_fault(exc):
                self._crash(exc, where.removesuffix("()"))
                return
            log.warning("%s of %r raised a non-fault: %s", where, self.actor.name,
                        describe(exc))
        else:
            self.busy_since = 0.0

    def _is_fault(self, exc: BaseException) -> bool:
        if not isinstance(exc, Exception):
            return True  # SystemExit and friends: the resource's state is unknown
        if isinstance(exc, ResourceBroken):
            return True  # the kind said so where it happened
        try:
            return bool(self.actor.is_fault(exc))
        except Exception:
            log.exception("is_fault() of %r raised; treating the error as a fault",
                          self.actor.name)
            return True

    def _crash(self, exc: BaseException | None, where: str, owed: list[Owed] | None = None
               ) -> None:
        """Stop serving, close the resource, tell the supervisor, end this incarnation.

        ``exc`` is None for a normal exit (``stop_normally``); ``where`` then says why.
        ``owed``: the callers whose calls broke the resource, with their errors. The
        supervisor fails them once it has decided what the fault restarts, so a caller
        that learns of a fault and calls a sibling next reaches the sibling's restarted
        incarnation. An abandoned incarnation only closes: the supervisor has moved on
        (and failed its callers already).
        """
        if exc is not None:  # the precise reason first, for the lease it breaks
            during = f"during {where}()" if where.isidentifier() else f"({where})"
            self.view.stop_serving(f"resource {self.actor.name!r} faulted {during}: "
                                   f"{describe(exc)}")
        self._close("faulted" if exc is not None else "exited normally")
        self.stop()
        if not self.abandoned:
            self.on_fault(self, exc, where, owed or [])
        else:
            settle(owed or [])

    def _disconnect(self) -> None:
        if not self.connected:
            return
        self.connected = False
        resource = self.conn  # kept until closed: abort() needs it if disconnect() hangs
        if self.actor.resource is resource:
            self.actor.resource = None
        self.busy_what, self.busy_since = "disconnect()", time.monotonic()
        try:
            self.actor.disconnect(resource)
        except Exception as exc:
            log.warning("disconnect of %r failed (ignored): %s", self.actor.name,
                        describe(exc))
        finally:
            self.busy_since, self.conn = 0.0, None


class _Abandoned(Exception):
    """Internal: the supervisor gave up on an incarnation while it was connecting."""


Owed = tuple["SessionFuture[Any]", BaseException]
"""A caller still to be failed with this error."""


def settle(owed: list[Owed]) -> None:
    """Fail each owed caller with its error (unless resolved meanwhile)."""
    for future, error in owed:
        _try_fail(future, error)


def _try_set(future: SessionFuture[Any], value: Any) -> bool:
    """Resolve ``future`` with ``value`` unless it is resolved already (abandon())."""
    try:
        future.set_result(value)
    except concurrent.futures.InvalidStateError:
        return False
    return True


def _try_fail(future: SessionFuture[Any], error: BaseException) -> bool:
    """Fail ``future`` with ``error`` unless it is resolved already."""
    try:
        future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        return False
    return True
