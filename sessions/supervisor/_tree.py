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

from sessions._config import ROOT, ResourceConfig, SupervisorConfig
from sessions._errors import ConfigError, ResourceUnavailable
from sessions._futures import SessionFuture
from sessions._redact import redact
from sessions.actors import ResourceActor
from sessions.actors._runner import Mailbox, Runner
from sessions.messages import (
    Call,
    ChildFaulted,
    ChildRestarting,
    ChildStarted,
    ChildStopped,
    SupervisorGaveUp,
)
from sessions.supervisor._breaker import Breaker
from sessions.supervisor._events import EventBus
from sessions.supervisor._policy import Backoff, RestartIntensity
from sessions.supervisor._stats import CallStats

log = logging.getLogger("sessions.supervisor")

ACTIVE = ("starting", "running", "restarting")


class Node:
    """What a supervisor knows about one child, resource or supervisor."""

    kind: str

    def __init__(self, name: str, parent: SupervisorNode | None) -> None:
        self.name = name
        self.parent = parent
        self.state = "starting"
        self.restarts = 0
        self.pending = False
        """The supervisor's start cursor still has to (re)start this child."""
        self.not_before = 0.0
        """Monotonic time before which a pending child must not start (backoff)."""
        self.attempt = 0
        """Consecutive failures (the backoff's ``n``)."""
        self.started_at = 0.0
        self.ever_started = False
        self.last_fault: str | None = None


def make_actor(cls: type[ResourceActor], options: dict[str, Any], kind: str,
               path: str) -> ResourceActor:
    """Construct a kind's actor object (side-effect free by the ResourceActor contract:
    ``connect()`` does the I/O); a constructor rejecting its options is a config error."""
    try:
        return cls(**options)
    except (TypeError, ValueError) as err:
        raise ConfigError([(path, f"kind {kind!r} rejected its options: {err}")]) from err


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
        self.mailbox = Mailbox(name, spec.call_timeout)
        self.runner: Runner | None = None
        self.call_timeout = spec.call_timeout
        self.breaker = breaker

    def submit(self, fn: Callable[..., Any], method: str, /, *args: Any,
               **kwargs: Any) -> SessionFuture[Any]:
        """Queue one call; the hot path of every handle method."""
        future: SessionFuture[Any] = SessionFuture(
            self.name, method, time.monotonic() + self.call_timeout
        )
        self.mailbox.put(Call(fn, args, kwargs, future))
        return future

    @property
    def queued(self) -> int:
        return len(self.mailbox)

    @property
    def stats(self) -> CallStats:
        return self.mailbox.stats


class Pool:
    """``pool_size`` members behind one handle: each call goes to the least-loaded
    running member; a member restarting does not stop the others from serving."""

    def __init__(self, name: str, node: SupervisorNode, members: list[ResourceChild]) -> None:
        self.name = name
        self.node = node
        self.members = members
        self.cls = members[0].cls
        self.kind = members[0].kind
        self.breaker = members[0].breaker
        self._turn = itertools.count()

    def submit(self, fn: Callable[..., Any], method: str, /, *args: Any,
               **kwargs: Any) -> SessionFuture[Any]:
        members = self.members
        n = len(members)
        start = next(self._turn)
        best: ResourceChild | None = None
        best_load = math.inf
        for i in range(n):
            member = members[(start + i) % n]
            if member.state != "running":
                continue
            load = len(member.mailbox.calls) + member.mailbox.running
            if load < best_load:
                best, best_load = member, load
                if not load:
                    break
        if best is None:  # nobody running: queue where the wait is shortest
            open_members = [m for m in members if m.mailbox.refusal is None] or members
            best = min(open_members, key=lambda m: len(m.mailbox.calls))
        return best.submit(fn, method, *args, **kwargs)

    @property
    def state(self) -> str:
        if self.node.state != "running":
            return self.node.state
        states = {m.state for m in self.members}
        return "running" if "running" in states else "restarting"

    @property
    def restarts(self) -> int:
        return self.node.restarts + sum(m.restarts for m in self.members)

    @property
    def queued(self) -> int:
        return sum(m.queued for m in self.members)

    @property
    def stats(self) -> CallStats:
        """The members' statistics summed."""
        return CallStats.total([m.stats for m in self.members])


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


