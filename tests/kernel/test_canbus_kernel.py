"""The ``canbus`` kind against SocketCAN ``vcan0`` (kernel 6.1, in the lane's guest):
``interface = "socketcan"``, can-raw for frames, can-bcm for periodic tasks.

vcan: classic, extended-id, remote and (MTU 72 by default) CAN FD frames; a bus does not
receive its own frames; ``ip link set down`` makes send/recv fail with ENETDOWN, ``ip
link del`` with ENXIO (send) / ENODEV (recv, open), and a bus opened before the interface
was re-added stays broken: it must be reopened.
"""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Iterator
from typing import Any

import can
import pytest

import sessions
from sessions.actors.canbus.sim import (
    CMD_GET_SPEED,
    CMD_SET_SPEED,
    STATUS_OK,
    MotorDriveSim,
    Reply,
    decode_reply,
    encode_get_speed,
    encode_set_speed,
    request_message,
    response_id,
)
from tests.kernel.lane import VCAN, busybox, ensure_vcan, system_config
from tests.support import wait_until

pytestmark = pytest.mark.kernel

WAIT = 20.0  # for one frame (Python in the guest is 20-40x slower than on a host)


@pytest.fixture(autouse=True)
def vcan_back() -> Iterator[None]:
    """vcan0 present and up before and after every test, whatever a test did to it."""
    ensure_vcan()
    yield
    ensure_vcan()


def canbus(*names: str, **options: Any) -> dict[str, Any]:
    spec = {"kind": "canbus", "interface": "socketcan", "channel": VCAN, **options}
    return system_config({name: dict(spec) for name in names})


def next_frame(q: queue.Queue[can.Message], arbitration_id: int | None = None) -> can.Message:
    """The next frame (with that id, skipping others) within ``WAIT``."""
    deadline = time.monotonic() + WAIT
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no frame (id {arbitration_id}) within {WAIT}s"
        msg = q.get(timeout=left)
        if arbitration_id is None or msg.arbitration_id == arbitration_id:
            return msg


def drain(q: queue.Queue[can.Message]) -> list[can.Message]:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def serving_again(*handles: Any, restarts: int = 1) -> None:
    for h in handles:
        wait_until(
            lambda h=h: h.restarts >= restarts and h.state == "running",
            timeout=60,
            what=f"{h.name} restarted and running",
        )


def delivered(tx: Any, q: queue.Queue[can.Message], arbitration_id: int, data: bytes) -> None:
    """Send until the frame arrives (an incarnation opened while the link was still
    down may fault once more on its first send): within ``WAIT``."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            tx.send(arbitration_id=arbitration_id, data=data).result()
        except sessions.ResourceFault:
            continue
        try:
            msg = q.get(timeout=1.0)
        except queue.Empty:
            continue
        assert (msg.arbitration_id, bytes(msg.data)) == (arbitration_id, data)
        return
    raise AssertionError(f"frame {arbitration_id:#x} never arrived")


def test_classic_extended_and_remote_frames_between_two_resources() -> None:
    with sessions.start(canbus("a", "b")) as system:
        a, b = system.get("a"), system.get("b")
        _, qa = a.subscribe_queue().result()
        _, qb = b.subscribe_queue().result()
        a.send(arbitration_id=0x123, data=b"\x01\x02\x03").result()
        msg = next_frame(qb)
        assert (msg.arbitration_id, bytes(msg.data), msg.is_extended_id) == (
            0x123, b"\x01\x02\x03", False)
        b.send(arbitration_id=0x1ABCDEF0, data=b"\xff" * 8, is_extended_id=True).result()
        msg = next_frame(qa)
        assert (msg.arbitration_id, msg.is_extended_id, len(msg.data)) == (0x1ABCDEF0, True, 8)
        a.send(arbitration_id=0x200, is_remote_frame=True, dlc=4).result()
        msg = next_frame(qb)
        assert (msg.arbitration_id, msg.is_remote_frame, msg.dlc) == (0x200, True, 4)
        assert drain(qa) == []  # a bus does not receive its own frames
        assert a.restarts == 0 and b.restarts == 0


def test_can_fd_64_byte_frames() -> None:
    with sessions.start(canbus("a", "b", fd=True)) as system:
        a, b = system.get("a"), system.get("b")
        _, qb = b.subscribe_queue().result()
        data = bytes(range(64))
        a.send(arbitration_id=0x7F0, data=data, is_fd=True, bitrate_switch=True).result()
        msg = next_frame(qb)
        assert (bytes(msg.data), msg.is_fd, msg.bitrate_switch) == (data, True, True)


def test_fd_frames_and_a_classic_bus() -> None:
    """A classic (fd = false) bus: sending an FD frame is a clear caller error (the kind
    checks first; the kernel would say EINVAL), and it never receives FD frames."""
    spec = {"kind": "canbus", "interface": "socketcan", "channel": VCAN}
    config = system_config({"classic": dict(spec), "fd": {**spec, "fd": True}})
    with sessions.start(config) as system:
        classic, fd = system.get("classic"), system.get("fd")
        _, q = classic.subscribe_queue().result()
        with pytest.raises(ValueError, match="opened with fd = false"):
            classic.send(arbitration_id=0x7F0, data=bytes(64), is_fd=True).result()
        fd.send(arbitration_id=0x7F0, data=bytes(64), is_fd=True).result()
        fd.send(arbitration_id=0x7F1, data=b"\x01").result()  # classic frame: both see it
        msg = next_frame(q)
        assert (msg.arbitration_id, msg.is_fd) == (0x7F1, False)
        assert classic.restarts == 0 and fd.restarts == 0


def test_request_and_response_between_resources() -> None:
    """The replier is another resource in this process: on SocketCAN its frames reach
    the requester marked is_rx False (sent on this host), like every local frame."""
    with sessions.start(canbus("client", "server")) as system:
        client, server = system.get("client"), system.get("server")

        def answer(msg: can.Message) -> None:
            if msg.arbitration_id == 0x300:
                server.send(arbitration_id=0x301, data=bytes(msg.data)[::-1]).result()

        server.subscribe(answer).result()
        request = can.Message(arbitration_id=0x300, data=b"\x01\x02\x03", is_extended_id=False)
        reply = client.request(request, 0x301, timeout=WAIT).result(WAIT + 5)
        assert (reply.arbitration_id, bytes(reply.data)) == (0x301, b"\x03\x02\x01")


def test_request_and_response_with_the_simulated_node_on_vcan() -> None:
    """The library's MotorDriveSim, on its own SocketCAN socket, answers the kind's
    requests over the kernel as it does over python-can's ``virtual``."""
    node = MotorDriveSim(VCAN, interface="socketcan", node_id=5, status_period=None,
                         ramp_rpm_per_s=math.inf)
    with node, sessions.start(canbus("drive")) as system:
        drive = system.get("drive")
        reply = drive.request(request_message(encode_set_speed(1200), 5), response_id(5),
                              timeout=WAIT).result(WAIT + 5)
        assert decode_reply(reply.data) == Reply(CMD_SET_SPEED, STATUS_OK, 1200)
        reply = drive.request(request_message(encode_get_speed(), 5), response_id(5),
                              timeout=WAIT).result(WAIT + 5)
        assert decode_reply(reply.data) == Reply(CMD_GET_SPEED, STATUS_OK, 1200)


