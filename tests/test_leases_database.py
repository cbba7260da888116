"""Leases of the database kind: one transaction per block, on SQLite and PostgreSQL.

The mechanism itself (hooks, faults, revocation, batching) is shown with probes in
``test_leases.py``, which runs in the core-only stage; this file needs SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, PendingRollbackError
from sqlalchemy.orm import Session

import sessions
from sessions import LeaseBroken, ResourceFault
from tests.servers import PostgresServer
from tests.support import wait_until


def sqlite_pool(tmp_path: Path, size: int = 2) -> dict[str, Any]:
    """A pool of ``size`` database members on one SQLite file, with a table ``t``."""
    return {
        "supervisor": {"backoff": {"initial": 0.01, "max": 0.05, "jitter": 0.0}},
        "resources": {"db": {"kind": "database", "url": f"sqlite:///{tmp_path / 'l.db'}",
                             "pool_size": size, "call_timeout": 5.0}},
    }


def make_table(db: sessions.Handle) -> None:
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").result()


def count(db: sessions.Handle) -> int:
    return int(db.scalar("SELECT count(*) FROM t").result())


def thread_name(conn: Connection) -> str:
    """For ``transaction(fn)``: which member's thread ran the call."""
    return threading.current_thread().name


def test_database_lease_rolls_back_on_exception(tmp_path: Path) -> None:
    """An INSERT inside the block is visible inside it, and gone after the block raised."""
    with sessions.start(sqlite_pool(tmp_path)) as system:
        db = system.get("db")
        make_table(db)
        with pytest.raises(RuntimeError, match="boom"), db.lease() as tx:
            assert tx.execute("INSERT INTO t (v) VALUES ('a')").result() == 1
            assert tx.scalar("SELECT count(*) FROM t").result() == 1
            raise RuntimeError("boom")
        assert count(db) == 0
        assert not tx.active


def test_database_lease_commits_on_normal_exit(tmp_path: Path) -> None:
    """Calls of the block commit together when it exits normally, not before: another
    member does not see them while the block runs."""
    with sessions.start(sqlite_pool(tmp_path)) as system:
        db = system.get("db")
        make_table(db)
        with db.lease() as tx:
            tx.execute("INSERT INTO t (v) VALUES ('a')").result()
            tx.executemany("INSERT INTO t (v) VALUES (:v)", [{"v": "b"}, {"v": "c"}]).result()
            assert count(db) == 0  # a plain call: the other member, outside the transaction
        assert count(db) == 3


def test_database_with_handle_is_a_transaction(tmp_path: Path) -> None:
    """``with handle as tx`` (the seed's pattern) is the same as ``handle.lease()``."""
    with sessions.start(sqlite_pool(tmp_path)) as system:
        db = system.get("db")
        make_table(db)
        with db as tx:
            assert isinstance(tx, sessions.Lease)
            tx.execute("INSERT INTO t (v) VALUES ('kept')").result()
        with pytest.raises(KeyError), db as tx:
            tx.execute("INSERT INTO t (v) VALUES ('dropped')").result()
            raise KeyError("x")
        assert db.execute("SELECT v FROM t").result() == [{"v": "kept"}]


def test_database_lease_async(tmp_path: Path) -> None:
    """``async with handle.lease()`` and ``async with handle``: committed on a normal
    exit, rolled back on an exception, awaited without blocking the loop."""

    async def main(db: sessions.Handle) -> int:
        async with db.lease() as tx:
            await tx.execute("INSERT INTO t (v) VALUES ('a')")
        with pytest.raises(ValueError):
            async with db as tx:
                await tx.execute("INSERT INTO t (v) VALUES ('b')")
                raise ValueError("no")
        async with db as tx:  # the seed's ``async with registry.db as session``
            await tx.execute("INSERT INTO t (v) VALUES ('c')")
        return int(await db.scalar("SELECT count(*) FROM t"))

    with sessions.start(sqlite_pool(tmp_path)) as system:
        db = system.get("db")
        make_table(db)
        assert asyncio.run(main(db)) == 2
        assert [r["v"] for r in db.execute("SELECT v FROM t ORDER BY id").result()] == ["a", "c"]


