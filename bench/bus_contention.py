"""Bus contention: an ``i2c`` actor versus a ``threading.Lock`` around a bare bus.

8 threads each repeat a write-pointer-then-read sequence (two transfers, which must
not interleave with another thread's) on one simulated TMP102 at 400 kHz:

1. actor: each sequence is one ``handle.transaction(fn)`` call on an ``i2c`` resource;
2. lock: each sequence holds a ``threading.Lock`` around the two calls on a ``SimBus``.

Both do the same bus work (the simulator sleeps for the bits on the wire), so the
difference is the cost of the actor's queueing against the lock's handoff, and
fairness: the actor serves calls in arrival order, while a plain Lock lets the
thread that just released it take it again, so some callers wait much longer.

Rounds are interleaved (actor, lock, actor, lock, ...) so machine noise hits both
alike; throughput is total sequences / total time, latencies are pooled over rounds.
Targets (issue 3): actor/lock throughput >= 0.9, actor p99 <= lock p99.

Run: ``python bench/bus_contention.py [--seconds S] [--rounds R] [--threads N]``
(``--seconds`` is the time per case, split over the rounds).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import sessions
from sessions.actors.i2c.sim import TMP102, SimBus

TMP = 0x48
CLOCK_HZ = 400_000
TARGETS = [(0, 0x19), (1, 0x60), (2, 0x4B), (3, 0x50)]  # pointer, MSB at 25 C / defaults


def pointer_then_read(bus: Any, pointer: int) -> int:
    """The sequence under test: set the pointer, then read at it (two transfers)."""
    bus.write_byte(TMP, pointer)
    return int(bus.read_byte(TMP))


def run_case(
    sequence: Callable[[int], int], threads: int, seconds: float
) -> tuple[int, float, list[float], int]:
    """Run ``sequence(pointer)`` from ``threads`` threads for ``seconds``.

    Returns (sequences done, elapsed seconds, latencies in seconds, wrong reads).
    """
    barrier = threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    wrong = [0] * threads
    deadline = [0.0]

    def worker(index: int) -> None:
        pointer, expected = TARGETS[index % len(TARGETS)]
        mine = latencies[index]
        barrier.wait()
        stop = deadline[0]
        clock = time.perf_counter
        while True:
            t0 = clock()
            if t0 >= stop:
                return
            value = sequence(pointer)
            mine.append(clock() - t0)
            if value != expected:
                wrong[index] += 1

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    barrier.wait()
    for thread in pool:
        thread.join()
    elapsed = time.perf_counter() - start
    pooled = [x for per_thread in latencies for x in per_thread]
    return len(pooled), elapsed, pooled, sum(wrong)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="time per case (s)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    per_round = args.seconds / args.rounds

    bare = SimBus(1, devices=[TMP102(TMP, drift=0.0)], clock_hz=CLOCK_HZ)
    lock = threading.Lock()

    def locked(pointer: int) -> int:
        with lock:
            return pointer_then_read(bare, pointer)

    config = {
        "resources": {
            "tmp": {
                "kind": "i2c",
                "bus": "sim",
                "clock_hz": CLOCK_HZ,
                "devices": [{"type": "tmp102", "address": TMP, "drift": 0.0}],
            }
        }
    }
    totals: dict[str, dict[str, Any]] = {
        name: {"done": 0, "elapsed": 0.0, "latencies": [], "wrong": 0} for name in ("actor", "lock")
    }
    with sessions.start(config) as system:
        handle = system.get("tmp")

        def actor(pointer: int) -> int:
            return int(handle.transaction(pointer_then_read, pointer).result())

        cases: dict[str, Callable[[int], int]] = {"actor": actor, "lock": locked}
        run_case(actor, args.threads, 0.2)  # warm-up
        run_case(locked, args.threads, 0.2)
        for _ in range(args.rounds):
            for name, sequence in cases.items():
                done, elapsed, lats, wrong = run_case(sequence, args.threads, per_round)
                total = totals[name]
                total["done"] += done
                total["elapsed"] += elapsed
                total["latencies"].extend(lats)
                total["wrong"] += wrong

    stats = {}
    print(
        f"{args.threads} threads, write-pointer-then-read on a TMP102 at {CLOCK_HZ // 1000} kHz, "
        f"{args.rounds} interleaved rounds of {per_round:.1f} s per case"
    )
    print(f"{'case':<8}{'seq/s':>10}{'p50 us':>10}{'p99 us':>10}{'max us':>10}{'wrong':>8}")
    for name, total in totals.items():
        lats = sorted(total["latencies"])
        rate = total["done"] / total["elapsed"]
        p50, p99 = percentile(lats, 0.50), percentile(lats, 0.99)
        stats[name] = (rate, p99)
        print(
            f"{name:<8}{rate:>10.0f}{p50 * 1e6:>10.0f}{p99 * 1e6:>10.0f}"
            f"{lats[-1] * 1e6:>10.0f}{total['wrong']:>8}"
        )
    tput = stats["actor"][0] / stats["lock"][0]
    tail = stats["actor"][1] / stats["lock"][1]
    print(f"actor/lock throughput = {tput:.2f}   (target >= 0.90)")
    print(f"actor p99 / lock p99  = {tail:.2f}   (target <= 1.00)")


if __name__ == "__main__":
    main()
