"""Handles from asyncio: awaiting a future must suspend the coroutine, never block the loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

import sessions
from sessions._runtime.futures import SessionFuture
from tests import kinds
from tests.support import config

T = TypeVar("T")


def test_await_does_not_block_the_event_loop() -> None:
    async def main() -> tuple[str, int]:
        async with sessions.start(config(["a"])) as system, system.get("a") as a:
            started, release = threading.Event(), threading.Event()
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while not release.is_set():
                    ticks += 1
                    if ticks == 20:
                        release.set()  # only a free loop can get here
                    await asyncio.sleep(0.005)

            tick_task = asyncio.create_task(ticker())
            result = await a.block(started, release)
            await tick_task
            return result, ticks

    result, ticks = asyncio.run(main())
    assert result == "released" and ticks >= 20


def test_await_raises_the_call_errors() -> None:
    async def main() -> None:
        with sessions.start(config({"a": {"call_timeout": 0.2}})) as system:
            a = system.get("a")
            assert await a.echo(7) == 7
            with pytest.raises(ValueError, match="bad input"):
                await a.fail()
            with pytest.raises(sessions.ResourceFault):
                await a.break_it()
            started, release = threading.Event(), threading.Event()
            slow = a.block(started, release)
            queued = a.echo(1)
            with pytest.raises(sessions.CallTimeout) as info:
                await queued  # never starts within call_timeout
            assert info.value.started is False
            with pytest.raises(sessions.CallTimeout) as started_info:
                await slow  # started, still running at its deadline: outcome unknown
            assert started_info.value.started is True
            release.set()
            assert slow.result(5) == "released"  # an explicit timeout is honoured

    asyncio.run(main())


def test_futures_work_with_asyncio_and_concurrent_helpers() -> None:
    async def main() -> list[int]:
        with sessions.start(config(["a"])) as system:
            a = system.get("a")
            wrapped = [asyncio.wrap_future(a.echo(i)) for i in range(20)]
            return list(await asyncio.gather(*wrapped))

    assert asyncio.run(main()) == list(range(20))


def test_many_coroutines_share_one_resource() -> None:
    async def main() -> int:
        with sessions.start(config(["a"])) as system:
            a = system.get("a")

            async def worker(tid: int) -> int:
                for seq in range(25):
                    await a.record(tid, seq)
                return tid

            done = await asyncio.gather(*(worker(t) for t in range(8)))
            return len(done)

    assert asyncio.run(main()) == 8


# -- the await path: one wake-up per batch, one timer per loop ---------------------------


def test_cancelling_the_awaiting_task_leaves_the_call_alone() -> None:
    """A task that stops waiting does not withdraw its call: a running call finishes,
    a queued one still runs (as for a thread that stopped waiting); ``cancel()`` is how
    to withdraw a call."""

    async def main() -> None:
        with sessions.start(config({"a": {"call_timeout": 5.0}})) as system:
            a = system.get("a")
            started, release = threading.Event(), threading.Event()
            running, queued = a.block(started, release), a.record("queued", 1)
            tasks = [asyncio.ensure_future(running), asyncio.ensure_future(queued)]
            await asyncio.sleep(0)
            for task in tasks:
                task.cancel()
            assert [isinstance(r, asyncio.CancelledError)
                    for r in await asyncio.gather(*tasks, return_exceptions=True)] == [True, True]
            release.set()
            assert await running == "released"
            assert await queued == 1
            assert kinds.controls("a").log == [("queued", 1, 1)]

    asyncio.run(main())


def test_a_cancelled_await_does_not_run_a_call_that_expired_meanwhile() -> None:
    """The awaiting task is cancelled, the call's deadline passes while it is queued:
    it never runs, and awaiting it again says so."""

    async def main() -> None:
        with sessions.start(config({"a": {"call_timeout": 0.2,
                                          "stall_timeout": 60}})) as system:
            a = system.get("a")
            started, release = threading.Event(), threading.Event()
            a.block(started, release)
            queued = a.record("late", 1)
            task = asyncio.ensure_future(queued)
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(sessions.CallTimeout) as info:
                await queued
            assert info.value.started is False
            release.set()
            assert await a.echo("after") == "after"
            assert kinds.controls("a").log == []

    asyncio.run(main())


def test_each_await_wakes_at_its_own_deadline_whatever_the_order() -> None:
    """Awaits with different deadlines on one loop, the later one awaited first: each
    raises CallTimeout at its own deadline, the earlier first."""

    async def main() -> list[str]:
        cfg = config({"slow": {"call_timeout": 0.6, "stall_timeout": 60},
                      "fast": {"call_timeout": 0.2, "stall_timeout": 60}})
        with sessions.start(cfg) as system:
            gates = {name: (threading.Event(), threading.Event()) for name in ("slow", "fast")}
            calls = {name: system.get(name).block(*gates[name]) for name in ("slow", "fast")}
            order: list[str] = []

            async def wait(name: str) -> None:
                with pytest.raises(sessions.CallTimeout) as info:
                    await calls[name]
                assert info.value.started is True and info.value.resource == name
                order.append(name)

            slow = asyncio.ensure_future(wait("slow"))
            await asyncio.sleep(0.01)  # the slow deadline is armed first
            await asyncio.gather(slow, wait("fast"))
            for _, release in gates.values():
                release.set()
            return order

    assert asyncio.run(main()) == ["fast", "slow"]


def test_many_awaits_then_one_past_its_deadline() -> None:
    """Thousands of awaits resolve (their deadlines stay pending in the loop's heap until
    they are dropped); one awaited afterwards still times out at its deadline, and a
    thousand awaited at once each get their own value."""

    async def main() -> None:
        with sessions.start(config({"a": {"call_timeout": 0.3, "stall_timeout": 60}})) as system:
            a = system.get("a")
            for i in range(2000):
                assert await a.echo(i) == i
            assert await asyncio.gather(*(a.echo(i) for i in range(1000))) == list(range(1000))
            started, release = threading.Event(), threading.Event()
            with pytest.raises(sessions.CallTimeout):
                await a.block(started, release)
            release.set()

    asyncio.run(main())


def test_a_call_resolved_after_its_loop_closed_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """asyncio.run() ends while a task awaits a call; the call finishes after the loop
    is closed: nobody is left to wake, and no callback error is logged."""
    started, release = threading.Event(), threading.Event()
    with sessions.start(config({"a": {"call_timeout": 5.0}})) as system:
        a = system.get("a")

        async def main() -> None:
            call = a.block(started, release)
            waiting = asyncio.ensure_future(call)  # cancelled by asyncio.run at its end
            await asyncio.sleep(0)
            assert not waiting.done()

        with caplog.at_level(logging.DEBUG):
            asyncio.run(main())
            release.set()
            assert a.echo(1).result(5) == 1
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts its wake-ups from other threads and its timers."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0
        self.timers = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> asyncio.Handle:
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)

    def call_at(self, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        self.timers += 1
        return super().call_at(*args, **kwargs)


def run_on_counting_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> tuple[T, CountingLoop]:
    """Run ``main()`` on a fresh CountingLoop in a fresh thread (as a program's first
    await in that thread), and return its value and the loop."""
    out: list[Any] = []

    def body() -> None:
        loop = CountingLoop()
        try:
            out.append(loop.run_until_complete(main()))
        except BaseException as exc:
            out.append(exc)
        finally:
            loop.close()
        out.append(loop)

    thread = threading.Thread(target=body, name="test-loop")
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0], out[1]


def test_calls_resolved_together_wake_their_loop_once() -> None:
    """Fifty awaited calls resolved while the loop is busy: one wake-up of the loop
    for all of them, not one each (what run_in_executor and wrap_future cost)."""

    async def main() -> list[int]:
        futures = [SessionFuture("r", "m", time.monotonic() + 30) for _ in range(50)]
        tasks = [asyncio.ensure_future(f) for f in futures]
        await asyncio.sleep(0)  # every task now awaits its future
        resolver = threading.Thread(target=lambda: [f.set_result(i)
                                                    for i, f in enumerate(futures)])
        resolver.start()
        resolver.join()  # the loop is blocked meanwhile: all 50 are resolved before it runs
        return list(await asyncio.gather(*tasks))

    values, loop = run_on_counting_loop(main)
    assert values == list(range(50))
    assert loop.wakeups == 1


def test_an_await_arms_one_timer_and_does_not_spin() -> None:
    """A call running for a while: its await arms one timer for its deadline and the
    loop sleeps until the call is done; two awaits past their deadlines each wake once,
    at their own deadline, without the loop spinning in between."""

    async def main() -> tuple[str, bool]:
        fut: SessionFuture[str] = SessionFuture("r", "m", time.monotonic() + 5.0)
        threading.Timer(0.3, fut.set_result, ("late",)).start()
        value = await fut
        first, second = (SessionFuture("r", "m", time.monotonic() + t) for t in (0.2, 0.5))
        for started in (first, second):
            started.set_running_or_notify_cancel()  # started: the outcome is unknown
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        return value, all(isinstance(o, sessions.CallTimeout) and o.started
                          for o in outcomes)

    (value, both_timed_out), loop = run_on_counting_loop(main)
    assert (value, both_timed_out) == ("late", True)
    assert loop.timers <= 4  # a timer per deadline, re-armed at most once each
    assert loop.wakeups <= 2


def test_awaiting_a_cancelled_call_raises_cancelled_error() -> None:
    """As result() does: concurrent.futures.CancelledError (the call was withdrawn),
    not asyncio's, which would mean the awaiting task itself was cancelled."""

    async def main() -> None:
        fut: SessionFuture[int] = SessionFuture("r", "m", time.monotonic() + 5.0)
        assert fut.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            await fut

    asyncio.run(main())


def test_a_long_await_keeps_its_deadline_while_thousands_resolve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One task awaits a call that never finishes, others await thousands that do: the
    long one still gets CallTimeout at its deadline (the loop's deadline bookkeeping
    drops resolved entries, never a pending one), and what the loop keeps for resolved
    awaits stays bounded."""

    async def main() -> tuple[bool, int]:
        stuck: SessionFuture[int] = SessionFuture("r", "stuck", time.monotonic() + 1.0)
        stuck.set_running_or_notify_cancel()
        waiting = asyncio.ensure_future(stuck)
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        for i in range(3000):
            quick: SessionFuture[int] = SessionFuture("r", "m", time.monotonic() + 60)
            loop.call_soon(quick.set_result, i)  # resolved once its await has begun
            assert await quick == i
        gc.collect()
        held = sum(1 for o in gc.get_objects() if isinstance(o, asyncio.Future))
        try:
            await asyncio.wait_for(waiting, 5)
        except sessions.CallTimeout:
            return True, held
        return False, held

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        (timed_out, held), _ = run_on_counting_loop(main)
    assert timed_out
    assert held < 1000  # bounded by the compaction, not 3000
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
