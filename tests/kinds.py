"""A controllable test resource kind (``tests.kinds:Probe``).

Tests steer it through a ``Controls`` object looked up by the resource name: make
connects fail or hang, count connects and disconnects, and see which thread ran
which call. Faults are ``ProbeBroken``; anything else a call raises is a caller error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sessions import IGNORE, ResourceActor


class ProbeBroken(ConnectionError):
    """The fault type of the probe: the resource is broken."""


@dataclass
class Controls:
    fail_connects: int = 0
    connect_gate: threading.Event | None = None
    connects: int = 0
    disconnects: int = 0
    log: list[tuple[Any, ...]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    resources: list[object] = field(default_factory=list)
    aborts: int = 0
    ignore: bool = False
    """connect() returns IGNORE (decides not to run)."""
    connect_aborted: threading.Event = field(default_factory=threading.Event)
    """Set by abort(None): a connect blocked on ``connect_gate`` gives up."""
    leases: list[tuple[Any, ...]] = field(default_factory=list)
    """("begin", generation) and ("end", ok) per lease hook run, in order."""
    refuse_lease: bool = False
    """begin_lease() raises ValueError (a caller error: the lease is refused)."""
    refuse_end: bool = False
    """end_lease() raises ValueError (a caller error), after recording its call."""
    end_gate: threading.Event | None = None
    """end_lease() waits until it is set (an end that outlasts call_timeout)."""


CONTROLS: dict[str, Controls] = {}
LIFECYCLE: list[tuple[str, str]] = []
"""("connect" | "disconnect", resource name), across all probes, in order."""


def controls(name: str) -> Controls:
    return CONTROLS.setdefault(name, Controls())


class Conn:
    """The 'connection': knows its generation, can be broken."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.closed = False
        self.settings: list[Any] = []
        self.aborted = threading.Event()
        """Set by ``Probe.abort``: what ``stall`` waits on, like a socket shut down."""


class Probe(ResourceActor):
    kind = "probe"
    fault_types = (ProbeBroken,)

    def __init__(self, label: str = "", unhealthy: bool | str = False, url: str = "") -> None:
        super().__init__()
        self.label = label
        self.url = url
        self.unhealthy = unhealthy
        self.counter = 0

    @property
    def ctl(self) -> Controls:
        return controls(self.name)

    def connect(self) -> Any:
        ctl = self.ctl
        if ctl.ignore:
            return IGNORE
        if ctl.connect_gate is not None:
            deadline = time.monotonic() + 30
            while not ctl.connect_gate.wait(0.01) and time.monotonic() < deadline:
                if ctl.connect_aborted.is_set():
                    raise ProbeBroken("connect aborted")
        with ctl.lock:
            ctl.connects += 1
            if ctl.fail_connects > 0:
                ctl.fail_connects -= 1
                raise ProbeBroken(f"connect refused (attempt {ctl.connects})")
        conn = Conn(ctl.connects)
        ctl.resources.append(conn)
        LIFECYCLE.append(("connect", self.name))
        return conn

    def disconnect(self, resource: Conn) -> None:
        resource.closed = True
        self.ctl.disconnects += 1
        LIFECYCLE.append(("disconnect", self.name))

    def health_check(self) -> None:
        if self.unhealthy == "stall":
            self.resource.aborted.wait(30)
        if self.unhealthy:
            raise ProbeBroken("health check failed")

    def abort(self, resource: Conn | None) -> None:
        ctl = self.ctl
        with ctl.lock:
            ctl.aborts += 1
        if resource is None:
            ctl.connect_aborted.set()
        else:
            resource.aborted.set()

    def begin_lease(self) -> None:
        ctl = self.ctl
        if ctl.refuse_lease:
            raise ValueError("lease refused")
        ctl.leases.append(("begin", self.resource.generation))

    def end_lease(self, ok: bool) -> None:
        ctl = self.ctl
        ctl.leases.append(("end", ok))
        if ctl.end_gate is not None:
            ctl.end_gate.wait(10)
        if ctl.refuse_end:
            raise ValueError("end refused")

    # -- callable methods -------------------------------------------------------------

    def echo(self, value: Any) -> Any:
        return value

    def whoami(self) -> tuple[str, int]:
        return threading.current_thread().name, self.resource.generation

    def record(self, caller: Any, seq: int) -> int:
        """Append to the log; returns the connection generation."""
        self.ctl.log.append((caller, seq, self.resource.generation))
        self.ctl.threads.add(threading.current_thread().name)
        self.counter += 1
        return int(self.resource.generation)

    def exclusive(self, seq: int) -> int:
        """Fails if another call is running at the same time (it never should)."""
        if getattr(self, "_busy", False):
            raise AssertionError("two calls overlapped")
        self._busy = True
        try:
            for _ in range(50):
                threading.Event().wait(0)  # yield the GIL a few times
            return seq
        finally:
            self._busy = False

    def fail(self, message: str = "bad input") -> None:
        raise ValueError(message)

    def break_it(self, message: str = "link lost") -> None:
        raise ProbeBroken(message)

    def wait_for(self, event: threading.Event, timeout: float = 10.0) -> bool:
        return event.wait(timeout)

    def block(self, started: threading.Event, release: threading.Event) -> str:
        started.set()
        release.wait(30)
        return "released"

    def stall(self, started: threading.Event) -> str:
        """Hang like a call to a frozen peer: until abort() tears the connection down."""
        started.set()
        if self.resource.aborted.wait(30):
            raise ProbeBroken("connection aborted")
        return "not aborted"

    def stubborn(self, started: threading.Event, release: threading.Event) -> int:
        """Hang, and ignore abort() (a driver abort cannot reach); returns the generation
        of the connection it started on."""
        conn = self.resource
        started.set()
        release.wait(30)
        return int(conn.generation)

    def set_unhealthy(self, flag: bool | str = True) -> None:
        self.unhealthy = flag

    def remember_broken(self) -> None:
        """Register a replay step that faults: every later reconnect fails."""
        self.replay("broken", lambda conn: (_ for _ in ()).throw(ProbeBroken("replay failed")))

    def remember(self, setting: Any) -> None:
        """A connection setting, replayed after reconnect."""
        self.resource.settings.append(setting)

        def step(conn: Conn, s: Any = setting) -> None:
            conn.settings.append(s)

        self.replay(f"setting:{setting}", step)

    def settings(self) -> list[Any]:
        return list(self.resource.settings)

    def generation(self) -> int:
        return int(self.resource.generation)

    def finish(self) -> str:
        self.stop_normally("job done")
        return "bye"

    def apply(self, fn: Callable[[Probe], Any]) -> Any:
        return fn(self)
