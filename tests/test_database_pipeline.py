"""Automatic SQL pipelining of the ``database`` kind on a real PostgreSQL server.

Calls queued behind a busy actor (a ``transaction(fn)`` held open on an event) meet in
its mailbox and go out as one psycopg pipeline when it is released. Each test checks
what every caller got and what the database holds afterwards: a pipeline must give
each caller exactly what it would have had alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, ResourceClosedError

import sessions
from sessions import ResourceFault
from tests.support import wait_until

FAST_BACKOFF = {"initial": 0.01, "max": 0.1, "jitter": 0.0}


def start(url: str, **spec: Any) -> sessions.System:
    return sessions.start({
        "supervisor": {"backoff": FAST_BACKOFF},
        "resources": {"db": {"kind": "database", "url": url, "call_timeout": 10.0,
                             **spec}},
    })


def hold(conn: Connection, started: threading.Event, release: threading.Event) -> None:
    started.set()
    release.wait(10)


@contextmanager
def queued_behind(db: sessions.Handle) -> Iterator[None]:
    """Calls made inside the block queue behind a held call and are served together
    when the block exits."""
    started, release = threading.Event(), threading.Event()
    holding = db.transaction(hold, started, release)
    assert started.wait(10)
    try:
        yield
    finally:
        release.set()
        holding.result(10)


def table(db: sessions.Handle) -> None:
    db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)").result(10)


def rows(db: sessions.Handle) -> list[tuple[int, str]]:
    return [(r["id"], r["v"]) for r in db.execute("SELECT id, v FROM t ORDER BY id").result(10)]


def test_queued_calls_go_out_as_one_pipeline_each_with_its_own_result(
    postgres_url: str,
) -> None:
    with start(postgres_url) as system:
        db = system.get("db")
        table(db)
        with queued_behind(db):
            inserts = [db.execute("INSERT INTO t VALUES (:i, :v)", {"i": i, "v": f"v{i}"})
                       for i in range(10)]
            update = db.execute("UPDATE t SET v = 'u' WHERE id < :n", {"n": 3})
            count = db.scalar("SELECT count(*) FROM t")
            returning = db.execute("DELETE FROM t WHERE id = 9 RETURNING id, v")
            nothing = db.scalar("SELECT 1 WHERE false")
        assert [f.result(10) for f in inserts] == [1] * 10
        assert update.result(10) == 3  # sees the inserts queued before it
        assert count.result(10) == 10
        assert returning.result(10) == [{"id": 9, "v": "v9"}]
        assert nothing.result(10) is None
        stats = db.batch_stats().result(10)
        assert stats["batches"] == 1 and stats["calls"] == 14 and stats["replayed"] == 0
        assert rows(db) == [(0, "u"), (1, "u"), (2, "u")] + [(i, f"v{i}") for i in range(3, 9)]


def test_a_failing_statement_fails_only_its_caller_and_nothing_is_applied_twice(
    postgres_url: str,
) -> None:
    """A duplicate key in the middle: the pipeline's transaction rolls back as a whole
    and the calls run again one by one, so every other caller's row is there once."""
    with start(postgres_url) as system:
        db = system.get("db")
        table(db)
        with queued_behind(db):
            futures = [db.execute("INSERT INTO t VALUES (:i, :v)", {"i": i % 4, "v": str(i)})
                       for i in range(6)]
            seq = db.scalar("SELECT count(*) FROM t")
        outcomes = [f.exception(10) for f in futures]
        assert [o is None for o in outcomes] == [True, True, True, True, False, False]
        assert all(isinstance(o, IntegrityError) for o in outcomes[4:])
        assert "duplicate key" in str(outcomes[4])
        assert seq.result(10) == 4
        assert db.batch_stats().result(10)["replayed"] == 1
        assert rows(db) == [(0, "0"), (1, "1"), (2, "2"), (3, "3")]
        assert db.state == "running" and db.restarts == 0


def test_a_parameter_the_driver_cannot_send_fails_only_its_caller(postgres_url: str) -> None:
    """The error comes from the client, midway through queueing the pipeline: what was
    queued before it is rolled back, not committed by the pipeline's end, and every
    call then runs alone, once."""
    with start(postgres_url) as system:
        db = system.get("db")
        table(db)
        with queued_behind(db):
            before = [db.execute("INSERT INTO t VALUES (:i, 'a')", {"i": i}) for i in (1, 2)]
            bad = db.execute("INSERT INTO t VALUES (3, :v)", {"v": object()})
            after = db.execute("INSERT INTO t VALUES (4, 'b')")
        assert [f.result(10) for f in [*before, after]] == [1, 1, 1]
        with pytest.raises(Exception, match="adapt"):
            bad.result(10)
        assert rows(db) == [(1, "a"), (2, "a"), (4, "b")]
        assert db.batch_stats().result(10)["replayed"] == 1


