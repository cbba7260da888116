"""The ``System`` object and its handles, method by method: what each returns, what
each refuses and with which words, in which order children are listed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import sys
import threading
from typing import Any

import pytest

import sessions
from sessions import ChildCount, ChildInfo, ConfigError, ResourceActor
from sessions._system import status_rows
from sessions.messages import ChildRestarting, ChildStarted, ChildStopped, SupervisorGaveUp
from tests.kinds import controls
from tests.support import FakeClock, Recorder, config, in_thread, wait_until

PROBE = "tests.kinds:Probe"
STATS_IDLE = {"calls": {"ok": 0, "error": 0, "fault": 0, "timeout": 0, "refused": 0,
                        "superseded": 0},
              "latency_p50_ms": None, "latency_p99_ms": None}


class Picky(ResourceActor):
    """A kind whose constructor rejects a value (as a driver's would)."""

    kind = "picky"

    def __init__(self, size: int = 1) -> None:
        super().__init__()
        if size > 10:
            raise ValueError(f"size {size} is too large")

    def connect(self) -> object:
        return object()

    def disconnect(self, resource: object) -> None:
        return None


def tree_config() -> dict[str, Any]:
    return config({"a": {}, "p": {"pool_size": 2, "restart": "transient", "supervisor": "s"},
                   "b": {"breaker": {}}},
                  supervisors={"s": {"strategy": "rest_for_one", "restart": "temporary"}})


def _idle(node: dict[str, Any]) -> dict[str, Any]:
    """``node`` without its call figures (checked once, separately)."""
    return {k: v for k, v in node.items() if k not in STATS_IDLE}


# -- status, which_children, count_children -------------------------------------------


def test_status_describes_every_node() -> None:
    with sessions.start(tree_config()) as system:
        tree = system.status()
    resource = {"state": "running", "restarts": 0, "last_fault": None, "type": "resource",
                "kind": "probe", "queued": 0, "abandoned": 0}
    assert _idle(tree) == {
        "name": "root", "state": "running", "restarts": 0, "last_fault": None,
        "type": "supervisor", "strategy": "one_for_one", "restart": "permanent",
        "children": tree["children"]}
    a, s, b = tree["children"]
    assert a == {"name": "a", **resource, "restart": "permanent", "circuit": None, **STATS_IDLE}
    assert b == {"name": "b", **resource, "restart": "permanent", "circuit": "closed",
                 **STATS_IDLE}
    assert _idle(s) == {"name": "s", "state": "running", "restarts": 0, "last_fault": None,
                        "type": "supervisor", "strategy": "rest_for_one", "restart": "temporary",
                        "children": s["children"]}
    (pool,) = s["children"]
    assert pool == {"name": "p", "state": "running", "restarts": 0, "last_fault": None,
                    "type": "pool", "kind": "probe", "queued": 0, "abandoned": 0,
                    "circuit": None, **STATS_IDLE, "children": pool["children"]}
    assert pool["children"] == [
        {"name": f"p#{i}", **resource, "restart": "transient", "circuit": None, **STATS_IDLE}
        for i in range(2)]


def test_status_shows_the_calls_and_a_pools_shared_breaker() -> None:
    cfg = config({"p": {"pool_size": 2, "breaker": {"failures": 3}}})
    with sessions.start(cfg) as system:
        p = system.get("p")
        assert [p.echo(i).result(5) for i in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError):
            p.fail().result(5)
        pool = system.status()["children"][0]
        assert pool["circuit"] == "closed"
        assert [m["circuit"] for m in pool["children"]] == ["closed", "closed"]
        assert pool["calls"] == {"ok": 3, "error": 1, "fault": 0, "timeout": 0, "refused": 0,
                                 "superseded": 0}
        assert sum(m["calls"]["ok"] for m in pool["children"]) == 3
        assert system.stats("p").outcomes["ok"] == 3
        assert system.stats("p").outcomes["error"] == 1
        assert p.circuit == "closed"


def test_which_children_rows() -> None:
    with sessions.start(tree_config()) as system:
        assert system.which_children() == [
            ChildInfo("a", "resource", "probe", "running", 0),
            ChildInfo("s", "supervisor", "supervisor", "running", 0),
            ChildInfo("b", "resource", "probe", "running", 0)]
        assert system.which_children("s") == [ChildInfo("p", "resource", "probe", "running", 0)]
        assert system.which_children("root") == system.which_children()


def test_count_children_counts_a_pool_as_one_resource() -> None:
    with sessions.start(tree_config()) as system:
        assert system.count_children() == ChildCount(specs=3, active=3, supervisors=1,
                                                     resources=2)
        assert system.count_children("s") == ChildCount(specs=1, active=1, supervisors=0,
                                                        resources=1)
        system.terminate_child("s")
        assert system.count_children() == ChildCount(specs=3, active=2, supervisors=1,
                                                     resources=2)
        assert system.count_children("s") == ChildCount(specs=1, active=0, supervisors=0,
                                                        resources=1)


@pytest.mark.parametrize("call", ["which_children", "count_children"])
def test_unknown_supervisor_lists_the_supervisors(call: str) -> None:
    with sessions.start(tree_config()) as system, pytest.raises(KeyError) as info:
        getattr(system, call)("ghost")
    assert info.value.args[0] == "no supervisor named 'ghost' (supervisors: root, s)"


def test_supervisors_are_placed_where_their_first_resource_is() -> None:
    """Resources keep table order; a supervisor sits where its first resource (its own or
    a descendant's) appears; supervisors without resources come last, in table order."""
    cfg = config({"a": {}, "b": {"supervisor": "inner"}, "c": {}, "d": {"supervisor": "s1"},
                  "e": {"supervisor": "s1"}},
                 supervisors={"empty": {}, "s1": {}, "outer": {}, "inner": {"parent": "outer"},
                              "void": {}})
    with sessions.start(cfg) as system:
        assert [c.name for c in system.which_children()] == [
            "a", "outer", "c", "s1", "empty", "void"]
        assert [c.name for c in system.which_children("s1")] == ["d", "e"]


# -- get, stats, child_spec: unknown names --------------------------------------------


def test_get_lists_the_resources() -> None:
    with sessions.start(tree_config()) as system:
        with pytest.raises(KeyError) as info:
            system.get("nope")
        assert info.value.args[0] == "no resource named 'nope' (resources: a, p, b)"
        with pytest.raises(KeyError):
            system["s"]  # a supervisor has no handle
        assert system["a"] is system.get("a")
    with sessions.start({}) as empty, pytest.raises(KeyError) as info:
        empty.get("a")
    assert info.value.args[0] == "no resource named 'a' (resources: none)"


def test_stats_of_an_unknown_resource() -> None:
    with sessions.start(tree_config()) as system:
        for name in ("nope", "s", "p#0"):
            with pytest.raises(KeyError) as info:
                system.stats(name)
            assert info.value.args[0] == f"no resource named {name!r}"
        assert system.stats("a").outcomes["ok"] == 0


@pytest.mark.parametrize("call", ["child_spec", "terminate_child", "restart_child",
                                  "delete_child"])
def test_child_calls_refuse_unknown_names_and_the_root(call: str) -> None:
    with sessions.start(tree_config()) as system:
        for name in ("nope", "root", "p#0"):
            with pytest.raises(KeyError) as info:
                getattr(system, call)(name)
            assert info.value.args[0] == f"no child named {name!r}"
        assert system.count_children().active == 3


def test_child_spec_of_a_pool_and_a_supervisor() -> None:
    with sessions.start(tree_config()) as system:
        assert system.child_spec("p") == {"kind": PROBE, "supervisor": "s",
                                          "restart": "transient", "pool_size": 2}
        assert system.child_spec("s") == {"strategy": "rest_for_one", "restart": "temporary"}
        assert system.child_spec("b") == {"kind": PROBE, "breaker": {}}


# -- handles ---------------------------------------------------------------------------


def test_handle_properties() -> None:
    with sessions.start(tree_config()) as system:
        a, p, b = system.get("a"), system.get("p"), system.get("b")
        assert (a.name, a.kind, a.state, a.restarts, a.queued, a.circuit) == (
            "a", "probe", "running", 0, 0, None)
        assert (p.name, p.kind, p.state, p.circuit) == ("p", "probe", "running", None)
        assert b.circuit == "closed"
        assert repr(a) == "<Handle 'a' kind='probe' state='running'>"
        with a as lease:  # a lease of the resource, not the handle itself
            assert isinstance(lease, sessions.Lease)
            assert (lease.name, lease.kind, lease.member) == ("a", "probe", "a")


def test_handle_queued_counts_waiting_calls() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        running = a.block(started, release)
        assert started.wait(5)
        waiting = [a.echo(i) for i in range(3)]
        assert a.queued == 3
        assert system.status()["children"][0]["queued"] == 3
        release.set()
        assert running.result(5) == "released"
        assert [w.result(5) for w in waiting] == [0, 1, 2]
        assert a.queued == 0


def test_handle_async_context_manager() -> None:
    """``async with handle`` leases the resource for the block."""

    async def use(handle: sessions.Handle) -> Any:
        async with handle as lease:
            assert isinstance(lease, sessions.Lease)
            return await lease.echo("async")

    with sessions.start(config(["a"])) as system:
        assert asyncio.run(use(system.get("a"))) == "async"


def test_unknown_and_private_methods_list_the_methods() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        for method in ("nope", "_busy", "ctl", "__wrapped__"):
            with pytest.raises(AttributeError) as info:
                a.call(method)
            message = str(info.value)
            assert message.startswith(
                f"resource 'a' (kind 'probe') has no method {method!r}; its methods: ")
            methods = message.rsplit(": ", 1)[1].split(", ")
            assert methods == sorted(methods)
            assert {"echo", "break_it", "whoami", "generation"} <= set(methods)
            assert not {"connect", "disconnect", "ctl", "label"} & set(methods)
        assert a.call("echo", "x").result(5) == "x"
        assert a.call("echo", value="kw").result(5) == "kw"
        assert a.echo is a.echo  # looked up once


def test_handle_state_and_restarts_follow_the_resource() -> None:
    rec = Recorder()
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        a = system.get("a")
        gate = threading.Event()
        controls("a").connect_gate = gate
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: a.state == "restarting", what="restarting")
        assert repr(a) == "<Handle 'a' kind='probe' state='restarting'>"
        gate.set()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert (a.state, a.restarts) == ("running", 1)


