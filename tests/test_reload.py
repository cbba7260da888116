"""``System.reload``: a new config applied to the running tree, each kind of change,
and a bad config that changes nothing."""

from __future__ import annotations

import copy
import random
import threading
from typing import Any

import pytest

import sessions
from sessions.messages import (
    ChildRestarting,
    ChildStarted,
    ChildStopped,
    CircuitChanged,
    ConfigReloaded,
    SupervisorGaveUp,
)
from tests.kinds import controls
from tests.support import Recorder, config, in_thread, wait_until


def label(handle: sessions.Handle) -> Any:
    return handle.apply(lambda probe: probe.label).result(5)


def fault_and_restart(handle: sessions.Handle, restarts: int) -> None:
    """A faulting call, then wait until the resource runs again after its restarts-th
    restart."""
    with pytest.raises(sessions.ResourceFault):
        handle.break_it().result(5)
    wait_until(lambda: handle.restarts == restarts and handle.state == "running",
               what=f"restart {restarts} of {handle.name}")


def base() -> dict[str, Any]:
    return config({"a": {"label": "one"}, "b": {}, "c": {}})


def test_a_bad_config_changes_nothing_and_names_the_problem() -> None:
    with sessions.start(base()) as system:
        bad = base()
        bad["resources"]["a"]["call_timeout"] = -1
        bad["resources"]["d"] = {"kind": "tests.kinds:NoSuchKind"}
        with pytest.raises(sessions.ConfigError) as info:
            system.reload(bad)
        message = str(info.value)
        assert "resources.a.call_timeout" in message and "resources.d.kind" in message
        assert [controls(n).connects for n in "abc"] == [1, 1, 1]
        assert label(system.get("a")) == "one"
        with pytest.raises(KeyError):
            system.get("d")


def test_unchanged_resources_are_untouched_and_changed_ones_restart_with_the_new_spec() -> None:
    rec = Recorder()
    with sessions.start(base()) as system:
        system.subscribe(rec)
        a, b = system.get("a"), system.get("b")
        new = base()
        new["resources"]["a"]["label"] = "two"
        event = system.reload(new)
        assert event == ConfigReloaded(added=(), removed=(), changed=("a",), policies=(),
                                       failed=())
        assert rec.wait_for(lambda e: isinstance(e, ConfigReloaded))[0] == event
        assert system.get("a") is a and system.get("b") is b
        assert label(a) == "two" and a.generation().result(5) == 2
        assert [controls(n).connects for n in "bc"] == [1, 1]  # not restarted
        assert b.generation().result(5) == 1
        assert system.child_spec("a")["label"] == "two"
        assert system.reload(new) == ConfigReloaded((), (), (), (), ())  # nothing to do


def test_calls_queued_for_a_changed_resource_wait_for_its_new_incarnation() -> None:
    with sessions.start(config({"a": {"call_timeout": 10.0}})) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        running = a.block(started, release)
        assert started.wait(5)
        queued = [a.record("q", i) for i in range(3)]
        new = config({"a": {"call_timeout": 10.0, "label": "new"}})
        reloading = in_thread(lambda: system.reload(new))
        wait_until(lambda: a.state == "restarting", what="the old incarnation to stop")
        release.set()
        assert running.result(5) == "released"  # the call in progress finished
        assert reloading.result(10).changed == ("a",)
        assert [f.result(5) for f in queued] == [2, 2, 2]  # ran on the new connection
        assert label(a) == "new"


def test_added_and_removed_resources() -> None:
    rec = Recorder()
    with sessions.start(base()) as system:
        system.subscribe(rec)
        c = system.get("c")
        new = base()
        del new["resources"]["c"]
        new["resources"]["d"] = {"kind": "tests.kinds:Probe", "label": "dee"}
        event = system.reload(new)
        assert (event.added, event.removed, event.changed) == (("d",), ("c",), ())
        assert label(system.get("d")) == "dee"
        with pytest.raises(sessions.ResourceUnavailable, match="removed from the config"):
            c.echo(1).result(5)
        with pytest.raises(KeyError):
            system.get("c")
        rec.wait_for(lambda e: isinstance(e, ChildStopped) and e.name == "c"
                     and "reload" in e.reason)
        assert [i.name for i in system.which_children()] == ["a", "b", "d"]
        # Part of the spec now: a restart of the root rebuilds it, unlike start_child's.
        assert "d" in system.config.resources


