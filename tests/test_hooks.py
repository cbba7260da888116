"""The optional hooks of ResourceActor: poll(), report_fault() and run_batch()."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence
from typing import Any

import pytest

import sessions
from sessions._runtime.contract import BatchItem, Outcome
from sessions._runtime.stats import RECENT, CallStats
from sessions.messages import ChildFaulted, ChildStarted
from tests.support import Recorder, wait_until


class Broken(ConnectionError):
    pass


class Poller(sessions.ResourceActor):
    """Counts polls; a poll after ``arm()`` faults."""

    kind = "poller"
    fault_types = (Broken,)
    polls: int = 0

    def __init__(self, poll_interval: float = 0.01) -> None:
        super().__init__()
        self.poll_interval = poll_interval
        self.armed = False
        self.thread_names: set[str] = set()

    def connect(self) -> object:
        return object()

    def poll(self) -> None:
        type(self).polls += 1
        self.thread_names.add(threading.current_thread().name)
        if self.armed:
            self.armed = False
            raise Broken("poll found the connection dead")

    def arm(self) -> None:
        self.armed = True

    def threads(self) -> set[str]:
        return set(self.thread_names)


class Reader(sessions.ResourceActor):
    """Has a reader thread of its own that reports faults into the actor."""

    kind = "reader"
    fault_types = (Broken,)

    def connect(self) -> object:
        return object()

    def fail_from_thread(self, stale: bool = False) -> None:
        conn = object() if stale else self.resource
        thread = threading.Thread(
            target=self.report_fault, args=(Broken("reader saw EOF"), conn), name="reader"
        )
        thread.start()
        thread.join()

    def ping(self) -> str:
        return "pong"


class Batcher(sessions.ResourceActor):
    """``put`` calls are batched; records every batch size."""

    kind = "batcher"
    batch_methods = frozenset({"put"})
    fault_types = (Broken,)

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def connect(self) -> dict[str, Any]:
        return {}

    def put(self, key: str, value: Any) -> str:
        if value == "bad":
            raise ValueError(f"bad value for {key}")
        if value == "boom":
            raise Broken("connection lost mid-batch")
        self.resource[key] = value
        return "OK"

    def run_batch(self, calls: Sequence[BatchItem]) -> list[Outcome]:
        self.batches.append(len(calls))
        return super().run_batch(calls)

    def block(self, started: threading.Event, release: threading.Event) -> None:
        started.set()
        release.wait(10)

    def sizes(self) -> list[int]:
        return list(self.batches)


def _start(kind: str, **options: Any) -> sessions.System:
    return sessions.start(
        {
            "supervisor": {"backoff": {"initial": 0.01, "jitter": 0}},
            "resources": {"r": {"kind": f"tests.test_hooks:{kind}", **options}},
        }
    )


def test_poll_runs_periodically_on_the_actor_thread_and_a_fault_restarts() -> None:
    rec = Recorder()
    Poller.polls = 0
    with _start("Poller") as system:
        system.subscribe(rec)
        r = system.get("r")
        wait_until(lambda: Poller.polls >= 5, what="polls")
        assert r.threads().result(5) == {"sessions-r"}
        r.arm().result(5)
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted))[0]
        assert "poll" in fault.error and "connection dead" in fault.error
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)


def test_report_fault_from_another_thread_restarts_and_stale_reports_are_ignored() -> None:
    rec = Recorder()
    with _start("Reader") as system:
        system.subscribe(rec)
        r = system.get("r")
        r.fail_from_thread(stale=True).result(5)
        assert r.ping().result(5) == "pong" and r.restarts == 0
        r.fail_from_thread().result(5)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert "reader saw EOF" in rec.of(ChildFaulted)[0].error
        assert r.ping().result(5) == "pong"


def test_queued_batchable_calls_run_as_one_batch_with_their_own_outcomes() -> None:
    with _start("Batcher") as system:
        r = system.get("r")
        started, release = threading.Event(), threading.Event()
        r.block(started, release)
        assert started.wait(5)
        futures = [r.put(f"k{i}", "bad" if i == 3 else i) for i in range(10)]
        release.set()
        for i, f in enumerate(futures):
            if i == 3:
                with pytest.raises(ValueError, match="bad value for k3"):
                    f.result(5)
            else:
                assert f.result(5) == "OK"
        assert r.sizes().result(5) == [10]


def test_a_fault_inside_a_batch_fails_only_that_call_as_a_fault_and_restarts() -> None:
    rec = Recorder()
    with _start("Batcher") as system:
        system.subscribe(rec)
        r = system.get("r")
        started, release = threading.Event(), threading.Event()
        r.block(started, release)
        assert started.wait(5)
        futures = [r.put(f"k{i}", "boom" if i == 1 else i) for i in range(3)]
        release.set()
        assert futures[0].result(5) == "OK"
        with pytest.raises(sessions.ResourceFault):
            futures[1].result(5)
        assert futures[2].result(5) == "OK"
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)


class Replier(sessions.ResourceActor):
    """Answers ``ask`` later, from another thread, through a ``Deferred``."""

    kind = "replier"
    fault_types = (Broken,)

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[tuple[Any, concurrent.futures.Future[Any]]] = []

    def connect(self) -> object:
        return object()

    def ask(self, question: Any) -> sessions.Deferred:
        answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pending.append((question, answer))
        return sessions.Deferred(answer)

    def answer_all(self) -> int:
        """Resolve every pending question from a separate thread."""
        pending, self.pending = self.pending, []

        def reply() -> None:
            for question, answer in pending:
                if question == "bad":
                    answer.set_exception(ValueError("bad question"))
                elif question == "dead":
                    answer.set_exception(Broken("link died while waiting"))
                else:
                    answer.set_result(f"re: {question}")

        thread = threading.Thread(target=reply)
        thread.start()
        thread.join()
        return len(pending)


def test_deferred_results_free_the_actor_and_resolve_later() -> None:
    rec = Recorder()
    with _start("Replier") as system:
        system.subscribe(rec)
        r = system.get("r")
        asks = [r.ask(i) for i in range(5)]
        bad, dead = r.ask("bad"), r.ask("dead")
        assert not any(f.done() for f in asks)  # the actor went on serving
        assert r.answer_all().result(5) == 7
        assert [f.result(5) for f in asks] == [f"re: {i}" for i in range(5)]
        with pytest.raises(ValueError, match="bad question"):
            bad.result(5)
        with pytest.raises(sessions.ResourceFault):
            dead.result(5)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        calls = system.status()["children"][0]["calls"]
        assert calls["ok"] >= 6 and calls["error"] == 1 and calls["fault"] == 1


def test_call_statistics_count_every_outcome() -> None:
    cfg = {
        "supervisor": {"backoff": {"initial": 0.01, "jitter": 0}},
        "resources": {"a": {"kind": "tests.kinds:Probe", "call_timeout": 0.2}},
    }
    with sessions.start(cfg) as system:
        a = system.get("a")
        a.echo(1).result(5)
        with pytest.raises(ValueError):
            a.fail().result(5)
        started, release = threading.Event(), threading.Event()
        a.block(started, release)
        late = a.echo(2)
        with pytest.raises(sessions.CallTimeout):
            late.result()
        release.set()
        a.echo(3).result(5)
        system.terminate_child("a")
        with pytest.raises(sessions.ResourceUnavailable):
            a.echo(4).result(5)
        status = system.status()["children"][0]
        assert status["calls"] == {"ok": 3, "error": 1, "fault": 0, "timeout": 1, "refused": 1,
                                   "superseded": 0}
        assert status["latency_p99_ms"] >= status["latency_p50_ms"] > 0


class EarlyReporter(sessions.ResourceActor):
    """Its first connection is reported broken by a thread started inside connect()."""

    kind = "early"
    fault_types = (Broken,)
    connects = 0

    def connect(self) -> object:
        type(self).connects += 1
        conn = object()
        if type(self).connects == 1:
            thread = threading.Thread(
                target=self.report_fault, args=(Broken("dead on arrival"), conn)
            )
            thread.start()
            thread.join()
        return conn

    def ping(self) -> str:
        return "pong"


def test_a_fault_reported_while_connecting_takes_effect_once_serving() -> None:
    rec = Recorder()
    EarlyReporter.connects = 0
    with _start("EarlyReporter") as system:
        system.subscribe(rec)
        wait_until(lambda: system.get("r").restarts == 1, what="the restart")
        assert "dead on arrival" in (system.status()["children"][0]["last_fault"] or "")
        assert system.get("r").ping().result(5) == "pong"
        assert EarlyReporter.connects == 2


class SelfReporter(sessions.ResourceActor):
    """Its first connect() reports that connection broken itself, on the actor thread,
    and still returns it (no other thread involved, so nothing yields on the way)."""

    kind = "self-reporter"
    fault_types = (Broken,)
    connects = 0

    def connect(self) -> object:
        type(self).connects += 1
        conn = object()
        if type(self).connects == 1:
            self.report_fault(Broken("broken from the start"), conn)
        return conn

    def ping(self) -> str:
        return "pong"


def test_a_fault_reported_by_connect_itself_takes_effect_once_the_start_is_recorded(
) -> None:
    """The fault takes effect once the incarnation serves, i.e. after the supervisor
    has recorded its start: the resource restarts once and serves. Handled as soon as
    connect() returned, it would end the incarnation before the start was recorded,
    the supervisor would drop the report as stale, and the resource would stay
    'running' with no incarnation serving it (this kind's connect() never yields the
    GIL, so its thread gets that far before the supervisor looks)."""
    rec = Recorder()
    SelfReporter.connects = 0
    with _start("SelfReporter") as system:
        system.subscribe(rec)
        r = system.get("r")
        wait_until(lambda: r.restarts == 1, what="the restart")
        assert r.ping().result(5) == "pong"
        assert SelfReporter.connects == 2
        assert "broken from the start" in (system.status()["children"][0]["last_fault"] or "")


class StaleReporter(sessions.ResourceActor):
    """After a restart, a reader of the previous connection reports it broken while the
    new connection is being set up (here: from inside a replay step)."""

    kind = "stale"
    fault_types = (Broken,)

    def __init__(self) -> None:
        super().__init__()
        self.connections: list[object] = []
        self.replay("stale-reader", self._stale_reader)

    def connect(self) -> object:
        conn = object()
        self.connections.append(conn)
        return conn

    def _stale_reader(self, conn: object) -> None:
        if len(self.connections) >= 2:
            old = self.connections[-2]
            thread = threading.Thread(
                target=self.report_fault, args=(Broken("old reader saw EOF"), old)
            )
            thread.start()
            thread.join()

    def ping(self) -> str:
        return "pong"

    def break_it(self) -> None:
        raise Broken("link lost")


def test_a_stale_report_while_the_new_connection_is_set_up_is_ignored() -> None:
    """Connected but not yet serving: a report naming an earlier connection is stale and
    must not crash the new incarnation."""
    rec = Recorder()
    with _start("StaleReporter") as system:
        system.subscribe(rec)
        r = system.get("r")
        with pytest.raises(sessions.ResourceFault):
            r.break_it().result(5)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        # A report accepted before serving crashes the incarnation before its first
        # call, so this ping would be answered only after a second (counted) restart.
        assert r.ping().result(5) == "pong"
        assert r.restarts == 1


def test_pool_percentiles_weigh_every_member() -> None:
    """A pool's p50/p99 come from all its members' recent latencies, not from the last
    member's alone (a full member used to push the others out)."""
    slow, fast = CallStats(), CallStats()
    for _ in range(RECENT):
        slow.record("ok", 1.0)
        fast.record("ok", 0.001)
    total = CallStats.total([slow, fast])
    assert total.outcomes["ok"] == 2 * RECENT
    assert total.percentile(0.25) == 0.001 and total.percentile(0.75) == 1.0
