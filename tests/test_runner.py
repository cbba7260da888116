"""The thread side of a resource (sessions/_runtime/runner.py) and the defaults of
ResourceActor (sessions/_runtime/contract.py), through the public API: periodic hooks, what
counts as a fault, batches, deferred replies, call outcomes and pool routing, refused
calls, normal exits, report_fault()."""

from __future__ import annotations

import concurrent.futures
import functools
import gc
import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import pytest
from pydantic import BaseModel

import sessions
from sessions._runtime.contract import BatchItem, Outcome
from sessions.messages import ChildFaulted, ChildStarted, ChildStopped, CircuitChanged
from tests.kinds import ProbeBroken, controls
from tests.support import Recorder, config, wait_until


class Broken(ConnectionError):
    """The fault type of the kinds below."""


def _start(kind: str, supervisor: dict[str, Any] | None = None,
           **options: Any) -> sessions.System:
    return sessions.start({
        "supervisor": {"backoff": {"initial": 0.01, "jitter": 0}, **(supervisor or {})},
        "resources": {"r": {"kind": f"tests.test_runner:{kind}", **options}},
    })


def _faults(rec: Recorder) -> list[str]:
    return [e.error for e in rec.of(ChildFaulted)]


# -- periodic hooks: health_check() and poll() ---------------------------------------


class Checker(sessions.ResourceActor):
    """Its health check and poll raise what the test asks for; both count their runs."""

    kind = "checker"
    fault_types = (Broken,)

    def __init__(self, poll_interval: float | None = None, sick: bool = False) -> None:
        super().__init__()
        self.poll_interval = poll_interval
        self.checks = 0
        self.polls = 0
        self.check_error: BaseException | None = Broken("sick from the start") if sick else None
        self.poll_error: BaseException | None = None
        self.reached = threading.Event()
        self.target = 0

    def connect(self) -> object:
        return object()

    def health_check(self) -> None:
        self.checks += 1
        if self.checks >= self.target:
            self.reached.set()
        if self.check_error is not None:
            raise self.check_error

    def poll(self) -> None:
        self.polls += 1
        if self.polls >= self.target:
            self.reached.set()
        if self.poll_error is not None:
            raise self.poll_error

    def arm(self, target: int, check_error: BaseException | None = None,
            poll_error: BaseException | None = None) -> threading.Event:
        """Count ``target`` more runs from now (an event set then), raising as given."""
        self.reached.clear()
        self.target = (self.polls if self.poll_interval else self.checks) + target
        self.check_error, self.poll_error = check_error, poll_error
        return self.reached

    def counts(self) -> tuple[int, int]:
        return self.checks, self.polls


def test_a_health_check_runs_again_and_again_and_a_non_fault_only_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    with _start("Checker", health_interval=0.01) as system:
        system.subscribe(rec)
        r = system.get("r")
        reached = r.arm(3, check_error=ValueError("sensor says 42")).result(5)
        assert reached.wait(5), "the health check did not run three more times"
        assert r.counts().result(5)[1] == 0  # no poll_interval: never polled
        assert r.restarts == 0 and r.state == "running"
        assert rec.of(ChildFaulted) == []
    warnings = [m.getMessage() for m in caplog.records
                if m.name == "sessions.actor" and m.levelno == logging.WARNING]
    assert "health_check() of 'r' raised a non-fault: ValueError: sensor says 42" in warnings


def test_a_faulting_health_check_restarts_with_where_it_broke() -> None:
    rec = Recorder()
    with _start("Checker", health_interval=0.01) as system:
        system.subscribe(rec)
        r = system.get("r")
        r.arm(1, check_error=Broken("sensor gone")).result(5)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert _faults(rec)[0] == "health_check: Broken: sensor gone"


def test_the_first_health_check_comes_one_interval_after_the_start() -> None:
    with _start("Checker", health_interval=60) as system:
        assert system.get("r").counts().result(5) == (0, 0)


def test_a_health_check_runs_without_any_call() -> None:
    rec = Recorder()
    with _start("Checker", health_interval=0.01, sick=True) as system:
        system.subscribe(rec)
        rec.wait_for(lambda e: isinstance(e, ChildFaulted), count=2)
        assert set(_faults(rec)) == {"health_check: Broken: sick from the start"}


def test_a_poll_runs_right_after_connect_then_periodically_and_a_non_fault_only_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    with _start("Checker", poll_interval=0.01) as system:
        system.subscribe(rec)
        r = system.get("r")
        assert r.counts().result(5)[1] >= 1  # polled before the first call was served
        reached = r.arm(3, poll_error=KeyError("no such partition")).result(5)
        assert reached.wait(5), "poll() did not run three more times"
        assert r.counts().result(5)[0] == 0  # no health_interval: never checked
        assert r.restarts == 0 and rec.of(ChildFaulted) == []
    assert any(m.getMessage() == "poll() of 'r' raised a non-fault: KeyError: 'no such partition'"
               for m in caplog.records if m.levelno == logging.WARNING)


def test_a_faulting_poll_restarts_with_where_it_broke() -> None:
    rec = Recorder()
    with _start("Checker", poll_interval=0.01) as system:
        system.subscribe(rec)
        system.get("r").arm(1, poll_error=Broken("consumer fenced")).result(5)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert _faults(rec)[0] == "poll: Broken: consumer fenced"


def test_health_check_and_poll_both_run_when_both_are_set() -> None:
    with _start("Checker", health_interval=0.01, poll_interval=0.01) as system:
        r = system.get("r")
        wait_until(lambda: min(r.counts().result(5)) >= 3, what="both hooks three times")


class Leaky(sessions.ResourceActor):
    """Its disconnect() fails; it records what ``self.resource`` was at each hook."""

    kind = "leaky"
    fault_types = (Broken,)

    def __init__(self) -> None:
        super().__init__()
        self.connects = 0
        self.seen: list[tuple[str, Any, Any]] = []

    def connect(self) -> str:
        self.connects += 1
        self.seen.append(("connect", None, self.resource))
        return f"conn-{self.connects}"

    def disconnect(self, resource: Any) -> None:
        self.seen.append(("disconnect", resource, self.resource))
        raise OSError(f"close of {resource} failed")

    def break_it(self) -> None:
        raise Broken("link lost")

    def history(self) -> list[tuple[str, Any, Any]]:
        return list(self.seen)

    def current(self) -> Any:
        return self.resource