def test_an_added_resource_that_cannot_start_is_reported_and_a_later_reload_retries() -> None:
    with sessions.start(base()) as system:
        controls("d").fail_connects = 100
        new = base()
        new["resources"]["d"] = {"kind": "tests.kinds:Probe"}
        new["supervisor"]["max_restarts"] = 0  # no retries inside the add
        event = system.reload(new)
        assert event.added == () and len(event.failed) == 1
        assert event.failed[0].startswith("d: ") and "connect refused" in event.failed[0]
        with pytest.raises(KeyError):
            system.get("d")
        controls("d").fail_connects = 0
        event = system.reload(new)
        assert event.added == ("d",) and event.failed == ()
        assert system.get("d").echo("up").result(5) == "up"


def test_a_policy_change_applies_without_restarting_children() -> None:
    with sessions.start(base()) as system:
        a, b = system.get("a"), system.get("b")
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: a.state == "running" and a.restarts == 1, what="a restarted")
        assert b.generation().result(5) == 1  # one_for_one: b untouched
        new = base()
        new["supervisor"]["strategy"] = "one_for_all"
        event = system.reload(new)
        assert event.policies == ("root",) and event.changed == ()
        assert [controls(n).connects for n in "abc"] == [2, 1, 1]  # nobody restarted
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: b.restarts == 1 and b.state == "running", what="b restarted too")
        assert b.generation().result(5) == 2  # one_for_all now


def test_a_lower_intensity_counts_the_restarts_already_made() -> None:
    rec = Recorder()
    with sessions.start(base(), ) as system:
        system.subscribe(rec)
        a = system.get("a")
        fault_and_restart(a, 1)
        new = base()
        new["supervisor"].update(max_restarts=1, period=600)
        system.reload(new)
        assert a.echo("still up").result(5) == "still up"  # applied at the next restart
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        rec.wait_for(lambda e: isinstance(e, SupervisorGaveUp))


def nested() -> dict[str, Any]:
    cfg = config({"a": {}, "x": {"supervisor": "line"}, "y": {"supervisor": "line"}})
    cfg["supervisors"] = {"line": {"strategy": "one_for_all"}, "cell": {}}
    return cfg


def test_policy_changes_of_named_supervisors_apply_and_are_reported_root_first() -> None:
    """Only the supervisors whose table changed get their new policy (the event lists
    them, the root first), without restarting children."""
    with sessions.start(nested()) as system:
        x, y = system.get("x"), system.get("y")
        new = nested()
        new["supervisors"]["line"]["strategy"] = "rest_for_one"
        event = system.reload(new)
        assert event.policies == ("line",) and event.changed == ()
        with pytest.raises(sessions.ResourceFault):
            y.break_it().result(5)
        wait_until(lambda: y.restarts == 1 and y.state == "running", what="y restarted")
        assert x.generation().result(5) == 1  # no longer one_for_all: x (before y) untouched
        with pytest.raises(sessions.ResourceFault):
            x.break_it().result(5)
        wait_until(lambda: y.restarts == 2 and y.state == "running", what="y restarted again")
        assert y.generation().result(5) == 3  # rest_for_one, not the root's one_for_one
        newer = copy.deepcopy(new)
        newer["supervisor"]["max_restarts"] = 5
        newer["supervisors"]["cell"]["max_restarts"] = 5
        assert system.reload(newer).policies == ("root", "cell")


def test_a_resource_added_by_a_reload_is_part_of_the_spec() -> None:
    """Unlike one added with start_child, a resource a reload added comes back when its
    supervisor is restarted from its spec."""
    with sessions.start(nested()) as system:
        new = nested()
        new["resources"]["z"] = {"kind": "tests.kinds:Probe", "supervisor": "line"}
        assert system.reload(new).added == ("z",)
        system.start_child("dyn", {"kind": "tests.kinds:Probe", "supervisor": "line"})
        system.terminate_child("line")
        system.restart_child("line")
        assert [c.name for c in system.which_children("line")] == ["x", "y", "z"]
        assert system.get("z").echo(1).result(5) == 1


