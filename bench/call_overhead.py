"""Call overhead of a ``sessions`` handle, side by side with what it is built from.

Measures, in one run (the machine is noisy; compare the ratios, not the times):

1. raw: a request/response round trip to a worker thread over two ``queue.Queue``s;
2. pykka: a Pykka ``ThreadingActor`` proxy call, ``.get()``;
3. handle: a ``sessions`` handle call, ``.get()``;
4. contention: 8 threads calling one resource at once (handle vs. raw queue worker).

Each figure is the best of several rounds. Targets (issue 2): handle/raw <= 1.25 and
handle/pykka <= 1.0. Run: ``python bench/call_overhead.py [--calls N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import queue
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


def raw_worker() -> tuple[Callable[[int], int], Callable[[], None]]:
    requests: queue.Queue[tuple[int, queue.Queue[int]] | None] = queue.Queue()

    def serve() -> None:
        while (item := requests.get()) is not None:
            value, reply = item
            reply.put(value)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    local = threading.local()

    def call(x: int) -> int:
        reply = getattr(local, "reply", None)
        if reply is None:
            reply = local.reply = queue.Queue()
        requests.put((x, reply))
        return reply.get()

    def stop() -> None:
        requests.put(None)
        thread.join()

    return call, stop


def timed(fn: Callable[[int], Any], calls: int) -> float:
    t0 = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - t0) / calls


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
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    raw_call, raw_stop = raw_worker()
    pykka_ref = PykkaEcho.start()
    proxy = pykka_ref.proxy()
    config = {"resources": {"echo": {"kind": f"{__name__}:Echo"}}}
    with sessions.start(config) as system:
        handle = system.get("echo")
        cases: dict[str, Callable[[int], Any]] = {
            "raw": raw_call,
            "pykka": lambda x: proxy.echo(x).get(),
            "handle": lambda x: handle.echo(x).get(),
        }
        best = {name: float("inf") for name in cases}
        for _ in range(args.rounds):  # interleaved rounds: noise hits every case alike
            for name, fn in cases.items():
                best[name] = min(best[name], timed(fn, args.calls))
        tput = {"raw": 0.0, "handle": 0.0}
        for _ in range(args.rounds):
            tput["raw"] = max(tput["raw"], contended(raw_call, args.calls))
            tput["handle"] = max(tput["handle"], contended(lambda x: handle.echo(x).get(),
                                                            args.calls))
    pykka_ref.stop()
    raw_stop()

    print(f"{'case':<28}{'us/call':>10}")
    for name, secs in best.items():
        print(f"{name + ' round trip':<28}{secs * 1e6:>10.2f}")
    print(f"{'raw 8-thread':<28}{tput['raw']:>10.0f} calls/s")
    print(f"{'handle 8-thread':<28}{tput['handle']:>10.0f} calls/s")
    r_raw = best["handle"] / best["raw"]
    r_pykka = best["handle"] / best["pykka"]
    r_tput = tput["handle"] / tput["raw"]
    print(f"handle/raw   = {r_raw:.2f}   (target <= 1.25)")
    print(f"handle/pykka = {r_pykka:.2f}   (target <= 1.00)")
    print(f"8-thread handle/raw throughput = {r_tput:.2f}")


if __name__ == "__main__":
    main()