def test_a_failing_disconnect_is_logged_and_the_resource_is_none_while_disconnected(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    with _start("Leaky") as system:
        system.subscribe(rec)
        r = system.get("r")
        assert r.current().result(5) == "conn-1"
        assert isinstance(r.break_it().exception(5), sessions.ResourceFault)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert r.current().result(5) == "conn-2"
        assert r.history().result(5) == [
            ("connect", None, None), ("disconnect", "conn-1", None), ("connect", None, None)]
    assert [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING
            and m.name == "sessions.actor"] == [
        "disconnect of 'r' failed (ignored): OSError: close of conn-1 failed",
        "disconnect of 'r' failed (ignored): OSError: close of conn-2 failed"]


class Gate(sessions.ResourceActor):
    """Its first connect() hangs until abort() (a peer that never answers)."""

    kind = "gate"

    def __init__(self) -> None:
        super().__init__()
        self.connects = 0
        self.aborted = threading.Event()
        self.aborts: list[Any] = []

    def connect(self) -> str:
        self.connects += 1
        if self.connects == 1 and self.aborted.wait(30):
            raise Broken("connect aborted")
        return f"conn-{self.connects}"

    def abort(self, resource: Any) -> None:
        self.aborts.append(resource)
        self.aborted.set()

    def aborted_with(self) -> list[Any]:
        return list(self.aborts)


def test_a_connect_past_connect_timeout_is_aborted_with_no_connection_yet() -> None:
    with _start("Gate", connect_timeout=0.1) as system:  # returns once started anew
        assert system.get("r").aborted_with().result(5) == [None]
        last_fault = system.status()["children"][0]["last_fault"]
        assert "connect_timeout=0.1" in last_fault


# -- what counts as a fault ---------------------------------------------------------


class Odd(sessions.ResourceActor):
    """Raises whatever it is given; its is_fault() itself may raise."""

    kind = "odd"
    fault_types = (Broken,)

    def __init__(self) -> None:
        super().__init__()
        self.judge_raises = False

    def connect(self) -> object:
        return object()

    def is_fault(self, exc: BaseException) -> bool:
        if self.judge_raises:
            raise RuntimeError("is_fault() itself is broken")
        return super().is_fault(exc)

    def throw(self, exc: BaseException) -> None:
        raise exc

    def confuse_is_fault(self) -> None:
        self.judge_raises = True

    def ping(self) -> str:
        return "pong"


@pytest.mark.parametrize(("exc", "shown"), [
    (SystemExit(3), "SystemExit: 3"),
    (KeyboardInterrupt(), "KeyboardInterrupt"),
    (GeneratorExit(), "GeneratorExit"),
])
def test_a_base_exception_from_a_call_is_a_fault(exc: BaseException, shown: str) -> None:
    """Not an Exception: the resource's state is unknown, whatever is_fault() says;
    the runtime survives it (Pykka would stop every actor)."""
    rec = Recorder()
    with _start("Odd") as system:
        system.subscribe(rec)
        r = system.get("r")
        with pytest.raises(sessions.ResourceFault) as info:
            r.throw(exc).result(5)
        assert info.value.__cause__ is exc
        assert info.value.method == "throw" and info.value.resource == "r"
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert _faults(rec) == [f"throw: {shown}"]
        assert r.ping().result(5) == "pong"


def test_an_is_fault_that_raises_counts_the_error_as_a_fault(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    with _start("Odd") as system:
        system.subscribe(rec)
        r = system.get("r")
        r.confuse_is_fault().result(5)
        with pytest.raises(sessions.ResourceFault) as info:
            r.throw(ValueError("just a caller error")).result(5)
        assert isinstance(info.value.__cause__, ValueError)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
    errors = [m for m in caplog.records if m.levelno == logging.ERROR]
    assert [m.getMessage() for m in errors] == [
        "is_fault() of 'r' raised; treating the error as a fault"]
    assert errors[0].exc_info is not None


# -- batches ------------------------------------------------------------------------


PAUSE: list[threading.Event] = []
"""Set by a test: every Piper's run_batch sets the first event, waits for the second."""
PAUSED_IN: list[str] = []
"""The threads whose run_batch paused."""


class Piper(sessions.ResourceActor):
    """``put`` calls are batched (at most three at once); the whole ``run_batch`` can
    be made to raise."""

    kind = "piper"
    fault_types = (Broken,)
    batch_methods = frozenset({"put"})
    max_batch = 3

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[Any]] = []
        self.batch_error: BaseException | None = None
        self.hang: threading.Event | None = None
        """Set: run_batch hangs until abort() (a pipeline to a frozen peer)."""
        self.aborted = threading.Event()

    def connect(self) -> dict[str, Any]:
        return {}

    def put(self, value: Any) -> Any:
        if isinstance(value, BaseException):
            raise value
        self.resource[value] = True
        return value

    def run_batch(self, calls: Sequence[BatchItem]) -> list[Outcome]:
        self.batches.append([args[0] for _, args, _ in calls])
        if PAUSE:  # (entered, resume): every member's batches wait for the test
            PAUSED_IN.append(threading.current_thread().name)
            PAUSE[0].set()
            PAUSE[1].wait(10)
        if any(args[0] == "refuse-all" for _, args, _ in calls):
            raise ValueError("the whole batch was refused")
        if self.hang is not None:
            self.hang.set()
            self.aborted.wait(30)
            raise Broken("pipeline aborted")
        if self.batch_error is not None:
            raise self.batch_error
        outcomes = super().run_batch(calls)
        extra = getattr(self, "extra", 0)
        return outcomes + outcomes[:extra] if extra >= 0 else outcomes[:extra]

    def counts_as_failure(self, exc: BaseException) -> bool:
        """A timeout is the caller's error, yet counts toward the breaker; a
        ``LookupError`` makes this hook itself raise."""
        if isinstance(exc, LookupError):
            raise RuntimeError("counts_as_failure() itself is broken")
        return isinstance(exc, TimeoutError) or super().counts_as_failure(exc)

    def abort(self, resource: Any) -> None:
        self.aborted.set()

    def hang_batches(self) -> threading.Event:
        self.hang = threading.Event()
        return self.hang

    def miscount(self, extra: int) -> None:
        """From now on run_batch returns ``extra`` outcomes too many (or too few)."""
        self.extra = extra

    def fail_batches(self, error: BaseException | None) -> None:
        self.batch_error = error

    def block(self, started: threading.Event, release: threading.Event) -> None:
        started.set()
        release.wait(10)

    def whoami(self) -> str:
        return threading.current_thread().name

    def seen(self) -> list[list[Any]]:
        return [list(b) for b in self.batches]

    def keys(self) -> list[Any]:
        return list(self.resource)


def _queued_behind_a_block(r: Any, values: list[Any]) -> list[Any]:
    """Queue ``put(v)`` for each value while the actor is busy, then let it go."""
    started, release = threading.Event(), threading.Event()
    blocker = r.block(started, release)
    assert started.wait(5)
    futures = [r.put(v) for v in values]
    release.set()
    blocker.result(5)
    return futures


def test_batches_are_capped_at_max_batch_and_a_lone_call_runs_as_itself() -> None:
    with _start("Piper") as system:
        r = system.get("r")
        futures = _queued_behind_a_block(r, list(range(7)))
        assert [f.result(5) for f in futures] == list(range(7))
        assert r.seen().result(5) == [[0, 1, 2], [3, 4, 5]]  # 6 ran alone
        assert r.keys().result(5) == list(range(7))
        assert system.stats("r").outcomes["ok"] == 7 + 3  # block, seen, keys: not batched


def test_a_batch_stops_at_the_first_call_of_another_method() -> None:
    with _start("Piper") as system:
        r = system.get("r")
        started, release = threading.Event(), threading.Event()
        r.block(started, release)
        assert started.wait(5)
        first = [r.put(0), r.put(1)]
        between = r.keys()
        second = [r.put(2), r.put(3)]
        release.set()
        assert between.result(5) == [0, 1]
        assert [f.result(5) for f in first + second] == [0, 1, 2, 3]
        assert r.seen().result(5) == [[0, 1], [2, 3]]


def test_a_batch_skips_expired_and_cancelled_calls_counting_only_the_expired() -> None:
    with _start("Piper", call_timeout=0.3) as system:
        r = system.get("r")
        started, release = threading.Event(), threading.Event()
        r.block(started, release)
        assert started.wait(5)
        expired = r.put("expired")
        assert isinstance(expired.exception(), sessions.CallTimeout)  # waits its deadline
        kept = r.put("kept")
        cancelled = [r.put("c1"), r.put("c2")]
        assert all(f.cancel() for f in cancelled)
        last = r.put("last")
        release.set()
        assert (kept.result(5), last.result(5)) == ("kept", "last")
        assert "c1" not in r.keys().result(5)
        outcomes = system.stats("r").outcomes
        assert (outcomes["timeout"], outcomes["ok"]) == (1, 4)


def test_a_run_batch_raising_a_non_fault_fails_every_call_of_it_and_keeps_serving() -> None:
    rec = Recorder()
    with _start("Piper") as system:
        system.subscribe(rec)
        r = system.get("r")
        error = ValueError("pipeline rejected")
        r.fail_batches(error).result(5)
        futures = _queued_behind_a_block(r, ["a", "b", "c"])
        for f in futures:
            assert f.exception(5) is error
        assert r.seen().result(5) == [["a", "b", "c"]]
        assert r.restarts == 0 and rec.of(ChildFaulted) == []
        r.fail_batches(None).result(5)
        assert r.put("d").result(5) == "d"


@pytest.mark.parametrize("extra", [-1, 1])
def test_a_run_batch_returning_a_wrong_number_of_outcomes_fails_the_batch(extra: int) -> None:
    """A kind's bug: every caller of the batch gets the error and the resource goes on
    serving (the runner used to die silently, every later call timing out)."""
    with _start("Piper") as system:
        r = system.get("r")
        r.miscount(extra).result(5)
        futures = _queued_behind_a_block(r, ["a", "b", "c"])
        for f in futures:
            error = f.exception(5)
            assert isinstance(error, ValueError)
            assert str(error) == "run_batch() of 'r' returned " + (
                "2 outcomes for 3 calls" if extra < 0 else "4 outcomes for 3 calls")
        assert r.put("alone").result(5) == "alone"
        assert r.restarts == 0 and r.state == "running"


def test_a_run_batch_raising_a_fault_fails_every_call_as_a_fault_and_restarts() -> None:
    rec = Recorder()
    with _start("Piper") as system:
        system.subscribe(rec)
        r = system.get("r")
        cause = Broken("pipeline connection reset")
        r.fail_batches(cause).result(5)
        futures = _queued_behind_a_block(r, ["a", "b"])
        for f in futures:
            error = f.exception(5)
            assert isinstance(error, sessions.ResourceFault)
            assert error.__cause__ is cause
            assert error.resource == "r" and error.method == "put"
            assert str(error) == (
                "call put() on resource 'r' broke the resource: "
                "Broken: pipeline connection reset; the call had started, so its outcome "
                "is unknown")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert _faults(rec) == ["batch: Broken: pipeline connection reset"]
        assert system.stats("r").outcomes["fault"] == 0  # the batch has no per-call record


def test_a_fault_inside_a_batch_is_reported_as_the_batch() -> None:
    rec = Recorder()
    with _start("Piper") as system:
        system.subscribe(rec)
        r = system.get("r")
        futures = _queued_behind_a_block(r, ["a", Broken("lost mid-batch"), "c"])
        assert futures[0].result(5) == "a" and futures[2].result(5) == "c"
        error = futures[1].exception(5)
        assert isinstance(error, sessions.ResourceFault)
        assert error.resource == "r" and error.method == "put"
        assert isinstance(error.__cause__, Broken) and "Broken: lost mid-batch" in str(error)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert _faults(rec) == ["batch: Broken: lost mid-batch"]
        outcomes = system.stats("r").outcomes
        assert (outcomes["ok"], outcomes["fault"], outcomes["error"]) == (3, 1, 0)


def test_a_caller_error_inside_a_batch_is_counted_as_an_error() -> None:
    with _start("Piper") as system:
        r = system.get("r")
        futures = _queued_behind_a_block(r, ["a", ValueError("bad key")])
        assert futures[0].result(5) == "a"
        assert str(futures[1].exception(5)) == "bad key"
        outcomes = system.stats("r").outcomes
        assert (outcomes["ok"], outcomes["error"], outcomes["fault"]) == (2, 1, 0)


BREAKER = {"breaker": {"failures": 1, "reset_timeout": 60}}


def _first_circuit_change(rec: Recorder) -> tuple[str, str]:
    """(state, reason) of the first CircuitChanged event, once it has arrived."""
    changed = rec.wait_for(lambda e: isinstance(e, CircuitChanged))[0]
    return changed.state, changed.reason


def _circuit_after(r: Any) -> str | None:
    """The circuit once everything queued so far has run (a call answered after it)."""
    r.call("keys").exception(5)  # refused at once if the circuit opened
    return r.circuit


@pytest.mark.parametrize(("error", "counts", "shown"), [
    (ValueError("bad key"), False, ""),
    (TimeoutError("slow"), True, "TimeoutError: slow"),
    (KeyError("no such key"), True, "KeyError: 'no such key'"),  # counts_as_failure() raised
])
def test_a_caller_error_opens_the_circuit_only_if_it_counts_as_failure(
        error: BaseException, counts: bool, shown: str) -> None:
    rec = Recorder()
    with _start("Piper", **BREAKER) as system:
        system.subscribe(rec)
        r = system.get("r")
        assert r.put(error).exception(5) is error
        if counts:
            assert _first_circuit_change(rec) == ("open", shown)
            refused = r.put("x").exception(0)
            assert isinstance(refused, sessions.ResourceUnavailable)
            assert f"(last: {shown})" in str(refused)
        else:
            assert _circuit_after(r) == "closed"
        assert r.restarts == 0


@pytest.mark.parametrize(("error", "counts", "shown"), [
    (ValueError("pipeline rejected"), False, ""),
    (TimeoutError("pipeline slow"), True, "TimeoutError: pipeline slow"),
    (KeyError("no such key"), True, "KeyError: 'no such key'"),  # counts_as_failure() raised
])
def test_a_whole_batch_caller_error_opens_the_circuit_only_if_it_counts(
        error: BaseException, counts: bool, shown: str) -> None:
    rec = Recorder()
    with _start("Piper", **BREAKER) as system:
        system.subscribe(rec)
        r = system.get("r")
        r.fail_batches(error).result(5)
        futures = _queued_behind_a_block(r, ["a", "b"])
        assert [f.exception(5) for f in futures] == [error, error]
        if counts:
            assert _first_circuit_change(rec) == ("open", shown)
        else:
            assert _circuit_after(r) == "closed"
        assert r.restarts == 0 and rec.of(ChildFaulted) == []


def test_a_whole_batch_fault_opens_the_circuit_with_its_error() -> None:
    rec = Recorder()
    with _start("Piper", **BREAKER) as system:
        system.subscribe(rec)
        r = system.get("r")
        r.fail_batches(Broken("pipeline reset")).result(5)
        _queued_behind_a_block(r, ["a", "b"])
        assert _first_circuit_change(rec) == ("open", "Broken: pipeline reset")


def test_a_batch_opens_the_circuit_only_when_a_call_of_it_faulted() -> None:
    rec = Recorder()
    with _start("Piper", **BREAKER) as system:
        system.subscribe(rec)
        r = system.get("r")
        futures = _queued_behind_a_block(r, ["a", ValueError("bad"), "c"])
        assert [f.exception(5) is None for f in futures] == [True, False, True]
        assert r.seen().result(5) == [["a", futures[1].exception(0), "c"]]
        assert _circuit_after(r) == "closed"
        futures = _queued_behind_a_block(r, ["d", Broken("lost mid-batch")])
        assert _first_circuit_change(rec) == ("open", "Broken: lost mid-batch")


def test_batch_latencies_are_queue_wait_plus_run_time() -> None:
    with _start("Piper", call_timeout=30) as system:
        r = system.get("r")
        for f in _queued_behind_a_block(r, ["a", ValueError("bad"), "c"]):
            f.exception(5)
        wait_until(lambda: sum(system.stats("r").outcomes.values()) == 4, what="all counted")
        status = system.status()["children"][0]
        assert 0 <= status["latency_p50_ms"] <= status["latency_p99_ms"] < 30_000


def test_an_idle_resource_is_never_taken_for_stalled() -> None:
    """Before any work, and after each kind of work (a call that returns or raises, a
    batch that succeeds or raises, a periodic hook), the runner is idle: the watchdog,
    which catches a stalled neighbour, leaves it be. Each resource does its kind of
    work last."""
    rec = Recorder()
    watched = {"stall_timeout": 0.05}
    piper = {"kind": "tests.test_runner:Piper", **watched}
    checker = {"kind": "tests.test_runner:Checker", **watched}
    cfg = {
        "supervisor": {"backoff": {"initial": 0.01, "jitter": 0}},
        "resources": {
            "idle": {"kind": "tests.kinds:Probe", **watched},  # never called
            "ok": piper, "raised": piper, "batched": piper, "batch_raised": piper,
            "checked": {**checker, "health_interval": 0.01},
            "polled": {**checker, "poll_interval": 0.01},
            "stuck": {"kind": "tests.kinds:Probe", "call_timeout": 0.05, **watched},
        },
    }
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        assert system.get("ok").put("a").result(5) == "a"
        assert isinstance(system.get("raised").put(ValueError("bad")).exception(5), ValueError)
        for f in _queued_behind_a_block(system.get("batched"), ["a", "b"]):
            f.result(5)
        system.get("batch_raised").fail_batches(ValueError("rejected")).result(5)
        for f in _queued_behind_a_block(system.get("batch_raised"), ["c", "d"]):
            f.exception(5)
        assert system.get("polled").arm(1, poll_error=ValueError("odd")).result(5).wait(5)
        assert system.get("checked").arm(1).result(5).wait(5)
        started = threading.Event()
        stalled = system.get("stuck").stall(started)
        assert isinstance(stalled.exception(10), sessions.ResourceFault)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "stuck")
        assert [e.name for e in rec.of(ChildFaulted)] == ["stuck"]


