"""Tests of the in-process I2C simulator ``sessions.actors.i2c.sim``."""

from __future__ import annotations

import errno
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sessions.actors.i2c.sim import (
    EEPROM24C02,
    TMP102,
    RegisterDevice,
    SimAdapter,
    SimBus,
    SimDevice,
)
from tests.support import in_thread, wait_until

smbus2 = pytest.importorskip("smbus2")
i2c_msg = smbus2.i2c_msg

FAST = math.inf  # clock_hz for tests that do not look at timing
TMP, EE, REG = 0x48, 0x50, 0x20


def fast_bus(*devices: SimDevice) -> SimBus:
    return SimBus(1, devices=list(devices), clock_hz=FAST)


def run_threads(count: int, target: Callable[[int], object]) -> None:
    """Run ``target(i)`` in ``count`` threads and make sure every one of them ended."""
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


def wait_until_acked(bus: SimBus, address: int, timeout: float = 5.0) -> float:
    """ACK-poll ``address`` with quick writes until it answers; return the time taken."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            bus.write_quick(address)
            return time.monotonic() - start
        except OSError as exc:
            assert exc.errno == errno.ENXIO
            assert time.monotonic() < deadline, "device never came back"
            time.sleep(0.0005)


def assert_oserror(exc_info: pytest.ExceptionInfo[OSError], code: int) -> None:
    assert exc_info.value.errno == code
    assert os.strerror(code) in str(exc_info.value)


# --------------------------------------------------------------------------- packaging


def test_imports_without_smbus2() -> None:
    code = ("import sys; sys.modules['smbus2'] = None; "
            "import sessions.sim.i2c as m; m.SimBus()")
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0, result.stderr


def test_has_the_smbus2_method_surface() -> None:
    public = {n for n in dir(smbus2.SMBus) if not n.startswith("_")}
    missing = public - set(dir(SimBus)) - {"fd", "funcs"}  # file-descriptor details
    assert not missing


# --------------------------------------------------------------------------- lifecycle


def test_bus_without_number_is_closed_until_open() -> None:
    bus = SimBus(devices=[RegisterDevice(REG)], clock_hz=FAST)
    assert bus.closed
    with pytest.raises(OSError) as exc_info:
        bus.read_byte(REG)
    assert_oserror(exc_info, errno.EBADF)
    bus.open("/dev/i2c-7")
    assert bus.bus == "/dev/i2c-7" and not bus.closed
    assert bus.read_byte(REG) == 0


def test_context_manager_closes_and_close_resets_state() -> None:
    with fast_bus(RegisterDevice(REG)) as bus:
        bus.pec = 1
        bus.read_byte(REG)
        assert bus.address == REG and bus.pec == 1
    assert bus.closed and bus.address is None and bus.pec == 0
    with pytest.raises(OSError) as exc_info:
        bus.write_quick(REG)
    assert_oserror(exc_info, errno.EBADF)
    bus.close()  # idempotent


def test_open_rejects_bad_bus_type() -> None:
    with pytest.raises(TypeError):
        SimBus(1.5)  # type: ignore[arg-type]


def test_pec_and_force_attributes() -> None:
    bus = fast_bus(RegisterDevice(REG))
    assert bus.pec == 0 and bus.force is False
    bus.enable_pec()
    assert bus.pec == 1
    bus.pec = False
    assert bus.pec == 0
    bus.write_byte_data(REG, 1, 2, force=True)  # accepted, no effect
    assert bus.read_byte_data(REG, 1) == 2


def test_devices_attach_detach() -> None:
    reg = RegisterDevice(REG)
    bus = SimBus(1, devices={REG: reg}, clock_hz=FAST)
    assert bus.devices == {REG: reg}
    bus.attach(TMP102(TMP))
    assert sorted(bus.devices) == [REG, TMP]
    with pytest.raises(ValueError, match="0x48"):
        bus.attach(TMP102(TMP))
    assert bus.detach(REG) is reg
    with pytest.raises(OSError) as exc_info:
        bus.read_byte(REG)
    assert_oserror(exc_info, errno.ENXIO)
    with pytest.raises(KeyError, match="0x20"):
        bus.detach(REG)


def test_mapping_key_must_match_device_address() -> None:
    with pytest.raises(ValueError, match="0x21"):
        SimBus(devices={0x21: RegisterDevice(REG)})


def test_missing_device_nacks_like_the_kernel() -> None:
    bus = fast_bus()
    for call in (lambda: bus.write_quick(0x33), lambda: bus.read_byte_data(0x33, 0)):
        with pytest.raises(OSError) as exc_info:
            call()
        assert_oserror(exc_info, errno.ENXIO)


# --------------------------------------------------------------------------- SMBus calls


def test_byte_calls_on_8_bit_registers() -> None:
    reg = RegisterDevice(REG, initial={0x10: 0xAA, 0x11: 0xBB})
    bus = fast_bus(reg)
    assert bus.read_byte_data(REG, 0x10) == 0xAA
    bus.write_byte_data(REG, 0x12, 0xCC)
    assert reg[0x12] == 0xCC
    bus.write_byte(REG, 0x10)  # sets the pointer
    assert reg.pointer == 0x10
    # read_byte reads at the pointer, which auto-increments and persists
    assert [bus.read_byte(REG) for _ in range(3)] == [0xAA, 0xBB, 0xCC]
    assert reg.pointer == 0x13


def test_word_calls_are_little_endian() -> None:
    reg = RegisterDevice(REG)
    bus = fast_bus(reg)
    bus.write_word_data(REG, 0x40, 0x1234)
    assert (reg[0x40], reg[0x41]) == (0x34, 0x12)  # LSB first on the wire
    assert bus.read_word_data(REG, 0x40) == 0x1234


def test_process_call_writes_then_reads_on() -> None:
    reg = RegisterDevice(REG, initial={0x12: 0x01, 0x13: 0x02})
    bus = fast_bus(reg)
    # write [0x10, 0xEF, 0xBE], repeated START, read 2 bytes from the pointer (0x12)
    assert bus.process_call(REG, 0x10, 0xBEEF) == 0x0201
    assert (reg[0x10], reg[0x11]) == (0xEF, 0xBE)


def test_block_data_calls_carry_a_count_byte() -> None:
    reg = RegisterDevice(REG)
    bus = fast_bus(reg)
    bus.write_block_data(REG, 0x20, [7, 8, 9])
    assert [reg[a] for a in range(0x20, 0x24)] == [3, 7, 8, 9]  # count, then data
    assert bus.read_block_data(REG, 0x20) == [7, 8, 9]
    # block process call: block write to 0x30, then block read from the pointer (0x33)
    for address, value in zip(range(0x33, 0x36), [2, 0x55, 0x66], strict=True):
        reg[address] = value
    assert bus.block_process_call(REG, 0x30, [1, 2]) == [0x55, 0x66]
    assert [reg[a] for a in range(0x30, 0x33)] == [2, 1, 2]


def test_block_read_with_bad_count_is_a_protocol_error() -> None:
    bus = fast_bus(RegisterDevice(REG, initial={0: 33}))
    with pytest.raises(OSError) as exc_info:
        bus.read_block_data(REG, 0)
    assert_oserror(exc_info, errno.EPROTO)


def test_i2c_block_calls_and_pointer_wrap() -> None:
    reg = RegisterDevice(REG, registers=16)
    bus = fast_bus(reg)
    bus.write_i2c_block_data(REG, 14, [1, 2, 3, 4])
    assert [reg[a] for a in (14, 15, 0, 1)] == [1, 2, 3, 4]  # wraps to register 0
    assert bus.read_i2c_block_data(REG, 14, 4) == [1, 2, 3, 4]
    assert bus.read_i2c_block_data(REG, 0, 0) == []


def test_out_of_range_pointer_is_nacked() -> None:
    bus = fast_bus(RegisterDevice(REG, registers=16))
    with pytest.raises(OSError) as exc_info:
        bus.read_byte_data(REG, 16)
    assert_oserror(exc_info, errno.EIO)


def test_16_bit_registers_are_big_endian_on_the_wire() -> None:
    reg = RegisterDevice(REG, registers=4, width=16, initial={0: 0x1234, 1: 0xABCD})
    bus = fast_bus(reg)
    assert bus.read_i2c_block_data(REG, 0, 4) == [0x12, 0x34, 0xAB, 0xCD]
    assert bus.read_word_data(REG, 0) == 0x3412  # SMBus words are little-endian
    bus.write_i2c_block_data(REG, 2, [0xBE, 0xEF, 0x99])  # odd trailing byte dropped
    assert (reg[2], reg[3]) == (0xBEEF, 0)
    assert reg.pointer == 3
    # Each read transfer starts at the MSB; a lone MSB does not advance the pointer.
    bus.write_byte(REG, 1)
    assert [bus.read_byte(REG) for _ in range(2)] == [0xAB, 0xAB]
    with pytest.raises(ValueError, match="value"):
        reg[0] = 0x10000


def test_write_quick_acks_present_device() -> None:
    bus = fast_bus(RegisterDevice(REG))
    bus.write_quick(REG)
    assert bus.address == REG


def test_i2c_rdwr_with_smbus2_messages() -> None:
    reg = RegisterDevice(REG, initial={5: 0x11, 6: 0x22, 7: 0x33})
    eeprom = EEPROM24C02(EE, write_cycle_s=0, initial=bytes(range(256)))
    bus = fast_bus(reg, eeprom)
    write, read = i2c_msg.write(REG, [5]), i2c_msg.read(REG, 3)
    bus.i2c_rdwr(write, read)
    assert list(read) == [0x11, 0x22, 0x33]
    # one combined transfer may address several devices
    ee_write, ee_read = i2c_msg.write(EE, [0x80]), i2c_msg.read(EE, 2)
    bus.i2c_rdwr(i2c_msg.write(REG, [9, 0x44]), ee_write, ee_read)
    assert reg[9] == 0x44 and bytes(ee_read) == b"\x80\x81"


def test_i2c_rdwr_with_duck_typed_messages() -> None:
    bus = fast_bus(RegisterDevice(REG, initial={1: 0xAB}))
    write = SimpleNamespace(addr=REG, flags=0, len=1, buf=bytearray([1]))
    read = SimpleNamespace(addr=REG, flags=0x0001, len=2, buf=bytearray(2))
    bus.i2c_rdwr(write, read)
    assert read.buf == bytearray([0xAB, 0])


def test_i2c_rdwr_validation() -> None:
    bus = fast_bus(RegisterDevice(REG))
    with pytest.raises(ValueError, match="i2c_msgs"):
        bus.i2c_rdwr()
    with pytest.raises(ValueError, match=r"i2c_msgs\[1\].addr=0x7f"):
        bus.i2c_rdwr(i2c_msg.read(REG, 1), i2c_msg.read(0x7F, 1))
    ten_bit = SimpleNamespace(addr=REG, flags=0x0010, len=0, buf=bytearray())
    with pytest.raises(ValueError, match="10-bit"):
        bus.i2c_rdwr(ten_bit)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda b: b.read_byte(0x02), "i2c_addr=0x02"),
        (lambda b: b.write_quick(0x78), "i2c_addr=0x78"),
        (lambda b: b.write_byte(REG, 256), "value=256"),
        (lambda b: b.write_byte_data(REG, 0, -1), "value=-1"),
        (lambda b: b.read_byte_data(REG, 256), "register=256"),
        (lambda b: b.write_word_data(REG, 0, 0x10000), "value=65536"),
        (lambda b: b.process_call(REG, 0, -1), "value=-1"),
        (lambda b: b.write_block_data(REG, 0, [0] * 33), "data has 33 bytes"),
        (lambda b: b.block_process_call(REG, 0, [0] * 33), "data has 33 bytes"),
        (lambda b: b.write_i2c_block_data(REG, 0, [1, 256]), r"data\[1\]=256"),
        (lambda b: b.read_i2c_block_data(REG, 0, 33), "length=33"),
    ],
)
def test_arguments_are_checked_against_hardware_limits(
    call: Callable[[SimBus], Any], name: str
) -> None:
    with pytest.raises(ValueError, match=name):
        call(fast_bus(RegisterDevice(REG)))


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="clock_hz"):
        SimBus(clock_hz=0)
    with pytest.raises(ValueError, match="address=0x80"):
        RegisterDevice(0x80)
    with pytest.raises(ValueError, match="width"):
        RegisterDevice(REG, width=12)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="register"):
        RegisterDevice(REG, registers=4, initial={4: 0})
    with pytest.raises(ValueError, match="initial"):
        EEPROM24C02(initial=b"\x00")
    with pytest.raises(ValueError, match="page_size"):
        EEPROM24C02(page_size=6)


# --------------------------------------------------------------------------- TMP102


@pytest.mark.parametrize(
    ("raw", "celsius"),
    [
        (0x7FF0, 127.9375),
        (0x6400, 100.0),
        (0x1900, 25.0),
        (0x0040, 0.25),
        (0x0000, 0.0),
        (0xFFC0, -0.25),
        (0xE700, -25.0),
        (0xC900, -55.0),
    ],
)
def test_tmp102_encode_decode_datasheet_values(raw: int, celsius: float) -> None:
    assert TMP102.decode(raw.to_bytes(2, "big")) == celsius
    assert TMP102.decode(list(raw.to_bytes(2, "big"))) == celsius
    assert TMP102.encode(celsius) == raw.to_bytes(2, "big")


def test_tmp102_encode_rounds_and_clamps() -> None:
    assert TMP102.decode(TMP102.encode(25.03)) == 25.0
    assert TMP102.decode(TMP102.encode(25.04)) == 25.0625
    assert TMP102.decode(TMP102.encode(500.0)) == 127.9375
    assert TMP102.decode(TMP102.encode(-500.0)) == -128.0
    with pytest.raises(ValueError, match="2 bytes"):
        TMP102.decode(b"\x00")


def test_tmp102_registers_over_the_bus() -> None:
    sensor = TMP102(TMP, temperature=21.5, drift=0.0)
    bus = fast_bus(sensor)

    def register(pointer: int) -> int:
        return int.from_bytes(bytes(bus.read_i2c_block_data(TMP, pointer, 2)), "big")

    assert TMP102.decode(bus.read_i2c_block_data(TMP, 0, 2)) == 21.5
    assert (register(1), register(2), register(3)) == (0x60A0, 0x4B00, 0x5000)
    assert TMP102.decode(register(2).to_bytes(2, "big")) == 75.0
    bus.write_i2c_block_data(TMP, 2, [0x12, 0x34])
    assert register(2) == 0x1230  # the 4 low bits read as 0
    bus.write_i2c_block_data(TMP, 1, [0xFF, 0xFF])
    assert register(1) == 0x7FF0  # OS reads 0; R1/R0/AL are read-only
    bus.write_i2c_block_data(TMP, 0, [0, 0])  # temperature is read-only
    assert sensor.pointer == 0
    assert TMP102.decode(bus.read_i2c_block_data(TMP, 0, 2)) == 21.5


def test_tmp102_pointer_persists_and_does_not_increment() -> None:
    bus = fast_bus(TMP102(TMP, drift=0.0))
    bus.write_byte(TMP, 3)
    for _ in range(2):
        msg = i2c_msg.read(TMP, 4)
        bus.i2c_rdwr(msg)
        assert bytes(msg) == b"\x50\x00\x50\x00"  # T_HIGH, repeated


def test_tmp102_drift_is_bounded_and_reproducible() -> None:
    now = [0.0]

    def make(seed: int) -> TMP102:
        return TMP102(temperature=20.0, drift=0.5, seed=seed, clock=lambda: now[0])

    a, b, c = make(1), make(1), make(2)
    assert a.temperature == 20.0  # the drift starts from the given temperature
    trace_a, trace_b, trace_c = [], [], []
    previous = 20.0
    for step in range(1, 121):
        now[0] = step * 10.0
        value = a.temperature
        assert abs(value - previous) <= 0.5 * 10.0 + 1e-9  # never faster than `drift`
        previous = value
        trace_a.append(value)
        trace_b.append(b.temperature)
        trace_c.append(c.temperature)
    assert trace_a == trace_b
    assert trace_a != trace_c
    assert max(trace_a) - min(trace_a) > 1.0  # it does move
    amplitude = 0.5 * TMP102.DRIFT_PERIOD_S / (2 * math.pi)
    assert all(abs(v - 20.0) <= 2 * amplitude for v in trace_a)
    a.temperature = -10.0  # re-anchors: readable at once
    assert a.temperature == -10.0


def test_tmp102_drifts_in_real_time() -> None:
    sensor = TMP102(TMP, temperature=30.0, drift=1.0, seed=3)
    bus = fast_bus(sensor)
    deadline = time.monotonic() + 5.0
    while sensor.temperature == 30.0:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    reading = TMP102.decode(bus.read_i2c_block_data(TMP, 0, 2))
    assert abs(reading - sensor.temperature) <= 0.1


# --------------------------------------------------------------------------- EEPROM


def test_eeprom_write_then_random_read() -> None:
    eeprom = EEPROM24C02(EE)
    bus = fast_bus(eeprom)
    assert eeprom.contents == b"\xff" * 256
    bus.write_i2c_block_data(EE, 0x10, [1, 2, 3, 4])
    wait_until_acked(bus, EE)
    assert bus.read_i2c_block_data(EE, 0x10, 4) == [1, 2, 3, 4]
    assert eeprom.contents[0x10:0x14] == b"\x01\x02\x03\x04"


def test_eeprom_page_write_wraps_within_the_page() -> None:
    eeprom = EEPROM24C02(EE, write_cycle_s=0, initial=bytes(256))
    bus = fast_bus(eeprom)
    bus.write_i2c_block_data(EE, 0x06, [0xA, 0xB, 0xC, 0xD])
    assert eeprom.contents[0:9] == bytes([0xC, 0xD, 0, 0, 0, 0, 0xA, 0xB, 0])
    assert eeprom.pointer == 0x02
    bus.write_i2c_block_data(EE, 0x10, list(range(1, 11)))  # 10 bytes into 8
    assert eeprom.contents[0x10:0x18] == bytes([9, 10, 3, 4, 5, 6, 7, 8])


def test_eeprom_sequential_read_wraps_at_end_of_memory() -> None:
    eeprom = EEPROM24C02(EE, initial=bytes(range(256)))
    bus = fast_bus(eeprom)
    bus.write_byte(EE, 0xFE)  # dummy write: sets the address, no write cycle
    assert not eeprom.busy
    msg = i2c_msg.read(EE, 4)
    bus.i2c_rdwr(msg)
    assert bytes(msg) == b"\xfe\xff\x00\x01"
    assert bus.read_byte(EE) == 0x02  # current-address read continues
    assert eeprom.pointer == 0x03


def test_eeprom_nacks_during_write_cycle_then_recovers() -> None:
    eeprom = EEPROM24C02(EE, write_cycle_s=0.05, initial=bytes(256))
    bus = fast_bus(eeprom)
    started = time.monotonic()
    bus.write_byte_data(EE, 0x42, 0x99)
    for call in (lambda: bus.read_byte_data(EE, 0x42), lambda: bus.write_quick(EE)):
        with pytest.raises(OSError) as exc_info:
            call()
        assert_oserror(exc_info, errno.ENXIO)
    wait_until_acked(bus, EE)
    assert time.monotonic() - started >= 0.05
    assert bus.read_byte_data(EE, 0x42) == 0x99


@settings(max_examples=50, deadline=None)
@given(
    writes=st.lists(
        st.tuples(st.integers(0, 255), st.lists(st.integers(0, 255), min_size=1, max_size=32)),
        max_size=10,
    )
)
def test_eeprom_matches_a_page_model(writes: list[tuple[int, list[int]]]) -> None:
    eeprom = EEPROM24C02(EE, write_cycle_s=0)
    bus = fast_bus(eeprom)
    model = bytearray(b"\xff" * 256)
    for address, data in writes:
        bus.write_i2c_block_data(EE, address, data)
        page = address & ~7
        for i, value in enumerate(data):
            model[page + (address + i) % 8] = value
    assert eeprom.contents == bytes(model)
    assert bytes(bus.read_i2c_block_data(EE, 0, 32)) == bytes(model[:32])


# --------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("kind", "code"), [("nack", errno.ENXIO), ("eio", errno.EIO), ("timeout", errno.ETIMEDOUT)]
)
def test_inject_fails_the_next_count_transfers(kind: Any, code: int) -> None:
    reg = RegisterDevice(REG)
    bus = fast_bus(reg)
    bus.inject(kind, count=3)
    for value in range(3):
        with pytest.raises(OSError) as exc_info:
            bus.write_byte_data(REG, 0, value + 1)
        assert_oserror(exc_info, code)
    assert reg[0] == 0  # failed transfers never reached the device
    bus.write_byte_data(REG, 0, 7)
    assert reg[0] == 7


def test_inject_for_one_address_spares_the_others() -> None:
    bus = fast_bus(RegisterDevice(REG), TMP102(TMP, drift=0.0))
    bus.inject("nack", address=TMP)
    bus.read_byte(REG)
    with pytest.raises(OSError) as exc_info:
        bus.read_byte(TMP)
    assert_oserror(exc_info, errno.ENXIO)
    bus.read_byte(TMP)


def test_faults_are_used_in_order_and_can_be_cleared() -> None:
    bus = fast_bus(RegisterDevice(REG))
    bus.inject("eio")
    bus.inject("timeout")
    codes = []
    for _ in range(2):
        with pytest.raises(OSError) as exc_info:
            bus.read_byte(REG)
        codes.append(exc_info.value.errno)
    assert codes == [errno.EIO, errno.ETIMEDOUT]
    bus.inject("nack", count=5)
    bus.adapter.clear_faults()
    bus.read_byte(REG)


def test_inject_validation() -> None:
    bus = fast_bus(RegisterDevice(REG))
    with pytest.raises(ValueError, match=r"'melt'.*nack.*eio.*timeout.*disconnect"):
        bus.inject("melt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count"):
        bus.inject("nack", count=0)
    with pytest.raises(ValueError, match="address"):
        bus.inject("disconnect", address=REG)
    with pytest.raises(ValueError, match="address=0x7f"):
        bus.inject("nack", address=0x7F)


def test_disconnect_lasts_until_reopen() -> None:
    eeprom = EEPROM24C02(EE, write_cycle_s=0)
    devices: list[SimDevice] = [eeprom, TMP102(TMP, drift=0.0)]
    bus = SimBus(1, devices=devices, clock_hz=FAST)
    bus.write_i2c_block_data(EE, 0, [1, 2, 3])
    bus.inject("disconnect")
    for _ in range(3):
        for address in (EE, TMP):
            with pytest.raises(OSError) as exc_info:
                bus.read_byte(address)
            assert_oserror(exc_info, errno.ENODEV)
    bus.close()
    bus.open(1)
    assert bus.read_i2c_block_data(EE, 0, 3) == [1, 2, 3]
    # What a restarting actor does: close, then build a new bus on the same devices.
    bus.inject("disconnect")
    bus.close()
    reopened = SimBus(1, devices=devices, clock_hz=FAST)
    assert reopened.read_i2c_block_data(EE, 0, 3) == [1, 2, 3]  # state kept


def test_disconnect_on_a_shared_adapter() -> None:
    adapter = SimAdapter([RegisterDevice(REG)])
    first = SimBus(1, devices=adapter, clock_hz=FAST)
    second = SimBus(1, devices=adapter, clock_hz=FAST)
    adapter.inject("disconnect")
    for bus in (first, second):
        with pytest.raises(OSError) as exc_info:
            bus.read_byte(REG)
        assert_oserror(exc_info, errno.ENODEV)
    first.open(1)  # reopening one handle does not revive the other
    first.read_byte(REG)
    with pytest.raises(OSError):
        second.read_byte(REG)
    SimBus(1, devices=adapter, clock_hz=FAST).read_byte(REG)  # new handles work


def test_faults_on_a_shared_adapter_survive_a_reopen() -> None:
    adapter = SimAdapter([RegisterDevice(REG)])
    bus = SimBus(1, devices=adapter, clock_hz=FAST)
    adapter.inject("eio", count=2)
    with pytest.raises(OSError):
        bus.read_byte(REG)
    bus.close()
    bus = SimBus(1, devices=adapter, clock_hz=FAST)
    with pytest.raises(OSError):
        bus.read_byte(REG)
    bus.read_byte(REG)


# --------------------------------------------------------------------------- hangs

JOIN = 10.0  # generous bound for a call that must return once released or aborted




def wait_stalled(adapter: SimAdapter) -> None:
    """Until a transfer is stalled (a state with no event of its own to wait on)."""
    wait_until(lambda: adapter.stalled == 1, JOIN, "a stalled transfer")


def test_a_hang_holds_the_bus_until_released() -> None:
    """A hung device holds SCL low: the stalled transfer blocks, every other transfer on
    the adapter waits behind it, and release() ends it with ETIMEDOUT (the bus driver's
    timeout); the ones behind it then run."""
    reg = RegisterDevice(REG)
    adapter = SimAdapter([reg, TMP102(TMP, drift=0.0)])
    hung, other = (SimBus(1, devices=adapter, clock_hz=FAST) for _ in range(2))
    adapter.inject("hang", address=TMP)
    stalled = in_thread(lambda: hung.read_byte(TMP))
    wait_stalled(adapter)
    behind = in_thread(lambda: other.write_byte_data(REG, 1, 9))
    assert not stalled.done() and not behind.done()
    adapter.release()
    with pytest.raises(OSError) as exc_info:
        stalled.result(JOIN)
    assert_oserror(exc_info, errno.ETIMEDOUT)
    assert behind.result(JOIN) is None and reg[1] == 9
    assert adapter.stalled == 0
    hung.read_byte(TMP)  # the hang was used up


def test_abort_ends_a_stalled_transfer_at_once_with_ebadf() -> None:
    """SimBus.abort() from another thread: the transfer stalled on that handle fails
    with EBADF, later ones too until open(); close() works; another handle waits on."""
    adapter = SimAdapter([RegisterDevice(REG)])
    bus = SimBus(1, devices=adapter, clock_hz=FAST)
    adapter.inject("hang", count=2)
    stalled = in_thread(lambda: bus.read_byte_data(REG, 0))
    wait_stalled(adapter)
    aborter = threading.Thread(target=bus.abort)
    aborter.start()
    aborter.join(JOIN)
    assert not aborter.is_alive()  # abort() never blocks
    with pytest.raises(OSError) as exc_info:
        stalled.result(JOIN)
    assert_oserror(exc_info, errno.EBADF)
    assert "aborted" in str(exc_info.value) and bus.aborted
    with pytest.raises(OSError) as exc_info:
        bus.write_quick(REG)
    assert_oserror(exc_info, errno.EBADF)
    bus.abort()  # idempotent
    bus.close()
    assert bus.closed and adapter.stalled == 0
    bus.open(1)  # a reopened handle is no longer aborted: the second hang strikes it
    assert not bus.aborted
    stalled = in_thread(lambda: bus.read_byte(REG))
    wait_stalled(adapter)
    other = SimBus(1, devices=adapter, clock_hz=FAST)
    behind = in_thread(lambda: other.read_byte(REG))
    other.abort()  # the one waiting behind the hang fails; the stalled one stays
    with pytest.raises(OSError) as exc_info:
        behind.result(JOIN)
    assert_oserror(exc_info, errno.EBADF)
    assert not stalled.done()
    adapter.clear_faults()  # also ends a hang in progress
    with pytest.raises(OSError) as exc_info:
        stalled.result(JOIN)
    assert_oserror(exc_info, errno.ETIMEDOUT)
    assert bus.read_byte(REG) == 0


# --------------------------------------------------------------------------- timing


@pytest.mark.parametrize(
    ("call", "wire_bytes"),
    [
        (lambda b: b.write_quick(REG), 1),
        (lambda b: b.read_byte_data(REG, 0), 4),  # addr, reg, addr, data
        (lambda b: b.read_i2c_block_data(REG, 0, 32), 35),
        (lambda b: b.write_block_data(REG, 0, [0] * 10), 13),  # addr, reg, count, data
        (lambda b: b.i2c_rdwr(i2c_msg.write(REG, [0]), i2c_msg.read(REG, 4)), 7),
    ],
)
def test_transfer_takes_at_least_its_bit_time(
    call: Callable[[SimBus], Any], wire_bytes: int
) -> None:
    clock_hz = 10_000
    bus = SimBus(1, devices=[RegisterDevice(REG)], clock_hz=clock_hz)
    started = time.perf_counter()
    call(bus)
    elapsed = time.perf_counter() - started
    assert elapsed >= wire_bytes * 9 / clock_hz * 0.99  # lower bound only


def test_pec_byte_counts_in_the_bit_time() -> None:
    bus = SimBus(1, devices=[RegisterDevice(REG)], clock_hz=10_000)
    bus.pec = 1
    started = time.perf_counter()
    bus.read_byte_data(REG, 0)
    assert time.perf_counter() - started >= 5 * 9 / 10_000 * 0.99


def test_transfers_hold_the_bus_for_their_whole_duration() -> None:
    bus = SimBus(1, devices=[RegisterDevice(REG)], clock_hz=10_000)
    one_transfer = 35 * 9 / 10_000  # a 32-byte block read
    started = time.perf_counter()
    run_threads(4, lambda _: bus.read_i2c_block_data(REG, 0, 32))
    assert time.perf_counter() - started >= 4 * one_transfer * 0.99  # serialized


# --------------------------------------------------------------------------- concurrency

THREADS = 8
RACE_BOUND = 5_000  # iterations per thread before giving up on seeing a race
LOCKED_ITERATIONS = 200


def pointer_then_read(
    bus: SimBus,
    address: int,
    targets: list[tuple[int, int]],
    lock: threading.Lock | None,
    iterations: int,
) -> int:
    """Threads set the pointer then read, as two calls; return how many reads were wrong.

    Thread ``i`` points at ``targets[i % len(targets)] = (pointer, expected byte)``.
    Without ``lock`` the threads stop at the first wrong read.
    """
    wrong = 0
    count_lock = threading.Lock()
    seen_race = threading.Event()

    def worker(index: int) -> None:
        nonlocal wrong
        pointer, expected = targets[index % len(targets)]
        for _ in range(iterations):
            if lock is None:
                if seen_race.is_set():
                    return
                bus.write_byte(address, pointer)
                value = bus.read_byte(address)
            else:
                with lock:
                    bus.write_byte(address, pointer)
                    value = bus.read_byte(address)
            if value != expected:
                with count_lock:
                    wrong += 1
                seen_race.set()

    run_threads(THREADS, worker)
    return wrong


TMP102_TARGETS = [(0, 0x19), (1, 0x60), (2, 0x4B), (3, 0x50)]  # MSBs at 25 C, defaults


def test_tmp102_pointer_race_between_threads() -> None:
    bus = SimBus(1, devices=[TMP102(TMP, drift=0.0)], clock_hz=1_000_000)
    assert pointer_then_read(bus, TMP, TMP102_TARGETS, None, RACE_BOUND) >= 1


def test_tmp102_no_race_with_a_lock_across_both_calls() -> None:
    bus = SimBus(1, devices=[TMP102(TMP, drift=0.0)], clock_hz=1_000_000)
    lock = threading.Lock()
    assert pointer_then_read(bus, TMP, TMP102_TARGETS, lock, LOCKED_ITERATIONS) == 0


def test_tmp102_combined_transfer_needs_no_lock() -> None:
    bus = SimBus(1, devices=[TMP102(TMP, drift=0.0)], clock_hz=1_000_000)
    wrong = []

    def worker(index: int) -> None:
        pointer, expected = TMP102_TARGETS[index % 4]
        for _ in range(LOCKED_ITERATIONS):
            if bus.read_i2c_block_data(TMP, pointer, 2)[0] != expected:
                wrong.append(pointer)

    run_threads(THREADS, worker)
    assert wrong == []


EEPROM_TARGETS = [(a, a ^ 0x5A) for a in range(0, 256, 32)]  # distinct bytes


def eeprom_bus() -> SimBus:
    memory = bytearray(256)
    for address, value in EEPROM_TARGETS:
        memory[address] = value
    return SimBus(1, devices=[EEPROM24C02(EE, initial=bytes(memory))], clock_hz=1_000_000)


def test_eeprom_address_race_between_threads() -> None:
    assert pointer_then_read(eeprom_bus(), EE, EEPROM_TARGETS, None, RACE_BOUND) >= 1


def test_eeprom_no_race_with_a_lock_across_both_calls() -> None:
    lock = threading.Lock()
    assert pointer_then_read(eeprom_bus(), EE, EEPROM_TARGETS, lock, LOCKED_ITERATIONS) == 0


@pytest.mark.parametrize(
    ("method", "args", "error", "match"),
    [
        ("read_byte_data", (True, 0), TypeError, "i2c_addr must be an int, got bool"),
        ("write_byte_data", (REG, 0, 256), ValueError, "value=256"),
        ("write_i2c_block_data", (REG, 0, "ab"), TypeError, "data must be a sequence"),
        ("write_block_data", (REG, 0, [0] * 33), ValueError, "33 bytes"),
    ],
)
def test_bad_arguments_fail_as_on_the_actor(
    method: str, args: tuple[Any, ...], error: type[Exception], match: str
) -> None:
    """The simulator checks arguments with the same rules and messages as the I2C
    actor (one shared set of checks), so a test on a bare ``SimBus`` sees what a
    handle caller would."""
    bus = fast_bus(RegisterDevice(REG))
    with pytest.raises(error, match=match):
        getattr(bus, method)(*args)
    assert bus.read_byte_data(REG, 0) == 0  # nothing was written
