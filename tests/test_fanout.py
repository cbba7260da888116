"""``sessions._runtime.fanout.Delivery``: one subscriber's bounded drop-oldest queue and
its delivery thread. Threads are named ``sessions-...``, so the conftest fixture fails
any test that leaves one running."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from sessions._runtime.fanout import Delivery

TIMEOUT = 10.0


class Gate:
    """A callback that records what it gets and blocks on chosen items until released."""

    def __init__(self, block_on: frozenset[int] = frozenset()) -> None:
        self.block_on = set(block_on)
        self.got: list[int] = []
        self.threads: list[threading.Thread] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.cond = threading.Condition()
        self.inside = 0
        self.overlapped = False

    def __call__(self, item: int) -> None:
        with self.cond:
            self.inside += 1
            self.overlapped |= self.inside > 1
            self.got.append(item)
            self.threads.append(threading.current_thread())
            self.cond.notify_all()
        try:
            if item in self.block_on:
                self.entered.set()
                assert self.release.wait(TIMEOUT)
        finally:
            with self.cond:
                self.inside -= 1

    def wait_for(self, n: int) -> list[int]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, TIMEOUT), self.got
            return list(self.got)


@pytest.fixture
def deliveries() -> Iterator[list[Delivery[int]]]:
    """Deliveries a test made; closed (dropping) and joined if the test did not."""
    made: list[Delivery[int]] = []
    yield made
    for delivery in made:
        delivery.close(drain=False)
    for delivery in made:
        assert delivery.join(TIMEOUT)


def make(made: list[Delivery[int]], gate: Gate, capacity: int = 3, *, what: str = "subscriber",
         warn_every: float = 10.0, start: bool = True) -> Delivery[int]:
    delivery: Delivery[int] = Delivery(gate, capacity=capacity, name="sessions-test-fanout",
                                       what=what, warn_every=warn_every, start=start)
    made.append(delivery)
    return delivery


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Delivery(print, capacity=0, name="sessions-test-fanout")


def test_drop_oldest_under_a_blocked_callback(deliveries: list[Delivery[int]]) -> None:
    gate = Gate(frozenset({0}))
    delivery = make(deliveries, gate, capacity=3)
    assert delivery.put(0)
    assert gate.entered.wait(TIMEOUT)  # 0 is in the callback, not in the queue
    results = [delivery.put(i) for i in range(1, 11)]
    assert results == [True] * 3 + [False] * 7  # each put past capacity drops the oldest
    assert delivery.pending() == 3
    assert delivery.dropped == 7
    gate.release.set()
    assert gate.wait_for(4) == [0, 8, 9, 10]  # the newest survive, in order
    delivery.close()
    assert delivery.join(TIMEOUT)
    assert (delivery.delivered, delivery.dropped, delivery.errors) == (4, 7, 0)


def test_drops_warn_at_most_every_warn_every_seconds(
    deliveries: list[Delivery[int]], caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate(frozenset({0}))
    delivery = make(deliveries, gate, capacity=1, what="test subscriber", warn_every=3600.0)
    delivery.put(0)
    assert gate.entered.wait(TIMEOUT)
    with caplog.at_level(logging.WARNING, logger="sessions.fanout"):
        for i in range(1, 20):
            delivery.put(i)
    warnings = [r for r in caplog.records if "test subscriber is 1 items behind" in r.message]
    assert len(warnings) == 1
    assert delivery.dropped == 18
    gate.release.set()


def test_counters(deliveries: list[Delivery[int]]) -> None:
    def callback(item: int) -> None:
        if item % 3 == 0:
            raise RuntimeError("bad item")

    delivery: Delivery[int] = Delivery(callback, capacity=100, name="sessions-test-fanout")
    deliveries.append(delivery)
    for i in range(1, 10):
        assert delivery.put(i)
    delivery.close()
    assert delivery.join(TIMEOUT)
    assert (delivery.delivered, delivery.errors, delivery.dropped) == (6, 3, 0)
    assert delivery.pending() == 0


def test_close_with_drain_delivers_what_is_queued(deliveries: list[Delivery[int]]) -> None:
    gate = Gate(frozenset({0}))
    delivery = make(deliveries, gate, capacity=10)
    delivery.put(0)
    assert gate.entered.wait(TIMEOUT)
    for i in range(1, 5):
        delivery.put(i)
    delivery.close()  # drain: the queued items still go out
    assert not delivery.put(5)  # closed: the item itself is dropped
    assert not delivery.put(6)  # and counted, each
    gate.release.set()
    assert delivery.join(TIMEOUT)
    assert gate.got == [0, 1, 2, 3, 4]
    assert (delivery.delivered, delivery.dropped) == (5, 2)


def test_close_without_drain_drops_what_is_queued(deliveries: list[Delivery[int]]) -> None:
    gate = Gate(frozenset({0}))
    delivery = make(deliveries, gate, capacity=10)
    delivery.put(0)
    assert gate.entered.wait(TIMEOUT)
    for i in range(1, 5):
        delivery.put(i)
    delivery.close(drain=False)
    assert delivery.pending() == 0
    assert not delivery.join(0.05)  # the callback in progress finishes first
    gate.release.set()
    assert delivery.join(TIMEOUT)
    assert gate.got == [0]
    assert (delivery.delivered, delivery.dropped) == (1, 4)
    delivery.close(drain=False)  # idempotent


def test_a_raising_callback_keeps_receiving(
    deliveries: list[Delivery[int]], caplog: pytest.LogCaptureFixture
) -> None:
    got: list[int] = []

    def callback(item: int) -> None:
        got.append(item)
        raise RuntimeError("subscriber bug")

    delivery: Delivery[int] = Delivery(callback, capacity=100, name="sessions-test-fanout",
                                       what="raiser", warn_every=3600.0)
    deliveries.append(delivery)
    with caplog.at_level(logging.ERROR, logger="sessions.fanout"):
        for i in range(5):
            delivery.put(i)
        delivery.close()
        assert delivery.join(TIMEOUT)
    assert got == [0, 1, 2, 3, 4]
    assert (delivery.errors, delivery.delivered) == (5, 0)
    logged = [r for r in caplog.records if "raiser raised" in r.message]
    assert len(logged) == 1 and logged[0].exc_info is not None  # rate-limited, with traceback


def test_no_thread_left_after_join(deliveries: list[Delivery[int]]) -> None:
    gate = Gate()
    delivery = make(deliveries, gate)
    delivery.put(1)
    gate.wait_for(1)
    assert delivery.thread.is_alive()
    delivery.close()
    assert delivery.join(TIMEOUT)
    assert not delivery.thread.is_alive()
    assert delivery.thread not in threading.enumerate()


def test_a_delivery_not_started_has_no_thread_until_started(
    deliveries: list[Delivery[int]],
) -> None:
    gate = Gate()
    delivery = make(deliveries, gate, start=False)
    delivery.put(1)
    assert delivery.join(0)  # never started: nothing to wait for
    assert gate.got == []
    delivery.start()
    assert gate.wait_for(1) == [1]
    with pytest.raises(RuntimeError, match="already started"):
        delivery.start()


# -- pause / resume ----------------------------------------------------------------------


def test_pause_keeps_the_queue_and_counters_and_resume_delivers_them(
    deliveries: list[Delivery[int]],
) -> None:
    gate = Gate()
    delivery = make(deliveries, gate, capacity=3)
    delivery.put(1)
    gate.wait_for(1)
    delivery.pause()
    assert delivery.join(TIMEOUT)  # the thread ends while paused
    first = delivery.thread
    for i in range(2, 7):
        delivery.put(i)  # still bounded: 2 and 3 are dropped
    assert delivery.pending() == 3 and delivery.dropped == 2
    assert gate.got == [1]
    delivery.resume()
    assert gate.wait_for(4) == [1, 4, 5, 6]
    assert delivery.thread is not first and delivery.thread.name == first.name
    assert (delivery.delivered, delivery.dropped) == (4, 2)
    delivery.resume()  # not paused: no second thread
    delivery.put(7)
    assert gate.wait_for(5)[-1] == 7
    assert not gate.overlapped


def test_a_callback_running_across_pause_and_resume_carries_on_as_the_one_thread(
    deliveries: list[Delivery[int]],
) -> None:
    gate = Gate(frozenset({0}))
    delivery = make(deliveries, gate, capacity=10)
    delivery.put(0)
    assert gate.entered.wait(TIMEOUT)
    stuck = delivery.thread
    delivery.pause()
    delivery.put(1)
    delivery.resume()  # the thread inside the callback carries on: none is started
    delivery.put(2)
    assert delivery.thread is stuck
    gate.release.set()
    assert gate.wait_for(3) == [0, 1, 2]
    assert set(gate.threads) == {stuck} and not gate.overlapped
    names = [t.name for t in threading.enumerate() if t.name == "sessions-test-fanout"]
    assert names == ["sessions-test-fanout"]


def test_a_callback_running_at_pause_ends_its_thread_once_it_returns(
    deliveries: list[Delivery[int]],
) -> None:
    gate = Gate(frozenset({0}))
    delivery = make(deliveries, gate, capacity=10)
    delivery.put(0)
    assert gate.entered.wait(TIMEOUT)
    delivery.put(1)
    delivery.pause()
    assert not delivery.join(0.05)
    gate.release.set()
    assert delivery.join(TIMEOUT)
    assert gate.got == [0] and delivery.pending() == 1  # 1 waits for a resume
    delivery.resume()
    assert gate.wait_for(2) == [0, 1]


def test_closing_a_paused_delivery_drops_its_queue(deliveries: list[Delivery[int]]) -> None:
    gate = Gate()
    delivery = make(deliveries, gate)
    delivery.pause()
    assert delivery.join(TIMEOUT)
    delivery.put(1)
    delivery.put(2)
    delivery.close()  # drain, but there is no thread to drain with
    assert delivery.pending() == 0 and delivery.dropped == 2
    delivery.resume()  # closed: no effect
    delivery.pause()
    assert delivery.join(TIMEOUT)
    assert gate.got == []
    assert not delivery.thread.is_alive()


def test_resume_starts_a_delivery_constructed_without_start(
    deliveries: list[Delivery[int]],
) -> None:
    gate = Gate()
    delivery = make(deliveries, gate, start=False)
    delivery.put(1)
    delivery.resume()
    assert gate.wait_for(1) == [1]
    delivery.close()
    assert delivery.join(TIMEOUT)


def test_flush_waits_for_the_callback_in_progress_and_the_queue() -> None:
    gate = Gate(block_on=frozenset({1}))
    delivery: Delivery[int] = Delivery(gate, capacity=10, name="sessions-test-flush")
    try:
        for i in (1, 2, 3):
            delivery.put(i)
        assert gate.entered.wait(TIMEOUT)
        assert delivery.flush(0.05) is False  # item 1 is still in its callback
        gate.release.set()
        assert delivery.flush(TIMEOUT) is True
        assert gate.got == [1, 2, 3] and delivery.delivered == 3
    finally:
        gate.release.set()
        delivery.close()
        assert delivery.join(TIMEOUT)


def test_flush_from_the_delivery_thread_returns_at_once() -> None:
    results: list[bool] = []
    done = threading.Event()
    delivery: Delivery[int] = Delivery(
        lambda _: (results.append(delivery.flush(TIMEOUT)), done.set()),
        capacity=1, name="sessions-test-self-flush")
    try:
        delivery.put(1)
        assert done.wait(TIMEOUT)
        assert results == [False]
    finally:
        delivery.close()
        assert delivery.join(TIMEOUT)


def test_the_event_stream_is_bounded_and_keeps_the_newest() -> None:
    """A wedged subscriber cannot grow the event queue without bound: past the backlog
    the oldest events are dropped (and warned about), the newest are delivered."""
    from sessions.messages import ChildStarted  # noqa: PLC0415
    from sessions.supervisor._events import EventBus  # noqa: PLC0415

    got: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def wedged(event: ChildStarted) -> None:
        got.append(event.name)
        if event.name == "first":
            entered.set()
            release.wait(TIMEOUT)

    bus = EventBus(backlog=2)
    bus.subscribe(wedged)  # type: ignore[arg-type]
    try:
        bus.emit(ChildStarted("root", "first", "probe", 0))
        assert entered.wait(TIMEOUT)
        for name in ("a", "b", "c", "d"):
            bus.emit(ChildStarted("root", name, "probe", 0))
        release.set()
        bus.flush(TIMEOUT)
        assert got == ["first", "c", "d"]
    finally:
        release.set()
        bus.close(TIMEOUT)


def test_drops_are_counted_and_warned_about_with_the_default_name(
    deliveries: list[Delivery[int]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="sessions.fanout")
    gate = Gate(frozenset({0}))
    delivery: Delivery[int] = Delivery(gate, capacity=1, name="sessions-test-fanout")
    deliveries.append(delivery)
    delivery.put(0)
    assert gate.entered.wait(TIMEOUT)
    for i in (1, 2, 3):
        delivery.put(i)  # 1 queued; 2 drops 1; 3 drops 2
    assert delivery.dropped == 2
    assert caplog.messages == ["subscriber is 1 items behind: oldest dropped (1 so far)"]
    delivery.close(drain=False)  # 3 is dropped too: counted on top
    assert delivery.dropped == 3
    gate.release.set()


def test_flush_sees_a_lone_callback_in_progress() -> None:
    gate = Gate(frozenset({1}))
    delivery: Delivery[int] = Delivery(gate, capacity=5, name="sessions-test-flush")
    try:
        delivery.put(1)
        assert gate.entered.wait(TIMEOUT)
        assert delivery.pending() == 0
        assert delivery.flush(0.05) is False  # nothing queued, but the callback runs
        threading.Timer(0.05, gate.release.set).start()
        assert delivery.flush(0.9) is True  # a timeout under a second is honoured
    finally:
        gate.release.set()
        delivery.close()
        assert delivery.join(TIMEOUT)


def test_flush_after_a_raising_callback() -> None:
    def fail(item: int) -> None:
        raise RuntimeError(f"bad item {item}")

    delivery: Delivery[int] = Delivery(fail, capacity=5, name="sessions-test-flush")
    try:
        delivery.put(1)
        assert delivery.flush(TIMEOUT) is True
        assert delivery.errors == 1
    finally:
        delivery.close()
        assert delivery.join(TIMEOUT)


def test_resume_twice_runs_one_daemon_thread(deliveries: list[Delivery[int]]) -> None:
    gate = Gate()
    delivery = make(deliveries, gate)
    delivery.put(0)
    gate.wait_for(1)
    delivery.pause()
    assert delivery.join(TIMEOUT)  # the thread ended at the pause
    delivery.resume()
    delivery.resume()  # a second resume neither starts nor needs another thread
    threads = [t for t in threading.enumerate() if t.name == "sessions-test-fanout"]
    assert len(threads) == 1 and threads[0].daemon
    for i in (1, 2, 3):
        delivery.put(i)
    assert gate.wait_for(4) == [0, 1, 2, 3]
    assert not gate.overlapped


def test_a_fresh_delivery_flushes_at_once_on_a_daemon_thread(
    deliveries: list[Delivery[int]],
) -> None:
    """Nothing put, nothing in progress: flush() is True at once. The thread is a daemon
    whoever creates the delivery, so a program that never stops it can still exit."""
    made: list[Delivery[int]] = []

    def create() -> None:  # from a non-daemon thread: a daemon only if said so
        made.append(Delivery(lambda item: None, capacity=3, name="sessions-test-fanout"))

    creator = threading.Thread(target=create, daemon=False)
    creator.start()
    creator.join()
    delivery = made[0]
    deliveries.append(delivery)
    assert delivery.thread is not None and delivery.thread.daemon
    assert delivery.flush(TIMEOUT)
