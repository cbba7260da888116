"""Leases through the public API: ``handle.lease()``, ``with handle``, ``async with``.

A lease holds one member (one connection) for a block: every call made through it runs
on that member, in order, with no other caller's call in between. For the database
kind the block is one transaction. Probes (``tests.kinds``) show the hooks, faults and
revocation; SQLite shows the transaction.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, PendingRollbackError
from sqlalchemy.orm import Session

import sessions
from sessions import CallTimeout, LeaseBroken, ResourceFault, ResourceUnavailable
from tests import kinds
from tests.servers import PostgresServer
from tests.support import config, wait_until


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


# -- the database kind: one transaction per block ---------------------------------------


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


def test_pool_members_all_leased_plain_call_waits() -> None:
    """With every member leased, a plain call waits (on one of them) until that member's
    lease exits; a new lease then takes a member without a lease."""
    with sessions.start(config({"p": {"pool_size": 2}})) as system:
        p = system.get("p")
        first, second = p.lease(), p.lease()
        with first, second:
            assert {first.member, second.member} == {"p#0", "p#1"}
            waiting = p.whoami()
            time.sleep(0.2)
            assert not waiting.done()  # both members are leased
        thread, _ = waiting.result(5)
        assert thread in {"sessions-p#0", "sessions-p#1"}
        with p.lease() as one, p.lease() as two:
            assert {one.member, two.member} == {"p#0", "p#1"}


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


# -- the mechanism, with probes -----------------------------------------------------------


def test_lease_hooks_bracket_the_block() -> None:
    """begin_lease runs before the block's first call, end_lease(ok) after its last,
    on the member's own thread; ok is False when the block raised."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        with p.lease() as lease:
            assert lease.record("me", 1).result() == 1
        with pytest.raises(ZeroDivisionError), p.lease() as lease:
            lease.record("me", 2).result()
            _ = 1 / 0
        assert kinds.controls("p").leases == [("begin", 1), ("end", True), ("begin", 1),
                                             ("end", False)]


def test_lease_fault_mid_lease_breaks_it() -> None:
    """A member faulting during a lease: the faulting call gets ResourceFault, the
    lease's next call LeaseBroken naming the lease, nothing is sent to another member,
    and a normal exit raises LeaseBroken; the resource keeps serving."""
    with sessions.start(config({"p": {"pool_size": 2}})) as system:
        p = system.get("p")
        with pytest.raises(LeaseBroken) as exited, p.lease() as lease:
            member = lease.member
            assert lease.record("lease", 1).result() == 1
            with pytest.raises(ResourceFault):
                lease.break_it().result()
            with pytest.raises(LeaseBroken) as info:
                lease.record("lease", 2).result()
            assert not lease.active
        err = info.value
        assert err.lease == lease.label and err.resource == member
        assert lease.label is not None and lease.label in str(err)
        assert "faulted during break_it()" in str(err) and "ProbeBroken" in str(err)
        assert isinstance(err, ResourceUnavailable)
        assert str(exited.value) == str(err)
        assert [e for e in kinds.controls(member).log if e[0] == "lease"] == [("lease", 1, 1)]
        assert kinds.controls(member).leases == [("begin", 1)]  # no end: connection gone
        assert p.echo("still here").result(5) == "still here"
        wait_until(lambda: system.get("p").restarts == 1, what="the member's restart")
        with p.lease() as again:  # a new lease on the restarted member works
            assert again.echo(1).result() == 1


def test_lease_fault_exit_by_exception_is_left_alone() -> None:
    """Leaving a broken lease's block by an exception raises that exception, not
    LeaseBroken."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        with pytest.raises(ResourceFault), p.lease() as lease:
            lease.break_it().result()


def test_lease_resource_stopped_mid_block() -> None:
    """The system stops while a block holds a lease: the lease's calls fail, and its
    exit returns at once."""
    system = sessions.start(config(["p"]))
    p = system.get("p")
    with pytest.raises(LeaseBroken, match="stopping"), p.lease() as lease:
        assert lease.echo(1).result() == 1
        system.stop()
        with pytest.raises(ResourceUnavailable, match="stopping"):
            lease.echo(2).result()
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    assert p.state == "stopped"


def test_lease_terminate_child_mid_block() -> None:
    """terminate_child of the leased resource breaks the lease; exit does not hang."""
    with sessions.start(config(["p", "q"])) as system:
        p = system.get("p")
        lease = p.lease()
        lease.__enter__()
        system.terminate_child("p")
        with pytest.raises(LeaseBroken, match="terminated"):
            lease.echo(1).result()
        with pytest.raises(LeaseBroken):
            lease.__exit__(None, None, None)
        system.restart_child("p")
        assert p.echo(2).result(5) == 2


def test_lease_dropped_without_exit_is_revoked() -> None:
    """A lease entered and dropped (its object garbage collected) is revoked by the
    supervisor: end_lease(False) runs, and the member serves plain calls again."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        lease = p.lease()
        lease.__enter__()
        behind = p.echo("behind")
        time.sleep(0.1)
        assert not behind.done()
        del lease
        gc.collect()
        assert behind.result(5) == "behind"
        assert kinds.controls("p").leases == [("begin", 1), ("end", False)]


