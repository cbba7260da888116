"""``sessions run`` under systemd (``Type=notify``), against a real notify socket.

Each test binds a unix datagram socket, points ``$NOTIFY_SOCKET`` at it and reads the
datagrams ``run`` sends, as systemd would: READY=1 only once the resources are up,
STATUS= lines, WATCHDOG=1 pings that stop while a call is stalled, STOPPING=1. ``run``
is driven in-process (``main([...])`` in a thread, with an app the test steers) where
the test must steer Probe resources, and as a subprocess stopped by SIGTERM where
only a real process shows it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import sessions
from sessions._tools.cli import main
from sessions._tools.systemd import STATUS_INTERVAL, SystemdNotifier
from tests.kinds import controls
from tests.support import PROBE, config, wait_until

ROOT_DIR = Path(__file__).resolve().parent.parent

RUN = f"""
[supervisor]
max_restarts = 1000
period = 1.0
backoff = {{ initial = 0.05, max = 0.2, jitter = 0.0 }}

[resources.a]
kind = "{PROBE}"
call_timeout = 0.2

[resources.b]
kind = "{PROBE}"
"""


class NotifySocket:
    """The receiving end systemd would hold: a bound unix datagram socket; collects
    every datagram, each as ``{key: value}`` with the time it arrived."""

    def __init__(self, address: str) -> None:
        self.address = address  # as $NOTIFY_SOCKET spells it
        bind = "\0" + address[1:] if address.startswith("@") else address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.received: list[tuple[float, dict[str, str]]] = []

    def close(self) -> None:
        self.sock.close()

    def _receive(self, until: float) -> bool:
        """Read one datagram arriving before ``until``; False if none did."""
        left = until - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.received.append((time.monotonic(), fields))
        return True

    def wait_for(self, pred: Callable[[dict[str, str]], bool], timeout: float = 15.0,
                 what: str = "a datagram") -> dict[str, str]:
        """The first datagram received from now on that matches ``pred``."""
        deadline = time.monotonic() + timeout
        start = len(self.received)
        while True:
            for _, fields in self.received[start:]:
                if pred(fields):
                    return fields
            start = len(self.received)
            if not self._receive(deadline):
                raise AssertionError(f"timed out waiting for {what}; got {self.datagrams()}")

    def gather(self, seconds: float) -> list[dict[str, str]]:
        """Every datagram arriving in the next ``seconds`` (a window in which something
        must *not* arrive: waits on the socket, with a deadline)."""
        deadline = time.monotonic() + seconds
        start = len(self.received)
        while self._receive(deadline):
            pass
        return [fields for _, fields in self.received[start:]]

    def datagrams(self) -> list[dict[str, str]]:
        return [fields for _, fields in self.received]


def assert_stopped_last(notify: NotifySocket) -> None:
    """STOPPING=1 arrives, and nothing after it (the notifier's thread has ended)."""
    notify.wait_for(lambda f: "STOPPING" in f, what="STOPPING=1")
    assert notify.datagrams()[-1] == {"STOPPING": "1", "STATUS": "stopping"}


def status(text: str) -> Callable[[dict[str, str]], bool]:
    return lambda fields: text in fields.get("STATUS", "")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a socket path has at most 107 bytes, which
    tmp_path (named after the test) can exceed."""
    path = Path(tempfile.mkdtemp(prefix="sd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def notify(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    receiver = NotifySocket(str(short_dir / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", receiver.address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield receiver
    receiver.close()


class App:
    """The app ``run`` calls in-process: it hands the test the System, and returns
    (ending ``run``) when the test says so."""

    system: sessions.System | None = None
    started = threading.Event()
    finish = threading.Event()
    threads: list[str] = []


def held_app(system: sessions.System) -> None:
    App.system = system
    App.threads = [t.name for t in threading.enumerate()]
    App.started.set()
    App.finish.wait(60)


class InProcessRun:
    """``sessions run CONFIG --app tests.test_systemd:held_app`` on a thread."""

    def __init__(self, path: Path) -> None:
        App.system, App.started, App.finish = None, threading.Event(), threading.Event()
        self.code: int | None = None
        self.thread = threading.Thread(target=self._main, args=(path,), name="test-run")
        self.thread.start()

    def _main(self, path: Path) -> None:
        self.code = main(["run", str(path), "--app", "tests.test_systemd:held_app"])

    @property
    def system(self) -> sessions.System:
        assert App.started.wait(15), "the app was never called"
        assert App.system is not None
        return App.system

    def stop(self) -> int | None:
        App.finish.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "run did not end"
        return self.code


@pytest.fixture
def run_in_process(tmp_path: Path) -> Iterator[Callable[[str], InProcessRun]]:
    runs: list[InProcessRun] = []

    def start(text: str) -> InProcessRun:
        path = tmp_path / "plant.toml"
        path.write_text(text, encoding="utf-8")
        runs.append(InProcessRun(path))
        return runs[-1]

    yield start
    for run in runs:  # a failed test still ends its run (no leaked threads)
        for name in ("a", "b"):
            gate = controls(name).connect_gate
            if gate is not None:
                gate.set()
        run.stop()


def test_ready_only_once_every_permanent_resource_runs(
    notify: NotifySocket, run_in_process: Callable[[str], InProcessRun]
) -> None:
    gate = controls("b").connect_gate = threading.Event()
    run = run_in_process(RUN)
    held = notify.wait_for(status("not ready: waiting for b"), what="a status naming b")
    assert held["STATUS"] == "1 of 2 resources running; b starting; not ready: waiting for b"
    assert not any("READY" in fields for fields in notify.datagrams())
    assert not App.started.is_set()  # nor does the app run before the tree is up

    gate.set()
    ready = notify.wait_for(lambda f: "READY" in f, what="READY=1")
    assert ready == {"READY": "1", "STATUS": "2 resources running"}
    assert run.system.get("b").state == "running"

    assert run.stop() == 0
    assert_stopped_last(notify)
    assert sum("READY" in f for f in notify.datagrams()) == 1


def test_ready_waits_only_for_the_configured_resources(
    notify: NotifySocket, run_in_process: Callable[[str], InProcessRun]
) -> None:
    gate = controls("b").connect_gate = threading.Event()
    run_in_process(RUN + '\n[systemd]\nready = ["a"]\n')
    ready = notify.wait_for(lambda f: "READY" in f, what="READY=1")
    assert ready["STATUS"] == "1 of 2 resources running; b starting"
    gate.set()
    notify.wait_for(status("2 resources running"))


def test_ready_is_never_sent_for_a_tree_that_does_not_come_up(
    notify: NotifySocket, run_in_process: Callable[[str], InProcessRun]
) -> None:
    controls("b").fail_connects = 10**9
    run = run_in_process(RUN.replace("max_restarts = 1000", "max_restarts = 3"))
    run.thread.join(30)
    assert run.code == 3  # the root gave up: systemd sees the start fail
    stopping = notify.wait_for(lambda f: "STOPPING" in f, what="STOPPING=1")
    assert not any("READY" in fields for fields in notify.datagrams())
    assert any("not ready: waiting for" in f.get("STATUS", "") for f in notify.datagrams())
    # what `systemctl status` shows last says why
    assert stopping["STATUS"].startswith("stopping: supervisor 'root' gave up: more than 3 "
                                         "restarts within 1.0s; last: 'b': start failed: ")


def test_status_follows_a_restarting_resource_at_most_once_a_second(
    notify: NotifySocket, run_in_process: Callable[[str], InProcessRun]
) -> None:
    run = run_in_process(RUN)
    notify.wait_for(lambda f: "READY" in f)
    system = run.system
    controls("a").fail_connects = 10**9
    storm_began = time.monotonic()
    system.get("a").break_it("link lost")
    trouble = notify.wait_for(status("a restarting"), what="a restarting")
    assert trouble["STATUS"].startswith("1 of 2 resources running; a restarting (")
    notify.wait_for(status("connect refused"), what="the start failure in the status")
    restarts = system.get("a").restarts
    controls("a").fail_connects = 0
    notify.wait_for(status("2 resources running"), what="a running again")
    storm = time.monotonic() - storm_began
    statuses = [f for at, f in notify.received if at >= storm_began and "STATUS" in f]
    # Many more events than lines: one line per STATUS_INTERVAL, plus the first.
    assert len(statuses) <= storm / STATUS_INTERVAL + 2, (statuses, storm)
    assert system.get("a").restarts >= restarts


def test_watchdog_pings_stop_while_a_call_is_stalled_and_resume_after(
    notify: NotifySocket, monkeypatch: pytest.MonkeyPatch,
    run_in_process: Callable[[str], InProcessRun]
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WatchdogSec=0.4s: a ping every 0.2s
    run = run_in_process(RUN)
    notify.wait_for(lambda f: "READY" in f)
    for _ in range(3):
        notify.wait_for(lambda f: "WATCHDOG" in f, timeout=5, what="WATCHDOG=1")
    system = run.system
    assert system.stalls() == []

    # A call that ignores abort(): past its stall_timeout (0.4 s) the library fails it
    # and restarts the resource, but the thread stays blocked in the driver.
    started, release = threading.Event(), threading.Event()
    system.get("a").stubborn(started, release)
    try:
        assert started.wait(5)
        held = notify.wait_for(status("watchdog held: a stuck in stubborn() for"),
                               what="the status saying what holds the watchdog")
        assert re.fullmatch(r"(2 resources running|1 of 2 resources running; a \w+ \(.*\)); "
                            r"watchdog held: a stuck in stubborn\(\) for \d+\.\ds",
                            held["STATUS"])
        # Listed from its stall_timeout on; abandoned once the stall watchdog has acted
        wait_until(lambda: [(s.resource, s.what, s.abandoned) for s in system.stalls()]
                   == [("a", "stubborn()", True)], what="the stall to be abandoned")
        assert not any("WATCHDOG" in f for f in notify.gather(1.0))  # five intervals
    finally:
        release.set()
    notify.wait_for(lambda f: "WATCHDOG" in f, timeout=5, what="the pings resuming")
    assert system.stalls() == []
    notify.wait_for(lambda f: f.get("STATUS") == "2 resources running", what="a clean status")
    assert run.stop() == 0
    assert_stopped_last(notify)


def test_no_datagram_no_thread_and_no_error_without_notify_socket(
    short_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    run_in_process: Callable[[str], InProcessRun]
) -> None:
    receiver = NotifySocket(str(short_dir / "notify"))  # bound, but nobody is told of it
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    try:
        run = run_in_process(RUN)
        assert run.system.state == "running"
        assert "sessions-systemd" not in App.threads
        assert run.stop() == 0
        assert receiver.gather(0.3) == []
    finally:
        receiver.close()
    err = capsys.readouterr().err
    assert "systemd" not in err and "WARNING" not in err, err


def test_run_as_a_process_on_an_abstract_socket_stops_on_sigterm(tmp_path: Path) -> None:
    receiver = NotifySocket(f"@sessions-test-{uuid.uuid4().hex}")
    path = tmp_path / "plant.toml"
    path.write_text(RUN, encoding="utf-8")
    env = {**os.environ, "NOTIFY_SOCKET": receiver.address, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "sessions", "run", str(path)],
                            cwd=ROOT_DIR, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = receiver.wait_for(lambda f: "READY" in f, what="READY=1")
        assert ready["STATUS"] == "2 resources running"
        receiver.wait_for(lambda f: "WATCHDOG" in f, what="WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        receiver.wait_for(lambda f: "STOPPING" in f, what="STOPPING=1")
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        receiver.close()
    assert proc.returncode == 0, err
    assert "threads still running" not in err
    assert receiver.datagrams()[-1] == {"STOPPING": "1", "STATUS": "stopping"}  # read above


def test_sighup_reload_is_announced_as_reloading_then_ready(tmp_path: Path) -> None:
    receiver = NotifySocket(f"@sessions-test-{uuid.uuid4().hex}")
    path = tmp_path / "plant.toml"
    path.write_text(RUN, encoding="utf-8")
    env = {**os.environ, "NOTIFY_SOCKET": receiver.address}
    proc = subprocess.Popen([sys.executable, "-m", "sessions", "run", str(path)],
                            cwd=ROOT_DIR, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        receiver.wait_for(lambda f: "READY" in f, what="READY=1")
        path.write_text(RUN + '\n[resources.c]\nkind = "tests.kinds:Probe"\n',
                        encoding="utf-8")
        proc.send_signal(signal.SIGHUP)
        reloading = receiver.wait_for(lambda f: "RELOADING" in f, what="RELOADING=1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        ready = receiver.wait_for(lambda f: "READY" in f and "RELOADING" not in f,
                                  what="READY=1 after the reload")
        assert ready["STATUS"] == "3 resources running"
        proc.send_signal(signal.SIGTERM)
        receiver.wait_for(lambda f: "STOPPING" in f, what="STOPPING=1")
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        receiver.close()
    assert proc.returncode == 0, err
    assert "reloaded" in err and "added c" in err


# -- the notifier on its own ----------------------------------------------------------


def test_reloading_then_ready_again(notify: NotifySocket) -> None:
    with sessions.start(config(["a"])) as system:
        notifier = SystemdNotifier.from_environment(system, ["a"])
        assert notifier is not None
        notifier.start()
        try:
            notify.wait_for(lambda f: "READY" in f)
            before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            notifier.reloading()
            reloading = notify.wait_for(lambda f: "RELOADING" in f)
            after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert reloading["RELOADING"] == "1"
            assert before <= int(reloading["MONOTONIC_USEC"]) <= after
            system.terminate_child("a")  # as a reload that restarts a changed resource
            notifier.ready()
            held = notify.wait_for(status("not ready"), what="READY=1 held back")
            assert held["STATUS"] == "0 of 1 resource running; a stopped; not ready: waiting for a"
            since = notify.datagrams()[notify.datagrams().index(reloading) + 1:]
            assert not any("READY" in f for f in since)
            system.restart_child("a")
            again = notify.wait_for(lambda f: "READY" in f, what="READY=1 after the reload")
            assert again == {"READY": "1", "STATUS": "1 resource running"}
            notifier.reloading()
            notifier.ready([])  # the reloaded config's ready resources: none
            notify.wait_for(lambda f: "READY" in f, what="READY=1 for the new list")
        finally:
            notifier.stopping()
    assert_stopped_last(notify)


def test_the_watchdog_is_fed_only_by_the_process_it_names() -> None:
    with sessions.start(config(["a"])) as system:
        base = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "3000000"}
        mine = SystemdNotifier.from_environment(system, environ=base)
        other = SystemdNotifier.from_environment(system, environ={**base, "WATCHDOG_PID": "1"})
        named = SystemdNotifier.from_environment(
            system, environ={**base, "WATCHDOG_PID": str(os.getpid())})
        none = SystemdNotifier.from_environment(system, environ={"WATCHDOG_USEC": "3000000"})
        assert mine is not None and other is not None and named is not None
        assert mine.watchdog_interval == 1.5 and named.watchdog_interval == 1.5
        assert other.watchdog_interval is None
        assert none is None
        for notifier in (mine, other, named):
            notifier.close()


def test_an_unknown_ready_resource_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plant.toml"
    path.write_text(RUN + '\n[supervisors.cell]\n\n[systemd]\nready = ["a", "plc", "cell"]\n',
                    encoding="utf-8")
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"sessions: {path}: systemd.ready[1]: unknown resource 'plc' (resources: a, b)",
        f"sessions: {path}: systemd.ready[2]: 'cell' is a supervisor; name its resources "
        "(resources: a, b)",
    ]


def test_check_says_what_ready_waits_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plant.toml"
    path.write_text(RUN + '\n[systemd]\nready = ["b"]\n', encoding="utf-8")
    assert main(["check", str(path)]) == 0
    assert "\nsystemd: READY=1 once b runs\n" in capsys.readouterr().out