def test_a_stalled_batch_fails_every_call_of_it_and_restarts() -> None:
    rec = Recorder()
    with _start("Piper", call_timeout=0.1, stall_timeout=0.2) as system:
        system.subscribe(rec)
        r = system.get("r")
        hanging = r.hang_batches().result(5)
        futures = _queued_behind_a_block(r, ["a", "b", "c"])
        assert hanging.wait(5)
        for f in futures:
            error = f.exception(10)
            assert isinstance(error, sessions.ResourceFault)
            assert error.resource == "r" and error.method == "put"
            assert str(error) == (
                "call put() on resource 'r' was in progress when resource 'r' stalled "
                "(run_batch() ran past stall_timeout=0.2s); its outcome is unknown")
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted))[0]
        assert fault.error.startswith("run_batch() stalled: still running after")
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        wait_until(lambda: system.stats("r").outcomes["fault"] == 3, what="3 faults counted")


class Hanger(sessions.ResourceActor):
    """Its poll() hangs (until aborted) once told to."""

    kind = "hanger"
    poll_interval = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.hanging = threading.Event()
        self.aborted = threading.Event()

    def abort(self, resource: Any) -> None:
        self.aborted.set()
        raise RuntimeError(f"abort of {resource!r} went wrong too")

    def connect(self) -> str:
        return "conn-1"

    def poll(self) -> None:
        if self.hang:
            self.hanging.set()
            self.aborted.wait(30)

    def hang_polls(self) -> threading.Event:
        self.hang = True
        return self.hanging


