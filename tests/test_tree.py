"""The supervision kernel (sessions/supervisor/_tree.py) through the public API: the
cases mutation testing found unasserted - escalation under the parent's strategy,
temporary members of a group, pools with no member running, backoff state and jitter,
and the exact texts and fields of events and refusals."""

from __future__ import annotations

import logging
import random
import re
import threading
from typing import Any

import pytest

import sessions
from sessions.messages import (
    ChildFaulted,
    ChildRestarting,
    ChildStarted,
    ChildStopped,
    CircuitChanged,
    SupervisorGaveUp,
)
from tests.kinds import LIFECYCLE, controls
from tests.support import FakeClock, Recorder, config, in_thread, wait_until


def _order() -> list[str]:
    return [f"{'start' if op == 'connect' else 'stop'} {name}" for op, name in LIFECYCLE]


def _break(system: sessions.System, name: str, message: str = "link lost") -> None:
    with pytest.raises(sessions.ResourceFault):
        system.get(name).break_it(message).result()


def _refusal(handle: Any) -> str:
    with pytest.raises(sessions.ResourceUnavailable) as info:
        handle.echo(1).result()
    return str(info.value)


SLOW = {"initial": 30.0, "max": 30.0, "jitter": 0.0}
"""A backoff nobody waits for: the restart happens only when a test asks for it."""


# -- escalation -----------------------------------------------------------------------


def test_a_supervisor_giving_up_is_restarted_under_its_parents_strategy() -> None:
    """The parent applies its own strategy to an escalated fault: under one_for_all the
    sibling resource restarts too, stopped before and started after the subtree."""
    rec = Recorder()
    cfg = config({"x": {"supervisor": "field"}, "z": {}}, strategy="one_for_all",
                 max_restarts=5, supervisors={"field": {"max_restarts": 0}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        LIFECYCLE.clear()
        _break(system, "x", "wire cut")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "z")
        assert _order() == ["stop x", "stop z", "start x", "start z"]
        gave_up = rec.of(SupervisorGaveUp)
        assert [g.supervisor for g in gave_up] == ["field"]
        assert gave_up[0].reason == ("more than 0 restarts within 5.0s; last: 'x': "
                                     "break_it: ProbeBroken: wire cut")
        escalated = [e for e in rec.of(ChildFaulted) if e.supervisor == "root"]
        assert [(e.name, e.during_start) for e in escalated] == [("field", False)]
        assert escalated[0].error == f"supervisor 'field' gave up: {gave_up[0].reason}"
        assert {(e.supervisor, e.name) for e in rec.of(ChildRestarting)} == {
            ("root", "field"), ("root", "z")}
        assert system.get("z").generation().result() == 2
        assert system.status()["children"][0]["last_fault"] == escalated[0].error


# -- temporary children in a group ----------------------------------------------------


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_a_running_temporary_sibling_is_stopped_for_good_by_a_group_restart(
        strategy: str) -> None:
    """OTP: a temporary child is never restarted, so a group restart stops it for good;
    its handle refuses calls naming the sibling whose fault stopped it."""
    rec = Recorder()
    cfg = config({"a": {}, "t": {"restart": "temporary"}, "c": {}}, strategy=strategy)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        LIFECYCLE.clear()
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "c")
        assert _order() == ["stop a", "stop c", "stop t", "start a", "start c"]
        assert [e.name for e in rec.of(ChildRestarting)] == ["a", "c"]
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("a", "running"), ("t", "stopped"), ("c", "running")]
        assert _refusal(system.get("t")) == (
            "temporary probe 't' stopped because 'a' faulted")
        assert controls("t").connects == 1


def test_a_temporary_child_that_faults_is_not_restarted_and_its_group_stays() -> None:
    rec = Recorder()
    cfg = config({"a": {}, "t": {"restart": "temporary"}}, strategy="one_for_all")
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        LIFECYCLE.clear()
        _break(system, "t", "gone")
        stopped = rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "t")
        assert (stopped[0].supervisor, stopped[0].reason) == ("root",
                                                              "temporary child faulted")
        assert _order() == ["stop t"]
        assert not rec.of(ChildRestarting)
        assert _refusal(system.get("t")) == (
            "temporary probe 't' is not restarted after a fault: break_it: ProbeBroken: gone")
        assert system.get("a").generation().result() == 1
        assert system.which_children()[1].state == "stopped"
        fault = rec.of(ChildFaulted)[0]
        assert (fault.supervisor, fault.name, fault.during_start) == ("root", "t", False)


# -- pools ----------------------------------------------------------------------------


def test_a_pool_with_no_member_running_queues_where_the_wait_is_shortest() -> None:
    """Every member restarting: calls queue on the members in turn (shortest queue), keep
    their keyword arguments, and are served once the members are back."""
    rec = Recorder()
    with sessions.start(config({"db": {"pool_size": 2}}, backoff=SLOW)) as system:
        system.subscribe(rec)
        db = system.get("db")
        for _ in range(2):  # the first break takes one member down, the second the other
            _break(system, "db")
        assert db.state == "restarting"
        assert [c["state"] for c in system.status()["children"][0]["children"]] == [
            "restarting", "restarting"]
        calls = [db.call("echo", value=i) for i in range(4)]
        owners = [db.whoami() for _ in range(2)]
        assert db.queued == 6
        assert system.status()["children"][0]["queued"] == 6
        system.restart_child("db")
        assert [f.result() for f in calls] == [0, 1, 2, 3]
        assert sorted(f.result()[0] for f in owners) == ["sessions-db#0", "sessions-db#1"]
        assert db.state == "running"
        assert db.restarts == 3  # the pool's restart and each member's
        assert [e.name for e in rec.of(ChildRestarting)] == ["db#0", "db#1"]


def test_with_no_member_running_a_call_avoids_the_member_a_lease_waits_on() -> None:
    """Every member restarting, a lease's first call waiting on one of them: a plain call
    queues on the other, where the wait is shorter."""
    with sessions.start(config({"db": {"pool_size": 2}}, backoff=SLOW)) as system:
        db = system.get("db")
        for _ in range(2):
            _break(system, "db")
        lease = db.lease(timeout=30)
        entering = in_thread(lease.__enter__)
        members = system.status()["children"][0]["children"]
        wait_until(lambda: sum(m["queued"] for m in
                               system.status()["children"][0]["children"]) == 1,
                   what="the lease's first call queued")
        leased = next(m["name"] for m in system.status()["children"][0]["children"]
                      if m["queued"] == 1)
        call = db.echo("plain")
        queued = {m["name"]: m["queued"] for m in system.status()["children"][0]["children"]}
        assert queued == {leased: 1, next(m["name"] for m in members
                                          if m["name"] != leased): 1}
        system.restart_child("db")
        assert call.result(5) == "plain"
        entering.result(5)
        lease.__exit__(None, None, None)


def test_a_terminated_pool_refuses_calls_and_comes_back() -> None:
    with sessions.start(config({"db": {"pool_size": 2}})) as system:
        db = system.get("db")
        system.terminate_child("db")
        assert db.state == "stopped"
        assert _refusal(db) == "probe 'db' was terminated (terminated)"
        system.restart_child("db")
        assert db.call("echo", value="back").result() == "back"
        assert db.state == "running"


def test_keyword_arguments_reach_the_resource() -> None:
    with sessions.start(config(["a"])) as system:
        assert system.get("a").echo(value={"k": 1}).result() == {"k": 1}


