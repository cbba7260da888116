"""Fault injection through the runtime, the same for every kind.

A :class:`FaultPlan` hangs on a resource's mailbox (on every member's, for a pool: one
plan shared) once a test or an operator asks for a fault. The runner consults it at two
points only, so a kind needs nothing for it: before ``connect()`` (a failed connect)
and before each call or batch (a fault, or a stall). A resource that never had a plan
pays one attribute read per call.

Who writes what: the plan's counters and stall queue are written by the injecting
thread and taken by the actor threads, all under the plan's lock; ``armed`` is a plain
flag written under the lock and read without it on the hot path (a stale read only
delays an injection to the next call).
"""

from __future__ import annotations

import threading
from collections import deque

from sessions._errors import InjectedFault


class InjectedStall:
    """A call held by an injected stall: the first call to reach the resource after
    ``stall_next_call()`` hangs, as on a frozen peer, until :meth:`release` (it then
    runs normally) or until the runtime aborts the connection under it (the stall
    watchdog at ``stall_timeout``, a stop past ``shutdown_timeout``: it then fails as a
    fault)."""

    def __init__(self, resource: str) -> None:
        self.resource = resource
        self.started = threading.Event()
        """Set when a call has reached the stall (and hangs there)."""
        self._wake = threading.Event()
        self.aborted = False
        """Set (before the wake) when the runtime aborted the connection under it."""

    def release(self) -> None:
        """Let the held call run (or, if none has reached the stall yet, let the next
        one through without stopping)."""
        self._wake.set()

    def abort(self) -> None:
        """The runtime tore the connection down under the held call (runner thread)."""
        self.aborted = True
        self._wake.set()

    def hold(self) -> None:
        """Actor thread: hang until released or aborted; an abort raises the fault a
        torn-down connection gives."""
        self.started.set()
        self._wake.wait()
        if self.aborted:
            raise InjectedFault(f"the connection of {self.resource!r} was torn down under "
                                "a call held by an injected stall")

    def __repr__(self) -> str:
        state = ("aborted" if self.aborted else "released" if self._wake.is_set()
                 else "holding a call" if self.started.is_set() else "waiting for a call")
        return f"<InjectedStall {self.resource!r} {state}>"


class FaultPlan:
    """The faults queued for one resource (see the module docstring)."""

    def __init__(self, resource: str) -> None:
        self.resource = resource
        self._lock = threading.Lock()
        self.armed = False
        """Something is queued for calls (read without the lock on the hot path)."""
        self.calls = 0
        """The next ``calls`` calls (or batches) fault."""
        self.connects = 0
        """The next ``connects`` connects fail."""
        self.stalls: deque[InjectedStall] = deque()
        """Stalls waiting for a call, in the order asked for."""

    def add(self, *, calls: int = 0, connects: int = 0,
            stall: InjectedStall | None = None) -> None:
        with self._lock:
            self.calls += calls
            self.connects += connects
            if stall is not None:
                self.stalls.append(stall)
            self.armed = bool(self.calls or self.stalls)

    def clear(self) -> list[InjectedStall]:
        """Drop everything queued; the stalls that were waiting for a call (released
        by the caller of ``clear``)."""
        with self._lock:
            stalls = list(self.stalls)
            self.calls = self.connects = 0
            self.stalls.clear()
            self.armed = False
        return stalls

    def take_call(self) -> InjectedStall | InjectedFault | None:
        """Actor thread, before a call or batch: a stall to hold it on, a fault to
        raise, or None. Stalls come first, then faults."""
        with self._lock:
            if self.stalls:
                taken: InjectedStall | InjectedFault | None = self.stalls.popleft()
            elif self.calls:
                self.calls -= 1
                taken = InjectedFault(f"a fault injected into a call to {self.resource!r}")
            else:
                taken = None
            self.armed = bool(self.calls or self.stalls)
        return taken

    def take_connect(self) -> InjectedFault | None:
        """Actor thread, before ``connect()``: a failure to raise instead, or None."""
        with self._lock:
            if not self.connects:
                return None
            self.connects -= 1
        return InjectedFault(f"a failure injected into the connect of {self.resource!r}")

    def pending(self) -> dict[str, int]:
        """What is still queued: ``{"calls": n, "connects": n, "stalls": n}``."""
        with self._lock:
            return {"calls": self.calls, "connects": self.connects,
                    "stalls": len(self.stalls)}