def test_lease_idle_timeout_revokes() -> None:
    """A lease with no call for its idle_timeout is revoked (rolled back): its next
    call and a normal exit fail with LeaseBroken saying why."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        with pytest.raises(LeaseBroken, match="revoked"), p.lease(idle_timeout=0.2) as lease:
            assert lease.echo(1).result() == 1
            wait_until(lambda: ("end", False) in kinds.controls("p").leases,
                       what="the revocation")
            with pytest.raises(LeaseBroken, match=r"revoked \(no call for idle_timeout=0.2s\)"):
                lease.echo(2).result()
        assert p.echo(3).result() == 3


def test_lease_not_begun_within_timeout() -> None:
    """A lease that cannot begin within its timeout (the resource busy) raises
    CallTimeout(started=False) from the with; it never begins afterwards."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        started, release = threading.Event(), threading.Event()
        busy = p.block(started, release)
        assert started.wait(5)
        with pytest.raises(CallTimeout) as info, p.lease(timeout=0.2):
            pass
        assert info.value.started is False
        release.set()
        assert busy.result(5) == "released"
        assert p.echo(1).result(5) == 1
        assert kinds.controls("p").leases == []


def test_lease_refused_by_begin_lease() -> None:
    """begin_lease raising a caller error refuses the lease: the with raises it,
    end_lease is not called, and the resource serves on."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        kinds.controls("p").refuse_lease = True
        with pytest.raises(ValueError, match="lease refused"), p.lease():
            pass
        assert p.echo(1).result(5) == 1
        assert kinds.controls("p").leases == []
        assert p.state == "running"


def test_lease_misuse() -> None:
    """Calling through a lease before entering it, or entering it twice, is an error;
    after the block its calls fail with LeaseBroken; unknown methods are named."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        lease = p.lease()
        with pytest.raises(RuntimeError, match="enter the lease"):
            lease.echo(1)
        with lease:
            with pytest.raises(AttributeError, match="no method 'nope'"):
                lease.nope()
            assert lease.call("echo", 2).result() == 2
        with pytest.raises(LeaseBroken, match="has ended"):
            lease.echo(3).result()
        with pytest.raises(RuntimeError, match="entered once"), lease:
            pass


def test_with_handle_nested_and_concurrent_tasks() -> None:
    """``async with handle`` in concurrent tasks: each task gets its own member and
    leaves its own lease; nesting two handles in one block works."""

    async def worker(p: sessions.Handle, q: sessions.Handle, n: int) -> tuple[str, str]:
        async with p as a, q as b:
            assert a.member != b.member or a.name != b.name
            await asyncio.sleep(0.05)
            return await a.whoami(), a.member or ""

    async def main(p: sessions.Handle, q: sessions.Handle) -> list[tuple[str, str]]:
        return await asyncio.gather(*(worker(p, q, n) for n in range(2)))

    with sessions.start(config({"p": {"pool_size": 2}, "q": {"pool_size": 2}})) as system:
        results = asyncio.run(main(system.get("p"), system.get("q")))
        assert sorted(m for _, m in results) == ["p#0", "p#1"]
        assert all(thread[0] == f"sessions-{m}" for thread, m in results)


class Batcher(sessions.ResourceActor):
    """A kind with a batch method: the log shows how calls were batched."""

    batch_methods = frozenset({"put"})

    def connect(self) -> list[Any]:
        return []

    def put(self, who: str, value: int) -> int:
        self.resource.append((who, value))
        return value

    def run_batch(self, calls: Any) -> Any:
        self.resource.append(("batch", [args[0] for _, args, _ in calls]))
        return super().run_batch(calls)

    def hold(self, started: threading.Event, release: threading.Event) -> None:
        started.set()
        release.wait(10)

    def log(self) -> list[Any]:
        return list(self.resource)


def test_lease_calls_are_batched_among_themselves() -> None:
    """Calls of a batch method queued under a lease are batched together, never with
    other callers' calls, which wait and are batched after the lease."""
    with sessions.start({"resources": {"b": {"kind": "tests.test_leases:Batcher"}}}) as system:
        b = system.get("b")
        started, release = threading.Event(), threading.Event()
        with b.lease() as lease:
            held = lease.hold(started, release)
            assert started.wait(5)
            mine = [lease.put("lease", i) for i in range(3)]
            theirs = [b.put("other", i) for i in range(3)]
            release.set()
            held.result(5)
            assert [f.result(5) for f in mine] == [0, 1, 2]
            time.sleep(0.05)
            assert not any(f.done() for f in theirs)
        assert [f.result(5) for f in theirs] == [0, 1, 2]
        assert b.log().result(5) == [
            ("batch", ["lease"] * 3), ("lease", 0), ("lease", 1), ("lease", 2),
            ("batch", ["other"] * 3), ("other", 0), ("other", 1), ("other", 2),
        ]


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
