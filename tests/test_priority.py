"""The priority lane (``handle.urgent``) and latest-value-wins calls
(``handle.coalescing(key)``): queue order, the ``Superseded`` outcome, and that every
other call guarantee (exactly-once resolution, deadlines, nothing runs after its caller
gave up, refusals) still holds for them."""

from __future__ import annotations

import concurrent.futures
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import sessions
from sessions import Superseded
from sessions.messages import ChildStarted
from tests.kinds import controls
from tests.support import Recorder, config, wait_until


@pytest.fixture
def held() -> Iterator[tuple[sessions.Handle, threading.Event]]:
    """Resource ``a`` busy with a call that waits for the returned event: what is queued
    behind it stays queued until the test releases it."""
    with sessions.start(config({"a": {"call_timeout": 10.0}})) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        blocker = a.block(started, release)
        assert started.wait(5)
        try:
            yield a, release
        finally:
            release.set()
        assert blocker.result(5) == "released"  # the running call was never touched


def order() -> list[tuple[Any, Any]]:
    return [(caller, seq) for caller, seq, _ in controls("a").log]


def test_urgent_calls_go_before_queued_plain_calls_in_their_own_order(
        held: tuple[sessions.Handle, threading.Event]) -> None:
    a, release = held
    plain = [a.record("log", i) for i in range(200)]
    urgent = [a.urgent.record("estop", i) for i in range(3)]
    later = a.record("log", 200)
    assert a.queued == 204
    release.set()
    assert [f.result(5) for f in urgent + plain + [later]] == [1] * 204
    assert order() == [*[("estop", i) for i in range(3)], *[("log", i) for i in range(201)]]


def test_call_by_name_and_repr_of_an_urgent_handle(
        held: tuple[sessions.Handle, threading.Event]) -> None:
    a, release = held
    plain = a.record("log", 0)
    urgent = a.urgent.call("record", "estop", 0)
    assert repr(a.urgent) == "<HandleView 'a' urgent>"
    release.set()
    assert urgent.result(5) == plain.result(5) == 1
    assert order() == [("estop", 0), ("log", 0)]


def test_a_newer_keyed_call_replaces_a_queued_one_in_its_place(
        held: tuple[sessions.Handle, threading.Event]) -> None:
    a, release = held
    motor = a.coalescing("setpoint:motor1")
    first = a.record("log", 0)
    setpoints = [motor.record("motor1", v) for v in range(10)]
    other = a.coalescing("setpoint:motor2").record("motor2", 0)
    last_log = a.record("log", 1)
    assert a.queued == 4  # 10 setpoints for motor1 are one queued call
    release.set()
    outcomes = [f.result(5) for f in setpoints]
    assert outcomes[-1] == 1
    for value, outcome in enumerate(outcomes[:-1]):
        assert outcome == Superseded("a", "record", "setpoint:motor1"), value
    assert (first.result(5), other.result(5), last_log.result(5)) == (1, 1, 1)
    # The newest value ran in the place the first one had taken in line.
    assert order() == [("log", 0), ("motor1", 9), ("motor2", 0), ("log", 1)]


def test_a_running_keyed_call_is_never_replaced() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        motor = a.coalescing("k")
        started, release = threading.Event(), threading.Event()
        running = motor.block(started, release)
        assert started.wait(5)
        queued = motor.record("k", 1)
        newest = motor.record("k", 2)
        release.set()
        assert running.result(5) == "released"
        assert queued.result(5) == Superseded("a", "record", "k")
        assert newest.result(5) == 1
        assert order() == [("k", 2)]
        outcomes = system.stats("a").outcomes
        assert (outcomes["superseded"], outcomes["ok"]) == (1, 2)


def test_urgent_and_keyed_together_and_lane_changes(
        held: tuple[sessions.Handle, threading.Event]) -> None:
    a, release = held
    a.record("log", 0)
    normal_k = a.coalescing("k").record("k", "normal")
    a.urgent.record("estop", 0)
    urgent_k = a.urgent.coalescing("k").record("k", "urgent")  # moves to the urgent lane
    a.urgent.record("estop", 1)
    again = a.coalescing("k").record("k", "normal again")  # back behind the plain calls
    assert repr(a.urgent.coalescing("k")) == "<HandleView 'a' urgent coalescing='k'>"
    assert repr(a.coalescing("k")) == "<HandleView 'a' coalescing='k'>"
    release.set()
    assert isinstance(normal_k.result(5), Superseded)
    assert isinstance(urgent_k.result(5), Superseded)
    assert again.result(5) == 1
    assert order() == [("estop", 0), ("estop", 1), ("log", 0), ("k", "normal again")]


