"""The supervision tree and the thread that drives it.

Supervisors here are state machines, not threads: one supervision thread (the
``Kernel``) handles every event of the tree in order - faults reported by resource
actors, backoff timers, and requests from the API. Deciding restarts, intensity
and escalation in one place means a fault and a give-up two levels up can never
race each other. Resource actors report faults by posting to the kernel; the
kernel starts and stops them.

Erlang/OTP semantics: strategies ``one_for_one``, ``one_for_all``, ``rest_for_one``;
restart types ``permanent``, ``transient``, ``temporary``; more than ``max_restarts``
restarts within ``period`` seconds makes a supervisor give up, stop its children
and fail as a child of its parent. Before each restart the child waits a backoff
delay; children (re)start in order, each connected before the next starts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import heapq
import itertools
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka

from sessions._config import ROOT, ResourceConfig, SupervisorConfig, make_actor
from sessions._errors import ChildRunning, ResourceUnavailable
from sessions._redact import describe
from sessions._runtime.breaker import Breaker
from sessions._runtime.contract import IGNORE, ResourceActor
from sessions._runtime.futures import SessionFuture
from sessions._runtime.runner import LeaseToken, Mailbox, Owed, Runner, settle
from sessions._runtime.stats import CallStats
from sessions.messages import (
    ACTIVE,
    Call,
    ChildFaulted,
    ChildRestarting,
    ChildStarted,
    ChildState,
    ChildStopped,
    KeyedCall,
    LeaseCall,
    SupervisorGaveUp,
)
from sessions.supervisor._events import EventBus
from sessions.supervisor._policy import Backoff, RestartIntensity

log = logging.getLogger("sessions.supervisor")



class Node:
    """What a supervisor knows about one child, resource or supervisor."""

    kind: str

    def __init__(self, name: str, parent: SupervisorNode | None) -> None:
        self.name = name
        self.parent = parent
        self.state = ChildState.STARTING
        self.restarts = 0
        self.pending = False
        """The supervisor's start cursor still has to (re)start this child."""
        self.not_before = 0.0
        """Monotonic time before which a pending child must not start (backoff)."""
        self.attempt = 0
        """Consecutive failures (the backoff's ``n``)."""
        self.wake_at = 0.0
        """The ``not_before`` a backoff timer is already set for (no duplicate timers)."""
        self.started_at = 0.0
        self.ever_started = False
        self.last_fault: str | None = None
        """Why it last faulted. Supervision thread; also the actor thread whose
        incarnation just faulted, with the same text, just before it shows RESTARTING."""
        self.waiters: list[concurrent.futures.Future[None]] = []
        """API callers (start_child, restart_child) waiting for this child's next start:
        resolved by its start, failed by its failed start. Supervision thread only."""
        self.adding = False
        """Being added by start_child: a failed start removes it instead of retrying."""
        self.dynamic = False
        """Added by start_child, not in the config: gone when its supervisor restarts."""
        self.keep_trying = False
        """A resource of a partial start (``start(partial=True)``): a failed start is
        retried with backoff for as long as the system runs, without counting toward
        restart intensity and without holding up its siblings' start."""
        self.start_failed = False
        """keep_trying: its latest start failed (its calls are refused meanwhile)."""


