"""The call guarantees of a handle, one test (or more) per numbered line of the contract."""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import weakref
from typing import Any

import pytest

import sessions
from sessions.messages import ChildRestarting, ChildStarted
from tests.kinds import ProbeBroken, controls
from tests.support import Recorder, config, wait_until


def test_1_calls_run_one_at_a_time_in_arrival_order_on_the_actor_thread() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        per_thread = 150

        def caller(tid: int) -> list[Any]:
            return [a.record(tid, seq) for seq in range(per_thread)]

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            futures = [f for fs in pool.map(caller, range(6)) for f in fs]
        assert all(f.result(10) == 1 for f in futures)
        log = controls("a").log
        assert len(log) == 6 * per_thread
        for tid in range(6):
            assert [seq for t, seq, _ in log if t == tid] == list(range(per_thread))
        assert controls("a").threads == {"sessions-a"}
        overlaps = [a.exclusive(i) for i in range(300)]
        assert [f.result(10) for f in overlaps] == list(range(300))


def test_2_caller_error_goes_to_that_caller_and_the_actor_keeps_its_state() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        a.record("x", 0).result(5)
        with pytest.raises(ValueError, match="bad input"):
            a.fail().result(5)
        assert a.apply(lambda p: p.counter).result(5) == 1
        assert a.generation().result(5) == 1
        assert a.restarts == 0 and a.state == "running"


def test_3_fault_raises_resource_fault_with_cause_and_restarts() -> None:
    rec = Recorder()
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        a = system.get("a")
        with pytest.raises(sessions.ResourceFault) as info:
            a.break_it("cable cut").result(5)
        assert isinstance(info.value.__cause__, ProbeBroken)
        assert "outcome is unknown" in str(info.value)
        assert info.value.resource == "a" and info.value.method == "break_it"
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "a")
        assert a.generation().result(5) == 2
        assert a.restarts == 1
        assert controls("a").disconnects == 1
        assert controls("a").resources[0].closed


def test_4_calls_queued_behind_a_fault_and_during_restart_run_after_it() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        blocker = a.block(started, release)
        assert started.wait(5)
        fault = a.break_it()
        queued = [a.record("q", i) for i in range(10)]
        gate = threading.Event()
        controls("a").connect_gate = gate  # hold the reconnect
        release.set()
        assert blocker.result(5) == "released"
        with pytest.raises(sessions.ResourceFault):
            fault.result(5)
        wait_until(
            lambda: controls("a").connects == 1 and a.state == "restarting", what="restart to begin"
        )
        during = [a.record("d", i) for i in range(5)]
        assert not any(f.done() for f in queued + during)
        gate.set()
        assert [f.result(5) for f in queued + during] == [2] * 15
        assert [(c, s) for c, s, _ in controls("a").log] == [
            *[("q", i) for i in range(10)],
            *[("d", i) for i in range(5)],
        ]


def test_5_a_call_that_times_out_before_starting_never_runs() -> None:
    with sessions.start(config({"a": {"call_timeout": 0.2}})) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        a.block(started, release)
        assert started.wait(5)
        late = a.record("late", 1)
        with pytest.raises(sessions.CallTimeout) as info:
            late.result()  # no timeout: bounded by call_timeout
        assert info.value.started is False
        assert isinstance(info.value, TimeoutError)
        release.set()
        assert a.record("after", 2).result(5) == 1
        assert [c for c, _, _ in controls("a").log] == ["after"]
        assert isinstance(late.exception(0), sessions.CallTimeout)


def test_5_expiry_reaches_callback_waiters_while_nobody_serves() -> None:
    """A call stuck in a mailbox nobody serves still resolves at its deadline."""
    with sessions.start(config({"a": {"call_timeout": 0.2}})) as system:
        a = system.get("a")
        gate = threading.Event()
        controls("a").connect_gate = gate
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        pending = a.record("x", 1)
        done, _ = concurrent.futures.wait([pending], timeout=5)  # no result() call
        assert pending in done
        assert isinstance(pending.exception(0), sessions.CallTimeout)
        gate.set()
        assert a.echo("ok").result(5) == "ok"
        assert controls("a").log == []


def test_5_a_started_call_past_its_deadline_reports_unknown_outcome() -> None:
    with sessions.start(config({"a": {"call_timeout": 0.2}})) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        slow = a.block(started, release)
        with pytest.raises(sessions.CallTimeout) as info:
            slow.result()
        assert info.value.started is True and "outcome is unknown" in str(info.value)
        release.set()
        assert slow.result(5) == "released"  # it still resolves, once


def test_explicit_shorter_timeout_is_a_plain_timeout() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        fut = a.block(started, release)
        with pytest.raises(TimeoutError) as info:
            fut.result(timeout=0.05)
        assert not isinstance(info.value, sessions.CallTimeout)
        release.set()
        assert fut.get(5) == "released"


