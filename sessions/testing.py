"""Testing an application that uses sessions: the helpers behind the pytest plugin.

The plugin (module ``sessions_pytest``, a ``pytest11`` entry point installed with the
library) gives any project whose tests run with pytest two fixtures, without an import.

``sessions_system``
    A function that starts a system (``sessions.start``) from a dict or a TOML file,
    with per-test ``overrides`` merged in (a resource's URL pointed at a substitute, a
    faster backoff), and stops it after the test. The test **fails** if the system left
    a library thread running or a call's future unresolved after it stopped: the
    library promises neither happens, and an application's test is where a regression
    would show first.

``sessions_events``
    An :class:`EventLog` that every system started by ``sessions_system`` reports to:
    ``sessions_events.wait_for(ChildRestarting, name="db", timeout=5)`` waits for a
    supervision event instead of sleeping.

Failures on cue come from the runtime: ``system.faults(name)`` (see
:class:`sessions.FaultInjector`). ``docs/testing.md`` shows them together.

The substitutes a config selects (``fakeredis://``, ``memory://``, ``host = "sim"``,
``opc.tcp://sim/``) are in-process peers shared by name; :func:`fake_redis_server`,
:func:`kafka_broker`, :func:`modbus_device` and :func:`opcua_server` give a test the
peer itself, to look at it or make it fail, and :meth:`Harness.finish` forgets them all
after each test (``docs/testing.md``, "Substitutes").
"""

from __future__ import annotations

import copy
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from os import PathLike
from typing import Any, TypeVar

import sessions
from sessions import _config
from sessions._runtime import futures as _futures
from sessions._runtime import substitutes
from sessions.messages import Event

__all__ = [
    "EventLog",
    "Harness",
    "fake_redis_server",
    "kafka_broker",
    "library_threads",
    "merge",
    "modbus_device",
    "opcua_server",
]

E = TypeVar("E")

LEAK_WAIT = 5.0
"""Seconds a stopped system's threads get to end before they count as leaked."""


class EventLog:
    """Supervision events in the order they came (a ``System.subscribe`` callback).

    ``wait_for`` looks at the events already logged first, then waits for new ones; it
    never sleeps longer than needed and fails with what it did see."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def attach(self, system: sessions.System) -> Callable[[], None]:
        """Log ``system``'s events from now on; returns the unsubscribe function."""
        return system.subscribe(self)

    def matching(self, match: type[E] | Event | Callable[[Any], bool],
                 **fields: Any) -> list[Any]:
        """The events logged so far that match (see :meth:`wait_for`)."""
        test = _matcher(match, fields)
        with self._cond:
            return [e for e in self.events if test(e)]

    def wait_for(self, match: type[E] | Event | Callable[[Any], bool], /, *,
                 timeout: float = 10.0, count: int = 1, **fields: Any) -> Any:
        """The ``count``-th event that matches (the first, by default), waiting at most
        ``timeout`` seconds for it. ``match`` is an event class (``ChildRestarting``),
        an event (equal), or a predicate; ``fields`` must equal the event's attributes
        (``name="db"``). Raises ``AssertionError`` listing the events seen."""
        test = _matcher(match, fields)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events if test(e)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no{'' if count == 1 else f' {count}'} event matching "
                        f"{_describe(match, fields)} within {timeout:g}s; "
                        f"events seen: {self.events}")
                self._cond.wait(left)

    def of(self, cls: type[E]) -> list[E]:
        """The events of class ``cls`` logged so far."""
        with self._cond:
            return [e for e in self.events if isinstance(e, cls)]

    def clear(self) -> None:
        with self._cond:
            self.events.clear()


def _matcher(match: Any, fields: Mapping[str, Any]) -> Callable[[Any], bool]:
    if isinstance(match, type):
        def base(e: Any) -> bool:
            return isinstance(e, match)
    elif callable(match):
        base = match
    else:
        def base(e: Any) -> bool:
            return bool(e == match)
    if not fields:
        return base
    return lambda e: base(e) and all(
        getattr(e, k, _MISSING) == v for k, v in fields.items())


_MISSING = object()


def _describe(match: Any, fields: Mapping[str, Any]) -> str:
    what = match.__name__ if isinstance(match, type) else repr(match)
    if fields:
        what += "(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"
    return what


