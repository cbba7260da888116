"""Per-resource call statistics: outcomes, a latency histogram, recent latencies.

Written from several threads: the resource's own thread records each call it runs,
the kernel and caller threads count calls that never ran (refused, expired), and a
driver thread resolves a deferred reply. So every write and every read takes the
per-resource lock (uncontended in the common case: one writer at a time). Read by
status views and the metrics endpoint through :meth:`CallStats.copy`/``snapshot``, a
consistent view. Latency is measured from the moment the caller queued the call
(``SessionFuture.queued_at``) to its resolution: what a caller actually waits.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from typing import Any

#: Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf.
BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)

RECENT = 2048
"""Latencies kept per resource for the percentiles of status views."""

OUTCOMES = ("ok", "error", "fault", "timeout", "refused", "superseded")
"""ok: returned; error: raised a caller error; fault: broke the resource; timeout: did
not start within call_timeout, or its deferred reply did not come within stall_timeout;
refused: failed at once (stopped, gave up, circuit open); superseded: a keyed call
replaced by a newer one with its key before it ran."""


class CallStats:
    """Counters of one resource (or pool member)."""

    __slots__ = ("_lock", "buckets", "outcomes", "recent", "sum")

    # ``buckets[i]`` counts calls with latency in (BUCKETS[i-1], BUCKETS[i]] (the last:
    # above every bound): per-bucket counts, which exporters accumulate themselves.

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.recent: deque[float] = deque(maxlen=RECENT)
        self._lock = threading.Lock()

    def record(self, outcome: str, seconds: float) -> None:
        """One call ended with ``outcome`` after ``seconds`` (queue wait included)."""
        bucket = bisect_left(BUCKETS, seconds)
        with self._lock:
            self.outcomes[outcome] += 1
            self.buckets[bucket] += 1
            self.sum += seconds
            self.recent.append(seconds)

    def count_only(self, outcome: str) -> None:
        """A call that never ran (timed out in the queue, refused): no latency."""
        with self._lock:
            self.outcomes[outcome] += 1

    def copy(self) -> CallStats:
        """A consistent copy (for a reader on another thread)."""
        other = CallStats()
        with self._lock:
            other.outcomes = dict(self.outcomes)
            other.buckets = list(self.buckets)
            other.sum = self.sum
            other.recent = deque(self.recent, maxlen=RECENT)
        return other

    def percentile(self, q: float) -> float | None:
        """The q-quantile (0..1) of recent latencies, or None before any call."""
        with self._lock:
            recent = sorted(self.recent)
        return _quantile(recent, q)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready figures for status views."""
        with self._lock:
            recent = sorted(self.recent)  # once for both quantiles
            calls = dict(self.outcomes)
        p50, p99 = _quantile(recent, 0.5), _quantile(recent, 0.99)
        return {
            "calls": calls,
            "latency_p50_ms": None if p50 is None else round(p50 * 1000, 3),
            "latency_p99_ms": None if p99 is None else round(p99 * 1000, 3),
        }

    @staticmethod
    def total(parts: list[CallStats]) -> CallStats:
        """A pool's figures: the sum of its members' (all their recent latencies)."""
        total = CallStats()
        total.recent = deque(maxlen=RECENT * max(1, len(parts)))
        for part in parts:
            s = part.copy()
            for k, v in s.outcomes.items():
                total.outcomes[k] += v
            total.buckets = [a + b for a, b in zip(total.buckets, s.buckets, strict=True)]
            total.sum += s.sum
            total.recent.extend(s.recent)
        return total


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
