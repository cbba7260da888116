"""Pytest fixtures for the throwaway servers of ``tests.servers``.

Registered from ``tests/conftest.py`` (``pytest_plugins``). Session-scoped servers,
shared by all tests, with per-test isolation on top::

    postgres_server  (session)   postgres_url  (function: a fresh database)
    redis_server     (session)   redis_url     (function: FLUSHALL first)
    kafka_server     (session)   kafka_topic   (function: a fresh 1-partition topic)
    http_server      (function: cheap, and its counters and mode are per test)

Tests that stop, kill or restart a server must not touch the shared ones: they take a
server of their own from a factory (closed when the test ends), e.g.
``make_redis_server(persistence=True)``, ``make_postgres_server()``,
``make_kafka_server()``, ``make_http_server()``.

A missing server binary skips those tests with a loud reason, except in CI (``CI`` set
and not "0"/"false"), where it fails them: CI must never skip server tests.

``tests.servers`` (and with it every driver and server plugin) is imported only by the
fixtures that start a server: the runtime's tests import this module with nothing but
the core dependencies installed (the core stage of scripts/test).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import pytest

if TYPE_CHECKING:
    from tests.servers import (
        HttpServer,
        KafkaServer,
        MosquittoServer,
        PostgresServer,
        RedisServer,
        Server,
        ServerUnavailable,
    )

S = TypeVar("S", bound="Server")


def in_ci() -> bool:
    """Whether the ``CI`` environment variable asks for CI behaviour."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def server_unavailable(exc: ServerUnavailable) -> NoReturn:
    """Skip (outside CI) or fail (in CI) because a server binary is missing."""
    reason = (
        f"!!! SERVER BINARY MISSING: {exc.binary} !!! "
        f"Tests needing it cannot run. To fix: {exc.install_hint}."
    )
    if in_ci():
        pytest.fail(f"{reason} (CI is set: server tests must not be skipped)", pytrace=False)
    pytest.skip(reason)


def _new(factory: Callable[..., S], **kwargs: Any) -> S:
    """A server not started yet; a missing binary skips (fails in CI)."""
    from tests.servers import ServerUnavailable  # noqa: PLC0415

    try:
        return factory(**kwargs)
    except ServerUnavailable as exc:
        server_unavailable(exc)


def _shared(factory: Callable[..., S]) -> Generator[S, None, None]:
    with _new(factory) as server:  # started on entry, closed (even if start fails) on exit
        yield server


def _factory(factory: Callable[..., S]) -> Generator[Callable[..., S], None, None]:
    """Make servers on demand; all are closed, newest first, when the fixture ends."""
    with contextlib.ExitStack() as stack:

        def make(**kwargs: Any) -> S:
            server: S = stack.enter_context(_new(factory, **kwargs))
            return server

        yield make


# ------------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster shared by the session. Never stop or kill it."""
    from tests.servers import PostgresServer  # noqa: PLC0415

    yield from _shared(PostgresServer)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """SQLAlchemy URL of a fresh database on ``postgres_server``, dropped afterwards."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture
def make_postgres_server() -> Iterator[Callable[..., PostgresServer]]:
    """``make_postgres_server(**kwargs)``: a started server of the test's own."""
    from tests.servers import PostgresServer  # noqa: PLC0415

    yield from _factory(PostgresServer)


# ----------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server shared by the session. Never stop or kill it."""
    from tests.servers import RedisServer  # noqa: PLC0415

    yield from _shared(RedisServer)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of ``redis_server``, emptied (FLUSHALL) for this test."""
    redis_server.flushall()
    return redis_server.url


@pytest.fixture
def make_redis_server() -> Iterator[Callable[..., RedisServer]]:
    """``make_redis_server(persistence=False)``: a started server of the test's own."""
    from tests.servers import RedisServer  # noqa: PLC0415

    yield from _factory(RedisServer)


# ----------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_server() -> Iterator[KafkaServer]:
    """A Tansu (Kafka protocol) broker shared by the session. Never stop or kill it."""
    from tests.servers import KafkaServer  # noqa: PLC0415

    yield from _shared(KafkaServer)


@pytest.fixture
def kafka_topic(kafka_server: KafkaServer) -> str:
    """Name of a fresh single-partition topic on ``kafka_server``."""
    return kafka_server.create_topic(partitions=1)


@pytest.fixture
def make_kafka_server() -> Iterator[Callable[..., KafkaServer]]:
    """``make_kafka_server()``: a started broker of the test's own."""
    from tests.servers import KafkaServer  # noqa: PLC0415

    yield from _factory(KafkaServer)


# ----------------------------------------------------------------------------- MQTT


@pytest.fixture
def make_mosquitto_server() -> Iterator[Callable[..., MosquittoServer]]:
    """``make_mosquitto_server(persistence=False)``: a started broker of the test's own."""
    from tests.servers import MosquittoServer  # noqa: PLC0415

    yield from _factory(MosquittoServer)


# ------------------------------------------------------------------------------ HTTP


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """A local HTTP server for this test (see ``tests.servers.HttpServer``)."""
    from tests.servers import HttpServer  # noqa: PLC0415

    yield from _shared(HttpServer)


@pytest.fixture
def make_http_server() -> Iterator[Callable[..., HttpServer]]:
    """``make_http_server()``: more HTTP servers for this test."""
    from tests.servers import HttpServer  # noqa: PLC0415

    yield from _factory(HttpServer)
