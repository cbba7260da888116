"""Setpoints faster than the device takes them, and an emergency stop behind a full
queue (issue 17): the same control loop through a plain handle and through a coalescing
one, side by side in one run.

The device is a resource whose ``set_speed`` takes ``1 / device_hz`` seconds (a drive
accepting 100 Hz); the control loop sends a setpoint every ``1 / loop_hz`` seconds (10x
faster) for ``--seconds``. Measured on each side:

- queue length: the resource's queued calls, sampled at every setpoint (mean, max);
- age of the value applied: time from the setpoint being sent to the device applying it
  (p50, p99, max over the setpoints that were applied);
- urgent latency: at the end of the loop, with the plain side's queue full, one
  ``emergency_stop`` through ``handle.urgent`` and one through the plain handle, each
  measured from the call to its result.

Run from the repository root: ``python bench/setpoints.py [--seconds S] [--device-hz N]
[--loop-hz N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sessions
from sessions import ResourceActor, Superseded


class Drive(ResourceActor):
    """A drive that takes ``period`` seconds to apply a setpoint."""

    kind = "bench_drive"
    period = 0.01

    def connect(self) -> list[float]:
        return []  # the age of each setpoint applied

    def set_speed(self, rpm: int, sent_at: float) -> int:
        time.sleep(self.period)  # the device's own time (a serial exchange, say)
        self.resource.append(time.monotonic() - sent_at)
        return rpm

    def emergency_stop(self) -> float:
        return time.monotonic()

    def ages(self) -> list[float]:
        return list(self.resource)


def run_side(coalesce: bool, seconds: float, loop_hz: float) -> dict[str, Any]:
    config = {"resources": {"drive": {"kind": Drive, "call_timeout": 3600.0}}}
    with sessions.start(config) as system:
        drive = system.get("drive")
        send = drive.coalescing("setpoint:motor1") if coalesce else drive
        queue: list[int] = []
        futures = []
        step = 1.0 / loop_hz
        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) - start < seconds:
            futures.append(send.set_speed(n, now))
            queue.append(drive.queued)
            n += 1
            next_at = start + n * step
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the loop's own rate, not a wait for a result
        waiting = drive.queued
        began = time.monotonic()
        urgent = drive.urgent.emergency_stop()
        urgent_latency = urgent.result(3600) - began
        began = time.monotonic()
        plain = drive.emergency_stop()
        plain_latency = plain.result(3600) - began
        outcomes = [f.result(3600) for f in futures]
        ages = sorted(drive.ages().result(60))
        superseded = sum(isinstance(o, Superseded) for o in outcomes)
    return {
        "sent": n, "applied": len(ages), "superseded": superseded,
        "queue_mean": statistics.fmean(queue), "queue_max": max(queue),
        "age_p50": ages[len(ages) // 2], "age_p99": ages[int(len(ages) * 0.99)],
        "age_max": ages[-1], "queued_at_end": waiting,
        "urgent_latency": urgent_latency, "plain_latency": plain_latency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--device-hz", type=float, default=100.0)
    parser.add_argument("--loop-hz", type=float, default=1000.0)
    args = parser.parse_args()
    Drive.period = 1.0 / args.device_hz
    print(f"device {args.device_hz:g} Hz, control loop {args.loop_hz:g} Hz, "
          f"{args.seconds:g} s per side")
    plain = run_side(False, args.seconds, args.loop_hz)
    keyed = run_side(True, args.seconds, args.loop_hz)
    rows = [
        ("setpoints sent", "sent", "{:.0f}"),
        ("setpoints applied", "applied", "{:.0f}"),
        ("setpoints superseded", "superseded", "{:.0f}"),
        ("queue length, mean", "queue_mean", "{:.1f}"),
        ("queue length, max", "queue_max", "{:.0f}"),
        ("age of value applied, p50 (ms)", "age_p50", "{:.1f}", 1000),
        ("age of value applied, p99 (ms)", "age_p99", "{:.1f}", 1000),
        ("age of value applied, max (ms)", "age_max", "{:.1f}", 1000),
        ("calls queued when the stop came", "queued_at_end", "{:.0f}"),
        ("urgent emergency_stop latency (ms)", "urgent_latency", "{:.1f}", 1000),
        ("plain emergency_stop latency (ms)", "plain_latency", "{:.1f}", 1000),
    ]
    print(f"{'':38} {'plain handle':>14} {'coalescing':>14}")
    for label, key, fmt, *scale in rows:
        k = scale[0] if scale else 1
        print(f"{label:38} {fmt.format(plain[key] * k):>14} {fmt.format(keyed[key] * k):>14}")
    print(f"age p99 ratio (coalescing / plain): {keyed['age_p99'] / plain['age_p99']:.3f}")
    print(f"urgent / plain emergency_stop latency behind the plain side's queue: "
          f"{plain['urgent_latency'] / plain['plain_latency']:.4f}")


if __name__ == "__main__":
    main()