# -- the system ------------------------------------------------------------------------


def test_system_state_repr_and_stop() -> None:
    system = sessions.start(config(["a", "b"]))
    assert system.state == "running"
    assert system.failure is None
    assert repr(system) == "<System state='running' resources=['a', 'b']>"
    system.stop()
    assert system.state == "stopped"
    assert repr(system) == "<System state='stopped' resources=['a', 'b']>"
    system.stop()  # idempotent
    assert system.state == "stopped"


def test_a_system_never_booted_stops_cleanly() -> None:
    """A ``System`` built but not started: stop() ends its event thread and it reads stopped."""
    system = sessions.System(sessions.SystemConfig())
    assert system.which_children() == []
    system.stop()
    assert system.state == "stopped"


def test_async_with_stops_the_system() -> None:
    async def run() -> sessions.System:
        async with sessions.start(config(["a"])) as system:
            assert await system.get("a").echo(1) == 1
            return system

    system = asyncio.run(run())
    assert system.state == "stopped"


def test_every_resources_problem_is_reported_at_start() -> None:
    err_info = pytest.raises(ConfigError)
    with err_info as info, sessions.start({"resources": {
            "a": {"kind": "tests.test_system_api:Picky", "size": 11},
            "b": {"kind": PROBE, "bogus": 1},
            "c": {"kind": "tests.test_system_api:Picky", "size": 2}}}):
        pass
    assert info.value.errors == [
        ("resources.a",
         "kind 'tests.test_system_api:Picky' rejected its options: size 11 is too large"),
        ("resources.b.bogus", "unknown key for kind Probe (accepted: label, unhealthy, url)"),
    ]