def test_database_lease_calls_run_in_order_on_one_member(tmp_path: Path) -> None:
    """Calls of a block go to one member in the order made (even without waiting for
    each), while another caller's calls meanwhile all go to the other member."""
    with sessions.start(sqlite_pool(tmp_path)) as system:
        db = system.get("db")
        make_table(db)
        stop = threading.Event()
        others: list[str] = []

        def other_caller() -> None:
            while not stop.is_set():
                others.append(db.transaction(thread_name).result())

        with db.lease() as tx:
            member_thread = tx.transaction(thread_name).result()
            assert member_thread == f"sessions-{tx.member}"
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                running = [pool.submit(other_caller) for _ in range(2)]
                futures = [tx.execute("INSERT INTO t (v) VALUES (:v)", {"v": str(i)})
                           for i in range(50)]
                threads = [tx.transaction(thread_name) for _ in range(5)]
                assert [f.result() for f in futures] == [1] * 50
                assert {f.result() for f in threads} == {member_thread}
                wait_until(lambda: len(others) >= 20, what="the other callers' calls")
                stop.set()
                for r in running:
                    r.result(10)
        assert others and member_thread not in others
        rows = db.execute("SELECT v FROM t ORDER BY id").result()
        assert [r["v"] for r in rows] == [str(i) for i in range(50)]


def test_database_lease_released_on_exit(tmp_path: Path) -> None:
    """Leaving the block frees its member and the database: on SQLite a lease holds the
    write lock (BEGIN IMMEDIATE) until its exit, then plain writes and the next lease
    go through at once, on either member."""
    with sessions.start(sqlite_pool(tmp_path)) as system:
        db = system.get("db")
        make_table(db)
        with db.lease() as tx:
            tx.execute("INSERT INTO t (v) VALUES ('a')").result()
            member = tx.member
        assert db.queued == 0
        started = time.monotonic()
        assert db.execute("INSERT INTO t (v) VALUES ('b')").result() == 1
        with db.lease() as again:
            again.execute("INSERT INTO t (v) VALUES ('c')").result()
        assert time.monotonic() - started < 1.0  # no wait on the busy timeout
        threads = {db.transaction(thread_name).result() for _ in range(20)}
        assert f"sessions-{member}" in threads
        assert count(db) == 3


def test_database_lease_lone_resource_queues_plain_calls(tmp_path: Path) -> None:
    """A lone resource under a lease: plain calls queue behind the block and run after."""
    cfg = sqlite_pool(tmp_path, size=1)
    with sessions.start(cfg) as system:
        db = system.get("db")
        make_table(db)
        with db.lease() as tx:
            tx.execute("INSERT INTO t (v) VALUES ('a')").result()
            behind = db.scalar("SELECT count(*) FROM t")
            time.sleep(0.1)
            assert not behind.done()
            assert db.queued == 1
        assert behind.result(5) == 1  # ran after the commit


def test_database_lease_failed_call_dooms_the_transaction(tmp_path: Path) -> None:
    """A call failing inside the block goes to its caller; the block's later calls fail
    with PendingRollbackError and a normal exit rolls back and raises it too."""
    with sessions.start(sqlite_pool(tmp_path)) as system:
        db = system.get("db")
        make_table(db)
        db.execute("INSERT INTO t (id, v) VALUES (1, 'x')").result()
        with pytest.raises(PendingRollbackError, match="rolled back, not committed"), \
                db.lease() as tx:
            tx.execute("INSERT INTO t (v) VALUES ('y')").result()
            with pytest.raises(IntegrityError):
                tx.execute("INSERT INTO t (id, v) VALUES (1, 'dup')").result()
            with pytest.raises(PendingRollbackError, match="IntegrityError"):
                tx.scalar("SELECT 1").result()
        assert count(db) == 1
        assert db.state == "running"  # a caller's error, not a fault
        with db.lease() as tx:  # the member is clean for the next lease
            tx.execute("INSERT INTO t (v) VALUES ('z')").result()
        assert count(db) == 2


