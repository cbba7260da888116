"""``start()``, the ``System`` it returns, and the stable ``Handle`` per resource."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import itertools
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sessions import _config
from sessions._config import (
    ROOT,
    ResourceConfig,
    SupervisorConfig,
    SystemConfig,
    check_options,
    make_actor,
)
from sessions._errors import CallTimeout, ConfigError, InjectedFault, ResourceUnavailable
from sessions._runtime.breaker import Breaker
from sessions._runtime.contract import public_methods
from sessions._runtime.futures import SessionFuture, resolved
from sessions._runtime.inject import FaultPlan, InjectedStall
from sessions._runtime.kinds import resolve_kind
from sessions._runtime.runner import LeaseToken
from sessions._runtime.stats import CallStats
from sessions.messages import ACTIVE, ChildState, ConfigReloaded, Event
from sessions.supervisor._events import EventBus
from sessions.supervisor._tree import (
    Kernel,
    Node,
    Pool,
    ResourceChild,
    SupervisorNode,
    runner_alive,
    walk,
)

ConfigSource = str | os.PathLike[str] | Mapping[str, Any]

log = logging.getLogger("sessions")


@dataclass(frozen=True)
class ChildInfo:
    """One row of ``System.which_children()``."""

    name: str
    """Child name."""

    type: str
    """``"resource"`` or ``"supervisor"``."""

    kind: str
    """Resource kind, or ``"supervisor"``."""

    state: ChildState
    """``starting``, ``running``, ``restarting``, ``stopped`` or ``failed`` (a str enum)."""

    restarts: int
    """Completed restarts."""


@dataclass(frozen=True)
class ChildCount:
    """``System.count_children()``: Erlang/OTP's ``count_children``."""

    specs: int
    """Children of the supervisor, whatever their state (deleted ones excluded)."""

    active: int
    """Children running now (serving, for a resource; started, for a supervisor)."""

    supervisors: int
    """Children that are supervisors."""

    resources: int
    """Children that are resources (OTP's workers; a pool counts as one)."""


@dataclass(frozen=True)
class Stall:
    """One row of ``System.stalls()``: work that has run past its ``stall_timeout``."""

    resource: str
    """The resource (a pool member: ``name#i``) whose incarnation is stuck; the
    supervision thread itself is ``"supervisor"``."""

    what: str
    """What it is stuck in: ``read()`` (a call), ``connect()``, ``run_batch()``, or
    ``a step`` for the supervision thread."""

    seconds: float | None
    """How long it has been stuck so far (None if unknown)."""

    abandoned: bool
    """True once the stall watchdog has given up on it (its callers failed, ``abort()``
    sent, a new incarnation started or starting) and its thread is still blocked: a
    driver call ``abort()`` could not reach. Only a new process frees that thread."""


SUPERVISION_STALL = 2.0
"""Seconds the supervision thread may go without a turn of its loop (it turns at least
every 0.1 s) before ``System.stalls()`` reports it stuck."""


DEFAULT_IDLE_TIMEOUT = 60.0
"""Seconds a lease may go without a call before the supervisor revokes it (rolling a
database transaction back): a block stuck or forgotten does not hold its member for
ever. ``handle.lease(idle_timeout=None)`` disables it."""

_HELD: contextvars.ContextVar[tuple[Lease, ...]] = contextvars.ContextVar(
    "sessions_held_leases", default=())
"""The leases entered with ``with handle``/``async with handle`` in this thread or task,
innermost last (so that ``__exit__`` finds its own)."""

_LEASE_NUMBERS = itertools.count(1)


