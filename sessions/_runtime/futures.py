"""Futures returned by handle calls.

``SessionFuture`` is a :class:`concurrent.futures.Future`, so ``wait``,
``as_completed`` and ``asyncio.wrap_future`` work on it, with three additions:

* waiting without a timeout is bounded by the call's deadline (``call_timeout``)
  and then raises :class:`~sessions.CallTimeout` instead of blocking forever;
* a call whose deadline passes before it started is *expired*: it resolves with
  ``CallTimeout(started=False)`` and will never run (no ghost writes);
* ``await future`` suspends the coroutine instead of blocking the event loop
  (Pykka's ``Future.__await__`` blocks it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Generator
from concurrent.futures._base import CANCELLED, PENDING, RUNNING
from typing import Any, TypeVar

from sessions._errors import CallTimeout

T = TypeVar("T")

_FuturesTimeout = concurrent.futures.TimeoutError  # builtin TimeoutError from 3.11 on


class SessionFuture(concurrent.futures.Future[T]):
    """The result of one handle call; resolves exactly once."""

    def __init__(self, resource: str, method: str, deadline: float,
                 queued_at: float | None = None) -> None:
        super().__init__()
        self.resource = resource
        self.method = method
        self.deadline = deadline
        """``time.monotonic()`` after which the call may no longer start."""
        self.queued_at = deadline if queued_at is None else queued_at
        """``time.monotonic()`` when the caller queued the call: latency is measured
        from here (what the caller waits), whatever the call's timeout."""

    # -- runtime side ---------------------------------------------------------------

    def claim(self) -> bool:
        """Mark the call as started; False if it was cancelled or expired and must not run.

        Uses the base class's own condition and state, so the check and the claim are
        one atomic step against ``cancel()`` and deadline expiry.
        """
        if time.monotonic() >= self.deadline:
            self.expire()
            return False
        with self._condition:
            if self._state == PENDING:
                self._state = RUNNING
                return True
            cancelled = self._state == CANCELLED
        if cancelled:
            self.set_running_or_notify_cancel()  # wakes wait()/as_completed() on a cancel
        return False

    def expire(self) -> bool:
        """Resolve a call that has not started with ``CallTimeout``; False if it had
        started, finished or was cancelled."""
        with self._condition:
            state = self._state
            if state == PENDING:
                self._state = RUNNING  # claimed: can no longer run
        if state == CANCELLED:
            self.set_running_or_notify_cancel()  # wakes wait()/as_completed()
        if state != PENDING:
            return False
        self.set_exception(
            CallTimeout(
                f"call {self.method}() on resource {self.resource!r} did not start within "
                "its call_timeout; it was not executed and never will be",
                resource=self.resource,
                started=False,
            )
        )
        return True

    # -- caller side ----------------------------------------------------------------

    def _overdue(self, timeout: float | None, start: float) -> None:
        """A wait bounded by the deadline ran out: make the future done, or raise.

        Before the deadline it was the caller's own shorter timeout (a plain
        ``TimeoutError``). After it, a call that never started is expired; one that is
        running raises ``CallTimeout(started=True)``, unless the caller asked for a
        longer explicit timeout, which is then honoured.
        """
        if time.monotonic() < self.deadline:
            raise _FuturesTimeout()
        if self.expire() or self.done():
            return
        if timeout is None:
            raise CallTimeout(
                f"call {self.method}() on resource {self.resource!r} started but did not "
                "finish within its call_timeout; its outcome is unknown",
                resource=self.resource,
                started=True,
            )
        super().exception(max(0.0, timeout - (time.monotonic() - start)))

    def result(self, timeout: float | None = None) -> T:
        """The call's value or error; without ``timeout``, ``CallTimeout`` at the deadline."""
        start = time.monotonic()
        bound = self.deadline - start
        if timeout is not None and timeout < bound:
            bound = timeout
        try:
            return super().result(bound if bound > 0.0 else 0.0)
        except _FuturesTimeout:
            if self.done():
                raise  # the call itself raised a TimeoutError (CallTimeout included)
        self._overdue(timeout, start)
        return super().result(0)

    get = result
    """Pykka-style alias of :meth:`result`."""

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The call's error or None; bounded by the deadline like ``result``."""
        start = time.monotonic()
        bound = self.deadline - start
        if timeout is not None and timeout < bound:
            bound = timeout
        try:
            return super().exception(bound if bound > 0.0 else 0.0)
        except _FuturesTimeout:
            self._overdue(timeout, start)
            return super().exception(0)

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> T:
        """Await without blocking the event loop, bounded by the deadline."""
        wrapped = asyncio.wrap_future(self)
        # We read the outcome from self; mark the asyncio copy's error as retrieved.
        wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
        start = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(wrapped), max(0.0, self.deadline - start))
        except asyncio.TimeoutError:
            if not self.done():
                self._overdue(None, start)
        return super().result(0)


def resolved(resource: str, method: str, error: BaseException) -> SessionFuture[Any]:
    """A future that has already failed (for calls refused at once)."""
    fut: SessionFuture[Any] = SessionFuture(resource, method, time.monotonic())
    fut.set_exception(error)
    return fut