# -- start_child, terminate_child, restart_child, delete_child ------------------------


@pytest.mark.parametrize("name", ["", 3, None])
def test_start_child_needs_a_string_name(name: Any) -> None:
    with sessions.start(config(["a"])) as system:
        with pytest.raises(ConfigError) as info:
            system.start_child(name, {"kind": PROBE})
        assert info.value.errors == [
            ("name", f"a child needs a non-empty string name, got {name!r}")]


@pytest.mark.parametrize("name", ["a", "s", "p"])
def test_start_child_refuses_a_name_in_use(name: str) -> None:
    with sessions.start(tree_config()) as system:
        with pytest.raises(ConfigError) as info:
            system.start_child(name, {"kind": PROBE})
        assert info.value.errors == [
            (f"resources.{name}",
             "name is already in use (restart_child restarts an existing child)")]
        assert system.count_children().specs == 3


def test_start_child_places_the_child() -> None:
    """Under the ``supervisor`` argument, else the spec's ``supervisor`` key, else the root."""
    with sessions.start(tree_config()) as system:
        system.start_child("x", {"kind": PROBE, "supervisor": "s"})
        system.start_child("y", {"kind": PROBE, "supervisor": "s"}, supervisor="root")
        system.start_child("z", {"kind": PROBE})
        assert [c.name for c in system.which_children("s")] == ["p", "x"]
        assert [c.name for c in system.which_children()] == ["a", "s", "b", "y", "z"]
        with pytest.raises(KeyError) as info:
            system.start_child("w", {"kind": PROBE}, supervisor="ghost")
        assert info.value.args[0] == "no supervisor named 'ghost' (supervisors: root, s)"
        with pytest.raises(KeyError):
            system.get("w")


def test_start_child_of_a_pool() -> None:
    with sessions.start(config(["a"])) as system:
        p = system.start_child("p", {"kind": PROBE, "pool_size": 3})
        assert {p.whoami().result(5)[0] for _ in range(30)} == {
            "sessions-p#0", "sessions-p#1", "sessions-p#2"}
        assert system.count_children() == ChildCount(specs=2, active=2, supervisors=0,
                                                     resources=2)
        assert system.child_spec("p") == {"kind": PROBE, "pool_size": 3}


def test_a_failed_start_child_leaves_nothing_behind() -> None:
    with sessions.start(config(["a"])) as system:
        controls("f").fail_connects = 1
        with pytest.raises(sessions.ResourceUnavailable) as info:
            system.start_child("f", {"kind": PROBE})
        assert "connect refused" in str(info.value.__cause__)
        assert [c.name for c in system.which_children()] == ["a"]
        with pytest.raises(KeyError):
            system.get("f")
        with pytest.raises(KeyError):
            system.child_spec("f")
        f = system.start_child("f", {"kind": PROBE})  # the name is free
        assert f.echo(1).result(5) == 1


def test_delete_child_refuses_a_running_child_with_its_state() -> None:
    with sessions.start(tree_config()) as system:
        with pytest.raises(sessions.ChildRunning) as info:
            system.delete_child("s")
        assert str(info.value) == (
            "supervisor 's' is running: terminate_child() it before delete_child()")
        assert info.value.name == "s"
        with pytest.raises(sessions.ChildRunning) as info:
            system.delete_child("p")
        assert str(info.value) == (
            "probe 'p' is running: terminate_child() it before delete_child()")
        gate = threading.Event()
        controls("a").connect_gate = gate
        with pytest.raises(sessions.ResourceFault):
            system.get("a").break_it().result(5)
        wait_until(lambda: system.get("a").state == "restarting", what="restarting")
        with pytest.raises(sessions.ChildRunning) as info:
            system.delete_child("a")
        assert str(info.value) == (
            "probe 'a' is restarting: terminate_child() it before delete_child()")
        gate.set()
        wait_until(lambda: system.get("a").state == "running", what="running")
        assert system.count_children().specs == 3