def test_cancelled_call_never_runs() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        a.block(started, release)
        assert started.wait(5)
        victim = a.record("cancelled", 0)
        assert victim.cancel()
        release.set()
        assert a.record("kept", 1).result(5) == 1
        assert [c for c, _, _ in controls("a").log] == ["kept"]


def test_cancelling_a_call_queued_during_a_restart_keeps_supervision_alive() -> None:
    """The supervision thread times out calls queued while nobody serves; a cancelled
    one among them must not break it (it used to raise CancelledError there)."""
    with sessions.start(config({"a": {"call_timeout": 0.3}})) as system:
        a = system.get("a")
        gate = threading.Event()
        controls("a").connect_gate = gate  # hold the reconnect
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        assert a.echo(1).cancel()
        with pytest.raises(sessions.CallTimeout):
            a.echo(2).result(5)
        gate.set()
        assert a.echo(3).result(5) == 3
        assert system.stats("a").outcomes["timeout"] == 1


def test_6_give_up_fails_queued_and_new_calls_at_once() -> None:
    with sessions.start(config(["a"], max_restarts=0)) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        a.block(started, release)
        assert started.wait(5)
        fault = a.break_it("wire cut")
        queued = [a.echo(i) for i in range(5)]
        release.set()
        with pytest.raises(sessions.ResourceFault):
            fault.result(5)
        for f in queued:
            with pytest.raises(sessions.ResourceUnavailable, match="supervisor 'root' gave up"):
                f.result(5)
        new = a.echo(1)
        assert new.done()
        with pytest.raises(sessions.ResourceUnavailable, match="wire cut"):
            new.result(0)
        assert system.state == "failed" and a.state == "failed"


@pytest.mark.parametrize("how", ["terminated", "system stopped"])
def test_6_calls_to_a_stopped_resource_fail_at_once(how: str) -> None:
    system = sessions.start(config(["a", "b"]))
    a = system.get("a")
    if how == "terminated":
        system.terminate_child("a")
        assert a.state == "stopped"
    else:
        system.stop()
    fut = a.echo(1)
    assert fut.done()
    with pytest.raises(sessions.ResourceUnavailable, match=r"terminated|stopping"):
        fut.result(0)
    system.stop()


def test_6_temporary_resource_is_not_restarted_after_a_fault() -> None:
    with sessions.start(config({"a": {"restart": "temporary"}, "b": {}})) as system:
        a = system.get("a")
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: a.state == "stopped", what="temporary child to stop")
        with pytest.raises(sessions.ResourceUnavailable, match="temporary"):
            a.echo(1).result(5)
        assert controls("a").connects == 1
        assert system.get("b").echo(2).result(5) == 2


def test_7_every_future_resolves_exactly_once_across_faults_and_stop() -> None:
    with sessions.start(config({"a": {}}, max_restarts=100)) as system:
        a = system.get("a")
        futures: list[concurrent.futures.Future[Any]] = []
        for i in range(200):
            futures.append(a.break_it() if i % 40 == 0 else a.echo(i))
        resolved = [f for f in futures if f.exception(10) is None]
        assert len(resolved) == 195
        extra = [a.echo(i) for i in range(50)]
    for f in extra:
        assert f.done()  # stop resolved whatever was still queued
        err = f.exception(0)
        assert err is None or isinstance(err, sessions.ResourceUnavailable)


def test_unknown_method_is_a_clear_attribute_error() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        with pytest.raises(AttributeError, match=r"resource 'a' \(kind 'probe'\) has no method"):
            a.no_such_method()
        with pytest.raises(AttributeError):
            a.connect()  # lifecycle hooks are not callable
        assert a.call("echo", 3).result(5) == 3
        with pytest.raises(KeyError, match="no resource named 'nope'"):
            system.get("nope")


def test_handle_is_stable_and_a_context_manager() -> None:
    rec = Recorder()
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        h1 = system.get("a")
        with pytest.raises(sessions.LeaseBroken), h1 as lease:  # a lease of the resource
            assert isinstance(lease, sessions.Lease)
            with pytest.raises(sessions.ResourceFault):
                lease.break_it().result(5)
        rec.wait_for(lambda e: isinstance(e, ChildRestarting))
        assert system.get("a") is h1
        assert h1.echo("same").result(5) == "same"
        assert h1.queued == 0 and h1.kind == "probe" and h1.name == "a"


def test_a_finished_call_keeps_no_argument_alive() -> None:
    """Once a call has run, nothing in the runtime pins its arguments (a large payload)
    in memory while the resource waits for the next call."""

    class Payload:
        def __call__(self, probe: Any) -> int:
            return 7

    with sessions.start(config(["a"])) as system:
        payload = Payload()
        ref = weakref.ref(payload)
        future = system.get("a").apply(payload)
        assert future.result(5) == 7
        del payload
        # The actor is idle now; it lets go of the call just after resolving it.
        wait_until(lambda: gc.collect() >= 0 and ref() is None, timeout=5,
                   what="the finished call's argument to be released")
