"""Supervision: strategies, restart types, intensity, escalation, backoff, order, dynamic
children."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import pytest

import sessions
from sessions.messages import (
    ChildFaulted,
    ChildRestarting,
    ChildStarted,
    ChildStopped,
    SupervisorGaveUp,
)
from tests.kinds import LIFECYCLE, controls
from tests.support import FakeClock, Recorder, config, wait_until


def _fault(system: sessions.System, name: str) -> None:
    with pytest.raises(sessions.ResourceFault):
        system.get(name).break_it().result(5)


def _restarted(rec: Recorder, *names: str) -> None:
    for name in names:
        rec.wait_for(
            lambda e, n=name: isinstance(e, ChildStarted) and e.name == n and e.restarts >= 1
        )


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [("one_for_one", ["b"]), ("one_for_all", ["a", "b", "c"]), ("rest_for_one", ["b", "c"])],
)
def test_strategies(strategy: str, restarted: list[str]) -> None:
    rec = Recorder()
    with sessions.start(config(["a", "b", "c"], strategy=strategy)) as system:
        system.subscribe(rec)
        LIFECYCLE.clear()
        _fault(system, "b")
        _restarted(rec, *restarted)
        for name in "abc":
            assert system.get(name).echo(name).result(5) == name
            assert controls(name).connects == (2 if name in restarted else 1)
        # siblings stop in reverse order, then everyone restarts in start order
        stops = [n for op, n in LIFECYCLE if op == "disconnect"]
        starts = [n for op, n in LIFECYCLE if op == "connect"]
        assert starts == restarted
        assert sorted(stops) == restarted
        if strategy != "one_for_one":
            assert [n for n in stops if n != "b"] == [n for n in reversed(restarted) if n != "b"]
        restarting = {e.name for e in rec.of(ChildRestarting)}
        assert restarting == set(restarted)


def test_queued_calls_of_siblings_survive_a_one_for_all_restart() -> None:
    rec = Recorder()
    with sessions.start(config(["a", "b"], strategy="one_for_all")) as system:
        system.subscribe(rec)
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        a.block(started, release)
        assert started.wait(5)
        queued = [a.record("q", i) for i in range(5)]
        fault = system.get("b").break_it()
        threading.Timer(0.05, release.set).start()
        with pytest.raises(sessions.ResourceFault):
            fault.result(5)
        assert [f.result(5) for f in queued] in ([1] * 5, [2] * 5)


def test_permanent_is_restarted_even_after_a_normal_exit() -> None:
    rec = Recorder()
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        assert system.get("a").finish().result(5) == "bye"
        _restarted(rec, "a")
        assert system.get("a").generation().result(5) == 2


def test_transient_is_restarted_after_a_fault_but_not_after_a_normal_exit() -> None:
    rec = Recorder()
    with sessions.start(config({"a": {"restart": "transient"}})) as system:
        system.subscribe(rec)
        a = system.get("a")
        _fault(system, "a")
        _restarted(rec, "a")
        assert a.finish().result(5) == "bye"
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "a")
        assert a.state == "stopped"
        with pytest.raises(sessions.ResourceUnavailable, match="stopped normally"):
            a.echo(1).result(5)
        assert controls("a").connects == 2


def test_intensity_exhausted_gives_up_and_fails_the_system() -> None:
    rec = Recorder()
    with sessions.start(config(["a", "b"], max_restarts=2, period=60)) as system:
        system.subscribe(rec)
        for _ in range(2):
            _fault(system, "a")
            wait_until(lambda: system.get("a").state == "running", what="restart")
        _fault(system, "a")
        gave_up = rec.wait_for(lambda e: isinstance(e, SupervisorGaveUp))[0]
        assert gave_up.supervisor == "root" and "more than 2 restarts" in gave_up.reason
        assert system.state == "failed"
        assert system.failure is not None and "gave up" in system.failure
        for name in "ab":
            assert system.get(name).state == "failed"
        assert system.get("a").restarts == 2


def test_restarts_spaced_beyond_the_period_never_exhaust_intensity() -> None:
    clock = FakeClock()
    rec = Recorder()
    cfg = config(["a"], max_restarts=1, period=10)
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        for i in range(4):
            _fault(system, "a")
            rec.wait_for(lambda e: isinstance(e, ChildStarted), count=i + 1)
            clock.advance(11)
        assert system.state == "running" and system.get("a").restarts == 4
        assert not rec.of(SupervisorGaveUp)


def test_escalation_through_a_two_level_tree() -> None:
    rec = Recorder()
    cfg = config(
        {"x": {"supervisor": "field"}, "y": {"supervisor": "field"}, "z": {}},
        max_restarts=5,
        period=60,
        supervisors={
            "field": {
                "strategy": "rest_for_one",
                "max_restarts": 1,
                "period": 60,
                "backoff": {"initial": 0.01, "jitter": 0},
            }
        },
    )
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        x = system.get("x")
        _fault(system, "x")
        _restarted(rec, "x", "y")  # rest_for_one inside the field supervisor
        _fault(system, "x")  # second restart within the period: field gives up
        rec.wait_for(lambda e: isinstance(e, SupervisorGaveUp) and e.supervisor == "field")
        rec.wait_for(
            lambda e: isinstance(e, ChildFaulted) and e.supervisor == "root" and e.name == "field"
        )
        rec.wait_for(lambda e: isinstance(e, ChildRestarting) and e.name == "field")
        rec.wait_for(
            lambda e: isinstance(e, ChildStarted) and e.name == "field" and e.restarts == 1
        )
        assert x.echo("back").result(5) == "back"  # the same handle serves again
        assert system.get("y").state == "running"
        assert controls("z").connects == 1  # the sibling subtree was untouched
        assert system.state == "running"
        tree = system.status()
        field = next(c for c in tree["children"] if c["name"] == "field")
        assert field["type"] == "supervisor" and field["restarts"] == 1


def test_root_giving_up_while_starting_makes_start_raise() -> None:
    controls("a").fail_connects = 99
    with pytest.raises(sessions.ResourceUnavailable, match="supervisor 'root' gave up"):
        sessions.start(config(["a"], max_restarts=2))
    assert controls("a").connects == 3


def test_backoff_delays_grow_and_are_waited() -> None:
    rec = Recorder()
    cfg = config(
        ["a"],
        max_restarts=10,
        period=60,
        backoff={"initial": 0.05, "multiplier": 2.0, "max": 0.15, "jitter": 0.0},
    )
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        controls("a").fail_connects = 3
        t0 = time.monotonic()
        _fault(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "a")
        elapsed = time.monotonic() - t0
        delays = [e.delay for e in rec.of(ChildRestarting)]
        assert delays == [0.05, 0.1, 0.15, 0.15]  # capped at max
        assert [e.attempt for e in rec.of(ChildRestarting)] == [1, 2, 3, 4]
        assert elapsed >= sum(delays)  # every delay was actually waited (lower bound)
        starts = [e for e in rec.of(ChildFaulted) if e.during_start]
        assert len(starts) == 3 and "connect refused" in starts[0].error


def test_backoff_attempts_reset_after_a_quiet_period() -> None:
    clock = FakeClock()
    rec = Recorder()
    cfg = config(
        ["a"],
        max_restarts=10,
        period=5,
        backoff={"initial": 0.01, "multiplier": 3.0, "jitter": 0.0},
    )
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        for i in range(2):
            _fault(system, "a")
            rec.wait_for(lambda e: isinstance(e, ChildStarted), count=i + 1)
        clock.advance(6)  # ran a whole period without a fault
        _fault(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted), count=3)
        assert [e.attempt for e in rec.of(ChildRestarting)] == [1, 2, 1]
        assert [e.delay for e in rec.of(ChildRestarting)] == pytest.approx([0.01, 0.03, 0.01])


def test_start_order_and_reverse_stop_order() -> None:
    cfg = config(
        {"a": {}, "s1": {"supervisor": "field"}, "s2": {"supervisor": "field"}, "b": {}},
        supervisors={"field": {}},
    )
    system = sessions.start(cfg)
    assert [n for op, n in LIFECYCLE] == ["a", "s1", "s2", "b"]
    LIFECYCLE.clear()
    system.stop()
    system.stop()  # idempotent
    assert [n for op, n in LIFECYCLE] == ["b", "s2", "s1", "a"]
    assert system.state == "stopped"


def test_stop_lets_the_current_call_finish_and_fails_the_queued_ones() -> None:
    system = sessions.start(config(["a"]))
    a = system.get("a")
    started, release = threading.Event(), threading.Event()
    current = a.block(started, release)
    assert started.wait(5)
    queued = [a.echo(i) for i in range(3)]
    threading.Timer(0.1, release.set).start()
    system.stop()
    assert current.result(0) == "released"
    for f in queued:
        with pytest.raises(sessions.ResourceUnavailable):
            f.result(0)


def test_health_check_fault_restarts_the_resource() -> None:
    rec = Recorder()
    with sessions.start(config({"a": {"health_interval": 0.05}})) as system:
        system.subscribe(rec)
        a = system.get("a")
        a.set_unhealthy().result(5)
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted))[0]
        assert "health_check" in fault.error
        a.set_unhealthy(False).result(5)  # queued across the restart, runs on the new one
        _restarted(rec, "a")
        assert a.echo(1).result(5) == 1


def test_replay_steps_rerun_in_order_before_queued_calls() -> None:
    rec = Recorder()
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        a = system.get("a")
        for setting in ("search_path", "timezone", "role"):
            a.remember(setting).result(5)
        a.apply(lambda p: p.forget("setting:timezone")).result(5)
        fault = a.break_it()
        after = a.settings()
        with pytest.raises(sessions.ResourceFault):
            fault.result(5)
        assert after.result(5) == ["search_path", "role"]
        assert a.generation().result(5) == 2


def test_a_faulting_replay_step_is_a_failed_start() -> None:
    rec = Recorder()
    with sessions.start(config(["a"], max_restarts=2, period=60)) as system:
        system.subscribe(rec)
        a = system.get("a")
        a.remember_broken().result(5)
        _fault(system, "a")
        rec.wait_for(lambda e: isinstance(e, SupervisorGaveUp))
        starts = [e for e in rec.of(ChildFaulted) if e.during_start]
        assert starts and "replay failed" in starts[0].error


def test_connect_timeout_is_a_failed_start_and_retried() -> None:
    rec = Recorder()
    with sessions.start(config({"a": {"connect_timeout": 0.1}}, max_restarts=5)) as system:
        system.subscribe(rec)
        gate = threading.Event()
        controls("a").connect_gate = gate
        _fault(system, "a")
        failed = rec.wait_for(lambda e: isinstance(e, ChildFaulted) and e.during_start)[0]
        assert "connect_timeout" in failed.error
        gate.set()
        _restarted(rec, "a")
        assert system.get("a").echo(1).result(5) == 1


def test_dynamic_children() -> None:
    rec = Recorder()
    cfg = config(["a"], supervisors={"field": {"strategy": "one_for_all"}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        d = system.start_child("d", {"kind": "tests.kinds:Probe"}, supervisor="field")
        assert d.echo("dyn").result(5) == "dyn"
        assert [(c.name, c.state) for c in system.which_children("field")] == [("d", "running")]
        assert [c.name for c in system.which_children()] == ["a", "field"]
        with pytest.raises(sessions.ConfigError, match="already in use"):
            system.start_child("d", {"kind": "tests.kinds:Probe"})
        with pytest.raises(sessions.ConfigError, match=r"resources\.e\.kind"):
            system.start_child("e", {"kind": "no.such.module:Nope"})
        controls("f").fail_connects = 1
        with pytest.raises(sessions.ResourceUnavailable, match="failed to start"):
            system.start_child("f", {"kind": "tests.kinds:Probe"})
        assert "f" not in [c.name for c in system.which_children()]
        system.terminate_child("d")
        assert system.which_children("field")[0].state == "stopped"
        with pytest.raises(sessions.ResourceUnavailable, match="terminated"):
            d.echo(1).result(5)
        system.restart_child("d")
        assert d.echo("again").result(5) == "again"
        assert d.restarts == 1
        system.restart_child("a")  # restarting a running child reconnects it
        assert system.get("a").generation().result(5) == 2
        with pytest.raises(KeyError):
            system.terminate_child("nope")


def test_status_is_json_and_never_shows_passwords() -> None:
    rec = Recorder()
    secret_url = "postgresql://plant:hunter2@db.local/app"
    with sessions.start(config({"a": {"url": secret_url}})) as system:
        system.subscribe(rec)
        with pytest.raises(sessions.ResourceFault) as info:
            system.get("a").break_it(f"cannot reach {secret_url}").result(5)
        assert "hunter2" not in str(info.value)
        rec.wait_for(lambda e: isinstance(e, ChildStarted))
        text = json.dumps(system.status())
        assert "hunter2" not in text
        assert "plant:***@db.local" in system.status()["children"][0]["last_fault"]
        assert all("hunter2" not in repr(e) for e in rec.events)
        tree: dict[str, Any] = system.status()
        assert tree["children"][0]["kind"] == "probe"


def test_state_and_restarts_are_current_once_the_new_incarnation_answers() -> None:
    """A restarted resource serves only after the supervisor recorded the restart, so a
    caller answered by the new incarnation never sees ``restarting`` or a stale count."""
    cfg = config(["a"], max_restarts=100, period=1,
                 backoff={"initial": 0.0, "max": 0.0, "jitter": 0.0})
    with sessions.start(cfg) as system:
        a = system.get("a")
        for n in range(1, 31):
            with pytest.raises(sessions.ResourceFault):
                a.break_it().result(5)
            assert a.generation().result(5) == n + 1
            assert (a.state, a.restarts) == ("running", n)


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_a_fault_is_decided_before_its_caller_sees_it(strategy: str) -> None:
    """Causality: once a.boom() has raised ResourceFault, the same thread's next call to
    sibling b is served by b's restarted incarnation, never the old one, even while
    other threads keep b busy."""
    cfg = config(["a", "b"], strategy=strategy, max_restarts=1000, period=1)
    with sessions.start(cfg) as system:
        a, b = system.get("a"), system.get("b")
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                with contextlib.suppress(sessions.SessionsError):
                    b.echo(0).result()

        workers = [threading.Thread(target=load) for _ in range(3)]
        for w in workers:
            w.start()
        try:
            for round_ in range(1, 31):
                before = b.generation().result()
                with pytest.raises(sessions.ResourceFault):
                    a.break_it().result()
                assert b.generation().result() > before, f"round {round_}: old b answered"
        finally:
            stop.set()
            for w in workers:
                w.join()


def test_count_children_delete_child_and_child_spec() -> None:
    """OTP's count_children, delete_child and get_childspec, through the public API."""
    cfg = config({"a": {"call_timeout": 2.5}, "b": {"supervisor": "inner"},
                  "p": {"pool_size": 2}},
                 supervisors={"inner": {"strategy": "one_for_all"}})
    with sessions.start(cfg) as system:
        assert system.count_children() == sessions.ChildCount(
            specs=3, active=3, supervisors=1, resources=2)
        assert system.child_spec("a") == {"kind": "tests.kinds:Probe", "call_timeout": 2.5}
        assert system.child_spec("p")["pool_size"] == 2
        assert system.child_spec("inner") == {"strategy": "one_for_all"}
        with pytest.raises(sessions.ChildRunning) as running:
            system.delete_child("a")
        assert running.value.name == "a" and "terminate_child" in str(running.value)
        old = system.get("a")
        system.terminate_child("a")
        assert system.count_children() == sessions.ChildCount(
            specs=3, active=2, supervisors=1, resources=2)
        system.delete_child("a")
        assert system.count_children().specs == 2
        assert [c.name for c in system.which_children()] == ["inner", "p"]
        with pytest.raises(KeyError):
            system.child_spec("a")
        with pytest.raises(sessions.ResourceUnavailable):
            old.echo(1).result()  # a deleted child's handle keeps refusing
        system.start_child("a", {"kind": "tests.kinds:Probe"})  # the name is free again
        assert system.get("a").echo(2).result() == 2
        system.terminate_child("inner")
        system.delete_child("inner")
        with pytest.raises(KeyError):
            system.get("b")
        assert system.count_children() == sessions.ChildCount(
            specs=2, active=2, supervisors=0, resources=2)