class Kernel:
    """The supervision thread: runs every decision of the tree, one at a time."""

    def __init__(self, root: SupervisorNode, events: EventBus,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.root = root
        self.events = events
        self.clock = clock
        self.rng = rng or random.Random()
        self.booted: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.failure: str | None = None
        self._cond = threading.Condition()
        self._queue: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._timers: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._exit = False
        self._thread = threading.Thread(target=self._loop, name="sessions-supervisor",
                                        daemon=True)

    # -- plumbing ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the supervision thread (from any thread)."""
        with self._cond:
            self._queue.append((fn, args))
            self._cond.notify()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the supervision thread and return its result."""
        if threading.current_thread() is self._thread:
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
            next_deadline = self._expire_unserved()
            with self._cond:
                now = time.monotonic()
                if self._queue:
                    fn, args = self._queue.popleft()
                elif self._timers and self._timers[0][0] <= now:
                    _, _, fn, args = heapq.heappop(self._timers)
                else:
                    wake = min(self._timers[0][0] if self._timers else math.inf, next_deadline)
                    self._cond.wait(None if wake == math.inf else wake - now)
                    continue
            try:
                fn(*args)
            except Exception:  # a bug here must not kill supervision of everything else
                log.critical("supervision step %r failed", fn, exc_info=True)

    def _expire_unserved(self) -> float:
        """Time out queued calls of resources that no incarnation is serving."""
        now, nearest = time.monotonic(), math.inf
        for node in walk(self.root):
            if isinstance(node, ResourceChild) and node.state != "running" and node.mailbox.calls:
                nearest = min(nearest, node.mailbox.expire_overdue(now))
        return nearest

    # -- start cursor -----------------------------------------------------------------

    def boot(self) -> None:
        self.begin(self.root)

    def begin(self, sup: SupervisorNode) -> None:
        """Start a supervisor anew: fresh intensity, every child pending, in order."""
        sup.epoch += 1
        sup.intensity = sup.intensity.reset()
        sup.state = "restarting" if sup.ever_started else "starting"
        sup.in_progress = True
        for child in sup.children:
            if isinstance(child, ResourceChild):
                if child.spec.restart == "temporary" and child.state == "stopped":
                    continue  # a temporary child that ended stays ended
                child.mailbox.reopen()
            child.pending, child.not_before = True, 0.0
            child.state = "restarting" if child.ever_started else "starting"
        self.advance(sup)

    def advance(self, sup: SupervisorNode, epoch: int | None = None) -> None:
        """Start the pending children of ``sup`` in order, as far as backoff allows."""
        if (epoch is not None and epoch != sup.epoch) or sup.state not in ACTIVE:
            return
        epoch = sup.epoch
        for child in sup.children:
            if not child.pending:
                continue
            wait = child.not_before - time.monotonic()
            if wait > 0:
                self.at(wait, self.advance, sup, epoch)
                return
            if isinstance(child, SupervisorNode):
                if child.state != "running":
                    if child.in_progress:
                        return  # it posts advance(sup) when it completes
                    self.begin(child)
                    if sup.epoch != epoch or child.state != "running":
                        return
            else:
                assert isinstance(child, ResourceChild)
                err = self.start_resource(child)
                if sup.epoch != epoch:
                    return
                if err is not None:
                    self.fault(sup, child, err, during_start=True)
                    return
            self._started(sup, child)
        sup.in_progress = False
        if sup.state != "running":
            sup.state = "running"
            if sup.parent is not None:
                self.post(self.advance, sup.parent)
            elif not self.booted.done():
                self.booted.set_result(None)

    def _started(self, sup: SupervisorNode, child: Node) -> None:
        child.pending = False
        if child.ever_started:
            child.restarts += 1
        child.ever_started = True
        child.started_at = self.clock()
        self.events.emit(ChildStarted(sup.name, child.name, child.kind, child.restarts))
        if isinstance(child, ResourceChild) and child.runner is not None:
            child.runner.serve()  # only now: the state and counters above are current

    def start_resource(self, child: ResourceChild) -> BaseException | None:
        """Start one incarnation and wait until it has connected; the error if it failed."""
        old = child.runner
        if old is not None and old.thread is not None and old.thread.is_alive():
            old.thread.join(child.spec.shutdown_timeout)
            if old.thread.is_alive():
                return RuntimeError("the previous incarnation is still stuck in a driver call")
        child.state = "restarting" if child.ever_started else "starting"

        def register(runner: Runner) -> None:
            child.runner = runner

        try:
            runner_ref = Runner.start(
                child.actor, child.mailbox, child.spec.health_interval,
                lambda r, e, w: self._runner_ended(child, r, e, w), register,
                breaker=child.breaker,
            )
        except Exception as exc:  # pragma: no cover - thread creation failed
            return exc
        runner = child.runner
        assert runner is not None
        try:
            self._await_start(runner, child.spec.connect_timeout)
        except concurrent.futures.TimeoutError:
            if runner.started.cancel():
                runner_ref.stop(block=False)
                return TimeoutError(
                    f"connect() did not finish within connect_timeout={child.spec.connect_timeout}s"
                )
            try:
                runner.started.result()
            except BaseException as exc:
                return exc
        except BaseException as exc:
            return exc
        child.state = "running"
        return None

    def _await_start(self, runner: Runner, timeout: float) -> None:
        """Wait for a connect, still timing out calls that queue up meanwhile."""
        give_up = time.monotonic() + timeout
        while True:
            next_deadline = self._expire_unserved()
            wait = min(give_up, next_deadline) - time.monotonic()
            try:
                runner.started.result(max(wait, 0.0))
                return
            except concurrent.futures.TimeoutError:
                if time.monotonic() >= give_up:
                    raise

    # -- faults -----------------------------------------------------------------------

    def _runner_ended(self, child: ResourceChild, runner: Runner,
                      exc: BaseException | None, where: str) -> None:
        """Called on the actor's thread when an incarnation faulted or exited normally."""
        if child.runner is runner and child.state == "running":
            child.state = "restarting"
        self.post(self._on_runner_ended, child, runner, exc, where)

    def _on_runner_ended(self, child: ResourceChild, runner: Runner,
                         exc: BaseException | None, where: str) -> None:
        if child.runner is not runner or child.pending or child.state in ("stopped", "failed"):
            return  # stale: already restarted, stopping, or stopped
        sup = child.parent
        assert sup is not None
        if exc is None:
            if child.spec.restart != "permanent":
                child.state = "stopped"
                child.mailbox.close(f"resource {child.name!r} stopped normally ({where})")
                self.events.emit(ChildStopped(sup.name, child.name, f"exited normally: {where}"))
                return
            self.fault(sup, child, f"exited normally ({where}) but is permanent",
                       during_start=False)
            return
        self.fault(sup, child, f"{where}: {exc!r}", during_start=False)

    def fault(self, sup: SupervisorNode, child: Node, error: str | BaseException,
              during_start: bool) -> None:
        """Apply ``sup``'s policy to a child that broke (or failed to start)."""
        msg = redact(error if isinstance(error, str) else repr(error))
        if during_start and not isinstance(error, str):
            msg = f"start failed: {msg}"
        child.last_fault = msg
        if during_start and isinstance(child, ResourceChild) and child.breaker is not None:
            child.breaker.record(False, msg)
        self.events.emit(ChildFaulted(sup.name, child.name, msg, during_start))
        log.warning("%s %r faulted under %r: %s", child.kind, child.name, sup.name, msg)
        if isinstance(child, ResourceChild) and child.spec.restart == "temporary":
            self._stop_child(child, f"temporary resource {child.name!r} is not restarted "
                                    f"after a fault: {msg}", "stopped")
            self.events.emit(ChildStopped(sup.name, child.name, "temporary child faulted"))
            self.post(self.advance, sup)
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
        group = [child] if during_start else self._group(sup, child)
        for sibling in reversed(group):
            if sibling is not child:
                self._stop_child(sibling, None, "restarting")
        wake = time.monotonic() + delay
        for member in group:
            if (member is not child and isinstance(member, ResourceChild)
                    and member.spec.restart == "temporary"):
                self._stop_child(member, f"temporary resource {member.name!r} stopped "
                                         f"because {child.name!r} faulted", "stopped")
                continue
            member.pending, member.not_before, member.state = True, wake, "restarting"
            self.events.emit(ChildRestarting(sup.name, member.name, delay, child.attempt))
        self.at(delay, self.advance, sup, sup.epoch)

    def _group(self, sup: SupervisorNode, child: Node) -> list[Node]:
        """The children a fault of ``child`` restarts, by strategy."""
        strategy = sup.config.strategy
        if strategy == "one_for_one":
            return [child]
        index = sup.children.index(child)
        members = sup.children if strategy == "one_for_all" else sup.children[index:]
        return [c for c in members if c is child or c.state in ACTIVE]

    def give_up(self, sup: SupervisorNode, reason: str) -> None:
        """Intensity exhausted: stop every child, refuse their calls, escalate."""
        sup.epoch += 1
        sup.in_progress = False
        message = f"supervisor {sup.name!r} gave up: {reason}"
        for child in reversed(sup.children):
            self._stop_child(child, message, "failed")
        sup.last_fault = reason
        if sup.parent is None:
            self.failure = message  # before the state: readers of "failed" expect a reason
        sup.state = "failed"
        self.events.emit(SupervisorGaveUp(sup.name, reason))
        log.error("%s", message)
        if sup.parent is not None:
            self.fault(sup.parent, sup, message, during_start=False)
        elif not self.booted.done():
            self.booted.set_exception(ResourceUnavailable(message, resource=sup.name))

    def _stop_child(self, child: Node, final: str | None, state: str) -> None:
        """Stop ``child`` (reverse order for a subtree). ``final``: refuse its calls
        with this reason; None: a stop before a restart, queued calls are kept."""
        child.pending = child.pending and final is None
        if isinstance(child, SupervisorNode):
            child.epoch += 1
            child.in_progress = False
            for grandchild in reversed(child.children):
                self._stop_child(grandchild, final, state)
            child.state = state
            return
        assert isinstance(child, ResourceChild)
        if final is not None:
            child.mailbox.close(final)
        runner = child.runner
        if runner is not None and runner.thread is not None:
            runner.actor_ref.stop(block=False)
            runner.thread.join(child.spec.shutdown_timeout)
            if runner.thread.is_alive():
                log.error("resource %r did not stop within shutdown_timeout=%ss; its thread "
                          "is abandoned", child.name, child.spec.shutdown_timeout)
        if child.state != "stopped" or final is None:  # a child already ended stays "stopped"
            child.state = state

    def shutdown(self, reason: str = "the system is stopping") -> None:
        """Stop the whole tree in reverse start order, then end the supervision thread."""
        for node in reversed(walk(self.root)):
            if isinstance(node, ResourceChild) and node.state in ACTIVE:
                assert node.parent is not None
                self.events.emit(ChildStopped(node.parent.name, node.name, reason))
        self._stop_child(self.root, reason, "stopped")
        self.root.state = "stopped"
        self._exit = True
        if not self.booted.done():
            self.booted.set_exception(ResourceUnavailable(reason, resource=ROOT))

    # -- dynamic children -------------------------------------------------------------

    def stop_one(self, child: Node, reason: str) -> None:
        """terminate_child: stop for good (until restart_child)."""
        assert child.parent is not None
        self._stop_child(child, f"{child.kind} {child.name!r} was terminated ({reason})",
                         "stopped")
        child.pending = False
        self.events.emit(ChildStopped(child.parent.name, child.name, reason))