# -- backoff ----------------------------------------------------------------------------


def test_a_child_waiting_out_its_backoff_is_restarting_and_keeps_its_calls() -> None:
    rec = Recorder()
    with sessions.start(config(["a", "b"], backoff=SLOW)) as system:
        system.subscribe(rec)
        a = system.get("a")
        assert system.status()["children"][0]["last_fault"] is None
        _break(system, "a")
        assert (a.state, a.restarts) == ("restarting", 0)
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("a", "restarting"), ("b", "running")]
        assert system.count_children().active == 1
        assert system.status()["children"][0]["last_fault"] == (
            "break_it: ProbeBroken: link lost")
        restarting = rec.wait_for(lambda e: isinstance(e, ChildRestarting))
        assert [(e.supervisor, e.name, e.delay, e.attempt) for e in restarting] == [
            ("root", "a", 30.0, 1)]
        pending = a.generation()
        assert a.queued == 1 and not pending.done()
        system.restart_child("a")  # no waiting out the backoff
        assert pending.result() == 2
        assert (a.state, a.restarts) == ("running", 1)


def test_backoff_jitter_draws_from_the_injected_rng() -> None:
    rec = Recorder()
    backoff = {"initial": 0.01, "multiplier": 2.0, "max": 1.0, "jitter": 0.5}
    cfg = config(["a"], max_restarts=10, period=60, backoff=backoff)
    with sessions.start(cfg, rng=random.Random(7)) as system:
        system.subscribe(rec)
        controls("a").fail_connects = 2
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "a")
    same = random.Random(7)
    expected = [0.01 * 2 ** n * (1 + same.uniform(-0.5, 0.5)) for n in range(3)]
    assert [e.delay for e in rec.of(ChildRestarting)] == expected
    assert [e.attempt for e in rec.of(ChildRestarting)] == [1, 2, 3]


# -- IGNORE, and a start_child that fails -----------------------------------------------


def test_a_child_ignoring_its_start_is_stopped_with_its_reason() -> None:
    rec = Recorder()
    controls("b").ignore = True
    with sessions.start(config(["a", "b"])) as system:
        system.subscribe(rec)
        assert _refusal(system.get("b")) == (
            "resource 'b' chose not to run (its connect() returned IGNORE)")
        assert system.get("b").state == "stopped"
        assert not rec.of(ChildFaulted) and not rec.of(ChildRestarting)
        system.start_child("d", {"kind": "tests.kinds:Probe"})  # the cursor went on
        controls("e").ignore = True
        e = system.start_child("e", {"kind": "tests.kinds:Probe"})  # not a failure
        assert e.state == "stopped"
        assert rec.wait_for(lambda e: isinstance(e, ChildStopped)) == [
            ChildStopped("root", "e", "ignored: connect() returned IGNORE")]
        assert [c.name for c in system.which_children()] == ["a", "b", "d", "e"]
        controls("b").ignore = False
        system.restart_child("b")
        assert system.get("b").echo("now").result() == "now"


def _adding(system: sessions.System, name: str, spec: dict[str, Any]
            ) -> tuple[Any, sessions.Handle]:
    """start_child(name) on another thread; its handle, got while it still connects."""
    outcome: dict[str, Any] = {}

    def add() -> None:
        try:
            outcome["handle"] = system.start_child(name, spec)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=add)
    thread.start()

    def visible() -> bool:
        try:
            system.get(name)
        except KeyError:
            return False
        return True

    wait_until(visible, what=f"{name} being added")
    return (thread, outcome), system.get(name)


def test_a_start_child_whose_connect_fails_refuses_what_was_queued_meanwhile() -> None:
    rec = Recorder()
    gate = threading.Event()
    controls("x").connect_gate = gate
    controls("x").fail_connects = 1
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        (thread, outcome), x = _adding(system, "x", {"kind": "tests.kinds:Probe"})
        assert x.state == "starting"
        queued = x.echo(1)
        gate.set()
        thread.join()
        err = outcome["error"]
        assert isinstance(err, sessions.ResourceUnavailable)
        assert str(err) == ("resource 'x' failed to start: "
                            "ProbeBroken: connect refused (attempt 1)")
        assert err.resource == "x"
        assert isinstance(err.__cause__, ConnectionError)
        with pytest.raises(sessions.ResourceUnavailable) as refused:
            queued.result()
        assert str(refused.value) == "probe 'x' failed to start"
        assert x.state == "stopped"
        assert [c.name for c in system.which_children()] == ["a"]
        assert not rec.of(ChildFaulted) and not rec.of(ChildRestarting)
        assert system.get("a").echo(2).result() == 2


def test_a_pool_added_with_a_member_failing_stops_the_members_started() -> None:
    controls("p#1").fail_connects = 1
    with sessions.start(config(["a"])) as system:
        LIFECYCLE.clear()
        with pytest.raises(sessions.ResourceUnavailable) as info:
            system.start_child("p", {"kind": "tests.kinds:Probe", "pool_size": 2})
        assert str(info.value) == ("resource 'p' failed to start: "
                                   "ProbeBroken: connect refused (attempt 1)")
        assert info.value.resource == "p"
        wait_until(lambda: len(LIFECYCLE) == 2, what="p#0 stopped")
        assert _order() == ["start p#0", "stop p#0"]
        assert [c.name for c in system.which_children()] == ["a"]
        with pytest.raises(KeyError):
            system.get("p")
        system.start_child("p", {"kind": "tests.kinds:Probe", "pool_size": 2})
        assert system.get("p").echo(3).result() == 3


# -- stopping -----------------------------------------------------------------------------


@pytest.mark.parametrize(("shutdown", "how"), [
    (0.1, "was stopped (stall did not finish within shutdown_timeout=0.1s)"),
    ("brutal_kill", "was stopped with shutdown_timeout = brutal_kill"),
])
def test_terminating_a_child_in_a_call_fails_the_call_saying_how(shutdown: Any,
                                                                 how: str) -> None:
    cfg = config({"a": {"shutdown_timeout": shutdown, "call_timeout": 30,
                        "stall_timeout": 60}})
    with sessions.start(cfg) as system:
        started = threading.Event()
        stuck = system.get("a").stall(started)
        assert started.wait(5)
        system.terminate_child("a")
        assert str(stuck.exception(0)) == (
            f"call stall() on resource 'a' was in progress when resource 'a' {how}; "
            "its outcome is unknown")
        assert controls("a").aborts == 1
        assert _refusal(system.get("a")) == "probe 'a' was terminated (terminated)"


# -- building the tree ----------------------------------------------------------------


class Picky(sessions.ResourceActor):
    """A kind whose constructor rejects some values of its options."""

    kind = "picky"

    def __init__(self, port: int = 1, error: str = "ValueError") -> None:
        super().__init__()
        if port < 1:
            raise {"ValueError": ValueError, "TypeError": TypeError}[error](
                f"port must be >= 1, got {port}")

    def connect(self) -> object:
        return object()


@pytest.mark.parametrize("error", ["ValueError", "TypeError"])
@pytest.mark.parametrize("pool_size", [1, 3])
def test_a_constructor_rejecting_its_options_is_a_config_error(error: str,
                                                              pool_size: int) -> None:
    kind = "tests.test_tree:Picky"
    cfg = {"resources": {"p": {"kind": kind, "port": 0, "error": error,
                               "pool_size": pool_size}}}
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start(cfg)
    assert info.value.errors == [
        ("resources.p", f"kind '{kind}' rejected its options: port must be >= 1, got 0")]


