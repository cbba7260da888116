"""Call statistics written from several threads at once (the resource's thread, the
kernel, callers and driver threads all count): no count may be lost."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from sessions._runtime.stats import BUCKETS, RECENT, CallStats


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond, so an unlocked read-modify-write would race."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_concurrent_writers_lose_no_count(fast_switching: None) -> None:
    stats = CallStats()
    per_thread, threads = 20_000, 4
    start = threading.Barrier(threads * 2)

    def counter() -> None:
        start.wait()
        for _ in range(per_thread):
            stats.count_only("refused")

    def recorder() -> None:
        start.wait()
        for i in range(per_thread):
            stats.record("ok", BUCKETS[i % len(BUCKETS)])

    workers = [threading.Thread(target=fn) for fn in (counter, recorder) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    snap = stats.copy()
    assert snap.outcomes["refused"] == per_thread * threads
    assert snap.outcomes["ok"] == per_thread * threads
    assert sum(snap.buckets) == per_thread * threads
    assert stats.snapshot()["calls"]["ok"] == per_thread * threads


def test_a_copy_taken_while_calls_are_recorded_is_consistent(fast_switching: None) -> None:
    """Status views and the metrics endpoint read on their own threads: every copy
    shows each recorded call in all its figures (count, bucket, recent) or in none."""
    stats = CallStats()
    done = threading.Event()
    seen: list[str] = []

    def reader() -> None:
        while not done.is_set():
            snap = stats.copy()
            ok = snap.outcomes["ok"]
            if sum(snap.buckets) != ok or len(snap.recent) != min(ok, RECENT):
                seen.append(f"ok={ok} buckets={sum(snap.buckets)} recent={len(snap.recent)}")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        for i in range(100_000):
            stats.record("ok", BUCKETS[i % len(BUCKETS)])
    finally:
        done.set()
        for r in readers:
            r.join()
    assert seen == []


def test_copy_is_independent_of_later_writes() -> None:
    stats = CallStats()
    stats.record("ok", 0.001)
    snap = stats.copy()
    stats.record("error", 0.002)
    stats.count_only("timeout")
    assert snap.outcomes == {"ok": 1, "error": 0, "fault": 0, "timeout": 0, "refused": 0,
                             "superseded": 0}
    assert list(snap.recent) == [0.001]
    assert snap.sum == 0.001
    assert stats.outcomes["error"] == 1 and stats.outcomes["timeout"] == 1


def test_total_sums_members() -> None:
    a, b = CallStats(), CallStats()
    a.record("ok", 0.001)
    b.record("fault", 0.5)
    b.count_only("refused")
    total = CallStats.total([a, b])
    assert total.outcomes == {"ok": 1, "error": 0, "fault": 1, "timeout": 0, "refused": 1,
                              "superseded": 0}
    assert sorted(total.recent) == [0.001, 0.5]
    assert total.sum == pytest.approx(0.501)
    assert total.percentile(0.0) == 0.001 and total.percentile(0.99) == 0.5
