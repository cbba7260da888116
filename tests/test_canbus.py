"""The ``canbus`` kind on python-can's ``virtual`` interface, against ``MotorDriveSim`` nodes.

Every test uses its own channel. Waits are on futures, queues and events with deadlines;
rate checks are generous lower bounds only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import math
import queue
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from can.interfaces.virtual import VirtualBus

import sessions
from sessions.actors.canbus import BusOffError, CANBusActor
from sessions.actors.canbus.sim import (
    CMD_GET_SPEED,
    CMD_SET_SPEED,
    STATUS_OK,
    MotorDriveSim,
    Reply,
    bus_off_frame,
    decode_reply,
    encode_get_speed,
    encode_set_speed,
    request_message,
    response_id,
    status_id,
)
from sessions.canbus import CANBusSessionManager
from sessions.messages import ChildFaulted, ChildStarted
from tests.support import Recorder, abort_from_another_thread, in_thread, wait_until

TIMEOUT = 10.0
ALL_IDS = 0x7FF

def pending(fut: concurrent.futures.Future[Any]) -> concurrent.futures.Future[Any]:
    """The future a request's reply arrives on: the handle's own (``Deferred``)."""
    return fut


def reply_of(fut: concurrent.futures.Future[Any], timeout: float = TIMEOUT) -> can.Message:
    """The reply frame of a ``handle.request(...)`` future (or its error)."""
    result = pending(fut).result(timeout)
    assert isinstance(result, can.Message)
    return result


@pytest.fixture
def channel() -> str:
    return f"test-canbus-{uuid.uuid4().hex}"


@pytest.fixture
def monitor(channel: str) -> Iterator[can.BusABC]:
    """A plain bus on the channel, created first so it sees every frame."""
    with can.Bus(interface="virtual", channel=channel) as bus:
        yield bus


def start(channel: str, **options: Any) -> sessions.System:
    return sessions.start(
        {
            "supervisor": {"backoff": {"initial": 0.01, "max": 0.05, "jitter": 0}},
            "resources": {"bus": {"kind": "canbus", "channel": channel, **options}},
        }
    )


def sim(channel: str, node_id: int = 1, status_period: float | None = None) -> MotorDriveSim:
    return MotorDriveSim(
        channel, node_id=node_id, status_period=status_period, ramp_rpm_per_s=float("inf")
    )


def recv_until(
    bus: can.BusABC, pred: Callable[[can.Message], bool], timeout: float = TIMEOUT
) -> can.Message:
    """The first frame on ``bus`` matching ``pred``; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = bus.recv(left)
        if msg is not None and pred(msg):
            return msg
    raise AssertionError("timed out waiting for a frame")