def test_a_stalled_poll_is_a_fault() -> None:
    rec = Recorder()
    with _start("Hanger", call_timeout=0.1, stall_timeout=0.2) as system:
        system.subscribe(rec)
        system.get("r").hang_polls().result(5)
        fault = rec.wait_for(lambda e: isinstance(e, ChildFaulted))[0]
        assert fault.error.startswith("poll() stalled: still running after")


def test_an_abort_that_raises_is_logged_and_the_stop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    system = _start("Hanger", call_timeout=30, stall_timeout=60, shutdown_timeout=0.05)
    r = system.get("r")
    assert r.hang_polls().result(5).wait(5)
    system.stop()
    assert r.state == "stopped"
    assert [m.getMessage() for m in caplog.records if m.levelno == logging.WARNING
            and m.getMessage().startswith("abort()")] == [
        "abort() of 'r' raised (ignored): RuntimeError: abort of 'conn-1' went wrong too"]


# -- deferred replies ---------------------------------------------------------------


class Later(sessions.ResourceActor):
    """``ask`` answers through a ``Deferred`` the test resolves itself."""

    kind = "later"
    fault_types = (Broken,)

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[concurrent.futures.Future[Any]] = []
        self.cancel_is_fault = False

    def is_fault(self, exc: BaseException) -> bool:
        if isinstance(exc, concurrent.futures.CancelledError):
            return self.cancel_is_fault
        return super().is_fault(exc)

    def treat_cancel_as_fault(self) -> None:
        self.cancel_is_fault = True

    def connect(self) -> object:
        return object()

    def ask(self) -> sessions.Deferred:
        answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.pending.append(answer)
        return sessions.Deferred(answer)

    def hang_disconnect(self) -> None:
        self.hanging = threading.Event()

    def disconnect(self, resource: Any) -> None:
        hanging = getattr(self, "hanging", None)
        if hanging is not None:
            hanging.wait(30)  # until abort()

    def abort(self, resource: Any) -> None:
        hanging = getattr(self, "hanging", None)
        if hanging is not None:
            hanging.set()

    def answers(self) -> list[concurrent.futures.Future[Any]]:
        pending, self.pending = self.pending, []
        return pending

    def ping(self) -> str:
        return "pong"