def test_removals_changes_and_additions_of_one_reload_all_apply() -> None:
    """A removed resource, a deleted one (delete_child: the config still names it, so
    the reload adds it again) and an add that fails do not stop the reload from
    applying what comes after them."""
    with sessions.start(base()) as system:
        system.terminate_child("b")
        system.delete_child("b")
        controls("d").fail_connects = 100
        new = base()
        del new["resources"]["a"]
        new["resources"]["c"]["label"] = "changed"
        new["resources"]["d"] = {"kind": "tests.kinds:Probe"}
        new["resources"]["e"] = {"kind": "tests.kinds:Probe"}
        new["supervisor"]["max_restarts"] = 0  # no retries inside the add
        event = system.reload(new)
        assert (event.added, event.removed, event.changed) == (("b", "e"), ("a",), ("c",))
        assert [f.partition(":")[0] for f in event.failed] == ["d"]
        assert "d" not in system.config.resources  # not added: reload again to retry
        assert label(system.get("c")) == "changed"
        assert system.get("b").echo(1).result(5) == 1
        assert system.get("e").echo(1).result(5) == 1


def test_why_a_reload_stopped_each_child() -> None:
    """ChildStopped says why: removed from the config (a supervisor, stopped with its
    resources as one child), or rebuilt with a new spec (a resource moved to another
    supervisor)."""
    rec = Recorder()
    with sessions.start(nested()) as system:
        system.subscribe(rec)
        new = nested()
        del new["supervisors"]["line"]
        del new["resources"]["x"]
        del new["resources"]["y"]
        new["resources"]["a"]["supervisor"] = "cell"
        system.reload(new)
        rec.wait_for(lambda e: isinstance(e, ConfigReloaded))
        stopped = [(e.supervisor, e.name, e.reason) for e in rec.events
                   if isinstance(e, ChildStopped)]
        assert stopped == [("root", "a", "rebuilt by a reload with its new spec"),
                           ("root", "line", "removed from the config by a reload")]


def test_a_pool_resized_to_one_or_a_lone_resource_to_a_pool_is_rebuilt() -> None:
    with sessions.start(config({"a": {}, "p": {"pool_size": 2}})) as system:
        new = config({"a": {"pool_size": 2}, "p": {}})
        assert set(system.reload(new).changed) == {"a", "p"}
        a, p = system.status()["children"]
        assert (a["type"], [m["name"] for m in a["children"]]) == ("pool", ["a#0", "a#1"])
        assert (p["name"], p["type"]) == ("p", "resource")
        assert system.get("p").echo(1).result(5) == 1
        assert system.get("a").echo(1).result(5) == 1


def test_a_changed_resource_gets_its_kinds_validated_options() -> None:
    """As at start: converted, with the defaults of the kind's ``Options`` filled in."""
    kind = "tests.test_config_errors:Modelled"
    with sessions.start({"resources": {"m": {"kind": kind, "port": "8080"}}}) as system:
        assert system.reload({"resources": {"m": {"kind": kind, "port": "8081"}}}).changed == (
            "m",)
        assert system.get("m").options().result(5) == {
            "port": 8081, "mode": "fast", "ratio": 0.5, "level": "auto", "home": None}


def test_a_changed_resource_says_which_run_time_set_up_it_lost(
        caplog: pytest.LogCaptureFixture) -> None:
    """Replay steps registered on the old kind object are not carried over: a warning
    names each."""
    with sessions.start(base()) as system:
        a = system.get("a")
        a.remember("x").result(5)
        a.remember("y").result(5)
        new = base()
        new["resources"]["a"]["label"] = "two"
        system.reload(new)
        assert a.settings().result(5) == []
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "resources.a: restarted with its new spec; run-time set-up not carried over: "
        "setting:x, setting:y"]


def test_a_breaker_given_by_a_reload_guards_the_resource() -> None:
    rec = Recorder()
    with sessions.start(base()) as system:
        system.subscribe(rec)
        a = system.get("a")
        assert a.echo(0).result(5) == 0  # a method the handle has looked up before
        new = base()
        new["resources"]["a"]["breaker"] = {"failures": 1, "reset_timeout": 600}
        assert system.reload(new).changed == ("a",)
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        assert a.circuit == "open"
        with pytest.raises(sessions.ResourceUnavailable):
            a.echo(1).result(5)  # refused by the new breaker too
        opened = rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open")
        assert [e.name for e in opened] == ["a"]