def test_delete_child_of_a_pool_and_a_supervisor_frees_the_names() -> None:
    with sessions.start(tree_config()) as system:
        system.terminate_child("s")
        assert system.get("p").state == "stopped"
        system.delete_child("s")
        assert [c.name for c in system.which_children()] == ["a", "b"]
        for name in ("s", "p"):
            with pytest.raises(KeyError):
                system.child_spec(name)
        with pytest.raises(KeyError):
            system.which_children("s")
        with pytest.raises(KeyError):
            system.stats("p")
        system.start_child("s", {"kind": PROBE})
        system.start_child("p", {"kind": PROBE})
        assert [c.name for c in system.which_children()] == ["a", "b", "s", "p"]


def test_terminate_and_restart_a_supervisor() -> None:
    with sessions.start(tree_config()) as system:
        p = system.get("p")
        system.terminate_child("s")
        assert [(c.name, c.state) for c in system.which_children()] == [
            ("a", "running"), ("s", "stopped"), ("b", "running")]
        with pytest.raises(sessions.ResourceUnavailable):
            p.echo(1).result(5)
        system.restart_child("s")
        assert p.echo(2).result(5) == 2
        assert system.which_children()[1] == ChildInfo("s", "supervisor", "supervisor",
                                                       "running", 1)


# -- check_childspecs ------------------------------------------------------------------


def test_check_childspecs_shapes() -> None:
    with pytest.raises(ConfigError) as info:
        sessions.check_childspecs([{"kind": PROBE}])  # type: ignore[arg-type]
    assert info.value.errors == [("", "expected a mapping of name to spec, got list")]
    with pytest.raises(ConfigError) as info:
        sessions.check_childspecs({"a": "probe", "b": {"kind": "tests.test_system_api:Picky",
                                                       "size": 20}})
    assert info.value.errors == [
        ("resources.a", "expected a table, got str"),
        ("resources.b",
         "kind 'tests.test_system_api:Picky' rejected its options: size 20 is too large")]
    sessions.check_childspecs({})
    sessions.check_childspecs({"c": {"kind": "tests.test_system_api:Picky", "size": 10}})


# -- the circuit breaker at the handle ------------------------------------------------


def test_a_probe_refused_by_a_stopped_resource_opens_the_circuit_again() -> None:
    """The half-open probe call that never ran (its resource was terminated) is a
    failure: the circuit opens again for another reset_timeout."""
    clock = FakeClock()
    cfg = config({"a": {"breaker": {"failures": 1, "reset_timeout": 10}}}, max_restarts=50)
    with sessions.start(cfg, clock=clock) as system:
        a = system.get("a")
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: a.state == "running", what="restart")
        refused = a.echo(0)
        assert refused.done()
        assert (refused.resource, refused.method) == ("a", "echo")
        with pytest.raises(sessions.ResourceUnavailable) as info:
            refused.result(0)
        assert info.value.resource == "a"
        assert str(info.value) == (
            "circuit open for resource 'a' after 1 consecutive failures "
            "(last: ProbeBroken: link lost); next probe in 10.0s")
        system.terminate_child("a")
        clock.advance(11)
        probe = a.echo(1)
        with pytest.raises(sessions.ResourceUnavailable, match="terminated"):
            probe.result(5)
        wait_until(lambda: a.circuit == "open", what="circuit open again")
        with pytest.raises(sessions.ResourceUnavailable) as info:
            a.echo(2).result(0)
        assert "next probe in 10.0s" in str(info.value)
        assert "ResourceUnavailable" in str(info.value)


def test_a_probe_that_fails_as_a_caller_error_closes_the_circuit() -> None:
    """Only a fault counts against the resource: a probe raising the caller's error
    proves the connection works."""
    clock = FakeClock()
    cfg = config({"a": {"breaker": {"failures": 1, "reset_timeout": 10}}}, max_restarts=50)
    with sessions.start(cfg, clock=clock) as system:
        a = system.get("a")
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: a.state == "running", what="restart")
        clock.advance(11)
        with pytest.raises(ValueError):
            a.fail().result(5)
        wait_until(lambda: a.circuit == "closed", what="circuit closed")
        assert a.echo(3).result(5) == 3


def test_a_subscriber_hears_only_what_happens_after_it_subscribed() -> None:
    """start() returns once the boot events have been delivered: a subscriber added then
    never hears them, and unsubscribing stops the delivery."""
    rec, other = Recorder(), Recorder()
    with sessions.start(config(["a", "b", "c"])) as system:
        system.subscribe(rec)
        unsubscribe = system.subscribe(other)
        unsubscribe()
        system.restart_child("b")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "b")
        assert [(e.name, e.restarts) for e in rec.of(ChildStarted)] == [("b", 1)]
    assert other.events == []


