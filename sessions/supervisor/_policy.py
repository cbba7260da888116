"""Restart policies as immutable values (in the style of urllib3's ``Retry``).

``Backoff`` answers "how long before restart number n"; ``RestartIntensity``
remembers recent restarts and answers "has this supervisor restarted too often".
``increment()`` returns a new object, so a policy can be shared, logged and
compared, and its ``history`` tells what happened.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``initial * multiplier**(n-1)`` capped at ``max``, +/- ``jitter``."""

    initial: float = 0.1
    """Delay before the first restart, in seconds."""

    max: float = 30.0
    """Upper bound of the delay before jitter."""

    multiplier: float = 2.0
    """Growth factor per consecutive failure."""

    jitter: float = 0.1
    """Random spread as a fraction of the delay: 0.1 gives +/- 10 %."""

    def get_backoff_time(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before restart number ``attempt`` (1 for the first consecutive failure)."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        try:
            grown = self.initial * self.multiplier ** (attempt - 1)
        except OverflowError:  # a resource down for days: stay at the cap
            grown = self.max
        base = min(self.max, grown)
        if self.jitter:
            base *= 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base)


@dataclass(frozen=True)
class RestartIntensity:
    """At most ``max_restarts`` restarts within any ``period`` seconds (Erlang's intensity)."""

    max_restarts: int = 3
    """Restarts allowed within the window."""

    period: float = 5.0
    """Length of the sliding window, in seconds."""

    history: tuple[float, ...] = field(default=())
    """Times of the restarts still inside the window, oldest first."""

    def increment(self, now: float) -> RestartIntensity:
        """A new value with a restart at ``now`` and entries older than the window dropped."""
        kept = tuple(t for t in self.history if now - t < self.period)
        return replace(self, history=(*kept, now))

    def is_exhausted(self) -> bool:
        """True once more than ``max_restarts`` restarts fall within the window."""
        return len(self.history) > self.max_restarts

    def reset(self) -> RestartIntensity:
        """A new value with no history (a supervisor restarted by its parent starts fresh)."""
        return replace(self, history=())