def test_error_frames_on_vcan_bus_off_restarts_others_are_data() -> None:
    """vcan makes no error frames itself, but carries those another socket sends, in
    the shape SocketCAN reports controller errors: a bus-off one (MotorDriveSim's,
    error class CAN_ERR_BUSOFF) restarts the bus; another class is data."""
    node = MotorDriveSim(VCAN, interface="socketcan", node_id=6, status_period=None,
                         ramp_rpm_per_s=math.inf)
    with node, sessions.start(canbus("drive")) as system:
        drive = system.get("drive")
        _, q = drive.subscribe_queue().result()
        with can.Bus(interface="socketcan", channel=VCAN) as other:
            other.send(can.Message(arbitration_id=0x08, is_error_frame=True, data=bytes(8),
                                   is_extended_id=False))  # CAN_ERR_PROT: a protocol error
            msg = next_frame(q)
            assert (msg.is_error_frame, msg.arbitration_id) == (True, 0x08)
        assert drive.restarts == 0
        node.bus_off()
        serving_again(drive)
        node.recover()
        reply = drive.request(request_message(encode_get_speed(), 6), response_id(6),
                              timeout=WAIT).result(WAIT + 5)
        assert decode_reply(reply.data).command == CMD_GET_SPEED


def test_link_down_and_up_replays_filters_and_subscribers_keep_receiving() -> None:
    with sessions.start(canbus("tx", "rx")) as system:
        tx, rx = system.get("tx"), system.get("rx")
        rx.set_filters([{"can_id": 0x100, "can_mask": 0x7FF, "extended": False}]).result()
        _, q = rx.subscribe_queue().result()
        tx.send(arbitration_id=0x101, data=b"\x00").result()
        tx.send(arbitration_id=0x100, data=b"\x01").result()
        assert bytes(next_frame(q).data) == b"\x01"  # 0x101 filtered out

        busybox("ip", "link", "set", VCAN, "down")  # both readers: ENETDOWN, a fault
        wait_until(lambda: tx.restarts >= 1 and rx.restarts >= 1, timeout=60,
                   what="both buses faulted on the down link")
        busybox("ip", "link", "set", VCAN, "up")
        serving_again(tx, rx)

        drain(q)
        delivered(tx, q, 0x100, b"\x04")  # the same queue keeps receiving
        tx.send(arbitration_id=0x101, data=b"\x03").result()
        tx.send(arbitration_id=0x100, data=b"\x05").result()
        assert bytes(next_frame(q).data) == b"\x05"  # 0x101 filtered: the filter was replayed


def test_link_deleted_and_re_added_recreates_periodic_tasks() -> None:
    with sessions.start(canbus("tx", "rx")) as system:
        tx, rx = system.get("tx"), system.get("rx")
        rx.set_filters([{"can_id": 0x555, "can_mask": 0x7FF, "extended": False}]).result()
        _, q = rx.subscribe_queue().result()
        frame = can.Message(arbitration_id=0x555, data=b"\x55", is_extended_id=False)
        task = tx.send_periodic(frame, 0.05).result()
        next_frame(q, 0x555)

        busybox("ip", "link", "del", VCAN)  # both readers: ENETDOWN/ENODEV, a fault;
        # reopening fails (ENODEV) until vcan0 is back: no start succeeds meanwhile
        wait_until(lambda: tx.state != "running" and rx.state != "running", timeout=60,
                   what="both buses faulted on the deleted link")
        busybox("ip", "link", "add", "dev", VCAN, "type", "vcan")
        busybox("ip", "link", "set", VCAN, "up")
        serving_again(tx, rx)

        drain(q)
        got = [next_frame(q, 0x555) for _ in range(3)]  # the task runs on the new bus
        assert all(bytes(m.data) == b"\x55" for m in got)
        assert tx.stats().result()["periodic_tasks"][task]["active"] is True
        tx.stop_periodic(task).result()
