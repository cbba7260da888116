"""``sessions demo``: a supervised system under injected faults, on embedded defaults.

Worker threads call resources at a fixed rate while a fault injector breaks them every
``--fault-every`` seconds; the supervisor heals them. The summary counts every call:
ok, failed with a clear error, and lost (a future that never resolved), which must be 0.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections import Counter
from concurrent.futures import Future
from typing import Any

import sessions
from sessions.messages import ChildRestarting, Event


class DemoStore(sessions.ResourceActor):
    """An in-memory key-value 'connection' that the demo can break on purpose."""

    kind = "demo_store"
    fault_types = (ConnectionError,)

    def connect(self) -> dict[str, Any]:
        return {}

    def put(self, key: str, value: Any) -> None:
        self.resource[key] = value

    def get(self, key: str) -> Any:
        return self.resource.get(key)

    def crash(self) -> None:
        raise ConnectionError("demo: connection dropped")


def _config() -> dict[str, Any]:
    store = {"kind": "sessions._demo:DemoStore", "call_timeout": 2.0}
    return {
        "supervisor": {"strategy": "one_for_one", "max_restarts": 50, "period": 10.0,
                       "backoff": {"initial": 0.05, "max": 1.0}},
        "supervisors": {"field": {"strategy": "rest_for_one", "max_restarts": 20,
                                  "period": 10.0, "backoff": {"initial": 0.05, "max": 1.0}}},
        "resources": {
            "sensor": {**store, "supervisor": "field"},
            "drive": {**store, "supervisor": "field"},
            "log": store,
        },
    }


def run_demo(args: argparse.Namespace) -> int:
    outcomes: Counter[str] = Counter()
    restarts = 0
    lock = threading.Lock()
    pending: list[Future[Any]] = []

    def on_event(event: Event) -> None:
        nonlocal restarts
        if isinstance(event, ChildRestarting):
            restarts += 1

    def settle(fut: Future[Any]) -> None:
        err = fut.exception()
        with lock:
            outcomes["ok" if err is None else "failed"] += 1

    stop = threading.Event()
    with sessions.start(_config()) as system:
        system.subscribe(on_event)
        names = ["sensor", "drive", "log"]

        def worker(i: int) -> None:
            n = 0
            while not stop.wait(0.01):
                handle = system.get(names[n % len(names)])
                fut = handle.put(f"w{i}", n)
                fut.add_done_callback(settle)
                with lock:
                    pending.append(fut)
                n += 1

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        rng = random.Random()
        deadline = time.monotonic() + args.duration
        faults = 0
        try:
            while time.monotonic() < deadline:
                stop.wait(min(args.fault_every, max(0.0, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    break
                victim = rng.choice(names)
                system.get(victim).crash()
                faults += 1
                print(f"injected a fault into {victim!r}; states: "
                      + ", ".join(f"{n}={system.get(n).state}" for n in names), flush=True)
        except KeyboardInterrupt:
            pass
        stop.set()
        for w in workers:
            w.join()
    lost = sum(1 for f in pending if not f.done())
    print(f"summary: calls={len(pending)} ok={outcomes['ok']} "
          f"failed_with_clear_error={outcomes['failed']} lost={lost} "
          f"faults_injected={faults} restarts={restarts}")
    return 0 if lost == 0 else 1