# -- the supervision thread -------------------------------------------------------------


def test_a_call_queued_while_nobody_serves_times_out_unstarted() -> None:
    """The supervision thread expires queued calls of a resource waiting out its backoff
    (no incarnation runs to do it)."""
    with sessions.start(config({"a": {"call_timeout": 0.05}}, backoff=SLOW)) as system:
        a = system.get("a")
        _break(system, "a")
        assert a.state == "restarting"
        late = a.echo(1)
        expired = threading.Event()
        late.add_done_callback(lambda _: expired.set())  # no waiting caller expires it
        assert expired.wait(10)
        error = late.exception(0)
        assert isinstance(error, sessions.CallTimeout)
        assert error.started is False and error.resource == "a"
        assert a.queued == 0
        assert system.stats("a").outcomes["timeout"] == 1


def test_requests_after_stop_are_answered_on_the_callers_thread() -> None:
    system = sessions.start(config(["a"]))
    system.stop()
    with pytest.raises(sessions.ResourceUnavailable) as info:
        system.restart_child("a")
    assert str(info.value) == "supervisor 'root' is stopped"
    assert info.value.resource == "a"
    with pytest.raises(sessions.ResourceUnavailable) as added:
        system.start_child("b", {"kind": "tests.kinds:Probe"})
    assert str(added.value) == "supervisor 'root' is stopped"
    assert added.value.resource == "b"
    assert [c.name for c in system.which_children()] == ["a"]