def test_an_urgent_keyed_call_keeps_its_place_among_urgent_calls(
        held: tuple[sessions.Handle, threading.Event]) -> None:
    a, release = held
    a.record("log", 0)
    a.urgent.coalescing("k").record("k", 1)
    a.urgent.record("estop", 0)
    a.urgent.coalescing("k").record("k", 2)
    release.set()
    wait_until(lambda: len(order()) == 3, timeout=5, what="three calls ran")
    assert order() == [("k", 2), ("estop", 0), ("log", 0)]


def test_superseded_is_a_value_not_an_error_and_pickles() -> None:
    outcome = Superseded("a", "record", "k")
    assert not isinstance(outcome, BaseException)
    assert pickle.loads(pickle.dumps(outcome)) == outcome
    with pytest.raises(AttributeError):
        outcome.key = "other"  # type: ignore[misc]


def test_a_cancelled_keyed_call_is_replaced_without_a_superseded_outcome(
        held: tuple[sessions.Handle, threading.Event]) -> None:
    a, release = held
    old = a.coalescing("k").record("k", 1)
    assert old.cancel()
    new = a.coalescing("k").record("k", 2)
    release.set()
    assert new.result(5) == 1
    assert old.cancelled()
    assert order() == [("k", 2)]


def test_marked_calls_keep_their_deadline_and_expire_unrun() -> None:
    with sessions.start(config({"a": {"call_timeout": 0.3}})) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        a.block(started, release)
        assert started.wait(5)
        urgent = a.urgent.record("u", 0)
        keyed = a.coalescing("k").record("k", 0)
        for future in (urgent, keyed):
            with pytest.raises(sessions.CallTimeout) as info:
                future.result()
            assert info.value.started is False
        release.set()
        assert a.echo("after").result(5) == "after"
        assert order() == []


def test_marked_calls_queued_while_nobody_serves_expire_in_time() -> None:
    """Urgent calls are queued out of arrival order: while the resource restarts, expiry
    (which reaches callers waiting through a callback, not in ``result()``) still finds
    each call at its own deadline, not only when the head's has passed."""
    with sessions.start(config({"a": {"call_timeout": 0.5}})) as system:
        a = system.get("a")
        gate = threading.Event()
        controls("a").connect_gate = gate
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: a.state == "restarting", what="the restart to begin")
        patient = a.record("plain", 0)
        time.sleep(0.3)  # not a wait for an event: two deadlines 0.3 s apart
        urgent = a.urgent.record("urgent", 0)  # queued ahead, deadline 0.3 s later
        keyed = a.coalescing("k").record("k", 0)
        done, _ = concurrent.futures.wait([patient], timeout=5)  # no result() call
        assert patient in done and not urgent.done()
        assert isinstance(patient.exception(0), sessions.CallTimeout)
        done, _ = concurrent.futures.wait([urgent, keyed], timeout=5)
        assert done == {urgent, keyed}
        gate.set()
        assert a.echo("ok").result(5) == "ok"
        assert order() == []


def test_marked_calls_to_a_stopped_resource_are_refused() -> None:
    system = sessions.start(config(["a"]))
    a = system.get("a")
    system.stop()
    for future in (a.urgent.echo(1), a.coalescing("k").echo(2)):
        with pytest.raises(sessions.ResourceUnavailable) as info:
            future.result(5)
        assert info.value.resource == "a"


def test_every_marked_future_resolves_once_when_the_resource_stops() -> None:
    system = sessions.start(config({"a": {"call_timeout": 10.0}}))
    a = system.get("a")
    started, release = threading.Event(), threading.Event()
    a.block(started, release)
    assert started.wait(5)
    futures = [a.urgent.record("u", i) for i in range(5)]
    futures += [a.coalescing(f"k{i % 2}").record("k", i) for i in range(6)]
    stopper = threading.Thread(target=system.stop)
    stopper.start()
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    for future in futures:
        assert future.done()
    superseded = [f for f in futures if not f.exception() and isinstance(f.result(), Superseded)]
    assert len(superseded) == 4  # k0: 3 calls, k1: 3 calls, one of each kept


def test_bad_coalescing_keys_are_type_errors_naming_the_key() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        for key in ("", None, 3):
            with pytest.raises(TypeError, match=f"non-empty str, not {key!r}"):
                a.coalescing(key)  # type: ignore[arg-type]
        with pytest.raises(AttributeError, match="no method 'nope'"):
            _ = a.urgent.nope
        with pytest.raises(AttributeError, match=r"^_connect$"):  # never a kind's method
            _ = a.coalescing("k")._connect