class Handle:
    """A stable reference to one resource, valid across any number of restarts.

    ``handle.method(*args, **kwargs)`` queues the call and returns a
    :class:`~sessions.SessionFuture` at once. Unknown methods raise
    ``AttributeError`` naming the resource and its methods.

    ``with handle as x`` / ``async with handle as x`` is ``handle.lease()``: ``x`` is a
    :class:`Lease` holding one member (one connection) for the block.
    """

    def __init__(self, target: ResourceChild | Pool) -> None:
        self._bind(target)

    def _bind(self, target: ResourceChild | Pool) -> None:
        """Serve ``target`` (at creation; and when a config reload rebuilt the resource,
        so that handles the application holds keep working). Method lookups cached by
        ``__getattr__`` are dropped: the kind, its methods or its breaker may differ."""
        for cached in [k for k in self.__dict__ if not k.startswith("_")]:
            del self.__dict__[cached]
        self._child = target
        self._methods = public_methods(target.cls)
        self._submit = target.submit if target.breaker is None else self._guarded

    def _method(self, method: str) -> Callable[..., Any]:
        """The kind's function for ``method``, or AttributeError listing the methods."""
        if method.startswith("_") or method not in self._methods:
            raise AttributeError(
                f"resource {self._child.name!r} (kind {self._child.kind!r}) has no method "
                f"{method!r}; its methods: {', '.join(sorted(self._methods))}"
            )
        fn: Callable[..., Any] = getattr(self._child.cls, method)
        return fn

    def __getattr__(self, method: str) -> Callable[..., SessionFuture[Any]]:
        caller = functools.partial(self._submit, self._method(method), method)
        self.__dict__[method] = caller  # later lookups skip __getattr__
        return caller

    def _guarded(self, fn: Callable[..., Any], method: str, /, *args: Any,
                 **kwargs: Any) -> SessionFuture[Any]:
        """Submit through the circuit breaker: refused at once while it is open."""
        return self._gate(method, lambda: self._child.submit(fn, method, *args, **kwargs))

    def _gate(self, method: str,
              submit: Callable[[], SessionFuture[Any]]) -> SessionFuture[Any]:
        """``submit()`` unless the circuit breaker (if any) refuses the call."""
        breaker = self._child.breaker
        if breaker is None:
            return submit()
        allowed, probe = breaker.allow()
        if not allowed:
            self._child.own_stats.count_only("refused")
            return resolved(self._child.name, method,
                            ResourceUnavailable(breaker.refusal(), resource=self._child.name))
        future = submit()
        if probe:  # a probe that never ran (timed out in the queue, refused, cancelled)
            def settle(f: concurrent.futures.Future[Any]) -> None:  # is a failure
                if f.cancelled():  # else the circuit would stay half-open for ever
                    breaker.record(False, f"the probe call {method}() was cancelled")
                    return
                err = f.exception()
                if isinstance(err, ResourceUnavailable) or (
                    isinstance(err, CallTimeout) and not err.started
                ):
                    breaker.record(False, err)

            future.add_done_callback(settle)
        return future

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> SessionFuture[Any]:
        """Call ``method`` by name (for names that clash with handle attributes)."""
        caller: Callable[..., SessionFuture[Any]] = self.__getattr__(method)
        return caller(*args, **kwargs)

    @property
    def urgent(self) -> HandleView:
        """This handle with every call urgent: ``handle.urgent.stop_motor()`` is served
        before every plain call already queued (an emergency stop does not wait behind
        200 queued log writes), after the urgent calls queued before it, never
        interrupting a call in progress; a lease that has begun finishes first."""
        return HandleView(self, urgent=True, key=None)

    def coalescing(self, key: str) -> HandleView:
        """This handle with latest-value-wins calls under ``key``: a call made through it
        replaces a call with the same key still queued (not started), in that call's
        place in line; the replaced call's future resolves with
        :class:`~sessions.messages.Superseded` (it never ran). A call that has started
        is never touched. ``handle.coalescing("setpoint:motor1").set_speed(v)`` sends
        setpoints faster than the device takes them without a growing queue."""
        return HandleView(self, urgent=False, key=_coalescing_key(key))

    @property
    def name(self) -> str:
        """The resource's name in the config."""
        return self._child.name

    @property
    def kind(self) -> str:
        """The resource's kind."""
        return self._child.kind

    @property
    def state(self) -> str:
        """``starting``, ``running``, ``restarting``, ``stopped`` or ``failed``."""
        return self._child.state

    @property
    def restarts(self) -> int:
        """Completed restarts of this resource."""
        return self._child.restarts

    @property
    def queued(self) -> int:
        """Calls waiting in the mailbox (all members' for a pool)."""
        return self._child.queued

    @property
    def circuit(self) -> str | None:
        """``closed``, ``open`` or ``half_open``; None without a breaker."""
        breaker = self._child.breaker
        return None if breaker is None else breaker.state

    def __repr__(self) -> str:
        return f"<Handle {self.name!r} kind={self.kind!r} state={str(self.state)!r}>"

    # -- leases -----------------------------------------------------------------------

    def lease(self, *, timeout: float | None = None,
              idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT) -> Lease:
        """A :class:`Lease` of one member of this resource (of a pool: the least-loaded
        one without a lease), for a ``with``/``async with`` block.

        ``timeout``: seconds the lease may wait to begin (default: the resource's
        ``call_timeout``); ``idle_timeout``: seconds without a call after which the
        lease is revoked (default :data:`DEFAULT_IDLE_TIMEOUT`; None: never).
        """
        return Lease(self, timeout, idle_timeout)

    def __enter__(self) -> Lease:
        """``with handle as x``: the same as ``with handle.lease() as x``."""
        lease = self.lease()
        lease.__enter__()
        _HELD.set((*_HELD.get(), lease))
        return lease

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._held().__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> Lease:
        """``async with handle as x``: the same as ``async with handle.lease() as x``."""
        lease = self.lease()
        await lease.__aenter__()
        _HELD.set((*_HELD.get(), lease))
        return lease

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._held().__aexit__(exc_type, exc, tb)

    def _held(self) -> Lease:
        """Take the innermost lease of this handle entered with ``with handle``."""
        held = _HELD.get()
        for i in range(len(held) - 1, -1, -1):
            if held[i]._handle is self:
                _HELD.set(held[:i] + held[i + 1:])
                return held[i]
        raise RuntimeError(f"no lease of resource {self.name!r} was entered with "
                           "'with handle' in this thread or task")


def _coalescing_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise TypeError(f"a coalescing key must be a non-empty str, not {key!r}")
    return key


class _ByName:
    """A handle's methods by name, for the objects that submit them their own way
    (``HandleView``, ``Lease``): ``obj.method(...)`` is ``obj._submit(fn, "method",
    ...)`` with the kind's function.

    The function is looked up through the handle on every access, never cached here: a
    view is often kept for the life of a program (a setpoint loop), and a reload that
    changes the resource's kind rebinds the handle (``Handle._bind``), which must reach
    the views too. The lookup is two dict reads, small beside a submit."""

    _handle: Handle

    def _submit(self, fn: Callable[..., Any], method: str, /, *args: Any,
                **kwargs: Any) -> SessionFuture[Any]:
        raise NotImplementedError

    def __getattr__(self, method: str) -> Callable[..., SessionFuture[Any]]:
        if method.startswith("_"):
            raise AttributeError(method)
        return functools.partial(self._submit, self._handle._method(method), method)

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> SessionFuture[Any]:
        """Call ``method`` by name (for names that clash with this object's attributes)."""
        caller: Callable[..., SessionFuture[Any]] = self.__getattr__(method)
        return caller(*args, **kwargs)


class HandleView(_ByName):
    """A handle whose calls are marked: urgent (``handle.urgent``), latest-value-wins
    under a key (``handle.coalescing(key)``), or both
    (``handle.urgent.coalescing(key)``). Its methods are the handle's and return
    futures the same way; the circuit breaker refuses them as it refuses the handle's.
    """

    def __init__(self, handle: Handle, *, urgent: bool, key: str | None) -> None:
        self._handle = handle
        self._urgent = urgent
        self._key = key

    @property
    def urgent(self) -> HandleView:
        """This view with its calls urgent too."""
        return HandleView(self._handle, urgent=True, key=self._key)

    def coalescing(self, key: str) -> HandleView:
        """This view with its calls latest-value-wins under ``key``."""
        return HandleView(self._handle, urgent=self._urgent, key=_coalescing_key(key))

    def _submit(self, fn: Callable[..., Any], method: str, /, *args: Any,
                **kwargs: Any) -> SessionFuture[Any]:
        child = self._handle._child
        return self._handle._gate(method, lambda: child.submit_marked(
            fn, method, args, kwargs, urgent=self._urgent, key=self._key))

    def __repr__(self) -> str:
        marks = ["urgent"] * self._urgent + ([f"coalescing={self._key!r}"] if self._key else [])
        return f"<HandleView {self._handle.name!r} {' '.join(marks)}>"