def _order() -> list[str]:
    return [f"{'start' if op == 'connect' else 'stop'} {name}" for op, name in LIFECYCLE]


def test_one_for_all_restarts_a_terminated_sibling_like_otp() -> None:
    """OTP: a one_for_all restart restarts every non-temporary child of the group, one
    stopped with terminate_child included."""
    rec = Recorder()
    with sessions.start(config(["a", "b", "c"], strategy="one_for_all")) as system:
        system.subscribe(rec)
        system.terminate_child("c")
        LIFECYCLE.clear()
        with pytest.raises(sessions.ResourceFault):
            system.get("a").break_it().result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "c")
        assert _order() == ["stop a", "stop b", "start a", "start b", "start c"]
        assert system.get("c").echo("back").result() == "back"


def test_one_for_all_restarts_a_transient_sibling_that_exited_normally() -> None:
    rec = Recorder()
    cfg = config({"a": {}, "b": {"restart": "transient"}}, strategy="one_for_all")
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        assert system.get("b").finish().result() == "bye"
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "b")
        LIFECYCLE.clear()
        with pytest.raises(sessions.ResourceFault):
            system.get("a").break_it().result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "b")
        assert _order() == ["stop a", "start a", "start b"]
        assert [c.state for c in system.which_children()] == ["running", "running"]


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_a_failed_start_in_a_group_restart_restarts_the_group(strategy: str) -> None:
    """OTP: a child failing to start while its group restarts makes the supervisor stop
    the children restarted so far and restart the whole group, counting intensity."""
    rec = Recorder()
    with sessions.start(config(["a", "b", "c"], strategy=strategy, max_restarts=5)) as system:
        system.subscribe(rec)
        controls("b").fail_connects = 1
        LIFECYCLE.clear()
        with pytest.raises(sessions.ResourceFault):
            system.get("b" if strategy == "rest_for_one" else "a").break_it().result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "c")
        failed = [e for e in rec.of(ChildFaulted) if e.during_start]
        assert [e.name for e in failed] == ["b"]
        if strategy == "one_for_all":
            assert _order() == ["stop a", "stop c", "stop b", "start a",  # b fails to start
                                "stop a", "start a", "start b", "start c"]
        else:
            assert _order() == ["stop b", "stop c",  # b fails to start, c never started
                                "start b", "start c"]
        assert len(rec.of(ChildFaulted)) == 2 and not rec.of(SupervisorGaveUp)