def _asked(r: Any) -> tuple[Any, concurrent.futures.Future[Any]]:
    asked = r.ask()
    (answer,) = r.answers().result(5)
    assert not asked.done()
    return asked, answer


def test_a_deferred_fault_restarts_as_a_reported_fault_not_a_normal_exit() -> None:
    rec = Recorder()
    with _start("Later", restart="transient") as system:
        system.subscribe(rec)
        r = system.get("r")
        asked, answer = _asked(r)
        cause = Broken("reply channel died")
        in_thread = threading.Thread(target=answer.set_exception, args=(cause,))
        in_thread.start()
        in_thread.join()
        error = asked.exception(5)
        assert isinstance(error, sessions.ResourceFault) and error.__cause__ is cause
        assert error.method == "ask" and error.resource == "r"
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert _faults(rec) == ["reported fault: Broken: reply channel died"]
        assert rec.of(ChildStopped) == []
        assert r.ping().result(5) == "pong"
        assert system.stats("r").outcomes["fault"] == 1


def test_a_deferred_caller_error_reaches_the_caller_only() -> None:
    rec = Recorder()
    with _start("Later") as system:
        system.subscribe(rec)
        r = system.get("r")
        asked, answer = _asked(r)
        error = ValueError("no such key")
        answer.set_exception(error)
        assert asked.exception(5) is error
        assert r.ping().result(5) == "pong"
        assert r.restarts == 0 and rec.of(ChildFaulted) == []
        outcomes = system.stats("r").outcomes
        assert (outcomes["error"], outcomes["fault"]) == (1, 0)


def test_a_deferred_reply_cancelled_by_the_resource_is_a_caller_error() -> None:
    with _start("Later") as system:
        r = system.get("r")
        asked, answer = _asked(r)
        assert answer.cancel()
        error = asked.exception(5)
        assert isinstance(error, concurrent.futures.CancelledError)
        assert str(error) == "ask() was cancelled by resource 'r'"
        assert not asked.cancelled()  # the caller did not cancel: it got an error
        assert r.ping().result(5) == "pong" and r.restarts == 0
        assert system.stats("r").outcomes["error"] == 1


def test_a_deferred_reply_cancelled_by_the_resource_can_be_a_fault() -> None:
    rec = Recorder()
    with _start("Later") as system:
        system.subscribe(rec)
        r = system.get("r")
        r.treat_cancel_as_fault().result(5)
        asked, answer = _asked(r)
        assert answer.cancel()
        error = asked.exception(5)
        assert isinstance(error, sessions.ResourceFault) and error.method == "ask"
        assert isinstance(error.__cause__, concurrent.futures.CancelledError)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert _faults(rec) == [
            "reported fault: CancelledError: ask() was cancelled by resource 'r'"]


def test_a_deferred_value_is_not_kept_once_resolved() -> None:
    class Value:
        pass

    with _start("Later") as system:
        r = system.get("r")
        asked, answer = _asked(r)
        value = Value()
        ref = weakref.ref(value)
        answer.set_result(value)
        assert asked.result(5) is value
        del value, asked, answer
        wait_until(lambda: gc.collect() >= 0 and ref() is None, timeout=5,
                   what="the resolved value to be released")


def test_a_reply_owed_while_the_disconnect_hangs_at_stop_names_the_disconnect() -> None:
    system = _start("Later", shutdown_timeout=0.1)
    r = system.get("r")
    asked, _answer = _asked(r)
    r.hang_disconnect().result(5)
    system.stop()
    error = asked.exception(0)
    assert isinstance(error, sessions.ResourceFault)
    assert str(error) == (
        "call ask() on resource 'r' was in progress when resource 'r' was stopped "
        "(disconnect() did not finish within shutdown_timeout=0.1s); its outcome is unknown")


def test_a_deferred_value_resolves_the_call_and_counts_ok() -> None:
    with _start("Later") as system:
        r = system.get("r")
        asked, answer = _asked(r)
        answer.set_result({"value": 1})
        assert asked.result(5) == {"value": 1}
        wait_until(lambda: system.stats("r").outcomes["ok"] == 2, what="the ok counted")


# -- call outcomes and pool routing -------------------------------------------------


def test_call_latencies_are_queue_wait_plus_run_time() -> None:
    with sessions.start(config({"a": {"call_timeout": 30}})) as system:
        a = system.get("a")
        assert a.echo(1).result(5) == 1
        assert isinstance(a.fail().exception(5), ValueError)
        assert isinstance(a.break_it().exception(5), sessions.ResourceFault)
        wait_until(lambda: sum(system.stats("a").outcomes.values()) == 3, what="all counted")
        status = system.status()["children"][0]
        assert 0 <= status["latency_p50_ms"] <= status["latency_p99_ms"] < 30_000


def test_a_cancelled_call_is_not_counted_as_a_timeout() -> None:
    with sessions.start(config(["a"])) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        a.block(started, release)
        assert started.wait(5)
        assert a.echo(1).cancel()
        release.set()
        assert a.echo(2).result(5) == 2
        assert system.stats("a").outcomes == {
            "ok": 2, "error": 0, "fault": 0, "timeout": 0, "refused": 0, "superseded": 0}


@pytest.mark.parametrize("first", ["whoami", "fail"])
def test_a_pool_member_that_finished_its_call_is_idle_again(first: str) -> None:
    """Whatever way its last call ended, an idle member counts as idle: calls go to it,
    never behind the member blocked in a call."""
    with sessions.start(config({"db": {"pool_size": 2}})) as system:
        db = system.get("db")
        started, release = threading.Event(), threading.Event()
        blocked = db.block(started, release)
        assert started.wait(5)
        try:
            db.call(first).exception(5)  # on the other member, which is idle again
            served = [db.whoami().result(2)[0] for _ in range(4)]
        finally:
            release.set()
        assert len(set(served)) == 1
        assert blocked.result(5) == "released"