def open_circuit_held(system: sessions.System) -> tuple[sessions.Handle, threading.Event]:
    """Resource ``a`` (a breaker that opens on one failure) faulted: its circuit is
    open and its reconnect held until the returned gate is set."""
    a = system.get("a")
    gate = threading.Event()
    controls("a").connect_gate = gate
    with pytest.raises(sessions.ResourceFault):
        a.break_it().result(5)
    wait_until(lambda: a.circuit == "open", what="circuit open")
    return a, gate


def test_a_probe_that_timed_out_in_the_queue_opens_the_circuit_again() -> None:
    """The half-open probe waited behind a reconnect past its call_timeout and never ran
    (CallTimeout, started False): a failure, the circuit opens again."""
    clock = FakeClock()
    cfg = config({"a": {"breaker": {"failures": 1, "reset_timeout": 10}, "call_timeout": 0.05}},
                 max_restarts=50)
    with sessions.start(cfg, clock=clock) as system:
        a, gate = open_circuit_held(system)
        clock.advance(11)
        probe = a.echo(1)
        with pytest.raises(sessions.CallTimeout) as info:
            probe.result(5)
        assert info.value.started is False
        wait_until(lambda: a.circuit == "open", what="circuit open again")
        with pytest.raises(sessions.ResourceUnavailable, match="CallTimeout"):
            a.echo(2).result(0)
        gate.set()


# -- a pool's own supervisor -------------------------------------------------------------


def test_a_pool_restarts_only_the_faulted_member_with_its_supervisors_backoff() -> None:
    """A pool is a one_for_one supervisor of its members, with the backoff of the
    supervisor the pool is under."""
    rec = Recorder()
    cfg = config({"p": {"pool_size": 3, "supervisor": "s"}},
                 supervisors={"s": {"backoff": {"initial": 0.02, "multiplier": 1.5,
                                                "jitter": 0.0}}})
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        with pytest.raises(sessions.ResourceFault):
            system.get("p").break_it().result(5)
        (started,) = rec.wait_for(lambda e: isinstance(e, ChildStarted))
        restarting = rec.of(ChildRestarting)
        assert [(e.supervisor, e.name, e.delay, e.attempt) for e in restarting] == [
            ("p", started.name, 0.02, 1)]
        assert sorted(controls(f"p#{i}").connects for i in range(3)) == [1, 1, 2]


def test_a_pool_has_the_intensity_of_its_supervisor() -> None:
    """Its members' restarts are counted against ``max_restarts`` in ``period`` of the
    supervisor the pool is under: one too many and the pool gives up."""
    clock = FakeClock()
    rec = Recorder()
    cfg = config({"p": {"pool_size": 2}}, max_restarts=1, period=100)
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        p = system.get("p")
        with pytest.raises(sessions.ResourceFault):
            p.break_it().result(5)
        rec.wait_for(lambda e: isinstance(e, ChildStarted))
        clock.advance(50)
        with pytest.raises(sessions.ResourceFault):
            p.break_it().result(5)
        (gave_up,) = rec.wait_for(lambda e: isinstance(e, SupervisorGaveUp))
        assert gave_up.supervisor == "p"
        assert "more than 1 restarts" in gave_up.reason
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "p")
        assert p.state == "running"
        assert system.which_children() == [ChildInfo("p", "resource", "probe", "running", 1)]


# -- status_rows: the tree drawing of `sessions status` and the demo ------------------


def _rows_config() -> dict[str, Any]:
    return config({"a": {}, "x": {"supervisor": "s1"}, "p": {"supervisor": "s1", "pool_size": 2},
                   "y": {"supervisor": "s2"}, "z": {"supervisor": "s3"}},
                  supervisors={"s1": {}, "s2": {}, "s3": {"parent": "s2"}})


def test_status_rows_draw_the_tree_in_start_order() -> None:
    """Each node with the prefix of its branch; a pool is a leaf (its members are not
    drawn); the last child of a node gets the closing branch and no bar below it."""
    with sessions.start(_rows_config()) as system:
        tree = system.status()
    rows = [(prefix, node["name"]) for prefix, node in status_rows(tree)]
    assert rows == [
        ("", "root"),
        ("├── ", "a"),
        ("├── ", "s1"),
        ("│   ├── ", "x"),
        ("│   └── ", "p"),
        ("└── ", "s2"),
        ("    ├── ", "y"),
        ("    └── ", "s3"),
        ("        └── ", "z"),
    ]
    assert all(node is not None for _, node in status_rows(tree))
    assert next(iter(status_rows(tree)))[1] is tree


def test_status_rows_with_other_glyphs_and_a_subtree() -> None:
    with sessions.start(_rows_config()) as system:
        s2 = system.status()["children"][2]
    rows = [(prefix, node["name"]) for prefix, node in
            status_rows(s2, ("+ ", "` ", "| ", "  "))]
    assert rows == [("", "s2"), ("+ ", "y"), ("` ", "s3"), ("  ` ", "z")]
    leaf = {"name": "solo", "type": "resource"}
    assert list(status_rows(leaf)) == [("", leaf)]
    empty = {"name": "root", "type": "supervisor"}
    assert list(status_rows(empty)) == [("", empty)]


