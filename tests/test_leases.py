"""Leases through the public API: ``handle.lease()``, ``with handle``, ``async with``.

A lease holds one member (one connection) for a block: every call made through it runs
on that member, in order, with no other caller's call in between. Probes
(``tests.kinds``) show the hooks, faults, revocation and batching; the database kind's
transaction per block is in ``test_leases_database.py`` (it needs SQLAlchemy).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import time
from typing import Any

import pytest

import sessions
from sessions import CallTimeout, LeaseBroken, ResourceFault, ResourceUnavailable
from sessions.messages import CircuitChanged
from tests import kinds
from tests.support import Recorder, config, in_thread, occupy, wait_until


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


def test_a_pool_member_whose_lease_ended_takes_plain_calls_again() -> None:
    """While leased, a member gets no plain calls (another one runs); once the lease has
    ended, plain calls spread over every member again."""
    with sessions.start(config({"p": {"pool_size": 2}})) as system:
        p = system.get("p")
        with p.lease() as lease:
            leased = f"sessions-{lease.member}"
            assert leased not in {p.whoami().result(5)[0] for _ in range(10)}
        assert {p.whoami().result(5)[0] for _ in range(10)} == {"sessions-p#0",
                                                                "sessions-p#1"}


def test_a_lease_of_a_stopped_resource_is_refused_at_once_and_counted() -> None:
    with sessions.start(config(["p", "q"])) as system:
        p = system.get("p")
        system.terminate_child("p")
        with pytest.raises(ResourceUnavailable, match="terminated") as info, p.lease():
            pass
        assert info.value.resource == "p"
        assert system.stats("p").outcomes["refused"] == 1
        system.restart_child("p")
        with p.lease() as again:
            assert again.echo(1).result(5) == 1


def test_queued_counts_a_leases_calls_and_the_plain_ones_behind_it() -> None:
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        started, release = threading.Event(), threading.Event()
        with p.lease() as lease:
            first = lease.block(started, release)
            assert started.wait(5)
            rest = [lease.echo(i) for i in range(2)]
            plain = p.echo("plain")  # waits for the lease to end
            assert p.queued == 3
            release.set()
            assert first.result(5) == "released"
            assert [f.result(5) for f in rest] == [0, 1]
        assert plain.result(5) == "plain" and p.queued == 0


def test_calls_queued_in_a_lease_when_it_breaks_fail_naming_it_and_count_as_refused() -> None:
    """The lease's calls queued behind the one that faults never run on the restarted
    connection: each fails with LeaseBroken naming the resource, counted as refused."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        started, release = threading.Event(), threading.Event()
        with pytest.raises(LeaseBroken), p.lease() as lease:
            first = lease.block(started, release)
            assert started.wait(5)
            broken = lease.break_it()
            behind = [lease.record("lease", i) for i in range(2)]
            release.set()
            assert first.result(5) == "released"
            with pytest.raises(ResourceFault):
                broken.result(5)
            for future in behind:
                with pytest.raises(LeaseBroken, match="faulted during break_it") as info:
                    future.result(5)
                assert info.value.resource == "p"
        assert system.stats("p").outcomes["refused"] == 2
        assert [e for e in kinds.controls("p").log if e[0] == "lease"] == []


def test_a_lease_call_times_out_naming_its_resource_and_counts_its_latency() -> None:
    with sessions.start(config({"p": {"call_timeout": 0.2}})) as system:
        p = system.get("p")
        started, release = threading.Event(), threading.Event()
        with p.lease() as lease:
            assert lease.echo(0).result(5) == 0
            first = lease.block(started, release)
            assert started.wait(5)
            behind = lease.echo(1)
            with pytest.raises(CallTimeout) as info:
                behind.result()
            assert info.value.resource == "p" and not info.value.started
            release.set()
            assert first.result(5) == "released"
        stats = system.stats("p")
        # begin_lease, echo(0), block and end_lease ran; echo(1) expired before it began
        assert (stats.outcomes["ok"], stats.outcomes["timeout"]) == (4, 1)
        assert all(0 < seconds < 30 for seconds in stats.recent)  # from the queueing on


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
        assert str(err).endswith("its calls are not sent to another connection (leave "
                                 "the block and take a new lease)")
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


