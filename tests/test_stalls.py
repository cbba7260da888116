"""Hangs are faults: stalled calls, hanging connects and stops, through the public API.

The probe kind's ``stall`` hangs until ``abort()`` tears its connection down (a call to
a frozen peer); ``stubborn`` hangs and ignores abort (a driver abort cannot reach).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

import sessions
from sessions import CallTimeout, ResourceFault, ResourceUnavailable
from sessions.messages import ChildFaulted, ChildRestarting, ChildStarted, CircuitChanged
from tests.kinds import LIFECYCLE, controls
from tests.support import Recorder, config, wait_until


class Resolutions:
    """Counts how often each future resolves (it must be exactly once)."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.lock = threading.Lock()

    def track(self, future: Any) -> Any:
        def done(_: Any) -> None:
            with self.lock:
                self.counts[id(future)] += 1

        future.add_done_callback(done)
        return future

    def assert_once(self, *futures: Any) -> None:
        for f in futures:
            assert f.done(), f"{f.method}() never resolved"
            assert self.counts[id(f)] == 1, f"{f.method}() resolved {self.counts[id(f)]} times"


def test_a_stalled_call_is_a_fault_its_connection_aborted_and_queued_calls_served_anew() -> None:
    rec, seen = Recorder(), Resolutions()
    cfg = config({"a": {"call_timeout": 0.3, "stall_timeout": 0.5}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        a = system.get("a")
        started = threading.Event()
        stuck = seen.track(a.stall(started))
        assert started.wait(5)
        queued = seen.track(a.generation())
        with pytest.raises(ResourceFault) as info:
            stuck.exception(10)
            raise stuck.exception(0)  # type: ignore[misc]
        err = info.value
        assert err.resource == "a" and err.method == "stall"
        assert "stall_timeout=0.5s" in str(err) and "outcome is unknown" in str(err)
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted))[0]
        assert fault.name == "a" and not fault.during_start
        assert fault.error.startswith("call stall() stalled: still running after")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert controls("a").aborts >= 1
        # The new connection is opened only once the aborted one is closed.
        assert LIFECYCLE == [("connect", "a"), ("disconnect", "a"), ("connect", "a")]
        # The call queued behind the stalled one either timed out unstarted (it waited
        # past call_timeout) or ran on the new connection: never on the frozen one.
        try:
            assert queued.result() == 2
        except CallTimeout as timeout:
            assert timeout.started is False
        assert a.generation().result() == 2
        assert system.status()["children"][0]["abandoned"] == 0
        seen.assert_once(stuck, queued)
        assert system.stats("a").outcomes["fault"] == 1


def test_a_late_return_of_an_abandoned_call_reaches_nobody() -> None:
    """abort() cannot reach the stubborn call: the incarnation is abandoned, counted,
    and when the call finally returns, its value reaches no caller and no event fires."""
    rec, seen = Recorder(), Resolutions()
    with sessions.start(config({"a": {"call_timeout": 0.2, "stall_timeout": 0.3}})) as system:
        system.subscribe(rec)
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        stuck = seen.track(a.stubborn(started, release))
        assert started.wait(5)
        assert isinstance(stuck.exception(10), ResourceFault)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        wait_until(lambda: system.status()["children"][0]["abandoned"] == 1,
                   what="the abandoned thread counted")
        assert a.generation().result() == 2  # the new connection serves meanwhile
        faults_before = len(rec.of(ChildFaulted))
        release.set()
        wait_until(lambda: system.status()["children"][0]["abandoned"] == 0,
                   what="the abandoned thread ended")
        assert a.generation().result() == 2
        assert len(rec.of(ChildFaulted)) == faults_before == 1
        assert isinstance(stuck.exception(0), ResourceFault)
        seen.assert_once(stuck)


def test_a_stalled_health_check_is_a_fault() -> None:
    rec = Recorder()
    cfg = config({"a": {"health_interval": 0.05, "call_timeout": 0.2, "stall_timeout": 0.3}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        a = system.get("a")
        a.set_unhealthy("stall").result()
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted))[0]
        assert fault.error.startswith("health_check() stalled")
        wait_until(lambda: controls("a").aborts >= 1, what="the stalled link aborted")