def test_requests_to_a_supervisor_that_gave_up_are_refused() -> None:
    rec = Recorder()
    cfg = config({"x": {"supervisor": "field"}, "z": {}}, max_restarts=5,
                 supervisors={"field": {"max_restarts": 0, "restart": "temporary"}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        _break(system, "x")
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "field")
        with pytest.raises(sessions.ResourceUnavailable) as info:
            system.start_child("y", {"kind": "tests.kinds:Probe"}, supervisor="field")
        assert str(info.value) == "supervisor 'field' is stopped"
        x = system.get("x")
        assert x.state == "stopped"
        assert _refusal(x) == (
            "temporary supervisor 'field' is not restarted after a fault: supervisor "
            "'field' gave up: more than 0 restarts within 5.0s; last: 'x': break_it: "
            "ProbeBroken: link lost")


def test_the_children_of_a_supervisor_that_gave_up_refuse_until_it_restarts() -> None:
    rec = Recorder()
    cfg = config({"x": {"supervisor": "field"}, "y": {"supervisor": "field"}},
                 max_restarts=5, backoff=SLOW, supervisors={"field": {"max_restarts": 0}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        x, y = system.get("x"), system.get("y")
        LIFECYCLE.clear()
        _break(system, "x")
        rec.wait_for(lambda e: isinstance(e, ChildRestarting) and e.name == "field")
        assert [(c.name, c.state) for c in system.which_children("field")] == [
            ("x", "failed"), ("y", "failed")]
        assert system.which_children()[0].state == "restarting"
        gave_up = ("supervisor 'field' gave up: more than 0 restarts within 5.0s; "
                   "last: 'x': break_it: ProbeBroken: link lost")
        assert _refusal(y) == gave_up
        assert system.status()["children"][0]["last_fault"] == gave_up
        system.restart_child("field")
        assert _order() == ["stop x", "stop y", "start x", "start y"]
        assert (x.echo(1).result(), y.echo(2).result()) == (1, 2)
        assert system.which_children()[0].restarts == 1


# -- auto_shutdown ------------------------------------------------------------------------


def test_auto_shutdown_at_the_root_stops_the_whole_tree(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sessions.supervisor")
    rec = Recorder()
    cfg = config({"a": {}, "w": {"restart": "transient", "significant": True}, "c": {}},
                 auto_shutdown="any_significant")
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        LIFECYCLE.clear()
        assert system.get("w").finish().result() == "bye"
        wait_until(lambda: system.state == "stopped", what="the tree stopped")
        why = ("supervisor 'root' shut down: significant child 'w' ended "
               "(auto_shutdown = any_significant)")
        assert _refusal(system.get("a")) == why
        assert _refusal(system.get("c")) == why
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("a", "stopped"), ("w", "stopped"), ("c", "stopped")]
        wait_until(lambda: len(LIFECYCLE) == 3, what="every stop")
        assert _order() == ["stop w", "stop c", "stop a"]
        assert system.failure is None
        # no event tells of the root's own end: the log does
        assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [why]
    assert [e for e in rec.events if not isinstance(e, ChildStopped)] == []
    assert rec.of(ChildStopped) == [ChildStopped("root", "w", "exited normally: job done")]


def test_normal_exits_by_restart_type() -> None:
    rec = Recorder()
    cfg = config({"p": {}, "t": {"restart": "transient"}, "x": {"restart": "temporary"}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        for name in "ptx":
            assert system.get(name).finish().result() == "bye"
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "p")
        rec.wait_for(lambda e: isinstance(e, ChildStopped), count=2)
        assert _refusal(system.get("t")) == "resource 't' stopped normally (job done)"
        assert _refusal(system.get("x")) == "resource 'x' stopped normally (job done)"
        assert [(c.name, c.state, c.restarts) for c in system.which_children()] == [
            ("p", "running", 1), ("t", "stopped", 0), ("x", "stopped", 0)]
    assert rec.of(ChildFaulted) == [
        ChildFaulted("root", "p", "exited normally (job done) but is permanent", False)]
    assert rec.of(ChildStopped)[:2] == [
        ChildStopped("root", "t", "exited normally: job done"),
        ChildStopped("root", "x", "exited normally: job done")]
    assert rec.of(ChildStopped)[2:] == [
        ChildStopped("root", "p", "the system is stopping")]


def test_a_pool_call_skips_a_member_that_chose_not_to_run() -> None:
    """No member running, one of them refusing (its connect() returned IGNORE): the
    call waits on the member that will serve again, not on the refusing one."""
    rec = Recorder()
    controls("db#0").ignore = True
    with sessions.start(config({"db": {"pool_size": 2}}, backoff=SLOW)) as system:
        system.subscribe(rec)
        db = system.get("db")
        with pytest.raises(sessions.ResourceFault) as info:
            db.break_it().result()
        assert (info.value.resource, info.value.method) == ("db#1", "break_it")
        rec.wait_for(lambda e: isinstance(e, ChildRestarting) and e.name == "db#1")
        assert db.state == "restarting"
        queued = db.whoami()
        assert not queued.done()
        assert queued.method == "whoami"
        system.restart_child("db")
        assert queued.result()[0] == "sessions-db#1"
        assert [c["state"] for c in system.status()["children"][0]["children"]] == [
            "stopped", "running"]


def test_a_pool_has_its_name_kind_and_one_breaker() -> None:
    cfg = config({"db": {"pool_size": 2, "breaker": {"failures": 1, "reset_timeout": 60}}},
                 max_restarts=10)
    with sessions.start(cfg, clock=FakeClock()) as system:
        db = system.get("db")
        assert (db.name, db.kind, db.circuit) == ("db", "probe", "closed")
        with pytest.raises(AttributeError, match="resource 'db' \\(kind 'probe'\\)"):
            db.nope  # noqa: B018
        _break(system, "db")
        refused = db.echo(1)
        assert refused.done()
        with pytest.raises(sessions.ResourceUnavailable, match="circuit open"):
            refused.result()
        assert db.circuit == "open"
        assert system.status()["children"][0]["circuit"] == "open"


def test_auto_shutdown_cascades_through_a_significant_supervisor() -> None:
    """task shuts down when its significant w ends; task is itself significant (and
    transient) in job, so job shuts down too; root (a one_for_one, never) keeps b."""
    rec = Recorder()
    cfg = config(
        {"a": {"supervisor": "job"}, "w": {"supervisor": "task", "restart": "transient",
                                           "significant": True}, "b": {}},
        supervisors={
            "job": {"auto_shutdown": "any_significant", "restart": "transient"},
            "task": {"parent": "job", "auto_shutdown": "any_significant",
                     "restart": "transient", "significant": True},
        })
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        LIFECYCLE.clear()
        assert system.get("w").finish().result() == "bye"
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "job")
        assert [(e.supervisor, e.name, e.reason) for e in rec.of(ChildStopped)] == [
            ("task", "w", "exited normally: job done"),
            ("job", "task", "auto_shutdown: significant child 'w' ended"),
            ("root", "job", "auto_shutdown: significant child 'task' ended"),
        ]
        assert _order() == ["stop w", "stop a"]
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("job", "stopped"), ("b", "running")]
        assert _refusal(system.get("a")) == (
            "supervisor 'job' shut down: significant child 'task' ended "
            "(auto_shutdown = any_significant)")
        assert system.get("b").echo(1).result() == 1
        assert not rec.of(ChildFaulted)


def test_all_significant_ignores_children_that_are_not_significant() -> None:
    """A running sub-supervisor that is not significant does not keep an
    all_significant supervisor up."""
    rec = Recorder()
    cfg = config(
        {"a": {"supervisor": "inner"}, "w": {"supervisor": "job", "restart": "transient",
                                             "significant": True}},
        supervisors={"job": {"auto_shutdown": "all_significant", "restart": "transient"},
                     "inner": {"parent": "job"}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        system.get("w").finish().result()
        stopped = rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "job")
        assert stopped[0].reason == "auto_shutdown: significant child 'w' ended"
        assert system.get("a").state == "stopped"


def test_a_supervisor_that_is_not_significant_ending_leaves_its_parent_up() -> None:
    rec = Recorder()
    cfg = config(
        {"a": {"supervisor": "inner"}, "b": {"supervisor": "job"}},
        supervisors={"job": {"auto_shutdown": "any_significant", "restart": "transient"},
                     "inner": {"parent": "job", "restart": "temporary", "max_restarts": 0}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "inner")
        assert system.get("b").echo("up").result() == "up"
        assert [(c.name, c.state) for c in system.which_children("job")] == [
            ("inner", "stopped"), ("b", "running")]
    assert [e.name for e in rec.of(ChildStopped)] == ["inner", "b"]


# -- events and counters ----------------------------------------------------------------


def test_started_events_name_the_supervisor_kind_and_restart_count() -> None:
    rec = Recorder()
    cfg = config({"a": {}, "x": {"supervisor": "field"}}, max_restarts=5,
                 supervisors={"field": {"max_restarts": 0}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted))
        _break(system, "x")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "field")
        system.restart_child("a")
    assert rec.of(ChildStarted) == [
        ChildStarted("root", "a", "probe", 1),
        ChildStarted("field", "x", "probe", 1),
        ChildStarted("root", "field", "supervisor", 1),
        ChildStarted("root", "a", "probe", 2),
    ]


def test_stop_reports_every_running_resource_in_reverse_start_order() -> None:
    rec = Recorder()
    cfg = config({"a": {}, "x": {"supervisor": "field"}, "y": {"supervisor": "field"},
                  "b": {}, "t": {"restart": "transient"}},
                 supervisors={"field": {}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        system.get("t").finish().result()
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "t")
    assert [(e.supervisor, e.name, e.reason) for e in rec.of(ChildStopped)][1:] == [
        ("root", "b", "the system is stopping"),
        ("field", "y", "the system is stopping"),
        ("field", "x", "the system is stopping"),
        ("root", "a", "the system is stopping"),
    ]
    assert system.state == "stopped"
    assert _refusal(system.get("a")) == "the system is stopping"


def test_a_group_restart_announces_every_member_with_the_faulting_childs_attempt() -> None:
    rec = Recorder()
    backoff = {"initial": 0.01, "multiplier": 2.0, "max": 1.0, "jitter": 0.0}
    cfg = config(["a", "b", "c"], strategy="rest_for_one", max_restarts=10, period=60,
                 backoff=backoff)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        controls("b").fail_connects = 1
        _break(system, "b")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "c")
    assert [(e.name, e.attempt, e.delay) for e in rec.of(ChildRestarting)] == [
        ("b", 1, 0.01), ("c", 1, 0.01),  # the fault
        ("b", 2, 0.02), ("c", 2, 0.02),  # b failing to start restarts the rest again
    ]
    faults = rec.of(ChildFaulted)
    assert faults == [
        ChildFaulted("root", "b", "break_it: ProbeBroken: link lost", False),
        ChildFaulted("root", "b", "start failed: ProbeBroken: connect refused (attempt 2)",
                     True),
    ]
    assert system.get("a").restarts == 0


def test_a_pool_sums_its_members_call_statistics() -> None:
    with sessions.start(config({"db": {"pool_size": 2}})) as system:
        db = system.get("db")
        assert [db.echo(i).result() for i in range(5)] == list(range(5))
        with pytest.raises(ValueError):
            db.fail().result()
        assert system.stats("db").outcomes["ok"] == 5
        assert system.status()["children"][0]["calls"]["error"] == 1
        assert system.status()["children"][0]["abandoned"] == 0


# -- intensity and backoff with a fake clock ------------------------------------------------


def _attempts(rec: Recorder) -> list[int]:
    return [e.attempt for e in rec.of(ChildRestarting)]


def test_the_backoff_starts_over_after_running_exactly_one_period() -> None:
    clock = FakeClock()
    rec = Recorder()
    cfg = config(["a"], max_restarts=10, period=5)
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        for i in range(2):
            _break(system, "a")
            rec.wait_for(lambda e: isinstance(e, ChildStarted), count=i + 1)
        clock.advance(5)  # served a whole period: the next fault is a first one again
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted), count=3)
        assert _attempts(rec) == [1, 2, 1]


def test_a_failed_start_never_starts_the_backoff_over() -> None:
    """However long ago the last successful start was, a connect failing is one more
    consecutive failure."""
    clock = FakeClock()
    rec = Recorder()
    cfg = config(["a"], max_restarts=10, period=5)
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        clock.advance(100)
        controls("a").fail_connects = 2
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted))
        assert _attempts(rec) == [1, 2, 3]


def test_intensity_counts_restarts_within_the_period_exactly() -> None:
    """max_restarts = 1 within 5 s: a second restart 5 s after the first is allowed (the
    window is exact), one 4.9 s after it gives up."""
    clock = FakeClock()
    rec = Recorder()
    with sessions.start(config(["a"], max_restarts=1, period=5), clock=clock) as system:
        system.subscribe(rec)
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted))
        clock.advance(5)
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted), count=2)
        clock.advance(4.9)
        _break(system, "a")
        gave_up = rec.wait_for(lambda e: isinstance(e, SupervisorGaveUp))
        assert gave_up == [SupervisorGaveUp(
            "root", "more than 1 restarts within 5.0s; last: 'a': "
                    "break_it: ProbeBroken: link lost")]
        assert system.state == "failed"
        assert system.failure == ("supervisor 'root' gave up: more than 1 restarts within "
                                  "5.0s; last: 'a': break_it: ProbeBroken: link lost")
        assert system.status()["last_fault"] == gave_up[0].reason
        assert _refusal(system.get("a")) == system.failure