def test_a_fault_reported_from_another_thread_breaks_the_lease_saying_so() -> None:
    """A kind's reader thread reports the fault (``report_fault``), not a call: the
    lease's next call says the resource faulted, and how it learned of it."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        with pytest.raises(LeaseBroken), p.lease() as lease:
            assert lease.echo(1).result(5) == 1
            reader = lease.apply(lambda probe: threading.Thread(
                target=probe.report_fault, args=(kinds.ProbeBroken("reader: link lost"),)))
            thread = reader.result(5)
            thread.start()
            thread.join(5)
            wait_until(lambda: not lease.active, what="the lease to break")
            with pytest.raises(LeaseBroken) as info:
                lease.echo(2).result(5)
        assert "is broken: resource 'p' faulted (reported fault): ProbeBroken: reader: " \
               "link lost;" in str(info.value)
        assert p.echo(3).result(5) == 3


def test_a_resource_that_exits_normally_ends_the_lease_saying_so() -> None:
    """``stop_normally`` from a call of the lease: the resource (permanent) is
    restarted, and the lease's next call says it exited normally, not that it faulted."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        with pytest.raises(LeaseBroken), p.lease() as lease:
            assert lease.finish().result(5) == "bye"
            with pytest.raises(LeaseBroken) as info:
                lease.echo(2).result(5)
        assert "is broken: resource 'p' exited normally;" in str(info.value)
        assert p.echo(3).result(5) == 3


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


def test_lease_dropped_without_exit_is_revoked(caplog: pytest.LogCaptureFixture) -> None:
    """A lease entered and dropped (its object garbage collected) is revoked by the
    supervisor: end_lease(False) runs, the member serves plain calls again, and a
    warning says which lease and why."""
    with caplog.at_level("WARNING", logger="sessions"), sessions.start(config(["p"])) as system:
        p = system.get("p")
        lease = p.lease()
        lease.__enter__()
        label = lease.label
        behind = p.echo("behind")
        time.sleep(0.1)
        assert not behind.done()
        del lease
        gc.collect()
        assert behind.result(5) == "behind"
        assert kinds.controls("p").leases == [("begin", 1), ("end", False)]
    assert [r.getMessage() for r in caplog.records if "revoked" in r.getMessage()] == [
        f"{label} revoked: its lease object was dropped without leaving the block"]


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
    CallTimeout(started=False) from the with, naming the timeout that ran out: the
    lease's own ``timeout=``, else the resource's call_timeout. It never begins
    afterwards."""
    with sessions.start(config({"p": {"call_timeout": 0.3}})) as system:
        p = system.get("p")
        started, release = threading.Event(), threading.Event()
        busy = p.block(started, release)
        assert started.wait(5)
        with pytest.raises(CallTimeout) as info, p.lease(timeout=0.2):
            pass
        assert info.value.started is False
        assert info.value.resource == "p"
        assert str(info.value) == (
            "call begin_lease() on resource 'p' did not start within its lease's "
            "timeout=0.2s; it was not executed and never will be")
        begun = time.monotonic()
        with pytest.raises(CallTimeout) as info, p.lease():
            pass
        assert time.monotonic() - begun >= 0.3
        assert (info.value.resource, info.value.started) == ("p", False)
        assert str(info.value) == (
            "call begin_lease() on resource 'p' did not start within its call_timeout; "
            "it was not executed and never will be")
        release.set()
        assert busy.result(5) == "released"
        assert p.echo(1).result(5) == 1  # runs after the expired first calls were dropped
        assert kinds.controls("p").leases == []
        assert system.stats("p").outcomes["timeout"] == 2  # the first calls, expired


def test_every_form_of_block_tells_end_lease_how_it_ended() -> None:
    """``with handle``, ``async with handle.lease()`` and ``async with handle`` end the
    lease with end_lease(True) after a normal block and end_lease(False) after one that
    raised, and have run it when the block's exit returns."""

    async def blocks(p: sessions.Handle) -> None:
        async with p.lease() as lease:
            await lease.echo(1)
        with pytest.raises(ZeroDivisionError):
            async with p.lease() as lease:
                await lease.echo(2)
                _ = 1 / 0
        with pytest.raises(ZeroDivisionError):
            async with p as lease:
                await lease.echo(3)
                _ = 1 / 0

    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        with pytest.raises(ZeroDivisionError), p as lease:
            lease.echo(0).result(5)
            _ = 1 / 0
        assert kinds.controls("p").leases == [("begin", 1), ("end", False)]
        asyncio.run(blocks(p))
        assert kinds.controls("p").leases[2:] == [
            ("begin", 1), ("end", True), ("begin", 1), ("end", False), ("begin", 1),
            ("end", False)]


