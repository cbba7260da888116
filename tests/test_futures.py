"""SessionFuture, the future of one handle call: waiting is bounded by the call's
deadline (``call_timeout``), ``CallTimeout`` says whether the call had started, and
cancel(), ``concurrent.futures.wait()``/``as_completed()`` behave as for any future."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import sessions
from sessions.messages import CircuitChanged
from tests.kinds import controls
from tests.support import Recorder, config, in_thread

CT = 0.2
"""A call_timeout short enough to pass in a test, long enough to start a call in."""


@contextmanager
def busy(call_timeout: float = CT) -> Iterator[tuple[Any, Any, threading.Event]]:
    """A system whose resource 'a' is running a blocking ``block()`` call: yields the
    handle, that call's future and the event that releases it (set on the way out)."""
    spec = {"call_timeout": call_timeout, "stall_timeout": 60}  # a slow call is no fault
    with sessions.start(config({"a": spec})) as system:
        a = system.get("a")
        started, release = threading.Event(), threading.Event()
        running = a.block(started, release)
        try:
            assert started.wait(5)
            yield a, running, release
        finally:
            release.set()


def _assert_not_started(err: BaseException, method: str) -> None:
    assert type(err) is sessions.CallTimeout and isinstance(err, TimeoutError)
    assert err.resource == "a" and err.started is False
    assert str(err) == (f"call {method}() on resource 'a' did not start within its "
                        "call_timeout; it was not executed and never will be")


def _assert_unknown_outcome(err: BaseException, method: str) -> None:
    assert type(err) is sessions.CallTimeout
    assert err.resource == "a" and err.started is True
    assert str(err) == (f"call {method}() on resource 'a' started but did not finish "
                        "within its call_timeout; its outcome is unknown")


# -- the future's identity -------------------------------------------------------------


def test_a_call_future_names_its_resource_method_and_deadline() -> None:
    with sessions.start(config({"a": {"call_timeout": 7.0}})) as system:
        a = system.get("a")
        before = time.monotonic()
        fut = a.echo(1)
        after = time.monotonic()
        assert isinstance(fut, sessions.SessionFuture)
        assert isinstance(fut, concurrent.futures.Future)
        assert (fut.resource, fut.method) == ("a", "echo")
        assert before + 7.0 <= fut.deadline <= after + 7.0
        assert fut.get(5) == 1  # the Pykka-style alias of result()


def test_a_call_refused_by_an_open_circuit_is_a_failed_future_past_its_deadline() -> None:
    rec = Recorder()
    cfg = config({"a": {"breaker": {"failures": 1, "reset_timeout": 60}}}, max_restarts=50)
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        a = system.get("a")
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open")
        fut = a.echo(1)
        assert fut.done() and (fut.resource, fut.method) == ("a", "echo")
        assert fut.deadline <= time.monotonic()
        err = fut.exception()
        assert isinstance(err, sessions.ResourceUnavailable) and err.resource == "a"
        with pytest.raises(sessions.ResourceUnavailable, match="circuit open") as info:
            fut.result()
        assert info.value is err


# -- a call that never started --------------------------------------------------------


def test_result_of_a_call_that_never_started_raises_call_timeout_naming_it() -> None:
    with busy() as (a, _running, _release):
        late = a.record("late", 1)
        with pytest.raises(sessions.CallTimeout) as info:
            late.result()  # no timeout: bounded by call_timeout
        _assert_not_started(info.value, "record")
        assert late.done() and not late.running() and not late.cancel()
        assert late.exception(0) is info.value  # resolved, once, with that error
    assert controls("a").log == []


def test_exception_of_a_call_that_never_started_returns_the_call_timeout() -> None:
    with busy() as (a, _running, _release):
        late = a.echo(1)
        err = late.exception()  # no timeout: bounded by call_timeout, then returns
        assert err is not None
        _assert_not_started(err, "echo")
        assert late.done()
        with pytest.raises(sessions.CallTimeout) as info:
            late.result(0)
        assert info.value is err


