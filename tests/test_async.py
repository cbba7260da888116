"""Handles from asyncio: awaiting a future must suspend the coroutine, never block the loop."""

from __future__ import annotations

import asyncio
import threading

import pytest

import sessions
from tests.support import config


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