@pytest.mark.parametrize(("restart", "comes_back"),
                         [("permanent", True), ("transient", True), ("temporary", False)])
def test_a_nested_supervisor_has_a_restart_type(restart: str, comes_back: bool) -> None:
    """OTP: a supervisor child has a restart type. One that gives up is restarted by its
    parent unless it is temporary, which then stays stopped (its resources refuse)."""
    rec = Recorder()
    cfg = config({"a": {}, "x": {"supervisor": "field"}}, max_restarts=5,
                 supervisors={"field": {"restart": restart, "max_restarts": 0}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        with pytest.raises(sessions.ResourceFault):
            system.get("x").break_it().result()
        rec.wait_for(lambda e: isinstance(e, SupervisorGaveUp) and e.supervisor == "field")
        if comes_back:
            rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "field")
            assert system.get("x").generation().result() == 2
        else:
            stopped = rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "field")
            assert stopped[0].reason == "temporary child faulted"
            assert system.status()["children"][1]["restart"] == "temporary"
            with pytest.raises(sessions.ResourceUnavailable):
                system.get("x").echo(1).result()
        assert system.get("a").echo("fine").result() == "fine"


def test_the_root_supervisor_has_no_restart_type() -> None:
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start(config(["a"], restart="temporary"))
    assert info.value.path == "supervisor.restart"


