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

from sessions._redact import describe
from sessions.messages import CircuitChanged, CircuitState, Event


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
        self.state = CircuitState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.last_error = ""
        self._probing = False

    def allow(self) -> tuple[bool, bool]:
        """May a call go through now? Returns ``(allowed, is_probe)``."""
        if self.state == CircuitState.CLOSED:  # the common case, read without the lock
            return True, False
        with self._lock:
            state: CircuitState = self.state  # again under the lock: it may have changed
            if state == CircuitState.CLOSED:
                return True, False
            if (state == CircuitState.OPEN
                    and self._clock() - self.opened_at >= self.reset_timeout):
                self.state = CircuitState.HALF_OPEN
                self._probing = False
                self._emit(CircuitChanged(self.resource, CircuitState.HALF_OPEN,
                                          "reset_timeout passed"))
            if self.state == CircuitState.HALF_OPEN and not self._probing:
                self._probing = True
                return True, True
            return False, False

    def refusal(self) -> str:
        """Why a call is refused now: open (with the wait until the next probe), or
        half-open (one probe call is in progress; its outcome decides)."""
        why = f"after {self.threshold} consecutive failures (last: {self.last_error})"
        if self.state == CircuitState.HALF_OPEN:
            return (f"circuit half-open for resource {self.resource!r} {why}: a probe call "
                    "is in progress, and other calls are refused until it succeeds")
        left = max(0.0, self.reset_timeout - (self._clock() - self.opened_at))
        return f"circuit open for resource {self.resource!r} {why}; next probe in {left:.1f}s"

    def record(self, ok: bool, error: BaseException | str | None = None) -> None:
        """The outcome of a call, or of a connect (a failed connect is a failure)."""
        if ok:
            if self.state == CircuitState.CLOSED and self.failures == 0:
                return
            with self._lock:
                self.failures = 0
                self._probing = False
                if self.state != CircuitState.CLOSED:
                    # Half-open, the success is the probe's; open, it is a call let
                    # through before the circuit opened, which ran since and succeeded:
                    # the resource works again either way.
                    reason = ("probe succeeded" if self.state == CircuitState.HALF_OPEN
                              else "a call made before the circuit opened succeeded")
                    self.state = CircuitState.CLOSED
                    self._emit(CircuitChanged(self.resource, CircuitState.CLOSED, reason))
            return
        with self._lock:
            self.failures += 1
            self.last_error = describe(error) if error is not None else "unknown"
            if self.state == CircuitState.HALF_OPEN or (
                self.state == CircuitState.CLOSED and self.failures >= self.threshold
            ):
                self.state = CircuitState.OPEN
                self._probing = False
                self.opened_at = self._clock()
                self._emit(CircuitChanged(self.resource, CircuitState.OPEN, self.last_error))
