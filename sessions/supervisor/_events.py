"""Delivery of supervision events to subscribers, on a thread of its own.

Subscribers run neither on a resource's thread nor on the supervision thread, so a
slow or failing subscriber can delay other subscribers but never a restart or a call.
The stream is a :class:`~sessions._runtime.fanout.Delivery`: bounded (``BACKLOG``
events; past that the oldest are dropped, counted and warned about, so a wedged
subscriber cannot grow memory without bound), delivered in order to every subscriber.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sessions._runtime.fanout import Delivery
from sessions.messages import Event

log = logging.getLogger("sessions.events")

Subscriber = Callable[[Event], None]

BACKLOG = 100_000
"""Events queued for subscribers before the oldest are dropped (a subscriber that
stopped returning; in normal running the queue stays near empty)."""


class EventBus:
    """Fan-out of events, in order, to every subscriber."""

    def __init__(self, backlog: int = BACKLOG) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        """Replaced, never mutated, under ``_lock``: the delivery thread reads it bare."""
        self._delivery: Delivery[Event] = Delivery(
            self._deliver, capacity=backlog, name="sessions-events", what="the event stream")

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Deliver every later event to ``callback``; returns a function that unsubscribes."""
        if not callable(callback):
            raise TypeError(f"subscribe() needs a callable, got {callback!r}")
        with self._lock:
            self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = [s for s in self._subscribers if s is not callback]

        return unsubscribe

    def emit(self, event: Event) -> None:
        self._delivery.put(event)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every event emitted so far has been delivered (bounded; from a
        subscriber itself it returns at once)."""
        self._delivery.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued, then end the thread."""
        self._delivery.close()
        self._delivery.join(timeout)

    def _deliver(self, event: Event) -> None:
        for callback in self._subscribers:
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber %r raised on %r", callback, event)