def test_a_failing_end_lease_is_raised_by_a_normal_exit_only(
        caplog: pytest.LogCaptureFixture) -> None:
    """end_lease raising (a caller error): a normal exit, with or async with, raises it;
    an exit by an exception keeps its own; the resource serves on. asyncio has nothing
    to complain about (no future whose exception was never retrieved)."""

    async def blocks(p: sessions.Handle) -> None:
        with pytest.raises(ValueError, match="end refused"):
            async with p.lease() as lease:
                await lease.echo(1)
        with pytest.raises(ZeroDivisionError):
            async with p.lease():
                _ = 1 / 0

    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        kinds.controls("p").refuse_end = True
        caplog.set_level(logging.DEBUG, logger="sessions")
        with pytest.raises(ValueError, match="end refused"), p.lease() as lease:
            lease.echo(0).result(5)
        with pytest.raises(ZeroDivisionError), p.lease():
            _ = 1 / 0
        asyncio.run(blocks(p))
        gc.collect()
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
        ended = [r.getMessage() for r in caplog.records if "ended after an error" in r.getMessage()]
        assert len(ended) == 2
        assert all(re.fullmatch(r"lease #\d+ of 'p' ended after an error in its block; its end "
                                r"failed too: ValueError\('end refused'\)", m) for m in ended)
        assert [ok for what, ok in kinds.controls("p").leases if what == "end"] == [
            True, False, True, False]
        assert p.echo(2).result(5) == 2
        assert p.state == "running"


def test_an_end_lease_outlasting_call_timeout_does_not_hold_the_exit() -> None:
    """Leaving never hangs: an end_lease still running at call_timeout makes a normal
    exit (with or async with) raise CallTimeout naming the lease; the member serves
    the next caller once the end has finished."""

    async def block(p: sessions.Handle) -> None:
        async with p.lease() as lease:
            await lease.echo(1)

    late = (r"^lease #\d+ of 'p': its end \(end_lease\) did not finish within "
            r"call_timeout=0.2s; it still runs, and the member serves others once it has$")
    with sessions.start(config({"p": {"call_timeout": 0.2}})) as system:
        p = system.get("p")
        for run in (lambda: _leave_sync(p), lambda: asyncio.run(block(p))):
            gate = threading.Event()
            kinds.controls("p").end_gate = gate
            try:
                with pytest.raises(CallTimeout, match=late) as info:
                    run()
            finally:
                gate.set()
            assert (info.value.resource, info.value.started) == ("p", True)
            assert p.echo(2).result(5) == 2


