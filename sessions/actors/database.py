"""The ``database`` kind: one SQLAlchemy connection, owned by one actor thread.

A SQLAlchemy ``Connection`` or ORM ``Session`` must not be shared between threads
(sqlalchemy #4417), so each actor opens exactly one DBAPI connection in ``connect()``
(an engine with ``NullPool``: no pool hides a second connection or a silent reconnect)
and keeps it until it faults. ``pool_size = N`` in the config gives N actors, hence N
connections, behind one handle.

Autocommit outside transactions: ``execute``/``scalar`` run with the driver in
autocommit mode, so each one is committed on its own, in a single round trip.
``executemany``, ``transaction(fn)`` and ``session(fn)`` run inside an explicit
``BEGIN`` (``BEGIN IMMEDIATE`` on SQLite) that is committed when they return and rolled
back when they raise: all of it or none of it.

A lease is one transaction: ``with handle.lease() as tx:`` (or ``with handle as tx``,
``async with``) holds one connection; ``begin_lease`` sends ``BEGIN`` (``BEGIN
IMMEDIATE`` on SQLite, which takes the write lock for the whole block), every call made
through ``tx`` runs inside that transaction without a commit of its own, and
``end_lease`` commits when the block exits normally and rolls back when it raises. A
call that fails inside the block dooms the transaction, as a failed flush does an ORM
``Session``'s: the error goes to the caller, the block's later calls fail at once with
``PendingRollbackError``, and the exit rolls back (a normal exit then raises
``PendingRollbackError`` too, so nothing looks committed that is not). ``session(fn)``
inside a lease joins the lease's transaction (its ``commit()`` does not end it). A
lease broken by a lost connection has no transaction left: the server rolled it back.

Automatic pipelining (PostgreSQL via psycopg 3, ``pipeline = true``): the ``execute``/
``scalar`` calls of different callers queued together go out as one psycopg pipeline in
one transaction, one round trip for all (:meth:`DatabaseActor.run_batch`). A failing
statement rolls the transaction back and the calls run again one by one, so each caller
gets exactly what it would have had alone.

Every result crossing back to the caller is plain data (lists of dicts, ints, scalars),
never a live cursor or result.

What is a fault and what goes to the caller:

================================================  ===========================================
error                                             outcome
================================================  ===========================================
``DBAPIError`` with ``connection_invalidated``    **fault**: ``ResourceFault`` (outcome
(server gone, backend terminated, socket cut)     unknown), the actor reconnects. A cut
                                                  transaction is never retried.
the connection found invalidated or replaced      **fault** (e.g. ``fn`` swallowed the
after a call (``ConnectionLost``)                 disconnect, or reconnected by itself)
the connection lost during a pipeline             **fault** for every call of the pipeline
                                                  (outcome unknown: COMMIT may have run)
``OperationalError`` while connecting             failed start: retried with backoff, counts
                                                  toward intensity and the breaker
``IntegrityError``, ``ProgrammingError``,         **caller**: after a rollback, so the
serialization failure, deadlock, lock or          connection is clean for the next call; the
statement timeout, SQLite "no such table" or      actor keeps running
"database is locked", any error from ``fn``
a statement of a pipeline fails                   **caller**, its own caller only: the
                                                  pipeline is rolled back whole and its calls
                                                  run again one by one
================================================  ===========================================

``counts_as_failure`` (the circuit breaker) adds to the faults the ``OperationalError`` s
that say the server cannot be reached (SQLSTATE class 08, admin/crash shutdown, too many
connections, "connection refused", SQLite "unable to open database file").

No unbounded wait on a dead peer
--------------------------------

By default libpq waits forever: for a connection that never completes, and for a reply
(a query sent to a host that died is retransmitted for about 15 minutes by the kernel,
an idle connection to it is probed only after 2 hours). Every PostgreSQL connection of a
libpq driver (psycopg, psycopg2) therefore gets the libpq parameters of
:data:`LIBPQ_DEFAULTS` (documented there, key by key) unless the URL's query string or
``connect_args`` sets them: a host that vanished or a black-holed network is noticed in
about 30 s even with no watchdog. SQLite and other drivers get none of them.

TCP cannot tell a *frozen* server (SIGSTOP, a stuck backend: its kernel still
acknowledges) from a slow one, nor a long query from a hung one. That is the runtime's
stall watchdog's job, and :meth:`DatabaseActor.abort` is how it frees the actor: it shuts
the driver's own socket down (PostgreSQL and any driver exposing ``fileno()``) or calls
``sqlite3.Connection.interrupt()`` (SQLite), from another thread; the blocked call then
raises a driver error and ``disconnect`` closes the connection without a round trip.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import select
import threading
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Compiled, Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    OperationalError,
    PendingRollbackError,
    ResourceClosedError,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import TextClause

from sessions._redact import describe, redact
from sessions._runtime.abort import Cut, dup_socket, shutdown_socket
from sessions._runtime.contract import BatchItem, Outcome, ResourceActor

__all__ = [
    "LIBPQ_DEFAULTS",
    "SYNC_DRIVERS",
    "ConnectionLost",
    "DatabaseActor",
    "DatabaseOptions",
    "synchronous_url",
]

log = logging.getLogger("sessions.database")

T = TypeVar("T")

Params = Mapping[str, Any]
Statement = str | Executable

#: SQLSTATEs (PostgreSQL) that say the server cannot be reached or refuses sessions.
_UNREACHABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})
#: Driver messages that say the same where no SQLSTATE is given (SQLite, libpq).
_UNREACHABLE_TEXT = (
    "connection refused",
    "could not connect",
    "connection timed out",
    "server closed the connection",
    "no route to host",
    "unable to open database file",
)

LIBPQ_DEFAULTS: Mapping[str, int] = MappingProxyType(
    {
        # libpq's default is to wait forever for a connection: a black-holed host
        # retransmits the SYN for about 2 min, a frozen server accepts the TCP connection
        # (its kernel does) and never answers the startup packet. 10 s per host address
        # leaves room for a slow TLS and authentication handshake (psycopg enforces 2 s at
        # least).
        "connect_timeout": 10,
        # TCP keepalive on (libpq's default, said explicitly), probing after 10 s of
        # silence, every 5 s, giving up after 3 unanswered probes: an idle connection
        # (between calls, LISTEN) to a host that vanished is dropped after about 25 s
        # instead of the kernel's 2 h 11 min.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        # Milliseconds that sent data may stay unacknowledged before the kernel drops the
        # connection: a query sent to a host that died fails after 30 s instead of the
        # kernel's ~15 min of retransmissions (tcp_retries2). It also caps keepalive.
        # libpq 12 or later; dropped for an older libpq, which would refuse it.
        "tcp_user_timeout": 30_000,
    }
)
"""libpq parameters every PostgreSQL connection of a libpq driver (psycopg, psycopg2)
gets unless the URL's query string or ``connect_args`` sets them (``connect_timeout``:
also unless ``PGCONNECT_TIMEOUT`` is set in the environment). They bound what TCP can
see: a dead host or network. Not a frozen server process (its kernel still acknowledges)
nor a long query: those are the stall watchdog's, and ``statement_timeout``'s, job.
Explicit parameters also override a ``service`` file's."""

_LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2", "psycopg2cffi"})
_LIBPQ_TCP_USER_TIMEOUT = 120_000
"""The first libpq version (12) that knows ``tcp_user_timeout``."""

#: What the libpq parameters of LIBPQ_DEFAULTS mean when set to 0 (or None: libpq's own
#: default), for ``sessions check``.
_LIBPQ_UNBOUNDED: Mapping[str, str] = {
    "connect_timeout": "libpq then waits forever for a connection that never completes "
    "(a black-holed host, a frozen server)",
    "keepalives": "TCP keepalive is then off: an idle connection to a host that vanished "
    "is never noticed",
    "keepalives_idle": "the kernel default applies: an idle connection to a host that "
    "vanished is first probed after 2 hours",
    "tcp_user_timeout": "the kernel default applies: data a dead host never acknowledges "
    "is retransmitted for about 15 minutes before the call fails",
}

SQLITE_CONNECT_ARGS: tuple[str, ...] = (
    "timeout",
    "detect_types",
    "isolation_level",
    "check_same_thread",
    "factory",
    "cached_statements",
    "uri",
    "autocommit",
)
"""The keywords of ``sqlite3.connect()`` besides the database (``autocommit``: Python
3.12 or later), what ``connect_args`` may hold for a SQLite url."""

_LIBPQ_PARAMETERS = frozenset({
    *LIBPQ_DEFAULTS, "sslmode", "sslrootcert", "sslcert", "sslkey", "application_name",
    "options", "target_session_attrs", "passfile", "service", "hostaddr", "gssencmode",
    "channel_binding", "client_encoding",
})
"""libpq parameters a SQLite url's ``connect_args`` is told are PostgreSQL's."""

_CUT_KEY = "sessions.abort"
"""Key of a DBAPI connection's ``Cut`` in its pool record's ``info``."""

#: Compiled ``text()`` clauses kept per actor (SQLAlchemy caches by statement too;
#: this only saves re-parsing the string on the hot path).
_TEXT_CACHE_SIZE = 512


class ConnectionLost(Exception):
    """The actor's connection was found invalidated, closed or replaced: a fault."""


SYNC_DRIVERS: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("postgresql", "asyncpg"): "psycopg",
        ("postgresql", "psycopg_async"): "psycopg",
        ("sqlite", "aiosqlite"): "pysqlite",
    }
)
"""(database, async driver) -> the synchronous driver a url naming the async one gets.

The kind is synchronous: each actor owns one connection on its own thread and calls are
plain blocking DBAPI calls; asyncio code awaits the handle's futures instead. So a url
written for an async engine (``postgresql+asyncpg://``, as SQLAlchemy's asyncio
extension wants) is served by the same database's synchronous driver, with an INFO log
line saying so (see :func:`synchronous_url`)."""

_NOTED: set[str] = set()
"""Urls whose driver mapping was logged already (once per process)."""


def synchronous_url(url: URL) -> URL:
    """``url`` with an async driver of :data:`SYNC_DRIVERS` replaced by its synchronous
    counterpart (``postgresql+asyncpg`` -> ``postgresql+psycopg``); asyncpg's ``ssl=``
    query parameter becomes libpq's ``sslmode=`` (``true``: ``require``, ``false``:
    ``disable``, a mode as it is). Any other url as it is."""
    backend = url.get_backend_name()
    driver = url.drivername.partition("+")[2]
    target = SYNC_DRIVERS.get((backend, driver))
    if target is None:
        return url
    mapped = url.set(drivername=f"{backend}+{target}")
    if driver == "asyncpg" and "ssl" in url.query:
        query = dict(url.query)
        ssl = str(query.pop("ssl"))
        query.setdefault("sslmode", {"true": "require", "false": "disable"}.get(ssl.lower(), ssl))
        mapped = mapped.set(query=query)
    return mapped


def _install_hint(url: URL) -> str:
    """How to install the DBAPI driver ``url`` names (for a missing-driver error)."""
    driver = url.get_driver_name()
    if driver == "psycopg":
        return "install it with: pip install 'applib-sessions[postgres]'"
    if driver == "psycopg2":
        return ("install it with: pip install psycopg2-binary, or name psycopg 3 in the url "
                "(postgresql+psycopg://...) and pip install 'applib-sessions[postgres]'")
    if url.get_backend_name() == "sqlite":
        return "SQLite's driver (sqlite3) is part of Python: this Python was built without it"
    return f"install the {driver!r} package, the driver SQLAlchemy uses for this url"