# -- restart_child and terminate_child ---------------------------------------------------


def test_restart_child_whose_connect_fails_raises_and_the_policy_retries() -> None:
    rec = Recorder()
    with sessions.start(config(["a"], max_restarts=5)) as system:
        system.subscribe(rec)
        controls("a").fail_connects = 1
        with pytest.raises(sessions.ResourceUnavailable) as info:
            system.restart_child("a")
        assert str(info.value) == ("resource 'a' failed to start: "
                                   "ProbeBroken: connect refused (attempt 2)")
        assert info.value.resource == "a"
        assert isinstance(info.value.__cause__, ConnectionError)
        started = rec.wait_for(lambda e: isinstance(e, ChildStarted))
        assert started == [ChildStarted("root", "a", "probe", 1)]
        assert rec.of(ChildFaulted) == [ChildFaulted(
            "root", "a", "start failed: ProbeBroken: connect refused (attempt 2)", True)]
        assert system.get("a").generation().result() == 3


def test_terminating_a_child_fails_a_restart_child_waiting_for_it() -> None:
    gate = threading.Event()
    with sessions.start(config({"a": {"shutdown_timeout": "brutal_kill"}})) as system:
        controls("a").connect_gate = gate  # aborted by the stop
        outcome: dict[str, BaseException] = {}

        def restart() -> None:
            try:
                system.restart_child("a")
            except BaseException as exc:
                outcome["error"] = exc

        waiter = threading.Thread(target=restart)
        waiter.start()
        wait_until(lambda: system.get("a").state == "restarting", what="a restarting")
        system.terminate_child("a")
        waiter.join()
        gate.set()
        error = outcome["error"]
        assert isinstance(error, sessions.ResourceUnavailable)
        assert str(error) == "probe 'a' was terminated (terminated)"
        assert error.resource == "a"
        assert system.get("a").state == "stopped"


def test_terminating_a_supervisor_stops_its_subtree_until_restart_child() -> None:
    rec = Recorder()
    cfg = config({"x": {"supervisor": "field"}, "y": {"supervisor": "field"}, "b": {}},
                 supervisors={"field": {}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        LIFECYCLE.clear()
        system.terminate_child("field")
        assert _order() == ["stop y", "stop x"]
        assert rec.wait_for(lambda e: isinstance(e, ChildStopped)) == [
            ChildStopped("root", "field", "terminated")]
        assert _refusal(system.get("x")) == "supervisor 'field' was terminated (terminated)"
        assert [(c.name, c.state) for c in system.which_children("field")] == [
            ("x", "stopped"), ("y", "stopped")]
        assert system.which_children()[0].state == "stopped"
        system.restart_child("field")
        assert _order() == ["stop y", "stop x", "start x", "start y"]
        assert system.get("y").echo(1).result() == 1
        assert system.which_children()[0].restarts == 1


# -- a supervisor's restart ---------------------------------------------------------------


def test_a_restarting_supervisor_and_its_children_are_restarting_until_they_run() -> None:
    rec = Recorder()
    gate = threading.Event()
    cfg = config({"x": {"supervisor": "field"}, "y": {"supervisor": "field"}},
                 max_restarts=5, supervisors={"field": {"max_restarts": 0}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        dyn = system.start_child("dyn", {"kind": "tests.kinds:Probe"}, supervisor="field")
        controls("x").connect_gate = gate
        LIFECYCLE.clear()
        _break(system, "y")
        wait_until(lambda: controls("x").connects == 1 and system.get("x").state == "restarting"
                   and rec.of(ChildStopped), what="field restarting")
        assert [(c.name, c.state) for c in system.which_children()] == [("field", "restarting")]
        assert [(c.name, c.state) for c in system.which_children("field")] == [
            ("x", "restarting"), ("y", "restarting")]
        assert system.state == "running"
        gate.set()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "field")
        assert [c.state for c in system.which_children("field")] == ["running", "running"]
        # a supervisor's own start goes strictly in order, even under one_for_one
        assert _order() == ["stop y", "stop dyn", "stop x", "start x", "start y"]
        why = "its supervisor 'field' restarted from its spec"
        assert rec.of(ChildStopped) == [ChildStopped("field", "dyn", f"removed: {why}")]
        assert _refusal(dyn) == f"probe 'dyn' was removed: {why}"


def test_restart_child_of_a_supervisor_shows_its_whole_subtree_restarting() -> None:
    """restart_child of a supervisor stops its subtree and starts it again in order:
    while its first child reconnects, the resources of a supervisor nested after it are
    ``restarting`` too (not some state of their own), then all run again."""
    gate = threading.Event()
    cfg = config({"x": {"supervisor": "field"}, "z": {"supervisor": "inner"}},
                 supervisors={"field": {}, "inner": {"parent": "field"}})
    with sessions.start(cfg) as system:
        controls("x").connect_gate = gate
        restarting = in_thread(lambda: system.restart_child("field"))
        wait_until(lambda: system.get("x").state == "restarting", what="x reconnecting")
        try:
            assert [(c.name, c.state) for c in system.which_children("field")] == [
                ("x", "restarting"), ("inner", "restarting")]
            assert [(c.name, c.state) for c in system.which_children("inner")] == [
                ("z", "restarting")]
        finally:
            gate.set()
        restarting.result(10)
        assert [c.state for c in system.which_children("inner")] == ["running"]
        assert system.get("z").echo(1).result(5) == 1


def test_a_resource_shown_restarting_shows_its_fault_at_once() -> None:
    """The incarnation that broke marks its resource restarting with the reason itself,
    before the supervision thread gets to it: a status read in between (here the
    supervision thread is wedged) never shows a restart without its cause. A transient
    resource that exits normally shows no fault."""
    cfg = config({"a": {}, "t": {"restart": "transient"}})
    with sessions.start(cfg) as system:
        a = system.get("a")
        release = threading.Event()
        system._kernel.post(release.wait, 30)  # wedged for longer than the waits below
        try:
            broken = a.break_it()
            wait_until(lambda: a.state == "restarting", what="a marked restarting")
            [row] = [c for c in system.status()["children"] if c["name"] == "a"]
            assert (row["state"], row["last_fault"]) == (
                "restarting", "break_it: ProbeBroken: link lost")
        finally:
            release.set()
        with pytest.raises(sessions.ResourceFault):
            broken.result(5)
        assert system.get("t").finish().result(5) == "bye"
        wait_until(lambda: system.get("t").state == "stopped", what="t ended")
        [row] = [c for c in system.status()["children"] if c["name"] == "t"]
        assert row["last_fault"] is None


# -- stalls -------------------------------------------------------------------------------


def test_a_stall_past_twice_the_call_timeout_is_a_fault_saying_so() -> None:
    """No stall_timeout: twice call_timeout. The fault and the caller's error name the
    call and the limit."""
    rec = Recorder()
    # shutdown_timeout: the stalled connection is aborted at once, not after it
    with sessions.start(config({"a": {"call_timeout": 0.1, "shutdown_timeout": 30}})
                        ) as system:
        system.subscribe(rec)
        started = threading.Event()
        stuck = system.get("a").stall(started)
        assert started.wait(5)
        error = stuck.exception(10)
        assert isinstance(error, sessions.ResourceFault)
        assert str(error) == (
            "call stall() on resource 'a' was in progress when resource 'a' stalled "
            "(call stall() ran past stall_timeout=0.2s); its outcome is unknown")
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted))[0]
        assert (fault.supervisor, fault.name, fault.during_start) == ("root", "a", False)
        found = re.fullmatch(r"call stall\(\) stalled: still running after ([0-9.]+)s "
                             r"\(stall_timeout=0.2s\)", fault.error)
        assert found, fault.error
        assert 0.2 <= float(found.group(1)) < 30  # the time it ran, not a timestamp
        rec.wait_for(lambda e: isinstance(e, ChildStarted))
        assert system.status()["children"][0]["last_fault"] == fault.error


def _restart_in_thread(system: sessions.System, name: str) -> tuple[threading.Thread,
                                                                      dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def restart() -> None:
        try:
            system.restart_child(name)
            outcome["ok"] = True
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=restart)
    thread.start()
    return thread, outcome


def test_a_restart_child_waiting_when_the_supervisor_gives_up_fails_with_why() -> None:
    with sessions.start(config(["a", "b"], max_restarts=0)) as system:
        controls("a").fail_connects = 1
        with pytest.raises(sessions.ResourceUnavailable) as info:
            system.restart_child("a")
        assert str(info.value) == (
            "supervisor 'root' gave up: more than 0 restarts within 5.0s; last: 'a': "
            "start failed: ProbeBroken: connect refused (attempt 2)")
        assert info.value.resource == "root"
        assert system.state == "failed"


def test_stop_fails_a_restart_child_still_waiting() -> None:
    gate = threading.Event()
    system = sessions.start(config({"a": {"shutdown_timeout": "brutal_kill"}}))
    controls("a").connect_gate = gate
    thread, outcome = _restart_in_thread(system, "a")
    wait_until(lambda: controls("a").connects == 1 and system.get("a").state == "restarting",
               what="a reconnecting")
    system.stop()
    thread.join()
    error = outcome["error"]
    assert isinstance(error, sessions.ResourceUnavailable)
    assert str(error) == "the system is stopping"
    assert error.resource == "root"


def _job_with_a_busy_child(strategy: str = "one_for_one",
                           restart: str = "transient") -> dict[str, Any]:
    return config(
        {"a": {"supervisor": "job", "shutdown_timeout": 30, "call_timeout": 30,
               "stall_timeout": 60},
         "w": {"supervisor": "job", "restart": "transient", "significant": True},
         "b": {}},
        strategy=strategy, max_restarts=10,
        # no backoff: the group restart begins as soon as a's stop has ended
        backoff={"initial": 0.0, "max": 0.0, "jitter": 0.0},
        supervisors={"job": {"auto_shutdown": "any_significant", "restart": restart}})


def test_an_auto_shutdown_overtaken_by_a_group_restart_is_not_reported() -> None:
    """job is still stopping a (its call runs on) when b's fault restarts the whole
    group: job's exit is no longer news, the group restart brings it back."""
    rec = Recorder()
    with sessions.start(_job_with_a_busy_child("one_for_all")) as system:
        system.subscribe(rec)
        started, release = threading.Event(), threading.Event()
        busy = system.get("a").block(started, release)
        assert started.wait(5)
        system.get("w").finish().result()
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "w")
        wait_until(lambda: system.which_children()[0].state == "stopped", what="job stopping")
        _break(system, "b")
        release.set()
        assert busy.result() == "released"
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "b")
        assert system.get("a").echo(1).result() == 1
    assert [(e.supervisor, e.name) for e in rec.of(ChildStopped)
            if "system is stopping" not in e.reason] == [("job", "w")]


