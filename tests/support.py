"""Test helpers: configs for the probe kind, an event recorder, a fake clock."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sessions.messages import Event
from sessions.testing import EventLog

PROBE = "tests.kinds:Probe"


def config(resources: dict[str, dict[str, Any]] | list[str], **supervisor: Any) -> dict[str, Any]:
    """A config of probe resources; backoff fast and without jitter unless given."""
    if isinstance(resources, list):
        resources = {name: {} for name in resources}
    supervisor.setdefault("backoff", {"initial": 0.01, "max": 0.05, "jitter": 0.0})
    supervisors = supervisor.pop("supervisors", {})
    return {
        "supervisor": supervisor,
        "supervisors": supervisors,
        "resources": {n: {"kind": PROBE, **spec} for n, spec in resources.items()},
    }


class Recorder(EventLog):
    """The plugin's event log (``sessions.testing.EventLog``, dogfooded), with the
    ``wait_for`` the library's older tests use: a predicate, and every match so far."""

    def wait_for(  # type: ignore[override]
        self, pred: Callable[[Event], bool], count: int = 1, timeout: float = 10.0
    ) -> list[Event]:
        super().wait_for(pred, count=count, timeout=timeout)
        return list(self.matching(pred))


class FakeClock:
    """An injectable clock for restart intensity and backoff bookkeeping."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` (for state that has no event to wait on) with a deadline."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.005)


ABORT_JOIN = 10.0
"""Generous bound for a blocked call to return, or a thread to end, after abort()."""


def in_thread(call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    """Run ``call`` on a daemon thread of its own (the actor's, as the runtime would);
    its outcome as a future."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def abort_from_another_thread(actor: Any, resource: Any) -> None:
    """``actor.abort(resource)`` as the runtime calls it: on another thread; it must
    return at once (never block)."""
    aborter = threading.Thread(target=actor.abort, args=(resource,))
    aborter.start()
    aborter.join(ABORT_JOIN)
    assert not aborter.is_alive(), "abort() blocked"


_S = TypeVar("_S", bound="ScriptServer")


class ScriptServer:
    """A test server module (``python -m tests.<module> ARGS``) in a subprocess that
    prints ``ready`` once serving; the test can SIGKILL it, start it again with the same
    arguments (so on the same port), and freeze it with SIGSTOP."""

    name = "server"
    """What the start failure message calls it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.frozen = False

    def command(self) -> list[str]:
        """``[module, *args]`` after ``python -m``."""
        raise NotImplementedError

    def start(self: _S) -> _S:
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *self.command()],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=root, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "" if it died
        assert line.strip() == "ready", f"the {self.name} did not start: {line!r}"
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.thaw()
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.frozen = False


def occupy(handle: Any, count: int, release: threading.Event) -> list[Any]:
    """``count`` calls of ``handle.block`` (a probe's), each running on a member of its
    own before the next is made; they return once ``release`` is set."""
    calls = []
    for _ in range(count):
        started = threading.Event()
        calls.append(handle.block(started, release))
        assert started.wait(5)
    return calls