def _is_memory_sqlite(url: str) -> bool:
    """True for an in-memory SQLite database that exists once per connection."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    if parsed.get_backend_name() != "sqlite":
        return False
    database = parsed.database or ""
    query = {k: str(v) for k, v in parsed.query.items()}
    if query.get("cache") == "shared":
        return False  # a shared-cache memory database is seen by every connection
    return (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or (query.get("mode") == "memory")
    )


def _libpq_driver(url: Any) -> bool:
    """True for a PostgreSQL URL whose driver is built on libpq (psycopg, psycopg2)."""
    return bool(url.get_backend_name() == "postgresql" and url.get_driver_name() in _LIBPQ_DRIVERS)


def _libpq_version(driver: str) -> int | None:
    """The libpq version the driver is linked with (e.g. 170002), None if unknown."""
    try:
        if driver == "psycopg":
            return int(importlib.import_module("psycopg").pq.version())
        return int(importlib.import_module(f"{driver}.extensions").libpq_version())
    except Exception:  # not installed (create_engine says so), or no such function
        return None


def libpq_defaults(url: Any, connect_args: Mapping[str, Any]) -> dict[str, int]:
    """The parameters of :data:`LIBPQ_DEFAULTS` that ``url`` (a SQLAlchemy ``URL``) and
    ``connect_args`` leave unset; nothing for a driver not built on libpq."""
    if not _libpq_driver(url):
        return {}
    given = set(url.query) | set(connect_args)
    if os.environ.get("PGCONNECT_TIMEOUT"):
        given.add("connect_timeout")
    version = _libpq_version(url.get_driver_name())
    if version is not None and version < _LIBPQ_TCP_USER_TIMEOUT:
        given.add("tcp_user_timeout")
    return {k: v for k, v in LIBPQ_DEFAULTS.items() if k not in given}


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def unbounded_libpq_waits(url: str, connect_args: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(config path, message)`` for each libpq parameter set to an unbounded wait
    (``sessions check`` warns about them): 0, a negative number or None."""
    try:
        parsed = synchronous_url(make_url(url))
        if not _libpq_driver(parsed):
            return []
    except Exception:  # a bad URL or an unknown driver is reported by validation
        return []
    problems: list[tuple[str, str]] = []
    for key, why in _LIBPQ_UNBOUNDED.items():
        if key in connect_args:  # connect_args wins over the URL's query string
            path, value = f"connect_args.{key}", connect_args[key]
        elif key in parsed.query:
            path, value = f"url?{key}", parsed.query[key]
        else:
            continue
        number = _number(value)
        if value is None and key == "keepalives":
            continue  # libpq's own default: on
        if value is None or (number is not None and number <= 0):
            default = LIBPQ_DEFAULTS[key]
            problems.append((path, f"= {value!r} is unbounded: {why} (default: {default})"))
    return problems


def _abort_target(raw: Any) -> tuple[Callable[[], object], Callable[[], object] | None] | None:
    """How ``abort`` tears down the DBAPI connection ``raw`` from another thread.

    A driver exposing its socket (``fileno()``: psycopg 3, psycopg2, mysqlclient): a
    duplicate of that socket is taken now, on the thread that connected, and shut down
    at abort (``shutdown`` wakes a blocked ``recv``, ``close`` would not). Holding our own
    descriptor means the number can never be freed and reused by an unrelated socket
    before the abort. SQLite: ``interrupt()``, which SQLite allows from any thread.
    """
    fileno = getattr(raw, "fileno", None)
    if callable(fileno):
        try:
            sock = dup_socket(int(fileno()))
        except Exception as exc:  # not a socket, or the driver lost it already
            log.debug("cannot duplicate the socket of %r: %r", type(raw), exc)
        else:
            return (lambda: shutdown_socket(sock)), sock.close
    interrupt = getattr(raw, "interrupt", None)
    if callable(interrupt):
        return interrupt, None
    return None


def _unreachable(exc: BaseException) -> bool:
    """An ``OperationalError`` meaning the server cannot be reached (not a bad query)."""
    if not isinstance(exc, OperationalError):
        return False
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str) and (state.startswith("08") or state in _UNREACHABLE_STATES):
        return True
    message = str(orig).lower()
    return any(fragment in message for fragment in _UNREACHABLE_TEXT)