def test_an_auto_shutdown_ending_while_the_system_stops_is_not_acted_on() -> None:
    """job (permanent) is still stopping a when the system is stopped: its exit neither
    reports nor restarts it."""
    rec = Recorder()
    release = threading.Event()

    def release_on_stop(event: Any) -> None:
        if isinstance(event, ChildStopped) and event.reason == "the system is stopping":
            release.set()

    system = sessions.start(_job_with_a_busy_child(restart="permanent"))
    system.subscribe(rec)
    started = threading.Event()
    busy = system.get("a").block(started, release)
    assert started.wait(5)
    system.get("w").finish().result()
    rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "w")
    wait_until(lambda: system.which_children()[0].state == "stopped", what="job stopping")
    system.subscribe(release_on_stop)
    system.stop()
    assert busy.result() == "released"
    assert [(e.supervisor, e.name, e.reason) for e in rec.of(ChildStopped)] == [
        ("job", "w", "exited normally: job done"),
        ("root", "b", "the system is stopping")]
    assert not rec.of(ChildFaulted)


def test_a_connect_past_connect_timeout_fails_restart_child_saying_so() -> None:
    """The connect is aborted at once (not after shutdown_timeout), restart_child fails
    saying why; the timer of a connect that finished in time does nothing."""
    rec = Recorder()
    gate, later = threading.Event(), threading.Event()
    cfg = config({"a": {"connect_timeout": 0.05, "shutdown_timeout": 30},
                  "b": {"connect_timeout": 0.1, "shutdown_timeout": "brutal_kill"}},
                 max_restarts=5, backoff=SLOW)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        controls("a").connect_gate = gate
        with pytest.raises(sessions.ResourceUnavailable) as info:
            system.restart_child("a")
        why = "TimeoutError: connect() did not finish within connect_timeout=0.05s"
        assert str(info.value) == f"resource 'a' failed to start: {why}"
        assert isinstance(info.value.__cause__, TimeoutError)
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted))
        assert fault == [ChildFaulted("root", "a", f"start failed: {why}", True)]
        assert system.get("a").state == "restarting"
        wait_until(lambda: controls("a").aborts == 1, what="the connect aborted")
        gate.set()
        system.restart_child("a")
        generation = system.get("a").generation().result()
        # b's connect_timeout ends after a's: by then a's timer has been handled
        controls("b").connect_gate = later
        with pytest.raises(sessions.ResourceUnavailable, match=r"connect_timeout=0\.1s"):
            system.restart_child("b")
        assert system.get("a").generation().result() == generation
        assert [e.name for e in rec.wait_for(lambda e: isinstance(e, ChildFaulted), 2)] == [
            "a", "b"]
        later.set()


def test_a_permanent_supervisor_that_shut_down_is_restarted_as_a_fault() -> None:
    rec = Recorder()
    cfg = config(
        {"a": {"supervisor": "job"},
         "w": {"supervisor": "job", "restart": "transient", "significant": True}},
        supervisors={"job": {"auto_shutdown": "any_significant"}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        system.get("w").finish().result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "job")
        assert system.get("w").echo("back").result() == "back"
    why = "significant child 'w' ended"
    assert rec.of(ChildFaulted) == [
        ChildFaulted("root", "job", f"exited normally ({why}) but is permanent", False)]
    assert rec.of(ChildStopped)[:2] == [
        ChildStopped("job", "w", "exited normally: job done"),
        ChildStopped("root", "job", f"auto_shutdown: {why}")]
    assert [(e.name, e.attempt) for e in rec.of(ChildRestarting)] == [("job", 1)]


def test_a_child_that_had_ended_stays_stopped_when_its_supervisor_gives_up() -> None:
    rec = Recorder()
    cfg = config({"a": {}, "t": {"restart": "transient"}}, max_restarts=0)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        system.get("t").finish().result()
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "t")
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, SupervisorGaveUp))
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("a", "failed"), ("t", "stopped")]
        assert _refusal(system.get("t")) == system.failure