def test_an_end_lease_stuck_past_stall_timeout_is_listed_as_one(
        caplog: pytest.LogCaptureFixture) -> None:
    """The lease's last call is a call like any other for the stall watchdog:
    ``System.stalls()`` names it, on its resource, while it is stuck."""
    with caplog.at_level("ERROR", logger="sessions"), sessions.start(
            config({"p": {"call_timeout": 0.2, "stall_timeout": 0.3}},
                   max_restarts=100)) as system:
        p = system.get("p")
        gate = threading.Event()
        kinds.controls("p").end_gate = gate
        try:
            with pytest.raises(CallTimeout, match=r"its end \(end_lease\) did not finish"):
                _leave_sync(p)
            wait_until(lambda: bool(system.stalls()), what="the stuck end listed")
            assert [(s.resource, s.what) for s in system.stalls()] == [("p", "end_lease()")]
        finally:
            gate.set()
        wait_until(lambda: system.stalls() == [], what="the end to return")
        assert p.echo(2).result(5) == 2


def test_a_lease_whose_call_stalls_is_broken_saying_so() -> None:
    """A call of a lease stuck past stall_timeout: the watchdog fails it and restarts
    the resource, and the lease's next call is refused with LeaseBroken naming the
    stalled call (the connection it held is gone)."""
    with sessions.start(config({"p": {"stall_timeout": 0.2}}, max_restarts=10)) as system:
        p = system.get("p")
        with pytest.raises(LeaseBroken) as info, p.lease() as lease:
            stall = system.faults("p").stall_next_call()
            stuck = lease.echo(1)
            assert stall.started.wait(5)
            with pytest.raises(ResourceFault, match=r"stalled \(call echo\(\) ran past "
                               r"stall_timeout=0.2s\)"):
                stuck.result(5)
            lease.echo(2).result(5)
        assert re.fullmatch(
            r"lease #\d+ of 'p' is broken: resource 'p': call echo\(\) stalled: still "
            r"running after [\d.]+s \(stall_timeout=0.2s\); whatever it did on 'p' may "
            r"be lost, and its calls are not sent to another connection \(leave the block "
            r"and take a new lease\)", str(info.value))
        assert p.echo(3).result(5) == 3


def test_a_lease_of_a_resource_restarted_by_hand_is_broken_saying_so() -> None:
    """restart_child ends the incarnation a lease holds: the lease's next call is
    refused with LeaseBroken saying the resource stopped serving."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        with pytest.raises(LeaseBroken) as info, p.lease() as lease:
            assert lease.echo(1).result(5) == 1
            system.restart_child("p")
            lease.echo(2).result(5)
        assert str(info.value) == (
            f"{lease.label} is broken: resource 'p' stopped serving; whatever it did on 'p' "
            "may be lost, and its calls are not sent to another connection (leave the "
            "block and take a new lease)")
        assert p.echo(3).result(5) == 3


def test_a_late_end_lease_after_a_raising_block_is_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """The block's own exception goes on; the late end is a warning."""
    with sessions.start(config({"p": {"call_timeout": 0.2}})) as system:
        p = system.get("p")
        gate = threading.Event()
        kinds.controls("p").end_gate = gate
        try:
            with pytest.raises(ZeroDivisionError), p.lease() as lease:
                label = lease.label
                _ = 1 / 0
        finally:
            gate.set()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{label}: its end (end_lease) did not finish within call_timeout=0.2s; it still "
        "runs, and the member serves others once it has"]


def _leave_sync(p: sessions.Handle) -> None:
    with p.lease() as lease:
        lease.echo(0).result(5)


def test_leases_entered_with_handle_are_left_each_by_its_own() -> None:
    """``with handle`` keeps the leases entered so per thread (or task): a nested one of
    the same handle is left first, then the outer one; handles entered by hand may be
    left in any order, each leaving its own lease; in a thread that entered none,
    leaving is a RuntimeError saying so."""
    with sessions.start(config({"p": {"pool_size": 2}, "q": {}})) as system:
        p, q = system.get("p"), system.get("q")
        with p as outer:
            with p as inner:
                assert outer.active and inner.active
                assert outer.member != inner.member
            assert outer.active and not inner.active
        assert not outer.active
        a = p.__enter__()
        b = q.__enter__()
        p.__exit__(None, None, None)
        assert not a.active and b.active
        with pytest.raises(RuntimeError) as info:
            in_thread(lambda: q.__exit__(None, None, None)).result(10)
        assert str(info.value) == ("no lease of resource 'q' was entered with 'with handle' "
                                   "in this thread or task")
        assert b.active
        q.__exit__(None, None, None)
        assert not b.active


