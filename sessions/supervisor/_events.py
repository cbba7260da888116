"""Delivery of supervision events to subscribers, on a thread of its own.

Subscribers run neither on a resource's thread nor on the supervision thread, so a
slow or failing subscriber can delay other subscribers but never a restart or a call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from sessions.messages import Event

log = logging.getLogger("sessions.events")

Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events, in order, to every subscriber."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[Event | None] = deque()
        self._subscribers: list[Subscriber] = []
        self._delivering = False
        self._thread = threading.Thread(target=self._loop, name="sessions-events", daemon=True)
        self._thread.start()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Deliver every later event to ``callback``; returns a function that unsubscribes."""
        if not callable(callback):
            raise TypeError(f"subscribe() needs a callable, got {callback!r}")
        with self._cond:
            self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            with self._cond:
                self._subscribers = [s for s in self._subscribers if s is not callback]

        return unsubscribe

    def emit(self, event: Event) -> None:
        with self._cond:
            self._queue.append(event)
            self._cond.notify_all()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every event emitted so far has been delivered."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._delivering:
                left = deadline - time.monotonic()
                if left <= 0 or threading.current_thread() is self._thread:
                    return
                self._cond.wait(left)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then end the thread."""
        with self._cond:
            self._queue.append(None)
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._delivering = False
                self._cond.notify_all()
                while not self._queue:
                    self._cond.wait()
                event = self._queue.popleft()
                subscribers = self._subscribers
                self._delivering = True
            if event is None:
                return
            for callback in subscribers:
                try:
                    callback(event)
                except Exception:
                    log.exception("event subscriber %r raised on %r", callback, event)