def drain(q: queue.Queue[can.Message]) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def take(q: queue.Queue[can.Message], n: int, timeout: float = TIMEOUT) -> list[can.Message]:
    """``n`` frames from ``q`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    return [q.get(timeout=max(0.0, deadline - time.monotonic())) for _ in range(n)]


class Collector:
    """A subscriber callback that keeps what it receives."""

    def __init__(self) -> None:
        self.frames: list[can.Message] = []
        self.cond = threading.Condition()

    def __call__(self, msg: can.Message) -> None:
        with self.cond:
            self.frames.append(msg)
            self.cond.notify_all()

    def count(self) -> int:
        with self.cond:
            return len(self.frames)

    def wait_for(self, n: int, timeout: float = TIMEOUT) -> list[can.Message]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.frames) >= n, timeout):
                raise AssertionError(f"got {len(self.frames)} frames, wanted {n}")
            return list(self.frames)


def set_speed(node: int, rpm: int) -> can.Message:
    return request_message(encode_set_speed(rpm), node)


# -- basics ---------------------------------------------------------------------------


def test_send_request_forms_and_bus_state(channel: str, monitor: can.BusABC) -> None:
    # preserve_timestamps is not a key of the kind: it goes to can.Bus unchanged.
    with sim(channel, 1), start(channel, preserve_timestamps=True) as system:
        bus = system.get("bus")
        assert bus.kind == "canbus" and bus.state == "running"
        bus.send(arbitration_id=0x123, data=b"\x01\x02").result(5)
        bus.send(can.Message(arbitration_id=0x1ABCDE, data=b"x", is_extended_id=True)).result(5)
        got = recv_until(monitor, lambda m: m.arbitration_id == 0x123)
        assert bytes(got.data) == b"\x01\x02"
        assert recv_until(monitor, lambda m: m.arbitration_id == 0x1ABCDE).is_extended_id
        resp = response_id(1)
        matches: list[Any] = [resp, (resp, ALL_IDS), lambda m: m.arbitration_id == resp]
        for rpm, match in zip((100, 200, 300), matches, strict=True):
            reply = reply_of(bus.request(set_speed(1, rpm), match, 5))
            assert decode_reply(reply.data) == Reply(CMD_SET_SPEED, STATUS_OK, rpm)
        assert bus.bus_state().result(5) == "active"
        assert bus.call("bus_state").result(5) == "active"
        assert bus.transaction(lambda b: b.preserve_timestamps).result(5) is True
        assert bus.stats().result(5)["pending_requests"] == 0


def test_caller_errors_are_not_faults(channel: str) -> None:
    with start(channel) as system:
        bus = system.get("bus")
        with pytest.raises(TypeError, match="not both"):
            bus.send(can.Message(arbitration_id=1), arbitration_id=2).result(5)
        with pytest.raises(TypeError, match="arbitration_id"):
            bus.send().result(5)
        with pytest.raises(ValueError):
            bus.send(arbitration_id=0x800, data=b"").result(5)  # 11-bit id out of range
        with pytest.raises(TypeError, match="match must be"):
            bus.request(set_speed(1, 1), "0x581").result(5)
        with pytest.raises(ValueError, match="timeout"):
            bus.request(set_speed(1, 1), 0x581, 0).result(5)
        with pytest.raises(ValueError, match="can_mask"):
            bus.set_filters([{"can_id": 1}]).result(5)
        with pytest.raises(KeyError, match="no subscription"):
            bus.unsubscribe("sub-99").result(5)
        with pytest.raises(KeyError, match="no periodic task"):
            bus.stop_periodic("task-99").result(5)
        with pytest.raises(ValueError, match="period"):
            bus.send_periodic(can.Message(arbitration_id=1), 0).result(5)
        assert bus.restarts == 0 and bus.state == "running"


def test_fault_mapping() -> None:
    actor = CANBusActor()
    assert actor.is_fault(BusOffError("bus-off"))
    assert actor.is_fault(can.CanInitializationError("cannot open"))
    assert actor.is_fault(can.CanOperationError("down", errno.ENETDOWN))
    assert actor.is_fault(can.CanOperationError("gone", errno.ENODEV))
    assert actor.is_fault(can.CanOperationError("deleted: send", errno.ENXIO))
    assert actor.is_fault(can.CanOperationError("bad fd", errno.EBADF))
    assert actor.is_fault(can.CanOperationError("Cannot operate on a closed bus"))
    assert actor.is_fault(OSError(errno.ENETDOWN, "Network is down"))
    assert not actor.is_fault(can.CanOperationError("Failed to transmit", errno.ENOBUFS))
    assert not actor.is_fault(can.CanOperationError("Transmit buffer full"))
    assert not actor.is_fault(can.CanTimeoutError("no ack"))
    assert not actor.is_fault(ValueError("bad frame"))


def test_a_closed_bus_is_a_fault_and_the_bus_reopens(channel: str, monitor: can.BusABC) -> None:
    rec = Recorder()
    with start(channel) as system:
        system.subscribe(rec)
        bus = system.get("bus")
        bus.transaction(lambda b: b.shutdown()).result(5)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        bus.send(arbitration_id=0x42, data=b"ok").result(5)
        recv_until(monitor, lambda m: m.arbitration_id == 0x42)


# -- concurrency and request/response -------------------------------------------------


def test_many_threads_send_and_request_concurrently(channel: str, monitor: can.BusABC) -> None:
    """Each requester gets the reply to its own request, under concurrent load."""
    nodes = [sim(channel, n, status_period=0.02) for n in (1, 2, 3)]
    for node in nodes:
        node.start()
    try:
        with start(channel, request_timeout=5.0) as system:
            bus = system.get("bus")

            def requester(tid: int) -> list[int]:
                node = tid % 3 + 1
                resp = response_id(node)
                matches: list[Any] = [
                    resp,
                    (resp, ALL_IDS),
                    lambda m: m.arbitration_id == resp and m.data[0] == CMD_SET_SPEED,
                ]
                got = []
                for i in range(15):
                    rpm = tid * 100 + i
                    reply = reply_of(bus.request(set_speed(node, rpm), matches[i % 3]))
                    assert decode_reply(reply.data) == Reply(CMD_SET_SPEED, STATUS_OK, rpm)
                    got.append(rpm)
                return got

            def sender(tid: int) -> int:
                futures = [
                    bus.send(arbitration_id=0x700 + tid, data=i.to_bytes(2, "little"))
                    for i in range(100)
                ]
                return sum(f.result(TIMEOUT) is None for f in futures)

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                requests = [pool.submit(requester, t) for t in range(6)]
                sends = [pool.submit(sender, t) for t in range(2)]
                for t, f in enumerate(requests):
                    assert f.result(60) == [t * 100 + i for i in range(15)]
                assert [f.result(60) for f in sends] == [100, 100]
            seen: dict[int, list[int]] = {0x700: [], 0x701: []}
            for _ in range(200):  # every frame of both senders arrived, each in order
                msg = recv_until(monitor, lambda m: m.arbitration_id in seen)
                seen[msg.arbitration_id].append(int.from_bytes(msg.data, "little"))
            assert seen == {0x700: list(range(100)), 0x701: list(range(100))}
            assert bus.stats().result(5)["pending_requests"] == 0
            assert bus.restarts == 0
    finally:
        for node in nodes:
            node.stop()


def test_a_request_in_flight_does_not_block_other_calls(channel: str, monitor: can.BusABC) -> None:
    with sim(channel, 1) as node, start(channel) as system:
        bus = system.get("bus")
        node.silence()
        waiting = pending(bus.request(set_speed(1, 500), response_id(1), 60))

        def sender(tid: int) -> None:
            for i in range(25):
                bus.send(arbitration_id=0x100 + tid, data=[i]).result(TIMEOUT)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(sender, range(4)))
        assert bus.bus_state().result(TIMEOUT) == "active"
        assert bus.stats().result(TIMEOUT)["pending_requests"] == 1
        assert not waiting.done()
        # Play the node: the reply resolves the request that has been waiting all along.
        monitor.send(can.Message(arbitration_id=response_id(1), data=[1, 0, 0xF4, 0x01]))
        reply = waiting.result(TIMEOUT)
        assert decode_reply(reply.data) == Reply(CMD_SET_SPEED, STATUS_OK, 500)


def test_a_request_timeout_raises_to_the_caller_and_is_not_a_fault(channel: str) -> None:
    rec = Recorder()
    with sim(channel, 1) as node, start(channel) as system:
        system.subscribe(rec)
        bus = system.get("bus")
        node.silence()
        started = time.monotonic()
        with pytest.raises(can.CanTimeoutError, match="no reply matching") as info:
            reply_of(bus.request(request_message(encode_get_speed(), 1), response_id(1), 0.2))
        assert isinstance(info.value, TimeoutError)
        assert time.monotonic() - started >= 0.2
        node.unsilence()
        reply = reply_of(bus.request(request_message(encode_get_speed(), 1), response_id(1)))
        assert decode_reply(reply.data).command == CMD_GET_SPEED
        assert bus.restarts == 0 and bus.state == "running"
        assert not rec.of(ChildFaulted)
        assert bus.stats().result(5)["pending_requests"] == 0


# -- restarts -------------------------------------------------------------------------


def _time_for_frames(bus: can.BusABC, can_id: int, n: int) -> float:
    """Seconds until ``n`` frames with ``can_id`` arrived on ``bus``."""
    started = time.monotonic()
    for _ in range(n):
        recv_until(bus, lambda m: m.arbitration_id == can_id)
    return time.monotonic() - started


def test_a_periodic_task_keeps_its_rate_across_a_forced_restart(
    channel: str, monitor: can.BusABC
) -> None:
    period, n = 0.02, 25
    slowest = n * period * 10  # a lower bound of a tenth of the nominal rate
    with start(channel) as system:
        bus = system.get("bus")
        task = bus.send_periodic(can.Message(arbitration_id=0x321, data=b"\x01"), period)
        task_id = task.result(5)
        assert _time_for_frames(monitor, 0x321, n) < slowest
        system.restart_child("bus")
        assert bus.restarts == 1
        while monitor.recv(0) is not None:  # frames of the old bus
            pass
        assert _time_for_frames(monitor, 0x321, n) < slowest
        stats = bus.stats().result(5)
        assert stats["periodic_tasks"] == {
            task_id: {"arbitration_id": 0x321, "period": period, "active": True}
        }
        bus.stop_periodic(task_id).result(5)
        system.restart_child("bus")
        assert bus.stats().result(5)["periodic_tasks"] == {}
        bus.send_periodic(can.Message(arbitration_id=0x322), period).result(5)
    # python-can's sending threads were joined too, not left to die on a closed bus.
    assert not [t for t in threading.enumerate() if t.name.startswith("Cyclic send task")]


def test_subscriptions_and_filters_still_deliver_after_restart(
    channel: str, monitor: can.BusABC
) -> None:
    with sim(channel, 1, 0.02), sim(channel, 2, 0.02), start(channel) as system:
        bus = system.get("bus")
        one = [{"can_id": status_id(1), "can_mask": ALL_IDS}]
        _, q1 = bus.subscribe_queue(one).result(5)
        two = Collector()
        bus.subscribe(two, [{"can_id": status_id(2), "can_mask": ALL_IDS}]).result(5)
        _, everything = bus.subscribe_queue().result(5)
        bus.set_filters([{"can_id": 0x180, "can_mask": 0x7F0}]).result(5)  # 0x180..0x18F
        take(q1, 3)
        two.wait_for(3)

        system.restart_child("bus")
        assert bus.restarts == 1
        drain(q1)
        drain(everything)
        before = two.count()
        assert {m.arbitration_id for m in take(q1, 5)} == {status_id(1)}
        assert {m.arbitration_id for m in two.wait_for(before + 5)[before:]} == {status_id(2)}
        # The bus filter was re-applied: a frame outside it, sent before one inside it,
        # never reaches the unfiltered subscriber (the virtual bus keeps send order).
        monitor.send(can.Message(arbitration_id=0x555, data=b"out"))
        monitor.send(can.Message(arbitration_id=0x18F, data=b"in"))
        seen: list[int] = []
        while not seen or seen[-1] != 0x18F:
            seen.append(everything.get(timeout=TIMEOUT).arbitration_id)
        assert 0x555 not in seen
        bus.set_filters(None).result(5)
        monitor.send(can.Message(arbitration_id=0x555, data=b"now in"))
        while everything.get(timeout=TIMEOUT).arbitration_id != 0x555:
            pass


def test_a_callback_that_raises_or_blocks_does_not_stop_delivery_to_others(
    channel: str,
) -> None:
    release, entered = threading.Event(), threading.Event()
    blocked_calls = Collector()
    raised = Collector()

    def blocker(msg: can.Message) -> None:
        blocked_calls(msg)
        entered.set()
        release.wait(TIMEOUT)

    def raiser(msg: can.Message) -> None:
        raised(msg)
        raise RuntimeError("subscriber bug")

    good = Collector()
    with sim(channel, 1, 0.01), start(channel) as system:
        bus = system.get("bus")
        try:
            blocker_id = bus.subscribe(blocker, queue_size=3).result(5)
            raiser_id = bus.subscribe(raiser).result(5)
            bus.subscribe(good).result(5)
            assert entered.wait(TIMEOUT)
            good.wait_for(30)
            raised.wait_for(30)
            assert blocked_calls.count() == 1
            wait_until(
                lambda: bus.stats().result(5)["subscriptions"][blocker_id]["dropped"] > 0,
                what="the blocked subscriber to drop frames",
            )
            subs = bus.stats().result(5)["subscriptions"]
            assert subs[blocker_id]["queued"] <= 3
            assert subs[raiser_id]["errors"] >= 30
        finally:
            release.set()
        blocked_calls.wait_for(3)  # resumes with the newest queued frames
        assert bus.restarts == 0


def test_a_callback_stuck_across_a_restart_resumes_on_one_thread(channel: str) -> None:
    release, entered = threading.Event(), threading.Event()
    calls = Collector()

    def stuck_once(msg: can.Message) -> None:
        calls(msg)
        if not entered.is_set():
            entered.set()
            release.wait(TIMEOUT)

    with sim(channel, 1, 0.02), start(channel) as system:
        bus = system.get("bus")
        try:
            bus.subscribe(stuck_once).result(5)
            assert entered.wait(TIMEOUT)
            system.restart_child("bus")  # waits up to 1 s for the callback, then goes on
            assert bus.restarts == 1
        finally:
            release.set()
        calls.wait_for(5)
        names = [t.name for t in threading.enumerate() if "-deliver-" in t.name]
        assert names == ["sessions-bus-deliver-sub-1"]


def test_bus_off_restarts_the_bus_and_error_frames_are_data(
    channel: str, monitor: can.BusABC
) -> None:
    rec = Recorder()
    # Bus filters that pass only the node's frames: error frames bypass id filters (as
    # on SocketCAN), so the bus-off is still seen on an interface filtering in software.
    only_node = [{"can_id": 0x180, "can_mask": 0x780}, {"can_id": 0x580, "can_mask": 0x780}]
    with sim(channel, 1) as node, start(channel, filters=only_node) as system:
        system.subscribe(rec)
        bus = system.get("bus")
        _, frames = bus.subscribe_queue().result(5)
        # An error frame that is not bus-off (controller problems) is delivered as data.
        monitor.send(can.Message(arbitration_id=0x04, is_error_frame=True, data=bytes(8)))
        assert frames.get(timeout=TIMEOUT).is_error_frame
        assert bus.restarts == 0

        node.bus_off()
        rec.wait_for(lambda e: isinstance(e, ChildFaulted))
        fault = rec.of(ChildFaulted)[0]
        assert "BusOffError" in fault.error and not fault.during_start
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        with pytest.raises(can.CanTimeoutError):  # the node is off the bus
            reply_of(bus.request(request_message(encode_get_speed(), 1), response_id(1), 0.2))
        node.recover()
        reply = reply_of(bus.request(set_speed(1, 700), response_id(1)))
        assert decode_reply(reply.data) == Reply(CMD_SET_SPEED, STATUS_OK, 700)
        assert bus.restarts == 1


class BusOffWhileConnecting(CANBusActor):
    """Its first connect sees a bus-off frame before the actor serves: the reader's
    report_fault must still restart the bus."""

    armed = True
    reported = threading.Event()

    def connect(self) -> can.BusABC:
        bus = super().connect()
        if type(self).armed:
            type(self).armed = False
            with can.Bus(interface="virtual", channel=self.config.channel) as other:
                other.send(bus_off_frame())
            assert type(self).reported.wait(10), "the reader did not see the bus-off"
        return bus

    def report_fault(self, error: BaseException, resource: Any = None) -> None:
        super().report_fault(error, resource)
        type(self).reported.set()


def test_a_bus_off_seen_while_connecting_still_restarts(channel: str) -> None:
    kind = "tests.test_canbus:BusOffWhileConnecting"
    config = {
        "supervisor": {"backoff": {"initial": 0.01, "jitter": 0}},
        "resources": {"bus": {"kind": kind, "channel": channel}},
    }
    BusOffWhileConnecting.armed = True
    BusOffWhileConnecting.reported.clear()
    with sessions.start(config) as system:  # the fault may come before a subscriber could
        bus = system.get("bus")
        wait_until(lambda: bus.restarts == 1 and bus.state == "running", what="the restart")
        last_fault = system.status()["children"][0]["last_fault"]
        assert last_fault.startswith(("reported fault: BusOffError", "poll: BusOffError"))
        assert bus.bus_state().result(5) == "active"


# -- abort (hangs) ----------------------------------------------------------------------

JOIN = 10.0  # generous bound for threads to end and blocked calls to return after abort()






def threads_named(*prefixes: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefixes) and t.is_alive()]


class StandIn:
    """Stands in for the runtime's incarnation, so a test can call the actor's hooks
    itself: ``connect()`` starts its reader with ``context.spawn``, which needs one.
    Faults reported are kept; ``end()`` detaches and joins the spawned threads, as the
    runner does after ``disconnect()``."""

    def __init__(self, actor: CANBusActor) -> None:
        self.actor = actor
        self.conn: Any = None
        self.faults: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        actor.context.attach(self)

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def report(self, error: BaseException) -> None:
        self.faults.append(error)

    def spawned(self, thread: threading.Thread) -> None:
        self.threads.append(thread)

    def connect(self) -> can.BusABC:
        self.conn = self.actor.resource = self.actor.connect()
        return self.conn

    def end(self) -> None:
        self.actor.context.detach(self)
        for thread in self.threads:
            thread.join(JOIN)
            assert not thread.is_alive(), f"{thread.name} still runs after disconnect()"


def test_abort_ends_the_reader_deliveries_requests_and_periodic_tasks(channel: str) -> None:
    """abort() from another thread: every thread the connection runs ends (the reader,
    the delivery threads, python-can's periodic senders), a request waiting for a reply
    fails, a send fails at once with a fault, and disconnect() works after."""
    actor = CANBusActor(channel=channel, request_timeout=60.0)
    actor.name = "abortbus"
    incarnation = StandIn(actor)
    bus = incarnation.connect()
    seen = Collector()
    actor.subscribe(seen)
    actor.send_periodic(can.Message(arbitration_id=0x3A1, data=b"\x01"), 0.01)
    waiting = actor.request(request_message(encode_get_speed(), 1), response_id(1)).future
    owned = threads_named("sessions-abortbus-", "Cyclic send task for 0x3A1")
    assert len(owned) == 3  # the reader, one delivery thread, one periodic sender
    abort_from_another_thread(actor, bus)
    for thread in owned:
        thread.join(JOIN)
        assert not thread.is_alive(), f"{thread.name} still runs after abort()"
    with pytest.raises(sessions.ResourceFault, match="aborted"):
        waiting.result(JOIN)
    with pytest.raises(can.CanOperationError, match="aborted") as info:
        actor.send(arbitration_id=0x123, data=b"\x01")
    assert info.value.error_code == errno.EBADF and actor.is_fault(info.value)
    actor.abort(bus)  # idempotent
    closer = in_thread(lambda: actor.disconnect(bus))
    assert closer.result(JOIN) is None
    incarnation.end()
    with pytest.raises(can.CanOperationError, match="closed bus"):
        bus.send(can.Message(arbitration_id=0x1))
    assert actor.stats()["pending_requests"] == 0


def test_a_send_blocked_on_a_frozen_node_returns_after_abort(channel: str) -> None:
    """A node that hangs with a full receive queue blocks the actor thread inside the
    driver's send. After abort() that send returns with an error (at its finite
    send_timeout: nothing can cut python-can's wait short) and later sends fail at once."""
    node = MotorDriveSim(channel, node_id=1, status_period=None, rx_queue_size=1)
    with node:
        node.freeze()
        actor = CANBusActor(channel=channel, send_timeout=1.0)
        incarnation = StandIn(actor)
        bus = incarnation.connect()
        actor.send(set_speed(1, 100))  # fills the frozen node's queue
        blocked = in_thread(lambda: actor.send(set_speed(1, 200)))
        abort_from_another_thread(actor, bus)
        with pytest.raises(can.CanOperationError):
            blocked.result(JOIN)
        with pytest.raises(can.CanOperationError, match="aborted"):
            actor.send(set_speed(1, 300))
        assert in_thread(lambda: actor.disconnect(bus)).result(JOIN) is None
        node.thaw()
        assert not threads_named("sessions-CANBusActor-")
        incarnation.end()


def test_a_stalled_send_is_a_fault_and_the_late_disconnect_spares_the_new_bus(
    channel: str,
) -> None:
    """Through the runtime: a send stuck on a frozen node past stall_timeout is a fault
    and the bus is reopened while the old thread still waits in the driver (its send
    ends at send_timeout or when the node thaws, well after the runtime's one-second
    grace for an aborted incarnation). When it ends, its late disconnect
    must not touch the new connection: its reader and deliveries keep working."""
    rec = Recorder()
    node = MotorDriveSim(channel, node_id=1, status_period=0.02, rx_queue_size=1)
    options = {"send_timeout": 5.0, "call_timeout": 0.3, "stall_timeout": 0.5}
    with node, start(channel, **options) as system:
        system.subscribe(rec)
        bus = system.get("bus")
        seen = Collector()
        bus.subscribe(seen, [{"can_id": status_id(1), "can_mask": ALL_IDS}]).result(5)
        seen.wait_for(1)
        node.freeze()
        bus.send(set_speed(1, 100)).result(5)  # fills the frozen node's queue
        with pytest.raises(sessions.ResourceFault, match="stall_timeout"):
            bus.send(set_speed(1, 200)).result(JOIN)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1, timeout=JOIN)
        # still blocked in the driver (until send_timeout or the thaw) and counted
        assert system.status()["children"][0]["abandoned"] == 1
        node.thaw()
        wait_until(lambda: system.status()["children"][0]["abandoned"] == 0, JOIN,
                   "the old incarnation's thread to end")
        count = seen.count()
        seen.wait_for(count + 3)  # the new bus still delivers after the late disconnect
        def answer_700(msg: can.Message) -> bool:  # not a late answer to the frozen sends
            return msg.arbitration_id == response_id(1) and msg.data[2:4] == b"\xbc\x02"

        reply = reply_of(bus.request(set_speed(1, 700), answer_700))
        assert decode_reply(reply.data) == Reply(CMD_SET_SPEED, STATUS_OK, 700)
        assert bus.restarts == 1
        assert len(threads_named("sessions-bus-reader")) == 1


