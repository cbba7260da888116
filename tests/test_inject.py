"""Fault injection through the runtime (``system.faults(name)``): failed calls, failed
connects, stalls and dropped connections, the same for every kind."""

from __future__ import annotations

import threading

import pytest

import sessions
from sessions.messages import ChildFaulted, ChildStarted, SupervisorGaveUp
from tests.kinds import controls
from tests.support import Recorder, config, wait_until


def test_fail_calls_faults_the_next_calls_and_restarts_each_time() -> None:
    rec = Recorder()
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        a = system.get("a")
        faults = system.faults("a")
        faults.fail_calls(2)
        assert faults.pending == {"calls": 2, "connects": 0, "stalls": 0}
        for n in (1, 2):
            with pytest.raises(sessions.ResourceFault) as info:
                a.record("x", n).result(5)
            assert isinstance(info.value.__cause__, sessions.InjectedFault)
            assert "injected into a call to 'a'" in str(info.value)
            rec.wait_for(lambda e, n=n: isinstance(e, ChildStarted) and e.restarts == n)
        assert a.echo("ok").result(5) == "ok"
        assert controls("a").log == []  # the failed calls never reached the kind
        assert faults.pending["calls"] == 0
        assert system.stats("a").outcomes["fault"] == 2


def test_fail_connects_fails_the_next_starts_with_backoff() -> None:
    rec = Recorder()
    with sessions.start(config(["a"], max_restarts=5)) as system:
        system.subscribe(rec)
        a = system.get("a")
        system.faults("a").fail_connects(2)
        system.faults("a").drop_connection()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        faults = [e for e in rec.events if isinstance(e, ChildFaulted)]
        assert [("injected into the connect" in f.error) for f in faults] == [False, True, True]
        assert a.generation().result(5) == 2  # two connects were refused before the kind's
        assert controls("a").connects == 2


def test_too_many_failed_connects_make_the_supervisor_give_up() -> None:
    rec = Recorder()
    system = sessions.start(config(["a"], max_restarts=2, period=60))
    try:
        system.subscribe(rec)
        system.faults("a").fail_connects(10)
        system.faults("a").fail_calls(1)
        with pytest.raises(sessions.ResourceFault):
            system.get("a").echo(1).result(5)
        gave_up = rec.wait_for(lambda e: isinstance(e, SupervisorGaveUp))[0]
        assert "injected into the connect" in gave_up.reason or "intensity" in gave_up.reason
        assert system.state == "failed"
    finally:
        system.stop()


def test_a_stalled_call_runs_once_released() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        stall = system.faults("a").stall_next_call()
        held = a.record("held", 1)
        assert stall.started.wait(5)
        behind = a.record("behind", 2)
        assert not held.done() and not behind.done()
        stall.release()
        assert held.result(5) == behind.result(5) == 1
        assert a.restarts == 0
        assert [c for c, _, _ in controls("a").log] == ["held", "behind"]


def test_a_stalled_call_is_aborted_by_the_stall_watchdog() -> None:
    rec = Recorder()
    with sessions.start(config({"a": {"stall_timeout": 0.3}})) as system:
        system.subscribe(rec)
        a = system.get("a")
        stall = system.faults("a").stall_next_call()
        with pytest.raises(sessions.ResourceFault, match="stall"):
            a.record("held", 1).result(5)
        # The caller is failed first; the stopper thread then aborts the connection.
        wait_until(lambda: stall.aborted, what="the held call aborted")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert a.record("after", 2).result(5) == 2
        assert [c for c, _, _ in controls("a").log] == ["after"]


def test_drop_connection_tears_it_down_and_the_resource_reconnects() -> None:
    rec = Recorder()
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        a = system.get("a")
        first = controls("a").resources[0]
        assert system.faults("a").drop_connection() == 1
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted))[0]
        assert "dropped (injected)" in fault.error
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert first.aborted.is_set() and first.closed  # the kind's abort() ran
        assert a.generation().result(5) == 2


def test_a_pool_shares_one_plan_and_a_member_can_be_named() -> None:
    with sessions.start(config({"p": {"pool_size": 2}})) as system:
        p = system.get("p")
        system.faults("p").fail_calls(1)
        assert system.faults("p#1").pending["calls"] == 1  # one plan for the members
        with pytest.raises(sessions.ResourceFault):
            p.echo(1).result(5)
        wait_until(lambda: p.state == "running" and p.restarts == 1, what="a restart")
        assert system.faults("p").drop_connection() == 2
        wait_until(lambda: p.restarts == 3 and p.state == "running", what="both restarted")
        with pytest.raises(KeyError, match="no resource named 'p#7'"):
            system.faults("p#7")


