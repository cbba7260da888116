"""Named in-process peers of the substitutes (a fake Redis server, an in-memory Kafka
broker), shared by the resources whose config names them.

A substitute is selected by config alone (``url = "fakeredis://shared"``,
``bootstrap_servers = "memory://plant"``), so the resources of one system, or of two
systems in one process, find the same peer by its name, as two clients of one real
server would. The peer outlives a resource's restarts (a real server keeps its data
while a client reconnects) and lives until :func:`reset`: the test harness
(``sessions.testing.Harness.finish``, so the ``sessions_system`` fixture) resets after
every test, so one test's data never leaks into the next.

This module imports no driver: the kinds hand it a factory when they first need a peer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["peer", "peers", "reset"]

T = TypeVar("T")

log = logging.getLogger("sessions.substitutes")

_lock = threading.Lock()
_peers: dict[tuple[str, str], Any] = {}


def peer(family: str, name: str, factory: Callable[[], T]) -> T:
    """The peer ``name`` of ``family`` (``"fakeredis"``, ``"kafka-memory"``), made by
    ``factory()`` the first time it is asked for (under a lock: two resources starting
    together get the same one)."""
    with _lock:
        key = (family, name)
        if key not in _peers:
            _peers[key] = factory()
        found: T = _peers[key]
        return found


def peers(family: str) -> dict[str, Any]:
    """The peers of ``family`` made so far, by name (a copy)."""
    with _lock:
        return {name: value for (fam, name), value in _peers.items() if fam == family}


def reset() -> None:
    """Forget every peer, closing those that have a ``close()`` (a simulated device's
    server thread): the next resource to ask for a name gets a fresh, empty one. A
    resource still connected keeps the peer it has (stop systems first)."""
    with _lock:
        forgotten = list(_peers.values())
        _peers.clear()
    for value in forgotten:
        close = getattr(value, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # one peer failing to close must not keep the others open
                log.exception("closing the substitute %r failed", value)
