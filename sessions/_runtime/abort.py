"""Tearing a connection down from another thread: the tools of ``ResourceActor.abort``.

A thread blocked in a driver cannot be interrupted in Python, but the socket it reads can
be shut down under it: ``shutdown(SHUT_RDWR)`` makes a blocked ``recv()`` return at once
(end of file), on Linux and elsewhere, whereas ``close()`` alone does not reliably wake it
and frees the descriptor number for reuse while the driver may still use it.

:class:`Cut` collects what one incarnation's ``abort()`` must tear down. The kinds register
a target as soon as the driver has the connection (before ``connect()`` returns, so a
pending connect can be aborted too), and the cut remembers that it was aborted, so a
target registered afterwards is torn down at once instead of being missed.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Cut", "dup_socket", "shutdown_socket"]

log = logging.getLogger("sessions.abort")


def shutdown_socket(sock: Any) -> bool:
    """``shutdown(SHUT_RDWR)`` on ``sock`` from any thread; False if that failed (already
    closed, never connected, not a socket). Never raises, never blocks.

    A TLS socket is shut down at the TCP level (``socket.socket.shutdown``): the
    ``SSLSocket`` override would also drop its SSL object under the thread reading it.
    """
    if sock is None:
        return False
    try:
        if isinstance(sock, socket.socket):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:  # a socket-like wrapper (e.g. urllib3's TLS-in-TLS transport)
            inner = getattr(sock, "socket", None)
            if isinstance(inner, socket.socket):
                socket.socket.shutdown(inner, socket.SHUT_RDWR)
            else:
                sock.shutdown(socket.SHUT_RDWR)
    except (OSError, ValueError, AttributeError, TypeError):
        return False
    return True


def dup_socket(fd: int) -> socket.socket:
    """A socket object on a duplicate of descriptor ``fd`` (raises ``OSError`` if ``fd``
    is not a socket). Shutting the duplicate down shuts the connection down for the
    driver too (one socket, two descriptors); closing it closes only the duplicate."""
    dup = os.dup(fd)
    try:
        return socket.socket(fileno=dup)
    except BaseException:
        os.close(dup)
        raise


class Cut:
    """What ``abort()`` tears down for one incarnation, from any thread.

    ``add(abort, close)`` registers a connection: ``abort()`` must not block (a socket
    shutdown, an interrupt flag) and ``close()`` releases what the registration holds
    (e.g. a duplicated descriptor). Aborts and closes run under one lock, so an abort
    never meets a descriptor that a concurrent ``close()`` freed and something else
    reused. Everything is idempotent; errors are logged at debug level, never raised.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._targets: dict[object, tuple[Callable[[], object], Callable[[], object] | None]] = {}
        self.aborted = False
        """Set by :meth:`abort` (read without the lock: a bool)."""

    def add(
        self, key: object, abort: Callable[[], object], close: Callable[[], object] | None = None
    ) -> None:
        """Register a target under ``key``; torn down at once if the cut was aborted."""
        with self._lock:
            self._targets[key] = (abort, close)
            if self.aborted:
                _call(abort, self.what, "abort")

    def forget(self, key: object) -> None:
        """The target under ``key`` is being closed by its owner: release it, and never
        touch it again (a closed connection's handle must not be aborted)."""
        with self._lock:
            target = self._targets.pop(key, None)
            if target is not None and target[1] is not None:
                _call(target[1], self.what, "close")

    def abort(self) -> None:
        """Tear down every target, now and any registered later."""
        with self._lock:
            self.aborted = True
            for abort, _ in self._targets.values():
                _call(abort, self.what, "abort")

    def close(self) -> None:
        """Release every target (at disconnect); later aborts find nothing to do."""
        with self._lock:
            targets, self._targets = self._targets, {}
            for _, close in targets.values():
                if close is not None:
                    _call(close, self.what, "close")


def _call(fn: Callable[[], object], what: str, step: str) -> None:
    try:
        fn()
    except Exception as exc:  # the contract: abort never raises
        log.debug("%s of %s failed: %r", step, what, exc)