def test_a_cancelled_probe_opens_the_circuit_again() -> None:
    """A probe cancelled by its caller before it ran tells nothing about the resource:
    the circuit opens again for another reset_timeout, then the next probe goes through
    (it used to stay half-open for ever, refusing every call)."""
    clock = FakeClock()
    cfg = config({"a": {"breaker": {"failures": 1, "reset_timeout": 10}}}, max_restarts=50)
    with sessions.start(cfg, clock=clock) as system:
        a, gate = open_circuit_held(system)
        clock.advance(11)
        probe = a.echo(1)
        assert probe.cancel()
        assert a.circuit == "open"
        gate.set()
        wait_until(lambda: a.state == "running", what="reconnected")
        with pytest.raises(sessions.ResourceUnavailable) as info:
            a.echo(2).result(0)
        assert str(info.value) == (
            "circuit open for resource 'a' after 1 consecutive failures "
            "(last: the probe call echo() was cancelled); next probe in 10.0s")
        clock.advance(11)
        assert a.echo(3).result(5) == 3
        assert a.circuit == "closed"


def test_a_view_s_calls_are_refused_and_probed_under_their_own_names() -> None:
    """``handle.urgent`` and ``handle.coalescing(key)`` go through the same breaker: a
    refused call's future names its method, and a cancelled probe made through a view
    is named in the circuit's reason."""
    clock = FakeClock()
    cfg = config({"a": {"breaker": {"failures": 1, "reset_timeout": 10}}}, max_restarts=50)
    with sessions.start(cfg, clock=clock) as system:
        a, gate = open_circuit_held(system)
        refused = a.coalescing("k").echo(0)
        assert (refused.resource, refused.method) == ("a", "echo")
        assert isinstance(refused.exception(0), sessions.ResourceUnavailable)
        clock.advance(11)
        probe = a.urgent.whoami()
        assert probe.cancel()
        gate.set()
        with pytest.raises(sessions.ResourceUnavailable) as info:
            a.echo(2).result(0)
        assert "(last: the probe call whoami() was cancelled)" in str(info.value)


def test_calls_through_a_breaker_keep_their_method_and_arguments() -> None:
    with sessions.start(config({"b": {"breaker": {}}})) as system:
        b = system.get("b")
        future = b.echo(value="kw")
        assert (future.resource, future.method) == ("b", "echo")
        assert future.result(5) == "kw"
        assert b.call("echo", value=2).result(5) == 2


# -- terminate and delete: the words and the states ------------------------------------


def test_terminate_child_says_so_to_callers_and_subscribers() -> None:
    rec = Recorder()
    with sessions.start(config(["a", "b"])) as system:
        system.subscribe(rec)
        system.terminate_child("a")
        with pytest.raises(sessions.ResourceUnavailable) as info:
            system.get("a").echo(1).result(5)
        assert str(info.value) == "probe 'a' was terminated (terminated)"
        stopped = rec.wait_for(lambda e: isinstance(e, ChildStopped))
        assert [(e.supervisor, e.name, e.reason) for e in stopped] == [
            ("root", "a", "terminated")]


def test_delete_child_refuses_a_child_still_starting() -> None:
    with sessions.start(config(["a"])) as system:
        gate = threading.Event()
        controls("d").connect_gate = gate
        adding = in_thread(lambda: system.start_child("d", {"kind": PROBE}))
        wait_until(lambda: [(c.name, c.state) for c in system.which_children()] == [
            ("a", "running"), ("d", "starting")], what="d starting")
        with pytest.raises(sessions.ChildRunning) as info:
            system.delete_child("d")
        assert str(info.value) == (
            "probe 'd' is starting: terminate_child() it before delete_child()")
        gate.set()
        assert adding.result(5).echo("d").result(5) == "d"


class Slow(ResourceActor):
    """A kind whose ``max_pool_size`` (asked on the supervision thread when a child is
    added) waits for a gate: it holds the supervision thread inside one add."""

    kind = "slow"
    entered = threading.Event()
    gate = threading.Event()

    @classmethod
    def max_pool_size(cls, options: Any) -> None:
        cls.entered.set()
        cls.gate.wait(10)

    def connect(self) -> object:
        return object()

    def disconnect(self, resource: object) -> None:
        return None


def _waiting_on_the_supervision_thread(thread_name: str) -> bool:
    """Whether ``thread_name`` waits on a future: for ``start_child``, before its child
    is added, that is the call it handed to the (held) supervision thread."""
    ident = next((t.ident for t in threading.enumerate() if t.name == thread_name), None)
    frame = sys._current_frames().get(ident) if ident is not None else None
    while frame is not None:
        code = frame.f_code
        if code.co_name == "result" and code.co_filename.endswith(
                os.path.join("concurrent", "futures", "_base.py")):
            return True
        frame = frame.f_back
    return False


def test_two_start_child_calls_racing_for_one_name() -> None:
    """Both pass the first name check; the supervision thread adds the first and refuses
    the second, whose name is then in use."""
    Slow.entered.clear()
    Slow.gate.clear()
    with sessions.start(config(["a"])) as system:
        first = in_thread(lambda: system.start_child("d", {"kind": "tests.test_system_api:Slow"}))
        assert Slow.entered.wait(5)
        second: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def add_again() -> None:
            try:
                second.set_result(system.start_child("d", {"kind": PROBE}))
            except BaseException as exc:
                second.set_exception(exc)

        threading.Thread(target=add_again, name="second-adder", daemon=True).start()
        wait_until(lambda: _waiting_on_the_supervision_thread("second-adder"),
                   what="the second add queued")
        Slow.gate.set()
        assert first.result(5).kind == "slow"
        with pytest.raises(ConfigError) as info:
            second.result(5)
        assert info.value.errors == [("resources.d", "name is already in use")]
        assert [c.name for c in system.which_children()] == ["a", "d"]
        assert system.get("d").kind == "slow"