class ResourceChild(Node):
    """A resource: its actor object, its mailbox, and its current incarnation."""

    def __init__(self, name: str, spec: ResourceConfig, parent: SupervisorNode,
                 cls: type[ResourceActor], options: dict[str, Any], *,
                 breaker: Breaker | None = None) -> None:
        super().__init__(name, parent)
        actor = make_actor(cls, options, spec.kind, f"resources.{name.partition('#')[0]}")
        actor.name = name
        self.spec = spec
        self.cls = cls
        self.kind = cls.kind or spec.kind
        self.actor = actor
        self.mailbox = Mailbox(name)
        self.runner: Runner | None = None
        """The current incarnation (connecting or serving), or None. Supervision thread."""
        self.connecting = False
        """``runner`` is still in connect()/replay. Supervision thread."""
        self.retired: list[Runner] = []
        """Earlier incarnations a stopper thread is still ending; a new one connects only
        once this is empty, so two incarnations never use the resource at once."""
        self.lost: list[Runner] = []
        """Abandoned incarnations whose thread did not end even after abort()."""
        self.call_timeout = spec.call_timeout
        self.stall_timeout = stall_timeout(spec)
        self.breaker = breaker

    def submit(self, fn: Callable[..., Any], method: str, /, *args: Any,
               **kwargs: Any) -> SessionFuture[Any]:
        """Queue one call; the hot path of every handle method."""
        now = time.monotonic()
        future: SessionFuture[Any] = SessionFuture(
            self.name, method, now + self.call_timeout, now
        )
        self.mailbox.put(Call(fn, args, kwargs, future))
        return future

    def submit_marked(self, fn: Callable[..., Any], method: str, args: tuple[Any, ...],
                      kwargs: dict[str, Any], *, urgent: bool,
                      key: str | None) -> SessionFuture[Any]:
        """Queue one call ahead of the plain ones (``urgent``) and/or latest-value-wins
        under ``key`` (see ``Mailbox.queue``)."""
        now = time.monotonic()
        future: SessionFuture[Any] = SessionFuture(
            self.name, method, now + self.call_timeout, now
        )
        call = (Call(fn, args, kwargs, future) if key is None
                else KeyedCall(fn, args, kwargs, future, key))
        self.mailbox.queue(call, urgent=urgent)
        return future

    # -- leases: one caller holds this resource for a block ---------------------------

    def lease_member(self) -> ResourceChild:
        """The member a new lease takes: a lone resource is its own."""
        return self

    def lease_begin(self, lease: LeaseToken, timeout: float | None) -> SessionFuture[Any]:
        """Queue the lease's first call (the kind's ``begin_lease``) with the plain
        calls; it must start within ``timeout`` seconds (None: this member's
        ``call_timeout``), else it expires (``CallTimeout(started=False)``, naming
        which timeout) and the lease never begins."""
        now = time.monotonic()
        limit = self.call_timeout if timeout is None else timeout
        future: SessionFuture[Any] = SessionFuture(self.name, "begin_lease", now + limit, now)
        if timeout is not None:
            future.within = f"its lease's timeout={timeout:g}s"
        self.mailbox.begin(LeaseCall(self.cls.begin_lease, (), {}, future, lease))
        return future

    def lease_submit(self, lease: LeaseToken, fn: Callable[..., Any], method: str,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> SessionFuture[Any]:
        """Queue one call of an active lease (refused with ``LeaseBroken`` otherwise)."""
        now = time.monotonic()
        future: SessionFuture[Any] = SessionFuture(
            self.name, method, now + self.call_timeout, now
        )
        self.mailbox.put(LeaseCall(fn, args, kwargs, future, lease))
        return future

    def lease_end(self, lease: LeaseToken, ok: bool,
                  revoked: str | None = None) -> SessionFuture[Any]:
        """Queue the lease's last call (the kind's ``end_lease(ok)``), behind its other
        calls; it never expires (a begun lease is always ended, or broken). Resolved at
        once if the lease is not active: with None if it simply never began, with
        ``LeaseBroken`` if it is broken or revoked."""
        future: SessionFuture[Any] = SessionFuture(self.name, "end_lease", math.inf,
                                                   time.monotonic())
        if not self.mailbox.end(LeaseCall(self.cls.end_lease, (ok,), {}, future, lease), revoked):
            if lease.broken is not None or lease.revoked is not None:
                future.set_exception(lease.error(self.name))
            else:
                future.set_result(None)
        return future

    @property
    def queued(self) -> int:
        return len(self.mailbox)

    @property
    def stats(self) -> CallStats:
        return self.mailbox.stats

    @property
    def own_stats(self) -> CallStats:
        """Where calls refused before reaching the mailbox are counted."""
        return self.mailbox.stats

    @property
    def abandoned(self) -> int:
        """Threads of abandoned incarnations still alive (blocked in a driver call that
        abort() could not end). Read by status views; zero in a healthy system."""
        self.lost = [r for r in self.lost if runner_alive(r)]
        return sum(1 for r in [*self.retired, *self.lost] if r.abandoned and runner_alive(r))


def stall_timeout(spec: ResourceConfig) -> float:
    """The effective ``stall_timeout``: as configured, else twice ``call_timeout``.

    Past ``call_timeout`` the caller has its ``CallTimeout`` already; twice that is long
    enough that a call merely slow is not cut, short enough that calls queued behind a
    frozen peer are served by a new connection soon.
    """
    return spec.stall_timeout if spec.stall_timeout is not None else 2.0 * spec.call_timeout


def restart_type(node: Node) -> str:
    """``permanent``, ``transient`` or ``temporary``: a resource's (a pool's: its
    members'), or a nested supervisor's ``restart``."""
    if isinstance(node, ResourceChild):
        return node.spec.restart
    assert isinstance(node, SupervisorNode)
    if node.pool is not None:
        return node.pool.members[0].spec.restart
    return node.config.restart


def is_significant(node: Node) -> bool:
    """Whether ``node`` is a significant child (its ending may shut its supervisor
    down, per the supervisor's ``auto_shutdown``). Pools never are."""
    if isinstance(node, ResourceChild):
        return node.spec.significant
    assert isinstance(node, SupervisorNode)
    return node.pool is None and node.config.significant


def shutdown_wait(spec: ResourceConfig) -> float:
    """Seconds a stop lets a resource finish before aborting it: ``shutdown_timeout``,
    inf for ``"infinity"``, 0 for ``"brutal_kill"``."""
    timeout = spec.shutdown_timeout
    return 0.0 if timeout == "brutal_kill" else timeout


def runner_alive(runner: Runner) -> bool:
    """Whether an incarnation's thread may still run (not started yet counts as alive)."""
    thread = runner.thread
    return thread is None or thread.is_alive()


LEASED = 1 << 20
"""Load a lease (pending or active) adds to a pool member: plain calls and new leases go
to a member without one while there is such a member running."""


class Pool:
    """``pool_size`` members behind one handle: each call goes to the least-loaded
    running member; a member restarting does not stop the others from serving.

    A lease takes one member for a block, chosen the same way: while it is held (or
    waits to begin), that member serves only the lease's calls and gets no plain calls
    and no other lease as long as another member runs without one; when every running
    member is leased, a call or lease waits on the least-loaded one.
    """

    def __init__(self, name: str, node: SupervisorNode, members: list[ResourceChild]) -> None:
        self.name = name
        self.node = node
        self.members = members
        self.cls = members[0].cls
        self.kind = members[0].kind
        self.breaker = members[0].breaker
        self.own_stats = CallStats()
        """Calls refused before reaching a member (the shared circuit breaker open)."""
        self._turn = itertools.count()
        self._keyed_lock = threading.Lock()
        self._keyed: dict[str, tuple[ResourceChild, SessionFuture[Any]]] = {}
        """Each coalescing key's last call and the member it went to (callers' threads,
        under ``_keyed_lock``): a key's calls stay on one member while one is pending,
        so an older value can neither run after a newer one nor escape being replaced."""

    def submit(self, fn: Callable[..., Any], method: str, /, *args: Any,
               **kwargs: Any) -> SessionFuture[Any]:
        return self._pick().submit(fn, method, *args, **kwargs)

    def submit_marked(self, fn: Callable[..., Any], method: str, args: tuple[Any, ...],
                      kwargs: dict[str, Any], *, urgent: bool,
                      key: str | None) -> SessionFuture[Any]:
        if key is None:
            return self._pick().submit_marked(fn, method, args, kwargs, urgent=urgent, key=None)
        with self._keyed_lock:
            last = self._keyed.get(key)
            member = last[0] if last is not None and not last[1].done() else self._pick()
            future = member.submit_marked(fn, method, args, kwargs, urgent=urgent, key=key)
            self._keyed[key] = (member, future)
        return future

    def lease_member(self) -> ResourceChild:
        """The member a new lease takes (the one a plain call would go to)."""
        return self._pick()

    def _pick(self) -> ResourceChild:
        """The least-loaded running member (a lease weighs ``LEASED``); with none
        running, the open one with the shortest queue."""
        members = self.members
        n = len(members)
        start = next(self._turn)
        best: ResourceChild | None = None
        best_load = math.inf
        for i in range(n):
            member = members[(start + i) % n]
            if member.state != ChildState.RUNNING:
                continue
            mailbox = member.mailbox
            load = len(mailbox.calls) + mailbox.running
            if mailbox.leases:
                load += LEASED * len(mailbox.leases)
            if load < best_load:
                best, best_load = member, load
                if not load:
                    break
        if best is None:  # nobody running: queue where the wait is shortest
            open_members = [m for m in members if m.mailbox.refusal is None] or members
            best = min(open_members,
                       key=lambda m: len(m.mailbox.calls) + LEASED * len(m.mailbox.leases))
        return best

    @property
    def state(self) -> str:
        if self.node.state != ChildState.RUNNING:
            return self.node.state
        states = {m.state for m in self.members}
        return ChildState.RUNNING if ChildState.RUNNING in states else ChildState.RESTARTING

    @property
    def restarts(self) -> int:
        return self.node.restarts + sum(m.restarts for m in self.members)

    @property
    def queued(self) -> int:
        return sum(m.queued for m in self.members)

    @property
    def abandoned(self) -> int:
        return sum(m.abandoned for m in self.members)

    @property
    def stats(self) -> CallStats:
        """The members' statistics summed, with the calls refused at the pool."""
        return CallStats.total([self.own_stats, *(m.stats for m in self.members)])


class SupervisorNode(Node):
    """A supervisor: strategy, intensity, backoff, and its ordered children."""

    kind = "supervisor"

    def __init__(self, name: str, config: SupervisorConfig, parent: SupervisorNode | None) -> None:
        super().__init__(name, parent)
        self.config = config
        self.children: list[Node] = []
        self.intensity = RestartIntensity(config.max_restarts, config.period)
        b = config.backoff
        self.backoff = Backoff(b.initial, b.max, b.multiplier, b.jitter)
        self.epoch = 0
        """Bumped whenever pending timers of this supervisor become stale."""
        self.in_progress = False
        """Its start cursor has not finished since it was (re)started."""
        self.pool: Pool | None = None
        """Set when this supervisor is the one-for-one supervisor of a resource pool."""


def walk(node: Node) -> list[Node]:
    """``node`` and its descendants, depth first, in start order."""
    out: list[Node] = [node]
    if isinstance(node, SupervisorNode):
        for child in node.children:
            out += walk(child)
    return out


STALL_TICK = 0.1
"""Seconds between two looks of the stall watchdog at every busy incarnation."""

ABORT_GRACE = 1.0
"""Seconds an aborted incarnation gets to end before it is counted as lost."""

_Entry = tuple[ResourceChild, Runner]


class Kernel:
    """The supervision thread: runs every decision of the tree, one at a time.

    It never waits on a resource. A connect runs on the incarnation's own thread and
    reports back (``_start_done``); stopping incarnations (ask, wait up to
    ``shutdown_timeout``, abort, wait a little more) happens on short-lived stopper
    threads that report back (``_reaped``). Meanwhile the kernel keeps serving every
    other child's faults, timers and API requests.
    """

    def __init__(self, root: SupervisorNode, events: EventBus,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.root = root
        self.events = events
        self.clock = clock
        self.rng = rng or random.Random()
        self.booted: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.failure: str | None = None
        self.hurry = math.inf
        """Monotonic time by which every stopper must be done (set by shutdown); read
        by stopper threads, written once by the supervision thread."""
        self._cond = threading.Condition()
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._timers: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._exit = False
        self._ended = False
        """The loop has finished (under ``_cond``): ``call`` runs inline from then on."""
        self._next_stall_check = 0.0
        self.turned_at = time.monotonic()
        """When the loop last turned (it turns at least every STALL_TICK): read by
        ``System.stalls()`` to tell a stuck supervision thread."""
        self._stoppers: set[threading.Thread] = set()  # supervision thread only
        self._shutdown: concurrent.futures.Future[None] | None = None
        self.on_remove: Callable[[Node], None] | None = None
        """Told (on this thread) when a child leaves the tree, to forget its name."""
        self._thread = threading.Thread(target=self._loop, name="sessions-supervisor",
                                        daemon=True)

    # -- plumbing ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the supervision thread (from any thread); once that has
        ended (the system stopped), at once on the calling thread: a late report still
        settles the callers it carries."""
        with self._cond:
            if not self._ended:
                self._queue.append((fn, args))
                self._cond.notify()
                return
        self._step(fn, args)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the supervision thread and return its result; inline
        on the calling thread once the supervision thread has ended (or never ran)."""
        with self._cond:
            inline = self._ended or not self._thread.is_alive()
        if inline or threading.current_thread() is self._thread:
            return fn(*args)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self.post(run)
        return done.result()

    def at(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the supervision thread after ``delay`` seconds."""
        with self._cond:
            heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn, args))
            self._cond.notify()

    def join(self, timeout: float | None = None) -> None:
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._exit:
            self.turned_at = time.monotonic()
            wake_by = self._tick()
            with self._cond:
                now = time.monotonic()
                if self._queue:
                    fn, args = self._queue.popleft()
                elif self._timers and self._timers[0][0] <= now:
                    _, _, fn, args = heapq.heappop(self._timers)
                else:
                    wake = min(self._timers[0][0] if self._timers else math.inf, wake_by)
                    self._cond.wait(None if wake == math.inf else wake - now)
                    continue
            self._step(fn, args)
        with self._cond:  # calls queued meanwhile run now; later ones run inline
            self._ended = True
            leftover, self._queue = list(self._queue), deque()
        for fn, args in leftover:
            self._step(fn, args)

    @staticmethod
    def _step(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:  # a bug here must not kill supervision of everything else
            log.critical("supervision step %r failed", fn, exc_info=True)

    def _tick(self) -> float:
        """Time out queued calls nobody serves, and (every STALL_TICK) find incarnations
        stalled in a call; returns when to look again."""
        now, nearest = time.monotonic(), math.inf
        watch = now >= self._next_stall_check
        for node in walk(self.root):
            if not isinstance(node, ResourceChild):
                continue
            runner = node.runner
            serving = node.state == ChildState.RUNNING and runner is not None
            if node.mailbox.calls and (watch or not serving):
                # While serving, the runner expires overdue calls itself as it reaches
                # them; behind a stuck call that could be late, hence the watchdog look.
                nearest = min(nearest, node.mailbox.expire_overdue(now))
            if watch and serving and runner is not None:
                since = runner.busy_since
                if since and now - since > node.stall_timeout:
                    self._stalled(node, runner, now - since)
                if runner.deferred:
                    runner.expire_deferred(now, node.stall_timeout)
            if watch and (lease := node.mailbox.lease) is not None:
                self._check_lease(node, lease, now)
        if watch:
            self._next_stall_check = now + STALL_TICK
        return min(nearest, self._next_stall_check)

    def _check_lease(self, node: ResourceChild, lease: LeaseToken, now: float) -> None:
        """Revoke a lease nobody will end: its owner's lease object was garbage
        collected without an exit, or it had no call for its ``idle_timeout``. Its last
        call (``end_lease(False)``: a rollback) is queued for it; its owner's later
        calls fail with ``LeaseBroken`` saying why."""
        if lease.closed:
            return
        if lease.abandoned:
            reason = "its lease object was dropped without leaving the block"
        elif (lease.idle_timeout is not None and not node.mailbox.lease_calls
              and not node.mailbox.running and now - lease.last_active > lease.idle_timeout):
            reason = f"no call for idle_timeout={lease.idle_timeout:g}s"
        else:
            return
        log.warning("%s revoked: %s", lease.label, reason)
        node.lease_end(lease, False, revoked=reason)

    # -- start cursor -----------------------------------------------------------------

    def boot(self) -> None:
        self.begin(self.root)

    def begin(self, sup: SupervisorNode) -> None:
        """Start a supervisor anew: fresh intensity, every child pending, in order.

        A restarted supervisor is rebuilt from its spec, as OTP's is: children added by
        start_child are gone, and temporary children that had ended start again."""
        sup.epoch += 1
        sup.intensity = sup.intensity.reset()
        sup.state = ChildState.RESTARTING if sup.ever_started else ChildState.STARTING
        sup.in_progress = True
        for child in [c for c in sup.children if c.dynamic]:
            self._remove(child, f"its supervisor {sup.name!r} restarted from its spec")
        for child in sup.children:
            for node in walk(child):
                if isinstance(node, ResourceChild):
                    node.mailbox.reopen()
                    node.start_failed = False
            child.pending, child.not_before = True, 0.0
            child.state = ChildState.RESTARTING if child.ever_started else ChildState.STARTING
        self.advance(sup)

    def advance(self, sup: SupervisorNode, epoch: int | None = None) -> None:
        """Start the pending children of ``sup`` as far as backoff allows.

        Re-entered whenever something it waits for happens: a backoff timer, a connect
        finishing (``_start_done``), an old incarnation ended (``_reaped``), a
        sub-supervisor up. While the supervisor starts as a whole (``in_progress``) and
        in a group restart (one_for_all, rest_for_one), children start strictly in
        order, each serving before the next connects. A one_for_one restart is one
        child's business: another child's pending restart never waits behind it."""
        if (epoch is not None and epoch != sup.epoch) or sup.state not in ACTIVE:
            return
        epoch = sup.epoch
        ordered = sup.in_progress or sup.config.strategy != "one_for_one"
        if ordered and any(isinstance(n, ResourceChild) and n.retired for n in walk(sup)):
            return  # as in OTP, the whole group is stopped before any member restarts
        waiting = False
        for child in sup.children:
            if not child.pending:
                continue
            wait = child.not_before - time.monotonic()
            if wait > 0:
                if child.wake_at != child.not_before:  # one timer per backoff
                    child.wake_at = child.not_before
                    self.at(wait, self.advance, sup, epoch)
            elif isinstance(child, SupervisorNode):
                if child.state != ChildState.RUNNING and not child.in_progress:
                    self.begin(child)
                    if sup.epoch != epoch:
                        return
                if child.state == ChildState.RUNNING:
                    self._started(sup, child)
                    continue
                # else: it posts advance(sup) when it completes
            else:
                assert isinstance(child, ResourceChild)
                if not (child.connecting or child.retired):
                    self.start_resource(child)
                # _start_done (or _reaped) re-enters
            if child.keep_trying and child.start_failed:
                continue  # retried in the background: the children after it go on
            if ordered:
                return
            waiting = True
        if waiting or not sup.in_progress:
            return  # only a start begun by begin() completes the supervisor
        sup.in_progress = False
        if sup.state != ChildState.RUNNING:
            sup.state = ChildState.RUNNING
            if sup.parent is not None:
                self.post(self.advance, sup.parent)
            elif not self.booted.done():
                self.booted.set_result(None)

    def _started(self, sup: SupervisorNode, child: Node) -> None:
        child.pending = False
        child.adding = False
        if child.ever_started:
            child.restarts += 1
        child.ever_started = True
        child.started_at = self.clock()
        if child.start_failed:  # a partial start's resource is up at last
            child.start_failed = False
            if isinstance(child, ResourceChild):
                child.mailbox.reopen()
        self.events.emit(ChildStarted(sup.name, child.name, child.kind, child.restarts))
        if isinstance(child, ResourceChild) and child.runner is not None:
            child.runner.serve()  # only now: the state and counters above are current
        waiters, child.waiters = child.waiters, []
        for waiter in waiters:
            waiter.set_result(None)

    def start_resource(self, child: ResourceChild) -> None:
        """Start one incarnation. Its connect runs on its own thread; ``_start_done``
        (or ``_connect_overdue`` at ``connect_timeout``) carries on from there."""
        child.state = ChildState.RESTARTING if child.ever_started else ChildState.STARTING

        def register(runner: Runner) -> None:
            child.runner = runner

        try:
            Runner.start(
                child.actor, child.mailbox, child.spec.health_interval,
                lambda r, e, w, o: self._runner_ended(child, r, e, w, o), register,
                breaker=child.breaker,
            )
        except Exception as exc:  # pragma: no cover - thread creation failed
            child.runner = None
            self._start_failed(child, exc)
            return
        runner = child.runner
        assert runner is not None
        child.connecting = True
        runner.started.add_done_callback(lambda _: self.post(self._start_done, child, runner))
        self.at(child.spec.connect_timeout, self._connect_overdue, child, runner)

    def _start_done(self, child: ResourceChild, runner: Runner) -> None:
        if child.runner is not runner or not child.connecting:
            return  # given up on meanwhile (connect_timeout, a stop): already retired
        child.connecting = False
        err = None if runner.started.cancelled() else runner.started.exception()
        if runner.started.cancelled() or err is not None:
            child.runner = None
            self._reap(self._retire(child, runner, []))
            self._start_failed(child, err or RuntimeError("the start was abandoned"))
            return
        sup = child.parent
        assert sup is not None
        if runner.started.result() is IGNORE:
            child.runner = None
            self._reap(self._retire(child, runner, []))
            self._ignored(sup, child)
            return
        child.state = ChildState.RUNNING
        self._started(sup, child)
        self.advance(sup)

    def _ignored(self, sup: SupervisorNode, child: ResourceChild) -> None:
        """connect() returned IGNORE: the child stays stopped, as OTP keeps a child
        whose start returned ``ignore``; no fault, no restart, the start cursor goes on."""
        child.pending = child.adding = False
        child.state = ChildState.STOPPED
        child.mailbox.close(f"resource {child.name!r} chose not to run "
                            "(its connect() returned IGNORE)")
        self.events.emit(ChildStopped(sup.name, child.name, "ignored: connect() returned IGNORE"))
        waiters, child.waiters = child.waiters, []
        for waiter in waiters:
            waiter.set_result(None)
        self.advance(sup)

    def _connect_overdue(self, child: ResourceChild, runner: Runner) -> None:
        if child.runner is not runner or not child.connecting:
            return
        timeout = child.spec.connect_timeout
        child.runner, child.connecting = None, False
        runner.abandon(f"connect() ran past connect_timeout={timeout}s")
        self._reap(self._retire(child, runner, []), abort_first=True)
        self._start_failed(child, TimeoutError(
            f"connect() did not finish within connect_timeout={timeout}s"))

    def _start_failed(self, child: ResourceChild, err: BaseException) -> None:
        """A connect failed: undo a start_child, else apply the supervisor's policy."""
        adding = child if child.adding else child.parent if (
            child.parent is not None and child.parent.adding) else None
        if adding is not None:
            self._abort_add(adding, err)
            return
        sup = child.parent
        assert sup is not None
        self.fault(sup, child, err, during_start=True)
        error = ResourceUnavailable(
            f"resource {child.name!r} failed to start: {describe(err)}",
            resource=child.name)
        error.__cause__ = err
        waiters, child.waiters = child.waiters, []
        for waiter in waiters:
            waiter.set_exception(error)

    # -- faults -----------------------------------------------------------------------

    def _runner_ended(self, child: ResourceChild, runner: Runner,
                      exc: BaseException | None, where: str, owed: list[Owed]) -> None:
        """Called on the actor's thread when an incarnation faulted or exited normally."""
        if child.runner is runner and child.state == ChildState.RUNNING:
            if exc is not None:  # the reason first: a status showing RESTARTING has it
                child.last_fault = f"{where}: {describe(exc)}"
            child.state = ChildState.RESTARTING
        self.post(self._on_runner_ended, child, runner, exc, where, owed)

    def _on_runner_ended(self, child: ResourceChild, runner: Runner,
                         exc: BaseException | None, where: str, owed: list[Owed]) -> None:
        """Apply the policy, then fail the callers whose calls broke the resource: by
        the time a caller sees its fault, every restart it causes is decided (siblings
        of a group restart serve no more calls, so the caller's next call to one waits
        for its new incarnation)."""
        try:
            self._ended_runner(child, runner, exc, where)
        finally:
            settle(owed)

    def _ended_runner(self, child: ResourceChild, runner: Runner,
                      exc: BaseException | None, where: str) -> None:
        if (child.runner is not runner or child.pending
                or child.state in (ChildState.STOPPED, ChildState.FAILED)):
            return  # stale: already restarted, stopping, or stopped
        child.runner = None
        self._reap(self._retire(child, runner, []))
        sup = child.parent
        assert sup is not None
        if exc is None:
            if child.spec.restart != "permanent":
                child.state = ChildState.STOPPED
                child.mailbox.close(f"resource {child.name!r} stopped normally ({where})")
                self.events.emit(ChildStopped(sup.name, child.name, f"exited normally: {where}"))
                self._child_ended(sup, child)
                return
            self.fault(sup, child, f"exited normally ({where}) but is permanent",
                       during_start=False)
            return
        self.fault(sup, child, f"{where}: {describe(exc)}", during_start=False)

    def _stalled(self, child: ResourceChild, runner: Runner, elapsed: float) -> None:
        """The watchdog found ``runner`` stuck in one piece of work past stall_timeout:
        fail what it owes, abort it, and treat it as a fault of the resource."""
        what = runner.busy_what or "a call"
        if not what.endswith(")"):
            what = f"call {what}()"  # a handle call: busy_what is its bare method name
        reason = (f"{what} stalled: still running after {elapsed:.3g}s "
                  f"(stall_timeout={child.stall_timeout:g}s)")
        child.runner = None
        entries = self._retire(child, runner, [], reason)
        if child.breaker is not None:
            child.breaker.record(False, reason)
        sup = child.parent
        assert sup is not None
        self.fault(sup, child, reason, during_start=False)
        # Only now, with the restarts decided, does the stalled caller learn of it.
        runner.abandon(f"resource {child.name!r} stalled ({what} ran past "
                       f"stall_timeout={child.stall_timeout:g}s)")
        self._reap(entries, abort_first=True)

    def fault(self, sup: SupervisorNode, child: Node, error: str | BaseException,
              during_start: bool) -> None:
        """Apply ``sup``'s policy to a child that broke (or failed to start)."""
        msg = describe(error)
        if during_start and not isinstance(error, str):
            msg = f"start failed: {msg}"
        child.last_fault = msg
        if during_start and isinstance(child, ResourceChild) and child.breaker is not None:
            child.breaker.record(False, msg)
        self.events.emit(ChildFaulted(sup.name, child.name, msg, during_start))
        log.warning("%s %r faulted under %r: %s", child.kind, child.name, sup.name, msg)
        entries: list[_Entry] = []
        if restart_type(child) == "temporary":
            self._stop_child(child, f"temporary {child.kind} {child.name!r} is not "
                                    f"restarted after a fault: {msg}", ChildState.STOPPED, entries)
            self._reap(entries)
            self.events.emit(ChildStopped(sup.name, child.name, "temporary child faulted"))
            self.post(self.advance, sup)
            self._child_ended(sup, child)
            return
        if during_start and child.keep_trying and isinstance(child, ResourceChild):
            self._retry_start(sup, child, msg)
            return
        now = self.clock()
        sup.intensity = sup.intensity.increment(now)
        if sup.intensity.is_exhausted():
            self.give_up(sup, f"more than {sup.config.max_restarts} restarts within "
                              f"{sup.config.period}s; last: {child.name!r}: {msg}")
            return
        ran_long = now - child.started_at >= sup.config.period
        child.attempt = 1 if (not during_start and ran_long) else child.attempt + 1
        delay = sup.backoff.get_backoff_time(child.attempt, self.rng)
        # A failed start during a group restart restarts the group again (OTP); at a
        # supervisor's own start, and under one_for_one, only the child is retried.
        alone = during_start and (sup.in_progress or sup.config.strategy == "one_for_one")
        group = [child] if alone else self._group(sup, child)
        for sibling in reversed(group):
            if sibling is not child:
                self._stop_child(sibling, None, ChildState.RESTARTING, entries)
        wake = time.monotonic() + delay
        for member in group:
            if member is not child and restart_type(member) == "temporary":
                self._stop_child(member, f"temporary {member.kind} {member.name!r} stopped "
                                         f"because {child.name!r} faulted",
                                 ChildState.STOPPED, entries)
                continue
            if isinstance(member, ResourceChild):
                member.mailbox.reopen()  # a stopped member comes back with the group
            member.pending, member.not_before, member.state = True, wake, ChildState.RESTARTING
            self.events.emit(ChildRestarting(sup.name, member.name, delay, child.attempt))
        self._reap(entries)
        self.at(delay, self.advance, sup, sup.epoch)

    def _retry_start(self, sup: SupervisorNode, child: ResourceChild, msg: str) -> None:
        """A partial start's resource failed to start: refuse its calls (they would
        only wait for a start that may never come), and try again after a backoff, on
        its own; not counted toward intensity, so it never makes its supervisor give up."""
        child.attempt += 1
        child.start_failed = True
        delay = sup.backoff.get_backoff_time(child.attempt, self.rng)
        child.mailbox.close(
            f"resource {child.name!r} is unavailable ({msg}); its supervisor retries its "
            f"start every {sup.config.backoff.max:g}s at most"
        )
        child.pending, child.not_before = True, time.monotonic() + delay
        child.state = ChildState.RESTARTING if child.ever_started else ChildState.STARTING
        self.events.emit(ChildRestarting(sup.name, child.name, delay, child.attempt))
        self.at(delay, self.advance, sup, sup.epoch)
        self.post(self.advance, sup, sup.epoch)  # its siblings' start goes on now

    def _child_ended(self, sup: SupervisorNode, child: Node) -> None:
        """``child`` ended by itself and stays ended (a transient one normally, a
        temporary one for any reason): OTP's automatic shutdown, if it is significant."""
        mode = sup.config.auto_shutdown
        if mode == "never" or not is_significant(child) or sup.state not in ACTIVE:
            return
        if mode == "all_significant" and any(
                is_significant(c) and c.state in ACTIVE for c in sup.children):
            return
        self._auto_shutdown(sup, f"significant child {child.name!r} ended")

    def _auto_shutdown(self, sup: SupervisorNode, why: str) -> None:
        """Stop ``sup`` and its children as a normal exit; its parent then treats it as
        any child that exited normally (restarts it only if it is permanent)."""
        message = f"supervisor {sup.name!r} shut down: {why} (auto_shutdown = " \
                  f"{sup.config.auto_shutdown})"
        sup.epoch += 1
        sup.in_progress = False
        entries: list[_Entry] = []
        for child in reversed(sup.children):
            self._stop_child(child, message, ChildState.STOPPED, entries)
        reaped = self._reap(entries)
        sup.state = ChildState.STOPPED
        log.info("%s", message)
        if sup.parent is None:  # the root: the whole system has finished its work
            self._fail_waiters(sup, ResourceUnavailable(message, resource=sup.name))
            return
        # As in OTP, the parent hears of the exit once every child has ended.
        epoch = sup.epoch
        reaped.add_done_callback(
            lambda _: self.post(self._auto_shutdown_done, sup, why, epoch))

    def _auto_shutdown_done(self, sup: SupervisorNode, why: str, epoch: int) -> None:
        """The children of an auto-shutdown ``sup`` have ended: its parent reacts, unless
        ``sup`` was restarted meanwhile (a group restart above) or the system is stopping."""
        parent = sup.parent
        if parent is None or sup.epoch != epoch or self._shutdown is not None:
            return
        self.events.emit(ChildStopped(parent.name, sup.name, f"auto_shutdown: {why}"))
        if restart_type(sup) == "permanent":
            self.fault(parent, sup, f"exited normally ({why}) but is permanent",
                       during_start=False)
        else:
            self._child_ended(parent, sup)

    def _group(self, sup: SupervisorNode, child: Node) -> list[Node]:
        """The children a fault of ``child`` restarts, by strategy: as in OTP, every
        child of the group but a temporary one that has ended, so a transient child
        that exited normally and one stopped with terminate_child come back too."""
        strategy = sup.config.strategy
        if strategy == "one_for_one":
            return [child]
        index = sup.children.index(child)
        members = sup.children if strategy == "one_for_all" else sup.children[index:]
        return [c for c in members if c is child or not (
            restart_type(c) == "temporary" and c.state not in ACTIVE)]

    def give_up(self, sup: SupervisorNode, reason: str) -> None:
        """Intensity exhausted: stop every child, refuse their calls, escalate."""
        sup.epoch += 1
        sup.in_progress = False
        message = f"supervisor {sup.name!r} gave up: {reason}"
        entries: list[_Entry] = []
        for child in reversed(sup.children):
            self._stop_child(child, message, ChildState.FAILED, entries)
        self._reap(entries)
        sup.last_fault = reason
        if sup.parent is None:
            self.failure = message  # before the state: readers of FAILED expect a reason
        sup.state = ChildState.FAILED
        self.events.emit(SupervisorGaveUp(sup.name, reason))
        log.error("%s", message)
        self._fail_waiters(sup, ResourceUnavailable(message, resource=sup.name))
        if sup.parent is not None:
            self.fault(sup.parent, sup, message, during_start=False)
        elif not self.booted.done():
            self.booted.set_exception(ResourceUnavailable(message, resource=sup.name))

    def _fail_waiters(self, node: Node, error: BaseException) -> None:
        for n in walk(node):
            waiters, n.waiters = n.waiters, []
            for waiter in waiters:
                waiter.set_exception(error)

    # -- stopping ---------------------------------------------------------------------

    def _stop_child(self, child: Node, final: str | None, state: ChildState,
                    entries: list[_Entry]) -> None:
        """Stop ``child`` (reverse order for a subtree). ``final``: refuse its calls
        with this reason; None: a stop before a restart, queued calls are kept.

        Bookkeeping only: the incarnations to end are appended to ``entries``, in
        order, for ``_reap`` to end on a stopper thread."""
        child.pending = child.pending and final is None
        if isinstance(child, SupervisorNode):
            child.epoch += 1
            child.in_progress = False
            for grandchild in reversed(child.children):
                self._stop_child(grandchild, final, state, entries)
            child.state = state
            return
        assert isinstance(child, ResourceChild)
        if final is not None:
            child.mailbox.close(final)
        runner, child.runner, child.connecting = child.runner, None, False
        if runner is not None:
            self._retire(child, runner, entries)
        if child.state != ChildState.STOPPED or final is None:  # an ended child stays STOPPED
            child.state = state

    def _retire(self, child: ResourceChild, runner: Runner,
                entries: list[_Entry], why: str = "") -> list[_Entry]:
        """``runner`` serves no more calls; a stopper will end it (appended to entries).
        ``why`` it stops is what a lease active on it is broken with."""
        runner.view.stop_serving(f"resource {child.name!r}: {why}" if why else "")
        runner.started.cancel()  # a connect still running will not be published
        child.mailbox.running = 0
        child.retired.append(runner)
        entries.append((child, runner))
        return entries

    def _reap(self, entries: list[_Entry], *, abort_first: bool = False
              ) -> concurrent.futures.Future[None]:
        """End ``entries`` in order on a stopper thread; the future resolves when done."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not entries:
            done.set_result(None)
            return done
        thread = threading.Thread(target=self._stopper, args=(entries, abort_first, done),
                                  name="sessions-stopper", daemon=True)
        self._stoppers.add(thread)
        thread.start()
        return done

    def _stopper(self, entries: list[_Entry], abort_first: bool,
                 done: concurrent.futures.Future[None]) -> None:
        """Stopper thread: end each incarnation in order. Ask it to stop and wait up to
        its shutdown_timeout (none if ``abort_first``); if it is still running, fail
        what it owes, abort() its connection and wait ABORT_GRACE more. Bounded by
        ``hurry`` once the system is stopping."""
        try:
            for child, runner in entries:
                try:
                    self._end(child, runner, abort_first)
                except Exception:  # a bug here must not leave a restart waiting for ever
                    log.critical("stopping %r failed", child.name, exc_info=True)
                finally:
                    self.post(self._reaped, child, runner)
        finally:
            done.set_result(None)
            self.post(self._stopper_done, threading.current_thread())

    def _end(self, child: ResourceChild, runner: Runner, abort_first: bool) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            runner.actor_ref.stop(block=False)
        wait = shutdown_wait(child.spec)
        if not abort_first and wait > 0:
            self._wait_end(runner, time.monotonic() + wait)
        if runner_alive(runner):
            what = runner.busy_what or "its work"
            runner.abandon(
                f"resource {child.name!r} was abandoned" if abort_first
                else f"resource {child.name!r} was stopped with shutdown_timeout = "
                "brutal_kill" if wait == 0 else
                f"resource {child.name!r} was stopped ({what} did not finish within "
                f"shutdown_timeout={wait:g}s)")
            runner.abort()
            self._wait_end(runner, time.monotonic() + ABORT_GRACE, grace=True)
        else:  # ended: replies it still owed (Deferred) will never come
            runner.abandon(f"resource {child.name!r} stopped")

    def _wait_end(self, runner: Runner, deadline: float, grace: bool = False) -> None:
        """Wait for ``runner``'s thread to end, until ``deadline`` or ``hurry`` (plus a
        quarter second for an aborted one, so that stop() stays bounded)."""
        while True:
            limit = min(deadline, self.hurry + (0.25 if grace else 0.0))
            left = limit - time.monotonic()
            if left <= 0 or not runner_alive(runner):
                return
            thread = runner.thread
            if thread is None:
                runner.entered.wait(min(left, 0.05))
            else:
                thread.join(min(left, 0.05))

    def _reaped(self, child: ResourceChild, runner: Runner) -> None:
        if runner in child.retired:
            child.retired.remove(runner)
        if runner_alive(runner):
            child.lost.append(runner)
            log.error("resource %r: an abandoned incarnation's thread is still blocked "
                      "(in %s) after abort(); it is left behind", child.name,
                      runner.busy_what or "a driver call")
        sup = child.parent
        while sup is not None:  # a restart here or above may have waited for this end
            self.advance(sup)
            sup = sup.parent

    def _stopper_done(self, thread: threading.Thread) -> None:
        self._stoppers.discard(thread)
        if self._shutdown is not None and not self._stoppers:
            self._exit = True
            if not self._shutdown.done():
                self._shutdown.set_result(None)

    def shutdown(self, reason: str = "the system is stopping"
                 ) -> concurrent.futures.Future[None]:
        """Stop the whole tree in reverse start order, then end the supervision thread.

        Every resource gets its shutdown_timeout, and the whole stop at most the largest
        of them (``hurry``): what is still running then is aborted. The future resolves
        once every stopper is done, queued calls refused and running ones failed."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._shutdown is not None:
            return self._shutdown
        self._shutdown = done
        nodes = walk(self.root)
        self.hurry = time.monotonic() + max(
            (shutdown_wait(n.spec) for n in nodes if isinstance(n, ResourceChild)),
            default=0.0)
        for node in reversed(nodes):
            if isinstance(node, ResourceChild) and node.state in ACTIVE:
                assert node.parent is not None
                self.events.emit(ChildStopped(node.parent.name, node.name, reason))
        entries: list[_Entry] = []
        self._stop_child(self.root, reason, ChildState.STOPPED, entries)
        self.root.state = ChildState.STOPPED
        self._reap(entries)
        self._fail_waiters(self.root, ResourceUnavailable(reason, resource=ROOT))
        if not self.booted.done():
            self.booted.set_exception(ResourceUnavailable(reason, resource=ROOT))
        if not self._stoppers:
            self._exit = True
            done.set_result(None)
        return done

    # -- dynamic children -------------------------------------------------------------

    def add_child(self, sup: SupervisorNode, node: Node) -> concurrent.futures.Future[None]:
        """start_child: ``node`` (already in ``sup.children``) starts now; the future
        resolves once it serves, or fails, the node removed, if its first start fails."""
        waiter: concurrent.futures.Future[None] = concurrent.futures.Future()
        if sup.state not in ACTIVE:
            sup.children.remove(node)
            waiter.set_exception(ResourceUnavailable(f"supervisor {sup.name!r} is {sup.state}",
                                                     resource=node.name))
            return waiter
        node.adding, node.waiters = True, [waiter]
        if isinstance(node, SupervisorNode):  # a pool: its members start under it
            node.pending = True
            self.begin(node)
            self.advance(sup)
        else:
            node.pending = True
            self.advance(sup)
        return waiter

    def _remove(self, node: Node, why: str) -> None:
        """Take a stopped ``node`` out of the tree for good; its handles refuse calls."""
        assert node.parent is not None
        for n in walk(node):
            if isinstance(n, ResourceChild):
                n.mailbox.close(f"{n.kind} {n.name!r} was removed: {why}")
        node.parent.children.remove(node)
        self.events.emit(ChildStopped(node.parent.name, node.name, f"removed: {why}"))
        if self.on_remove is not None:
            self.on_remove(node)

    def _abort_add(self, node: Node, err: BaseException) -> None:
        """A child being added failed its first start: stop it and take it out."""
        sup = node.parent
        assert sup is not None
        entries: list[_Entry] = []
        self._stop_child(node, f"{node.kind} {node.name!r} failed to start", ChildState.STOPPED,
                         entries)
        self._reap(entries)
        if node in sup.children:
            sup.children.remove(node)
        error = ResourceUnavailable(f"resource {node.name!r} failed to start: "
                                    f"{describe(err)}", resource=node.name)
        error.__cause__ = err
        waiters, node.waiters = node.waiters, []
        for waiter in waiters:
            waiter.set_exception(error)
        self.advance(sup)  # children after it may be pending

    def restart_child(self, node: Node) -> concurrent.futures.Future[None]:
        """restart_child: stop ``node`` if it runs, then start it; the future resolves
        once it serves (fails if its connect fails; the policy then retries)."""
        sup = node.parent
        assert sup is not None
        waiter: concurrent.futures.Future[None] = concurrent.futures.Future()
        if sup.state not in ACTIVE:
            waiter.set_exception(ResourceUnavailable(f"supervisor {sup.name!r} is {sup.state}",
                                                     resource=node.name))
            return waiter
        entries: list[_Entry] = []
        if node.state in ACTIVE:
            self._stop_child(node, None, ChildState.RESTARTING, entries)
        self._reap(entries)
        node.waiters.append(waiter)
        node.pending, node.not_before = True, 0.0
        if isinstance(node, SupervisorNode):
            node.ever_started = True
            self.begin(node)
        else:
            assert isinstance(node, ResourceChild)
            node.mailbox.reopen()
            node.start_failed = False
            node.state = ChildState.RESTARTING if node.ever_started else ChildState.STARTING
        self.advance(sup)
        return waiter

    def respec(self, node: ResourceChild, spec: ResourceConfig, cls: type[ResourceActor],
               actor: ResourceActor, breaker: Breaker | None
               ) -> concurrent.futures.Future[None]:
        """A config reload changed ``node``'s spec: end its incarnation, give it the new
        spec, kind object and breaker, and start it again (not counted toward restart
        intensity, like restart_child). Its mailbox, the calls queued in it and its
        handle are kept. A child stopped by hand (terminate_child) takes the new spec
        and stays stopped; the future is then resolved at once."""
        entries: list[_Entry] = []
        stopped = node.state == ChildState.STOPPED
        if not stopped:
            self._stop_child(node, None, ChildState.RESTARTING, entries)
        self._reap(entries)
        actor.name = node.name
        node.spec, node.cls, node.actor, node.breaker = spec, cls, actor, breaker
        node.kind = cls.kind or spec.kind
        node.call_timeout = spec.call_timeout
        node.stall_timeout = stall_timeout(spec)
        node.last_fault = None
        if stopped:
            done: concurrent.futures.Future[None] = concurrent.futures.Future()
            done.set_result(None)
            return done
        return self.restart_child(node)

    def change_policy(self, sup: SupervisorNode, config: SupervisorConfig) -> None:
        """A config reload changed ``sup``'s policy: applied in place, its children left
        running (as OTP's ``sys:change_code`` lets a supervisor change its flags). The
        restarts already counted stay in the intensity window and are weighed against
        the new limit at the next restart, as OTP does; a backoff timer already set
        keeps its time, the next one follows the new backoff."""
        sup.config = config
        sup.intensity = dataclasses.replace(
            sup.intensity, max_restarts=config.max_restarts, period=config.period)
        b = config.backoff
        sup.backoff = Backoff(b.initial, b.max, b.multiplier, b.jitter)

    def delete_child(self, node: Node) -> None:
        """delete_child: take a child that is not running (and its subtree) out of the
        tree for good; its names are free again (``on_remove``)."""
        if node.state in ACTIVE:
            raise ChildRunning(f"{node.kind} {node.name!r} is {node.state}: "
                               "terminate_child() it before delete_child()", name=node.name)
        assert node.parent is not None
        node.parent.children.remove(node)
        if self.on_remove is not None:
            self.on_remove(node)

    def discard(self) -> None:
        """The system is stopped before it ever booted: nothing runs but the event
        thread, so the tree is simply marked stopped (caller's thread; the supervision
        thread never started)."""
        assert not self.alive
        self.root.state = ChildState.STOPPED

    def stop_one(self, child: Node, reason: str) -> concurrent.futures.Future[None]:
        """terminate_child: stop for good (until restart_child); the future resolves
        once its incarnations have ended."""
        assert child.parent is not None
        entries: list[_Entry] = []
        self._stop_child(child, f"{child.kind} {child.name!r} was terminated ({reason})",
                         ChildState.STOPPED, entries)
        child.pending = False
        self.events.emit(ChildStopped(child.parent.name, child.name, reason))
        self._fail_waiters(child, ResourceUnavailable(
            f"{child.kind} {child.name!r} was terminated ({reason})", resource=child.name))
        return self._reap(entries)