def test_supervisors_added_removed_and_moved_with_their_resources() -> None:
    with sessions.start(nested()) as system:
        x = system.get("x")
        new = nested()
        new["supervisors"]["line"]["parent"] = "cell"  # moved: rebuilt with x and y
        new["supervisors"]["bay"] = {"parent": "cell"}
        new["resources"]["z"] = {"kind": "tests.kinds:Probe", "supervisor": "bay"}
        event = system.reload(new)
        assert event.added == ("bay", "z")
        assert set(event.changed) == {"x", "y"}
        assert system.get("x") is x and x.echo("moved").result(5) == "moved"
        assert {i.name for i in system.which_children("cell")} == {"line", "bay"}
        assert [i.name for i in system.which_children("line")] == ["x", "y"]
        assert system.get("z").echo(1).result(5) == 1
        assert controls("a").connects == 1
        gone = copy.deepcopy(new)
        del gone["supervisors"]["bay"]
        del gone["resources"]["z"]
        z = system.get("z")
        event = system.reload(gone)
        assert event.removed == ("bay", "z")
        with pytest.raises(sessions.ResourceUnavailable):
            z.echo(1).result(5)
        assert [i.name for i in system.which_children("cell")] == ["line"]


def test_a_resource_moved_to_another_supervisor_or_resized_keeps_its_handle() -> None:
    with sessions.start(nested()) as system:
        a = system.get("a")
        new = nested()
        new["resources"]["a"] = {"kind": "tests.kinds:Probe", "supervisor": "cell",
                                 "pool_size": 2}
        event = system.reload(new)
        assert event.changed == ("a",)
        assert system.get("a") is a
        members = {a.whoami().result(5)[0] for _ in range(20)}
        assert members == {"sessions-a#0", "sessions-a#1"}
        assert [i.name for i in system.which_children("cell")] == ["a"]


def test_a_reload_during_a_restart_applies_the_new_spec() -> None:
    with sessions.start(base()) as system:
        a = system.get("a")
        gate = threading.Event()
        controls("a").connect_gate = gate
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: a.state == "restarting", what="a restarting")
        new = base()
        new["resources"]["a"]["label"] = "after"
        reloading = in_thread(lambda: system.reload(new))
        gate.set()
        assert reloading.result(10).changed == ("a",)
        assert label(a) == "after"
        assert a.state == "running"


def test_a_name_used_by_start_child_is_a_config_error() -> None:
    with sessions.start(base()) as system:
        system.start_child("extra", {"kind": "tests.kinds:Probe"})
        new = base()
        new["resources"]["extra"] = {"kind": "tests.kinds:Probe"}
        with pytest.raises(sessions.ConfigError, match=r"resources\.extra: name is in use"):
            system.reload(new)
        new = base()
        new["supervisors"] = {"extra": {}}
        with pytest.raises(sessions.ConfigError) as info:
            system.reload(new)
        assert info.value.errors == [
            ("supervisors.extra", "name is in use by a resource added with start_child")]
        event = system.reload(base())  # a dynamic child is not the config's business
        assert event == ConfigReloaded((), (), (), (), ())
        assert system.get("extra").echo(1).result(5) == 1


def test_a_stopped_system_refuses_a_reload() -> None:
    system = sessions.start(base())
    system.stop()
    with pytest.raises(sessions.ResourceUnavailable) as info:
        system.reload(base())
    assert str(info.value) == "the system is stopped: nothing to reload"
    assert info.value.resource == "root"


def test_a_toml_file_reloads(tmp_path: Any) -> None:
    path = tmp_path / "plant.toml"
    path.write_text('[resources.a]\nkind = "tests.kinds:Probe"\nlabel = "one"\n')
    with sessions.start(path) as system:
        path.write_text('[resources.a]\nkind = "tests.kinds:Probe"\nlabel = "two"\n'
                        '[resources.b]\nkind = "tests.kinds:Probe"\n')
        event = system.reload(path)
        assert (event.added, event.changed) == (("b",), ("a",))
        assert label(system.get("a")) == "two"


def test_started_events_for_a_reload_come_before_its_report() -> None:
    rec = Recorder()
    with sessions.start(base()) as system:
        system.subscribe(rec)
        new = base()
        new["resources"]["d"] = {"kind": "tests.kinds:Probe"}
        system.reload(new)
        rec.wait_for(lambda e: isinstance(e, ConfigReloaded))
        kinds = [type(e) for e in rec.events
                 if isinstance(e, (ChildStarted, ConfigReloaded))]
        assert kinds == [ChildStarted, ConfigReloaded]


class Gauge(sessions.ResourceActor):
    """Another kind, to replace a probe by reload: its own ``echo``, no ``whoami``."""

    kind = "gauge"

    def connect(self) -> object:
        return object()

    def echo(self, value: Any) -> Any:
        return ("gauge", value)