def test_statements_that_cannot_share_a_transaction_run_alone_in_order(
    postgres_url: str,
) -> None:
    """DDL, a Core statement, executemany, several statements in one string: each runs
    by itself at its place in the queue; the DML around them is pipelined."""
    with start(postgres_url) as system:
        db = system.get("db")
        with queued_behind(db):
            ddl = db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            first = [db.execute("INSERT INTO t VALUES (:i, 'a')", {"i": i}) for i in range(3)]
            many = db.executemany("INSERT INTO t VALUES (:i, 'm')", [{"i": 10}, {"i": 11}])
            core = db.execute(text("UPDATE t SET v = 'c' WHERE id = 10"))
            two = db.execute("UPDATE t SET v = 'x' WHERE id = 0; UPDATE t SET v = 'y' WHERE id = 1")
            last = [db.execute("INSERT INTO t VALUES (:i, 'b')", {"i": i}) for i in range(20, 22)]
        assert ddl.result(10) is not None
        assert [f.result(10) for f in [*first, *last]] == [1] * 5
        assert many.result(10) == 2 and core.result(10) == 1
        two.result(10)
        assert rows(db) == [(0, "x"), (1, "y"), (2, "a"), (10, "c"), (11, "m"), (20, "b"),
                            (21, "b")]
        stats = db.batch_stats().result(10)
        assert stats["batches"] == 2 and stats["calls"] == 5


def test_scalar_of_a_statement_without_rows_raises_as_it_would_alone(postgres_url: str) -> None:
    with start(postgres_url) as system:
        db = system.get("db")
        table(db)
        alone = db.scalar("INSERT INTO t VALUES (1, 'a')")
        with pytest.raises(ResourceClosedError) as unbatched:
            alone.result(10)
        with queued_behind(db):
            batched = [db.scalar("INSERT INTO t VALUES (:i, 'b')", {"i": i}) for i in (2, 3)]
        for f in batched:
            with pytest.raises(ResourceClosedError) as info:
                f.result(10)
            assert str(info.value) == str(unbatched.value)
        assert rows(db) == [(1, "a"), (2, "b"), (3, "b")]  # executed, as alone


def test_a_connection_lost_mid_pipeline_faults_every_call_of_it(postgres_url: str) -> None:
    """The backend ends during the pipeline: every call of it gets ResourceFault (its
    outcome is unknown to the client; here the transaction never committed), the
    resource reconnects and serves the next call."""
    with start(postgres_url) as system:
        db = system.get("db")
        table(db)
        with queued_behind(db):
            futures = [
                db.execute("INSERT INTO t VALUES (1, 'a')"),
                db.scalar("SELECT pg_terminate_backend(pg_backend_pid())"),
                db.execute("INSERT INTO t VALUES (2, 'b')"),
            ]
        for f in futures:
            with pytest.raises(ResourceFault, match="outcome is unknown"):
                f.result(10)
        wait_until(lambda: db.state == "running" and db.restarts == 1, 10, "the reconnect")
        assert rows(db) == []  # one transaction: nothing of it committed
        assert db.execute("INSERT INTO t VALUES (3, 'c')").result(10) == 1


def test_pipeline_false_sends_each_statement_alone(postgres_url: str) -> None:
    with start(postgres_url, pipeline=False) as system:
        db = system.get("db")
        table(db)
        with queued_behind(db):
            futures = [db.execute("INSERT INTO t VALUES (:i, 'a')", {"i": i}) for i in range(5)]
        assert [f.result(10) for f in futures] == [1] * 5
        assert db.batch_stats().result(10)["batches"] == 0


def test_calls_of_a_lease_are_not_pipelined_into_another_transaction(postgres_url: str) -> None:
    with start(postgres_url, pool_size=1) as system:
        db = system.get("db")
        table(db)
        with db.lease() as tx:
            futures = [tx.execute("INSERT INTO t VALUES (:i, 'l')", {"i": i}) for i in range(4)]
            assert [f.result(10) for f in futures] == [1] * 4
        assert db.batch_stats().result(10)["batches"] == 0
        assert len(rows(db)) == 4