def test_a_stall_counts_toward_the_breaker() -> None:
    rec = Recorder()
    cfg = config({"a": {"call_timeout": 0.2, "stall_timeout": 0.3,
                        "breaker": {"failures": 1, "reset_timeout": 30}}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        a = system.get("a")
        started = threading.Event()
        stuck = a.stall(started)
        assert isinstance(stuck.exception(10), ResourceFault)
        opened = rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open")[0]
        assert "stalled" in opened.reason
        with pytest.raises(ResourceUnavailable):
            a.echo(1).result()


def test_a_hanging_connect_never_delays_another_childs_restart() -> None:
    """The supervision thread does not wait on a connect: while a's connect hangs, b
    faults and is restarted, and a's connect_timeout is still enforced."""
    rec = Recorder()
    cfg = config({"a": {"connect_timeout": 30}, "b": {}}, max_restarts=10)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        gate = threading.Event()
        controls("a").connect_gate = gate
        with pytest.raises(ResourceFault):
            system.get("a").break_it().result()
        rec.wait_for(lambda e: isinstance(e, ChildRestarting) and e.name == "a")
        wait_until(lambda: controls("a").connects == 1 and system.get("a").state == "restarting",
                   what="a reconnecting")
        with pytest.raises(ResourceFault):
            system.get("b").break_it().result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "b" and e.restarts == 1)
        assert system.get("b").echo("fine").result() == "fine"
        assert not gate.is_set() and system.get("a").state == "restarting"
        gate.set()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "a" and e.restarts == 1)


def test_connect_past_connect_timeout_is_aborted_and_retried() -> None:
    rec = Recorder()
    with sessions.start(config({"a": {"connect_timeout": 0.3}}, max_restarts=10)) as system:
        system.subscribe(rec)
        controls("a").connect_gate = threading.Event()  # never set: every connect hangs
        with pytest.raises(ResourceFault):
            system.get("a").break_it().result()
        failed = rec.wait_for(lambda e: isinstance(e, ChildFaulted) and e.during_start)[0]
        assert "connect_timeout=0.3" in failed.error
        wait_until(lambda: controls("a").aborts >= 1, what="the pending connect aborted")
        controls("a").connect_gate.set()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert system.get("a").generation().result() >= 2


def test_stop_resolves_every_future_and_leaves_no_thread_while_a_call_hangs() -> None:
    """stop() with a call stuck on a frozen peer: the running call fails with
    ResourceFault, queued ones with ResourceUnavailable, all before stop() returns; the
    leak-checking fixture then finds no library thread."""
    seen = Resolutions()
    cfg = config({"a": {"call_timeout": 30, "stall_timeout": 60, "shutdown_timeout": 0.2},
                  "b": {}})
    system = sessions.start(cfg)
    a = system.get("a")
    started = threading.Event()
    stuck = seen.track(a.stall(started))
    assert started.wait(5)
    queued = [seen.track(a.echo(i)) for i in range(3)]
    system.stop()
    assert isinstance(stuck.exception(0), ResourceFault)
    assert "outcome is unknown" in str(stuck.exception(0))
    for q in queued:
        assert isinstance(q.exception(0), ResourceUnavailable)
    seen.assert_once(stuck, *queued)
    assert controls("a").aborts >= 1
    assert system.get("b").state == "stopped"


def test_stop_aborts_a_hanging_disconnect() -> None:
    """A disconnect that hangs (a close handshake to a frozen peer) is aborted after
    shutdown_timeout; stop() returns and the thread ends."""
    system = sessions.start(config({"a": {"shutdown_timeout": 0.2}}))
    hang = threading.Event()

    def slow_disconnect(probe: Any) -> None:
        original = type(probe).disconnect

        def disconnect(resource: Any) -> None:
            hang.set()
            resource.aborted.wait(30)
            original(probe, resource)

        probe.disconnect = disconnect

    system.get("a").apply(slow_disconnect).result()
    system.stop()
    assert hang.is_set() and controls("a").aborts == 1
    assert controls("a").disconnects == 1  # the disconnect finished once aborted