def test_calls_expiring_while_nobody_serves_are_counted_as_timeouts() -> None:
    with sessions.start(config({"a": {"call_timeout": 0.2}})) as system:
        a = system.get("a")
        gate = threading.Event()
        controls("a").connect_gate = gate  # hold the reconnect
        assert isinstance(a.break_it().exception(5), sessions.ResourceFault)
        expired = [a.echo(1), a.echo(2)]
        cancelled = a.echo(3)
        assert cancelled.cancel()
        done, _ = concurrent.futures.wait(expired, timeout=5)  # expired by the runtime
        assert len(done) == 2
        gate.set()
        assert a.echo(4).result(5) == 4
        outcomes = system.stats("a").outcomes
        assert (outcomes["timeout"], outcomes["ok"], outcomes["fault"]) == (2, 1, 1)


@pytest.mark.parametrize("value", ["ok", "refuse-all"])
def test_a_pool_member_that_finished_a_batch_is_idle_again(value: str) -> None:
    with _start("Piper", pool_size=2) as system:
        r = system.get("r")
        releases = []
        for _ in range(2):  # both members busy
            started, release = threading.Event(), threading.Event()
            releases.append(release)
            r.block(started, release)
            assert started.wait(5)
        puts = [r.put(value) for _ in range(4)]  # two for each member: two batches
        for release in releases:
            release.set()
        for f in puts:
            f.exception(5)
        r.whoami().result(5)  # one member has run a plain call since its batch
        started, release = threading.Event(), threading.Event()
        blocked = r.block(started, release)
        assert started.wait(5)
        try:
            served = [r.whoami().result(2) for _ in range(4)]
        finally:
            release.set()
        assert len(set(served)) == 1
        assert blocked.result(5) is None


def test_a_pool_routes_calls_while_its_members_run_batches() -> None:
    with _start("Piper", pool_size=2) as system:
        r = system.get("r")
        releases = []
        for _ in range(2):  # both members busy
            started, release = threading.Event(), threading.Event()
            releases.append(release)
            r.block(started, release)
            assert started.wait(5)
        puts = [r.put(i) for i in range(4)]  # two for each member: two batches
        entered, resume = threading.Event(), threading.Event()
        PAUSE[:] = [entered, resume]
        try:
            releases[0].set()
            assert entered.wait(5)  # a member is in its batch
            late = r.put("late")
        finally:
            resume.set()
            releases[1].set()
            PAUSE.clear()
        assert [f.result(5) for f in puts] == [0, 1, 2, 3]
        assert late.result(5) == "late"


def test_a_busy_member_counts_as_one_call_whether_in_a_call_or_a_batch() -> None:
    """Least-loaded routing: a busy member with nothing queued is less loaded than a
    busy member with a call queued behind it, whether each runs a call or a batch."""
    with _start("Piper", pool_size=2) as system:
        r = system.get("r")
        releases = []
        for _ in range(2):  # both members busy in a call
            started, release = threading.Event(), threading.Event()
            releases.append(release)
            r.block(started, release)
            assert started.wait(5)
        puts = [r.put(i) for i in range(3)]  # two behind one member, one behind the other
        entered, resume = threading.Event(), threading.Event()
        PAUSE[:], PAUSED_IN[:] = [entered, resume], []
        release3 = threading.Event()
        try:
            releases[0].set()  # its two puts run as a batch, which pauses
            assert entered.wait(5)
            # in a batch, nothing queued  <  in a call, one put queued
            behind_batch = r.whoami()
            releases[1].set()
            assert puts[1].result(5) == 1
            other = r.whoami().result(5)  # the member that ran its put, idle now
            started3 = threading.Event()
            r.block(started3, release3)
            assert started3.wait(5)
            # in a call, nothing queued  <  in a batch, one call queued
            behind_call = r.whoami()
        finally:
            resume.set()
            release3.set()
            releases[1].set()
            PAUSE.clear()
        assert [f.result(5) for f in puts] == [0, 1, 2]
        assert behind_batch.result(5) == PAUSED_IN[0] != other
        assert behind_call.result(5) == other


# -- refused calls ------------------------------------------------------------------


def test_refused_calls_name_their_resource() -> None:
    with sessions.start(config(["a"], max_restarts=0)) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        a.block(started, release)
        assert started.wait(5)
        fault = a.break_it("wire cut")
        queued = a.echo(1)
        release.set()
        assert isinstance(fault.exception(5), sessions.ResourceFault)
        error = queued.exception(5)  # failed by the closing mailbox
        assert isinstance(error, sessions.ResourceUnavailable) and error.resource == "a"
        assert "gave up" in str(error)
        later = a.echo(2)
        assert later.done()  # refused at once by the closed mailbox
        error = later.exception(0)
        assert isinstance(error, sessions.ResourceUnavailable) and error.resource == "a"
        assert "wire cut" in str(error)
        assert system.stats("a").outcomes["refused"] == 2


def test_a_circuit_counts_a_fault_but_not_a_caller_error() -> None:
    rec = Recorder()
    cfg = config({"a": {"breaker": {"failures": 2, "reset_timeout": 60}}}, max_restarts=50)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        a = system.get("a")
        for _ in range(3):
            assert isinstance(a.fail().exception(5), ValueError)
        assert a.circuit == "closed"
        assert isinstance(a.break_it().exception(5), sessions.ResourceFault)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert a.echo(1).result(5) == 1  # a success resets the count
        assert isinstance(a.break_it().exception(5), sessions.ResourceFault)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 2)
        assert a.circuit == "closed"
        assert isinstance(a.break_it().exception(5), sessions.ResourceFault)
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open")
        assert controls("a").connects >= 3


# -- a normal exit (stop_normally) --------------------------------------------------


def test_a_normal_exit_of_a_transient_resource_refuses_the_calls_queued_behind_it() -> None:
    rec = Recorder()
    with sessions.start(config({"a": {"restart": "transient"}, "b": {}})) as system:
        system.subscribe(rec)
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        a.block(started, release)
        assert started.wait(5)
        done, queued = a.finish(), a.echo(1)
        release.set()
        assert done.result(5) == "bye"
        error = queued.exception(5)
        assert isinstance(error, sessions.ResourceUnavailable) and error.resource == "a"
        assert str(error) == "resource 'a' stopped normally (job done)"
        stopped = rec.wait_for(lambda e: isinstance(e, ChildStopped))[0]
        assert (stopped.name, stopped.reason) == ("a", "exited normally: job done")
        assert rec.of(ChildFaulted) == [] and a.state == "stopped"
        assert controls("a").disconnects == 1


