"""``sessions run`` under systemd (``Type=notify``): readiness, status, watchdog.

systemd learns about a ``Type=notify`` service from datagrams the service sends to the
unix socket named in ``$NOTIFY_SOCKET`` (the ``sd_notify(3)`` protocol: newline-separated
``KEY=value`` assignments in one datagram; a leading ``@`` names a socket in the
abstract namespace). This module speaks it directly, with the standard library: the
only pure-Python client, ``sdnotify``, has had no release since 2017, and the protocol
is a dozen lines. Without ``$NOTIFY_SOCKET`` (not started by systemd) nothing is sent
and no thread is started.

What is sent, and why:

* ``READY=1`` once the resources of ``[systemd] ready`` (default: every permanent
  resource) are running, so that units ordered after this one start against a plant
  that answers. Never after a timeout of our own: a resource that does not come up
  holds READY back (``STATUS=`` says which and why), and systemd's
  ``TimeoutStartSec=`` decides how long that may last (then it fails the start and
  ``Restart=`` applies), which is what a unit's author expects ``Type=notify`` to do.
* ``STATUS=`` with the tree's health (``systemctl status`` shows it) when it changes:
  looked at on every supervision event and once per :data:`STATUS_INTERVAL` (a stall
  begins and ends without an event), sent at most once per interval (the latest state
  is always sent, late rather than never).
* ``WATCHDOG=1`` every half ``$WATCHDOG_USEC`` (when ``WatchdogSec=`` is set and
  ``$WATCHDOG_PID``, if set, is this process), but only while the root supervisor runs
  and :meth:`sessions.System.stalls` is empty: no call past its ``stall_timeout``, no
  abandoned incarnation still blocked after ``abort()``, and the supervision thread
  turning. The library heals a resource by itself; what it cannot heal (a thread wedged
  in a driver, a stuck supervision loop) stops the pings, and systemd restarts the
  process.
* ``STOPPING=1`` when ``run`` begins to stop; ``RELOADING=1`` with ``MONOTONIC_USEC=``
  and then ``READY=1`` again around a reload (:meth:`SystemdNotifier.reloading`,
  :meth:`SystemdNotifier.ready`, for the SIGHUP reload to call).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sessions._redact import redact
from sessions._system import System
from sessions.messages import ChildState, Event

__all__ = ["STATUS_INTERVAL", "SystemdNotifier", "health_line", "notify_socket_address"]

log = logging.getLogger("sessions.systemd")

STATUS_INTERVAL = 1.0
"""Least seconds between two ``STATUS=`` datagrams (a restart storm sends one a
second, not hundreds)."""

SEND_TIMEOUT = 2.0
"""Seconds a datagram may wait for room in the receiver's queue (a wedged systemd must
not wedge the notifier thread)."""

THREAD_NAME = "sessions-systemd"

MAX_NAMED = 3
"""Resources named in a ``STATUS=`` line before ``(+N more)``."""


def notify_socket_address(value: str) -> str | bytes:
    """The address to send to for a ``$NOTIFY_SOCKET`` value: a path, or (leading
    ``@``) a name in Linux's abstract namespace, which starts with a NUL byte.

    Raises ``ValueError`` for anything else (systemd also knows ``vsock:`` addresses,
    for virtual machines, which this does not speak)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET={value!r} is neither a path nor an abstract socket "
                     "('@name'); no notification is sent")


def health_line(system: System, waiting_for: Sequence[str] = ()) -> str:
    """One line for ``STATUS=``: how many resources run, then what is not healthy and
    why (``2 of 3 resources running; plc restarting (connect refused)``), stalls, and
    the resources READY=1 still waits for."""
    if system.state == ChildState.FAILED:
        return _one_line(redact(system.failure or "the root supervisor gave up"))
    rows = _resource_rows(system.status())
    running = [row for row in rows if row.get("state") == ChildState.RUNNING]
    noun = "resource" if len(rows) == 1 else "resources"
    if len(running) == len(rows):
        parts = [f"{len(rows)} {noun} running"]
    else:
        parts = [f"{len(running)} of {len(rows)} {noun} running"]
    troubled = []
    for row in rows:
        state = row.get("state")
        if state == ChildState.RUNNING:
            continue
        fault = row.get("last_fault")
        why = f" ({_one_line(str(fault))})" if fault and state != ChildState.STOPPED else ""
        troubled.append(f"{row['name']} {state}{why}")
    parts += _at_most(troubled)
    stalls = [f"{s.resource} stuck in {s.what}" + _for(s.seconds) for s in system.stalls()]
    if stalls:
        parts.append("watchdog held: " + ", ".join(_at_most(stalls)))
    if waiting_for:
        parts.append("not ready: waiting for " + ", ".join(_at_most(list(waiting_for))))
    return "; ".join(parts)


