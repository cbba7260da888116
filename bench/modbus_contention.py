"""Modbus contention: a ``modbus`` actor versus a ``threading.Lock`` around a bare
pymodbus client, 8 threads sharing one TCP link (issue 15).

Each thread repeats a write-then-read of its own holding register (two requests that
must not interleave with another thread's on a shared link):

1. actor: each pair is one ``handle.transaction(fn)`` call on a ``modbus`` resource;
2. lock: each pair holds a ``threading.Lock`` around the two calls on one
   ``ModbusTcpClient`` (what a careful program does without this library).

Both talk to the same throwaway pymodbus server (``tests/modbus_server.py``, in its own
process). Rounds alternate (actor, lock, lock, actor, ...) so machine noise hits both
alike; throughput is total pairs / total time, latencies are pooled over rounds; a
pair that reads back another thread's value counts as wrong. Targets, as for I2C:
actor/lock throughput >= 0.9, actor p99 <= lock p99.

Run from the repository root: ``python bench/modbus_contention.py [--seconds S]
[--rounds R] [--threads N]``.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pymodbus.client import ModbusTcpClient

import sessions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pair(client: Any, register: int, value: int) -> int:
    """The sequence under test: write a register, read it back."""
    client.write_register(register, value, device_id=1)
    return int(client.read_holding_registers(register, count=1, device_id=1).registers[0])


def run_case(sequence: Callable[[int, int], int], threads: int,
             seconds: float) -> tuple[int, float, list[float], int]:
    """(pairs done, elapsed, latencies, wrong reads) of ``threads`` threads."""
    barrier = threading.Barrier(threads + 1)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    wrong = [0] * threads
    stop = threading.Event()

    def worker(index: int) -> None:
        mine, n = latencies[index], 0
        barrier.wait()
        while not stop.is_set():
            n += 1
            value = (index * 1000 + n) % 65536
            t0 = time.perf_counter()
            got = sequence(index, value)
            mine.append(time.perf_counter() - t0)
            if got != value:
                wrong[index] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    began = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    flat = [x for per in latencies for x in per]
    return len(flat), elapsed, flat, sum(wrong)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per case, over the rounds")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.modbus_server", "tcp", str(port)],
                              stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        config = {"resources": {"plc": {"kind": "modbus", "host": "127.0.0.1", "port": port,
                                        "timeout": 2.0, "call_timeout": 10.0}}}
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=2.0, retries=0)
        assert client.connect()
        lock = threading.Lock()

        def locked(index: int, value: int) -> int:
            with lock:
                return pair(client, 10 + index, value)

        with sessions.start(config) as system:
            plc = system.get("plc")

            def actor(index: int, value: int) -> int:
                return int(plc.transaction(pair, 10 + index, value).result())

            totals: dict[str, list[Any]] = {"actor": [0, 0.0, [], 0], "lock": [0, 0.0, [], 0]}
            cases = {"actor": actor, "lock": locked}
            share = args.seconds / args.rounds
            for r in range(args.rounds):
                for name in (("actor", "lock") if r % 2 == 0 else ("lock", "actor")):
                    done, elapsed, lat, wrong = run_case(cases[name], args.threads, share)
                    t = totals[name]
                    t[0] += done
                    t[1] += elapsed
                    t[2] += lat
                    t[3] += wrong
        client.close()
    finally:
        server.kill()
        server.wait()
    print(f"{args.threads} threads, write-then-read pairs on one Modbus TCP link, "
          f"{args.rounds} alternating rounds")
    rate = {}
    p99 = {}
    for name, (done, elapsed, lat, wrong) in totals.items():
        rate[name] = done / elapsed
        p99[name] = percentile(lat, 0.99)
        print(f"  {name:<6} {rate[name]:>9,.0f} pairs/s  p50 {percentile(lat, 0.5) * 1e3:6.2f} ms"
              f"  p99 {p99[name] * 1e3:6.2f} ms  wrong {wrong}")
    print(f"throughput actor/lock = {rate['actor'] / rate['lock']:.2f} (target >= 0.9)")
    print(f"p99 actor/lock = {p99['actor'] / p99['lock']:.2f} (target <= 1.0)")


if __name__ == "__main__":
    main()