def test_a_permanent_resource_exits_once_and_serves_again_after_its_restart() -> None:
    rec = Recorder()
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        a = system.get("a")
        assert a.finish().result(5) == "bye"
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert [a.generation().result(5) for _ in range(3)] == [2, 2, 2]
        assert a.restarts == 1
        assert [e.error for e in rec.of(ChildFaulted)] == [
            "exited normally (job done) but is permanent"]


def test_a_normal_exit_asked_by_a_call_that_faulted_is_not_carried_to_the_next_one() -> None:
    """The fault wins: the next incarnation serves on instead of ending after its
    first call."""
    def finish_then_break(probe: Any) -> None:
        probe.stop_normally("meant to finish")
        raise ProbeBroken("but the link broke first")

    rec = Recorder()
    with sessions.start(config(["a"])) as system:
        system.subscribe(rec)
        a = system.get("a")
        with pytest.raises(sessions.ResourceFault):
            a.apply(finish_then_break).result(5)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert [a.generation().result(5) for _ in range(3)] == [2, 2, 2]
        assert a.restarts == 1


# -- report_fault() across incarnations ---------------------------------------------


def test_a_late_ending_abandoned_incarnation_leaves_the_new_one_reachable() -> None:
    """An abandoned incarnation whose blocked call returns after the restart closes
    itself, yet report_fault() still reaches the new incarnation."""
    rec = Recorder()
    with sessions.start(config({"a": {"call_timeout": 0.2, "stall_timeout": 0.3}})) as system:
        system.subscribe(rec)
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        stuck = a.stubborn(started, release)
        assert isinstance(stuck.exception(10), sessions.ResourceFault)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert a.generation().result(5) == 2
        release.set()
        wait_until(lambda: system.status()["children"][0]["abandoned"] == 0,
                   what="the abandoned incarnation ended")
        a.apply(lambda probe: probe.report_fault(ProbeBroken("late report"))).result(5)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 2)
        assert rec.of(ChildFaulted)[-1].error == "reported fault: ProbeBroken: late report"


def test_report_fault_after_the_resource_stopped_is_ignored() -> None:
    with sessions.start(config(["a", "b"])) as system:
        probe = system.get("a").apply(lambda p: p).result(5)
        system.terminate_child("a")
        assert probe.report_fault(ProbeBroken("reader saw EOF late")) is None
        assert system.get("a").state == "stopped"


# -- ResourceActor's defaults (sessions/_runtime/contract.py) ----------------------------


class Closable:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Plain(sessions.ResourceActor):
    """Relies on every default hook of ResourceActor; its connection closes itself."""

    kind = "plain"
    fault_types = (Broken,)
    batch_methods = frozenset({"put"})

    class Options(BaseModel):
        size: int = 1
        closable: bool = True

    def __init__(self, size: int = 1, closable: bool = True) -> None:
        super().__init__()
        self.size = size
        self.closable = closable
        self.conns: list[Any] = []
        self.name_at_init = self.name

    def connect(self) -> Any:
        conn = Closable() if self.closable else object()  # nothing to close
        self.conns.append(conn)
        return conn

    def put(self, value: Any) -> Any:
        if isinstance(value, BaseException):
            raise value
        return value

    def block(self, started: threading.Event, release: threading.Event) -> None:
        started.set()
        release.wait(10)

    def break_it(self) -> None:
        raise Broken("link lost")

    def names(self) -> tuple[str, str]:
        return self.name_at_init, self.name

    def closed(self) -> list[bool]:
        return [c.closed for c in self.conns if isinstance(c, Closable)]

    def finish(self) -> None:
        self.stop_normally()

    def replay_steps(self) -> tuple[str, ...]:
        self.replay("a", lambda conn: None)
        self.replay("b", lambda conn: None)
        self.replay("a", lambda conn: None)  # replaced in place: "a" stays first
        self.forget("never registered")
        before = self.replays
        self.forget("a")
        return (*before, "|", *self.replays)


HOOKS = ["connect", "disconnect", "is_fault", "health_check", "replay", "forget",
         "stop_normally", "report_fault", "poll", "run_batch", "counts_as_failure",
         "max_pool_size", "abort", "Options"]


def test_a_handle_offers_the_kinds_methods_and_transaction_but_no_hook() -> None:
    with _start("Plain", restart="transient") as system:
        r = system.get("r")
        for hook in HOOKS:
            with pytest.raises(AttributeError) as info:
                getattr(r, hook)
            assert str(info.value).startswith(f"resource 'r' (kind 'plain') has no method '{hook}'")
        error = str(info.value)
        offered = error[error.index("its methods: ") + len("its methods: "):].split(", ")
        assert offered == sorted(offered)
        assert {"block", "break_it", "closed", "finish", "names", "put", "replay_steps",
                "transaction"} <= set(offered)
        assert not [n for n in offered if n.startswith("_") or n in HOOKS or n in (
            "resource", "name", "kind", "fault_types", "replays", "poll_interval",
            "batch_methods", "max_batch")]
        assert r.transaction(lambda conn, x, y=0: (type(conn).__name__, x + y), 1, y=2
                             ).result(5) == ("Closable", 3)


def test_the_default_disconnect_closes_the_connection_if_it_can(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    with _start("Plain") as system:
        system.subscribe(rec)
        r = system.get("r")
        assert isinstance(r.break_it().exception(5), sessions.ResourceFault)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert r.closed().result(5) == [True, False]
    with _start("Plain", closable=False) as system:
        system.subscribe(rec)
        r = system.get("r")
        assert isinstance(r.break_it().exception(5), sessions.ResourceFault)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1, count=2)
        assert r.put(1).result(5) == 1
    assert not [m for m in caplog.records if "disconnect of" in m.getMessage()]