class FaultInjector:
    """Faults on cue for one resource (``system.faults(name)``), through the runtime:
    the same for every kind, and what the resource's code, its supervisor and its
    callers see is what a real failure would give them.

    - :meth:`fail_calls`: the next ``n`` calls (a batch counts as one) fault as if the
      resource broke under them: each caller gets ``ResourceFault`` (its
      ``__cause__`` an :class:`~sessions.InjectedFault`), the resource restarts;
    - :meth:`fail_connects`: the next ``n`` connects fail (a failed start: backoff,
      intensity, maybe the supervisor giving up);
    - :meth:`stall_next_call`: the next call hangs as on a frozen peer, until released
      or until the stall watchdog (``stall_timeout``) aborts it;
    - :meth:`drop_connection`: the connection is torn down now (the kind's ``abort``)
      and the resource faults, as when a peer closes it.

    Injections queue up and are used by the calls and connects that come next, in
    any member of a pool (one shared plan).
    """

    def __init__(self, name: str, members: list[ResourceChild]) -> None:
        self.name = name
        self._members = members
        plan = next((m.mailbox.injected for m in members if m.mailbox.injected), None)
        if plan is None:
            plan = FaultPlan(name)
        for member in members:
            if member.mailbox.injected is None:
                member.mailbox.injected = plan
        self._plan = plan

    def fail_calls(self, n: int = 1) -> None:
        """The next ``n`` calls fault (each restarting the resource)."""
        self._plan.add(calls=_count(n, "fail_calls"))

    def fail_connects(self, n: int = 1) -> None:
        """The next ``n`` connects fail."""
        self._plan.add(connects=_count(n, "fail_connects"))

    def stall_next_call(self) -> InjectedStall:
        """The next call hangs until ``stall.release()`` (it then runs) or until the
        runtime aborts it (``stall_timeout``: the caller gets ``ResourceFault``, the
        resource restarts). ``stall.started`` is set once a call hangs on it."""
        stall = InjectedStall(self.name)
        self._plan.add(stall=stall)
        return stall

    def drop_connection(self) -> int:
        """Tear the connection down now, as a peer closing it would: the kind's
        ``abort()`` closes it under whatever runs, and the resource faults and
        restarts. Returns how many connections were dropped (a pool's members that
        were serving)."""
        dropped = 0
        for member in self._members:
            runner = member.runner
            if runner is None or not runner.view.serving:
                continue
            runner.abort()
            runner.report(InjectedFault(f"the connection of {member.name!r} was dropped "
                                        "(injected)"))
            dropped += 1
        return dropped

    def clear(self) -> None:
        """Drop what is still queued; stalls waiting for a call are released."""
        for stall in self._plan.clear():
            stall.release()

    @property
    def pending(self) -> dict[str, int]:
        """What is still queued: ``{"calls": n, "connects": n, "stalls": n}``."""
        return self._plan.pending()

    def __repr__(self) -> str:
        return f"<FaultInjector {self.name!r} pending={self.pending}>"