def test_a_queued_call_expires_even_under_a_longer_explicit_timeout() -> None:
    """The deadline stops the call from starting whatever the caller waits for."""
    with busy() as (a, _running, _release):
        late = a.echo(1)
        with pytest.raises(sessions.CallTimeout) as info:
            late.result(timeout=30)
        _assert_not_started(info.value, "echo")
        later = a.echo(2)
        err = later.exception(timeout=30)
        assert err is not None
        _assert_not_started(err, "echo")


def test_await_of_a_call_that_never_started_raises_call_timeout_naming_it() -> None:
    async def main() -> None:
        with busy() as (a, _running, _release):
            late = a.echo(1)
            with pytest.raises(sessions.CallTimeout) as info:
                await late
            _assert_not_started(info.value, "echo")
            assert late.exception(0) is info.value

    asyncio.run(main())


# -- a call that started and is still running at its deadline -------------------------


def test_result_of_a_running_call_past_its_deadline_reports_unknown_outcome() -> None:
    with busy() as (_a, running, release):
        with pytest.raises(sessions.CallTimeout) as info:
            running.result()
        _assert_unknown_outcome(info.value, "block")
        assert running.running() and not running.done()  # not resolved by the wait
        release.set()
        assert running.result(5) == "released"


def test_exception_of_a_running_call_past_its_deadline_raises_call_timeout() -> None:
    with busy() as (_a, running, release):
        with pytest.raises(sessions.CallTimeout) as info:
            running.exception()
        _assert_unknown_outcome(info.value, "block")
        with pytest.raises(sessions.CallTimeout):
            running.exception()  # again, and at once: the deadline has passed
        assert not running.done()
        release.set()
        assert running.exception(5) is None
        assert running.exception() is None  # done: no deadline applies any more


def test_await_of_a_running_call_past_its_deadline_reports_unknown_outcome() -> None:
    async def main() -> None:
        with busy() as (_a, running, release):
            with pytest.raises(sessions.CallTimeout) as info:
                await running
            _assert_unknown_outcome(info.value, "block")
            release.set()
            assert await asyncio.wrap_future(running) == "released"
            assert await running == "released"

    asyncio.run(main())