def test_auto_shutdown_at_the_root_fails_a_restart_child_waiting() -> None:
    gate = threading.Event()
    cfg = config({"g": {"shutdown_timeout": "brutal_kill"},
                  "w": {"restart": "transient", "significant": True}},
                 auto_shutdown="any_significant")
    with sessions.start(cfg) as system:
        controls("g").connect_gate = gate  # aborted by the stop
        thread, outcome = _restart_in_thread(system, "g")
        wait_until(lambda: system.get("g").state == "restarting", what="g restarting")
        system.get("w").finish().result()
        thread.join()
        error = outcome["error"]
        assert isinstance(error, sessions.ResourceUnavailable)
        assert str(error) == ("supervisor 'root' shut down: significant child 'w' ended "
                              "(auto_shutdown = any_significant)")
        assert error.resource == "root"


def test_start_raises_why_the_root_gave_up_while_starting() -> None:
    controls("x").fail_connects = 99
    cfg = config({"a": {}, "x": {"supervisor": "field"}}, max_restarts=0,
                 supervisors={"field": {"max_restarts": 1}})
    with pytest.raises(sessions.ResourceUnavailable) as info:
        sessions.start(cfg)
    field = ("supervisor 'field' gave up: more than 1 restarts within 5.0s; last: 'x': "
             "start failed: ProbeBroken: connect refused (attempt 2)")
    assert str(info.value) == (f"supervisor 'root' gave up: more than 0 restarts within "
                               f"5.0s; last: 'field': {field}")
    assert info.value.resource == "root"
    assert controls("x").connects == 2
    assert [op for op, name in LIFECYCLE] == ["connect", "disconnect"]  # a, stopped again


def test_a_terminated_child_is_not_started_by_its_siblings_restart() -> None:
    rec = Recorder()
    with sessions.start(config(["a", "b"])) as system:
        system.subscribe(rec)
        system.terminate_child("a")
        _break(system, "b")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "b")
        system.restart_child("b")
        assert system.get("a").state == "stopped"
        assert controls("a").connects == 1


def test_the_log_tells_of_faults_and_give_ups(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sessions.supervisor")
    with sessions.start(config(["a"], max_restarts=0)) as system:
        _break(system, "a")
        wait_until(lambda: system.state == "failed", what="the root gave up")
    gave_up = ("supervisor 'root' gave up: more than 0 restarts within 5.0s; last: 'a': "
               "break_it: ProbeBroken: link lost")
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "sessions.supervisor"] == [
        ("WARNING", "probe 'a' faulted under 'root': break_it: ProbeBroken: link lost"),
        ("ERROR", gave_up)]


def test_a_significant_child_under_a_supervisor_that_never_shuts_down() -> None:
    rec = Recorder()
    cfg = config({"a": {}, "w": {"restart": "transient", "significant": True}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        system.get("w").finish().result()
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "w")
        system.restart_child("a")  # the supervisor still serves requests
        assert system.state == "running"
        assert system.get("a").echo(1).result() == 1


def test_a_fault_counts_once_toward_the_breaker_and_a_failed_start_names_itself() -> None:
    rec = Recorder()
    cfg = config({"a": {"breaker": {"failures": 2, "reset_timeout": 60}}}, max_restarts=10)
    with sessions.start(cfg, clock=FakeClock()) as system:
        system.subscribe(rec)
        a = system.get("a")
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted))
        assert a.circuit == "closed"  # one failure, counted once
        assert a.echo(1).result() == 1  # a success: no consecutive failures left
        controls("a").fail_connects = 1
        _break(system, "a")  # the failed connect after it is the second in a row
        opened = rec.wait_for(lambda e: isinstance(e, CircuitChanged))
        why = "start failed: ProbeBroken: connect refused (attempt 3)"
        assert opened == [CircuitChanged("a", "open", why)]
        assert _refusal(a).startswith(
            f"circuit open for resource 'a' after 2 consecutive failures (last: {why})")


def test_a_child_failing_to_start_while_its_supervisor_starts_is_retried_alone() -> None:
    """docs/supervision.md: while a supervisor starts as a whole, a child failing to
    start is retried alone with backoff, even under one_for_all; the children started
    stay up."""
    rec = Recorder()
    controls("b").fail_connects = 1
    cfg = config(["a", "b", "c"], strategy="one_for_all", max_restarts=5)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        assert _order() == ["start a", "start b", "start c"]
        assert [controls(n).connects for n in "abc"] == [1, 2, 1]
        assert [(c.name, c.state, c.restarts) for c in system.which_children()] == [
            ("a", "running", 0), ("b", "running", 0), ("c", "running", 0)]


def test_a_group_restart_stops_a_sibling_supervisors_children_as_restarting() -> None:
    rec = Recorder()
    cfg = config({"x": {"supervisor": "field"}, "y": {"supervisor": "field"}, "b": {}},
                 strategy="one_for_all", backoff=SLOW, supervisors={"field": {}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        queued = system.get("x").echo("kept")
        _break(system, "b")
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("field", "restarting"), ("b", "restarting")]
        assert [(c.name, c.state) for c in system.which_children("field")] == [
            ("x", "restarting"), ("y", "restarting")]
        assert queued.result() == "kept"
        pending = system.get("y").echo("waits")
        assert not pending.done()
        system.restart_child("field")
        assert pending.result() == "waits"


def test_a_slow_stop_never_delays_another_childs_restart_under_one_for_one() -> None:
    """a is still being stopped (its call runs on, shutdown_timeout = 30) while b faults
    and restarts: a one_for_one restart does not wait for other children's stops."""
    rec = Recorder()
    cfg = config({"a": {"shutdown_timeout": 30, "call_timeout": 30, "stall_timeout": 60},
                  "b": {}}, max_restarts=5)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        started, release = threading.Event(), threading.Event()
        busy = system.get("a").block(started, release)
        assert started.wait(5)
        stopping = in_thread(lambda: system.terminate_child("a"))
        try:
            rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "a")
            _break(system, "b")
            rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "b")
            assert not stopping.done() and not busy.done()
            stoppers = [t for t in threading.enumerate() if t.name == "sessions-stopper"]
            assert stoppers and all(t.daemon for t in stoppers)  # never keeps a process up
        finally:
            release.set()
        assert busy.result() == "released"
        stopping.result(10)