@pytest.mark.parametrize("key", ["send_timeout", "request_timeout"])
def test_timeouts_must_be_finite(key: str) -> None:
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start({"resources": {"bus": {"kind": "canbus", key: math.inf}}})
    assert info.value.path == f"resources.bus.{key}"


# -- config and facades ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "path", "text"),
    [
        ({"bitrate": "fast"}, "resources.bus.bitrate", "integer"),
        ({"bitrate": 0}, "resources.bus.bitrate", "> 0"),
        ({"interface": "nope"}, "resources.bus.interface", "unknown python-can interface"),
        ({"filters": [{"can_id": 1}]}, "resources.bus.filters[0].can_mask", "missing"),
        ({"filters": [{"can_id": -1, "can_mask": 1}]}, "resources.bus.filters[0].can_id", ">="),
        ({"send_timeout": 0}, "resources.bus.send_timeout", "> 0"),
        ({"can_filters": []}, "resources.bus", "'filters'"),
    ],
)
def test_config_errors_name_the_key(options: dict[str, Any], path: str, text: str) -> None:
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start({"resources": {"bus": {"kind": "canbus", **options}}})
    assert info.value.path == path
    assert text in str(info.value)


def test_the_module_imports_without_python_can() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["can"] = None  # as if python-can were not installed
        import sessions
        from sessions.canbus import CANBusSessionManager
        try:
            sessions.start({"resources": {"bus": {"kind": "canbus"}}})
        except sessions.ConfigError as err:
            assert err.path == "resources.bus.interface", err.path
            assert "applib-sessions[can]" in str(err), str(err)
            print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_session_manager_with_and_async_with(channel: str) -> None:
    with sim(channel, 1):
        with CANBusSessionManager(interface="virtual", channel=channel) as bus:
            assert bus.kind == "canbus"
            reply = reply_of(bus.request(set_speed(1, 42), response_id(1)))
            assert decode_reply(reply.data).value == 42

        async def main() -> int:
            async with CANBusSessionManager("virtual", channel, request_timeout=5.0) as bus:
                result = await bus.request(set_speed(1, 43), response_id(1))
                if isinstance(result, concurrent.futures.Future):
                    result = await asyncio.wrap_future(result)
                return decode_reply(result.data).value

        assert asyncio.run(main()) == 43


