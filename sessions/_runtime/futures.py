"""Futures returned by handle calls.

``SessionFuture`` is a :class:`concurrent.futures.Future`, so ``wait``,
``as_completed`` and ``asyncio.wrap_future`` work on it, with three additions:

* waiting without a timeout is bounded by the call's deadline (``call_timeout``)
  and then raises :class:`~sessions.CallTimeout` instead of blocking forever;
* a call whose deadline passes before it started is *expired*: it resolves with
  ``CallTimeout(started=False)`` and will never run (no ghost writes);
* ``await future`` suspends the coroutine instead of blocking the event loop
  (Pykka's ``Future.__await__`` blocks it), at the cost of a ``run_in_executor`` hop or
  less: see ``_LoopWaker``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import math
import threading
import time
import weakref
from collections.abc import Generator
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from functools import partial
from typing import Any, TypeVar, cast

from sessions._errors import CallTimeout

T = TypeVar("T")

_FuturesTimeout = concurrent.futures.TimeoutError  # builtin TimeoutError from 3.11 on

TRACKED: weakref.WeakSet[SessionFuture[Any]] | None = None
"""Set by a test harness (``sessions.testing``): every ``SessionFuture`` created from
then on is added, so that one a stopped system left unresolved can be reported. None
(the default) costs one global lookup per call."""
_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)


class SessionFuture(concurrent.futures.Future[T]):
    """The result of one handle call; resolves exactly once."""

    within = "its call_timeout"
    """What set the deadline, for the expiry message: a call's own ``call_timeout``,
    unless the caller gave one of its own (a lease's ``timeout=`` sets it on the
    lease's first call). A class attribute, so a plain call pays nothing for it."""

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
        if TRACKED is not None:
            TRACKED.add(self)

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
                f"{self.within}; it was not executed and never will be",
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
        """Suspend the awaiting task until the call is done or its deadline passes, then
        behave as ``result()`` would: the value, the call's error, or ``CallTimeout``.

        Cancelling the awaiting task leaves the call alone (it runs, or expires at its
        deadline, as for a caller that stopped waiting); only ``cancel()`` withdraws it.
        """
        # ``_state`` is read without the condition's lock: a single attribute read, and a
        # future once FINISHED never changes again (the lock is what done() would cost).
        while self._state not in _DONE:
            if time.monotonic() >= self.deadline:
                self._overdue(None, self.deadline)
                break
            yield from _waker().wait(self).__await__()
        if self._state == FINISHED and self._exception is None:
            return cast("T", self._result)
        return super().result(0)  # an error (raised as the base class does), cancelled


class _LoopWaker:
    """Wakes the tasks of one event loop that await handle calls, for all of them at once.

    ``asyncio.wrap_future`` costs one ``call_soon_threadsafe`` (a write to the loop's
    self-pipe) per call, and a deadline by ``wait_for`` a task and a timer per await.
    Here calls resolved by an actor thread are queued in ``_ready`` and the loop is woken
    once for the whole batch; deadlines sit in one heap with one loop timer, set for the
    earliest deadline still awaited.

    Threads: ``_ready`` and ``_scheduled`` are shared with the actor threads that resolve
    calls (under ``_lock``); every other field is touched only on the loop's thread.
    """

    _COMPACT_MIN = 256
    """Below this many heap entries, resolved ones are left for the timer to drop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ready: list[asyncio.Future[None]] = []
        self._scheduled = False
        """A ``_drain`` is queued on the loop and has not yet taken ``_ready``."""
        self._deadlines: list[tuple[float, int, asyncio.Future[None]]] = []
        """Heap of (loop time, tie-breaker, waiter); resolved waiters linger until the
        timer or a compaction drops them."""
        self._order = itertools.count()
        self._live = 0
        """Waiters neither resolved nor woken by their deadline (cancelled ones count
        until a compaction finds them)."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def wait(self, future: SessionFuture[Any]) -> asyncio.Future[None]:
        """A loop future that resolves (with None) when ``future`` is done or its
        deadline passes; the caller reads the outcome from ``future``."""
        loop = self.loop
        waiter: asyncio.Future[None] = loop.create_future()
        when = loop.time() + (future.deadline - time.monotonic())
        heapq.heappush(self._deadlines, (when, next(self._order), waiter))
        self._live += 1
        if len(self._deadlines) > 2 * self._live + self._COMPACT_MIN:
            self._compact()
        if when < self._timer_at:
            self._arm(when)
        future.add_done_callback(partial(self._resolved, waiter))
        return waiter

    def _resolved(self, waiter: asyncio.Future[None], _: Any) -> None:
        """Done callback of an awaited call, on the thread that resolved it."""
        with self._lock:
            self._ready.append(waiter)
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """On the loop: wake every task whose call was resolved since the last drain."""
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for waiter in ready:
            if not waiter.done():  # a cancelled task's waiter is done already
                waiter.set_result(None)
                self._live -= 1

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        """The timer: wake the tasks whose deadline passed, drop resolved entries from
        the top, and set the timer for the earliest deadline still awaited."""
        self._timer, self._timer_at = None, math.inf
        heap, now = self._deadlines, self.loop.time()
        while heap and (heap[0][2].done() or heap[0][0] <= now):
            _, _, waiter = heapq.heappop(heap)
            if not waiter.done():
                waiter.set_result(None)  # the task finds its call overdue
                self._live -= 1
        if heap and heap[0][0] < math.inf:  # a lease's end waits without a deadline
            self._arm(heap[0][0])

    def _compact(self) -> None:
        """Keep only awaited entries, so the heap stays proportional to what is awaited
        (calls resolve in milliseconds, their deadlines lie seconds ahead)."""
        self._deadlines = [e for e in self._deadlines if not e[2].done()]
        heapq.heapify(self._deadlines)
        self._live = len(self._deadlines)


_local = threading.local()


def _waker() -> _LoopWaker:
    """The waker of the running loop (one per loop; a thread runs one loop at a time, so
    the last one is kept per thread)."""
    loop = asyncio.get_running_loop()
    waker: _LoopWaker | None = getattr(_local, "waker", None)
    if waker is None or waker.loop is not loop:
        waker = _local.waker = _LoopWaker(loop)
    return waker


def resolved(resource: str, method: str, error: BaseException) -> SessionFuture[Any]:
    """A future that has already failed (for calls refused at once)."""
    fut: SessionFuture[Any] = SessionFuture(resource, method, time.monotonic())
    fut.set_exception(error)
    return fut
