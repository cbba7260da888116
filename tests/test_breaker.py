"""The circuit breaker (``breaker = {failures, reset_timeout}``) and per-resource call
statistics, through handles, ``system.status()``, ``system.stats()`` and events.

Every breaker test runs on a ``FakeClock``: the circuit only half-opens when the test
advances it, so "next probe in" figures are exact.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest

import sessions
from sessions._runtime.breaker import Breaker
from sessions._runtime.stats import BUCKETS, OUTCOMES, RECENT, CallStats
from sessions.messages import ChildRestarting, ChildStarted, CircuitChanged
from tests.kinds import controls
from tests.support import FakeClock, Recorder, config, wait_until


def breaker_config(failures: int, reset_timeout: float, **spec: Any) -> dict[str, Any]:
    """Resource ``a`` with a breaker; restarts never exhaust the supervisor."""
    return config({"a": {"breaker": {"failures": failures, "reset_timeout": reset_timeout},
                         **spec}}, max_restarts=50)


def circuit(rec: Recorder) -> list[tuple[str, str, str]]:
    """The CircuitChanged events so far, as (name, state, reason)."""
    return [(e.name, e.state, e.reason) for e in rec.of(CircuitChanged)]


def wait_circuit(rec: Recorder, state: str, count: int = 1) -> None:
    rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == state, count)


def wait_restarted(rec: Recorder, restarts: int) -> None:
    """Until ``a`` has started for the ``restarts``-th time after its first start. Events
    are delivered in order, so every CircuitChanged emitted before it has arrived too."""
    rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "a"
                 and e.restarts == restarts)


def refusal(handle: Any) -> str:
    """The message of a call refused at once by the open circuit."""
    future = handle.echo("refused?")
    assert future.done(), "the call was not refused at once"
    with pytest.raises(sessions.ResourceUnavailable) as info:
        future.result(0)
    assert info.value.resource == "a"
    return str(info.value)


def fault(handle: Any, message: str = "link lost") -> None:
    with pytest.raises(sessions.ResourceFault):
        handle.break_it(message).result(5)


# --- counting failures ------------------------------------------------------------------


def test_one_failure_below_the_threshold_leaves_the_circuit_closed() -> None:
    rec = Recorder()
    with sessions.start(breaker_config(2, 30), clock=FakeClock()) as system:
        system.subscribe(rec)
        a = system.get("a")
        fault(a)
        wait_restarted(rec, 1)
        assert circuit(rec) == []
        assert a.circuit == "closed"
        assert system.status()["children"][0]["circuit"] == "closed"
        assert a.echo(1).result(5) == 1


def test_only_consecutive_failures_open_the_circuit() -> None:
    """A success between two failures starts the count again."""
    rec = Recorder()
    with sessions.start(breaker_config(2, 30), clock=FakeClock()) as system:
        system.subscribe(rec)
        a = system.get("a")
        for n in (1, 2, 3):
            fault(a, f"failure {n}")
            wait_restarted(rec, n)
            assert a.echo(n).result(5) == n  # resets the count
        assert circuit(rec) == []
        assert a.circuit == "closed"
        fault(a, "first in a row")
        wait_restarted(rec, 4)
        assert circuit(rec) == []
        fault(a, "second in a row")
        wait_circuit(rec, "open")
        assert circuit(rec) == [("a", "open", "ProbeBroken: second in a row")]
        assert a.circuit == "open"


def test_a_caller_error_breaks_a_run_of_failures() -> None:
    """A caller's own error shows the resource answering: it does not count, and it
    ends a run of consecutive failures like a success."""
    rec = Recorder()
    with sessions.start(breaker_config(2, 30), clock=FakeClock()) as system:
        system.subscribe(rec)
        a = system.get("a")
        fault(a)
        wait_restarted(rec, 1)
        with pytest.raises(ValueError, match="bad input"):
            a.fail().result(5)
        fault(a)
        wait_restarted(rec, 2)
        assert circuit(rec) == []
        assert a.circuit == "closed"


def test_the_circuit_events_and_refusals_of_one_open_probe_close_cycle() -> None:
    clock, rec = FakeClock(), Recorder()
    with sessions.start(breaker_config(1, 10), clock=clock) as system:
        system.subscribe(rec)
        a = system.get("a")
        fault(a)
        wait_circuit(rec, "open")
        assert circuit(rec) == [("a", "open", "ProbeBroken: link lost")]
        assert a.circuit == "open"
        assert refusal(a) == (
            "circuit open for resource 'a' after 1 consecutive failures "
            "(last: ProbeBroken: link lost); next probe in 10.0s"
        )
        wait_restarted(rec, 1)
        clock.advance(4)
        assert refusal(a).endswith("; next probe in 6.0s")
        clock.advance(6)  # exactly reset_timeout: the next call is the probe
        started, release = threading.Event(), threading.Event()
        probe = a.block(started, release)
        assert started.wait(5)
        wait_circuit(rec, "half_open")
        assert a.circuit == "half_open"
        assert system.status()["children"][0]["circuit"] == "half_open"
        clock.advance(1)  # past the period while the probe runs
        assert refusal(a) == (
            "circuit half-open for resource 'a' after 1 consecutive failures (last: "
            "ProbeBroken: link lost): a probe call is in progress, and other calls are "
            "refused until it succeeds"
        )
        release.set()
        assert probe.result(5) == "released"
        wait_circuit(rec, "closed")
        assert circuit(rec) == [
            ("a", "open", "ProbeBroken: link lost"),
            ("a", "half_open", "reset_timeout passed"),
            ("a", "closed", "probe succeeded"),
        ]
        assert a.circuit == "closed"
        assert system.status()["children"][0]["circuit"] == "closed"
        assert a.echo(2).result(5) == 2


def test_before_reset_timeout_no_probe_goes_through() -> None:
    clock, rec = FakeClock(), Recorder()
    with sessions.start(breaker_config(1, 10), clock=clock) as system:
        system.subscribe(rec)
        a = system.get("a")
        fault(a)
        wait_restarted(rec, 1)
        clock.advance(9.5)
        assert refusal(a).endswith("; next probe in 0.5s")
        assert a.circuit == "open"
        clock.advance(0.5)
        assert a.echo("probe").result(5) == "probe"
        wait_circuit(rec, "closed")


def test_after_the_circuit_closed_it_takes_the_full_count_to_open_it_again() -> None:
    clock, rec = FakeClock(), Recorder()
    with sessions.start(breaker_config(2, 30), clock=clock) as system:
        system.subscribe(rec)
        a = system.get("a")
        fault(a, "one")
        fault(a, "two")
        wait_circuit(rec, "open")
        wait_restarted(rec, 2)
        clock.advance(30)
        assert a.echo("probe").result(5) == "probe"
        wait_circuit(rec, "closed")
        fault(a, "three")  # one failure after closing: below the threshold again
        wait_restarted(rec, 3)
        assert a.circuit == "closed"
        assert a.echo(1).result(5) == 1
        fault(a, "four")
        wait_restarted(rec, 4)
        assert a.circuit == "closed"
        fault(a, "five")
        wait_circuit(rec, "open", 2)
        assert circuit(rec) == [
            ("a", "open", "ProbeBroken: two"),
            ("a", "half_open", "reset_timeout passed"),
            ("a", "closed", "probe succeeded"),
            ("a", "open", "ProbeBroken: five"),
        ]
        assert refusal(a) == (
            "circuit open for resource 'a' after 2 consecutive failures "
            "(last: ProbeBroken: five); next probe in 30.0s"
        )


def test_a_failed_probe_reopens_for_a_full_period_from_its_failure() -> None:
    clock, rec = FakeClock(), Recorder()
    with sessions.start(breaker_config(3, 10), clock=clock) as system:
        system.subscribe(rec)
        a = system.get("a")
        for n in (1, 2, 3):
            fault(a, f"down {n}")
        wait_circuit(rec, "open")
        wait_restarted(rec, 3)
        clock.advance(12)
        fault(a, "still down")
        wait_circuit(rec, "open", 2)
        assert circuit(rec) == [
            ("a", "open", "ProbeBroken: down 3"),
            ("a", "half_open", "reset_timeout passed"),
            ("a", "open", "ProbeBroken: still down"),
        ]
        assert refusal(a) == (
            "circuit open for resource 'a' after 3 consecutive failures "
            "(last: ProbeBroken: still down); next probe in 10.0s"
        )


def test_failures_while_open_neither_reopen_nor_extend_the_period() -> None:
    """Failed reconnects while the circuit is open update "last" in the refusal, but
    the probe stays due reset_timeout after the circuit opened."""
    clock, rec = FakeClock(), Recorder()
    with sessions.start(breaker_config(1, 10), clock=clock) as system:
        system.subscribe(rec)
        a = system.get("a")
        gate = threading.Event()
        ctl = controls("a")
        ctl.connect_gate = gate  # the restart waits until the clock has moved
        fault(a)
        wait_circuit(rec, "open")
        clock.advance(4)
        ctl.fail_connects = 2
        gate.set()
        wait_restarted(rec, 1)
        assert ctl.connects == 4  # the first start, two refused reconnects, one good
        assert circuit(rec) == [("a", "open", "ProbeBroken: link lost")]
        assert refusal(a) == (
            "circuit open for resource 'a' after 1 consecutive failures (last: start "
            "failed: ProbeBroken: connect refused (attempt 3)); next probe in 6.0s"
        )


def test_a_call_queued_before_the_circuit_opened_that_succeeds_closes_it_saying_so() -> None:
    """The call behind the faulting one was let through while the circuit was closed;
    it runs on the restarted resource and succeeds: the circuit closes at once, with a
    reason that says what happened (no probe ran)."""
    clock, rec = FakeClock(), Recorder()
    with sessions.start(breaker_config(1, 10), clock=clock) as system:
        system.subscribe(rec)
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        holding = a.block(started, release)  # so that both calls below are queued
        assert started.wait(5)
        broken, behind = a.break_it("link lost"), a.echo("behind")
        release.set()
        assert holding.result(5) == "released"
        with pytest.raises(sessions.ResourceFault):
            broken.result(5)
        assert behind.result(5) == "behind"
        wait_circuit(rec, "closed")
        assert circuit(rec) == [
            ("a", "open", "ProbeBroken: link lost"),
            ("a", "closed", "a call made before the circuit opened succeeded"),
        ]
        assert a.circuit == "closed" and a.echo(1).result(5) == 1


def test_failed_connects_open_the_circuit_with_their_reason() -> None:
    rec = Recorder()
    with sessions.start(breaker_config(2, 60), clock=FakeClock()) as system:
        system.subscribe(rec)
        a = system.get("a")
        controls("a").fail_connects = 1
        fault(a)
        wait_circuit(rec, "open")
        wait_restarted(rec, 1)
        assert circuit(rec) == [
            ("a", "open", "start failed: ProbeBroken: connect refused (attempt 2)"),
        ]


def test_credentials_are_redacted_from_circuit_events_and_refusals() -> None:
    rec = Recorder()
    with sessions.start(breaker_config(1, 10), clock=FakeClock()) as system:
        system.subscribe(rec)
        a = system.get("a")
        fault(a, "lost postgres://app:hunter2@db/x")
        wait_circuit(rec, "open")
        assert circuit(rec) == [("a", "open", "ProbeBroken: lost postgres://app:***@db/x")]
        message = refusal(a)
        assert "hunter2" not in message
        assert "(last: ProbeBroken: lost postgres://app:***@db/x)" in message


# --- calls that never ran ---------------------------------------------------------------


def test_calls_expired_in_the_queue_do_not_count_while_closed() -> None:
    rec = Recorder()
    cfg = breaker_config(1, 10, call_timeout=0.2)
    with sessions.start(cfg, clock=FakeClock()) as system:
        system.subscribe(rec)
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        blocker = a.block(started, release)
        assert started.wait(5)
        late = a.echo(1)
        with pytest.raises(sessions.CallTimeout) as info:
            late.result()  # expires it here, before anything else happens
        assert info.value.started is False
        assert a.circuit == "closed"
        release.set()
        assert blocker.result(5) == "released"
        assert a.echo(2).result(5) == 2
        assert a.circuit == "closed"
        assert circuit(rec) == []


def test_calls_refused_by_a_stopped_resource_do_not_count_while_closed() -> None:
    with sessions.start(breaker_config(1, 10), clock=FakeClock()) as system:
        a = system.get("a")
        system.terminate_child("a")
        with pytest.raises(sessions.ResourceUnavailable):
            a.echo(1).result(5)
        assert a.circuit == "closed"


def test_a_probe_that_never_runs_opens_the_circuit_again() -> None:
    """The probe expires in the queue (the resource cannot reconnect): that is a failed
    probe, not a circuit stuck half-open with its one probe slot taken."""
    clock, rec = FakeClock(), Recorder()
    cfg = breaker_config(1, 10, call_timeout=0.2)
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        a = system.get("a")
        gate = threading.Event()
        controls("a").connect_gate = gate
        fault(a)
        wait_circuit(rec, "open")
        clock.advance(10)
        probe = a.echo("probe")
        assert not probe.done()
        assert a.circuit == "half_open"
        with pytest.raises(sessions.CallTimeout):
            probe.result()
        assert a.circuit == "open"  # the caller expired it: counted before result() returned
        assert refusal(a).endswith("; next probe in 10.0s")
        wait_circuit(rec, "open", 2)
        states = [(name, state) for name, state, _ in circuit(rec)]
        assert states == [("a", "open"), ("a", "half_open"), ("a", "open")]
        assert "CallTimeout" in circuit(rec)[-1][2]
        clock.advance(10)
        gate.set()
        wait_restarted(rec, 1)
        assert a.echo("second probe").result(5) == "second probe"
        wait_circuit(rec, "closed")


# --- a race no public call can time ---------------------------------------------------


class _ClosesOnAcquire:
    """Stands in for the breaker's lock: whoever takes it finds that another thread's
    successful probe closed the circuit just before (between the unlocked read of the
    state and taking the lock, where no test can time a real thread)."""

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker

    def __enter__(self) -> None:
        self.breaker.state = "closed"
        self.breaker.failures = 0

    def __exit__(self, *exc: object) -> None:
        return None


def test_a_call_that_races_the_circuit_closing_goes_through_as_an_ordinary_call() -> None:
    events: list[Any] = []
    clock = FakeClock()
    breaker = Breaker("a", 1, 10, events.append, clock)
    breaker.record(False, "down")
    assert breaker.state == "open"
    breaker._lock = _ClosesOnAcquire(breaker)  # type: ignore[assignment]
    assert breaker.allow() == (True, False)  # allowed, and not a probe
    assert events == [CircuitChanged("a", "open", "down")]


# --- call statistics --------------------------------------------------------------------


def nearest_rank(latencies: list[float], q: float) -> float:
    """The q-quantile as status views define it: the value at rank int(q*n), capped."""
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def check_latencies(stats: CallStats, timed: int, wall: float) -> None:
    """``stats`` holds ``timed`` latencies, each within (0, wall] seconds, and its
    histogram, sum and percentiles agree with them."""
    recent = list(stats.recent)
    assert len(recent) == timed
    assert all(0 < x <= wall for x in recent), (recent, wall)
    assert stats.sum == pytest.approx(sum(recent))
    assert 0 < stats.sum <= timed * wall
    per_bucket = [0] * (len(BUCKETS) + 1)
    for x in recent:
        per_bucket[next((i for i, bound in enumerate(BUCKETS) if x <= bound), len(BUCKETS))] += 1
    assert stats.buckets == per_bucket
    assert stats.percentile(0.5) == nearest_rank(recent, 0.5)
    assert stats.percentile(1.0) == max(recent)
    assert stats.percentile(0.0) == min(recent)


def test_call_statistics_count_each_outcome_exactly_with_sane_latencies() -> None:
    cfg = config({"a": {"call_timeout": 0.2}})
    began = time.monotonic()
    with sessions.start(cfg) as system:
        a = system.get("a")
        fresh = system.status()["children"][0]
        assert fresh["calls"] == dict.fromkeys(OUTCOMES, 0)
        assert fresh["latency_p50_ms"] is None and fresh["latency_p99_ms"] is None
        assert [a.echo(i).result(5) for i in range(3)] == [0, 1, 2]
        for _ in range(2):
            with pytest.raises(ValueError):
                a.fail().result(5)
        fault(a)
        wait_until(lambda: a.state == "running", what="restart")
        started, release = threading.Event(), threading.Event()
        blocker = a.block(started, release)
        assert started.wait(5)
        late = [a.echo("late"), a.echo("later")]
        for future in late:
            with pytest.raises(sessions.CallTimeout):
                future.result()
        release.set()
        assert blocker.result(5) == "released"
        assert a.echo("after").result(5) == "after"  # served after the expired ones
        system.terminate_child("a")  # every outcome recorded once the thread has ended
        for _ in range(2):
            with pytest.raises(sessions.ResourceUnavailable):
                a.echo("refused").result(5)
        wall = time.monotonic() - began
        status = system.status()["children"][0]
        assert status["calls"] == {"ok": 5, "error": 2, "fault": 1, "timeout": 2, "refused": 2,
                                   "superseded": 0}
        stats = system.stats("a")
        assert stats.outcomes == status["calls"]
        check_latencies(stats, 5 + 2 + 1, wall)
        recent = list(stats.recent)
        assert status["latency_p50_ms"] == round(nearest_rank(recent, 0.5) * 1000, 3)
        assert status["latency_p99_ms"] == round(nearest_rank(recent, 0.99) * 1000, 3)
        assert 0 < status["latency_p50_ms"] <= status["latency_p99_ms"] <= wall * 1000


def test_a_pool_reports_the_sum_of_its_members() -> None:
    began = time.monotonic()
    with sessions.start(config({"db": {"pool_size": 2}})) as system:
        db = system.get("db")
        started, release = threading.Event(), threading.Event()
        blocker = db.block(started, release)  # one member busy: the other serves the rest
        assert started.wait(5)
        assert [db.echo(i).result(5) for i in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError):
            db.fail().result(5)
        release.set()
        assert blocker.result(5) == "released"
        system.terminate_child("db")
        wall = time.monotonic() - began
        tree = system.status()["children"][0]
        members = {c["name"]: c["calls"] for c in tree["children"]}
        assert sorted(members.values(), key=lambda c: c["ok"]) == [
            {"ok": 1, "error": 0, "fault": 0, "timeout": 0, "refused": 0, "superseded": 0},
            {"ok": 3, "error": 1, "fault": 0, "timeout": 0, "refused": 0, "superseded": 0},
        ]
        assert tree["calls"] == {"ok": 4, "error": 1, "fault": 0, "timeout": 0, "refused": 0,
                                 "superseded": 0}
        total = system.stats("db")
        assert total.outcomes == tree["calls"]
        check_latencies(total, 5, wall)
        assert tree["latency_p99_ms"] == round(nearest_rank(list(total.recent), 0.99) * 1000, 3)


def test_latencies_fall_in_buckets_bounded_above_inclusive() -> None:
    stats = CallStats()
    for seconds in (0.0001, 0.00010001, 0.001, 10.0, 10.5, 0.0):
        stats.record("ok", seconds)
    expected = [0] * (len(BUCKETS) + 1)
    expected[0] = 2  # 0.0 and exactly 0.0001
    expected[1] = 1  # just above 0.0001
    expected[BUCKETS.index(0.001)] = 1
    expected[BUCKETS.index(10.0)] = 1
    expected[-1] = 1  # above every bound
    assert stats.buckets == expected
    assert stats.sum == pytest.approx(20.50120001)
    assert stats.outcomes == {"ok": 6, "error": 0, "fault": 0, "timeout": 0, "refused": 0,
                              "superseded": 0}


def test_percentiles_and_snapshot_of_known_latencies() -> None:
    stats = CallStats()
    assert stats.percentile(0.5) is None
    assert stats.snapshot() == {"calls": dict.fromkeys(OUTCOMES, 0),
                                "latency_p50_ms": None, "latency_p99_ms": None}
    for ms in (7, 3, 10, 1, 9, 2, 8, 4, 6, 5):  # 1..10 ms, unordered
        stats.record("ok", ms / 1000)
    stats.record("error", 0.0123456)  # 12.3456 ms: rounded to 12.346 in the snapshot
    stats.count_only("timeout")
    stats.count_only("refused")
    stats.count_only("refused")
    assert stats.percentile(0.0) == 0.001
    assert stats.percentile(0.5) == 0.006  # rank 5 of 11
    assert stats.percentile(0.9) == 0.01  # rank 9
    assert stats.percentile(1.0) == 0.0123456  # capped at the last rank
    assert stats.snapshot() == {
        "calls": {"ok": 10, "error": 1, "fault": 0, "timeout": 1, "refused": 2, "superseded": 0},
        "latency_p50_ms": 6.0,
        "latency_p99_ms": 12.346,
    }
    assert len(stats.recent) == 11  # count_only adds no latency


def test_only_the_most_recent_latencies_make_the_percentiles() -> None:
    stats = CallStats()
    for _ in range(RECENT):
        stats.record("ok", 1.0)
    for _ in range(RECENT):
        stats.record("ok", 0.001)
    assert stats.percentile(0.0) == stats.percentile(1.0) == 0.001
    assert stats.outcomes["ok"] == 2 * RECENT  # counts and histogram keep everything
    assert stats.buckets[BUCKETS.index(1.0)] == RECENT
    assert stats.sum == pytest.approx(RECENT * 1.001)


def test_a_pool_total_keeps_every_members_recent_latencies() -> None:
    assert CallStats.total([]).percentile(0.5) is None
    members = [CallStats() for _ in range(3)]
    for i, member in enumerate(members):
        for _ in range(RECENT):
            member.record("ok", float(i + 1))
        member.count_only("timeout")
    total = CallStats.total(members)
    assert len(total.recent) == 3 * RECENT
    assert (total.percentile(0.0), total.percentile(0.5), total.percentile(1.0)) == (1.0, 2.0, 3.0)
    assert total.outcomes == {"ok": 3 * RECENT, "error": 0, "fault": 0, "timeout": 3, "refused": 0,
                              "superseded": 0}
    assert total.sum == pytest.approx(6.0 * RECENT)
    assert total.buckets[BUCKETS.index(1.0)] == RECENT
    assert total.buckets[BUCKETS.index(2.5)] == RECENT
    assert total.buckets[BUCKETS.index(5.0)] == RECENT
    assert sum(total.buckets) == 3 * RECENT
    assert members[0].outcomes["ok"] == RECENT  # the members are left as they were


def test_p99_is_not_simply_the_slowest_call() -> None:
    stats = CallStats()
    for ms in range(200, 0, -1):  # 1..200 ms
        stats.record("ok", ms / 1000)
    snapshot = stats.snapshot()
    assert (snapshot["latency_p50_ms"], snapshot["latency_p99_ms"]) == (101.0, 199.0)
    assert stats.percentile(0.99) == 0.199 and stats.percentile(1.0) == 0.2


# --- restart policy ---------------------------------------------------------------------


class HighDraw(random.Random):
    """Every jitter draw is the top of its range: the longest delay the jitter allows."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_the_highest_jitter_draw_gives_the_longest_restart_delay() -> None:
    rec = Recorder()
    cfg = config(["a"], backoff={"initial": 0.02, "max": 1.0, "multiplier": 2.0, "jitter": 0.5})
    with sessions.start(cfg, rng=HighDraw()) as system:
        system.subscribe(rec)
        fault(system.get("a"))
        wait_restarted(rec, 1)
        [restarting] = rec.of(ChildRestarting)
        assert (restarting.name, restarting.attempt) == ("a", 1)
        assert restarting.delay == pytest.approx(0.03)  # 0.02 * (1 + 0.5)


@pytest.mark.parametrize("pool_size", [1, 3])
def test_calls_refused_by_the_open_circuit_are_counted_as_refused(pool_size: int) -> None:
    """The statistics (and /metrics) count every refusal, also the open circuit's,
    for a single resource and for a pool sharing one breaker."""
    rec = Recorder()
    with sessions.start(breaker_config(1, 30, pool_size=pool_size),
                        clock=FakeClock()) as system:
        system.subscribe(rec)
        a = system.get("a")
        fault(a)
        wait_circuit(rec, "open")
        for _ in range(3):
            refusal(a)
        calls = system.stats("a").outcomes
        assert (calls["fault"], calls["refused"]) == (1, 3)
        assert system.status()["children"][0]["calls"]["refused"] == 3
