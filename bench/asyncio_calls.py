"""Handle calls awaited from asyncio, side by side with what an asyncio program would
otherwise do, same workload shape on both sides (issue 14).

In one run, alternating the sides round by round (the machine is shared and noisy; the
median of the per-round ratios is what to quote), ``TASKS`` asyncio tasks each loop
``await call(i)``, one call in flight per task:

* echo: ``await handle.echo(i)`` (one actor) vs ``await loop.run_in_executor(pool,
  echo, i)`` on a one-thread executor (the same work on one worker thread: the
  hand-off asyncio itself offers). A third column is the await path this project had
  before (``wrap_future`` + ``shield`` + ``wait_for`` per await), for the record.
  Target: handle/executor >= 1.0.
* redis (``--redis``, a throwaway server from ``tests.servers``): ``await
  cache.set(k, v)`` through a ``redis`` handle (``pool_size = 1``; 4 shown too) vs
  ``await client.set(k, v)`` on ``redis.asyncio`` used directly (its own pool, up to a
  connection per task), same keys. Target: handle/direct >= 2.0.

Run from the repository root: ``python bench/asyncio_calls.py [--tasks N] [--seconds S]
[--rounds R] [--redis]``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

import sessions
from sessions._runtime.futures import SessionFuture
from tests.servers import RedisServer


class Echo(sessions.ResourceActor):
    kind = "bench-echo"

    def connect(self) -> object:
        return object()

    def echo(self, x: int) -> int:
        return x


def echo(x: int) -> int:
    return x


async def before(fut: SessionFuture[Any]) -> Any:
    """The await path of SessionFuture before issue 14, verbatim, for comparison."""
    wrapped = asyncio.wrap_future(fut)
    wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
    start = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.shield(wrapped), max(0.0, fut.deadline - start))
    except asyncio.TimeoutError:
        if not fut.done():
            fut._overdue(None, start)
    return fut.result(0)


async def rate(tasks: int, seconds: float, call: Callable[[int], Awaitable[Any]]) -> float:
    """Calls per second of ``tasks`` tasks each looping ``await call(i)``."""
    stop = False
    counts = [0] * tasks

    async def body(t: int) -> None:
        n = 0
        while not stop:
            await call(n)
            n += 1
        counts[t] = n

    workers = [asyncio.ensure_future(body(t)) for t in range(tasks)]
    await asyncio.sleep(0)
    began = time.perf_counter()
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*workers)
    return sum(counts) / (time.perf_counter() - began)


async def rounds_of(sides: dict[str, Callable[[int], Awaitable[Any]]], tasks: int,
                    seconds: float, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(await rate(tasks, seconds, sides[name]))
    return out


def report(title: str, results: dict[str, list[float]], base: str, target: float) -> None:
    print(f"{title}: calls/s (median of rounds)")
    for name, figures in results.items():
        ratio = statistics.median(h / b for h, b in zip(figures, results[base], strict=True))
        print(f"  {name:<40}{statistics.median(figures):>12,.0f}   x{ratio:5.2f} of {base}")
    handle = next(iter(results))
    ratio = statistics.median(h / b for h, b in zip(results[handle], results[base], strict=True))
    print(f"  {handle}/{base} = {ratio:.2f} (target >= {target}) "
          f"{'ok' if ratio >= target else 'MISSED'}", flush=True)


async def bench_echo(args: argparse.Namespace) -> None:
    config = {"resources": {"echo": {"kind": Echo, "call_timeout": 30.0}}}
    loop = asyncio.get_running_loop()
    with sessions.start(config) as system, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:
        handle = system.get("echo")
        sides: dict[str, Callable[[int], Awaitable[Any]]] = {
            "await handle.echo(i)": handle.echo,
            "run_in_executor (1 thread)": lambda i: loop.run_in_executor(pool, echo, i),
            "await handle.echo(i), the old await path": lambda i: before(handle.echo(i)),
        }
        results = await rounds_of(sides, args.tasks, args.seconds, args.rounds)
    report(f"echo, {args.tasks} tasks", results, "run_in_executor (1 thread)", 1.0)


async def bench_redis(args: argparse.Namespace, url: str) -> None:
    def cache(pool: int) -> dict[str, Any]:
        return {"kind": "redis", "url": url, "pool_size": pool, "call_timeout": 30.0}

    config = {"resources": {"one": cache(1), "four": cache(4)}}
    client = aioredis.Redis.from_url(url, max_connections=args.tasks)
    try:
        with sessions.start(config) as system:
            one, four = system.get("one"), system.get("four")
            sides: dict[str, Callable[[int], Awaitable[Any]]] = {
                "await cache.set(k, v) (handle, pool 1)": lambda i: one.set(f"k{i % 1000}", "v"),
                "redis.asyncio": lambda i: client.set(f"k{i % 1000}", "v"),
                "await cache.set(k, v) (handle, pool 4)": lambda i: four.set(f"k{i % 1000}", "v"),
            }
            results = await rounds_of(sides, args.tasks, args.seconds, args.rounds)
    finally:
        await client.aclose()
    report(f"redis SET, {args.tasks} tasks", results, "redis.asyncio", 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=1.0, help="per side per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--redis", action="store_true", help="also Redis (a throwaway server)")
    args = parser.parse_args()
    asyncio.run(bench_echo(args))
    if args.redis:
        with RedisServer() as server:
            asyncio.run(bench_redis(args, server.url))


if __name__ == "__main__":
    main()
