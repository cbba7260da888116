"""The ``i2c`` kind against Linux's i2c-dev and i2c-stub (kernel 6.1, in the lane's guest).

i2c-stub: chips at 0x48 and 0x50 (``chip_addr``), one 16-bit cell per register, all zero
at load; byte and I2C-block operations use the low byte, word operations the whole cell;
SMBus only (no plain I2C transfers: ``i2c_rdwr`` gives EOPNOTSUPP); an address with no
chip answers ENODEV where real bus drivers answer ENXIO.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import sessions
from sessions.actors.i2c import GuardedBus
from tests.kernel.lane import (
    STUB_CHIPS,
    busybox,
    insmod_stub,
    stub_bus,
    stub_loaded,
    system_config,
)
from tests.support import wait_until

pytestmark = pytest.mark.kernel

TMP, EE = STUB_CHIPS  # two stub chips (the names only say which is which)
THREADS = 8


@pytest.fixture(autouse=True)
def stub_back() -> Iterator[None]:
    """Leave i2c-stub loaded for the next test, whatever this one did to it."""
    yield
    if not stub_loaded():
        insmod_stub()


def device() -> str:
    """/dev/i2c-N of the i2c-stub adapter, found by the adapter's name."""
    bus = stub_bus()
    assert bus is not None, "i2c-stub is not loaded"
    return f"/dev/i2c-{bus}"


def i2c(**options: Any) -> dict[str, Any]:
    return system_config({"bus": {"kind": "i2c", "bus": device(), **options}})


def test_byte_word_and_block_round_trips() -> None:
    with sessions.start(i2c()) as system:
        h = system.get("bus")
        h.write_byte_data(TMP, 0x10, 0xAB).result()
        assert h.read_byte_data(TMP, 0x10).result() == 0xAB
        h.write_word_data(TMP, 0x40, 0xBEEF).result()
        assert h.read_word_data(TMP, 0x40).result() == 0xBEEF
        # the stub's model: a word lives in one cell; a byte read sees its low byte
        assert h.read_byte_data(TMP, 0x40).result() == 0xEF
        assert h.read_byte_data(TMP, 0x41).result() == 0x00
        h.write_i2c_block_data(EE, 0x20, [1, 2, 3, 4, 5]).result()
        assert h.read_i2c_block_data(EE, 0x20, 5).result() == [1, 2, 3, 4, 5]
        h.write_block_data(EE, 0x60, [9, 8, 7]).result()  # works, though not advertised
        assert h.read_block_data(EE, 0x60).result() == [9, 8, 7]
        h.write_byte(EE, 0x20).result()  # send byte: sets the pointer ...
        assert [h.read_byte(EE).result() for _ in range(3)] == [1, 2, 3]  # ... increments
        h.write_quick(TMP).result()
        assert h.scan().result() == [TMP, EE]
        # the other chip is untouched: each address is its own register file
        assert h.read_byte_data(EE, 0x10).result() == 0
        assert h.restarts == 0


def test_a_missing_chip_is_a_device_error_not_a_fault() -> None:
    """i2c-stub answers ENODEV (19) for an address with no chip; real adapters ENXIO (6).
    Both are a ``DeviceError`` for the caller; the bus stays up."""
    with sessions.start(i2c()) as system:
        h = system.get("bus")
        with pytest.raises(sessions.DeviceError, match="0x33 did not acknowledge") as info:
            h.read_byte_data(0x33, 0).result()
        assert (info.value.address, info.value.errno) == (0x33, errno.ENODEV)
        assert isinstance(info.value.__cause__, OSError)
        with pytest.raises(sessions.DeviceError):
            h.write_quick(0x34).result()
        assert h.read_byte_data(TMP, 0).result() == 0
        assert h.restarts == 0 and h.state == "running"


def test_i2c_rdwr_on_an_smbus_only_adapter_names_the_missing_capability() -> None:
    with sessions.start(i2c()) as system:
        h = system.get("bus")
        with pytest.raises(OSError, match="I2C_FUNC_I2C") as info:
            h.i2c_rdwr({"addr": EE, "write": [0]}, {"addr": EE, "read": 2}).result()
        assert info.value.errno == errno.EOPNOTSUPP
        assert "SMBus methods" in str(info.value)
        with pytest.raises(OSError, match="I2C_FUNC_SMBUS_PROC_CALL") as info:
            h.process_call(TMP, 0, 1).result()
        assert info.value.errno == errno.EOPNOTSUPP
        assert h.read_byte_data(TMP, 0).result() == 0
        assert h.restarts == 0 and h.state == "running"