def _count(n: object, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{what}(n): n must be a positive int, got {n!r}")
    return n


class Lease(_ByName):
    """One member of a resource (one connection), held by one caller for a block.

    ``with handle.lease() as db:`` (or ``async with``, or ``with handle as db``): every
    call made through ``db`` inside the block runs on that one member, in the order
    made, with no other caller's call in between; other callers use the pool's other
    members, or wait (a lone resource: their calls queue until the block ends). The
    lease ends when the block exits. What the block means on the connection is the
    kind's (``begin_lease``/``end_lease``): for the ``database`` kind one transaction,
    committed on a normal exit and rolled back when the block raises.

    Entering waits (without blocking the event loop, for ``async with``) until the
    lease has begun: at most ``timeout`` (``CallTimeout`` if it could not begin by
    then). Calls through the lease return :class:`~sessions.SessionFuture` as a
    handle's do, and are not refused by the circuit breaker once the lease has begun.

    If the member faults, stalls, restarts or stops during the block, the lease is
    broken: its later calls fail with :class:`~sessions.LeaseBroken` naming it, never
    going to another member mid-block; a normal exit then raises ``LeaseBroken`` too,
    and an exit by an exception leaves that exception alone. Leaving never hangs: it
    waits for the lease's last call at most ``call_timeout``.

    A lease is never held for ever: it ends when its block exits; one dropped without
    an exit (its object garbage collected) and one left without a call for
    ``idle_timeout`` are revoked by the supervisor within a tenth of a second (its last
    call, ``end_lease(False)``, is a rollback), and its owner's later calls fail with
    ``LeaseBroken`` saying why.

    Do not call the plain handle of a lone resource from inside its own block and wait
    for that call: it queues behind the lease (and ends in ``CallTimeout``).
    """

    def __init__(self, handle: Handle, timeout: float | None,
                 idle_timeout: float | None) -> None:
        self._handle = handle
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._member: ResourceChild | None = None
        self._token: LeaseToken | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._ended = False

    # -- calls --------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], method: str, /, *args: Any,
                **kwargs: Any) -> SessionFuture[Any]:
        member, token = self._member, self._token
        if member is None or token is None:
            raise RuntimeError("enter the lease (with / async with) before calling through it")
        return member.lease_submit(token, fn, method, args, kwargs)

    # -- what it holds ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The resource's name (the handle's)."""
        return self._handle.name

    @property
    def kind(self) -> str:
        """The resource's kind."""
        return self._handle.kind

    @property
    def member(self) -> str | None:
        """The member held (``db#1`` in a pool; the resource's name for a lone one);
        None before the block is entered."""
        return None if self._member is None else self._member.name

    @property
    def label(self) -> str | None:
        """How errors name this lease, e.g. ``lease #3 of 'db' (member 'db#1')``."""
        return None if self._token is None else self._token.label

    @property
    def active(self) -> bool:
        """Entered, not exited, and neither broken nor revoked."""
        token = self._token
        return (token is not None and not self._ended and token.broken is None
                and token.revoked is None and token.view is not None)

    def __repr__(self) -> str:
        state = "active" if self.active else "new" if self._token is None else "over"
        return f"<Lease {self.name!r} member={self.member!r} {state}>"

    # -- the block ----------------------------------------------------------------------

    def _begin(self) -> SessionFuture[Any]:
        if self._token is not None:
            raise RuntimeError("a Lease is entered once; take a new one with handle.lease()")
        child = self._handle._child
        member = child.lease_member()
        label = f"lease #{next(_LEASE_NUMBERS)} of {child.name!r}"
        if member.name != child.name:
            label += f" (member {member.name!r})"
        token = LeaseToken(label, self._idle_timeout)
        self._member, self._token = member, token
        future = self._handle._gate("begin_lease",
                                    lambda: member.lease_begin(token, self._timeout))
        self._finalizer = weakref.finalize(self, _abandoned, token)
        return future

    def _end(self, ok: bool) -> SessionFuture[Any] | None:
        """Queue the lease's last call (None if it has ended already)."""
        if self._ended or self._member is None or self._token is None:
            return None
        self._ended = True
        if self._finalizer is not None:
            self._finalizer.detach()
        return self._member.lease_end(self._token, ok)

    def _settle(self, end: SessionFuture[Any], ok: bool) -> None:
        """After waiting for the last call: raise its error on a normal exit."""
        assert self._member is not None
        if not end.done():
            message = (f"{self.label}: its end (end_lease) did not finish within "
                       f"call_timeout={self._member.call_timeout:g}s; it still runs, and "
                       "the member serves others once it has")
            if ok:
                raise CallTimeout(message, resource=self._member.name, started=True)
            log.warning("%s", message)
            return
        err = end.exception()
        if err is None:
            return
        if ok:
            raise err
        log.debug("%s ended after an error in its block; its end failed too: %r",
                  self.label, err)

    def __enter__(self) -> Lease:
        begin = self._begin()
        try:
            begin.result()
        except BaseException:
            self._end(False)
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        ok = exc_type is None
        end = self._end(ok)
        if end is None:
            return
        assert self._member is not None
        concurrent.futures.wait([end], timeout=self._member.call_timeout)
        self._settle(end, ok)

    async def __aenter__(self) -> Lease:
        begin = self._begin()
        try:
            await begin
        except BaseException:
            self._end(False)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        ok = exc_type is None
        end = self._end(ok)
        if end is None:
            return
        assert self._member is not None
        waiting = asyncio.wrap_future(end)
        # The outcome is read from ``end`` itself: mark the asyncio copy's as retrieved.
        waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.wait([waiting], timeout=self._member.call_timeout)
        self._settle(end, ok)


def _abandoned(token: LeaseToken) -> None:
    """Finalizer of a lease object dropped inside its block: a flag only (it may run on
    any thread, at any allocation); the supervisor revokes the lease."""
    token.abandoned = True