def test_database_session_joins_the_lease(tmp_path: Path) -> None:
    """``session(fn)`` inside a lease works in the lease's transaction: its commit()
    does not end it, and the block's rollback undoes it."""

    def add(orm: Session) -> int:
        orm.connection().exec_driver_sql("INSERT INTO t (v) VALUES ('orm')")
        return 1

    with sessions.start(sqlite_pool(tmp_path)) as system:
        db = system.get("db")
        make_table(db)
        with pytest.raises(RuntimeError), db.lease() as tx:
            assert tx.session(add).result() == 1
            raise RuntimeError("undo")
        assert count(db) == 0


# -- PostgreSQL: concurrent leases, a server-side abort, a backend terminated mid-lease ---


def test_pg_leases_commit_rollback_and_doom(postgres_url: str) -> None:
    """On PostgreSQL two leases of a pool hold two transactions at once; a failed
    statement dooms its lease (PostgreSQL would refuse the next one anyway) and the
    exit rolls it back."""
    cfg = {"resources": {"db": {"kind": "database", "url": postgres_url, "pool_size": 2}}}
    with sessions.start(cfg) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)").result()
        with db.lease() as one, db.lease() as two:
            assert one.member != two.member
            pids = {one.scalar("SELECT pg_backend_pid()").result(),
                    two.scalar("SELECT pg_backend_pid()").result()}
            assert len(pids) == 2
            one.execute("INSERT INTO t VALUES (1, 'one')").result()
            two.execute("INSERT INTO t VALUES (2, 'two')").result()
            assert one.scalar("SELECT count(*) FROM t").result() == 1  # its own only
        assert db.scalar("SELECT count(*) FROM t").result() == 2
        with pytest.raises(PendingRollbackError), db.lease() as tx:
            tx.execute("INSERT INTO t VALUES (3, 'three')").result()
            with pytest.raises(IntegrityError):
                tx.execute("INSERT INTO t VALUES (1, 'dup')").result()
        with pytest.raises(ZeroDivisionError), db.lease() as tx:
            tx.execute("INSERT INTO t VALUES (4, 'four')").result()
            _ = 1 / 0
        assert db.scalar("SELECT count(*) FROM t").result() == 2
        assert db.restarts == 0


def test_pg_backend_terminated_mid_lease(postgres_server: PostgresServer,
                                        postgres_url: str) -> None:
    """The lease's backend is terminated mid-block: the next call faults (outcome
    unknown), the one after fails with LeaseBroken, nothing of the block is committed,
    and the database serves on a new connection."""
    cfg = {"supervisor": {"backoff": {"initial": 0.01, "max": 0.05, "jitter": 0.0}},
           "resources": {"db": {"kind": "database", "url": postgres_url}}}
    with sessions.start(cfg) as system:
        db = system.get("db")
        db.execute("CREATE TABLE t (v int)").result()
        with pytest.raises(LeaseBroken), db.lease() as tx:
            tx.execute("INSERT INTO t VALUES (1)").result()
            pid = tx.scalar("SELECT pg_backend_pid()").result()
            postgres_server.execute(f"SELECT pg_terminate_backend({pid})",
                                    dbname=postgres_url.rsplit("/", 1)[1])
            with pytest.raises(ResourceFault):
                tx.execute("INSERT INTO t VALUES (2)").result()
            with pytest.raises(LeaseBroken, match="faulted during execute"):
                tx.execute("INSERT INTO t VALUES (3)").result()
        assert db.scalar("SELECT count(*) FROM t").result(10) == 0
        assert db.restarts == 1