def test_eight_threads_pointer_then_read_through_one_handle() -> None:
    """Each thread sets the chip's pointer (send byte) and reads at it (receive byte),
    as one transaction: no thread ever reads another's register."""
    rounds = 15
    with sessions.start(i2c()) as system:
        h = system.get("bus")
        for i in range(THREADS):
            h.write_byte_data(EE, 0x80 + i, 0xA0 + i).result()

        def pointer_then_read(bus: GuardedBus, register: int) -> int:
            bus.write_byte(EE, register)
            return bus.read_byte(EE)

        wrong: list[tuple[int, int]] = []
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                for _ in range(rounds):
                    got = h.transaction(pointer_then_read, 0x80 + i).result()
                    if got != 0xA0 + i:
                        wrong.append((i, got))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == [] and wrong == []
        assert h.restarts == 0


_OTHER_PROCESS = """
import sys

import sessions

device, register, value = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = {"resources": {"bus": {"kind": "i2c", "bus": device, "process_lock": True,
                                "call_timeout": 30.0}}}


def pointer_then_read(bus, register):
    bus.write_byte(0x50, register)
    return bus.read_byte(0x50)


with sessions.start(config) as system:
    bus = system.get("bus")
    print("ready", flush=True)
    wrong = rounds = 0
    for line in sys.stdin:  # a round per "go" line, until "stop" (or EOF)
        if line.strip() != "go":
            break
        rounds += 1
        wrong += bus.transaction(pointer_then_read, register).result() != value
print(rounds, wrong, flush=True)
"""


def test_two_processes_with_process_lock_never_interleave() -> None:
    """Another process runs the same pointer-then-read on the same chip through its own
    resource; with ``process_lock`` (an flock on the device file) neither ever reads the
    other's register."""
    with sessions.start(i2c(process_lock=True)) as system:
        h = system.get("bus")
        h.write_byte_data(EE, 0x90, 0x11).result()
        h.write_byte_data(EE, 0x91, 0x22).result()
        other = subprocess.Popen(
            [sys.executable, "-c", _OTHER_PROCESS, device(), str(0x91), str(0x22)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=os.getcwd(),
        )
        assert other.stdin is not None and other.stdout is not None
        try:
            assert other.stdout.readline().strip() == "ready"

            def pointer_then_read(bus: GuardedBus, register: int) -> int:
                bus.write_byte(EE, register)
                return bus.read_byte(EE)

            wrong = 0
            for _ in range(60):  # the other process loops until told to stop: overlap
                other.stdin.write("go\n")
                other.stdin.flush()
                wrong += h.transaction(pointer_then_read, 0x90).result() != 0x11
            other.stdin.write("stop\n")
            other.stdin.close()
            rounds, other_wrong = map(int, other.stdout.readline().split())
            assert other.wait(60) == 0
        finally:
            if other.poll() is None:
                other.kill()
                other.wait()
        assert (wrong, other_wrong) == (0, 0)
        assert rounds >= 1


def test_the_adapter_going_away_and_coming_back() -> None:
    """i2c-dev holds a reference on i2c-stub while the bus is open, so ``rmmod`` is
    refused as long as the resource runs. Removing the device node (what udev does when
    an adapter is unplugged) makes the health check fault; the resource closes the bus,
    ``rmmod`` goes through, and after ``insmod`` (registers all zero again) the resource
    reopens the bus, replays its init writes, and serves the calls made meanwhile."""
    init = [
        {"address": TMP, "register": 0x01, "value": 0x60},
        # MSB first, as a TMP102's 16-bit registers take it: the stub's cell gets 0x004B
        {"address": TMP, "register": 0x03, "word": True, "byteorder": "big", "value": 0x4B00},
    ]
    with sessions.start(i2c(init=init, health_interval=0.1)) as system:
        h = system.get("bus")
        path = device()
        assert h.read_byte_data(TMP, 0x01).result() == 0x60
        assert h.read_word_data(TMP, 0x03).result() == 0x004B
        h.write_byte_data(TMP, 0x02, 0x22).result()

        refused = busybox("rmmod", "i2c_stub", check=False)
        assert refused.returncode != 0, "rmmod went through with the bus open"
        assert h.read_byte_data(TMP, 0x02).result() == 0x22

        os.unlink(path)
        wait_until(lambda: h.state != "running", timeout=30, what="the health check's fault")
        during = [h.read_byte_data(TMP, 0x01), h.read_byte_data(TMP, 0x02)]
        wait_until(
            lambda: busybox("rmmod", "i2c_stub", check=False).returncode == 0,
            timeout=30,
            what="rmmod i2c_stub once the bus is closed",
        )
        assert not os.path.exists(path)
        insmod_stub()
        assert [f.result() for f in during] == [0x60, 0x00]  # replayed; the rest reset
        assert device() == path
        assert h.read_byte_data(TMP, 0x01).result() == 0x60
        assert h.read_word_data(TMP, 0x03).result() == 0x004B
        assert h.restarts >= 1 and h.state == "running"
