"""Circuit breaker: stop sending calls to a resource that keeps failing.

After ``failures`` consecutive faults or connection errors the circuit opens: calls fail
at once with ``ResourceUnavailable`` ("circuit open") instead of queueing behind a
broken connection. After ``reset_timeout`` seconds one probe call goes through
(half-open); its outcome closes the circuit or opens it again for another period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sessions._redact import redact
from sessions.messages import CircuitChanged, Event


class Breaker:
    """The breaker of one resource (shared by the members of a pool)."""

    def __init__(self, resource: str, failures: int, reset_timeout: float,
                 emit: Callable[[Event], None], clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.resource = resource
        self.threshold = failures
        self.reset_timeout = reset_timeout
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.last_error = ""
        self._probing = False

    def allow(self) -> tuple[bool, bool]:
        """May a call go through now? Returns ``(allowed, is_probe)``."""
        if self.state == "closed":  # the common case, read without the lock
            return True, False
        with self._lock:
            if self.state == "closed":
                return True, False
            if self.state == "open" and self._clock() - self.opened_at >= self.reset_timeout:
                self.state = "half_open"
                self._probing = False
                self._emit(CircuitChanged(self.resource, "half_open", "reset_timeout passed"))
            if self.state == "half_open" and not self._probing:
                self._probing = True
                return True, True
            return False, False

    def refusal(self) -> str:
        left = max(0.0, self.reset_timeout - (self._clock() - self.opened_at))
        return (f"circuit open for resource {self.resource!r} after {self.threshold} "
                f"consecutive failures (last: {self.last_error}); next probe in {left:.1f}s")

    def record(self, ok: bool, error: BaseException | str | None = None) -> None:
        """The outcome of a call, or of a connect (a failed connect is a failure)."""
        if ok:
            if self.state == "closed" and self.failures == 0:
                return
            with self._lock:
                self.failures = 0
                self._probing = False
                if self.state != "closed":
                    self.state = "closed"
                    self._emit(CircuitChanged(self.resource, "closed", "probe succeeded"))
            return
        with self._lock:
            self.failures += 1
            self.last_error = redact(error if isinstance(error, str) else repr(error))
            if self.state == "half_open" or (
                self.state == "closed" and self.failures >= self.threshold
            ):
                self.state = "open"
                self._probing = False
                self.opened_at = self._clock()
                self._emit(CircuitChanged(self.resource, "open", self.last_error))