def test_registry_can_channel_is_a_canbus(channel: str) -> None:
    with sim(channel, 1), sessions.SessionRegistry(can_channel=channel) as registry:
        assert registry.can.kind == "canbus"
        reply = reply_of(registry.can.request(set_speed(1, 9), response_id(1)))
        assert decode_reply(reply.data).value == 9


def test_a_pool_is_lowered_to_one_bus_owner(
    channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One actor per bus: pool_size > 1 is lowered to 1 with a warning naming why."""
    with start(channel, pool_size=3) as system:
        assert system.status()["children"][0]["type"] == "resource"
        assert "pool_size = 3 lowered to 1: a CAN bus has one owner" in caplog.text


def test_a_reply_marked_not_received_still_resolves_a_request(
    channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SocketCAN (python-can) marks every frame sent on this host ``is_rx = False``
    (MSG_DONTROUTE), so a node in another process on vcan, or another resource, replies
    with such frames; ``virtual`` marks only a bus's own echoes so (found by the kernel
    lane). Without receive_own_messages there are no echoes: the reply must match."""
    recv_internal = VirtualBus._recv_internal

    def as_socketcan(self: Any, timeout: float | None) -> tuple[Any, bool]:
        msg, filtered = recv_internal(self, timeout)
        if msg is not None:
            msg.is_rx = False  # sent on the local host, as SocketCAN reports it
        return msg, filtered

    monkeypatch.setattr(VirtualBus, "_recv_internal", as_socketcan)
    with sim(channel, 1), start(channel) as system:
        bus = system.get("bus")
        reply = reply_of(bus.request(set_speed(1, 100), response_id(1), 5))
        assert decode_reply(reply.data) == Reply(CMD_SET_SPEED, STATUS_OK, 100)
    with sim(channel, 1), start(channel, receive_own_messages=True) as system:
        bus = system.get("bus")
        with pytest.raises(can.CanTimeoutError):  # cannot be told from an echo: documented
            reply_of(bus.request(set_speed(1, 100), response_id(1), 0.3))


def test_fd_frames_need_an_fd_bus_as_on_socketcan(channel: str, monitor: can.BusABC) -> None:
    """SocketCAN refuses an FD frame on a classic socket (EINVAL) and never delivers FD
    frames to one; python-can's ``virtual`` does both. The kind behaves as the kernel on
    every interface: a clear ValueError before sending, and no FD frame received."""
    fd_frame = can.Message(arbitration_id=0x7F0, data=bytes(64), is_fd=True, is_extended_id=False)
    with start(channel) as system:
        bus = system.get("bus")
        _, q = bus.subscribe_queue().result(5)
        with pytest.raises(ValueError, match="opened with fd = false: set fd = true"):
            bus.send(fd_frame).result(5)
        with pytest.raises(ValueError, match="opened with fd = false"):
            bus.send(arbitration_id=0x7F0, data=bytes(12), is_fd=True).result(5)
        with pytest.raises(ValueError, match="opened with fd = false"):
            bus.send_periodic(fd_frame, 0.1).result(5)
        with pytest.raises(ValueError, match="opened with fd = false"):
            bus.request(fd_frame, 0x7F1, 1.0).result(5)
        long_classic = can.Message(arbitration_id=0x10, data=bytes(12), is_extended_id=False)
        with pytest.raises(ValueError, match="at most 8 data bytes, got 12"):
            bus.send(long_classic).result(5)
        monitor.send(fd_frame)  # from a plain virtual bus: virtual would deliver it
        monitor.send(can.Message(arbitration_id=0x11, data=b"ok", is_extended_id=False))
        got = q.get(timeout=TIMEOUT)
        assert (got.arbitration_id, got.is_fd) == (0x11, False)  # the FD frame never came
        assert bus.restarts == 0 and bus.stats().result(5)["received"] == 1
    with start(channel, fd=True) as system:
        bus = system.get("bus")
        _, q = bus.subscribe_queue().result(5)
        bus.send(fd_frame).result(5)
        assert recv_until(monitor, lambda m: m.arbitration_id == 0x7F0).is_fd
        monitor.send(fd_frame)
        assert bytes(q.get(timeout=TIMEOUT).data) == bytes(64)
