"""The ``database`` kind against real SQLite files/memory and real PostgreSQL servers.

Faults are real: backends terminated with ``pg_terminate_backend``, servers stopped and
started again. Every acknowledged write is read back after recovery.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import sessions
from sessions import CallTimeout, ConfigError, ResourceFault, ResourceUnavailable
from sessions.actors.database import ConnectionLost, DatabaseActor, synchronous_url
from sessions.database import DatabaseSessionManager
from sessions.messages import ChildStarted, CircuitChanged
from tests.servers import PostgresServer
from tests.support import FakeClock, Recorder, wait_until

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FAST_BACKOFF = {"initial": 0.01, "max": 0.1, "multiplier": 2.0, "jitter": 0.0}


def db_config(url: str, *, max_restarts: int = 3, **spec: Any) -> dict[str, Any]:
    """A one-resource config named ``db`` with fast backoff."""
    return {
        "supervisor": {"max_restarts": max_restarts, "period": 5.0, "backoff": FAST_BACKOFF},
        "resources": {"db": {"kind": "database", "url": url, **spec}},
    }


def sqlite_url(tmp_path: Path, name: str = "test.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


# -------------------------------------------------------------------------- SQLite


def test_sqlite_crud_returns_plain_materialized_data(tmp_path: Path) -> None:
    with sessions.start(db_config(sqlite_url(tmp_path))) as system:
        db = system.get("db")
        assert db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)").result() == -1
        assert db.execute("INSERT INTO t (name) VALUES (:n)", {"n": "a"}).result() == 1
        assert (
            db.executemany("INSERT INTO t (name) VALUES (:n)", [{"n": "b"}, {"n": "c"}]).result()
            == 2
        )
        assert db.execute("INSERT INTO t (name) VALUES (:n)", [{"n": "d"}]).result() == 1
        rows = db.execute("SELECT id, name FROM t ORDER BY id").result()
        assert rows == [
            {"id": 1, "name": "a"},
            {"id": 2, "name": "b"},
            {"id": 3, "name": "c"},
            {"id": 4, "name": "d"},
        ]
        assert type(rows) is list and all(type(r) is dict for r in rows)
        assert db.execute("UPDATE t SET name = upper(name) WHERE id < 3").result() == 2
        assert db.execute("DELETE FROM t WHERE id = :id", {"id": 4}).result() == 1
        assert db.scalar("SELECT count(*) FROM t").result() == 3
        assert db.scalar("SELECT name FROM t WHERE id = :id", {"id": 1}).result() == "A"
        assert db.scalar("SELECT name FROM t WHERE id = 99").result() is None
        assert db.executemany("INSERT INTO t (name) VALUES (:n)", []).result() == 0
        # SQLAlchemy Core statements work too.
        table = Table(
            "t", MetaData(), Column("id", Integer, primary_key=True), Column("name", String)
        )
        assert db.execute(insert(table).values(name="core")).result() == 1
        core_rows = db.execute(select(table.c.name).where(table.c.name == "core")).result()
        assert core_rows == [{"name": "core"}]
        assert db.restarts == 0


def test_sqlite_transaction_commits_on_return_and_rolls_back_on_error(tmp_path: Path) -> None:
    with sessions.start(db_config(sqlite_url(tmp_path))) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)").result()

        def move(conn: Connection, amount: int) -> int:
            conn.exec_driver_sql("INSERT INTO t (v) VALUES (1)")
            conn.exec_driver_sql(f"INSERT INTO t (v) VALUES ({amount})")
            return int(conn.exec_driver_sql("SELECT sum(v) FROM t").scalar_one())

        assert db.transaction(move, 10).result() == 11

        def half(conn: Connection) -> None:
            conn.exec_driver_sql("INSERT INTO t (v) VALUES (100)")
            raise ValueError("changed my mind")

        with pytest.raises(ValueError, match="changed my mind"):
            db.transaction(half).result()
        assert db.scalar("SELECT sum(v) FROM t").result() == 11

        def commits_midway(conn: Connection) -> None:
            conn.exec_driver_sql("INSERT INTO t (v) VALUES (1000)")
            conn.commit()  # fn may commit itself; what follows is a new transaction
            conn.exec_driver_sql("INSERT INTO t (v) VALUES (5000)")
            raise ValueError("second part fails")

        with pytest.raises(ValueError):
            db.transaction(commits_midway).result()
        assert db.scalar("SELECT sum(v) FROM t").result() == 1011
        assert db.restarts == 0


def test_sqlite_session_runs_an_orm_unit_of_work(tmp_path: Path) -> None:
    with sessions.start(db_config(sqlite_url(tmp_path))) as system:
        db = system.get("db")
        db.transaction(Base.metadata.create_all).result()

        def add(orm: Session, *names: str) -> list[int]:
            items = [Item(name=n) for n in names]
            orm.add_all(items)
            orm.flush()
            return [i.id for i in items]

        assert db.session(add, "bolt", "nut").result() == [1, 2]

        def add_then_fail(orm: Session) -> None:
            orm.add(Item(name="washer"))
            orm.flush()
            raise RuntimeError("abort")

        with pytest.raises(RuntimeError):
            db.session(add_then_fail).result()
        with pytest.raises(IntegrityError):  # duplicate name: rolled back as a whole
            db.session(add, "screw", "bolt").result()

        def names(orm: Session) -> list[str]:
            return list(orm.scalars(select(Item.name).order_by(Item.id)))

        assert db.session(names).result() == ["bolt", "nut"]
        assert db.restarts == 0


def test_sqlite_caller_errors_go_to_the_caller_and_the_actor_keeps_running(
    tmp_path: Path,
) -> None:
    with sessions.start(db_config(sqlite_url(tmp_path))) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)").result()
        db.execute("INSERT INTO t (id) VALUES (1)").result()
        with pytest.raises(OperationalError, match="no such table"):
            db.execute("SELECT * FROM missing").result()
        with pytest.raises(IntegrityError):
            db.execute("INSERT INTO t (id) VALUES (1)").result()
        with pytest.raises(IntegrityError):  # atomic: 2 and 3 are not kept either
            db.executemany(
                "INSERT INTO t (id) VALUES (:id)", [{"id": 2}, {"id": 3}, {"id": 1}]
            ).result()
        with pytest.raises(OperationalError, match="syntax error"):
            db.execute("SELEC 1").result()
        with pytest.raises(TypeError):
            db.transaction(lambda conn, x: x, 1, 2).result()
        assert db.execute("SELECT id FROM t").result() == [{"id": 1}]
        assert db.restarts == 0 and db.state == "running"


def test_a_call_that_invalidates_the_connection_gets_the_fault_not_the_next_caller(
    tmp_path: Path,
) -> None:
    """The connection found broken after a call faults that call; the next caller's
    call runs on the new connection instead of being failed for it."""
    with sessions.start(db_config(sqlite_url(tmp_path))) as system:
        db = system.get("db")

        def invalidate(conn: Connection) -> int:
            conn.invalidate()
            return 1

        breaker = db.transaction(invalidate)
        innocent = db.scalar("SELECT 2")
        with pytest.raises(ResourceFault):
            breaker.result()
        assert innocent.result() == 2


def test_sqlite_memory_pool_is_lowered_to_one(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sessions"):
        cfg = db_config("sqlite:///:memory:", pool_size=3)
        with sessions.start(cfg) as system:
            assert system.status()["children"][0]["type"] == "resource"
            db = system.get("db")
            db.execute("CREATE TABLE t (x INTEGER)").result()
            db.execute("INSERT INTO t VALUES (1)").result()
            assert db.scalar("SELECT count(*) FROM t").result() == 1  # same database
    assert "pool_size = 3 lowered to 1" in caplog.text
    assert "in-memory SQLite" in caplog.text
    assert DatabaseActor.max_pool_size({"url": "sqlite://"}) is not None
    assert DatabaseActor.max_pool_size({"url": "sqlite:///file.db"}) is None
    assert DatabaseActor.max_pool_size({"url": "postgresql+psycopg://h/db"}) is None


def test_sqlite_file_pool_serves_concurrent_writers(tmp_path: Path) -> None:
    cfg = db_config(sqlite_url(tmp_path), pool_size=3, call_timeout=30.0)
    with sessions.start(cfg) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (writer INTEGER, seq INTEGER)").result()

        def writer(w: int) -> list[Any]:
            return [
                db.execute("INSERT INTO t VALUES (:w, :s)", {"w": w, "s": s}).result()
                for s in range(20)
            ]

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            results = list(pool.map(writer, range(6)))
        assert all(r == [1] * 20 for r in results)
        assert db.scalar("SELECT count(*) FROM t").result() == 120
        assert db.restarts == 0


def test_on_connect_runs_on_each_new_connection(tmp_path: Path) -> None:
    cfg = db_config(sqlite_url(tmp_path), on_connect=["PRAGMA foreign_keys = ON"])
    with sessions.start(cfg) as system:
        db = system.get("db")
        assert db.scalar("PRAGMA foreign_keys").result() == 1


def test_what_counts_toward_the_breaker() -> None:
    actor = DatabaseActor(url="sqlite://")
    actor.resource = actor.connect()
    try:
        refused = OperationalError("SELECT 1", {}, Exception("connection refused"))
        locked = OperationalError("SELECT 1", {}, Exception("database is locked"))
        lost = OperationalError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
        assert not actor.is_fault(refused) and actor.counts_as_failure(refused)
        assert not actor.is_fault(locked) and not actor.counts_as_failure(locked)
        assert actor.is_fault(lost) and actor.counts_as_failure(lost)
        assert not actor.counts_as_failure(IntegrityError("INSERT", {}, Exception("dup")))
    finally:
        actor.disconnect(actor.resource)


def test_bad_url_or_missing_driver_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        sessions.start(db_config("postgresql+nosuchdriver://u:s3cr3t@h/db"))
    assert "resources.db" in str(info.value)
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL"):
        sessions.start(db_config("::nonsense::"))
    with pytest.raises(ConfigError, match=r"resources\.db\.pool_sz"):
        sessions.start(db_config("sqlite://", pool_sz=2))
    if importlib.util.find_spec("psycopg2") is None:  # the hint names what to install
        with pytest.raises(ConfigError) as info:
            sessions.start(db_config("postgresql+psycopg2://h/db"))
        assert "install it with: pip install psycopg2-binary, or name psycopg 3 in the url " \
            "(postgresql+psycopg://...) and pip install 'applib-sessions[postgres]'" in str(
                info.value)



def test_a_libpq_parameter_with_a_sqlite_url_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite3.connect() would raise TypeError("'connect_timeout' is an invalid keyword
    argument") at every connect; a config whose url falls back to SQLite hears at
    check time which key, and where a PostgreSQL-only setting goes instead."""
    monkeypatch.delenv("SESSIONS_TEST_DB_URL", raising=False)
    cfg = db_config(f"${{SESSIONS_TEST_DB_URL:-{sqlite_url(tmp_path)}}}",
                    connect_args={"connect_timeout": 5, "timeout": 2.0})
    with pytest.raises(ConfigError) as info:
        sessions.start(cfg)
    assert info.value.errors == [(
        "resources.db.connect_args",
        f"'connect_timeout': not an argument of sqlite3.connect(), which the SQLite url "
        f"{sqlite_url(tmp_path)!r} uses (it takes timeout, detect_types, isolation_level, "
        "check_same_thread, factory, cached_statements, uri, autocommit); connect_timeout "
        "is a libpq parameter (PostgreSQL): with a url that may be SQLite or PostgreSQL, "
        "give it in the PostgreSQL url's query string "
        "(postgresql+psycopg://host/db?connect_timeout=5)",
    )]
    with pytest.raises(ConfigError, match=r"'cache_size': not an argument of sqlite3"):
        sessions.start(db_config(sqlite_url(tmp_path), connect_args={"cache_size": 1}))
    with sessions.start(db_config(sqlite_url(tmp_path), connect_args={"timeout": 2.0})) as s:
        assert s.get("db").scalar("SELECT 1").result(10) == 1
    # the same keys with a PostgreSQL url are libpq's business
    sessions.check_childspecs({"db": {"kind": "database", "url": "postgresql+psycopg://h/db",
                                      "connect_args": {"connect_timeout": 5}}})


