"""Fan-out to subscribers: one bounded, drop-oldest queue and one delivery thread each.

Shared by every part of the library that hands data to user callbacks from a thread it
must not block: the event stream (``System.subscribe``), Redis pub/sub callbacks and
CAN subscribers. The producer (a socket reader, the event thread) calls :meth:`put`,
which never blocks: when the subscriber is ``capacity`` items behind, the oldest is
dropped (newest data wins) and counted, and a warning is logged at most every
``warn_every`` seconds. A slow, blocked or raising callback delays only itself.

A subscriber that outlives the connection feeding it (a subscription kept across
restarts) can :meth:`Delivery.pause` its thread with the connection and
:meth:`Delivery.resume` it with the next one: what is queued and the counters carry
over, and a callback still running from before the pause carries on as the one
delivery thread, so callbacks never overlap and stay in order.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger("sessions.fanout")

WARN_EVERY = 10.0
"""Seconds between warnings about one subscriber (drops, callback errors)."""


class Delivery(Generic[T]):
    """One subscriber's queue and delivery thread.

    Threads: ``put`` from any producer thread; ``callback`` runs only on this
    delivery's own thread (one at a time, also across ``pause``/``resume``);
    ``close``/``join``/``pause``/``resume`` from any thread. The counters are written
    under the condition's lock (``delivered`` by the delivery thread, ``dropped`` by
    producers) and may be read at any time.
    """

    def __init__(self, callback: Callable[[T], object], *, capacity: int, name: str,
                 what: str = "subscriber", warn_every: float = WARN_EVERY,
                 start: bool = True) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.callback = callback
        self.capacity = capacity
        self.name = name
        self.what = what
        """How warnings name this subscriber (e.g. ``"pub/sub callback <fn>"``)."""
        self.warn_every = warn_every
        self.delivered = 0
        self.dropped = 0
        self.errors = 0
        self._items: deque[T] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._closing = False
        self._paused = False
        self._running = False
        """A thread is in the delivery loop (started, and has not decided to end).
        Guarded by the condition's lock."""
        self._busy = False
        """The callback is running (delivery thread; guarded by the condition's lock)."""
        self._drop_warned_at = -math.inf
        self._error_logged_at = -math.inf
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        """The delivery thread (the latest one, after a pause and a resume)."""
        if start:
            self.start()

    def start(self) -> None:
        """Start the delivery thread (when constructed with ``start=False``)."""
        with self._cond:
            if self.thread.ident is not None:
                raise RuntimeError(f"delivery {self.name!r} was already started")
            self._running = True
        self.thread.start()

    def pause(self) -> None:
        """Let the delivery thread end once the callback in progress (if any) returns,
        keeping what is queued and the counters for :meth:`resume`. Items put meanwhile
        are queued as ever (bounded, oldest dropped). Does not wait (see :meth:`join`);
        no effect once closed."""
        with self._cond:
            if self._closing:
                return
            self._paused = True
            self._cond.notify_all()

    def resume(self) -> None:
        """Deliver again after :meth:`pause` (or start a delivery constructed with
        ``start=False``): a thread still inside a callback from before the pause carries
        on, otherwise a new thread (of the same name) starts. No effect once closed."""
        with self._cond:
            if self._closing:
                return
            self._paused = False
            if self._running:
                self._cond.notify_all()
                return
            self._running = True
            if self.thread.ident is not None:  # the last thread ended after a pause
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            thread = self.thread
        thread.start()

    def put(self, item: T) -> bool:
        """Queue ``item`` without blocking; False if the oldest item was dropped for it
        (or the delivery is closed and ``item`` itself is dropped)."""
        with self._cond:
            if self._closing:
                self.dropped += 1
                return False
            self._items.append(item)
            if len(self._items) <= self.capacity:
                self._cond.notify_all()
                return True
            self._items.popleft()
            self.dropped += 1
            dropped = self.dropped
        now = time.monotonic()
        if now - self._drop_warned_at >= self.warn_every:
            self._drop_warned_at = now
            log.warning("%s is %d items behind: oldest dropped (%d so far)",
                        self.what, self.capacity, dropped)
        return False

    def pending(self) -> int:
        """Items queued and not yet handed to the callback."""
        with self._cond:
            return len(self._items)

    def flush(self, timeout: float) -> bool:
        """Wait until everything put so far has been handed to the callback and the
        callback has returned; True if so within ``timeout``. From the delivery thread
        itself (a callback flushing) it returns False at once rather than deadlock."""
        if threading.current_thread() is self.thread:
            return False
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._items or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or not self._running:
                    return False
                self._cond.wait(left)
        return True

    def close(self, *, drain: bool = True) -> None:
        """End the delivery: after what is queued (``drain``), or now, dropping it.
        A paused delivery has no thread to drain with: what it queued is dropped.
        Idempotent; does not wait (see :meth:`join`)."""
        with self._cond:
            self._closing = True
            if not drain or self._paused:
                self.dropped += len(self._items)
                self._items.clear()
            self._cond.notify_all()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the delivery thread to end; True if it has (or never started)."""
        thread = self.thread
        if thread.ident is None:
            return True
        if thread is not threading.current_thread():
            thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing and not self._paused:
                    self._cond.wait()
                if self._paused or not self._items:
                    self._running = False
                    self._cond.notify_all()  # a flush() waiting on this thread
                    return
                item = self._items.popleft()
                self._busy = True
            try:
                self.callback(item)
            except Exception:
                with self._cond:
                    self.errors += 1
                    self._busy = False
                    self._cond.notify_all()
                now = time.monotonic()
                if now - self._error_logged_at >= self.warn_every:
                    self._error_logged_at = now
                    log.exception("%s raised (it keeps receiving)", self.what)
            else:
                with self._cond:
                    self.delivered += 1
                    self._busy = False
                    self._cond.notify_all()