def test_a_lease_not_entered_refuses_calls() -> None:
    with sessions.start(config(["p"])) as system:
        lease = system.get("p").lease()
        with pytest.raises(RuntimeError) as info:
            lease.echo(1)
        assert str(info.value) == ("enter the lease (with / async with) before calling "
                                   "through it")


def test_a_lease_label_names_its_member_in_a_pool() -> None:
    with sessions.start(config({"p": {"pool_size": 2}, "q": {}})) as system:
        with system.get("p").lease() as lease:
            assert lease.label is not None
            assert lease.label.startswith("lease #")
            assert lease.label.endswith(" of 'p' (member 'p#0')")
        with system.get("q").lease() as lease:
            assert lease.label is not None and lease.label.endswith(" of 'q'")


def test_a_lease_waits_to_begin_for_its_own_timeout() -> None:
    """``lease(timeout=...)`` bounds the wait for a member, not the resource's
    call_timeout (a minute here)."""
    with sessions.start(config({"q": {"call_timeout": 60}})) as system:
        q = system.get("q")

        def second() -> None:
            with q.lease(timeout=0.2):
                raise AssertionError("began while the member was leased")

        with q.lease(), pytest.raises(CallTimeout):
            in_thread(second).result(10)


def test_a_lease_is_entered_once() -> None:
    with sessions.start(config(["p"])) as system:
        lease = system.get("p").lease()
        with lease:
            pass
        with pytest.raises(RuntimeError) as info, lease:
            pass
        assert str(info.value) == "a Lease is entered once; take a new one with handle.lease()"


def test_a_private_name_is_no_method_of_a_lease() -> None:
    with sessions.start(config(["p"])) as system, system.get("p").lease() as lease:
        with pytest.raises(AttributeError) as info:
            _ = lease._secret
        assert info.value.args == ("_secret",)


def test_lease_repr_says_its_state() -> None:
    with sessions.start(config(["p"])) as system:
        lease = system.get("p").lease()
        assert repr(lease) == "<Lease 'p' member=None new>"
        with lease:
            assert repr(lease) == "<Lease 'p' member='p' active>"
        assert repr(lease) == "<Lease 'p' member='p' over>"


def test_lease_refused_by_begin_lease() -> None:
    """begin_lease raising a caller error refuses the lease: the with raises it,
    end_lease is not called, and the resource serves on."""
    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        kinds.controls("p").refuse_lease = True
        lease = p.lease()
        with pytest.raises(ValueError, match="lease refused"), lease:
            pass
        assert p.echo(1).result(5) == 1  # served once the refused lease is over
        assert kinds.controls("p").leases == []
        assert p.state == "running"
        with pytest.raises(LeaseBroken,
                           match=r"is broken: its first call, begin_lease\(\), failed;"):
            lease.echo(2).result(5)


async def give_up_waiting_lease(p: sessions.Handle) -> None:
    """Cancel a task while its ``async with p.lease()`` waits for the lease to begin."""

    async def take() -> None:
        async with p.lease():
            raise AssertionError("the lease began")

    task = asyncio.create_task(take())
    await asyncio.sleep(0)  # the task runs up to its wait for the first call
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_lease_given_up_while_its_first_call_waits_never_begins() -> None:
    """A task cancelled while its ``async with`` waits for the lease to begin gives the
    lease up; its first call is left queued (cancelling a waiter does not withdraw a
    call), and when its turn comes the lease does not begin: begin_lease never runs and
    the resource goes on serving the calls behind it."""

    with sessions.start(config(["p"])) as system:
        p = system.get("p")
        started, release = threading.Event(), threading.Event()
        busy = p.block(started, release)
        assert started.wait(5)
        asyncio.run(give_up_waiting_lease(p))
        behind = p.echo("behind")
        release.set()
        assert busy.result(5) == "released"
        assert behind.result(5) == "behind"
        assert kinds.controls("p").leases == []
        assert p.state == "running" and p.restarts == 0
        assert p.queued == 0  # nothing of the given-up lease is left waiting
        with p.lease() as lease:  # the mailbox is free for the next lease
            assert lease.echo(1).result(5) == 1