def test_a_connect_returning_ignore_leaves_the_child_stopped_like_otp_ignore() -> None:
    """OTP: a start returning ``ignore`` keeps the child, not running, with no fault."""
    rec = Recorder()
    controls("b").ignore = True
    with sessions.start(config(["a", "b", "c"], strategy="one_for_all")) as system:
        system.subscribe(rec)
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("a", "running"), ("b", "stopped"), ("c", "running")]
        assert _order() == ["start a", "start c"]
        with pytest.raises(sessions.ResourceUnavailable) as refused:
            system.get("b").echo(1).result()
        assert "IGNORE" in str(refused.value)
        assert system.count_children().active == 2
        # A group restart tries it again (it is not temporary); now it runs.
        controls("b").ignore = False
        LIFECYCLE.clear()
        with pytest.raises(sessions.ResourceFault):
            system.get("a").break_it().result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "c")
        assert _order() == ["stop a", "stop c", "start a", "start b", "start c"]
        assert system.get("b").echo(2).result() == 2
        assert not [e for e in rec.of(ChildFaulted) if e.name == "b"]


def test_a_restarted_supervisor_is_rebuilt_from_its_spec() -> None:
    """OTP: a supervisor restarted by its parent starts from its spec again: a child
    added with start_child is gone, a temporary child that had ended runs again."""
    rec = Recorder()
    cfg = config({"x": {"supervisor": "field"},
                  "t": {"supervisor": "field", "restart": "temporary"}},
                 max_restarts=5, supervisors={"field": {"max_restarts": 0}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        dyn = system.start_child("dyn", {"kind": "tests.kinds:Probe"}, supervisor="field")
        assert system.get("t").finish().result() == "bye"
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "t")
        assert [c.name for c in system.which_children("field")] == ["x", "t", "dyn"]
        LIFECYCLE.clear()
        with pytest.raises(sessions.ResourceFault):
            system.get("x").break_it().result()  # field gives up; root restarts it
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "field")
        assert [(c.name, c.state) for c in system.which_children("field")] == [
            ("x", "running"), ("t", "running")]
        assert _order() == ["stop x", "stop dyn", "start x", "start t"]
        removed = [e for e in rec.of(ChildStopped) if e.name == "dyn"]
        assert removed and removed[-1].reason.startswith("removed: its supervisor 'field'")
        with pytest.raises(KeyError):
            system.get("dyn")
        with pytest.raises(sessions.ResourceUnavailable):
            dyn.echo(1).result()
        assert system.get("t").echo("again").result() == "again"
        system.start_child("dyn", {"kind": "tests.kinds:Probe"}, supervisor="field")