def test_a_kind_changed_by_reload_serves_every_handle_and_view_already_held() -> None:
    with sessions.start(base()) as system:
        a = system.get("a")
        urgent, keyed = a.urgent, a.coalescing("k")
        # Each path has looked its methods up (and cached them) before the reload.
        assert [a.echo(1).result(5), urgent.echo(2).result(5), keyed.echo(3).result(5)] == [
            1, 2, 3]
        assert urgent.whoami().result(5)[0] == "sessions-a"
        new = base()
        new["resources"]["a"] = {"kind": Gauge}
        assert system.reload(new).changed == ("a",)
        assert a.kind == "gauge" and system.get("a") is a
        assert [a.echo(1).result(5), urgent.echo(2).result(5), keyed.echo(3).result(5)] == [
            ("gauge", 1), ("gauge", 2), ("gauge", 3)]
        for held in (a, urgent, keyed):
            with pytest.raises(AttributeError, match="'a' \\(kind 'gauge'\\) has no method "
                                                     "'whoami'; its methods: echo"):
                held.whoami()


def test_a_terminated_resource_takes_its_new_spec_and_stays_stopped() -> None:
    with sessions.start(base()) as system:
        a = system.get("a")
        system.terminate_child("a")
        new = base()
        new["resources"]["a"]["label"] = "two"
        assert system.reload(new).changed == ("a",)
        assert a.state == "stopped" and controls("a").connects == 1  # not started again
        assert system.child_spec("a")["label"] == "two"
        system.restart_child("a")
        assert label(a) == "two"


def test_a_reload_restarts_a_resource_through_restarting_and_clears_its_last_fault() -> None:
    with sessions.start(base()) as system:
        a = system.get("a")
        with pytest.raises(sessions.ResourceFault):
            a.break_it("link lost").result(5)
        wait_until(lambda: a.state == "running" and a.restarts == 1, what="the restart")
        assert "link lost" in str(system.status()["children"][0]["last_fault"])
        started, release = threading.Event(), threading.Event()
        running = a.block(started, release)
        assert started.wait(5)
        new = base()
        new["resources"]["a"]["label"] = "two"
        reloading = in_thread(lambda: system.reload(new))
        wait_until(lambda: a.state == "restarting", what="the old incarnation stopping")
        release.set()
        assert running.result(5) == "released"
        assert reloading.result(10).changed == ("a",)
        assert label(a) == "two"
        assert system.status()["children"][0]["last_fault"] is None


def test_a_reload_that_shortens_stall_timeout_applies_it_to_the_next_call() -> None:
    with sessions.start(config({"a": {"stall_timeout": 60.0}}, max_restarts=10)) as system:
        a = system.get("a")
        new = config({"a": {"stall_timeout": 0.3}}, max_restarts=10)
        assert system.reload(new).changed == ("a",)
        started, release = threading.Event(), threading.Event()
        stuck = a.stubborn(started, release)
        assert started.wait(5)
        with pytest.raises(sessions.ResourceFault, match=r"stall_timeout=0\.3s"):
            stuck.result(10)
        release.set()
        wait_until(lambda: system.stalls() == [], what="the stuck thread to end")


def test_a_backoff_change_sets_the_delays_of_the_next_restarts() -> None:
    """Initial, multiplier, max and jitter all come from the new policy (the jitter drawn
    from the rng given to start, so the delays are known exactly)."""
    rec = Recorder()
    with sessions.start(base(), rng=random.Random(3)) as system:
        system.subscribe(rec)
        new = base()
        new["supervisor"].update(max_restarts=10, backoff={
            "initial": 0.004, "max": 0.02, "multiplier": 3.0, "jitter": 0.5})
        assert system.reload(new).policies == ("root",)
        a = system.get("a")
        for n in (1, 2, 3):
            fault_and_restart(a, n)
        expected, draws = sessions.Backoff(0.004, 0.02, 3.0, 0.5), random.Random(3)
        assert [e.delay for e in rec.of(ChildRestarting)] == [
            expected.get_backoff_time(n, draws) for n in (1, 2, 3)]


def test_a_shorter_period_lets_restarts_made_before_it_age_out() -> None:
    """max_restarts = 1 with a period so short that the restart made before the reload
    is out of the window: the next fault restarts again instead of giving up."""
    rec = Recorder()
    with sessions.start(base()) as system:
        system.subscribe(rec)
        a = system.get("a")
        fault_and_restart(a, 1)
        new = base()
        new["supervisor"].update(max_restarts=1, period=1e-6)
        system.reload(new)
        fault_and_restart(a, 2)
        assert rec.of(SupervisorGaveUp) == []
