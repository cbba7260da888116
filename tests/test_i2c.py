"""Tests of the ``i2c`` resource kind (``sessions.actors.i2c``) on the simulator."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import itertools
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import sessions
from sessions._tools.cli import main
from sessions.actors.i2c import GuardedBus, I2CActor, sim_adapter
from sessions.actors.i2c.sim import (
    EEPROM24C02,
    TMP102,
    RegisterDevice,
    SimAdapter,
    SimBus,
    SimDevice,
)
from sessions.i2c import I2CSessionManager
from sessions.messages import ChildFaulted, ChildRestarting, ChildStarted
from tests.support import Recorder, abort_from_another_thread, in_thread, wait_until

TMP, EE, REG = 0x48, 0x50, 0x20
FAST = math.inf  # clock_hz for tests that do not look at timing
THREADS = 8


def i2c_config(name: str = "bus", **options: Any) -> dict[str, Any]:
    """A one-resource config on the simulator; fast restarts without jitter."""
    options.setdefault("bus", "sim")
    options.setdefault("clock_hz", FAST)
    return {
        "supervisor": {"backoff": {"initial": 0.01, "max": 0.05, "jitter": 0.0}},
        "resources": {name: {"kind": "i2c", **options}},
    }


def run_threads(count: int, target: Callable[[int], object]) -> None:
    """Run ``target(i)`` in ``count`` threads and make sure every one of them ended."""
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)


def restarted(rec: Recorder, name: str = "bus", restarts: int = 1) -> None:
    """Wait until ``name`` was restarted and is serving again."""
    rec.wait_for(lambda e: isinstance(e, ChildRestarting) and e.name == name, count=restarts)
    rec.wait_for(
        lambda e: isinstance(e, ChildStarted) and e.name == name and e.restarts == restarts
    )


class Failing(SimDevice):
    """A device whose next write phases fail with the given errno codes, then work."""

    def __init__(self, address: int, *codes: int) -> None:
        super().__init__(address)
        self.codes = list(codes)
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        if self.codes:
            code = self.codes.pop(0)
            raise OSError(code, os.strerror(code))
        self.written.append(data)

    def read(self, n: int) -> bytes:
        return bytes(n)


# --------------------------------------------------------------------------- packaging


def test_imports_and_runs_without_smbus2() -> None:
    code = (
        "import sys; sys.modules['smbus2'] = None\n"
        "import sessions, sessions.actors.i2c\n"
        "config = {'resources': {'bus': {'kind': 'i2c', 'bus': 'sim', 'clock_hz': 1e9,\n"
        "          'devices': [{'type': 'tmp102', 'address': 0x48}]}}}\n"
        "with sessions.start(config) as s:\n"
        "    h = s.get('bus')\n"
        "    print(h.scan().result(10), h.i2c_rdwr({'addr': 0x48, 'read': 2}).result(10))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[72] [b'\\x19\\x00']")


def test_hardware_bus_without_smbus2_is_a_config_error() -> None:
    code = (
        "import sys; sys.modules['smbus2'] = None\n"
        "import sessions\n"
        "try:\n"
        "    sessions.start({'resources': {'bus': {'kind': 'i2c', 'bus': 1}}})\n"
        "except sessions.ConfigError as err:\n"
        "    print(err.path, '|', err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("resources.bus |")
    assert "applib-sessions[i2c]" in done.stdout


def test_options_make_a_json_schema() -> None:
    schema = I2CActor.Options.model_json_schema()
    props = schema["properties"]
    assert {"bus", "force", "pec", "process_lock", "lock_path", "devices", "init"} <= set(props)
    assert {"sim_name", "clock_hz", "fault_threshold"} <= set(props)
    assert "adapter" not in props  # a Python object, not config
    assert all(p.get("description") for p in props.values())
    assert "register" in schema["$defs"]["InitWrite"]["properties"]


# --------------------------------------------------------------------------- calls


def every_method_adapter() -> tuple[SimAdapter, RegisterDevice, EEPROM24C02]:
    reg = RegisterDevice(
        REG,
        initial={
            0x10: 0xAA,
            0x11: 0xBB,
            0x12: 0xCC,
            0x62: 0x01,
            0x63: 0x02,
            0x73: 2,
            0x74: 0x55,
            0x75: 0x66,
        },
    )
    eeprom = EEPROM24C02(EE, write_cycle_s=0, initial=bytes(range(256)))
    return SimAdapter([reg, TMP102(TMP, temperature=21.5, drift=0.0), eeprom]), reg, eeprom


def test_every_smbus_method_through_the_handle() -> None:
    adapter, reg, eeprom = every_method_adapter()
    with sessions.start(i2c_config(devices=adapter)) as system:
        h = system.get("bus")
        assert h.kind == "i2c"
        assert h.write_quick(REG).result(5) is None
        assert h.read_byte_data(REG, 0x10).result(5) == 0xAA
        h.write_byte_data(REG, 0x13, 0xDD).result(5)
        assert reg[0x13] == 0xDD
        h.write_byte(REG, 0x10).result(5)
        assert [h.read_byte(REG).result(5) for _ in range(4)] == [0xAA, 0xBB, 0xCC, 0xDD]
        h.write_word_data(REG, 0x40, 0x1234).result(5)
        assert (reg[0x40], reg[0x41]) == (0x34, 0x12)
        assert h.read_word_data(REG, 0x40).result(5) == 0x1234
        assert h.process_call(REG, 0x60, 0xBEEF).result(5) == 0x0201
        assert (reg[0x60], reg[0x61]) == (0xEF, 0xBE)
        h.write_block_data(REG, 0x20, [7, 8, 9]).result(5)
        assert [reg[a] for a in range(0x20, 0x24)] == [3, 7, 8, 9]
        block = h.read_block_data(REG, 0x20).result(5)
        assert block == [7, 8, 9] and type(block) is list
        assert h.block_process_call(REG, 0x70, [1, 2]).result(5) == [0x55, 0x66]
        h.write_i2c_block_data(REG, 0x50, b"\x01\x02\x03\x04").result(5)
        data = h.read_i2c_block_data(REG, 0x50, 4).result(5)
        assert data == [1, 2, 3, 4] and type(data) is list
        # i2c_rdwr: plain-data messages; the read data comes back as bytes, in order
        reads = h.i2c_rdwr(
            {"addr": REG, "write": [0x90, 0x44]},
            {"addr": EE, "write": [0x80]},
            {"addr": EE, "read": 2},
            {"addr": TMP, "read": 2},
        ).result(5)
        assert reads == [b"\x80\x81", TMP102.encode(21.5)]
        assert reg[0x90] == 0x44 and eeprom.pointer == 0x82
        assert h.scan().result(5) == [REG, TMP, EE]
        assert h.restarts == 0


def test_i2c_rdwr_takes_smbus2_messages() -> None:
    smbus2 = pytest.importorskip("smbus2")
    adapter, _, _ = every_method_adapter()
    with sessions.start(i2c_config(devices=adapter)) as system:
        h = system.get("bus")
        write, read = smbus2.i2c_msg.write(EE, [0x10]), smbus2.i2c_msg.read(EE, 3)
        assert h.i2c_rdwr(write, read).result(5) == [b"\x10\x11\x12"]
        assert bytes(read) == b"\x10\x11\x12"  # filled in place too, as smbus2 does


def test_transaction_runs_a_sequence_with_a_guarded_bus() -> None:
    adapter, reg, _ = every_method_adapter()
    with sessions.start(i2c_config(devices=adapter, pec=True)) as system:
        h = system.get("bus")

        def read_at(bus: GuardedBus, pointer: int) -> tuple[int, bool, list[int]]:
            assert isinstance(bus, GuardedBus)
            bus.write_byte(REG, pointer)
            return bus.read_byte(REG), bus.pec, bus.scan()

        assert h.transaction(read_at, 0x11).result(5) == (0xBB, True, [REG, TMP, EE])
        assert h.transaction(read_at, pointer=0x12).result(5)[0] == 0xCC
        leaked = h.transaction(lambda bus: bus).result(5)
        with pytest.raises(RuntimeError, match="only valid during"):
            leaked.read_byte(REG)
        assert reg.pointer == 0x13


@pytest.mark.parametrize(
    ("method", "args", "error", "match"),
    [
        ("read_byte_data", (REG, 256), ValueError, "register=256"),
        ("write_byte", (REG, -1), ValueError, "value=-1"),
        ("write_word_data", (REG, 0, 0x10000), ValueError, "value=65536"),
        ("read_byte", (0x80,), ValueError, "i2c_addr=0x80"),
        ("write_quick", (0x02,), ValueError, "i2c_addr=0x02"),
        ("write_block_data", (REG, 0, [0] * 33), ValueError, "33 bytes"),
        ("write_i2c_block_data", (REG, 0, [1, 256]), ValueError, r"data\[1\]=256"),
        ("read_i2c_block_data", (REG, 0, 33), ValueError, "length=33"),
        ("read_byte_data", (REG, "1"), TypeError, "register must be an int"),
        ("i2c_rdwr", (), ValueError, "1..42 messages"),
        ("i2c_rdwr", ({"addr": REG},), ValueError, "'read'"),
        ("i2c_rdwr", ({"addr": 0x7F, "read": 1},), ValueError, "addr=0x7f"),
        ("i2c_rdwr", ("junk",), TypeError, "i2c_msg"),
    ],
)
def test_bad_arguments_are_caller_errors(
    method: str, args: tuple[Any, ...], error: type[Exception], match: str
) -> None:
    with sessions.start(i2c_config(devices=[{"type": "registers", "address": REG}])) as system:
        h = system.get("bus")
        with pytest.raises(error, match=match):
            h.call(method, *args).result(5)
        assert h.read_byte_data(REG, 0).result(5) == 0
        assert h.restarts == 0


def test_scan_finds_exactly_the_attached_devices() -> None:
    devices = [
        {"type": "tmp102", "address": TMP},
        {"type": "eeprom24c02", "address": EE},
        {"type": "registers", "address": 0x33},  # probed with a read, as i2cdetect does
        {"type": "registers", "address": 0x77, "registers": 4, "width": 16},
    ]
    config = i2c_config(devices=devices, sim_name="scan-test", fault_threshold=1)
    with sessions.start(config) as system:
        h = system.get("bus")
        assert h.scan().result(5) == [0x33, TMP, EE, 0x77]
        adapter = sim_adapter("scan-test")
        adapter.detach(TMP)
        adapter.attach(RegisterDevice(0x03))
        assert h.scan().result(5) == [0x03, 0x33, EE, 0x77]
        assert h.restarts == 0  # 113 NACKs are no errors, even with fault_threshold = 1
    with sessions.start(i2c_config()) as system:
        assert system.get("bus").scan().result(5) == []


# --------------------------------------------------------------------------- concurrency

RACE_BOUND = 5_000  # iterations per thread before giving up on seeing a race
ACTOR_ITERATIONS = 100
TMP102_TARGETS = [(0, 0x19), (1, 0x60), (2, 0x4B), (3, 0x50)]  # MSBs at 25 C, defaults
EEPROM_TARGETS = [(a, a ^ 0x5A) for a in range(0, 256, 32)]  # distinct bytes


def race_devices(kind: str) -> tuple[int, list[tuple[int, int]], list[SimDevice]]:
    if kind == "tmp102":
        return TMP, TMP102_TARGETS, [TMP102(TMP, drift=0.0)]
    memory = bytearray(256)
    for address, value in EEPROM_TARGETS:
        memory[address] = value
    return EE, EEPROM_TARGETS, [EEPROM24C02(EE, initial=bytes(memory))]


def pointer_then_read(bus: Any, address: int, pointer: int) -> int:
    """Write the pointer, then read at it: two transfers."""
    bus.write_byte(address, pointer)
    return int(bus.read_byte(address))


@pytest.mark.parametrize("kind", ["tmp102", "eeprom24c02"])
def test_pointer_then_read_through_transaction_never_reads_wrong(kind: str) -> None:
    address, targets, devices = race_devices(kind)
    config = i2c_config(devices=devices, clock_hz=1_000_000)
    wrong: list[tuple[int, int]] = []
    with sessions.start(config) as system:
        h = system.get("bus")

        def worker(index: int) -> None:
            pointer, expected = targets[index % len(targets)]
            for _ in range(ACTOR_ITERATIONS):
                value = h.transaction(pointer_then_read, address, pointer).result(30)
                if value != expected:
                    wrong.append((pointer, value))

        run_threads(THREADS, worker)
        assert h.restarts == 0
    assert wrong == []


@pytest.mark.parametrize("kind", ["tmp102", "eeprom24c02"])
def test_pointer_then_read_on_a_bare_simbus_does_read_wrong(kind: str) -> None:
    """The control: the same sequences without the actor race, so the test above can fail."""
    address, targets, devices = race_devices(kind)
    bus = SimBus(1, devices=devices, clock_hz=1_000_000)
    wrong = []
    seen_race = threading.Event()

    def worker(index: int) -> None:
        pointer, expected = targets[index % len(targets)]
        for _ in range(RACE_BOUND):
            if seen_race.is_set():
                return
            if pointer_then_read(bus, address, pointer) != expected:
                wrong.append(pointer)
                seen_race.set()

    run_threads(THREADS, worker)
    assert len(wrong) >= 1


# --------------------------------------------------------------------------- errors


def test_nack_goes_to_the_caller_and_the_bus_stays_up() -> None:
    adapter = SimAdapter([TMP102(TMP, drift=0.0), RegisterDevice(REG)])
    with sessions.start(i2c_config(devices=adapter)) as system:
        h = system.get("bus")
        adapter.inject("nack", address=TMP)
        with pytest.raises(sessions.DeviceError) as info:
            h.read_byte_data(TMP, 0).result(5)
        assert info.value.address == TMP and info.value.errno == errno.ENXIO
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENXIO
        assert "0x48 did not acknowledge" in str(info.value)
        with pytest.raises(sessions.DeviceError) as info:
            h.write_quick(0x33).result(5)  # nothing there
        assert info.value.address == 0x33
        assert h.read_byte_data(TMP, 1).result(5) == 0x60
        assert h.restarts == 0 and h.state == "running"

        def ack_poll(bus: GuardedBus) -> int:
            """A NACK inside a transaction is a DeviceError fn can handle."""
            for attempt in range(5):
                try:
                    bus.write_quick(TMP)
                    return attempt
                except sessions.DeviceError:
                    continue
            return -1

        adapter.inject("nack", address=TMP, count=2)
        assert h.transaction(ack_poll).result(5) == 2
        assert h.restarts == 0


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (errno.EREMOTEIO, "device"),
        (errno.EAGAIN, "device"),
        (errno.EPROTO, "device"),
        (errno.EBADMSG, "device"),
        (errno.EBUSY, "device"),  # one transient error: below the threshold
        (errno.EINVAL, "oserror"),
        (errno.ENODEV, "fault"),
        (errno.ENOENT, "fault"),
        (errno.EBADF, "fault"),
    ],
    ids=errno.errorcode.get,
)
def test_errno_mapping(code: int, outcome: str) -> None:
    device = Failing(REG, code)
    rec = Recorder()
    with sessions.start(i2c_config(devices=[device])) as system:
        system.subscribe(rec)
        h = system.get("bus")
        with pytest.raises(Exception) as info:
            h.write_byte_data(REG, 1, 2).result(5)
        err = info.value
        if outcome == "device":
            assert isinstance(err, sessions.DeviceError)
            assert (err.address, err.errno) == (REG, code)
            assert isinstance(err.__cause__, OSError) and err.__cause__.errno == code
        elif outcome == "oserror":
            assert type(err) is OSError and err.errno == code
        else:
            assert isinstance(err, sessions.ResourceFault)
            assert isinstance(err.__cause__, OSError) and err.__cause__.errno == code
            restarted(rec)
        h.write_byte_data(REG, 3, 4).result(5)  # the bus works (again)
        assert h.restarts == (1 if outcome == "fault" else 0)
        assert device.written[-1] == b"\x03\x04"


@pytest.mark.parametrize("kind", ["eio", "timeout"])
def test_fewer_than_threshold_bus_errors_do_not_restart(kind: Any) -> None:
    adapter = SimAdapter([RegisterDevice(REG)])
    with sessions.start(i2c_config(devices=adapter, fault_threshold=3)) as system:
        h = system.get("bus")
        for _ in range(3):  # a success between the runs resets the count
            adapter.inject(kind, count=2)
            for strike in (1, 2):
                with pytest.raises(sessions.DeviceError, match=f"{strike} of 3") as info:
                    h.read_byte_data(REG, 0).result(5)
                assert info.value.errno in (errno.EIO, errno.ETIMEDOUT)
            assert h.read_byte_data(REG, 0).result(5) == 0
        adapter.inject("eio", address=REG, count=2)
        for _ in range(2):  # NACKs in between neither count nor reset
            with pytest.raises(sessions.DeviceError):
                h.read_byte_data(REG, 0).result(5)
            with pytest.raises(sessions.DeviceError, match="did not acknowledge"):
                h.read_byte_data(0x33, 0).result(5)
        assert h.read_byte_data(REG, 0).result(5) == 0
        assert h.restarts == 0


@pytest.mark.parametrize("threshold", [1, 3])
def test_repeated_eio_restarts_the_bus_and_replays_init(threshold: int) -> None:
    reg = RegisterDevice(REG)
    sensor = TMP102(TMP, drift=0.0)
    adapter = SimAdapter([reg, sensor])
    init = [
        {"address": REG, "register": 0x01, "value": 0x60},
        {"address": REG, "register": 0x02, "value": 0x0A},
        {"address": TMP, "register": 0x01, "word": True, "byteorder": "big", "value": 0x6140},
    ]
    config = i2c_config(devices=adapter, init=init, fault_threshold=threshold)
    rec = Recorder()
    with sessions.start(config) as system:
        system.subscribe(rec)
        h = system.get("bus")
        assert (reg[1], reg[2], sensor.register(1)) == (0x60, 0x0A, 0x6160)  # first connect
        h.write_byte_data(REG, 0x01, 0x00).result(5)
        h.write_i2c_block_data(TMP, 0x01, [0x60, 0xA0]).result(5)
        assert (reg[1], sensor.register(1)) == (0x00, 0x60A0)
        adapter.inject("eio", count=threshold)
        for _ in range(threshold - 1):
            with pytest.raises(sessions.DeviceError):
                h.read_byte_data(REG, 1).result(5)
        assert h.restarts == 0
        with pytest.raises(sessions.ResourceFault) as info:
            h.read_byte_data(REG, 1).result(5)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.EIO
        restarted(rec)
        assert h.read_byte_data(REG, 1).result(5) == 0x60  # init replayed
        assert sensor.register(1) == 0x6160
        assert h.restarts == 1


def test_disconnect_restarts_at_once_and_reapplies_pec_and_force() -> None:
    adapter = SimAdapter([RegisterDevice(REG)])
    rec = Recorder()
    with sessions.start(
        i2c_config(devices=adapter, pec=True, force=True, fault_threshold=5)
    ) as system:
        system.subscribe(rec)
        h = system.get("bus")
        adapter.inject("disconnect")
        with pytest.raises(sessions.ResourceFault) as info:
            h.write_byte_data(REG, 0, 1).result(5)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.ENODEV
        restarted(rec)
        assert h.read_byte_data(REG, 0).result(5) == 0  # the write never arrived
        assert h.transaction(lambda bus: (bus.pec, bus.force)).result(5) == (True, True)
        assert h.restarts == 1


def test_a_fault_caught_inside_a_transaction_still_restarts() -> None:
    adapter = SimAdapter([RegisterDevice(REG)])
    rec = Recorder()
    with sessions.start(i2c_config(devices=adapter)) as system:
        system.subscribe(rec)
        h = system.get("bus")

        def swallow(bus: GuardedBus) -> str:
            try:
                bus.read_byte(REG)
            except OSError:
                return "swallowed"
            return "fine"

        adapter.inject("disconnect")
        with pytest.raises(sessions.ResourceFault) as info:
            h.transaction(swallow).result(5)
        assert info.value.__cause__.errno == errno.ENODEV  # type: ignore[union-attr]
        restarted(rec)
        assert h.transaction(swallow).result(5) == "fine"


def test_an_oserror_of_the_transaction_itself_is_not_a_fault() -> None:
    with sessions.start(i2c_config(devices=[{"type": "registers", "address": REG}])) as system:
        h = system.get("bus")

        def read_config(bus: GuardedBus) -> str:
            return Path("/nonexistent/sessions-i2c-test").read_text()

        with pytest.raises(FileNotFoundError):
            h.transaction(read_config).result(5)
        assert h.read_byte(REG).result(5) == 0
        assert h.restarts == 0


def test_init_write_to_a_missing_device_fails_the_start() -> None:
    config = i2c_config(init=[{"address": REG, "register": 0, "value": 1}])
    config["supervisor"]["max_restarts"] = 1
    with pytest.raises(sessions.ResourceUnavailable, match="No such device or address"):
        sessions.start(config)


def test_health_check_faults_on_a_closed_bus() -> None:
    actor = I2CActor(bus="sim", devices=[{"type": "registers", "address": REG}])
    actor.resource = actor.connect()
    actor.health_check()
    actor.resource.close()
    with pytest.raises(OSError) as info:
        actor.health_check()
    assert info.value.errno == errno.EBADF
    assert actor.is_fault(info.value)
    assert not actor.is_fault(OSError(errno.EBADF, "some other"))
    actor.disconnect(actor.resource)


def test_sim_name_registers_the_simulated_bus() -> None:
    config = i2c_config(devices=[{"type": "tmp102", "address": TMP}], sim_name="registry-test")
    with sessions.start(config) as system:
        h = system.get("bus")
        adapter = sim_adapter("registry-test")
        assert sorted(adapter.devices) == [TMP]
        adapter.inject("nack", address=TMP)
        with pytest.raises(sessions.DeviceError):
            h.read_byte(TMP).result(5)
    with pytest.raises(KeyError, match="no simulated I2C bus named 'nope'"):
        sim_adapter("nope")


def test_devices_may_be_simdevice_objects() -> None:
    reg = RegisterDevice(REG, initial={5: 9})
    with sessions.start(i2c_config(devices=[reg])) as system:
        assert system.get("bus").read_byte_data(REG, 5).result(5) == 9


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("options", "path", "match"),
    [
        ({"bus": 1.5}, "resources.bus.bus", "bus number"),
        ({"bus": "i2c-1"}, "resources.bus.bus", "'sim'"),
        ({"bus": -1}, "resources.bus.bus", "bus number"),
        ({"bus": None}, "resources.bus.bus", "bus number"),
        (
            {"devices": [{"type": "tmp103", "address": TMP}]},
            "resources.bus.devices[0].type",
            "tmp102",
        ),
        ({"devices": [{"address": TMP}]}, "resources.bus.devices[0].type", "missing"),
        (
            {
                "devices": [
                    {"type": "tmp102", "address": TMP},
                    {"type": "registers", "address": 0x78},
                ]
            },
            "resources.bus.devices[1].address",
            "0x03..0x77",
        ),
        (
            {"devices": [{"type": "tmp102", "address": TMP, "width": 16}]},
            "resources.bus.devices[0]",
            "'width' does not apply to type 'tmp102'",
        ),
        (
            {"devices": [{"type": "eeprom24c02", "address": EE, "size": 100}]},
            "resources.bus.devices[0]",
            "powers of 2",
        ),
        (
            {
                "devices": [
                    {"type": "tmp102", "address": TMP},
                    {"type": "registers", "address": TMP},
                ]
            },
            "resources.bus.devices",
            "both use address 0x48",
        ),
        (
            {"init": [{"address": 0x100, "register": 0, "value": 0}]},
            "resources.bus.init[0].address",
            "7-bit",
        ),
        (
            {"init": [{"address": REG, "register": 0, "value": 0}, {"address": REG, "value": 1}]},
            "resources.bus.init[1].register",
            "missing",
        ),
        (
            {"init": [{"address": REG, "register": 256, "value": 0}]},
            "resources.bus.init[0].register",
            "0..255",
        ),
        (
            {"init": [{"address": REG, "register": 0, "value": 0x1FF}]},
            "resources.bus.init[0].value",
            "word = true",
        ),
        (
            {"init": [{"address": REG, "register": 0, "value": 1, "byteorder": "big"}]},
            "resources.bus.init[0].byteorder",
            "word = true",
        ),
        (
            {"init": [{"address": REG, "reg": 0, "value": 0}]},
            "resources.bus.init[0].reg",
            "unknown",
        ),
        ({"bus": 1, "devices": []}, "resources.bus.devices", "only applies to bus = 'sim'"),
        ({"bus": "/dev/i2c-1", "clock_hz": 400_000}, "resources.bus.clock_hz", "'sim'"),
        ({"fault_threshold": 0}, "resources.bus.fault_threshold", ">= 1"),
        ({"devics": []}, "resources.bus.devics", "unknown key"),
    ],
)
def test_config_errors_name_the_exact_key(options: dict[str, Any], path: str, match: str) -> None:
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start(i2c_config(**options))
    messages = [m for p, m in info.value.errors if p == path]
    assert messages, info.value.errors
    assert any(match in m for m in messages), messages


def test_bus_accepts_numbers_paths_sim_and_env_strings() -> None:
    for value, expected in [(1, 1), ("7", 7), ("/dev/i2c-3", "/dev/i2c-3"), (" sim ", "sim")]:
        assert I2CActor.Options.model_validate({"bus": value}).bus == expected


# --------------------------------------------------------------------------- seed facade


def test_session_manager_with() -> None:
    devices = [{"type": "tmp102", "address": TMP, "temperature": 30.0, "drift": 0.0}]
    with I2CSessionManager(bus="sim", devices=devices, clock_hz=FAST) as i2c:
        assert i2c.name == "i2c" and i2c.kind == "i2c"
        raw = i2c.read_i2c_block_data(TMP, 0, 2).result(5)
        assert TMP102.decode(raw) == 30.0
    assert i2c.state == "stopped"


def test_session_manager_async_with() -> None:
    async def main() -> list[int]:
        manager = I2CSessionManager(
            "sim", name="sensors", devices=[{"type": "tmp102", "address": TMP}]
        )
        async with manager as i2c:
            assert i2c.name == "sensors"
            found: list[int] = await i2c.scan()
            return found

    assert asyncio.run(main()) == [TMP]


def test_session_registry_facade_builds_an_i2c_resource() -> None:
    options = {"i2c": {"devices": [{"type": "registers", "address": REG}], "clock_hz": FAST}}
    with sessions.SessionRegistry(i2c_bus_id="sim", options=options) as registry:
        assert registry.i2c.scan().result(5) == [REG]


# --------------------------------------------------------------------------- process lock

LOCK_CALLS = 8


def lock_worker(
    role: str,
    *,
    process_lock: bool,
    lock_path: str,
    a_inside: Any,
    b_ready: Any,
    b_inside: Any,
    out: Any,
) -> None:
    """One process of the process-lock tests (spawned; module-level so it pickles).

    Each process has its own simulated bus; only the lock file is shared. Every call
    is a write-pointer-then-read taking a few ms of bus time; it reports the interval
    its critical section ran in. A's first call waits inside its critical section for
    B: with the lock until B is about to call (B then has to wait for A), without the
    lock until B is inside its own (which only happens if nothing holds B back).
    """
    config = i2c_config(
        devices=[{"type": "registers", "address": REG}],
        clock_hz=20_000,
        process_lock=process_lock,
        lock_path=lock_path,
    )

    def section(bus: GuardedBus, first: bool) -> tuple[float, float, bool]:
        start = time.monotonic()
        waited = True
        if first and role == "A":
            a_inside.set()
            waited = (b_ready if process_lock else b_inside).wait(30)
        elif first and role == "B":
            b_inside.set()
        for pointer in (1, 2):
            bus.write_byte(REG, pointer)
            bus.read_byte(REG)
        return start, time.monotonic(), waited

    try:
        with sessions.start(config) as system:
            h = system.get("bus")
            submitted = 0.0
            if role == "B":
                assert a_inside.wait(30)
                submitted = time.monotonic()
                b_ready.set()
            for i in range(LOCK_CALLS):
                start, end, waited = h.transaction(section, i == 0).result(60)
                out.put((role, i, start, end, waited, submitted))
    except BaseException as exc:
        out.put((role, -1, repr(exc)))
        raise


def run_lock_processes(process_lock: bool, lock_path: Path) -> list[tuple[Any, ...]]:
    ctx = multiprocessing.get_context("spawn")
    a_inside, b_ready, b_inside = ctx.Event(), ctx.Event(), ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=lock_worker,
            args=(role,),
            kwargs={
                "process_lock": process_lock,
                "lock_path": str(lock_path),
                "a_inside": a_inside,
                "b_ready": b_ready,
                "b_inside": b_inside,
                "out": out,
            },
        )
        for role in ("A", "B")
    ]
    for proc in procs:
        proc.start()
    results = []
    try:
        for _ in range(2 * LOCK_CALLS):
            item = out.get(timeout=120)
            assert item[1] != -1, f"worker failed: {item}"
            results.append(item)
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert [proc.exitcode for proc in procs] == [0, 0]
    return results


def test_process_lock_serializes_two_processes(tmp_path: Path) -> None:
    results = run_lock_processes(True, tmp_path / "bus.lock")
    assert all(waited for *_, waited, _ in results)
    intervals = sorted((start, end, role) for role, _, start, end, _, _ in results)
    for (_, end, role), (start, _, next_role) in itertools.pairwise(intervals):
        assert start >= end, f"{role} and {next_role} were inside the bus at the same time"
    a_first = next(r for r in results if r[:2] == ("A", 0))
    b_first = next(r for r in results if r[:2] == ("B", 0))
    submitted = b_first[5]
    # B asked while A was inside (A waited for that), and got in only after A left.
    assert submitted < a_first[3] <= b_first[2]
    assert (tmp_path / "bus.lock").exists()


def test_without_process_lock_two_processes_overlap(tmp_path: Path) -> None:
    """The control: the same processes without the lock are inside at the same time."""
    results = run_lock_processes(False, tmp_path / "bus.lock")
    a_first = next(r for r in results if r[:2] == ("A", 0))
    b_first = next(r for r in results if r[:2] == ("B", 0))
    assert a_first[4] is True  # A saw B inside while it was inside itself
    assert a_first[2] < b_first[2] < a_first[3]
    assert not (tmp_path / "bus.lock").exists()


def test_process_lock_default_path_for_the_simulator(tmp_path: Path) -> None:
    config = i2c_config(
        devices=[{"type": "registers", "address": REG}], process_lock=True, sim_name="lock-default"
    )
    with sessions.start(config) as system:
        assert system.get("bus").read_byte(REG).result(5) == 0
    assert Path(tempfile.gettempdir(), "sessions-i2c-sim-lock-default.lock").exists()


def test_a_pool_is_lowered_to_one_bus_owner(caplog: pytest.LogCaptureFixture) -> None:
    """One actor per bus: pool_size > 1 is lowered to 1 with a warning naming why."""
    devices = [{"type": "registers", "address": REG}]
    with sessions.start(i2c_config(devices=devices, pool_size=2)) as system:
        assert system.status()["children"][0]["type"] == "resource"
        assert "pool_size = 2 lowered to 1: an I2C bus has one owner" in caplog.text
        assert system.get("bus").read_byte_data(REG, 0).result(5) == 0


def test_ebusy_of_a_combined_transfer_is_a_bus_error_not_a_claimed_address() -> None:
    """On a hardware bus an EBUSY means 'a kernel driver owns the address' only for the
    SMBus calls that claim it (I2C_SLAVE); i2c_rdwr claims nothing, so its EBUSY is a
    busy bus and counts toward a restart. (No hardware here: the classifier directly.)"""
    actor = I2CActor(bus=1)  # a hardware bus; never connected
    actor.resource = types.SimpleNamespace(address=0x10)  # smbus2's last claimed address
    busy = OSError(errno.EBUSY, "Device or resource busy")
    combined = actor._classify(busy, "i2c_rdwr", 0x48, None)
    assert isinstance(combined, sessions.DeviceError)
    assert not getattr(combined, "claimed", False)
    assert "bus errors in a row" in str(combined)
    claimed = actor._classify(busy, "read_byte", 0x48, None)
    assert isinstance(claimed, sessions.DeviceError) and getattr(claimed, "claimed", False)


# --------------------------------------------------------------------------- abort (hangs)

JOIN = 10.0  # generous bound for a blocked call to return after abort()






def test_abort_ends_a_call_stalled_on_a_hung_device() -> None:
    """A device that hangs the bus (SCL held low): the actor thread is blocked inside a
    transfer. abort() from another thread makes it fail at once with EBADF, a fault;
    later transfers of that connection fail too, and disconnect() works after."""
    adapter = SimAdapter([RegisterDevice(REG)])
    actor = I2CActor(bus="sim", devices=adapter, clock_hz=FAST)
    bus = actor.resource = actor.connect()
    adapter.inject("hang", address=REG)
    blocked = in_thread(lambda: actor.transaction(lambda b: [b.write_byte(REG, 1),
                                                             b.read_byte(REG)]))
    wait_until(lambda: adapter.stalled == 1, JOIN, "the transfer to hang")
    abort_from_another_thread(actor, bus)
    with pytest.raises(OSError) as info:
        blocked.result(JOIN)
    assert info.value.errno == errno.EBADF
    assert actor.is_fault(info.value)
    with pytest.raises(OSError) as info:
        actor.read_byte(REG)
    assert info.value.errno == errno.EBADF and actor.is_fault(info.value)
    actor.abort(bus)  # idempotent
    actor.disconnect(bus)
    assert bus.closed and adapter.stalled == 0
    fresh = actor.resource = actor.connect()  # the next incarnation's bus works
    assert actor.read_byte_data(REG, 0) == 0
    actor.disconnect(fresh)


def test_a_hung_bus_is_a_stall_fault_and_the_bus_reopens() -> None:
    """Through the runtime: a transfer stalled past stall_timeout is abandoned, abort()
    ends it, the caller gets ResourceFault, and the reopened bus serves again."""
    adapter = SimAdapter([RegisterDevice(REG)])
    rec = Recorder()
    config = i2c_config(devices=adapter, call_timeout=0.3, stall_timeout=0.5)
    with sessions.start(config) as system:
        system.subscribe(rec)
        h = system.get("bus")
        adapter.inject("hang", address=REG)
        with pytest.raises(sessions.ResourceFault, match="stall_timeout"):
            h.read_byte(REG).result(JOIN)
        restarted(rec)
        assert h.write_byte_data(REG, 2, 7).result(JOIN) is None
        assert h.read_byte_data(REG, 2).result(JOIN) == 7
        wait_until(lambda: system.status()["children"][0]["abandoned"] == 0, JOIN,
                   "the aborted incarnation's thread to end")
        assert adapter.stalled == 0


def test_abort_ends_a_wait_for_the_process_lock(tmp_path: Path) -> None:
    """Another process (here: another open file) holds the bus lock and hangs: the call
    waits at most lock_timeout (TimeoutError, not a fault), and abort() ends the wait
    at once (a fault)."""
    lock_path = tmp_path / "bus.lock"
    actor = I2CActor(bus="sim", devices=[{"type": "registers", "address": REG}],
                     clock_hz=FAST, process_lock=True, lock_path=str(lock_path),
                     lock_timeout=0.2)
    bus = actor.resource = actor.connect()
    holder = os.open(lock_path, os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(TimeoutError, match=r"lock_timeout=0\.2s") as timeout:
            actor.read_byte(REG)
        assert not actor.is_fault(timeout.value)
        actor.config = actor.config.model_copy(update={"lock_timeout": 60.0})
        waiting = in_thread(lambda: actor.transaction(lambda b: b.read_byte(REG)))
        abort_from_another_thread(actor, bus)
        with pytest.raises(OSError) as info:
            waiting.result(JOIN)
        assert info.value.errno == errno.EBADF and actor.is_fault(info.value)
    finally:
        os.close(holder)
    actor.disconnect(bus)


def test_abort_of_a_hardware_bus_swaps_its_descriptor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hardware path, without hardware: an smbus2 bus opened on /dev/null (its ioctls
    fail with ENOTTY, an error for the caller). After abort() the same descriptor number
    refers to an O_PATH file: every ioctl fails with EBADF (a fault), the number is
    never freed for another file, and disconnect() closes it."""
    smbus2 = pytest.importorskip("smbus2")
    monkeypatch.setattr(smbus2.SMBus, "_get_funcs", lambda self: smbus2.I2cFunc(0))
    actor = I2CActor(bus=os.devnull)
    bus = actor.resource = actor.connect()
    fd = bus.fd
    with pytest.raises(OSError) as info:
        actor.read_byte_data(TMP, 0)
    assert info.value.errno == errno.ENOTTY and not actor.is_fault(info.value)
    abort_from_another_thread(actor, bus)
    assert bus.fd == fd and os.fstat(fd)  # still open: the number was not freed
    with pytest.raises(OSError) as info:
        actor.write_byte_data(TMP + 1, 0, 1)
    assert info.value.errno == errno.EBADF and actor.is_fault(info.value)
    actor.abort(bus)  # idempotent
    actor.disconnect(bus)
    assert bus.fd is None
    with pytest.raises(OSError):
        os.fstat(fd)