def _for(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f" for {seconds:.1f}s" if seconds < 10 else f" for {seconds:.0f}s"


def _resource_rows(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources and pools of a ``System.status()`` tree (pools as one row)."""
    if node.get("type") != "supervisor":
        return [node]
    rows: list[dict[str, Any]] = []
    for child in node.get("children", ()):
        rows += _resource_rows(child)
    return rows


def _at_most(items: list[str]) -> list[str]:
    if len(items) <= MAX_NAMED:
        return items
    return [*items[:MAX_NAMED], f"(+{len(items) - MAX_NAMED} more)"]


def _one_line(text: str) -> str:
    """A value for one ``KEY=value`` line: newlines would start another assignment."""
    return " ".join(text.split())


class SystemdNotifier:
    """Tells systemd about one running :class:`~sessions.System` (see the module).

    Build it with :meth:`from_environment` (None when not under systemd), then
    :meth:`start`; :meth:`stopping` at shutdown sends ``STOPPING=1`` and ends its
    thread (``sessions-systemd``); :meth:`close` ends it without a word. Every method
    may be called from any thread; sending never raises (a failed send is logged once
    per kind of error: telling systemd must not break the service)."""

    def __init__(self, system: System, address: str | bytes, *, ready: Sequence[str] = (),
                 watchdog_interval: float | None = None) -> None:
        self._system = system
        self._address = address
        self._ready_names = list(ready)
        self.watchdog_interval = watchdog_interval
        """Seconds between two ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None."""
        self._cond = threading.Condition()
        self._want_ready = True
        """READY=1 is owed (at start, and after ``reloading()`` until ``ready()``)."""
        self._reloading = False
        self._closed = False
        self._stopped = False
        self._changed = False
        """An event arrived since the status was last computed."""
        self._looked_at = -float("inf")
        self._last_status = ""
        self._status_at = -float("inf")
        self._next_ping = 0.0
        self._warned: set[str] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.settimeout(SEND_TIMEOUT)
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)

    @classmethod
    def from_environment(cls, system: System, ready: Sequence[str] = (),
                         environ: Mapping[str, str] | None = None) -> SystemdNotifier | None:
        """A notifier for ``system`` if ``$NOTIFY_SOCKET`` is set, else None.

        ``$WATCHDOG_USEC`` (set by ``WatchdogSec=``) turns the pings on, unless
        ``$WATCHDOG_PID`` names another process (the watchdog is then not ours to
        feed). A malformed value is logged and ignored."""
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        if not value:
            return None
        try:
            address = notify_socket_address(value)
        except ValueError as err:
            log.warning("%s", err)
            return None
        return cls(system, address, ready=ready, watchdog_interval=_watchdog_interval(env))

    # -- the service's lifecycle ------------------------------------------------------

    def start(self) -> None:
        """Begin: follow supervision events, send READY=1 when the resources are up,
        STATUS= lines, and the watchdog pings."""
        self._unsubscribe = self._system.subscribe(self._on_event)
        self._thread.start()

    def reloading(self) -> None:
        """A reload begins: ``RELOADING=1`` with ``MONOTONIC_USEC=`` (systemd needs the
        time to tell this reload from an earlier one); :meth:`ready` when it is done."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        with self._cond:
            self._reloading = True
            self._want_ready = False
        self._send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}\nSTATUS=reloading")

    def ready(self, resources: Sequence[str] | None = None) -> None:
        """The reload is done: ``READY=1`` again once the ``ready`` resources run (at
        once if they do); ``resources``: the reloaded config's (its
        ``ready_resources()``), if they changed."""
        with self._cond:
            if resources is not None:
                self._ready_names = list(resources)
            self._reloading = False
            self._want_ready = True
            self._cond.notify_all()

    def stopping(self, why: str | None = None) -> None:
        """``run`` begins to stop: end the thread (no more pings: systemd does not
        expect them while a service stops), then ``STOPPING=1``, with ``why`` in the
        status (``systemctl status`` shows the last one); idempotent."""
        self._end_thread()
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
        reason = f": {_one_line(redact(why))}" if why else ""
        self._send(f"STOPPING=1\nSTATUS=stopping{reason}")
        self._sock.close()

    def close(self) -> None:
        """End the thread and stop following events, without telling systemd;
        idempotent."""
        self._end_thread()
        with self._cond:
            self._stopped = True
        self._sock.close()

    def _end_thread(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(SEND_TIMEOUT * 2)

    # -- the thread -------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Event thread: the tree changed; the notifier thread sends the new status."""
        with self._cond:
            self._changed = True
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    if self._closed:
                        return
                    message = self._turn()
                if message:  # sent without the lock: the event thread never waits on it
                    self._send(message)
                with self._cond:
                    if self._closed:
                        return
                    self._cond.wait(self._wait())
        except Exception:  # a bug here must not take the service down with it
            log.exception("the systemd notifier failed; systemd is told nothing more")

    def _turn(self) -> str:
        """One look at the tree (under ``_cond``): READY=1 when due, the status when it
        changed (rate-limited), and the watchdog ping when due and healthy; returns
        the datagram to send ("" for none)."""
        now = time.monotonic()
        lines = []
        waiting = self._waiting_for()
        if self._want_ready and not self._reloading and not waiting:
            lines.append("READY=1")
            self._want_ready = False
        sendable = now - self._status_at >= STATUS_INTERVAL
        if lines or (sendable and self._changed) or now - self._looked_at >= STATUS_INTERVAL:
            # Also once an interval without an event: a stall begins and ends with none.
            self._changed, self._looked_at = False, now
            status = health_line(self._system, waiting if self._want_ready else ())
            if status != self._last_status or lines:
                lines.append(f"STATUS={status}")
                self._last_status, self._status_at = status, now
        if self.watchdog_interval is not None and now >= self._next_ping:
            if self._healthy():
                lines.append("WATCHDOG=1")
                self._next_ping = now + self.watchdog_interval
            else:  # look again soon: the ping resumes as soon as the stall is over
                self._next_ping = now + min(0.1, self.watchdog_interval)
        return "\n".join(lines)

    def _wait(self) -> float:
        """Seconds until the next thing due (the ping, a rate-limited status, a look at
        whether the ``ready`` resources run)."""
        now = time.monotonic()
        due = [self._looked_at + STATUS_INTERVAL - now]  # a look, at least that often
        if self._changed:
            due.append(self._status_at + STATUS_INTERVAL - now)
        if self.watchdog_interval is not None:
            due.append(self._next_ping - now)
        if self._want_ready and not self._reloading:
            due.append(0.05)
        return max(0.0, min(due))

    def _waiting_for(self) -> list[str]:
        """The ``ready`` resources not running yet."""
        waiting = []
        for name in self._ready_names:
            try:
                state = self._system.get(name).state
            except KeyError:  # removed at runtime: nothing to wait for
                continue
            if state != ChildState.RUNNING:
                waiting.append(name)
        return waiting

    def _healthy(self) -> bool:
        """Feed the watchdog? Only while the root runs and nothing is stalled."""
        return self._system.state == ChildState.RUNNING and not self._system.stalls()

    def _send(self, message: str) -> None:
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as err:
            kind = type(err).__name__
            if kind not in self._warned:
                self._warned.add(kind)
                log.warning("cannot notify systemd at %r: %s (further %s errors are not "
                            "logged)", self._address, err, kind)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, or None (no watchdog, or not ours)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        log.info("WATCHDOG_PID=%s is not this process (%d): no watchdog pings", pid,
                 os.getpid())
        return None
    try:
        value = int(usec)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("WATCHDOG_USEC=%r is not a positive number of microseconds: no "
                    "watchdog pings", usec)
        return None
    return value / 2e6