def test_await_past_the_deadline_leaves_no_unretrieved_error_behind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A coroutine that gave up on a call at its deadline does not read the error the
    call raises later; that error must not be logged as 'never retrieved'."""
    started, release = threading.Event(), threading.Event()

    def fails_late(probe: Any) -> None:
        started.set()
        release.wait(30)
        raise ValueError("too late")

    async def main() -> None:
        with sessions.start(config({"a": {"call_timeout": CT, "stall_timeout": 60}})) as system:
            fut = system.get("a").apply(fails_late)
            with pytest.raises(sessions.CallTimeout):
                await fut
            release.set()
            with pytest.raises(ValueError, match="too late"):
                await asyncio.wrap_future(fut)  # the first asyncio copy has the error too

    caplog.set_level(logging.DEBUG, logger="asyncio")
    asyncio.run(main())
    gc.collect()  # an unretrieved error is logged when its asyncio future is collected
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"
            and r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("wait", ["result", "exception"])
def test_an_explicit_timeout_longer_than_call_timeout_ends_in_a_plain_timeout(wait: str) -> None:
    """Past the deadline a longer explicit timeout is honoured; when it runs out too,
    the caller gets the plain TimeoutError it asked for, not CallTimeout."""
    with busy(call_timeout=0.05) as (_a, running, release):
        with pytest.raises(TimeoutError) as info:
            getattr(running, wait)(timeout=0.3)
        assert not isinstance(info.value, sessions.CallTimeout)
        assert not running.done()
        release.set()
        assert running.result(5) == "released"


@pytest.mark.parametrize("wait", ["result", "exception"])
def test_an_explicit_timeout_longer_than_call_timeout_waits_past_the_deadline(
    wait: str,
) -> None:
    with busy(call_timeout=0.05) as (_a, running, release):
        waiter = in_thread(lambda: getattr(running, wait)(timeout=30))
        with pytest.raises(sessions.CallTimeout):
            running.result()  # the deadline has passed, the call still runs
        assert not waiter.done()
        release.set()
        assert waiter.result(10) == ("released" if wait == "result" else None)


@pytest.mark.parametrize("wait", ["result", "exception"])
def test_an_explicit_timeout_shorter_than_call_timeout_is_a_plain_timeout(wait: str) -> None:
    with busy(call_timeout=30) as (_a, running, release):
        with pytest.raises(TimeoutError) as info:
            getattr(running, wait)(timeout=0.05)
        assert not isinstance(info.value, sessions.CallTimeout)
        with pytest.raises(TimeoutError) as again:
            getattr(running, wait)(timeout=0)
        assert not isinstance(again.value, sessions.CallTimeout)
        release.set()
        assert running.result(5) == "released"


# -- a call that raised a TimeoutError of its own -------------------------------------


def test_a_timeout_error_raised_by_the_call_itself_reaches_the_caller_as_is() -> None:
    own = TimeoutError("the device did not answer")

    def fn(probe: Any) -> None:
        raise own

    with sessions.start(config({"a": {"call_timeout": 30}})) as system:
        fut = system.get("a").apply(fn)
        with pytest.raises(TimeoutError) as info:
            fut.result()
        assert info.value is own
        with pytest.raises(TimeoutError) as again:
            fut.result(timeout=5)
        assert again.value is own
        assert fut.exception() is own


# -- cancel(), wait() and as_completed() ----------------------------------------------


def test_a_running_call_cannot_be_cancelled() -> None:
    with busy() as (_a, running, release):
        assert running.running()
        assert not running.cancel()
        assert not running.cancelled()
        release.set()
        assert running.result(5) == "released"


def test_a_queued_call_can_be_cancelled_and_never_runs() -> None:
    with busy(call_timeout=30) as (a, _running, release):
        victim = a.record("cancelled", 0)
        assert not victim.running()
        assert victim.cancel() and victim.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            victim.result()
        release.set()
        assert a.record("kept", 1).result(5) == 1
        assert [c for c, _, _ in controls("a").log] == ["kept"]


def test_wait_and_as_completed_wake_when_the_resource_reaches_a_cancelled_call() -> None:
    """concurrent.futures.wait() hears of a cancel only once the executor has
    acknowledged it: the runtime does so when it reaches the call."""
    with busy(call_timeout=30) as (a, _running, release):
        victims = [a.echo(1), a.echo(2)]
        assert all(v.cancel() for v in victims)
        waiting = in_thread(lambda: concurrent.futures.wait(victims[:1], timeout=10))
        completing = in_thread(
            lambda: list(concurrent.futures.as_completed(victims[1:], timeout=10)))
        release.set()
        done, not_done = waiting.result(15)
        assert done == set(victims[:1]) and not not_done
        assert completing.result(15) == victims[1:]
        assert a.echo(3).result(5) == 3


def test_wait_wakes_on_a_cancelled_call_queued_while_nobody_serves() -> None:
    """While the resource restarts, the supervision thread acknowledges the cancel."""
    with sessions.start(config({"a": {"call_timeout": CT}})) as system:
        a = system.get("a")
        gate = threading.Event()
        controls("a").connect_gate = gate  # hold the reconnect
        try:
            with pytest.raises(sessions.ResourceFault):
                a.break_it().result(5)
            victim = a.echo(1)
            assert victim.cancel()
            done, _ = concurrent.futures.wait([victim], timeout=10)
            assert victim in done
            assert list(concurrent.futures.as_completed([victim], timeout=10)) == [victim]
        finally:
            gate.set()
        assert a.echo(2).result(5) == 2
