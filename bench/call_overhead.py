"""Call overhead of a ``sessions`` handle, side by side with what it is built from.

Measures, in one run (the machine is noisy; compare the ratios, not the times):

1. raw: a request/response round trip to a worker thread over two ``queue.Queue``s;
2. pykka: a Pykka ``ThreadingActor`` proxy call, ``.get()``;
3. handle: a ``sessions`` handle call, ``.get()``;
4. contention: 8 threads calling one resource at once (handle vs. raw queue worker).

Each wall figure is the best of several interleaved rounds, with the process pinned to
one CPU (``--no-pin`` to disable); beside it, the user and system CPU time per call.
Targets (issue 2): handle/raw <= 1.25 and handle/pykka <= 1.0.
Run: ``python bench/call_overhead.py [--calls N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import os
import queue
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka

import sessions


class Echo(sessions.ResourceActor):
    kind = "bench-echo"

    def connect(self) -> object:
        return object()

    def echo(self, x: int) -> int:
        return x


class PykkaEcho(pykka.ThreadingActor):
    def echo(self, x: int) -> int:
        return x


def raw_worker(
    reuse_reply: bool = False,
) -> tuple[Callable[[int], int], Callable[[], None]]:
    """A worker thread serving requests from a ``queue.Queue``.

    Each request carries its own reply ``queue.Queue`` (the usual pattern: every call
    needs its own reply channel, as every handle call gets its own future). With
    ``reuse_reply`` each caller thread reuses one reply queue: the cheapest possible
    round trip, shown for reference.
    """
    requests: queue.Queue[tuple[int, queue.Queue[int]] | None] = queue.Queue()

    def serve() -> None:
        while (item := requests.get()) is not None:
            value, reply = item
            reply.put(value)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    local = threading.local()

    def call(x: int) -> int:
        reply: queue.Queue[int] | None = getattr(local, "reply", None)
        if reply is None:
            reply = queue.Queue()
            if reuse_reply:
                local.reply = reply
        requests.put((x, reply))
        return reply.get()

    def stop() -> None:
        requests.put(None)
        thread.join()

    return call, stop


def timed(fn: Callable[[int], Any], calls: int) -> tuple[float, float, float]:
    """Seconds per call: wall clock, and the process's user and system CPU time.

    User CPU is the Python work of both threads; system CPU and the rest of the wall
    time are the thread hand-offs (futex wake-ups, context switches), whose cost
    differs several-fold between hosts. The split shows which one a ratio measures.
    """
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for i in range(calls):
        fn(i)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return (wall / calls, (r1.ru_utime - r0.ru_utime) / calls,
            (r1.ru_stime - r0.ru_stime) / calls)


def contended(fn: Callable[[int], Any], calls: int, threads: int = 8) -> float:
    """Calls per second with ``threads`` callers sharing one worker."""
    barrier = threading.Barrier(threads + 1)

    def run() -> None:
        barrier.wait()
        for i in range(calls // threads):
            fn(i)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return (calls // threads * threads) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round and case")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the process to one CPU")
    args = parser.parse_args()
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        # One core: a thread hand-off then costs the same in every case, instead of
        # depending on whether the scheduler put the two threads on the same core.
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})

    raw_call, raw_stop = raw_worker()
    reuse_call, reuse_stop = raw_worker(reuse_reply=True)
    pykka_ref = PykkaEcho.start()
    proxy = pykka_ref.proxy()
    config = {"resources": {"echo": {"kind": f"{__name__}:Echo"}}}
    with sessions.start(config) as system:
        handle = system.get("echo")
        cases: dict[str, Callable[[int], Any]] = {
            "raw": raw_call,
            "raw, reused reply queue": reuse_call,
            "pykka": lambda x: proxy.echo(x).get(),
            "handle": lambda x: handle.echo(x).get(),
        }
        best = {name: float("inf") for name in cases}
        cpu = {name: [0.0, 0.0] for name in cases}  # user, system: mean over rounds
        for _ in range(args.rounds):  # interleaved rounds: noise hits every case alike
            for name, fn in cases.items():
                wall, user, system_cpu = timed(fn, args.calls)
                best[name] = min(best[name], wall)
                cpu[name][0] += user / args.rounds
                cpu[name][1] += system_cpu / args.rounds
        tput = {"raw": 0.0, "handle": 0.0}
        for _ in range(max(1, args.rounds // 4)):
            tput["raw"] = max(tput["raw"], contended(raw_call, args.calls * 4))
            tput["handle"] = max(tput["handle"], contended(lambda x: handle.echo(x).get(),
                                                            args.calls * 4))
    pykka_ref.stop()
    raw_stop()
    reuse_stop()

    print(f"{'round trip':<32}{'us/call':>10}{'user CPU':>10}{'sys CPU':>10}")
    print(f"{'(wall: best of rounds; CPU: mean)':<32}")
    for name, secs in best.items():
        user, system_cpu = cpu[name]
        print(f"  {name:<30}{secs * 1e6:>10.2f}{user * 1e6:>10.2f}{system_cpu * 1e6:>10.2f}")
    print(f"{'8-thread contention':<32}{'calls/s':>10}")
    for name, rate in tput.items():
        print(f"  {name:<30}{rate:>10.0f}")
    print(f"handle/raw          = {best['handle'] / best['raw']:.2f}   (target <= 1.25)")
    print(f"handle/pykka        = {best['handle'] / best['pykka']:.2f}   (target <= 1.00)")
    print(f"handle/raw (reused) = {best['handle'] / best['raw, reused reply queue']:.2f}"
          "   (reference: one reply queue per thread)")
    print(f"8-thread throughput handle/raw = {tput['handle'] / tput['raw']:.2f}")
    print(f"user CPU handle/raw (reused) = "
          f"{cpu['handle'][0] / cpu['raw, reused reply queue'][0]:.2f}"
          "   (the Python work alone, without the hand-off cost)")


if __name__ == "__main__":
    main()