def test_the_default_hooks_run_quietly_and_stop_normally_says_finished(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    with _start("Plain", restart="transient", health_interval=0.01,
                stall_timeout=60, shutdown_timeout=0.05) as system:
        system.subscribe(rec)
        r = system.get("r")
        assert r.replay_steps().result(5) == ("a", "b", "|", "b")
        wait_until(lambda: r.put(1).result(5) == 1 and len(caplog.records) == 0
                   and system.stats("r").outcomes["ok"] >= 3, what="quiet health checks")
        assert r.finish().result(5) is None
        stopped = rec.wait_for(lambda e: isinstance(e, ChildStopped))[0]
        assert stopped.reason == "exited normally: finished"
        assert rec.of(ChildFaulted) == []


def test_the_default_run_batch_runs_each_call_and_a_base_exception_breaks_the_batch() -> None:
    rec = Recorder()
    with _start("Plain") as system:
        system.subscribe(rec)
        r = system.get("r")

        def queued(values: list[Any]) -> list[Any]:
            started, release = threading.Event(), threading.Event()
            r.block(started, release)
            assert started.wait(5)
            futures = [r.put(v) for v in values]
            release.set()
            return futures

        ok, bad = queued(["a", ValueError("bad")])
        assert ok.result(5) == "a" and str(bad.exception(5)) == "bad"
        started, release = threading.Event(), threading.Event()
        r.block(started, release)
        assert started.wait(5)
        by_keyword = [r.put(value="kw"), r.put(value=1)]
        release.set()
        assert [f.result(5) for f in by_keyword] == ["kw", 1]
        futures = queued(["a", SystemExit(2)])
        for f in futures:
            error = f.exception(5)
            assert isinstance(error, sessions.ResourceFault)
            assert isinstance(error.__cause__, SystemExit)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert _faults(rec) == ["batch: SystemExit: 2"]


def test_a_new_actor_is_named_after_its_class_until_the_runtime_names_it() -> None:
    plain = Plain()
    assert (plain.name, plain.resource, plain.replays) == ("Plain", None, ())
    assert plain.report_fault(Broken("not running yet")) is None  # ignored: not running
    with _start("Plain") as system:
        assert system.get("r").names().result(5) == ("Plain", "r")


class Picky(sessions.ResourceActor):
    """Every error is a fault but a ValueError (its is_fault(None) is True)."""

    kind = "picky"

    def connect(self) -> object:
        return object()

    def is_fault(self, exc: BaseException) -> bool:
        return not isinstance(exc, ValueError)

    def fail(self) -> None:
        raise ValueError("bad input")

    def keys(self) -> list[Any]:
        return []


def test_by_default_what_is_not_a_fault_does_not_count_toward_the_breaker() -> None:
    with _start("Picky", **BREAKER) as system:
        r = system.get("r")
        for _ in range(3):
            assert isinstance(r.fail().exception(5), ValueError)
        assert _circuit_after(r) == "closed"


def test_ignore_and_a_missing_connect() -> None:
    assert repr(sessions.IGNORE) == "sessions.IGNORE"
    with pytest.raises(sessions.ResourceUnavailable) as info:
        _start("NoConnect", supervisor={"max_restarts": 0})
    assert "NotImplementedError: NoConnect must implement connect()" in str(info.value)


class NoConnect(sessions.ResourceActor):
    kind = "no-connect"


def test_a_deferred_reply_that_never_comes_fails_at_stall_timeout_and_a_late_one_is_dropped(
) -> None:
    """No future stays unresolved: the runtime bounds a deferred reply by stall_timeout
    (CallTimeout, started=True, counted as a timeout, not a fault); a reply arriving
    after that is dropped, and the resource keeps serving, never restarted."""
    rec = Recorder()
    with _start("Later", call_timeout=0.2, stall_timeout=0.3) as system:
        system.subscribe(rec)
        r = system.get("r")
        asked, answer = _asked(r)
        error = asked.exception(timeout=10)  # an explicit wait past the deadline
        assert isinstance(error, sessions.CallTimeout)
        assert error.started is True and error.resource == "r"
        assert "ask()" in str(error) and "stall_timeout=0.3s" in str(error)
        assert str(error).endswith("; its outcome is unknown")
        assert asked.done()
        answer.set_result("too late")
        assert asked.exception(0) is error
        assert r.ping().result(5) == "pong"
        assert system.stats("r").outcomes["timeout"] == 1
        assert system.stats("r").outcomes["ok"] == 2  # answers() and ping()
        assert rec.of(ChildFaulted) == [] and r.restarts == 0


def test_an_old_deferred_reply_expires_while_younger_ones_are_still_in_time() -> None:
    """Each deferred call is bounded by its own stall_timeout: one asked long before ten
    others fails at its bound while they wait on; once failed it is no longer held."""
    with _start("Later", call_timeout=0.2, stall_timeout=0.6) as system:
        r = system.get("r")
        old = r.ask()
        assert len(r.answers().result(5)) == 1
        time.sleep(0.3)  # the young ones are asked half a stall_timeout later
        young = [r.ask() for _ in range(10)]
        assert len(r.answers().result(5)) == 10
        assert isinstance(old.exception(timeout=10), sessions.CallTimeout)
        assert not any(f.done() for f in young)  # their bound is 0.3 s later
        held = weakref.ref(old)
        del old
        gc.collect()
        assert held() is None  # the runtime let go of it
        for f in young:
            assert isinstance(f.exception(timeout=10), sessions.CallTimeout)


def test_a_deferred_reply_within_stall_timeout_is_not_expired() -> None:
    with _start("Later", call_timeout=0.2, stall_timeout=5.0) as system:
        r = system.get("r")
        asked, answer = _asked(r)
        with pytest.raises(sessions.CallTimeout):
            asked.result()  # the caller's bare wait gives up at call_timeout ...
        answer.set_result(42)
        assert asked.result(5) == 42  # ... but the call still completes within stall_timeout


def test_deferred_replies_still_owed_when_the_connection_closes_fail_at_once() -> None:
    """A reply the closed connection can no longer bring fails with ResourceFault when
    the incarnation ends, not at stall_timeout; the kind need not fail it itself."""
    with _start("Later", stall_timeout=60.0) as system:
        r = system.get("r")
        asked, answer = _asked(r)
        system.restart_child("r")
        error = asked.exception(5)
        assert isinstance(error, sessions.ResourceFault)
        assert error.method == "ask" and error.resource == "r"
        assert "resource 'r' was stopped before the deferred reply came" in str(error)
        answer.set_result("too late")  # dropped
        assert asked.exception(0) is error
        assert r.ping().result(5) == "pong"


def test_a_retired_incarnation_waiting_for_its_stop_serves_nothing_and_ignores_reports(
) -> None:
    """A one_for_all restart retires the siblings of the faulted child; the stopper ends
    them one at a time (b first, waiting for its call), so c's old incarnation waits
    for its stop meanwhile. It serves no call in that time (a call waits for the new
    incarnation), and a fault its reader reports then is moot: c still ends at once when
    its turn comes, and is restarted once."""
    cfg = config({"c": {"shutdown_timeout": 30}, "b": {"shutdown_timeout": 30}, "a": {}},
                 strategy="one_for_all")
    with sessions.start(cfg) as system:
        a, b, c = (system.get(name) for name in "abc")
        report = c.apply(lambda probe: functools.partial(
            probe.report_fault, ProbeBroken("the old connection's reader saw EOF"),
            probe.resource)).result(5)
        started, release = threading.Event(), threading.Event()
        held = b.block(started, release)
        assert started.wait(5)
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)  # answered once b and c are retired
        late = c.generation()
        report()
        concurrent.futures.wait([late], timeout=0.2)
        assert not late.done()  # not served by the retired incarnation
        release.set()
        assert held.result(5) == "released"
        assert late.result(10) == 2  # served by c's next connection
        assert c.restarts == 1 and controls("c").connects == 2