def _job(auto_shutdown: str, restart: str = "transient") -> dict[str, Any]:
    return config(
        {"a": {"supervisor": "job"},
         "w1": {"supervisor": "job", "restart": "transient", "significant": True},
         "w2": {"supervisor": "job", "restart": "temporary", "significant": True},
         "other": {}},
        supervisors={"job": {"auto_shutdown": auto_shutdown, "restart": restart}})


def test_auto_shutdown_any_significant() -> None:
    """OTP's auto_shutdown = any_significant: a significant child ending by itself shuts
    its supervisor down (a normal exit); a transient supervisor then stays stopped."""
    rec = Recorder()
    with sessions.start(_job("any_significant")) as system:
        system.subscribe(rec)
        LIFECYCLE.clear()
        assert system.get("w1").finish().result() == "bye"
        stopped = rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "job")[0]
        assert stopped.supervisor == "root"
        assert stopped.reason == "auto_shutdown: significant child 'w1' ended"
        assert _order() == ["stop w1", "stop w2", "stop a"]
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("job", "stopped"), ("other", "running")]
        with pytest.raises(sessions.ResourceUnavailable) as refused:
            system.get("a").echo(1).result()
        assert "auto_shutdown = any_significant" in str(refused.value)
        assert not rec.of(ChildFaulted) and system.state == "running"