def test_a_late_cleanup_of_a_failed_add_leaves_a_new_child_of_that_name_alone() -> None:
    """start_child cleans up after a failed add by name, on the supervision thread. When
    the failed child's supervisor gave up meanwhile, the name was freed already, and
    another start_child may have taken it before the cleanup runs: the cleanup must
    leave that child registered. (The window cannot be steered through the API; the
    cleanup step is run directly, as the late one would run.)"""
    with sessions.start(config(["a"])) as system:
        f = system.start_child("f", {"kind": PROBE})
        system._kernel.call(system._forget, "f")
        assert system.get("f") is f and f.echo(1).result(5) == 1
        assert [c.name for c in system.which_children()] == ["a", "f"]
        system.terminate_child("f")
        system.delete_child("f")
        system._kernel.call(system._forget, "f")  # nothing left to forget: no error
        with pytest.raises(KeyError):
            system.get("f")


def test_the_rng_given_to_start_draws_the_backoff_jitter() -> None:
    """Two systems given equally seeded generators wait the same jittered delays."""
    def delays(seed: int) -> list[float]:
        rec = Recorder()
        cfg = config(["a"], max_restarts=10,
                     backoff={"initial": 0.01, "max": 0.01, "jitter": 1.0})
        with sessions.start(cfg, rng=random.Random(seed)) as system:
            system.subscribe(rec)
            for n in range(1, 4):
                with pytest.raises(sessions.ResourceFault):
                    system.get("a").break_it().result(5)
                rec.wait_for(lambda e: isinstance(e, ChildStarted), count=n)
        return [e.delay for e in rec.of(ChildRestarting)]

    first = delays(7)
    assert len(first) == 3
    assert delays(7) == first
    assert delays(8) != first


class Limited(ResourceActor):
    """A kind whose pool limit depends on its options (as a driver's might)."""

    kind = "limited"

    def __init__(self, limit: int = 2) -> None:
        super().__init__()

    @classmethod
    def max_pool_size(cls, options: Any) -> tuple[int, str]:
        return options.get("limit", 2), f"the device takes {options.get('limit', 2)} owners"

    def connect(self) -> object:
        return object()

    def disconnect(self, resource: object) -> None:
        return None


def test_a_pool_size_is_lowered_to_the_kinds_limit_for_its_options(
        caplog: pytest.LogCaptureFixture) -> None:
    kind = "tests.test_system_api:Limited"
    cfg = {"resources": {"at": {"kind": kind, "pool_size": 2},
                         "over": {"kind": kind, "pool_size": 5, "limit": 3}}}
    with caplog.at_level("WARNING", logger="sessions"), sessions.start(cfg) as system:
        tree = system.status()["children"]
        assert [(n["name"], n["type"], len(n.get("children", []))) for n in tree] == [
            ("at", "pool", 2), ("over", "pool", 3)]
    warnings = [r.getMessage() for r in caplog.records if r.name == "sessions"]
    assert warnings == ["resources.over.pool_size = 5 lowered to 3: the device takes 3 owners"]


# -- stalls -----------------------------------------------------------------------------


def test_stalls_lists_work_stuck_past_its_stall_timeout_until_it_ends() -> None:
    """Empty while healthy; a call that abort() cannot reach is listed (abandoned) from
    the stall watchdog's verdict until its thread returns."""
    with sessions.start(config({"a": {"call_timeout": 0.1, "stall_timeout": 0.2}, "b": {}},
                               max_restarts=100)) as system:
        assert system.stalls() == []
        started, release = threading.Event(), threading.Event()
        stuck = system.get("a").stubborn(started, release)
        assert started.wait(5)
        wait_until(lambda: bool(system.stalls()), what="the stall to be listed")
        [stall] = system.stalls()
        assert (stall.resource, stall.what) == ("a", "stubborn()")
        assert stall.seconds is not None and stall.seconds > 0.2
        wait_until(lambda: all(s.abandoned for s in system.stalls()), what="the abandonment")
        [stall] = system.stalls()
        assert (stall.resource, stall.what, stall.abandoned) == ("a", "stubborn()", True)
        assert stall.seconds is not None and 0.2 < stall.seconds < 30
        with pytest.raises(sessions.ResourceFault, match="stalled"):
            stuck.result(5)
        wait_until(lambda: system.get("a").state == "running", what="a restarted meanwhile")
        assert system.stalls()  # the old thread is still blocked
        release.set()
        wait_until(lambda: system.stalls() == [], what="the thread to end")
    assert system.stalls() == []