def test_restart_child_waiting_its_turn_in_a_group_is_starting_or_restarting() -> None:
    """one_for_all, a waiting out its backoff: restart_child of a later child waits for
    a (the group starts in order); meanwhile the child is ``starting`` if it never ran
    (b: its connect returned IGNORE) and ``restarting`` if it did (c)."""
    controls("b").ignore = True
    cfg = config(["a", "b", "c"], strategy="one_for_all", backoff=SLOW)
    with sessions.start(cfg) as system:
        b, c = system.get("b"), system.get("c")
        _break(system, "a")
        system.terminate_child("c")
        controls("b").ignore = False
        LIFECYCLE.clear()
        first = in_thread(lambda: system.restart_child("b"))
        wait_until(lambda: b.state != "restarting", what="b's restart_child handled")
        assert b.state == "starting"
        second = in_thread(lambda: system.restart_child("c"))
        wait_until(lambda: c.state != "stopped", what="c's restart_child handled")
        assert c.state == "restarting"
        assert not first.done() and not second.done()
        added = in_thread(lambda: system.start_child("d", {"kind": "tests.kinds:Probe"}))
        wait_until(lambda: len(system.which_children()) == 4, what="d added")
        assert system.get("d").state == "starting"  # waiting its turn too
        system.restart_child("a")
        first.result(10)
        second.result(10)
        assert added.result(10).echo("d").result() == "d"
        starts = [step for step in _order() if step.startswith("start")]
        assert starts == ["start a", "start b", "start c", "start d"]
        assert (b.restarts, c.restarts) == (0, 1)


def test_a_temporary_sibling_that_had_ended_is_left_alone_by_a_group_restart() -> None:
    rec = Recorder()
    cfg = config({"a": {}, "t": {"restart": "temporary"}}, strategy="one_for_all")
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        system.get("t").finish().result()
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "t")
        _break(system, "a")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "a")
        assert [e.name for e in rec.of(ChildRestarting)] == ["a"]
        assert _refusal(system.get("t")) == "resource 't' stopped normally (job done)"
        assert controls("t").connects == 1


def test_a_pool_being_added_and_its_members_are_starting() -> None:
    gate = threading.Event()
    controls("p#0").connect_gate = gate
    with sessions.start(config(["a"])) as system:
        (thread, outcome), p = _adding(system, "p", {"kind": "tests.kinds:Probe",
                                                     "pool_size": 2})
        wait_until(lambda: len(system.status()["children"]) == 2, what="p in the tree")
        pool = system.status()["children"][1]
        assert (pool["name"], pool["state"]) == ("p", "starting")
        assert [c["state"] for c in pool["children"]] == ["starting", "starting"]
        assert p.state == "starting"
        gate.set()
        thread.join()
        assert "error" not in outcome
        assert p.state == "running" and p.restarts == 0
        assert [c["state"] for c in system.status()["children"][1]["children"]] == [
            "running", "running"]


def test_terminate_child_lets_a_call_finish_within_a_short_shutdown_timeout() -> None:
    """shutdown_timeout = 1: the call in progress is waited for (it ends as soon as the
    stop is announced), not aborted."""
    release = threading.Event()

    def release_on_stop(event: Any) -> None:
        if isinstance(event, ChildStopped) and event.name == "a":
            release.set()

    cfg = config({"a": {"shutdown_timeout": 1, "call_timeout": 30, "stall_timeout": 60}})
    with sessions.start(cfg) as system:
        system.subscribe(release_on_stop)
        started = threading.Event()
        busy = system.get("a").block(started, release)
        assert started.wait(5)
        system.terminate_child("a")
        assert busy.result() == "released"
        assert controls("a").aborts == 0


def test_a_system_without_resources_starts_and_stops() -> None:
    system = sessions.start({"supervisor": {}})
    assert system.state == "running"
    assert system.status()["children"] == []
    system.stop()
    assert system.state == "stopped"


def test_stop_while_a_pool_is_being_added() -> None:
    """One member still connecting, the other never started: stop() ends both and the
    start_child fails saying why."""
    gate = threading.Event()
    controls("p#0").connect_gate = gate  # aborted by the stop
    system = sessions.start(config(["a"]))
    (thread, outcome), p = _adding(system, "p", {"kind": "tests.kinds:Probe",
                                                 "pool_size": 2,
                                                 "shutdown_timeout": "brutal_kill"})
    system.stop()
    thread.join()
    assert str(outcome["error"]) == "the system is stopping"
    assert system.state == "stopped"
    assert controls("p#1").connects == 0
    assert _refusal(p) == "the system is stopping"



def test_the_supervision_thread_is_a_named_daemon_that_stop_ends() -> None:
    with sessions.start(config(["a"])):
        supervisors = [t for t in threading.enumerate() if t.name == "sessions-supervisor"]
        assert len(supervisors) == 1 and supervisors[0].daemon
    assert not supervisors[0].is_alive()  # stop() returned once it had ended


def test_a_thread_that_abort_cannot_end_is_logged_as_left_behind(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="sessions.supervisor")
    rec = Recorder()
    cfg = config({"a": {"call_timeout": 0.1, "stall_timeout": 0.2}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        started, release = threading.Event(), threading.Event()
        try:
            stuck = system.get("a").stubborn(started, release)
            assert started.wait(5)
            assert isinstance(stuck.exception(10), sessions.ResourceFault)
            rec.wait_for(lambda e: isinstance(e, ChildStarted))
            wait_until(lambda: system.status()["children"][0]["abandoned"] == 1,
                       what="the thread counted as left behind")
        finally:
            release.set()
    assert [r.getMessage() for r in caplog.records if r.name == "sessions.supervisor"] == [
        "resource 'a': an abandoned incarnation's thread is still blocked (in stubborn) "
        "after abort(); it is left behind"]


def test_a_restarted_pool_member_takes_calls_again() -> None:
    rec = Recorder()
    with sessions.start(config({"db": {"pool_size": 2}})) as system:
        system.subscribe(rec)
        db = system.get("db")
        _break(system, "db")
        rec.wait_for(lambda e: isinstance(e, ChildStarted))
        served = {db.whoami().result()[0] for _ in range(6)}
        assert served == {"sessions-db#0", "sessions-db#1"}  # idle members take turns


class HeldClock:
    """A clock the supervision thread can be held in: once ``hold()`` is called, its
    next reading waits for ``release()`` (the kernel reads the clock while deciding)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._armed = False
        self.held = threading.Event()
        self._go = threading.Event()

    def __call__(self) -> float:
        if self._armed:
            self._armed = False
            self.held.set()
            self._go.wait(10)
        return self.now

    def hold(self) -> None:
        self._armed = True

    def release(self) -> None:
        self._go.set()


def test_a_faulting_member_is_restarting_before_the_decision_is_made() -> None:
    """The actor's own thread marks a faulting incarnation ``restarting`` at once, so a
    pool stops sending it calls even while the supervision thread is still busy."""
    clock = HeldClock()
    with sessions.start(config({"db": {"pool_size": 2}}), clock=clock) as system:
        db = system.get("db")
        clock.hold()
        fault = db.break_it()  # the pool's first call goes to db#0
        assert clock.held.wait(10)  # the supervision thread is deciding, held
        try:
            members = system.status()["children"][0]["children"]
            assert [m["state"] for m in members] == ["restarting", "running"]
            assert db.whoami().result()[0] == "sessions-db#1"
        finally:
            clock.release()
        with pytest.raises(sessions.ResourceFault):
            fault.result()


def test_a_deferred_reply_owed_by_an_incarnation_that_faulted_fails() -> None:
    import concurrent.futures  # noqa: PLC0415

    from sessions import Deferred  # noqa: PLC0415

    never: concurrent.futures.Future[Any] = concurrent.futures.Future()
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        owed = a.apply(lambda probe: Deferred(never))
        _break(system, "a")
        error = owed.exception(10)
        assert isinstance(error, sessions.ResourceFault)
        assert str(error) == ("call apply() on resource 'a' was in progress when resource "
                              "'a' faulted before the deferred reply came; its outcome is "
                              "unknown")
        never.set_result("too late")
        assert owed.exception(0) is error
