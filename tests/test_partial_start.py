"""``sessions.start(partial=True)`` and ``start(wait=False)``: a resource that cannot
start does not fail the system nor hold up the others, and is retried without giving up;
a start in the background returns at once."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

import sessions
from sessions import ResourceUnavailable
from sessions.messages import ChildRestarting, ChildStarted, Event
from tests import kinds
from tests.support import Recorder, config, wait_until


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
def test_partial_start_skips_a_failing_resource(strategy: str) -> None:
    """The first resource keeps failing to start: the ones after it start anyway, its
    calls are refused naming it, and its supervisor never gives up on it; once it can
    start it serves, and the others were not restarted."""
    kinds.controls("a").fail_connects = 10**6
    cfg = config(["a", "b", "c"], strategy=strategy, max_restarts=1)
    with sessions.start(cfg, partial=True) as system:
        a, b, c = (system.get(n) for n in "abc")
        assert (b.state, c.state) == ("running", "running")
        assert a.state == "starting"
        assert b.echo(1).result(5) == 1
        with pytest.raises(ResourceUnavailable) as info:
            a.echo(1).result(5)
        assert info.value.resource == "a"
        assert "ProbeBroken: connect refused" in str(info.value)
        wait_until(lambda: kinds.controls("a").connects >= 5, what="retries")
        assert system.state == "running"
        tree = system.status()
        assert tree["children"][0]["last_fault"].startswith("start failed: ProbeBroken")
        events = Recorder()
        system.subscribe(events)
        kinds.controls("a").fail_connects = 0
        events.wait_for(lambda e: isinstance(e, ChildStarted) and e.name == "a")
        assert a.echo(2).result(5) == 2
        assert (a.restarts, b.restarts, c.restarts) == (0, 0, 0)
        assert kinds.controls("b").connects == kinds.controls("c").connects == 1


def test_partial_start_keeps_trying_a_pool_member_and_the_pool_serves_meanwhile() -> None:
    """A pool member that cannot start is retried without giving up (as a resource
    is), the pool serves through the members that did start, and the resources after
    it start; once the member can start it takes calls too."""
    kinds.controls("p#1").fail_connects = 10**6
    cfg = config({"p": {"pool_size": 2}, "b": {}}, max_restarts=1)
    with sessions.start(cfg, partial=True) as system:
        p, b = system.get("p"), system.get("b")
        assert b.echo(1).result(5) == 1
        assert [p.whoami().result(5)[0] for _ in range(4)] == ["sessions-p#0"] * 4
        wait_until(lambda: kinds.controls("p#1").connects >= 5, what="retries")
        assert system.state == "running"
        kinds.controls("p#1").fail_connects = 0
        wait_until(lambda: [m["state"] for m in system.status()["children"][0]["children"]]
                   == ["running", "running"], what="p#1 up")
        with p.lease() as held:  # plain calls go to the other member, whichever it is
            other = "p#1" if held.member == "p#0" else "p#0"
            assert p.whoami().result(5)[0] == f"sessions-{other}"
        assert (p.restarts, b.restarts) == (0, 0)


def test_partial_start_retries_back_off_by_the_supervisor_s_policy() -> None:
    """Each failed start of a partial start's resource says when it is retried
    (ChildRestarting: its supervisor, its name, the delay, the attempt), the delays grow
    by the supervisor's backoff with jitter drawn from the injected rng, and each retry
    waits its delay out."""
    backoff = {"initial": 0.05, "multiplier": 2.0, "max": 10.0, "jitter": 0.5}
    seen: list[tuple[float, Event]] = []
    cfg = config(["a", "b"], max_restarts=1, backoff=backoff)
    with sessions.start(cfg, partial=True, rng=random.Random(11)) as system:
        a = system.get("a")
        system.subscribe(lambda e: seen.append((time.monotonic(), e)))
        kinds.controls("a").fail_connects = 3
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)  # the fault, then three failed starts
        wait_until(lambda: a.state == "running" and a.restarts == 1, what="a up again")
        assert a.echo(1).result(5) == 1
    same = random.Random(11)
    delays = [0.05 * 2 ** n * (1 + same.uniform(-0.5, 0.5)) for n in range(4)]
    timeline = [(t, e) for t, e in seen if isinstance(e, (ChildRestarting, ChildStarted))]
    assert [e for _, e in timeline] == [
        *(ChildRestarting("root", "a", delays[n], n + 1) for n in range(4)),
        ChildStarted("root", "a", "probe", 1)]
    for (announced, restarting), (after, _) in itertools.pairwise(timeline):
        assert isinstance(restarting, ChildRestarting)
        assert after - announced >= restarting.delay * 0.9  # the backoff was waited out


def test_partial_start_fault_of_a_running_resource_counts_as_usual() -> None:
    """Once up, a partial start's resource is supervised as any: a fault restarts it."""
    with sessions.start(config(["a"]), partial=True) as system:
        a = system.get("a")
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        assert a.echo(1).result(5) == 1
        assert a.restarts == 1


def test_partial_restart_that_fails_refuses_calls_until_up() -> None:
    """A running resource faults and its restarts fail: its calls are refused at once
    (not left to time out) until a restart succeeds."""
    with sessions.start(config(["a"]), partial=True) as system:
        a = system.get("a")
        kinds.controls("a").fail_connects = 10**6
        with pytest.raises(sessions.ResourceFault):
            a.break_it().result(5)
        wait_until(lambda: kinds.controls("a").connects >= 3, what="failed restarts")
        with pytest.raises(ResourceUnavailable, match="'a' is unavailable"):
            a.echo(1).result(5)
        assert a.state == "restarting"
        kinds.controls("a").fail_connects = 0
        wait_until(lambda: a.state == "running", what="the restart")
        assert a.echo(2).result(5) == 2


def test_start_without_waiting() -> None:
    """``start(wait=False)`` returns at once; calls made meanwhile wait for the
    resource; ``system.ready`` resolves when the start is done."""
    gate = threading.Event()
    kinds.controls("a").connect_gate = gate
    started = time.monotonic()
    with sessions.start(config(["a"]), wait=False) as system:
        assert time.monotonic() - started < 1.0
        assert not system.ready.done()
        early = system.get("a").echo("early")
        gate.set()
        system.ready.result(5)
        assert early.result(5) == "early"
    assert system.state == "stopped"


def test_start_without_waiting_then_stop_before_ready() -> None:
    """Stopping a system still starting in the background fails ``ready``, and leaves
    no thread behind."""
    gate = threading.Event()
    kinds.controls("a").connect_gate = gate
    system = sessions.start(config({"a": {"shutdown_timeout": 0.1}}), wait=False)
    system.stop()  # the connect in progress is aborted after shutdown_timeout
    gate.set()
    with pytest.raises(ResourceUnavailable) as info:
        system.ready.result(5)
    assert (str(info.value), info.value.resource) == ("the system is stopping", "root")