def test_auto_shutdown_all_significant_waits_for_every_significant_child() -> None:
    rec = Recorder()
    with sessions.start(_job("all_significant")) as system:
        system.subscribe(rec)
        system.get("w1").finish().result()
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "w1")
        assert system.get("a").echo("still up").result() == "still up"
        with pytest.raises(sessions.ResourceFault):  # a temporary one may end by a fault
            system.get("w2").break_it().result()
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "job")
        assert system.which_children()[0].state == "stopped"


def test_auto_shutdown_of_a_permanent_supervisor_restarts_it() -> None:
    rec = Recorder()
    with sessions.start(_job("any_significant", restart="permanent")) as system:
        system.subscribe(rec)
        system.get("w1").finish().result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "job")
        assert system.get("w1").echo("back").result() == "back"


def test_terminate_child_of_a_significant_child_does_not_shut_down() -> None:
    with sessions.start(_job("any_significant")) as system:
        system.terminate_child("w1")
        assert system.get("a").echo(1).result() == 1
        assert system.which_children()[0].state == "running"


@pytest.mark.parametrize(("spec", "path"), [
    ({"resources": {"a": {"kind": "x", "significant": True}}}, "resources.a.significant"),
    ({"resources": {"a": {"kind": "x", "significant": True, "restart": "transient",
                          "pool_size": 2}}}, "resources.a.significant"),
    ({"supervisors": {"s": {"significant": True}}}, "supervisors.s.significant"),
    ({"supervisor": {"significant": True}}, "supervisor.significant"),
])
def test_significant_needs_a_child_that_can_end(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start(spec)
    assert info.value.path == path


def test_a_dynamic_significant_child_is_checked_too() -> None:
    with sessions.start(config(["a"])) as system, pytest.raises(sessions.ConfigError):
        system.start_child("b", {"kind": "tests.kinds:Probe", "significant": True})


def test_check_childspecs_reports_every_problem_without_starting_anything() -> None:
    sessions.check_childspecs({"a": {"kind": "tests.kinds:Probe", "label": "x"}})
    assert controls("a").connects == 0
    with pytest.raises(sessions.ConfigError) as info:
        sessions.check_childspecs({
            "a": {"kind": "tests.kinds:Probe", "bogus": 1},
            "b": {"kind": "no_such_kind"},
            "c": {"kind": "tests.kinds:Probe", "restart": "sometimes"},
            "d": 3,
        })
    assert [path for path, _ in info.value.errors] == [
        "resources.a.bogus", "resources.b.kind", "resources.c.restart", "resources.d"]
    assert controls("a").connects == 0


def test_restart_child_of_a_running_or_ended_temporary_child() -> None:
    """The two deliberate differences from OTP (docs/supervision.md): restart_child of a
    running child stops and restarts it (OTP: {error, running}); a temporary child that
    ended stays listed as stopped and restart_child starts it again (OTP: removed)."""
    rec = Recorder()
    with sessions.start(config({"a": {}, "t": {"restart": "temporary"}})) as system:
        system.subscribe(rec)
        LIFECYCLE.clear()
        system.restart_child("a")
        assert _order() == ["stop a", "start a"]
        assert system.get("a").generation().result() == 2
        system.get("t").finish().result()
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "t")
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("a", "running"), ("t", "stopped")]
        LIFECYCLE.clear()
        system.restart_child("t")
        assert _order() == ["start t"]
        assert system.get("t").echo("again").result() == "again"
