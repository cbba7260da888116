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
``OperationalError`` while connecting             failed start: retried with backoff, counts
                                                  toward intensity and the breaker
``IntegrityError``, ``ProgrammingError``,         **caller**: after a rollback, so the
serialization failure, deadlock, lock or          connection is clean for the next call; the
statement timeout, SQLite "no such table" or      actor keeps running
"database is locked", any error from ``fn``
================================================  ===========================================

``counts_as_failure`` (the circuit breaker) adds to the faults the ``OperationalError`` s
that say the server cannot be reached (SQLSTATE class 08, admin/crash shutdown, too many
connections, "connection refused", SQLite "unable to open database file").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, CursorResult, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import TextClause

from sessions._redact import redact
from sessions._registry import SessionManager
from sessions.actors._base import ResourceActor

__all__ = ["ConnectionLost", "DatabaseActor", "DatabaseSessionManager"]

log = logging.getLogger("sessions.database")

T = TypeVar("T")

DEFAULT_URL = "sqlite:///sessions.db"
"""The embedded default: a SQLite file in the working directory."""

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
#: Compiled ``text()`` clauses kept per actor (SQLAlchemy caches by statement too;
#: this only saves re-parsing the string on the hot path).
_TEXT_CACHE_SIZE = 512


class ConnectionLost(Exception):
    """The actor's connection was found invalidated, closed or replaced: a fault."""


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


class DatabaseActor(ResourceActor):
    """A relational database through SQLAlchemy (SQLite, PostgreSQL via psycopg, ...).

    Callable through a handle: ``execute``, ``executemany``, ``scalar``,
    ``transaction(fn)``, ``session(fn)``.
    """

    kind: ClassVar[str] = "database"

    class Options(BaseModel):
        """Config keys of the ``database`` kind (besides the supervision keys)."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        url: str = Field(
            DEFAULT_URL,
            description="SQLAlchemy URL, e.g. 'sqlite:///plant.db', 'sqlite:///:memory:' or "
            "'postgresql+psycopg://user:pass@host/db'.",
        )
        echo: bool = Field(False, description="Log every statement (SQLAlchemy's echo).")
        on_connect: list[str] = Field(
            default_factory=list,
            description="SQL statements run, in order, on every new connection before any "
            'call (e.g. "SET search_path TO plant", "PRAGMA foreign_keys=ON").',
        )
        connect_args: dict[str, Any] = Field(
            default_factory=dict,
            description="Keyword arguments for the DBAPI connect() (e.g. connect_timeout "
            "for psycopg, timeout (the busy timeout, default 5 s) for SQLite).",
        )

    def __init__(
        self,
        url: str = DEFAULT_URL,
        echo: bool = False,
        on_connect: Sequence[str] = (),
        connect_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.on_connect = tuple(on_connect)
        try:
            parsed = make_url(url)
        except ArgumentError as err:
            raise ValueError(f"url {redact(url)!r} is not a SQLAlchemy URL: {err}") from None
        self.url = parsed.render_as_string(hide_password=True)
        """The URL with its password masked (for messages)."""
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        # SQLite: take the write lock at BEGIN, so two pool members doing read-then-write
        # wait on the busy timeout instead of failing at once on the lock upgrade.
        self._begin_sql = "BEGIN IMMEDIATE" if self.is_sqlite else "BEGIN"
        try:
            # NullPool: the engine's only connection is the one connect() keeps open.
            # AUTOCOMMIT: a lone statement needs one round trip; transactions BEGIN
            # explicitly in _on_begin.
            self.engine: Engine = create_engine(
                parsed,
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                echo=echo,
                connect_args=dict(connect_args or {}),
            )
        except ImportError as err:
            extra = "postgres" if parsed.get_backend_name() == "postgresql" else "database"
            raise ValueError(
                f"the driver for {parsed.drivername!r} is not installed ({err}); install it "
                f"with: pip install 'applib-sessions[{extra}]' (or the driver itself)"
            ) from None
        except (ArgumentError, TypeError) as err:
            raise ValueError(f"cannot use url {self.url!r}: {redact(err)}") from None
        self._explicit = False
        """True while a call wants a real transaction: autobegin then sends BEGIN."""
        self._connects = 0
        """DBAPI connections opened by the engine (a change mid-life = silent reconnect)."""
        self._expected_connects = 0
        self._texts: dict[str, TextClause] = {}
        event.listen(self.engine, "begin", self._on_begin)
        event.listen(self.engine, "connect", self._on_dbapi_connect)

    @classmethod
    def max_pool_size(cls, options: Mapping[str, Any]) -> tuple[int, str] | None:
        """An in-memory SQLite database exists once per connection: one actor only."""
        if _is_memory_sqlite(str(options.get("url", DEFAULT_URL))):
            return 1, (
                "an in-memory SQLite database exists once per connection, so a pool "
                "would be several unrelated databases"
            )
        return None

    # -- lifecycle (actor thread) -------------------------------------------------------

    def connect(self) -> Connection:
        """Open the one connection and run the ``on_connect`` statements on it."""
        conn = self.engine.connect()
        try:
            for statement in self.on_connect:
                conn.exec_driver_sql(statement)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        self._expected_connects = self._connects
        return conn

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
        """``SELECT 1`` on the connection; a disconnect surfaces as a fault."""
        self._run(lambda conn: conn.exec_driver_sql("SELECT 1").close(), explicit=False)

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

    # -- internals ------------------------------------------------------------------------

    def _on_begin(self, conn: Connection) -> None:
        """SQLAlchemy began a transaction on an autocommit connection: make it real
        (the pysqlite recipe of the SQLAlchemy docs, used for every dialect)."""
        if self._explicit:
            conn.exec_driver_sql(self._begin_sql)

    def _on_dbapi_connect(self, dbapi_connection: Any, record: Any) -> None:
        self._connects += 1

    def _healthy(self) -> bool:
        conn: Connection | None = self.resource
        return (
            conn is not None
            and not conn.closed
            and not conn.invalidated
            and self._connects == self._expected_connects
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

    def _rollback(self, conn: Connection) -> None:
        try:
            conn.rollback()
        except Exception as exc:  # the connection is gone: is_fault will see it
            log.debug("rollback on %s failed: %s", self.url, redact(repr(exc)))


def _materialize(result: CursorResult[Any]) -> list[dict[str, Any]] | int:
    """Rows as plain dicts, or the row count: nothing live leaves the actor thread."""
    if result.returns_rows:
        keys = list(result.keys())
        return [dict(zip(keys, row, strict=True)) for row in result]
    count = result.rowcount
    result.close()
    return count


class DatabaseSessionManager(SessionManager):
    """The seed's database session manager, now supervised.

    ``with DatabaseSessionManager(url=...) as db`` (or ``async with``) yields the handle
    of a one-resource system of kind ``database``; ``**options`` are any other config
    keys of the kind and supervision keys (``pool_size``, ``call_timeout``, ...).
    """

    kind: ClassVar[str] = "database"

    def __init__(self, url: str = DEFAULT_URL, **options: Any) -> None:
        super().__init__(url=url, **options)