def test_an_abandoned_disconnect_leaves_the_new_connection_alone(tmp_path: Path) -> None:
    """A late disconnect() of an aborted connection closes its own lock file and bus,
    never those of the connection that replaced it."""
    actor = I2CActor(bus="sim", devices=[{"type": "registers", "address": REG}],
                     clock_hz=FAST, process_lock=True, lock_path=str(tmp_path / "bus.lock"))
    old = actor.connect()
    actor.abort(old)
    new = actor.resource = actor.connect()
    actor.disconnect(old)
    assert old.closed and not new.closed
    assert actor.read_byte(REG) == 0  # takes the new connection's lock file
    actor.disconnect(new)


@pytest.mark.parametrize("value", [math.inf, 0, -1])
def test_lock_timeout_must_be_finite_and_positive(value: float) -> None:
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start(i2c_config(process_lock=True, lock_timeout=value))
    assert info.value.path == "resources.bus.lock_timeout"


# -- sessions check --connect ------------------------------------------------------------


def test_check_connect_names_the_device_that_cannot_be_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reason shows the exception's message (with the device path), not its repr
    (``FileNotFoundError(2, 'No such file or directory')``)."""
    absent = tmp_path / "i2c-absent"
    path = tmp_path / "bus.toml"
    path.write_text(
        f'[resources.byno]\nkind = "i2c"\nbus = 250\n'
        f'[resources.bypath]\nkind = "i2c"\nbus = "{absent}"\n',
        encoding="utf-8",
    )
    assert main(["check", str(path), "--connect"]) == 1
    out = capsys.readouterr().out
    assert "FileNotFoundError: [Errno 2] No such file or directory: '/dev/i2c-250'" in out
    assert f"FileNotFoundError: [Errno 2] No such file or directory: '{absent}'" in out
    assert "FileNotFoundError(2" not in out


# -- the seed registry with no such bus (it needs SQLAlchemy: not in the core stage) ---

BACKOFF = {"supervisor": {"backoff": {"initial": 0.01, "max": 0.05, "jitter": 0.0}}}


@pytest.mark.skipif(os.path.exists("/dev/i2c-1"), reason="this machine has an I2C bus 1")
def test_registry_unavailable_i2c_bus_does_not_fail_the_registry(tmp_path: Path) -> None:
    """``i2c_bus_id=1`` with no such bus: the registry starts, the SQLite database
    serves, the bus is reported unavailable and retried, and its calls fail with
    ResourceUnavailable naming it."""
    started = time.monotonic()
    with sessions.SessionRegistry(db_url=f"sqlite:///{tmp_path / 'r.db'}", i2c_bus_id=1,
                         config=BACKOFF) as registry:
        assert time.monotonic() - started < 10
        assert registry.db.scalar("SELECT 1").result(10) == 1
        with registry.db as tx:
            tx.execute("CREATE TABLE t (x INTEGER)").result()
        assert registry.db.execute("SELECT * FROM t").result(10) == []
        assert list(registry.unavailable) == ["i2c"]
        assert "FileNotFoundError" in registry.unavailable["i2c"]
        status = registry.status()
        assert status["db"] == {"kind": "database", "state": "running", "restarts": 0,
                                "last_fault": None}
        assert status["i2c"]["state"] == "starting"
        assert registry.i2c.state == "starting"
        with pytest.raises(sessions.ResourceUnavailable) as info:
            registry.i2c.read_byte(0x40).result(10)
        assert info.value.resource == "i2c"
        assert "resource 'i2c' is unavailable" in str(info.value)
        assert "retries its start" in str(info.value)
        faults = Recorder()
        registry.system.subscribe(faults)
        faults.wait_for(lambda e: isinstance(e, ChildFaulted) and e.name == "i2c", count=3)
        assert registry.system.state == "running"  # never gives up on it
    assert registry.system.state == "stopped"


# -- errno mapping of a hardware bus, without hardware (the kernel lane has the real one) --


def _failing_hardware_actor(
    monkeypatch: pytest.MonkeyPatch, path: str, code: int, funcs: int = 0
) -> tuple[I2CActor, Any]:
    """An actor on an smbus2 bus opened on ``path`` whose reads, quick writes and
    i2c_rdwr fail with ``code``, as an adapter's driver would answer."""
    smbus2 = pytest.importorskip("smbus2")
    monkeypatch.setattr(smbus2.SMBus, "_get_funcs", lambda self: smbus2.I2cFunc(funcs))

    def fail(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    for method in ("read_byte_data", "i2c_rdwr", "read_byte", "write_quick"):
        monkeypatch.setattr(smbus2.SMBus, method, fail)
    actor = I2CActor(bus=path)
    actor.resource = actor.connect()
    return actor, actor.resource


def test_enodev_for_an_address_is_a_nack_while_the_adapter_is_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Linux's i2c-stub answers ENODEV for an address with no chip (real adapters:
    ENXIO): a DeviceError for the caller, no fault, while the device node exists; once
    the node is gone, ENODEV means the adapter went away: a fault."""
    node = tmp_path / "i2c-9"
    node.write_bytes(b"")
    actor, bus = _failing_hardware_actor(monkeypatch, str(node), errno.ENODEV)
    with pytest.raises(sessions.DeviceError, match="0x33 did not acknowledge") as info:
        actor.read_byte_data(0x33, 0)
    assert (info.value.address, info.value.errno) == (0x33, errno.ENODEV)
    assert not actor.is_fault(info.value.__cause__)  # type: ignore[arg-type]
    assert actor.scan() == []  # every address "absent", as i2cdetect shows them
    node.unlink()
    with pytest.raises(OSError) as fault:
        actor.read_byte_data(0x33, 0)
    assert fault.value.errno == errno.ENODEV and actor.is_fault(fault.value)
    actor.disconnect(bus)


def test_eopnotsupp_names_the_missing_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    """i2c_rdwr on an SMBus-only adapter (i2c-stub: EOPNOTSUPP): the caller hears which
    I2C_FUNC capability the adapter lacks; not a fault, the bus stays open."""
    actor, bus = _failing_hardware_actor(monkeypatch, os.devnull, errno.EOPNOTSUPP, 0x0C7F0000)
    with pytest.raises(OSError, match=r"I2C_FUNC_I2C.*0x0c7f0000.*SMBus methods") as info:
        actor.i2c_rdwr({"addr": TMP, "write": [0]}, {"addr": TMP, "read": 2})
    assert type(info.value) is OSError and info.value.errno == errno.EOPNOTSUPP
    assert isinstance(info.value.__cause__, OSError) and not actor.is_fault(info.value)
    with pytest.raises(OSError, match="I2C_FUNC_SMBUS_READ_BYTE_DATA") as info:
        actor.read_byte_data(TMP, 0)
    assert not actor.is_fault(info.value)
    actor.disconnect(bus)
