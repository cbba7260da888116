"""``ResourceActor``: the contract a resource kind implements.

A subclass says how to open and close its resource and which errors mean the
resource is broken (faults) rather than the caller being wrong. The runtime
gives every resource one thread that serializes all access to it; the subclass
never deals with threads, queues or restarts.

The instance lives as long as its place in the supervision tree: state kept on
``self`` (subscribers, periodic task specs) survives restarts, while state that
lives in the connection must be rebuilt, either in ``connect()`` or by a replay
step registered with :meth:`ResourceActor.replay`.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ValidationError

from sessions._explain import explain

log = logging.getLogger("sessions.actor")

BatchItem = tuple[str, tuple[Any, ...], Mapping[str, Any]]
"""One queued call handed to ``run_batch``: (method name, args, kwargs)."""

Outcome = tuple[bool, Any]
"""``(True, value)`` or ``(False, exception)`` for one call of a batch."""


class Deferred:
    """Return this from a method whose result arrives later (a reply frame, a broker ack).

    The actor thread is free for other calls at once; the caller's future resolves when
    ``future`` does, with its value or its error (a fault error still restarts the
    resource). The runtime bounds the wait: a reply that has not come ``stall_timeout``
    after the call was queued fails the call with ``CallTimeout(started=True)`` (a
    caller's bare ``result()`` already gives up at ``call_timeout``); a reply arriving
    later is dropped. A kind needs no reply timeout of its own for that.
    """

    __slots__ = ("future",)

    def __init__(self, future: concurrent.futures.Future[Any]) -> None:
        self.future = future

class _Ignore:
    """The type of :data:`IGNORE` (one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "sessions.IGNORE"


IGNORE = _Ignore()
"""Return this from ``connect()`` to decide not to run (Erlang/OTP's ``ignore`` from a
child's start): the resource is ``stopped``, not faulted, its calls are refused, and
nothing is counted toward intensity; ``restart_child`` (or a group restart) starts it
again. For a resource that is optional on this machine (a bus that is not fitted)."""


#: Calls a handle may make that ResourceActor itself defines (every other callable is a
#: method the kind adds; see :func:`public_methods`).
BUILT_IN_CALLS = frozenset({"transaction"})

#: Attribute names the runtime sets on every actor; a kind may not define a method so named.
RESERVED = frozenset({"context", "config", "resource", "name"})


class Incarnation(Protocol):
    """What the context needs of the runtime's current incarnation (the runner)."""

    @property
    def connected(self) -> bool: ...

    @property
    def conn(self) -> Any: ...

    def report(self, error: BaseException) -> None: ...

    def spawned(self, thread: threading.Thread) -> None: ...


class ResourceContext:
    """What the runtime gives one resource actor, for the actor's whole life.

    The kind calls it (``self.context``, or the :class:`ResourceActor` shortcuts of the
    same names); the runtime attaches each incarnation to it and reads what the kind
    asked for, instead of poking the actor's private fields.

    Threads: ``report_fault``, ``connected`` and ``spawn`` may be called from any
    thread; ``stop_normally``, ``replay`` and ``forget`` from the actor's own thread
    (a call or a hook). ``attach``, ``detach``, ``take_exit_reason`` and
    ``replay_steps`` are the runtime's, on the actor thread of the incarnation concerned.
    """

    __slots__ = ("_exit_reason", "_incarnation", "_lock", "_replays")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._incarnation: Incarnation | None = None
        """The incarnation connecting or serving; None between incarnations. Written
        by incarnations' actor threads under ``_lock``."""
        self._replays: dict[str, Callable[[Any], None]] = {}
        """Replay steps in registration order. Actor thread only."""
        self._exit_reason: str | None = None
        """A normal exit asked for by the call in progress. Actor thread only."""

    # -- the kind's side ----------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while an incarnation holds an open connection (any thread)."""
        incarnation = self._incarnation
        return incarnation is not None and incarnation.connected

    def report_fault(self, error: BaseException, resource: Any = None) -> None:
        """Crash the current incarnation with ``error``, from any thread.

        Also while ``connect()`` is still running: the report is queued and takes
        effect as soon as the incarnation serves. If ``resource`` is given and the
        current incarnation is connected to another one (a stale reader of an earlier
        connection), the report is ignored; with no incarnation attached, too. While the
        next ``connect()`` runs the current connection is not known yet, so a stale
        reader's report then reaches the new incarnation: a kind whose readers may
        outlive their connection stops them in ``disconnect()`` (or uses ``spawn``,
        whose threads report to their own incarnation).
        """
        with self._lock:
            incarnation = self._incarnation
        if incarnation is None:
            return
        if resource is not None and incarnation.connected and resource is not incarnation.conn:
            return
        incarnation.report(error)

    def stop_normally(self, reason: str = "finished") -> None:
        """End this resource normally once the current call returns (actor thread)."""
        self._exit_reason = reason

    def spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        """Start a thread that belongs to the current connection (a reader, a delivery
        loop); call it from the actor thread (``connect()`` or a call).

        The runtime joins it when the incarnation ends, after ``disconnect()``, which
        must make it return (close what it blocks on, set the event it waits for); a
        thread that outlives a bounded join is logged as left running. An exception
        escaping ``target`` is reported as a fault of the incarnation that spawned it
        (moot once that one has ended). RuntimeError with no incarnation attached.
        """
        with self._lock:
            incarnation = self._incarnation
        if incarnation is None:
            raise RuntimeError("spawn() needs a running incarnation (call it from "
                               "connect() or a call)")
        def run() -> None:
            try:
                target()
            except Exception as exc:
                log.debug("thread %s ended with %r", name, exc)
                # To the incarnation that spawned it, not whichever is current: a stale
                # thread's report then reaches an ended incarnation and is moot.
                incarnation.report(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        incarnation.spawned(thread)
        thread.start()
        return thread

    def replay(self, key: str, step: Callable[[Any], None]) -> None:
        """Register a replay step: see :meth:`ResourceActor.replay`."""
        self._replays[key] = step

    def forget(self, key: str) -> None:
        """Drop a replay step (no error if it is not registered)."""
        self._replays.pop(key, None)

    @property
    def replays(self) -> tuple[str, ...]:
        """Registered replay keys, in the order they will run."""
        return tuple(self._replays)

    # -- the runtime's side -----------------------------------------------------------

    def attach(self, incarnation: Incarnation) -> None:
        """``incarnation`` is now the actor's (before its ``connect()``); a normal exit
        asked for under an earlier incarnation is not carried over."""
        with self._lock:
            self._incarnation = incarnation
        self._exit_reason = None

    def detach(self, incarnation: Incarnation) -> None:
        """``incarnation`` ended; later reports from it are ignored."""
        with self._lock:
            if self._incarnation is incarnation:
                self._incarnation = None

    def take_exit_reason(self) -> str | None:
        """The normal exit asked for since the last take, clearing it."""
        reason, self._exit_reason = self._exit_reason, None
        return reason

    def replay_steps(self) -> list[Callable[[Any], None]]:
        """The replay steps to run after a connect, in order (a copy)."""
        return list(self._replays.values())


class ResourceActor:
    """Base class of every resource kind.

    Hooks (run in the actor's own thread):

    * ``connect()`` opens the resource and returns it; it becomes ``self.resource``.
      Raising is a failed start: retried with backoff, counted toward intensity.
    * ``disconnect(resource)`` closes it, best effort (errors are logged, not raised).
    * ``is_fault(exc)`` decides whether an exception from a call means the resource is
      broken (default: ``isinstance(exc, fault_types)``).
    * ``health_check()`` runs every ``health_interval`` seconds when configured.
    * ``begin_lease()`` / ``end_lease(ok)`` bracket a caller's lease of this actor
      (``with handle.lease()``): what the block means for the kind (a transaction).

    Every other public method is callable through a handle and returns a future.
    """

    kind: ClassVar[str] = ""
    """Name used in config (``kind = "..."``)."""

    fault_types: ClassVar[tuple[type[BaseException], ...]] = ()
    """Exceptions that mean the resource is broken (the default ``is_fault`` test)."""

    batch_methods: ClassVar[frozenset[str]] = frozenset()
    """Methods whose queued calls may be handed to ``run_batch`` together."""

    max_batch: ClassVar[int] = 256
    """Largest batch handed to ``run_batch``."""

    Options: ClassVar[type[BaseModel] | None] = None
    """The kind's options, declared once as a pydantic model (defaults included): the
    config loader validates a resource's keys against it and reports every problem with
    its path, and the actor reads the result as ``self.config`` (``sessions schema``
    documents the built-in kinds' models). None: the kind takes no options."""

    poll_interval: float | None = None
    """If set, ``poll()`` runs in the actor thread this often (and right after connect)."""

    resource: Any
    """The open resource, as returned by ``connect()``; ``None`` while disconnected."""

    name: str
    """This resource's name in the config (set by the runtime before ``connect``)."""

    context: ResourceContext
    """What the runtime offers this actor (faults, normal exit, replay, threads)."""

    config: Any
    """The validated ``Options`` (an instance of the kind's model), or None for a kind
    without ``Options``. Set by ``__init__``; read-only by convention."""

    def __init__(self, **options: Any) -> None:
        """``options`` are the kind's keys, validated against ``Options`` into
        ``self.config`` (ValueError naming every bad key); a kind without ``Options``
        takes none. Construction must be cheap and side-effect free: ``connect()`` does
        the I/O (``sessions check`` constructs every actor and drops it)."""
        self.resource = None
        self.name = type(self).__name__
        self.context = ResourceContext()
        model = type(self).Options
        if model is None:
            if options:
                raise TypeError(f"{type(self).__name__} takes no options "
                                f"(got {', '.join(sorted(options))})")
            self.config = None
            return
        if not options and "config" in self.__dict__:
            return  # set by the runtime (construct()) for a kind that passes no options up
        try:
            # by_name: the runtime passes options keyed by field name (check_options
            # fills in defaults that way); a config file spells an aliased field by
            # its alias, checked before (sessions._config.check_options).
            self.config = model.model_validate(options, by_name=True)
        except ValidationError as err:
            problems = "; ".join(
                f"{path or '(options)'}: {message}"
                for path, message in explain(err, "", dict(options), model)
            )
            raise ValueError(f"{type(self).__name__}: {problems}") from None

    @classmethod
    def max_pool_size(cls, options: Mapping[str, Any]) -> tuple[int, str] | None:
        """The most actors a pool of this kind may have, and why; None: no limit.

        A larger ``pool_size`` is lowered to it with a warning (e.g. an in-memory SQLite
        database exists once per connection; an I2C bus has one owner).
        """
        return None

    # -- hooks ------------------------------------------------------------------------

    def connect(self) -> Any:
        """Open the resource; the return value becomes ``self.resource``. Return
        :data:`IGNORE` to decide not to run."""
        raise NotImplementedError(f"{type(self).__name__} must implement connect()")

    def disconnect(self, resource: Any) -> None:
        """Close ``resource``, best effort. Default: call its ``close()`` if it has one."""
        close = getattr(resource, "close", None)
        if callable(close):
            close()

    def is_fault(self, exc: BaseException) -> bool:
        """True if ``exc`` (raised by a call) means the resource itself is broken."""
        return isinstance(exc, self.fault_types)

    def health_check(self) -> None:
        """Raise a fault if the resource is broken. Default: nothing to check."""

    def check_connection(self) -> str | None:
        """Prove the resource answers, for ``sessions check --connect``; return what was
        checked (``"HEAD https://api.example/ answered 200 OK"``), or None when
        ``connect()`` proved it already (the default: it opened the connection).

        Called once, on the actor's thread, after ``connect()`` and its replay steps, as
        one call (bounded by ``call_timeout``); the runtime never calls it otherwise. A
        kind whose ``connect()`` does no I/O (it connects lazily, at the first call)
        makes the smallest real exchange here and raises, naming what it tried, if it
        gets no answer.
        """
        return None

    def abort(self, resource: Any) -> None:
        """Make whatever is blocked on ``resource`` return now; called from ANOTHER thread.

        The runtime calls it when an incarnation is abandoned: a call, ``connect()``,
        ``health_check()``, ``poll()`` or ``disconnect()`` ran past its bound (a frozen
        or black-holed peer, a hung bus), at ``system.stop()`` for a resource that did
        not stop within ``shutdown_timeout``, and for ``shutdown = "brutal_kill"``.
        A thread blocked in a driver cannot be killed in Python, but its connection can
        be torn down under it: shut the driver's own socket down (``shutdown(SHUT_RDWR)``
        wakes a blocked ``recv()``; ``close()`` alone does not), close a bus's file
        descriptor. The blocked call then raises, the abandoned incarnation's thread
        disconnects and ends, and nothing it does afterwards reaches a caller.

        ``resource`` is the abandoned incarnation's connection, or None if ``connect()``
        has not returned yet (a kind that can abort a pending connect keeps what it
        needs on ``self``). Must not block, must tolerate being called more than once
        and concurrently with the blocked call, and must not raise (errors are logged).
        Default: nothing (the driver's own timeouts are then the only bound).
        """

    def begin_lease(self) -> None:
        """A caller takes this actor for a block (``with handle.lease()``,
        ``with handle``): from now until :meth:`end_lease` only that caller's calls run
        here, in order. Runs on the actor thread, as the lease's first call.

        Override it to give the block a meaning on the connection, e.g. begin a
        transaction (the ``database`` kind). Raising (not a fault) refuses the lease:
        the caller's ``with`` raises that error and :meth:`end_lease` is not called, so
        leave nothing half begun; a fault restarts the resource as from any call.
        Default: nothing (the block is exclusive use of this actor and its connection,
        which is already what it gives every call). ``health_check()`` and ``poll()``
        still run between the block's calls, inside whatever it began.
        """

    def end_lease(self, ok: bool) -> None:
        """The lease's block is over: ``ok`` is True when it ended normally, False when
        it raised (or the lease was revoked, or never fully began). Runs on the actor
        thread, as the lease's last call, after every call of the block.

        Override it to finish what :meth:`begin_lease` started: commit if ``ok``, else
        roll back. An error raised here reaches the caller from the block's exit (when
        ``ok``). If the connection is lost during the lease, this is not called: the
        lease is broken and the connection is gone; a new ``connect()`` starts with no
        lease, so reset any lease state there. Default: nothing.
        """

    def poll(self) -> None:
        """Periodic work in the actor thread when ``poll_interval`` is set (e.g. a Kafka
        consumer's ``poll()``). A fault raised here crashes the actor like a call."""

    def batch_ready(self) -> bool:
        """Whether the calls queued behind the next one may join it in ``run_batch``;
        False runs it alone and leaves the rest queued. Asked in the actor thread before
        each batch is formed (keep it cheap). A kind says False when a batch would fail
        as a whole where a lone call fails alone: e.g. a connection it can see is dead
        (the lone call faults, the rest are served by the next connection). Default:
        True."""
        return True

    def run_batch(self, calls: Sequence[BatchItem]) -> list[Outcome]:
        """Run several queued calls of ``batch_methods`` at once (e.g. as one pipeline).

        Called with two or more calls (a lone call runs as itself). Return one outcome
        per call, in order. Raising fails every call of the batch
        (a fault also restarts the resource). Default: run them one by one.
        """
        outcomes: list[Outcome] = []
        for method, args, kwargs in calls:
            try:
                outcomes.append((True, getattr(self, method)(*args, **kwargs)))
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes

    def counts_as_failure(self, exc: BaseException) -> bool:
        """True if ``exc`` should count toward the circuit breaker (default: a fault)."""
        return self.is_fault(exc)

    def report_fault(self, error: BaseException, resource: Any = None) -> None:
        """Crash this resource from another thread (e.g. its own reader thread).

        Thread-safe, also while ``connect()`` is still running (the report then takes
        effect as soon as the resource serves). If ``resource`` is given and is not the
        current connection of a connected resource (a stale reader of an earlier
        incarnation), the report is ignored. Same as ``self.context.report_fault``.
        """
        self.context.report_fault(error, resource)

    def stop_normally(self, reason: str = "finished") -> None:
        """End this resource normally once the current call returns.

        A ``permanent`` resource is restarted anyway; ``transient`` and ``temporary``
        ones stay stopped and further calls fail with ``ResourceUnavailable``.
        """
        self.context.stop_normally(reason)

    # -- replay -----------------------------------------------------------------------

    def replay(self, key: str, step: Callable[[Any], None]) -> None:
        """Register ``step(resource)`` to re-run after every reconnect, before any call.

        For state that lives in the connection: a subscription, a filter, a session
        setting, a device init write. Steps run in registration order; registering an
        existing key replaces its step in place. The step is only registered: do the
        action now yourself if it is needed now.
        """
        self.context.replay(key, step)

    def forget(self, key: str) -> None:
        """Drop a replay step (no error if it is not registered)."""
        self.context.forget(key)

    @property
    def replays(self) -> tuple[str, ...]:
        """Registered replay keys, in the order they will run."""
        return self.context.replays

    # -- built-in call ----------------------------------------------------------------

    def transaction(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(resource, *args, **kwargs)`` with no other call interleaved.

        This is how a caller does a multi-step exchange (write a pointer, then read)
        atomically: the whole function runs as one call in the actor's thread.
        """
        return fn(self.resource, *args, **kwargs)


def construct(cls: type[ResourceActor], options: Mapping[str, Any]) -> ResourceActor:
    """How the runtime builds an actor: ``self.config`` is set from ``options`` before
    the kind's ``__init__`` runs, so it is there also for a kind whose constructor
    takes its options as keywords and calls ``super().__init__()`` without them."""
    actor = cls.__new__(cls)
    model = cls.Options
    if model is not None:
        actor.config = model.model_validate(dict(options), by_name=True)
    actor.__init__(**options)  # type: ignore[misc]
    return actor


def public_methods(cls: type[ResourceActor]) -> frozenset[str]:
    """The names a handle may call on ``cls``; the rule in one line:

    **every public method the kind adds, never a name ResourceActor itself defines
    (hooks, shortcuts, settings), plus** ``transaction``.
    """
    return BUILT_IN_CALLS | frozenset(
        n for n in dir(cls)
        if not n.startswith("_") and not hasattr(ResourceActor, n)
        and inspect.isroutine(getattr(cls, n, None))
    )


def reserved_clashes(cls: type[ResourceActor]) -> list[str]:
    """Names in :data:`RESERVED` that ``cls`` defines as a method (a config error: the
    runtime sets these attributes on every actor)."""
    return sorted(n for n in RESERVED if callable(getattr(cls, n, None)))