def library_threads() -> set[threading.Thread]:
    """The library's threads alive now (all are named ``sessions-...``)."""
    return {t for t in threading.enumerate() if t.name.startswith("sessions-") and t.is_alive()}


def fake_redis_server(name: str = "") -> Any:
    """The fake Redis server (a ``fakeredis.FakeServer``) behind ``url =
    "fakeredis://NAME"``: look at its data, or set ``connected = False`` to make it
    fail as a real server going down would (see docs/testing.md, "Substitutes")."""
    from sessions.actors.redis import fake_server  # noqa: PLC0415 - imports redis-py

    return fake_server(name)


def kafka_broker(name: str = "") -> Any:
    """The in-memory Kafka broker (a :class:`sessions.actors.kafka.memory.MemoryBroker`)
    behind ``bootstrap_servers = "memory://NAME"``: read its topics and committed
    offsets, ``create_topic``, or ``down()``/``up()`` to make the cluster go away and
    come back (see docs/testing.md, "Substitutes")."""
    from sessions.actors.kafka.memory import broker  # noqa: PLC0415 - imports kafka-python

    return broker(name)


def modbus_device(port: int = 502) -> Any:
    """The simulated Modbus device behind ``host = "sim"`` and ``port`` (a
    :class:`sessions.actors._modbus_sim.ModbusSim`): ``set``/``get`` its coils and
    registers, ``stop()``/``start()`` it (see docs/testing.md, "Substitutes")."""
    from sessions.actors._modbus_sim import simulator  # noqa: PLC0415 - imports pymodbus

    return simulator(port)


def opcua_server(name: str = "") -> Any:
    """The simulated OPC UA server behind ``url = "opc.tcp://sim/NAME"`` (a
    :class:`sessions.actors._opcua_sim.OPCUASim`): ``add_variable`` to its address
    space, ``get``/``set`` values (see docs/testing.md, "Substitutes")."""
    from sessions.actors._opcua_sim import simulator  # noqa: PLC0415 - starts asyncua

    return simulator(name)


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, tables recursively (a copy; neither is
    changed): ``{"resources": {"db": {"url": "sqlite://"}}}`` changes one key."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Harness:
    """What the ``sessions_system`` fixture does, usable without pytest: start systems,
    then :meth:`finish` stops them and returns the problems found."""

    def __init__(self, events: EventLog | None = None) -> None:
        self.events = events if events is not None else EventLog()
        self.systems: list[sessions.System] = []
        self._threads_before = library_threads()
        self._tracked: weakref.WeakSet[Any] = weakref.WeakSet()
        self._previous = _futures.TRACKED
        _futures.TRACKED = self._tracked

    def start(self, config: str | PathLike[str] | Mapping[str, Any], /, *,
              overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> sessions.System:
        """Start a system from ``config`` (a TOML path or a dict) with ``overrides``
        merged in; ``kwargs`` go to ``sessions.start`` (``partial``, ``wait``...). The
        events are logged from before the first start."""
        raw = config if isinstance(config, Mapping) else _config.read_file(config)
        merged = merge(raw, overrides or {})
        system = sessions.System(_config.load(merged), **{
            k: v for k, v in kwargs.items() if k in ("clock", "rng", "partial")})
        self.systems.append(system)
        self.events.attach(system)
        system._boot(kwargs.get("wait", True))
        return system

    def finish(self) -> list[str]:
        """Stop every system started here and forget the substitutes' named peers (fake
        Redis servers, in-memory brokers); the problems: library threads still running
        ``LEAK_WAIT`` s after, futures never resolved."""
        try:
            for system in reversed(self.systems):
                system.stop()
        finally:
            _futures.TRACKED = self._previous
            substitutes.reset()  # the next test's fake servers and brokers start empty
        problems = []
        deadline = time.monotonic() + LEAK_WAIT
        leaked = library_threads() - self._threads_before
        while leaked and time.monotonic() < deadline:
            next(iter(leaked)).join(0.05)
            leaked = library_threads() - self._threads_before
        if leaked:
            problems.append("library threads still running after stop: "
                            + ", ".join(sorted(t.name for t in leaked)))
        pending = [f for f in list(self._tracked) if not f.done()]
        if pending:
            problems.append(f"{len(pending)} call(s) never resolved after stop: " + ", ".join(
                f"{f.method}() on {f.resource!r}" for f in pending[:10]))
        return problems