def test_a_one_for_all_restart_does_not_wait_on_a_hung_sibling_to_serve_others() -> None:
    """one_for_all: a sibling stuck in a call is stopped within its shutdown_timeout
    (then aborted), and the group restarts."""
    rec, seen = Recorder(), Resolutions()
    cfg = config({"a": {}, "b": {"call_timeout": 30, "stall_timeout": 60,
                                 "shutdown_timeout": 0.2}},
                 strategy="one_for_all", max_restarts=10)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        started = threading.Event()
        stuck = seen.track(system.get("b").stall(started))
        assert started.wait(5)
        with pytest.raises(ResourceFault):
            system.get("a").break_it().result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "b" and e.restarts == 1)
        assert isinstance(stuck.exception(5), ResourceFault)
        assert system.get("b").generation().result() == 2
        seen.assert_once(stuck)


def test_no_future_resolves_after_stop_returned() -> None:
    """A call abort() cannot reach is failed by stop(); when it finally returns, after
    stop() returned, its value reaches nobody."""
    seen = Resolutions()
    system = sessions.start(config({"a": {"call_timeout": 30, "stall_timeout": 60,
                                          "shutdown_timeout": 0.1}}))
    started, release = threading.Event(), threading.Event()
    stuck = seen.track(system.get("a").stubborn(started, release))
    assert started.wait(5)
    system.stop()
    error = stuck.exception(0)
    assert isinstance(error, ResourceFault) and "outcome is unknown" in str(error)
    lost = [t for t in threading.enumerate() if t.name == "sessions-a"]
    assert lost, "the stubborn call's thread is still blocked (abort cannot reach it)"
    release.set()
    for thread in lost:
        thread.join(5)
        assert not thread.is_alive()
    assert stuck.exception(0) is error
    seen.assert_once(stuck)


def test_a_deferred_reply_still_owed_at_stop_fails_with_resource_fault() -> None:
    seen = Resolutions()
    system = sessions.start(config(["a"]))
    never: Any = None

    def defer(probe: Any) -> Any:
        import concurrent.futures  # noqa: PLC0415

        from sessions import Deferred  # noqa: PLC0415

        nonlocal never
        never = concurrent.futures.Future()
        return Deferred(never)

    owed = seen.track(system.get("a").apply(defer))
    wait_until(lambda: never is not None, what="the call ran")
    system.stop()
    error = owed.exception(0)
    assert isinstance(error, ResourceFault) and "stopped" in str(error)
    never.set_result("too late")
    seen.assert_once(owed)


@pytest.mark.parametrize("infinity", [float("inf"), "infinity"])
def test_shutdown_timeout_infinity_in_a_group_restart(infinity: Any) -> None:
    """OTP's shutdown = infinity: a one_for_all restart waits for the sibling's graceful
    disconnect however long it takes (here: at once), and stop() works."""
    rec = Recorder()
    cfg = config({"a": {}, "b": {"shutdown_timeout": infinity}}, strategy="one_for_all")
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        assert system.config.resources["b"].shutdown_timeout == float("inf")
        with pytest.raises(ResourceFault):
            system.get("a").break_it().result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "b" and e.restarts == 1)
        assert system.get("b").generation().result() == 2
        assert [c.state for c in system.which_children()] == ["running", "running"]
    assert controls("b").disconnects == 2 and controls("b").aborts == 0


def test_shutdown_brutal_kill_aborts_at_once() -> None:
    """OTP's brutal_kill: terminate_child does not wait for the call in progress; the
    connection is aborted at once and the call fails with ResourceFault."""
    cfg = config({"a": {"shutdown_timeout": "brutal_kill", "call_timeout": 30,
                        "stall_timeout": 60}})
    with sessions.start(cfg) as system:
        started = threading.Event()
        stuck = system.get("a").stall(started)
        assert started.wait(5)
        system.terminate_child("a")
        error = stuck.exception(0)
        assert isinstance(error, ResourceFault) and "brutal_kill" in str(error)
        assert controls("a").aborts == 1 and controls("a").disconnects == 1


@pytest.mark.parametrize("bad", [0, -1, "forever", True, None])
def test_shutdown_timeout_rejects_nonsense(bad: Any) -> None:
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start(config({"a": {"shutdown_timeout": bad}}))
    assert info.value.path == "resources.a.shutdown_timeout"
    assert "expected seconds > 0, 'infinity' or 'brutal_kill'" in str(info.value)
