"""The simulated CAN motor drive: protocol, ramp, status broadcast, faults and lifecycle."""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import can
import pytest

from sessions.actors.canbus.sim import (
    CAN_ERR_BUSOFF,
    CMD_ERROR,
    CMD_GET_SPEED,
    CMD_GET_STATUS,
    CMD_SET_SPEED,
    ERR_MALFORMED,
    ERR_UNKNOWN_COMMAND,
    STATUS_OK,
    STATUS_OUT_OF_RANGE,
    DriveState,
    MotorDriveSim,
    Reply,
    bus_off_frame,
    decode_reply,
    decode_status_frame,
    encode_get_speed,
    encode_get_status,
    encode_set_speed,
    is_bus_off_frame,
    request_id,
    request_message,
    response_id,
    status_id,
)

NODE = 0x05
TIMEOUT = 5.0


@pytest.fixture
def channel() -> str:
    return f"test-sim-can-{uuid.uuid4().hex}"


@pytest.fixture
def client(channel: str) -> Iterator[can.BusABC]:
    # Created before any simulator, so it sees every frame the node sends.
    with can.Bus(interface="virtual", channel=channel) as bus:
        yield bus


def recv_until(
    bus: can.BusABC, pred: Callable[[can.Message], bool], timeout: float = TIMEOUT
) -> can.Message | None:
    """The first frame matching ``pred`` within ``timeout`` seconds, else ``None``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = bus.recv(timeout=left)
        if msg is not None and pred(msg):
            return msg
    return None


def is_reply(msg: can.Message) -> bool:
    return not msg.is_error_frame and msg.arbitration_id == response_id(NODE)


def is_status(msg: can.Message) -> bool:
    return not msg.is_error_frame and msg.arbitration_id == status_id(NODE)


def send_raw(bus: can.BusABC, data: bytes) -> None:
    bus.send(request_message(data, NODE))


def request(bus: can.BusABC, data: bytes, timeout: float = TIMEOUT) -> Reply:
    send_raw(bus, data)
    msg = recv_until(bus, is_reply, timeout)
    assert msg is not None, f"no reply to {data.hex()}"
    return decode_reply(msg.data)


def no_reply(bus: can.BusABC, data: bytes, window: float = 0.3) -> bool:
    send_raw(bus, data)
    return recv_until(bus, is_reply, window) is None


def sim_threads(sim: MotorDriveSim) -> list[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name.startswith(f"sessions-sim-can-{sim.channel}")
    ]


# -- codec ---------------------------------------------------------------------------------


def test_ids_and_encoders() -> None:
    assert (request_id(NODE), response_id(NODE), status_id(NODE)) == (0x605, 0x585, 0x185)
    assert encode_set_speed(-1) == b"\x01\xff\xff"
    assert encode_set_speed(1500) == b"\x01\xdc\x05"
    assert encode_get_speed() == b"\x02"
    assert encode_get_status() == b"\x03"
    with pytest.raises(ValueError):
        encode_set_speed(40000)
    with pytest.raises(ValueError):
        request_id(0x80)
    msg = request_message(encode_get_speed(), NODE)
    assert (msg.arbitration_id, msg.is_extended_id, bytes(msg.data)) == (0x605, False, b"\x02")


def test_decoders() -> None:
    assert decode_reply(b"\x01\x00\x18\xfc") == Reply(CMD_SET_SPEED, STATUS_OK, -1000)
    assert decode_reply(b"\x03\x02\xf6") == Reply(CMD_GET_STATUS, DriveState.AT_SPEED, -10)
    assert decode_reply(b"\xff\x07\x01") == Reply(CMD_ERROR, ERR_UNKNOWN_COMMAND, 0x07)
    for bad in (b"", b"\x01\x00", b"\x03\x00", b"\xff\x01", b"\x42\x00\x00\x00"):
        with pytest.raises(ValueError):
            decode_reply(bad)
    assert decode_status_frame(b"\x01\x64\x00\xe8\x03\x07") == (1, 100, 1000, 7)
    with pytest.raises(ValueError):
        decode_status_frame(b"\x01\x64\x00")


def test_bus_off_frame_matches_socketcan_shape() -> None:
    frame = bus_off_frame()
    assert frame.is_error_frame and not frame.is_extended_id
    assert frame.arbitration_id == CAN_ERR_BUSOFF == 0x40
    assert is_bus_off_frame(frame)
    assert not is_bus_off_frame(can.Message(arbitration_id=CAN_ERR_BUSOFF, is_extended_id=False))
    restarted = can.Message(arbitration_id=0x100, is_error_frame=True, is_extended_id=False)
    assert not is_bus_off_frame(restarted)


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        MotorDriveSim("x", node_id=0)
    with pytest.raises(ValueError):
        MotorDriveSim("x", max_rpm=0)
    with pytest.raises(ValueError):
        MotorDriveSim("x", ramp_rpm_per_s=0)
    with pytest.raises(ValueError):
        MotorDriveSim("x", status_period=-1)


# -- requests ------------------------------------------------------------------------------


def test_set_get_speed_round_trip(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=None, ramp_rpm_per_s=math.inf):
        assert request(client, encode_set_speed(-1200)) == Reply(CMD_SET_SPEED, STATUS_OK, -1200)
        assert request(client, encode_get_speed()) == Reply(CMD_GET_SPEED, 0, -1200)
        state, temperature = request(client, encode_get_status())[1:]
        assert state == DriveState.AT_SPEED
        assert 25 < temperature < 80


def test_other_node_ids_are_ignored(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=None):
        client.send(request_message(encode_get_speed(), NODE + 1))
        assert recv_until(client, lambda m: True, 0.3) is None


def test_out_of_range_keeps_setpoint(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=None, max_rpm=3000) as sim:
        assert request(client, encode_set_speed(3000)).status == STATUS_OK
        assert request(client, encode_set_speed(3001)) == Reply(
            CMD_SET_SPEED, STATUS_OUT_OF_RANGE, 3000
        )
        assert request(client, encode_set_speed(-5000)).status == STATUS_OUT_OF_RANGE
        assert sim.setpoint == 3000


def test_unknown_command(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=None) as sim:
        assert request(client, b"\x42\x01\x02") == Reply(CMD_ERROR, ERR_UNKNOWN_COMMAND, 0x42)
        assert sim.requests_handled == 1


def test_malformed_requests_get_error_replies_and_node_survives(
    channel: str, client: can.BusABC
) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=None) as sim:
        assert request(client, b"") == Reply(CMD_ERROR, ERR_MALFORMED, 0x00)
        assert request(client, b"\x01") == Reply(CMD_ERROR, ERR_MALFORMED, CMD_SET_SPEED)
        assert request(client, b"\x01\x10") == Reply(CMD_ERROR, ERR_MALFORMED, CMD_SET_SPEED)
        # Not requests: remote, error and extended-id frames on the request id are ignored.
        client.send(
            can.Message(arbitration_id=request_id(NODE), is_extended_id=False, is_remote_frame=True)
        )
        client.send(can.Message(arbitration_id=request_id(NODE), is_extended_id=True, data=b"\x02"))
        assert recv_until(client, is_reply, 0.3) is None
        # Trailing padding is fine, and the node still works.
        padded = encode_set_speed(100) + bytes(5)
        assert request(client, padded) == Reply(CMD_SET_SPEED, STATUS_OK, 100)
        assert sim.is_running and sim_threads(sim)


def test_node_survives_an_exception_while_handling(
    channel: str, client: can.BusABC, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=None) as sim:
        original = sim._process
        calls: list[bytes] = []

        def flaky(data: bytes) -> bytes:
            calls.append(data)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return original(data)

        monkeypatch.setattr(sim, "_process", flaky)
        assert no_reply(client, encode_get_speed())
        assert request(client, encode_get_speed()).command == CMD_GET_SPEED


# -- drive model and status ----------------------------------------------------------------


def test_speed_ramps_toward_setpoint(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=None, ramp_rpm_per_s=1000):
        assert request(client, encode_set_speed(1000)).status == STATUS_OK
        seen: list[int] = []
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            seen.append(request(client, encode_get_speed()).value)
            if seen[-1] == 1000:
                break
            time.sleep(0.02)  # pacing between polls, not a timing assumption
        assert seen[-1] == 1000, seen
        assert seen == sorted(seen)
        assert any(0 <= v < 1000 for v in seen), "speed jumped straight to the setpoint"
        assert request(client, encode_get_status()).status == DriveState.AT_SPEED


def test_status_broadcast_rate_and_content(channel: str, client: can.BusABC) -> None:
    period, window = 0.02, 1.0
    with MotorDriveSim(channel, node_id=NODE, status_period=period, ramp_rpm_per_s=math.inf) as sim:
        assert request(client, encode_set_speed(700)).status == STATUS_OK
        frames = []
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            msg = client.recv(timeout=left)
            if msg is not None and is_status(msg):
                frames.append(decode_status_frame(msg.data))
        expected = window / period
        assert len(frames) >= expected * 0.3, f"{len(frames)} status frames, expected ~{expected}"
        counters = [f.counter for f in frames]
        assert all((b - a) % 256 == 1 for a, b in itertools.pairwise(counters))
        assert frames[-1][:3] == (DriveState.AT_SPEED, 700, 700)
        assert sim.status_sent >= len(frames)


def test_status_broadcast_disabled(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=0) as sim:
        assert recv_until(client, lambda m: True, 0.3) is None
        assert sim.status_sent == 0


# -- faults --------------------------------------------------------------------------------


def test_bus_off_then_recover(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=0.02) as sim:
        assert recv_until(client, is_status) is not None
        sim.bus_off()
        sim.bus_off()  # idempotent: one error frame per bus-off
        assert sim.is_bus_off
        err = recv_until(client, lambda m: m.is_error_frame)
        assert err is not None and is_bus_off_frame(err)
        # Nothing at all comes from the node while it is bus-off.
        send_raw(client, encode_get_speed())
        assert recv_until(client, lambda m: True, 0.3) is None
        assert sim.requests_dropped == 1

        sim.recover()
        assert not sim.is_bus_off
        assert request(client, encode_get_speed()).command == CMD_GET_SPEED
        assert recv_until(client, is_status) is not None


def test_silence_drops_requests_but_keeps_broadcasting(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=0.02) as sim:
        sim.silence()
        assert no_reply(client, encode_set_speed(500))
        assert recv_until(client, is_status) is not None
        assert sim.requests_dropped == 1
        assert sim.setpoint == 0, "a dropped request must have no effect"

        sim.unsilence()
        assert request(client, encode_set_speed(500)).status == STATUS_OK


def test_response_delay(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=0.02) as sim:
        sim.set_response_delay(0.3)
        started = time.monotonic()
        send_raw(client, encode_get_speed())
        # Status broadcasts keep flowing while the reply is pending.
        assert recv_until(client, is_status) is not None
        assert recv_until(client, is_reply) is not None
        assert time.monotonic() - started >= 0.25
        sim.set_response_delay(0)
        assert request(client, encode_get_speed()).command == CMD_GET_SPEED
        with pytest.raises(ValueError):
            sim.set_response_delay(-1)


def test_silence_drops_a_delayed_reply_in_flight(channel: str, client: can.BusABC) -> None:
    with MotorDriveSim(channel, node_id=NODE, status_period=None) as sim:
        sim.set_response_delay(0.2)
        send_raw(client, encode_get_speed())
        deadline = time.monotonic() + TIMEOUT
        while sim.requests_handled == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        sim.silence()
        assert recv_until(client, is_reply, 0.5) is None


# -- lifecycle -----------------------------------------------------------------------------


def test_start_stop_idempotent_and_joins_thread(channel: str, client: can.BusABC) -> None:
    sim = MotorDriveSim(channel, node_id=NODE, status_period=0.05)
    assert not sim_threads(sim)
    sim.stop()  # stopping a never-started node is fine
    sim.start()
    sim.start()
    assert len(sim_threads(sim)) == 1
    assert sim.is_running
    sim.stop()
    sim.stop()
    assert not sim.is_running
    assert not sim_threads(sim)
    # The bus is shut down: nothing more arrives once queued frames are drained.
    while client.recv(timeout=0) is not None:
        pass
    assert recv_until(client, lambda m: True, 0.2) is None

    # Restartable, and the drive keeps its setpoint across the restart.
    with sim:
        assert request(client, encode_set_speed(250)).status == STATUS_OK
    with sim:
        assert sim.setpoint == 250
        assert request(client, encode_get_speed()).command == CMD_GET_SPEED
    assert not sim_threads(sim)


def test_bus_off_while_stopped_sends_nothing_and_persists(channel: str, client: can.BusABC) -> None:
    sim = MotorDriveSim(channel, node_id=NODE, status_period=None)
    sim.bus_off()
    with sim:
        assert sim.is_bus_off
        assert no_reply(client, encode_get_speed())
        sim.recover()
        assert request(client, encode_get_speed()).command == CMD_GET_SPEED


# -- hang ----------------------------------------------------------------------------------


def test_a_frozen_node_reads_nothing_and_blocks_senders_once_its_queue_is_full(
    channel: str, client: can.BusABC
) -> None:
    """freeze(): the node hangs. Its bounded receive queue fills, and a sender on the
    channel then waits for its send timeout and fails; thaw() answers what was queued."""
    with MotorDriveSim(channel, node_id=NODE, status_period=0.02, rx_queue_size=1) as sim:
        assert recv_until(client, is_status) is not None
        sim.freeze()
        assert sim.is_frozen
        while client.recv(timeout=0) is not None:  # drain what it sent before the freeze
            pass
        send_raw(client, encode_set_speed(300))  # fills the node's queue (one frame)
        with pytest.raises(can.CanOperationError, match="one or more recipients"):
            client.send(request_message(encode_get_speed(), NODE), timeout=0.1)
        assert recv_until(client, lambda m: True, 0.2) is None  # no reply, no broadcast
        assert sim.requests_handled == 0

        sim.thaw()
        reply = recv_until(client, is_reply)  # the request queued while frozen, late
        assert reply is not None
        assert decode_reply(reply.data) == Reply(CMD_SET_SPEED, STATUS_OK, 300)
        assert recv_until(client, is_status) is not None
        assert request(client, encode_get_speed()).command == CMD_GET_SPEED
    assert not sim_threads(sim)


def test_a_frozen_node_stops_promptly(channel: str) -> None:
    sim = MotorDriveSim(channel, node_id=NODE, status_period=None).start()
    sim.freeze()
    sim.stop()
    assert not sim.is_running and not sim_threads(sim)
    assert "frozen=True" in repr(sim)