def test_a_pool_member_whose_lease_was_given_up_before_it_began_takes_plain_calls() -> None:
    """In a pool, a lease given up while its first call waited (every member busy) never
    begins; its member is not counted as leased afterwards: plain calls spread over
    every member again."""

    with sessions.start(config({"p": {"pool_size": 2}})) as system:
        p = system.get("p")
        release = threading.Event()
        busy = occupy(p, 2, release)
        asyncio.run(give_up_waiting_lease(p))
        release.set()
        assert [f.result(5) for f in busy] == ["released", "released"]
        wait_until(lambda: p.queued == 0, what="the given-up lease's first call refused")
        assert {p.whoami().result(5)[0] for _ in range(10)} == {"sessions-p#0",
                                                                "sessions-p#1"}
        assert kinds.controls("p#0").leases == kinds.controls("p#1").leases == []


class CountingProbe(kinds.Probe):
    """A probe whose caller errors count toward its circuit breaker."""

    def counts_as_failure(self, exc: BaseException) -> bool:
        return True


def test_a_probe_lease_given_up_before_it_begins_reopens_the_circuit() -> None:
    """The half-open circuit's one probe call is a lease's first call, and its owner
    gives the lease up while that call waits behind a busy call. The busy call's
    success closes the circuit; when the probe's turn comes the lease does not begin,
    and the probe that never ran counts as a failure (as the handle counts any probe
    refused or expired in the queue): with failures=1 the circuit opens again, and a
    later probe closes it."""
    rec = Recorder()

    def echoed() -> bool:
        return bool(p.echo(1).exception(5) is None)

    def opened(count: int) -> None:
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open", count)

    cfg = {"resources": {"p": {"kind": "tests.test_leases:CountingProbe",
                               "breaker": {"failures": 1, "reset_timeout": 0.05}}}}
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        p = system.get("p")
        started, release = threading.Event(), threading.Event()
        failing = p.fail()
        busy = p.block(started, release)  # let through before the circuit opens
        with pytest.raises(ValueError):
            failing.result(5)
        opened(1)
        assert started.wait(5)
        time.sleep(0.1)  # past reset_timeout: the next call is the half-open probe
        # Its first call is the probe (let through, it waits behind the busy call).
        asyncio.run(give_up_waiting_lease(p))
        release.set()
        assert busy.result(5) == "released"
        opened(2)
        wait_until(echoed, what="a successful probe after reset_timeout")
        assert kinds.controls("p").leases == []


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


class PairBatcher(Batcher):
    """Batches at most two calls."""

    max_batch = 2


def test_lease_batches_hold_at_most_max_batch_calls() -> None:
    """A lease's queued calls of a batch method are batched max_batch at a time; the
    odd one out runs as itself."""
    with sessions.start(
            {"resources": {"b": {"kind": "tests.test_leases:PairBatcher"}}}) as system:
        b = system.get("b")
        started, release = threading.Event(), threading.Event()
        with b.lease() as lease:
            held = lease.hold(started, release)
            assert started.wait(5)
            mine = [lease.put("lease", i) for i in range(5)]
            release.set()
            held.result(5)
            assert [f.result(5) for f in mine] == [0, 1, 2, 3, 4]
        assert b.log().result(5) == [
            ("batch", ["lease"] * 2), ("lease", 0), ("lease", 1),
            ("batch", ["lease"] * 2), ("lease", 2), ("lease", 3),
            ("lease", 4),
        ]