def test_a_pool_keeps_one_key_on_one_member() -> None:
    """In a pool, a key's calls stay on the member that has its pending call, so an older
    value can neither run after a newer one on another connection nor escape being
    replaced; other calls still spread over the members."""
    with sessions.start(config({"p": {"pool_size": 3, "call_timeout": 10.0}})) as system:
        p = system.get("p")
        blocks = []
        releases = []
        for _ in range(3):  # every member busy
            started, release = threading.Event(), threading.Event()
            blocks.append(p.block(started, release))
            releases.append(release)
            assert started.wait(5)
        keyed = [p.coalescing("k").whoami() for _ in range(20)]
        for release in releases:
            release.set()
        outcomes = [f.result(5) for f in keyed]
        assert all(isinstance(o, Superseded) for o in outcomes[:-1])
        assert {(o.method, o.key) for o in outcomes[:-1]} == {("whoami", "k")}
        assert not isinstance(outcomes[-1], Superseded)
        assert {f.result(5) for f in blocks} == {"released"}
        members = {p.whoami().result(5)[0] for _ in range(30)}
        assert len(members) > 1


def test_urgent_calls_to_a_pool_go_first_on_the_member_they_reach() -> None:
    with sessions.start(config({"p": {"pool_size": 2, "call_timeout": 10.0}})) as system:
        p = system.get("p")
        releases = []
        for _ in range(2):  # both members busy
            started, release = threading.Event(), threading.Event()
            p.block(started, release)
            releases.append(release)
            assert started.wait(5)
        plain = [p.record("log", i) for i in range(6)]
        urgent = [p.urgent.call("record", "estop", seq=i) for i in range(2)]
        urgent.append(p.urgent.coalescing("k").record("estop", 2))
        assert [f.method for f in urgent] == ["record"] * 3
        for release in releases:
            release.set()
        assert {f.result(5) for f in plain + urgent} == {1}
        log = [(caller, seq) for caller, seq, _ in controls("p#0").log + controls("p#1").log]
        assert sorted(log) == sorted([("estop", i) for i in range(3)]
                                     + [("log", i) for i in range(6)])
        for member in ("p#0", "p#1"):  # on each member, its urgent calls ran first
            ran = [caller for caller, _, _ in controls(member).log]
            assert ran == sorted(ran, key=lambda caller: caller != "estop"), (member, ran)


def test_urgent_calls_wait_for_a_begun_lease_to_finish() -> None:
    """A lease is one caller's block on the connection: an urgent call does not cut into
    it, but goes before every plain call queued behind it."""
    with sessions.start(config({"a": {"call_timeout": 10.0}})) as system:
        a = system.get("a")
        with a.lease() as held:
            held.record("lease", 0).result(5)
            plain = a.record("log", 0)
            urgent = a.urgent.record("estop", 0)
            held.record("lease", 1).result(5)
            assert not urgent.done()
        assert urgent.result(5) == plain.result(5) == 1
        assert order() == [("lease", 0), ("lease", 1), ("estop", 0), ("log", 0)]


def test_marked_calls_survive_a_restart_in_their_order() -> None:
    rec = Recorder()
    with sessions.start(config({"a": {"call_timeout": 10.0}})) as system:
        system.subscribe(rec)
        a = system.get("a")
        gate = threading.Event()
        controls("a").connect_gate = gate
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        plain = a.record("log", 0)
        setpoints = [a.coalescing("sp").record("sp", v) for v in range(5)]
        urgent = a.urgent.record("estop", 0)
        gate.set()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert [urgent.result(5), plain.result(5), setpoints[-1].result(5)] == [2, 2, 2]
        assert order() == [("estop", 0), ("log", 0), ("sp", 4)]


def test_an_urgent_call_goes_first_also_before_the_resource_has_served_anything() -> None:
    """The mailbox of a resource still connecting for the first time: plain calls queued,
    then an urgent one, which runs first once the connect is done."""
    gate = threading.Event()
    controls("d").connect_gate = gate
    with sessions.start(config(["a"])) as system:
        adding = concurrent.futures.ThreadPoolExecutor(1)
        added = adding.submit(system.start_child, "d", {"kind": "tests.kinds:Probe"})
        # Registered as soon as the add begins, before it connects.
        wait_until(lambda: "d" in [c.name for c in system.which_children()],
                   what="d being added")
        d = system.get("d")
        plain = [d.record("plain", i) for i in range(2)]
        urgent = d.urgent.record("urgent", 0)
        gate.set()
        assert added.result(5) is d
        adding.shutdown()
        for future in [*plain, urgent]:
            future.result(5)
        assert [(c, s) for c, s, _ in controls("d").log] == [
            ("urgent", 0), ("plain", 0), ("plain", 1)]
