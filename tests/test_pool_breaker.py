"""Pools (``pool_size``) and the circuit breaker (``breaker``), on the probe kind."""

from __future__ import annotations

import threading

import pytest

import sessions
from sessions.messages import ChildStarted, CircuitChanged
from tests.kinds import controls
from tests.support import FakeClock, Recorder, config, occupy, wait_until


def test_a_pool_spreads_calls_over_its_members() -> None:
    with sessions.start(config({"db": {"pool_size": 3}})) as system:
        db = system.get("db")
        threads = {db.whoami().result(5)[0] for _ in range(30)}
        assert threads == {"sessions-db#0", "sessions-db#1", "sessions-db#2"}
        tree = system.status()["children"][0]
        assert tree["type"] == "pool" and tree["kind"] == "probe"
        assert [c["name"] for c in tree["children"]] == ["db#0", "db#1", "db#2"]


def test_calls_go_to_the_least_loaded_member() -> None:
    with sessions.start(config({"db": {"pool_size": 3}})) as system:
        db = system.get("db")
        release = threading.Event()
        blockers = occupy(db, 2, release)
        busy = {f"sessions-db#{i}" for i in range(3)}
        free = [db.whoami().result(5)[0] for _ in range(6)]
        assert len(set(free)) == 1  # every call found the one idle member
        release.set()
        assert [b.result(5) for b in blockers] == ["released", "released"]
        assert set(free) < busy


def test_a_member_restarting_does_not_stop_the_others() -> None:
    rec = Recorder()
    with sessions.start(config({"db": {"pool_size": 2}})) as system:
        system.subscribe(rec)
        db = system.get("db")
        gate = threading.Event()
        for name in ("db#0", "db#1"):
            controls(name).connect_gate = gate  # the faulting member cannot reconnect yet
        with pytest.raises(sessions.ResourceFault):
            db.break_it().result(5)
        wait_until(
            lambda: (
                db.state == "running"
                and "restarting" in {c["state"] for c in system.status()["children"][0]["children"]}
            ),
            what="one member restarting",
        )
        served = {db.whoami().result(5)[0] for _ in range(10)}
        assert len(served) == 1  # the live member served all of them
        gate.set()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert db.restarts == 1


def test_pool_size_over_the_kind_limit_is_lowered(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config({"one": {"pool_size": 4}})
    cfg["resources"]["one"]["kind"] = "tests.test_pool_breaker:Single"
    with sessions.start(cfg) as system:
        assert system.status()["children"][0]["type"] == "resource"
    assert "pool_size = 4 lowered to 1: one owner only" in caplog.text


class Single(sessions.ResourceActor):
    kind = "single"

    @classmethod
    def max_pool_size(cls, options: object) -> tuple[int, str]:
        return 1, "one owner only"

    def connect(self) -> object:
        return object()


def test_breaker_opens_after_consecutive_failures_and_a_probe_closes_it() -> None:
    clock = FakeClock()
    rec = Recorder()
    cfg = config({"a": {"breaker": {"failures": 2, "reset_timeout": 30}}}, max_restarts=50)
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        a = system.get("a")
        with pytest.raises(ValueError):
            a.fail().result(5)  # a caller error does not count
        for _ in range(2):
            with pytest.raises(sessions.ResourceFault):
                a.break_it().result(5)
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open")
        refused = a.echo(1)
        assert refused.done()
        with pytest.raises(sessions.ResourceUnavailable, match="circuit open"):
            refused.result(0)
        assert a.circuit == "open"
        assert system.status()["children"][0]["circuit"] == "open"
        clock.advance(31)
        wait_until(lambda: a.state == "running", what="restart")
        assert a.echo("probe").result(5) == "probe"
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "closed")
        assert a.echo(2).result(5) == 2


def test_a_failed_probe_opens_the_circuit_again() -> None:
    clock = FakeClock()
    rec = Recorder()
    cfg = config({"a": {"breaker": {"failures": 1, "reset_timeout": 10}}}, max_restarts=50)
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        a = system.get("a")
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: a.state == "running", what="restart")
        clock.advance(11)
        probe = a.break_it()  # the probe faults
        second = a.echo(1)  # only one probe at a time: refused at once
        assert second.done()
        with pytest.raises(sessions.ResourceFault):
            probe.result(5)
        opened = rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open", 2)
        assert len(opened) == 2
        assert a.circuit == "open"


def test_failed_connects_count_toward_the_breaker() -> None:
    rec = Recorder()
    cfg = config({"a": {"breaker": {"failures": 3, "reset_timeout": 60}}}, max_restarts=50)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        controls("a").fail_connects = 5
        with pytest.raises(sessions.ResourceFault):
            system.get("a").break_it().result(5)
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open")
        assert system.get("a").circuit == "open"