def test_a_batch_counts_as_one_call() -> None:
    config = {"supervisor": {"backoff": {"initial": 0.01, "jitter": 0}},
              "resources": {"r": {"kind": "tests.test_hooks:Batcher"}}}
    with sessions.start(config) as system:
        r = system.get("r")
        started, release = threading.Event(), threading.Event()
        r.block(started, release)
        assert started.wait(5)
        queued = [r.put(f"k{i}", i) for i in range(3)]
        system.faults("r").fail_calls(1)
        release.set()
        for future in queued:
            with pytest.raises(sessions.ResourceFault):
                future.result(5)
        assert r.put("k", "v").result(5) == "OK"


def test_clear_releases_waiting_stalls_and_drops_the_rest() -> None:
    with sessions.start(config(["a"])) as system:
        faults = system.faults("a")
        faults.fail_calls(3)
        faults.fail_connects(1)
        stall = faults.stall_next_call()
        faults.clear()
        assert faults.pending == {"calls": 0, "connects": 0, "stalls": 0}
        assert "released" in repr(stall)
        assert system.get("a").echo(1).result(5) == 1


def test_bad_arguments_are_clear_errors() -> None:
    with sessions.start(config(["a", "b"])) as system:
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ValueError, match=r"fail_calls\(n\): n must be a positive int"):
                system.faults("a").fail_calls(bad)  # type: ignore[arg-type]
        for name in ("nope", "nope#1", "a#0"):  # a lone resource has no members
            with pytest.raises(KeyError) as info:
                system.faults(name)
            assert info.value.args[0] == f"no resource named {name!r} (resources: a, b)"
    with sessions.start({"resources": {}}) as empty, pytest.raises(KeyError) as info:
        empty.faults("a")
    assert info.value.args[0] == "no resource named 'a' (resources: none)"


def test_counts_add_up_and_default_to_one() -> None:
    with sessions.start(config(["a"])) as system:
        faults = system.faults("a")
        faults.fail_calls()
        faults.fail_calls(2)
        faults.fail_connects()
        faults.fail_connects(3)
        assert faults.pending == {"calls": 3, "connects": 4, "stalls": 0}
        assert repr(faults) == (
            "<FaultInjector 'a' pending={'calls': 3, 'connects': 4, 'stalls': 0}>")
        faults.clear()
        with pytest.raises(ValueError, match=r"^fail_connects\(n\): n must be a positive "
                                             r"int, got 0$"):
            faults.fail_connects(0)


def test_a_stall_says_where_it_is() -> None:
    with sessions.start(config(["a"])) as system:
        stall = system.faults("a").stall_next_call()
        assert repr(stall) == "<InjectedStall 'a' waiting for a call>"
        held = system.get("a").echo(1)
        assert stall.started.wait(5)
        assert repr(stall) == "<InjectedStall 'a' holding a call>"
        stall.release()
        assert held.result(5) == 1
        assert repr(stall) == "<InjectedStall 'a' released>"
        # The held call has finished: dropping the connection now tears down no stall.
        assert system.faults("a").drop_connection() == 1


def test_dropping_the_connection_under_a_held_call_fails_that_call_as_a_fault() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        stall = system.faults("a").stall_next_call()
        held = a.echo("held")
        assert stall.started.wait(5)
        system.faults("a").drop_connection()
        with pytest.raises(sessions.ResourceFault) as info:
            held.result(5)
        assert isinstance(info.value.__cause__, sessions.InjectedFault)
        assert str(info.value.__cause__) == (
            "the connection of 'a' was torn down under a call held by an injected stall")
        assert repr(stall) == "<InjectedStall 'a' aborted>"
        wait_until(lambda: a.state == "running" and a.restarts == 1, what="a back")


def test_drop_connection_skips_members_that_are_not_serving() -> None:
    with sessions.start(config({"p": {"pool_size": 2}})) as system:
        p = system.get("p")

        def members() -> dict[str, str]:
            pool = next(c for c in system.status()["children"] if c["name"] == "p")
            return {m["name"]: m["state"] for m in pool["children"]}

        controls("p#0").connect_gate = gate = threading.Event()
        assert system.faults("p#0").drop_connection() == 1
        wait_until(lambda: members() == {"p#0": "restarting", "p#1": "running"},
                   what="p#0 reconnecting, held in its connect")
        assert system.faults("p").drop_connection() == 1  # only p#1 serves
        assert system.faults("p#0").drop_connection() == 0
        gate.set()
        wait_until(lambda: members() == {"p#0": "running", "p#1": "running"},
                   what="both members back")
        assert p.restarts == 2