def test_stalls_lists_a_call_stuck_past_its_stall_timeout_while_its_resource_stops() -> None:
    """terminate_child retires the incarnation and waits up to shutdown_timeout for the
    call in progress; a call stuck past its stall_timeout meanwhile is a stall (not yet
    abandoned), until it returns."""
    with sessions.start(config({"a": {"stall_timeout": 1.0, "shutdown_timeout": 60.0},
                                "b": {}})) as system:
        started, release = threading.Event(), threading.Event()
        stuck = system.get("a").stubborn(started, release)
        assert started.wait(5)
        stopping = in_thread(lambda: system.terminate_child("a"))
        wait_until(lambda: system.get("a").state == "stopped", what="a to be retired")
        wait_until(lambda: bool(system.stalls()), timeout=30, what="the stall to be listed")
        [stall] = system.stalls()
        assert (stall.resource, stall.what, stall.abandoned) == ("a", "stubborn()", False)
        assert stall.seconds is not None and 1.0 < stall.seconds < 30
        release.set()
        assert stuck.result(5) == 1
        stopping.result(10)
        assert system.stalls() == []


def test_stalls_lists_a_stuck_incarnation_behind_one_whose_thread_has_ended(
        caplog: pytest.LogCaptureFixture) -> None:
    """Incarnations given up on are kept while their threads may still be blocked; one
    whose thread has ended since is skipped, and a later stuck one is still listed."""
    with caplog.at_level("ERROR", logger="sessions"), sessions.start(config(
            {"a": {"call_timeout": 0.1, "stall_timeout": 0.2}}, max_restarts=100)) as system:
        a = system.get("a")

        def stick() -> threading.Event:
            started, release = threading.Event(), threading.Event()
            stuck = a.stubborn(started, release)
            assert started.wait(5)
            with pytest.raises(sessions.ResourceFault, match="stalled"):
                stuck.result(5)
            return release

        def left_behind() -> int:
            return sum("left behind" in r.getMessage() for r in caplog.records)

        first = stick()
        wait_until(lambda: left_behind() == 1, what="the first incarnation left behind")
        first.set()
        wait_until(lambda: system.stalls() == [], what="its thread to end")
        second = stick()
        wait_until(lambda: left_behind() == 2, what="the second incarnation left behind")
        try:
            assert [(s.resource, s.what, s.abandoned) for s in system.stalls()] == [
                ("a", "stubborn()", True)]
        finally:
            second.set()
        wait_until(lambda: system.stalls() == [], what="its thread to end")


def test_stalls_lists_a_call_past_its_stall_timeout_before_the_watchdog_acts() -> None:
    """While the stall watchdog has not acted (here the supervision thread is wedged, so
    it cannot), a call past its stall_timeout is listed, not yet abandoned."""
    with sessions.start(config({"a": {"stall_timeout": 0.2}})) as system:
        stall = system.faults("a").stall_next_call()
        held = system.get("a").echo("held")
        assert stall.started.wait(5)
        release = threading.Event()
        system._kernel.post(release.wait, 30)  # wedged for longer than the wait below
        try:
            wait_until(lambda: any(s.resource == "a" for s in system.stalls()),
                       what="the stalled call listed")
            [listed] = [s for s in system.stalls() if s.resource == "a"]
            assert (listed.what, listed.abandoned) == ("echo()", False)
            assert listed.seconds is not None and 0.2 < listed.seconds < 30
        finally:
            release.set()
        with pytest.raises(sessions.ResourceFault):
            held.result(5)  # the watchdog, free again, aborted it
        wait_until(lambda: system.stalls() == [], what="nothing stuck any more")


class DeafConnect(ResourceActor):
    """Its first connect blocks until ``RELEASE`` is set, and abort() cannot reach it."""

    RELEASE = threading.Event()
    connects = 0

    def connect(self) -> None:
        DeafConnect.connects += 1
        if DeafConnect.connects == 1:
            DeafConnect.RELEASE.wait(10)

    def echo(self, value: Any) -> Any:
        return value


def test_stalls_lists_a_connect_given_up_on_whose_thread_is_still_blocked() -> None:
    DeafConnect.RELEASE.clear()
    DeafConnect.connects = 0
    cfg = {"supervisor": {"backoff": {"initial": 0.01, "jitter": 0}},
           "resources": {"a": {"kind": DeafConnect, "connect_timeout": 0.2}}}
    with sessions.start(cfg, partial=True) as system:
        try:
            wait_until(lambda: system.get("a").state == "running", what="a up on its retry")
            [stall] = system.stalls()
            assert (stall.resource, stall.what, stall.abandoned) == ("a", "connect()", True)
            assert stall.seconds is None  # a connect does not count as a call's busy time
        finally:
            DeafConnect.RELEASE.set()
        wait_until(lambda: system.stalls() == [], what="the blocked connect returned")


def test_stalls_lists_a_stuck_supervision_thread() -> None:
    """The supervision thread turns at least every 0.1 s; stuck (here: a step that
    blocks, which only a bug would do) it is listed after SUPERVISION_STALL."""
    with sessions.start(config(["a"])) as system:
        release = threading.Event()
        system._kernel.post(release.wait, 30)  # wedged for longer than the wait below
        try:
            wait_until(lambda: bool(system.stalls()), timeout=10, what="the stuck loop")
            [stall] = system.stalls()
            assert (stall.resource, stall.what, stall.abandoned) == ("supervisor", "a step",
                                                                     False)
            assert stall.seconds is not None
            assert sessions._system.SUPERVISION_STALL < stall.seconds < 30
        finally:
            release.set()
        wait_until(lambda: system.stalls() == [], what="the loop to turn again")
