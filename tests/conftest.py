"""Shared fixtures. Every test fails if it leaves a library thread or Pykka actor behind."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

import pykka
import pytest

from sessions.testing import library_threads
from tests import kinds

# tests/kernel needs the QEMU guest of scripts/kernel-lane (real i2c-stub and vcan), which
# sets SESSIONS_KERNEL_LANE=1. Elsewhere the directory is not collected at all: no skips
# to report (CI allows none), and no `-m` expression to keep in step with `-m soak` and
# the mutation run's selection.
IN_KERNEL_LANE = os.environ.get("SESSIONS_KERNEL_LANE") == "1"
collect_ignore = [] if IN_KERNEL_LANE else ["kernel"]

if not IN_KERNEL_LANE:  # the guest runs no property test, and this import takes 8 s there
    import hypothesis  # noqa: F401  # imported early: CPython 3.11 can fail to parse it late


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"pytest got signal {signum}")


# A killed run (a CI time limit, ``timeout``) still tears its fixtures down, so the
# throwaway PostgreSQL, Redis and Kafka servers do not outlive it.
signal.signal(signal.SIGTERM, _terminate)


def _ignore(signum: int, frame: object) -> None:
    """SIGHUP, ignored as ``nohup`` asked, but by a handler: see below."""


# Started under ``nohup``, SIGHUP is ignored, and an ignored signal is inherited across
# exec: every ``sessions run`` a test starts would ignore it too (it respects nohup),
# and the SIGHUP reload tests would wait for a reload that never comes. A handler
# (unlike SIG_IGN) is reset to the default in a child, and still ignores it here.
if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, _ignore)


def _library_threads() -> set[threading.Thread]:
    return library_threads()  # the plugin's own check, so that it stays true


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail the test if a ``sessions-*`` thread or a Pykka actor outlives it."""
    before = set(_library_threads())
    yield
    deadline = time.monotonic() + 5.0
    leaked = [t for t in _library_threads() if t not in before]
    while leaked and time.monotonic() < deadline:
        leaked[0].join(0.05)
        leaked = [t for t in _library_threads() if t not in before]
    actors = pykka.ActorRegistry.get_all()
    if actors:
        pykka.ActorRegistry.stop_all(block=True, timeout=5)
    assert not leaked, f"test leaked library threads: {[t.name for t in leaked]}"
    assert not actors, f"test leaked Pykka actors: {actors}"


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.CRITICAL)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "sessions" or record.name.startswith("sessions."):
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_critical_logs() -> Iterator[None]:
    """Fail the test if the library logged CRITICAL: the supervision loop logs (and
    survives) an unexpected exception in one of its steps, which is always a bug."""
    handler = _Collect()
    logger = logging.getLogger()  # the root: the library's own logger keeps only NullHandler
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    formatter = logging.Formatter()
    assert not handler.records, "the library logged CRITICAL: " + "; ".join(
        formatter.format(r) for r in handler.records)


@pytest.fixture(autouse=True)
def fresh_probe_controls() -> Iterator[None]:
    kinds.CONTROLS.clear()
    kinds.LIFECYCLE.clear()
    yield
    kinds.CONTROLS.clear()
    kinds.LIFECYCLE.clear()


# --- test servers (PostgreSQL, Redis, Kafka, HTTP): fixtures in tests/fixtures_servers.py ---
pytest_plugins = ["tests.fixtures_servers", "pytester"]
# --- end test servers ---