class DatabaseOptions(BaseModel):
    """Config keys of the ``database`` kind (besides the supervision keys); the one place
    they and their defaults are declared (``DatabaseActor.Options``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        "sqlite:///sessions.db",
        description="SQLAlchemy URL, e.g. 'sqlite:///plant.db', 'sqlite:///:memory:' or "
        "'postgresql+psycopg://user:pass@host/db'. Default: a SQLite file in the working "
        "directory.",
    )
    echo: bool = Field(False, description="Log every statement (SQLAlchemy's echo).")
    pipeline: bool = Field(
        True,
        description="PostgreSQL via psycopg 3: send the execute/scalar calls queued from "
        "different callers in one round trip (a psycopg pipeline), each caller getting "
        "its own result or error. See the database kind's page for what it changes.",
    )
    on_connect: list[str] = Field(
        default_factory=list,
        description="SQL statements run, in order, on every new connection before any "
        'call (e.g. "SET search_path TO plant", "PRAGMA foreign_keys=ON").',
    )
    connect_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments for the DBAPI connect() (e.g. timeout, the busy "
        "timeout, default 5 s, for SQLite). PostgreSQL via psycopg/psycopg2 gets by "
        "default connect_timeout = 10 (s), keepalives = 1, keepalives_idle = 10, "
        "keepalives_interval = 5, keepalives_count = 3 and tcp_user_timeout = 30000 "
        "(ms), so that a dead host or network is noticed in about 30 s; a key given "
        "here or in the URL's query string wins. 0 means unbounded for these "
        "(sessions check warns).",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        """A SQLAlchemy URL whose dialect and driver SQLAlchemy knows. Whether the driver
        is installed is the actor's question (it builds the engine): a config may be
        checked, or its schema built, where the driver is not."""
        try:
            parsed = synchronous_url(make_url(url))
        except ArgumentError as err:
            raise ValueError(f"url {redact(url)!r} is not a SQLAlchemy URL: {err}") from None
        try:
            parsed.get_dialect()  # the dialect's module only, not the DBAPI driver
        except ImportError:
            pass  # a third-party dialect without its package: the actor says so
        except ArgumentError as err:  # NoSuchModuleError: an unknown dialect or driver
            raise ValueError(
                f"cannot use url {parsed.render_as_string(hide_password=True)!r}: "
                f"{redact(err)}"
            ) from None
        return url

    @field_validator("connect_args")
    @classmethod
    def _sqlite_arguments(
        cls, connect_args: dict[str, Any], info: ValidationInfo
    ) -> dict[str, Any]:
        """SQLite's driver (sqlite3) takes only its own keywords: a libpq parameter there
        (a config whose ``url`` falls back to SQLite: ``${DB_URL:-sqlite:///...}``) would
        fail every connect with a TypeError; it is named here instead."""
        url = info.data.get("url")
        if not isinstance(url, str):
            return connect_args  # reported by the url's own validation
        parsed = synchronous_url(make_url(url))
        if parsed.get_backend_name() != "sqlite" or parsed.get_driver_name() != "pysqlite":
            return connect_args
        unknown = [key for key in connect_args if key not in SQLITE_CONNECT_ARGS]
        if unknown:
            libpq = [key for key in unknown if key in _LIBPQ_PARAMETERS]
            verb = "is a libpq parameter" if len(libpq) == 1 else "are libpq parameters"
            hint = (
                f"; {', '.join(libpq)} {verb} (PostgreSQL): with a url that may be SQLite or "
                "PostgreSQL, give it in the PostgreSQL url's query string "
                "(postgresql+psycopg://host/db?connect_timeout=5)"
                if libpq
                else ""
            )
            raise ValueError(
                f"{', '.join(repr(k) for k in unknown)}: not an argument of sqlite3.connect(), "
                f"which the SQLite url {parsed.render_as_string(hide_password=True)!r} uses "
                f"(it takes {', '.join(SQLITE_CONNECT_ARGS)}){hint}"
            )
        return connect_args

    def unbounded_waits(self) -> list[tuple[str, str]]:
        """``(config path, message)`` per wait set to unbounded (``sessions check``)."""
        return unbounded_libpq_waits(self.url, self.connect_args)


class DatabaseActor(ResourceActor):
    """A relational database through SQLAlchemy (SQLite, PostgreSQL via psycopg, ...).

    Callable through a handle: ``execute``, ``executemany``, ``scalar``,
    ``transaction(fn)``, ``session(fn)``. Through a lease (``with handle.lease() as
    tx``), the same calls run in one transaction: see the module's docstring.
    """

    kind: ClassVar[str] = "database"
    batch_methods: ClassVar[frozenset[str]] = frozenset({"execute", "scalar"})

    Options = DatabaseOptions
    config: DatabaseOptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        written = make_url(self.config.url)  # checked by DatabaseOptions
        parsed = synchronous_url(written)
        if parsed is not written:
            shown = written.render_as_string(hide_password=True)
            if shown not in _NOTED:
                _NOTED.add(shown)
                log.info(
                    "url %s names the async driver %s: the database kind is synchronous "
                    "(one connection per actor, on its own thread; asyncio code awaits the "
                    "handle's futures), so it connects with %s",
                    shown, written.drivername, parsed.drivername,
                )
        self.url = parsed.render_as_string(hide_password=True)
        """The URL with its password masked (for messages)."""
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        # SQLite: take the write lock at BEGIN, so two pool members doing read-then-write
        # wait on the busy timeout instead of failing at once on the lock upgrade.
        self._begin_sql = "BEGIN IMMEDIATE" if self.is_sqlite else "BEGIN"
        try:
            given = dict(self.config.connect_args)
            self.connect_args: dict[str, Any] = {**libpq_defaults(parsed, given), **given}
            """What the DBAPI connect() gets besides the URL (with LIBPQ_DEFAULTS)."""
            # NullPool: the engine's only connection is the one connect() keeps open.
            # AUTOCOMMIT: a lone statement needs one round trip; transactions BEGIN
            # explicitly in _on_begin.
            self.engine: Engine = create_engine(
                parsed,
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                echo=self.config.echo,
                connect_args=dict(self.connect_args),
            )
        except ImportError as err:
            raise ValueError(
                f"the driver for {parsed.drivername!r} is not installed ({err}); "
                f"{_install_hint(parsed)}"
            ) from None
        except (ArgumentError, TypeError) as err:
            raise ValueError(f"cannot use url {self.url!r}: {redact(err)}") from None
        self._explicit = False
        """True while a call wants a real transaction: autobegin then sends BEGIN."""
        self._leased = False
        """A lease's transaction is open: calls run in it and do not commit."""
        self._doomed: BaseException | None = None
        """The error of the lease's first failed call: its transaction rolls back."""
        self._connects = 0
        """DBAPI connections opened by the engine (a change mid-life = silent reconnect)."""
        self._expected_connects = 0
        self._texts: dict[str, TextClause] = {}
        self._pipelines = (
            self.config.pipeline
            and not self.config.echo  # echo logs what SQLAlchemy sends: the pipeline bypasses it
            and parsed.get_backend_name() == "postgresql"
            and self.engine.dialect.driver == "psycopg"
        )
        """Queued execute/scalar calls go out as one psycopg pipeline (``run_batch``)."""
        self._compiled: dict[str, Compiled | None] = {}
        """SQL text -> its compiled form for a pipeline, None if it is never pipelined
        (same bound as ``_texts``)."""
        self._cursors_of: Any = None
        self._cursors: list[Any] = []
        """Cursors of the connection ``_cursors_of``, reused by pipelines (actor thread)."""
        self._batch_stats = {"batches": 0, "calls": 0, "largest": 0, "replayed": 0}
        """Actor thread only; read by ``batch_stats()``."""
        self._local = threading.local()
        """``cut``: the Cut of the incarnation running on this thread (set by connect)."""
        self._cut_lock = threading.Lock()
        self._connecting: list[Cut] = []
        """Cuts of connect() calls that have not returned (what abort(None) tears down)."""
        self._live: dict[int, tuple[Connection, Cut]] = {}
        """id(connection) -> (connection, its Cut), from connect() to disconnect()."""
        event.listen(self.engine, "begin", self._on_begin)
        event.listen(self.engine, "connect", self._on_dbapi_connect)
        event.listen(self.engine, "close", self._on_dbapi_close)
        if self.is_sqlite:
            # sqlite3's interrupt() stops only statements running at the time: refuse
            # those an aborted incarnation would start afterwards.
            event.listen(self.engine, "before_cursor_execute", self._refuse_if_aborted)

    @classmethod
    def max_pool_size(cls, options: Mapping[str, Any]) -> tuple[int, str] | None:
        """An in-memory SQLite database exists once per connection: one actor only."""
        url = options.get("url", DatabaseOptions.model_fields["url"].default)
        if _is_memory_sqlite(str(url)):
            return 1, (
                "an in-memory SQLite database exists once per connection, so a pool "
                "would be several unrelated databases"
            )
        return None

    # -- lifecycle (actor thread) -------------------------------------------------------

    def connect(self) -> Connection:
        """Open the one connection and run the ``on_connect`` statements on it."""
        cut = Cut(f"the database connection to {self.url}")
        self._local.cut = cut
        self._leased, self._doomed = False, None  # a lease dies with its connection
        with self._cut_lock:
            self._connecting.append(cut)
        try:
            conn = self.engine.connect()
            try:
                for statement in self.config.on_connect:
                    conn.exec_driver_sql(statement)
                conn.commit()
                if cut.aborted:
                    raise ConnectionLost(f"connecting to {self.url} was aborted")
            except BaseException:
                self._close(conn, cut)
                raise
        except BaseException:
            with self._cut_lock:
                self._connecting.remove(cut)
            cut.close()
            raise
        with self._cut_lock:  # one step: abort() finds the cut in one place or the other
            self._connecting.remove(cut)
            self._live[id(conn)] = (conn, cut)
        self._expected_connects = self._connects
        return conn

    def disconnect(self, resource: Connection) -> None:
        """Close the connection; after an abort, without a round trip to the server."""
        self._cursors_of, self._cursors = None, []
        with self._cut_lock:
            entry = self._live.pop(id(resource), None)
        self._close(resource, entry[1] if entry is not None and entry[0] is resource else None)

    def abort(self, resource: Connection | None) -> None:
        """Make a call blocked on ``resource`` return now (from another thread).

        PostgreSQL (and any driver exposing ``fileno()``): the connection's socket is shut
        down (through a duplicate taken when it was opened), so a blocked read returns and
        the call raises ``OperationalError`` ("server closed the connection
        unexpectedly"). SQLite: ``interrupt()``, and any later statement of the aborted
        incarnation is refused. ``resource=None`` aborts a pending ``connect()``: its
        ``on_connect`` statements, or, if the DBAPI connect itself is still in progress,
        the connection as soon as it opens (the DBAPI connect is bounded by
        ``connect_timeout``). Non-blocking, idempotent, never raises.
        """
        with self._cut_lock:
            if resource is None:
                cuts = list(self._connecting)
            else:
                entry = self._live.get(id(resource))
                cuts = [entry[1]] if entry is not None and entry[0] is resource else []
        if not cuts:
            log.debug("abort of %s: no open connection of this actor to tear down", self.url)
        for cut in cuts:
            cut.abort()

    def is_fault(self, exc: BaseException) -> bool:
        """A lost connection is a fault; every other error is the caller's."""
        if isinstance(exc, ConnectionLost):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        return not self._healthy()

    def counts_as_failure(self, exc: BaseException) -> bool:
        """Faults, plus errors saying the server cannot be reached."""
        return self.is_fault(exc) or _unreachable(exc)

    def health_check(self) -> None:
        """``SELECT 1`` on the connection; a disconnect surfaces as a fault. During a
        lease it runs inside the lease's transaction (not at all once that is doomed:
        PostgreSQL would refuse it)."""
        if self._leased and self._doomed is not None:
            if not self._healthy():
                raise ConnectionLost(f"the connection to {self.url} was lost")
            return
        self._run(lambda conn: conn.exec_driver_sql("SELECT 1").close(), explicit=False)

    # -- leases: one transaction per block ----------------------------------------------

    def begin_lease(self) -> None:
        """Begin the lease's transaction: ``BEGIN`` (``BEGIN IMMEDIATE`` on SQLite)."""
        if not self._healthy():
            raise ConnectionLost(
                f"the connection to {self.url} was lost before the lease; reconnecting"
            )
        conn: Connection = self.resource
        if conn.in_transaction():  # cannot happen: every call commits or rolls back
            self._rollback(conn)
        self._explicit = True
        try:
            conn.begin()
        except BaseException:
            self._rollback(conn)
            raise
        finally:
            self._explicit = False
        self._leased, self._doomed = True, None

    def end_lease(self, ok: bool) -> None:
        """Commit the lease's transaction if ``ok`` and no call in it failed, else roll
        it back. After a failed call, a normal exit (``ok``) raises
        ``PendingRollbackError`` naming that call: the block was not committed."""
        doomed, self._leased, self._doomed = self._doomed, False, None
        conn: Connection = self.resource
        if not self._healthy():
            raise ConnectionLost(f"the connection to {self.url} was lost during the lease; "
                                 "its transaction was not committed")
        if not ok or doomed is not None:
            self._rollback(conn)
            if ok and doomed is not None:
                raise PendingRollbackError(
                    "the lease's transaction was rolled back, not committed: a call in "
                    f"it failed with {redact(repr(doomed))}"
                ) from doomed
            return
        try:
            conn.commit()
        except BaseException:
            self._rollback(conn)
            raise

    # -- calls ----------------------------------------------------------------------------

    def execute(
        self, sql: Statement, params: Params | Sequence[Params] | None = None
    ) -> list[dict[str, Any]] | int:
        """Run one statement, committed on its own (autocommit).

        ``sql`` is SQL text with ``:name`` parameters, or a SQLAlchemy Core statement.
        Returns the rows as a list of dicts (column name -> value) when the statement
        returns rows (``SELECT``, ``... RETURNING``), else the affected row count
        (-1 when the driver does not know it). A list of parameter mappings runs like
        :meth:`executemany`.
        """
        if params is not None and not isinstance(params, Mapping):
            return self.executemany(sql, params)
        statement = self._statement(sql)
        return self._run(lambda conn: _materialize(conn.execute(statement, params)), explicit=False)

    def executemany(
        self, sql: Statement, seq_of_params: Sequence[Params]
    ) -> list[dict[str, Any]] | int:
        """Run one statement once per parameter mapping, all in one transaction.

        Returns the total affected row count (or the rows, for ``RETURNING``). Atomic:
        if one set of parameters fails, none is applied. An empty sequence does nothing.
        """
        batch = [dict(p) for p in seq_of_params]
        if not batch:
            return 0
        statement = self._statement(sql)
        return self._run(lambda conn: _materialize(conn.execute(statement, batch)), explicit=True)

    def scalar(self, sql: Statement, params: Params | None = None) -> Any:
        """The first column of the first row (None if no row), committed on its own."""
        statement = self._statement(sql)
        return self._run(lambda conn: conn.execute(statement, params).scalar(), explicit=False)

    def transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(conn, *args, **kwargs)`` in one database transaction.

        ``conn`` is the actor's SQLAlchemy ``Connection``; the first statement sends
        ``BEGIN``. Committed when ``fn`` returns, rolled back when it raises (the error
        then goes to the caller, or is a fault if the connection was lost: a cut
        transaction is never retried). ``fn`` must return plain data, not a live result.
        """
        return self._run(lambda conn: fn(conn, *args, **kwargs), explicit=True)

    def session(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(session, *args, **kwargs)`` with a fresh ORM ``Session`` on the
        actor's connection, in one transaction: committed when ``fn`` returns, rolled
        back when it raises.

        ``expire_on_commit`` is off, so attributes loaded inside ``fn`` stay readable on
        returned objects; still, return plain data (objects are detached and belong to
        no thread).
        """

        def work(conn: Connection) -> T:
            with Session(bind=conn, expire_on_commit=False) as orm:
                result = fn(orm, *args, **kwargs)
                orm.commit()
                return result

        return self._run(work, explicit=True)

    def batch_stats(self) -> dict[str, int]:
        """Automatic pipelining so far (this actor; survives restarts): ``batches`` sent
        as one pipeline, ``calls`` they carried, ``largest`` batch, and ``replayed``:
        batches rolled back because one statement failed, then run one by one."""
        return dict(self._batch_stats)

    # -- automatic pipelining (PostgreSQL, psycopg 3) -------------------------------------

    def batch_ready(self) -> bool:
        """Pipeline the queued calls only on an idle PostgreSQL connection that looks
        alive. A backend that was terminated while idle has said so on the socket (it is
        readable with nothing asked): the next call then runs alone and faults by itself,
        and the calls behind it are served by the next connection, as without
        pipelining. Elsewhere (SQLite, ``pipeline = false``, a lease) calls never share
        a batch: run one by one in a batch, a fault in one would fail them all."""
        if not self._pipelines or self._leased or not self._healthy():
            return False
        raw: Any = self.resource.connection.driver_connection  # a psycopg.Connection
        if raw.closed or raw.broken:
            return False
        try:
            readable, _, _ = select.select([raw.pgconn.socket], [], [], 0)
        except Exception:  # no socket any more (psycopg raises OperationalError)
            return False
        return not readable

    def run_batch(self, calls: Sequence[BatchItem]) -> list[Outcome]:
        """Queued ``execute``/``scalar`` calls of different callers in one round trip.

        Consecutive calls that can be pipelined (a single DML statement as SQL text, one
        parameter mapping) go out as one psycopg pipeline inside one transaction, each
        caller getting its own rows or value once the transaction has committed. If one
        statement fails, the whole transaction is rolled back (nothing of it is applied)
        and the calls run again one by one, each committed on its own: every caller gets
        exactly the outcome it would have had alone, in queue order. A lost connection
        fails every call of the pipeline with an unknown outcome (a fault). Anything
        else (Core statements, DDL, ``executemany``, calls in a lease, SQLite) runs as
        itself, in order.
        """
        if not self._pipelines or self._leased:
            return super().run_batch(calls)
        prepared = [self._pipelinable(*call) for call in calls]
        outcomes: list[Outcome] = []
        i = 0
        while i < len(calls):
            j = i
            while j < len(calls) and prepared[j] is not None:
                j += 1
            if j - i >= 2:
                outcomes += self._pipeline(calls[i:j], [p for p in prepared[i:j] if p])
                i = j
            else:
                outcomes += super().run_batch(calls[i:i + 1])
                i += 1
        return outcomes

    def _pipelinable(self, method: str, args: tuple[Any, ...],
                     kwargs: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
        """``(sql, parameters)`` as psycopg takes them, or None: the call runs alone."""
        sql = kwargs.get("sql", args[0] if args else None)
        params = kwargs.get("params", args[1] if len(args) > 1 else None)
        if not isinstance(sql, str) or not (params is None or isinstance(params, Mapping)):
            return None
        if len(args) + len(kwargs) > 2:
            return None  # a wrong call: let it fail as itself
        try:
            compiled = self._compiled[sql]
        except KeyError:
            compiled = None  # DDL, SET, several statements...: never pipelined
            if _PIPELINABLE.match(sql) and ";" not in sql.strip().rstrip(";"):
                compiled = text(sql).compile(dialect=self.engine.dialect)
                if compiled.escaped_bind_names:  # names psycopg cannot take as they are
                    compiled = None
            if len(self._compiled) >= _TEXT_CACHE_SIZE:
                self._compiled.clear()
            self._compiled[sql] = compiled
        if compiled is None:
            return None
        try:
            values = compiled.construct_params(params or {})
        except Exception:
            return None  # a missing parameter: the call raises it alone
        return compiled.string, values or {}

    def _pipeline(self, calls: Sequence[BatchItem],
                  prepared: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Outcome]:
        if not self._healthy():
            raise ConnectionLost(f"the connection to {self.url} was lost before this "
                                 "pipeline; reconnecting")
        conn: Connection = self.resource
        raw: Any = conn.connection.driver_connection  # a psycopg.Connection
        # Everything is queued, then one Sync: one round trip for the whole batch.
        # BEGIN/COMMIT are statements of the pipeline (psycopg's transaction() and
        # executemany() would each wait for results: a round trip each). A statement
        # that fails makes the server skip the rest, COMMIT included, up to the Sync.
        spare = self._spare_cursors(raw, len(prepared) + 1)
        control, cursors = spare[0], spare[1:len(prepared) + 1]
        failed: BaseException | None = None
        try:
            with raw.pipeline():
                # An error is caught inside the pipeline block, so that psycopg raises
                # the pipeline's own outcome at its exit instead of logging a warning.
                try:
                    control.execute("BEGIN")
                    for cursor, (sql, values) in zip(cursors, prepared, strict=True):
                        # prepare=False: a statement psycopg prepares in a pipeline that
                        # is then skipped stays in its cache as prepared, and every later
                        # use of it fails ("prepared statement _pg3_0 does not exist").
                        cursor.execute(sql, values, prepare=False)
                except Exception as exc:
                    failed = exc
                    # Not sent whole: nothing of it may apply. (If even this cannot be
                    # queued, BEGIN was explicit: the Sync commits nothing, and the
                    # transaction is rolled back below.)
                    with contextlib.suppress(Exception):
                        control.execute("ROLLBACK")
                else:
                    control.execute("COMMIT")
        except Exception as exc:
            failed = failed or exc
        if failed is not None:
            if raw.closed or raw.broken or not self._healthy():
                if not conn.invalidated:
                    conn.invalidate(failed)
                raise ConnectionLost(
                    f"the connection to {self.url} was lost during a pipeline of "
                    f"{len(calls)} statements ({describe(failed)}); their outcome is unknown"
                ) from failed
            if raw.info.transaction_status != _IDLE:  # our BEGIN, failed: end it here
                try:
                    raw.execute("ROLLBACK")
                except Exception as exc:
                    if not conn.invalidated:
                        conn.invalidate(exc)
                    raise ConnectionLost(f"the connection to {self.url} cannot roll back "
                                         f"a failed pipeline: {describe(exc)}") from exc
            # The transaction was rolled back as a whole: none of it is applied. Run
            # the calls one by one, each with its own outcome, as if never batched.
            self._batch_stats["replayed"] += 1
            return super().run_batch(calls)
        outcomes: list[Outcome] = []
        for (method, _, _), cursor in zip(calls, cursors, strict=True):
            try:
                outcomes.append((True, _cursor_value(cursor, method)))
            except Exception as exc:
                outcomes.append((False, exc))
        stats = self._batch_stats
        stats["batches"] += 1
        stats["calls"] += len(calls)
        stats["largest"] = max(stats["largest"], len(calls))
        return outcomes

    def _spare_cursors(self, raw: Any, count: int) -> list[Any]:
        """At least ``count`` cursors of ``raw``, kept from one pipeline to the next (a
        psycopg cursor costs more to make than a statement to queue; each pipeline reads
        its results before the next one reuses them). A new connection gets new ones."""
        if self._cursors_of is not raw:
            self._cursors_of, self._cursors = raw, []
        cursors = self._cursors
        while len(cursors) < count:
            cursors.append(raw.cursor())
        return cursors

    # -- internals ------------------------------------------------------------------------

    def _on_begin(self, conn: Connection) -> None:
        """SQLAlchemy began a transaction on an autocommit connection: make it real
        (the pysqlite recipe of the SQLAlchemy docs, used for every dialect)."""
        if self._explicit:
            conn.exec_driver_sql(self._begin_sql)

    def _on_dbapi_connect(self, dbapi_connection: Any, record: Any) -> None:
        self._connects += 1
        cut: Cut | None = getattr(self._local, "cut", None)
        if cut is None:
            return  # opened outside connect() (e.g. engine.connect() by hand): not ours
        raw = getattr(record, "driver_connection", None) or dbapi_connection
        target = _abort_target(raw)
        if target is None:
            log.debug(
                "abort() cannot tear down a %s connection (no fileno() or interrupt()); "
                "its driver's own timeouts are the only bound",
                type(raw).__name__,
            )
            return
        record.info[_CUT_KEY] = cut
        cut.add(dbapi_connection, *target)

    def _on_dbapi_close(self, dbapi_connection: Any, record: Any) -> None:
        """The pool is about to close a DBAPI connection: never abort it afterwards."""
        cut = None if record is None else record.info.pop(_CUT_KEY, None)
        if isinstance(cut, Cut):
            cut.forget(dbapi_connection)

    def _refuse_if_aborted(self, conn: Connection, *args: Any) -> None:
        cut: Cut | None = getattr(self._local, "cut", None)
        if cut is not None and cut.aborted:
            raise ConnectionLost(f"the connection to {self.url} was aborted")

    def _close(self, conn: Connection, cut: Cut | None) -> None:
        """Close ``conn``: invalidated first if aborted (no rollback on a dead socket)."""
        try:
            if cut is not None and cut.aborted and not conn.invalidated:
                conn.invalidate()
            conn.close()
        finally:
            if cut is not None:
                cut.close()

    def _aborted(self, conn: Connection) -> bool:
        """Whether ``conn``'s incarnation, or the one running on this thread, was aborted."""
        current: Cut | None = getattr(self._local, "cut", None)
        entry = self._live.get(id(conn))
        return (current is not None and current.aborted) or (
            entry is not None and entry[0] is conn and entry[1].aborted
        )

    def _healthy(self) -> bool:
        conn: Connection | None = self.resource
        return (
            conn is not None
            and not conn.closed
            and not conn.invalidated
            and self._connects == self._expected_connects
            and not self._aborted(conn)
        )

    def _statement(self, sql: Statement) -> Executable:
        if not isinstance(sql, str):
            return sql
        clause = self._texts.get(sql)
        if clause is None:
            if len(self._texts) >= _TEXT_CACHE_SIZE:
                self._texts.clear()
            clause = self._texts[sql] = text(sql)
        return clause

    def _run(self, work: Callable[[Connection], T], *, explicit: bool) -> T:
        """One unit of work: commit on return, roll back on any error.

        The rollback on error is what keeps the connection usable for the next call
        (otherwise SQLAlchemy raises ``PendingRollbackError`` until someone rolls back).
        """
        if not self._healthy():
            raise ConnectionLost(
                f"the connection to {self.url} was lost before this call; reconnecting"
            )
        conn: Connection = self.resource
        if self._leased:
            return self._run_leased(conn, work)
        self._explicit = explicit
        try:
            result = work(conn)
            conn.commit()
        except BaseException:
            self._rollback(conn)
            raise
        finally:
            self._explicit = False
        if not self._healthy():
            # fn swallowed a disconnect, invalidated the connection, or reconnected by
            # itself (on_connect did not run and whatever came before the cut is lost):
            # this call faults, not the next caller's.
            raise ConnectionLost(
                f"the connection to {self.url} was lost or replaced during the call; "
                f"its outcome is unknown"
            )
        return result

    def _run_leased(self, conn: Connection, work: Callable[[Connection], T]) -> T:
        """One call inside a lease's transaction: no commit; an error dooms it."""
        if self._doomed is not None:
            raise PendingRollbackError(
                "the lease's transaction will be rolled back: an earlier call in it failed "
                f"with {redact(repr(self._doomed))}; no later call of the lease runs"
            ) from self._doomed
        try:
            result = work(conn)
        except BaseException as exc:
            self._doomed = exc
            raise
        if not self._healthy():
            raise ConnectionLost(
                f"the connection to {self.url} was lost or replaced during the call; "
                "the lease's transaction is lost"
            )
        return result

    def _rollback(self, conn: Connection) -> None:
        try:
            conn.rollback()
        except Exception as exc:  # the connection is gone: is_fault will see it
            log.debug("rollback on %s failed: %s", self.url, redact(repr(exc)))


_IDLE = 0
"""``psycopg.pq.TransactionStatus.IDLE`` (not imported: psycopg is optional)."""

_PIPELINABLE = re.compile(
    r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*(?:SELECT|INSERT|UPDATE|DELETE|WITH|VALUES|TABLE)\b",
    re.IGNORECASE | re.DOTALL,
)
"""A statement that may share a pipeline's transaction: DML and queries. DDL, SET,
VACUUM, LISTEN and the like always run alone, committed on their own."""


def _cursor_value(cursor: Any, method: str) -> Any:
    """What ``execute``/``scalar`` return, from a psycopg cursor of a pipeline: the same
    plain data as the SQLAlchemy path (``_materialize``, ``Result.scalar()``)."""
    if cursor.description is None:
        if method == "scalar":
            raise ResourceClosedError("This result object does not return rows. It has "
                                      "been closed automatically.")
        return cursor.rowcount
    if method == "scalar":
        row = cursor.fetchone()
        return None if row is None else row[0]
    names = [column.name for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _materialize(result: CursorResult[Any]) -> list[dict[str, Any]] | int:
    """Rows as plain dicts, or the row count: nothing live leaves the actor thread."""
    if result.returns_rows:
        keys = list(result.keys())
        return [dict(zip(keys, row, strict=True)) for row in result]
    count = result.rowcount
    result.close()
    return count