class System:
    """A running supervision tree. Leaving its ``with``/``async with`` stops it."""

    def __init__(self, config: SystemConfig, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None, partial: bool = False) -> None:
        self.config = config
        self._clock = clock
        self._partial = partial
        self._events = EventBus()
        try:
            root = SupervisorNode(ROOT, config.supervisor, None)
            self._supervisors: dict[str, SupervisorNode] = {ROOT: root}
            for name, sup_cfg in _ordered_supervisors(config):
                parent = self._supervisors[sup_cfg.parent or ROOT]
                node = SupervisorNode(name, sup_cfg, parent)
                parent.children.append(node)
                self._supervisors[name] = node
            self._resources: dict[str, Node] = {}
            self._handles: dict[str, Handle] = {}
            errors: list[tuple[str, str]] = []
            for name, spec in config.resources.items():
                try:
                    self._add(name, spec, self._supervisors[spec.supervisor or ROOT])
                except ConfigError as err:
                    errors += err.errors
            if errors:
                raise ConfigError(errors)
            _order_children(root, list(config.resources))
        except BaseException:
            self._events.close()
            raise
        self._kernel = Kernel(root, self._events, clock, rng)
        self._kernel.on_remove = self._forget_node
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._reload_lock = threading.Lock()

    def _add(self, name: str, spec: ResourceConfig, sup: SupervisorNode) -> Node:
        """Build resource ``name`` (a pool supervisor if ``pool_size`` > 1) under ``sup``."""
        path = f"resources.{name}"
        cls = resolve_kind(spec.kind, f"{path}.kind")
        options = check_options(cls, spec.options, path)
        breaker = None
        if spec.breaker is not None:
            breaker = Breaker(name, spec.breaker.failures, spec.breaker.reset_timeout,
                              self._events.emit, self._clock)
        size = spec.pool_size
        limit = cls.max_pool_size(options)
        if limit is not None and size > limit[0]:
            log.warning("resources.%s.pool_size = %d lowered to %d: %s", name, size, limit[0],
                        limit[1])
            size = limit[0]
        target: ResourceChild | Pool
        node: Node
        if size == 1:
            node = target = ResourceChild(name, spec, sup, cls, options, breaker=breaker)
            node.keep_trying = self._partial
        else:
            pool_cfg = SupervisorConfig(
                strategy="one_for_one", max_restarts=sup.config.max_restarts,
                period=sup.config.period, backoff=sup.config.backoff,
            )
            pool_node = SupervisorNode(name, pool_cfg, sup)
            pool_node.kind = cls.kind or spec.kind
            members = [ResourceChild(f"{name}#{i}", spec, pool_node, cls, options,
                                     breaker=breaker)
                       for i in range(size)]
            for member in members:
                member.keep_trying = self._partial
            pool_node.children.extend(members)
            node = pool_node
            target = pool_node.pool = Pool(name, pool_node, members)
        sup.children.append(node)
        self._resources[name] = node
        self._handles[name] = Handle(target)
        return node

    def _boot(self, wait: bool = True) -> None:
        self._kernel.start()
        self._kernel.post(self._kernel.boot)
        if not wait:
            return
        try:
            self._kernel.booted.result()
        except BaseException:
            self.stop()
            raise
        self._events.flush()  # boot events are history for later subscribers

    @property
    def ready(self) -> concurrent.futures.Future[None]:
        """Resolved once the tree has started: every resource serves (or, for a
        partial start, serves or has failed its first start); failed with
        ``ResourceUnavailable`` if the root supervisor gave up while starting, or the
        system was stopped first. Done already when ``start(wait=True)`` returned;
        ``await asyncio.wrap_future(system.ready)`` in async code."""
        return self._kernel.booted

    # -- handles ----------------------------------------------------------------------

    def get(self, name: str) -> Handle:
        """The stable handle of resource ``name``."""
        try:
            return self._handles[name]
        except KeyError:
            known = ", ".join(self._handles) or "none"
            raise KeyError(f"no resource named {name!r} (resources: {known})") from None

    def __getitem__(self, name: str) -> Handle:
        return self.get(name)

    @property
    def state(self) -> ChildState:
        """``running``, ``failed`` (the root supervisor gave up) or ``stopped``."""
        root = self._kernel.root.state
        return ChildState.RUNNING if root in ACTIVE else root

    @property
    def failure(self) -> str | None:
        """Why the root supervisor gave up, if it did."""
        return self._kernel.failure

    # -- events and status ------------------------------------------------------------

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Deliver supervision events to ``callback`` on the event thread; returns unsubscribe."""
        return self._events.subscribe(callback)

    def status(self) -> dict[str, Any]:
        """The tree as JSON-serializable data (no credentials)."""
        return _node_status(self._kernel.root)

    def stalls(self) -> list[Stall]:
        """What is stuck right now, for a process watchdog (``sessions run`` under
        systemd stops its ``WATCHDOG=1`` pings while this is not empty).

        A resource is stalled while a call (or batch) of its current incarnation has run
        longer than its ``stall_timeout`` (the stall watchdog aborts it within a tenth of
        a second, so this is brief unless the supervision thread is stuck too), or one of
        an incarnation being stopped (which waits up to its ``shutdown_timeout``), and
        while an incarnation the library gave up on (stalled, past its
        ``shutdown_timeout``, or past ``connect_timeout``) still has its thread blocked
        after ``abort()``: the resource is restarted, but that thread is only freed when
        the driver call returns, or by a new process. The supervision thread is stalled
        when its loop has not turned for :data:`SUPERVISION_STALL` seconds. Empty in a
        healthy system, and once stopped. Read-only; callable from any thread."""
        now = time.monotonic()
        found: list[Stall] = []
        kernel = self._kernel
        if kernel.alive and now - kernel.turned_at > SUPERVISION_STALL:
            found.append(Stall("supervisor", "a step", now - kernel.turned_at, False))
        for node in walk(kernel.root):
            if not isinstance(node, ResourceChild):
                continue
            runner = node.runner
            if runner is not None and not runner.abandoned:
                since = runner.busy_since
                if since and now - since > node.stall_timeout:
                    found.append(Stall(node.name, _doing(runner.busy_what), now - since,
                                       False))
            for old in [*list(node.retired), *list(node.lost)]:
                if not runner_alive(old):
                    continue
                since = old.busy_since
                if old.abandoned:
                    found.append(Stall(node.name, _doing(old.busy_what),
                                       now - since if since else None, True))
                elif since and now - since > node.stall_timeout:
                    # Retired but not given up on yet: stopping (within its
                    # shutdown_timeout), or between the watchdog's verdict and the
                    # abandonment that follows it. Stuck all the same.
                    found.append(Stall(node.name, _doing(old.busy_what), now - since,
                                       False))
        return found

    def stats(self, name: str) -> CallStats:
        """Call statistics of resource ``name``: outcomes and the latency histogram
        (a pool's members summed). For metrics exporters and live views."""
        node = self._resources.get(name)
        if node is None:
            raise KeyError(f"no resource named {name!r}")
        if isinstance(node, SupervisorNode) and node.pool is not None:
            return node.pool.stats
        assert isinstance(node, ResourceChild)
        return node.stats

    def which_children(self, supervisor: str | None = None) -> list[ChildInfo]:
        """The children of ``supervisor`` (default: the root), in start order."""
        sup = self._supervisor(supervisor)
        return [
            ChildInfo(c.name, "supervisor" if isinstance(c, SupervisorNode) and c.pool is None
                      else "resource", c.kind, c.state, c.restarts)
            for c in list(sup.children)
        ]

    def count_children(self, supervisor: str | None = None) -> ChildCount:
        """How many children ``supervisor`` (default: the root) has, by kind and activity."""
        children = list(self._supervisor(supervisor).children)
        sups = sum(1 for c in children if isinstance(c, SupervisorNode) and c.pool is None)
        return ChildCount(specs=len(children),
                          active=sum(1 for c in children if c.state == ChildState.RUNNING),
                          supervisors=sups, resources=len(children) - sups)

    def child_spec(self, name: str) -> dict[str, Any]:
        """The spec child ``name`` was started from, as it would appear in the config
        (``[resources.NAME]`` or ``[supervisors.NAME]``), e.g. to start it again
        elsewhere. Unlike ``status()``, credentials in it are not redacted."""
        self._node(name)  # KeyError for an unknown child
        if name in self._supervisors:
            spec: Any = self._supervisors[name].config
        else:
            node = self._resources[name]
            if isinstance(node, SupervisorNode) and node.pool is not None:
                node = node.pool.members[0]
            assert isinstance(node, ResourceChild)
            spec = node.spec
        data: dict[str, Any] = spec.model_dump(exclude_defaults=True)
        return data

    def faults(self, name: str) -> FaultInjector:
        """Fault injection on resource ``name`` (for a pool: on whichever member serves
        the calls; ``name#i`` for one member): rehearse a failure from a test, or from
        ``sessions fault`` against a running system. See :class:`FaultInjector`."""
        node = self._resources.get(name)
        if node is None and "#" in name:
            pool = self._resources.get(name.partition("#")[0])
            if isinstance(pool, SupervisorNode) and pool.pool is not None:
                node = next((m for m in pool.pool.members if m.name == name), None)
        if node is None:
            known = ", ".join(self._resources) or "none"
            raise KeyError(f"no resource named {name!r} (resources: {known})")
        members = node.pool.members if isinstance(node, SupervisorNode) and (
            node.pool is not None) else [node]
        return FaultInjector(name, [m for m in members if isinstance(m, ResourceChild)])

    # -- dynamic children -------------------------------------------------------------

    def start_child(self, name: str, spec: Mapping[str, Any],
                    supervisor: str | None = None) -> Handle:
        """Add and start resource ``name``; returns its handle once it has connected.

        Raises ``ConfigError`` for a bad spec or a name in use, and
        ``ResourceUnavailable`` (the connect error as ``__cause__``) if it failed to
        start, in which case it is not added.
        """
        if not isinstance(name, str) or not name:
            raise ConfigError([("name", f"a child needs a non-empty string name, got {name!r}")])
        if name in self._resources or name in self._supervisors:
            raise ConfigError([(f"resources.{name}", "name is already in use "
                                "(restart_child restarts an existing child)")])
        parsed = _config.resource_spec(name, dict(spec))
        sup = self._supervisor(supervisor if supervisor is not None else parsed.supervisor)
        waiter = self._kernel.call(self._begin_add, name, parsed, sup)
        try:
            waiter.result()
        except BaseException:
            self._kernel.call(self._forget, name)
            raise
        return self._handles[name]

    def _begin_add(self, name: str, spec: ResourceConfig, sup: SupervisorNode,
                   dynamic: bool = True) -> concurrent.futures.Future[None]:
        """Supervision thread: build the child and start it (the tree changes only here).
        ``dynamic``: added by start_child (gone when its supervisor restarts), not by a
        config reload (part of the spec from then on)."""
        if name in self._resources or name in self._supervisors:  # raced another add
            raise ConfigError([(f"resources.{name}", "name is already in use")])
        node = self._add(name, spec, sup)
        node.dynamic = dynamic
        return self._kernel.add_child(sup, node)

    def _forget(self, name: str) -> None:
        """Supervision thread: drop a child whose add failed (already out of the tree).

        The name may already be free (its supervisor gave up and dropped it) and taken
        again by another ``start_child`` that got in between: a child registered under
        it that is in the tree is that one's, and stays."""
        node = self._resources.get(name)
        if node is not None and node.parent is not None and node in node.parent.children:
            return
        self._resources.pop(name, None)
        self._handles.pop(name, None)

    def terminate_child(self, name: str) -> None:
        """Stop child ``name`` (a resource or a supervisor) until ``restart_child``;
        returns once it has stopped (each resource within its shutdown_timeout)."""
        node = self._node(name)
        self._kernel.call(self._kernel.stop_one, node, "terminated").result()

    def restart_child(self, name: str) -> None:
        """(Re)start child ``name`` now; returns once it serves. Raises
        ``ResourceUnavailable`` if its connect fails (the supervisor then keeps retrying
        it per policy)."""
        node = self._node(name)
        self._kernel.call(self._kernel.restart_child, node).result()

    def delete_child(self, name: str) -> None:
        """Forget child ``name``, which must not be running (``terminate_child`` first):
        its name is free again for ``start_child``; its handle keeps refusing calls.
        Raises ``ChildRunning`` if it is starting, running or restarting."""
        node = self._node(name)
        self._kernel.call(self._kernel.delete_child, node)

    # -- reload -----------------------------------------------------------------------

    def reload(self, config: ConfigSource) -> ConfigReloaded:
        """Apply a new config to the running tree; what did not change is not touched.

        ``config`` is validated in full first, exactly as ``start()`` would (kinds, their
        options, the tree): a bad one raises ``ConfigError`` and changes nothing. Then,
        compared with the config running now:

        - a **removed** resource or supervisor is stopped and taken out (its handle
          refuses calls);
        - an **added** one is started after its supervisor (parents first, else in
          config order), placed after the children already there, as ``start_child``
          places one; one whose first start fails is not added (it is in ``failed``:
          reload again to retry);
        - a **changed** resource is restarted with its new spec. Its handle keeps
          working. A lone resource under the same supervisor keeps its mailbox: calls
          queued meanwhile wait for the new incarnation. A pool, or a resource moved to
          another supervisor, is stopped and started anew: calls queued at that moment
          are refused. Either way it is a new kind object: run-time set-up the
          application made on it (subscriptions, filters, periodic tasks) is not
          carried over (a warning names it);
        - a supervisor whose **policy** changed (strategy, intensity, backoff, restart,
          significance, auto_shutdown) keeps its children running and applies the new
          policy from its next decision on; one moved to another parent is removed
          and added again with its subtree.

        Children added with ``start_child`` are not part of the config and are left
        alone; a new config naming one is a ``ConfigError``. ``[server]`` belongs to the
        process (``sessions run``), not to the tree: not applied here. Returns the
        :class:`~sessions.messages.ConfigReloaded` event, which subscribers get too.
        One reload at a time (a second waits for the first)."""
        with self._reload_lock:
            if self._stopped:
                raise ResourceUnavailable("the system is stopped: nothing to reload",
                                          resource=ROOT)
            new = _config.load(config)
            check = System(new)  # validates as start() does; nothing starts
            check.stop()
            return self._apply(new)

    def _apply(self, new: SystemConfig) -> ConfigReloaded:
        old = self.config
        clash = [(f"resources.{n}", "name is in use by a child added with start_child")
                 for n in new.resources
                 if n not in old.resources and (n in self._resources or n in self._supervisors)]
        clash += [(f"supervisors.{n}", "name is in use by a resource added with start_child")
                  for n in new.supervisors if n not in old.supervisors and n in self._resources]
        if clash:
            raise ConfigError(clash)
        old_sups, new_sups = old.supervisors, new.supervisors

        def parent(sups: Mapping[str, SupervisorConfig], name: str) -> str:
            return sups[name].parent or ROOT

        def chain(sups: Mapping[str, SupervisorConfig], name: str) -> list[str]:
            out = []
            while name != ROOT:
                out.append(name)
                name = parent(sups, name)
            return out

        uprooted = {n for n in old_sups if n not in new_sups or (
            parent(old_sups, n) != parent(new_sups, n))}
        gone_sups = {n for n in old_sups if uprooted & set(chain(old_sups, n))}
        added_sups = [n for n, _ in _ordered_supervisors(new)
                      if n not in old_sups or n in gone_sups]
        policies = [n for n in old_sups if n in new_sups and n not in gone_sups
                    and old_sups[n] != new_sups[n]]
        if old.supervisor != new.supervisor:
            policies.insert(0, ROOT)
        removed: list[str] = []
        readd: list[str] = []
        respec: list[str] = []
        for name, spec in old.resources.items():
            if name not in self._resources:
                continue  # failed its last add; the new config decides again below
            was = spec.supervisor or ROOT
            now = new.resources.get(name)
            if now is None:
                removed.append(name)
                continue
            changed = _dump(spec) != _dump(now)
            rebuilt = (now.supervisor or ROOT) != was or spec.pool_size != 1 or (
                now.pool_size != 1)
            if was in gone_sups or (changed and rebuilt):
                readd.append(name)  # its node is rebuilt: stopped, removed, added
            elif changed:
                respec.append(name)  # the same node, restarted with the new spec
        added = [n for n in new.resources if n not in old.resources or n not in self._resources]
        kernel = self._kernel
        why = "removed from the config by a reload"
        keep = {n: self._handles[n] for n in readd}
        for name in removed + readd:  # a resource under a gone supervisor goes with it
            node = self._resources[name]
            if node.parent is not None and node.parent.name not in gone_sups:
                reason = why if name in removed else "rebuilt by a reload with its new spec"
                kernel.call(kernel.stop_one, node, reason).result()
                kernel.call(kernel.delete_child, node)
        for name in [n for n in old_sups if n in uprooted]:  # the top of each gone subtree
            node = self._supervisors[name]
            if node.parent is not None and node.parent.name not in gone_sups:
                kernel.call(kernel.stop_one, node, why).result()
                kernel.call(kernel.delete_child, node)
        for name in policies:
            cfg = new.supervisor if name == ROOT else new_sups[name]
            kernel.call(kernel.change_policy, self._supervisors[name], cfg)
        failed: list[str] = []
        for name in added_sups:
            sup = self._supervisors[parent(new_sups, name)]
            node = SupervisorNode(name, new_sups[name], sup)
            self._supervisors[name] = node
            try:
                kernel.call(self._begin_add_supervisor, sup, node).result()
            except ResourceUnavailable as err:
                failed.append(f"{name}: {err}")
        for name in [n for n in new.resources if n in added or n in readd]:
            spec = new.resources[name]
            try:
                sup = self._supervisor(spec.supervisor)
                kernel.call(self._begin_add, name, spec, sup, False).result()
            except (ResourceUnavailable, KeyError) as err:
                kernel.call(self._forget, name)
                failed.append(f"{name}: {err}")
                continue
            if name in keep:  # the application's handle serves the new resource
                handle = keep[name]
                handle._bind(self._handles[name]._child)
                self._handles[name] = handle
        for name in respec:
            node = self._resources[name]
            assert isinstance(node, ResourceChild)
            spec = new.resources[name]
            dropped = node.actor.replays
            path = f"resources.{name}"
            cls = resolve_kind(spec.kind, f"{path}.kind")
            actor = make_actor(cls, check_options(cls, spec.options, path), spec.kind, path)
            breaker = None if spec.breaker is None else Breaker(
                name, spec.breaker.failures, spec.breaker.reset_timeout, self._events.emit,
                self._clock)
            if dropped:
                log.warning("resources.%s: restarted with its new spec; run-time set-up "
                            "not carried over: %s", name, ", ".join(dropped))
            done = kernel.call(kernel.respec, node, spec, cls, actor, breaker)
            self._handles[name]._bind(node)
            try:
                done.result()
            except ResourceUnavailable as err:
                failed.append(f"{name}: {err}")
        unadded = {f.partition(":")[0] for f in failed} - set(respec)
        self.config = new.model_copy(update={"resources": {
            n: spec for n, spec in new.resources.items() if n not in unadded}})
        event = ConfigReloaded(
            added=tuple([n for n in added_sups if n not in old_sups]
                        + [n for n in added if n not in unadded]),
            removed=tuple([n for n in old_sups if n not in new_sups] + removed),
            changed=tuple(readd + respec),
            policies=tuple(policies),
            failed=tuple(failed),
        )
        self._events.emit(event)
        return event

    def _begin_add_supervisor(self, parent: SupervisorNode,
                              node: SupervisorNode) -> concurrent.futures.Future[None]:
        """Supervision thread: a supervisor added by a reload starts (empty; its
        resources are added to it next)."""
        parent.children.append(node)
        return self._kernel.add_child(parent, node)

    def _forget_node(self, node: Node) -> None:
        """Supervision thread: ``node`` and its subtree left the tree; free their names."""
        for n in walk(node):
            self._supervisors.pop(n.name, None)
            self._resources.pop(n.name, None)
            self._handles.pop(n.name, None)

    def _node(self, name: str) -> Node:
        node: Node | None = self._resources.get(name) or self._supervisors.get(name)
        if node is None or node.parent is None:
            raise KeyError(f"no child named {name!r}")
        return node

    def _supervisor(self, name: str | None) -> SupervisorNode:
        try:
            return self._supervisors[name or ROOT]
        except KeyError:
            known = ", ".join(self._supervisors)
            raise KeyError(f"no supervisor named {name!r} (supervisors: {known})") from None

    # -- stopping ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every resource in reverse start order; idempotent. Queued calls fail
        with ``ResourceUnavailable``; no thread started by the library is left."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if self._kernel.alive:
            # Bounded by the kernel: the largest shutdown_timeout, then what still runs
            # is aborted (plus a short grace); every future is resolved by then.
            self._kernel.call(self._kernel.shutdown).result()
            self._kernel.join()
        else:  # never booted: nothing runs but the event thread
            self._kernel.discard()
        self._events.close()

    def __enter__(self) -> System:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> System:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    def __repr__(self) -> str:
        return f"<System state={str(self.state)!r} resources={list(self._resources)}>"


def _dump(spec: ResourceConfig) -> dict[str, Any]:
    """A resource spec as comparable data (options included)."""
    data: dict[str, Any] = spec.model_dump()
    data["options"] = dict(spec.options)
    return data


def _ordered_supervisors(config: SystemConfig) -> list[tuple[str, Any]]:
    """Supervisors with every parent before its children (config order otherwise)."""
    done: set[str] = {ROOT}
    out = []
    remaining = dict(config.supervisors)
    while remaining:
        for name, sup in list(remaining.items()):
            if (sup.parent or ROOT) in done:
                out.append((name, sup))
                done.add(name)
                del remaining[name]
    return out


def _order_children(sup: SupervisorNode, resource_order: list[str]) -> None:
    """Place each supervisor among its siblings where its first resource appears in the
    config (resources keep table order); supervisors without resources go last."""
    order = {name: i for i, name in enumerate(resource_order)}

    def first(node: Node) -> float:
        found = [order[n.name.partition("#")[0]] for n in walk(node)
                 if isinstance(n, ResourceChild)]
        return min(found, default=float("inf"))

    for node in walk(sup):
        if isinstance(node, SupervisorNode):
            node.children.sort(key=first)


def status_rows(
    tree: dict[str, Any], glyphs: tuple[str, str, str, str] = ("├── ", "└── ", "│   ", "    ")
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each node of a ``System.status()`` tree, in start order, with the prefix that
    draws its branch; ``glyphs`` are (branch, last branch, bar, gap). Pools and
    resources are leaves."""
    branch, last_branch, bar, gap = glyphs

    def visit(node: dict[str, Any], prefix: str, last: bool,
              top: bool) -> Iterator[tuple[str, dict[str, Any]]]:
        yield prefix + ("" if top else (last_branch if last else branch)), node
        if node.get("type") != "supervisor":
            return
        inner = prefix + ("" if top else (gap if last else bar))
        children = node.get("children", [])
        for i, child in enumerate(children):
            yield from visit(child, inner, i == len(children) - 1, False)

    return visit(tree, "", True, True)


def _node_status(node: Node) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": node.name,
        "state": node.state,
        "restarts": node.restarts,
        "last_fault": node.last_fault,
    }
    if isinstance(node, SupervisorNode):
        if node.pool is not None:
            base.update(type="pool", kind=node.pool.kind, queued=node.pool.queued,
                        abandoned=node.pool.abandoned,
                        circuit=_circuit(node.pool.breaker), **node.pool.stats.snapshot())
        else:
            base.update(type="supervisor", strategy=node.config.strategy,
                        restart=node.config.restart)
        base["children"] = [_node_status(c) for c in list(node.children)]
    else:
        assert isinstance(node, ResourceChild)
        base.update(type="resource", kind=node.kind, restart=node.spec.restart,
                    queued=node.queued, circuit=_circuit(node.breaker),
                    abandoned=node.abandoned,
                    **node.stats.snapshot())
    return base


def _doing(busy_what: str) -> str:
    """``read()`` for a call's bare method name; ``connect()``, ``run_batch()`` as is."""
    if not busy_what:
        return "a driver call"
    return busy_what if busy_what.endswith(")") else f"{busy_what}()"


def _circuit(breaker: Breaker | None) -> str | None:
    return None if breaker is None else breaker.state


def check_childspecs(specs: Mapping[str, Mapping[str, Any]]) -> None:
    """Validate resource specs as ``start_child`` would take them (OTP's
    ``check_childspecs``), without starting anything: the supervision keys, the kind
    (imported) and its options (the kind object is constructed and dropped, which by
    the ``ResourceActor`` contract does no I/O). Raises ``ConfigError`` listing every
    problem of every spec."""
    if not isinstance(specs, Mapping):
        raise ConfigError([("", f"expected a mapping of name to spec, got {type(specs).__name__}")])
    errors: list[tuple[str, str]] = []
    for name, raw in specs.items():
        path = f"resources.{name}"
        try:
            if not isinstance(raw, Mapping):
                raise ConfigError([(path, f"expected a table, got {type(raw).__name__}")])
            spec = _config.resource_spec(str(name), dict(raw))
            cls = resolve_kind(spec.kind, f"{path}.kind")
            make_actor(cls, check_options(cls, spec.options, path), spec.kind, path)
        except ConfigError as err:
            errors += err.errors
    if errors:
        raise ConfigError(errors)


def start(config: ConfigSource, *, clock: Callable[[], float] = time.monotonic,
          rng: random.Random | None = None, partial: bool = False,
          wait: bool = True) -> System:
    """Validate ``config`` (a TOML path or a mapping), start the tree, return the System.

    Returns once every resource has connected, in config order. Raises ``ConfigError``
    for an invalid config (before any thread starts) and ``ResourceUnavailable`` if the
    root supervisor gives up while starting. ``clock`` and ``rng`` are for tests
    (restart intensity and backoff jitter).

    ``partial=True`` starts what can start: a resource whose start fails does not fail
    the start, nor hold up the resources after it. Its supervisor keeps retrying it
    with backoff (up to ``backoff.max`` apart) for as long as the system runs, and its
    failed starts do not count toward restart intensity; meanwhile its calls fail at
    once with ``ResourceUnavailable`` naming it and why, and its state is ``starting``
    (``restarting`` if it ran before) with ``last_fault`` in the status. Once up it is
    supervised as any resource (faults of a running resource count as usual). Returns
    once every resource serves or has failed its first start.

    ``wait=False`` returns at once, the tree starting in the background: calls made
    meanwhile wait in their resource's mailbox (within their ``call_timeout``);
    :attr:`System.ready` resolves when the start is done. Stop the system as usual.
    """
    system = System(_config.load(config), clock=clock, rng=rng, partial=partial)
    system._boot(wait)
    return system