def test_session_manager_with_and_async_with(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    with DatabaseSessionManager(url=url) as db:
        assert db.kind == "database"
        db.execute("CREATE TABLE t (x INTEGER)").result()
        db.execute("INSERT INTO t VALUES (1)").result()

    async def main() -> Any:
        async with DatabaseSessionManager(url=url, call_timeout=10.0) as db:
            await db.execute("INSERT INTO t VALUES (2)")
            return await db.execute("SELECT x FROM t ORDER BY x")

    assert asyncio.run(main()) == [{"x": 1}, {"x": 2}]
    with sessions.SessionRegistry(db_url=url) as registry:
        assert registry.db.scalar("SELECT sum(x) FROM t").result() == 3


# ---------------------------------------------------------------------- PostgreSQL



def test_pg_an_async_driver_url_is_served_by_psycopg_and_says_so(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The seed's own url, postgresql+asyncpg:// (for SQLAlchemy's asyncio engine): the
    kind is synchronous (one connection per actor thread), so the same database is served
    by psycopg, as an INFO line says once; no asyncpg is needed (it is not installed
    here), and asyncpg's ssl= becomes libpq's sslmode=."""
    url = postgres_url.replace("postgresql+psycopg://", "postgresql+asyncpg://", 1)
    assert url != postgres_url
    caplog.set_level(logging.INFO, logger="sessions.database")
    with sessions.start(db_config(f"{url}?ssl=disable", pool_size=2)) as system:
        db = system.get("db")
        assert db.scalar("SELECT current_setting('ssl')").result(10) in ("on", "off")
        assert db.scalar("SELECT 1").result(10) == 1
    notes = [r.getMessage() for r in caplog.records if "names the async driver" in r.getMessage()]
    assert notes == [
        f"url {url}?ssl=disable names the async driver postgresql+asyncpg: the database kind "
        "is synchronous (one connection per actor, on its own thread; asyncio code awaits "
        "the handle's futures), so it connects with postgresql+psycopg"
    ]

    async def main() -> Any:
        async with DatabaseSessionManager(url=url) as db:
            return await db.scalar("SELECT 41 + 1")

    assert asyncio.run(main()) == 42
    with sessions.SessionRegistry(db_url=url) as registry:
        assert registry.db.scalar("SELECT 2").result(10) == 2



def test_pg_the_example_plant_database_table_works_with_a_postgresql_url(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/plant.toml says its database may be PostgreSQL (PLANT_DB_URL): its
    [resources.db] table, as written, starts and serves with either url."""
    plant = tomllib.loads((Path(__file__).parents[1] / "examples" / "plant.toml").read_text())
    cfg = {
        "supervisors": {"backend": plant["supervisors"]["backend"]},
        "resources": {"db": plant["resources"]["db"]},
    }
    monkeypatch.setenv("PLANT_DB_URL", postgres_url)
    with sessions.start(cfg) as system:
        assert system.get("db").scalar("SELECT 'postgresql'").result(10) == "postgresql"
    monkeypatch.setenv("PLANT_DB_URL", sqlite_url(tmp_path))
    with sessions.start(cfg) as system:
        assert system.get("db").scalar("SELECT sqlite_version() IS NOT NULL").result(10) == 1


@pytest.mark.parametrize(("written", "used"), [
    ("postgresql+asyncpg://u:pw@h/db", "postgresql+psycopg://u:pw@h/db"),
    ("postgresql+asyncpg://h/db?ssl=true", "postgresql+psycopg://h/db?sslmode=require"),
    ("postgresql+asyncpg://h/db?ssl=false", "postgresql+psycopg://h/db?sslmode=disable"),
    ("postgresql+asyncpg://h/db?ssl=verify-full", "postgresql+psycopg://h/db?sslmode=verify-full"),
    ("postgresql+psycopg_async://h/db", "postgresql+psycopg://h/db"),
    ("sqlite+aiosqlite:///plant.db", "sqlite+pysqlite:///plant.db"),
    ("postgresql+psycopg://h/db", "postgresql+psycopg://h/db"),
    ("sqlite:///plant.db", "sqlite:///plant.db"),
])
def test_async_driver_urls_map_to_the_synchronous_driver(written: str, used: str) -> None:
    mapped = synchronous_url(make_url(written))
    assert mapped.render_as_string(hide_password=False) == used


def test_pg_crud_returning_and_executemany(postgres_url: str) -> None:
    with sessions.start(db_config(postgres_url)) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (id serial PRIMARY KEY, name text NOT NULL)").result()
        assert db.execute("INSERT INTO t (name) VALUES (:n) RETURNING id", {"n": "a"}).result() == [
            {"id": 1}
        ]
        assert (
            db.executemany(
                "INSERT INTO t (name) VALUES (:n)", [{"n": "b"}, {"n": "c"}, {"n": "d"}]
            ).result()
            == 3
        )
        assert db.scalar("SELECT count(*) FROM t").result() == 4
        assert db.execute(
            "SELECT name FROM t WHERE id = ANY(:ids) ORDER BY id", {"ids": [2, 3]}
        ).result() == [{"name": "b"}, {"name": "c"}]
        with pytest.raises(IntegrityError):
            db.execute("INSERT INTO t (name) VALUES (NULL)").result()
        with pytest.raises(ProgrammingError):
            db.execute("SELECT nope FROM t").result()
        with pytest.raises(ProgrammingError):
            db.execute("SELECT * FROM missing").result()

        def aborted(conn: Connection) -> None:
            with contextlib.suppress(DBAPIError):  # swallowed: the transaction is aborted
                conn.exec_driver_sql("SELECT 1/0")
            conn.exec_driver_sql("SELECT 1")

        with pytest.raises(DBAPIError, match="aborted"):
            db.transaction(aborted).result()
        assert db.scalar("SELECT 1").result() == 1  # rolled back: no PendingRollbackError
        assert db.restarts == 0


def test_pg_session_and_transaction(postgres_url: str) -> None:
    with sessions.start(db_config(postgres_url)) as system:
        db = system.get("db")
        db.transaction(Base.metadata.create_all).result()
        assert db.session(lambda orm: orm.add(Item(name="gear"))).result() is None

        def rename(orm: Session) -> str:
            item = orm.scalars(select(Item).where(Item.name == "gear")).one()
            item.name = "cog"
            orm.flush()
            raise RuntimeError("no")

        with pytest.raises(RuntimeError):
            db.session(rename).result()
        assert db.execute("SELECT name FROM items").result() == [{"name": "gear"}]


def test_pg_on_connect_is_replayed_after_the_backend_is_terminated(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    name = dbname(postgres_url)
    postgres_server.execute("CREATE SCHEMA plant", dbname=name)
    postgres_server.execute("CREATE TABLE plant.sensors (id int)", dbname=name)
    postgres_server.execute("INSERT INTO plant.sensors VALUES (7)", dbname=name)
    cfg = db_config(
        postgres_url,
        on_connect=["SET search_path TO plant", "SET application_name = 'sessions-replay'"],
    )
    rec = Recorder()
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        db = system.get("db")
        settings = "SELECT current_setting('application_name') AS app, pg_backend_pid() AS pid"
        before = db.execute(settings).result()[0]
        assert before["app"] == "sessions-replay"
        assert db.scalar("SELECT id FROM sensors").result() == 7

        assert postgres_server.terminate_connections(name) == 1
        # Terminated while idle: the next call finds the connection dead (its outcome is
        # unknown, so it is not retried); the call queued behind it runs after reconnect.
        first = db.execute("SELECT 1 AS one")
        second = db.execute(settings)
        with pytest.raises(ResourceFault, match="outcome is unknown") as info:
            first.result()
        assert isinstance(info.value.__cause__, DBAPIError)
        assert info.value.__cause__.connection_invalidated
        after = second.result()[0]
        assert after["app"] == "sessions-replay" and after["pid"] != before["pid"]
        assert db.scalar("SELECT id FROM sensors").result() == 7  # search_path replayed
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert db.restarts == 1


def test_pg_transaction_cut_midway_is_a_fault_and_not_half_applied(postgres_url: str) -> None:
    with sessions.start(db_config(postgres_url)) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (v int)").result()
        runs: list[int] = []

        def cut(conn: Connection) -> None:
            runs.append(1)
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
            conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")

        with pytest.raises(ResourceFault, match="outcome is unknown") as info:
            db.transaction(cut).result()
        assert isinstance(info.value.__cause__, DBAPIError)
        assert db.scalar("SELECT count(*) FROM t").result() == 0  # nothing half-applied
        assert runs == [1]  # never retried
        wait_until(lambda: db.restarts == 1, what="one restart")  # counted by the kernel


def test_pg_a_swallowed_disconnect_is_still_a_fault(postgres_url: str) -> None:
    with sessions.start(db_config(postgres_url)) as system:
        db = system.get("db")

        def swallow(conn: Connection) -> str:
            with contextlib.suppress(DBAPIError):
                conn.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
            return "pretended all is well"

        with pytest.raises(ResourceFault):
            db.transaction(swallow).result()
        assert db.scalar("SELECT 1").result() == 1
        wait_until(lambda: db.restarts == 1, what="one restart")  # counted by the kernel


def test_pg_serialization_failure_goes_to_the_caller(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    name = dbname(postgres_url)
    with sessions.start(db_config(postgres_url)) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)").result()
        db.execute("INSERT INTO t VALUES (1, 0)").result()

        def conflict(conn: Connection) -> None:
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.exec_driver_sql("SELECT v FROM t WHERE id = 1").all()  # takes the snapshot
            postgres_server.execute("UPDATE t SET v = 5 WHERE id = 1", dbname=name)
            conn.exec_driver_sql("UPDATE t SET v = v + 1 WHERE id = 1")

        with pytest.raises(OperationalError) as info:
            db.transaction(conflict).result()
        assert isinstance(info.value.orig, psycopg.errors.SerializationFailure)
        assert db.scalar("SELECT v FROM t WHERE id = 1").result() == 5
        assert db.restarts == 0 and db.state == "running"


def test_pg_deadlock_goes_to_the_caller(postgres_server: PostgresServer, postgres_url: str) -> None:
    name = dbname(postgres_url)
    with sessions.start(db_config(postgres_url, call_timeout=30.0)) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (id int PRIMARY KEY, v int)").result()
        db.execute("INSERT INTO t VALUES (1, 0), (2, 0)").result()
        with psycopg.connect(postgres_server.conninfo(name)) as other:
            other.execute("SET deadlock_timeout = '10s'")  # we are the one who notices
            other_pid = other.info.backend_pid
            waiter: list[threading.Thread] = []

            def lock_row_1() -> None:
                other.execute("UPDATE t SET v = 2 WHERE id = 1")

            def deadlock(conn: Connection) -> None:
                conn.exec_driver_sql("SET LOCAL deadlock_timeout = '10ms'")
                conn.exec_driver_sql("UPDATE t SET v = 1 WHERE id = 1")
                other.execute("UPDATE t SET v = 2 WHERE id = 2")
                waiter.append(threading.Thread(target=lock_row_1))
                waiter[0].start()
                wait_until(
                    lambda: (
                        postgres_server.execute(
                            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                            (other_pid,),
                        )[0][0]
                        == "Lock"
                    ),
                    what="the other transaction to wait",
                )
                conn.exec_driver_sql("UPDATE t SET v = 1 WHERE id = 2")

            with pytest.raises(OperationalError) as info:
                db.transaction(deadlock).result()
            waiter[0].join(10)
            other.rollback()
        assert isinstance(info.value.orig, psycopg.errors.DeadlockDetected)
        assert db.execute("SELECT v FROM t ORDER BY id").result() == [{"v": 0}, {"v": 0}]
        assert db.restarts == 0


def test_pg_health_check_notices_a_dead_connection_without_a_call(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    rec = Recorder()
    with sessions.start(db_config(postgres_url, health_interval=0.05)) as system:
        system.subscribe(rec)
        db = system.get("db")
        pid = db.scalar("SELECT pg_backend_pid()").result()
        postgres_server.terminate_connections(dbname(postgres_url))
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert db.scalar("SELECT pg_backend_pid()").result() != pid


def test_pg_pool_of_four_serves_eight_threads(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    cfg = db_config(
        postgres_url,
        pool_size=4,
        call_timeout=30.0,
        on_connect=["SET application_name = 'sessions-pool'"],
    )
    with sessions.start(cfg) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (thread int, seq int)").result()

        def worker(n: int) -> set[int]:
            pids = set()
            for seq in range(25):
                db.execute("INSERT INTO t VALUES (:n, :s)", {"n": n, "s": seq}).result()
                pids.add(db.scalar("SELECT pg_backend_pid()").result())
            return pids

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            used = set().union(*pool.map(worker, range(8)))
        backends = {
            row[0]
            for row in postgres_server.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'sessions-pool'"
            )
        }
        assert len(backends) == 4  # one connection per member, no more
        assert used <= backends
        assert db.scalar("SELECT count(*) FROM t").result() == 200
        assert db.restarts == 0


def test_pg_password_never_shows_in_status_events_or_errors(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    url = postgres_url.replace("postgres@", "postgres:Sup3rS3cret@")  # trust auth ignores it
    rec = Recorder()
    with sessions.start(db_config(url)) as system:
        system.subscribe(rec)
        db = system.get("db")
        postgres_server.terminate_connections(dbname(url))
        with pytest.raises(ResourceFault) as info:
            db.execute("SELECT 1").result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        text = str(info.value) + json.dumps(system.status()) + repr(rec.events) + repr(db)
        assert db.call("transaction", lambda conn: conn.engine.url.password).result() == (
            "Sup3rS3cret"
        )
    assert "Sup3rS3cret" not in text


def own_postgres(make: Callable[..., PostgresServer]) -> PostgresServer:
    """``make_postgres_server()``, retried: ``PostgresServer.start`` may connect while the
    server still says "the database system is starting up" (a race in tests/servers.py)."""
    for attempt in range(3):
        try:
            return make()
        except psycopg.OperationalError as exc:
            if "starting up" not in str(exc) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _ids(db: sessions.Handle) -> set[int]:
    return {row["id"] for row in db.execute("SELECT id FROM t").result()}


def test_pg_server_stop_and_restart_loses_no_acknowledged_write(
    make_postgres_server: Callable[..., PostgresServer],
) -> None:
    server = own_postgres(make_postgres_server)
    cfg: dict[str, Any] = {
        "supervisor": {"max_restarts": 10_000, "period": 5.0, "backoff": FAST_BACKOFF},
        "resources": {
            # patient: waits out the outage; quick: gives up within its call_timeout
            "db": {"kind": "database", "url": server.url, "call_timeout": 60.0},
            "quick": {"kind": "database", "url": server.url, "call_timeout": 0.3},
        },
    }
    insert_sql = "INSERT INTO t (id) VALUES (:id)"
    with sessions.start(cfg) as system:
        db, quick = system.get("db"), system.get("quick")
        db.execute("CREATE TABLE t (id int PRIMARY KEY)").result()
        acked = {i for i in range(20) if db.execute(insert_sql, {"id": i}).result() == 1}
        assert acked == set(range(20))

        server.stop()
        not_executed: set[int] = set()
        unknown: set[int] = set()
        # db's first call finds its connection dead: a fault, outcome unknown.
        with pytest.raises(ResourceFault):
            db.execute(insert_sql, {"id": 100}).result()
        unknown.add(100)
        # While the server is down, quick's calls fail within their call_timeout: the
        # first with a fault (its connection is dead), the others never start. (An
        # explicit timeout only lets a call that did start finish with its real outcome.)
        for i in range(200, 206):
            with pytest.raises((ResourceFault, CallTimeout, ResourceUnavailable)) as info:
                quick.execute(insert_sql, {"id": i}).result(timeout=30.0)
            err = info.value
            if isinstance(err, ResourceUnavailable) or (
                isinstance(err, CallTimeout) and not err.started
            ):
                not_executed.add(i)
            else:
                unknown.add(i)
        assert set(range(201, 206)) <= not_executed
        # ... and db's calls wait in its mailbox for the server to come back.
        during = {i: db.execute(insert_sql, {"id": i}) for i in range(300, 310)}
        server.start()
        for i, future in during.items():
            assert future.result() == 1
            acked.add(i)
        after = {i for i in range(400, 410) if db.execute(insert_sql, {"id": i}).result() == 1}
        acked |= after
        for i in range(500, 600):  # quick serves again (retried: its deadline is short)
            try:
                assert quick.execute(insert_sql, {"id": i}).result(timeout=30.0) == 1
            except CallTimeout as err:
                (unknown if err.started else not_executed).add(i)
            else:
                acked.add(i)
                break
        else:
            pytest.fail("quick never served again")

        stored = _ids(db)
        assert acked <= stored  # every acknowledged write survived
        assert not (not_executed & stored)  # calls that never started never ran
        assert stored <= acked | unknown
        wait_until(lambda: db.restarts >= 1 and quick.restarts >= 1, what="restarts counted")


def test_pg_breaker_opens_against_a_stopped_server_and_closes_after_restart(
    make_postgres_server: Callable[..., PostgresServer],
) -> None:
    server = own_postgres(make_postgres_server)
    clock = FakeClock()
    rec = Recorder()
    cfg = db_config(
        server.url,
        max_restarts=10_000,
        call_timeout=10.0,
        breaker={"failures": 3, "reset_timeout": 30.0},
    )
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        db = system.get("db")
        assert db.scalar("SELECT 1").result() == 1
        server.stop()
        with pytest.raises(ResourceFault):
            db.scalar("SELECT 1").result()
        # the failed reconnects count too
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open")
        refused = db.scalar("SELECT 1")
        assert refused.done()
        with pytest.raises(ResourceUnavailable, match="circuit open"):
            refused.result()
        assert system.status()["children"][0]["circuit"] == "open"

        server.start()
        wait_until(lambda: db.state == "running", timeout=30.0, what="reconnect")
        clock.advance(31.0)  # reset_timeout passed: one probe goes through
        assert db.scalar("SELECT 1").result() == 1
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "closed")
        assert db.circuit == "closed"
        assert db.scalar("SELECT 2").result() == 2


# ------------------------------------------------- abort and bounded waits (issue 9)


class OnItsThread:
    """The actor driven as its runtime drives it: every hook and call on one thread of
    its own (a plain executor thread), ``abort()`` from the test's thread."""

    def __init__(self, actor: DatabaseActor) -> None:
        self.actor = actor
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="db-actor")

    def run(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        return self._thread.submit(fn, *args)

    def connect(self) -> Connection:
        def connect() -> Connection:
            self.actor.resource = self.actor.connect()
            return self.actor.resource

        conn: Connection = self.run(connect).result(timeout=30)
        return conn

    def disconnect(self) -> None:
        resource, self.actor.resource = self.actor.resource, None
        self.run(self.actor.disconnect, resource).result(timeout=30)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


def _backend_running(server: PostgresServer, dbname: str, query: str) -> bool:
    rows = server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active'"
        " AND query = %s",
        (dbname, query),
    )
    return int(rows[0][0]) >= 1


def _socket_of(conn: Connection) -> Any:
    """A duplicate of the psycopg connection's socket (close it)."""
    import socket  # noqa: PLC0415

    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return socket.socket(fileno=os.dup(raw.pgconn.socket))


def test_pg_abort_wakes_a_query_blocked_in_the_driver_and_disconnect_works(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    actor = DatabaseActor(url=postgres_url)
    runner = OnItsThread(actor)
    try:
        conn = runner.connect()
        blocked = runner.run(actor.execute, "select pg_sleep(30)")
        wait_until(
            lambda: _backend_running(postgres_server, dbname(postgres_url), "select pg_sleep(30)"),
            what="pg_sleep to run",
        )
        assert not blocked.done()
        actor.abort(conn)  # from this thread, as the runtime does
        with pytest.raises(OperationalError) as info:
            blocked.result(timeout=10)
        assert info.value.connection_invalidated
        assert actor.is_fault(info.value)
        actor.abort(conn)  # idempotent
        # Nothing more is sent on an aborted connection: a fault at once.
        with pytest.raises(ConnectionLost) as lost:
            runner.run(actor.execute, "select 1").result(timeout=10)
        assert actor.is_fault(lost.value)
        runner.disconnect()
        assert conn.closed
        actor.abort(conn)  # after disconnect: nothing to do, no error
        # The next incarnation is a normal connection.
        runner.connect()
        assert runner.run(actor.scalar, "select 41 + 1").result(timeout=10) == 42
        runner.disconnect()
    finally:
        runner.close()


def test_pg_abort_frees_a_call_on_a_frozen_server(
    make_postgres_server: Callable[..., PostgresServer],
) -> None:
    """SIGSTOP: the server's kernel still acknowledges, so no TCP timeout ends the call;
    abort does. A connect to the frozen server is bounded by connect_timeout."""
    server = own_postgres(make_postgres_server)
    actor = DatabaseActor(url=server.url)
    quick = DatabaseActor(url=server.url, connect_args={"connect_timeout": 2})
    runner, other = OnItsThread(actor), OnItsThread(quick)
    try:
        conn = runner.connect()
        assert runner.run(actor.scalar, "select 1").result(timeout=10) == 1
        pids = server.process_ids()  # the postmaster and every backend, ours included
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            blocked = runner.run(actor.scalar, "select 2")
            # the query is sent (the server's kernel takes it) and no reply comes
            done, _ = concurrent.futures.wait([blocked], timeout=0.5)
            assert not done
            actor.abort(conn)
            with pytest.raises(OperationalError) as info:
                blocked.result(timeout=10)
            assert actor.is_fault(info.value)
            runner.disconnect()  # no round trip to the frozen server
            with pytest.raises(OperationalError, match="timeout"):
                other.connect()  # bounded: connect_timeout, not forever
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
    finally:
        runner.close()
        other.close()


def test_pg_abort_of_a_pending_connect(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    """abort(None): connect() has not returned (here: its on_connect statements)."""
    statement = "select pg_sleep(29)"
    actor = DatabaseActor(url=postgres_url, on_connect=[statement])
    runner = OnItsThread(actor)
    try:
        pending = runner.run(actor.connect)
        wait_until(
            lambda: _backend_running(postgres_server, dbname(postgres_url), statement),
            what="on_connect to run",
        )
        actor.abort(None)
        with pytest.raises(OperationalError):
            pending.result(timeout=10)
        actor.abort(None)  # nothing pending any more: no error
    finally:
        runner.close()


def test_pg_gets_bounded_libpq_defaults(postgres_url: str) -> None:
    """The libpq parameters reach psycopg (its parameters) and the kernel (the socket)."""
    import socket  # noqa: PLC0415

    from sessions.actors.database import LIBPQ_DEFAULTS  # noqa: PLC0415

    actor = DatabaseActor(url=postgres_url)
    assert actor.connect_args == dict(LIBPQ_DEFAULTS)
    runner = OnItsThread(actor)
    try:
        conn = runner.connect()
        raw = conn.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        params = raw.info.get_parameters()
        assert {k: params.get(k) for k in LIBPQ_DEFAULTS} == {
            "connect_timeout": "10",
            "keepalives": "1",
            "keepalives_idle": "10",
            "keepalives_interval": "5",
            "keepalives_count": "3",
            "tcp_user_timeout": "30000",
        }
        with _socket_of(conn) as sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000
        runner.disconnect()
    finally:
        runner.close()


def test_pg_defaults_yield_to_the_url_connect_args_and_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+psycopg://u@db.example/plant"
    actor = DatabaseActor(url=f"{url}?connect_timeout=3", connect_args={"keepalives_idle": 60})
    assert actor.connect_args["keepalives_idle"] == 60
    assert "connect_timeout" not in actor.connect_args  # the URL's own value reaches libpq
    assert actor.engine.dialect.create_connect_args(actor.engine.url)[1]["connect_timeout"] == "3"
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "20")
    assert "connect_timeout" not in DatabaseActor(url=url).connect_args
    assert DatabaseActor(url=url).connect_args["tcp_user_timeout"] == 30_000


def test_sqlite_gets_no_libpq_arguments_and_works_with_the_defaults(tmp_path: Path) -> None:
    """The libpq parameters are for PostgreSQL only: sqlite3.connect() would refuse them."""
    seen: list[dict[str, Any]] = []
    for url in (sqlite_url(tmp_path), "sqlite://"):
        actor = DatabaseActor(url=url)
        assert actor.connect_args == {}
        event.listen(actor.engine, "do_connect", lambda d, r, a, kw: seen.append(dict(kw)))
        actor.resource = actor.connect()
        try:
            assert actor.scalar("select 1") == 1
        finally:
            actor.disconnect(actor.resource)
    assert seen and all("connect_timeout" not in kw and "keepalives" not in kw for kw in seen)
    with sessions.start(db_config(sqlite_url(tmp_path))) as system:
        assert system.get("db").scalar("select 2").result() == 2


def test_sqlite_abort_interrupts_a_running_query(tmp_path: Path) -> None:
    actor = DatabaseActor(url=sqlite_url(tmp_path))
    runner = OnItsThread(actor)
    started = threading.Event()
    endless = (
        "WITH RECURSIVE c(x) AS (SELECT started() UNION ALL SELECT x + 1 FROM c) "
        "SELECT count(*) FROM c"
    )
    try:
        conn = runner.connect()

        def flag() -> int:
            started.set()
            return 1

        runner.run(
            lambda: conn.connection.driver_connection.create_function("started", 0, flag)
        ).result(timeout=10)
        blocked = runner.run(actor.scalar, endless)
        assert started.wait(10)
        actor.abort(conn)
        with pytest.raises(OperationalError, match="interrupted"):
            blocked.result(timeout=10)
        assert actor.is_fault(blocked.exception() or Exception())
        # sqlite3 interrupts only what runs at the time: later statements are refused.
        with pytest.raises(ConnectionLost):
            runner.run(actor.scalar, "select 1").result(timeout=10)
        with pytest.raises(ConnectionLost):
            runner.run(lambda: conn.exec_driver_sql("select 1")).result(timeout=10)
        runner.disconnect()
        actor.abort(conn)
    finally:
        runner.close()


def test_abort_before_any_connect_does_nothing(tmp_path: Path) -> None:
    actor = DatabaseActor(url=sqlite_url(tmp_path))
    actor.abort(None)
    actor.abort(object())


def test_pg_a_stalled_call_is_aborted_and_the_resource_serves_again(postgres_url: str) -> None:
    """End to end: the runtime's stall watchdog calls abort(); the stuck thread ends at
    once (the autouse fixture fails the test if it outlives it) instead of in 30 s."""
    cfg = db_config(postgres_url, call_timeout=10.0, stall_timeout=0.5)
    with sessions.start(cfg) as system:
        db = system.get("db")
        with pytest.raises(ResourceFault, match="stalled"):
            db.execute("select pg_sleep(30)").result()
        assert db.scalar("select 1").result() == 1
        assert db.restarts == 1
        assert system.status()["children"][0]["abandoned"] == 0
