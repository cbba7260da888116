"""An in-process I2C bus simulator with the method surface of ``smbus2.SMBus``.

``SimBus`` stands in for ``smbus2.SMBus`` (as python-can's ``VirtualBus`` stands in
for a CAN interface), so code written against smbus2 runs and is tested without
hardware. It models the behaviours that break real I2C code, not the electrical
layer:

* **Transfers are atomic; device state is not.** One method call is one transfer,
  like one kernel ioctl: it holds the bus lock from START to STOP (combined
  transfers such as ``read_byte_data`` or ``i2c_rdwr`` keep it across the repeated
  START). Devices keep their pointer register *between* transfers, exactly as chips
  do. So "write the pointer" then "read" done as two calls from two threads can read
  another thread's register, as on hardware. Use the combined calls, or hold one
  lock across both calls (one actor per bus does that by construction).
* **Timing.** Each transfer sleeps for the bits it puts on the wire, 9 clocks per
  byte (8 data + ACK) including every address byte, at ``clock_hz``. ``time.sleep``
  releases the GIL like a real ioctl, so other threads run meanwhile.
* **Faults.** ``inject()`` makes the next transfers fail the way the kernel reports
  it: ``"nack"`` (``ENXIO``), ``"eio"`` (``EIO``), ``"timeout"`` (``ETIMEDOUT``), or
  ``"disconnect"`` (``ENODEV`` on every transfer until the bus is reopened, as when a
  USB-I2C adapter is unplugged). An address with no device, or a device that does
  not ACK (an EEPROM busy in its write cycle), raises ``ENXIO`` too.
* **Hangs.** ``inject("hang")`` makes the next transfer stall, holding the bus as a
  device that holds SCL low does: it blocks (and every other transfer on the adapter
  waits behind it) until :meth:`SimAdapter.release` (it then fails with
  ``ETIMEDOUT``, as the bus driver's timeout reports it) or until its handle is
  aborted with :meth:`SimBus.abort` from another thread (``EBADF`` at once, what a
  transfer on a torn-down handle gets). The real kernel cannot interrupt a transfer in
  progress (it ends at the adapter's own timeout); the simulator's hang lasts until
  released, so that tests decide when it ends.

The physical bus (devices, bus lock, pending faults) is a :class:`SimAdapter`; a
``SimBus`` is an open handle on one, like a file descriptor on ``/dev/i2c-N``. A
``SimBus`` built from a list or mapping of devices gets a fresh adapter; pass the
same ``SimAdapter`` to several ``SimBus`` objects when they must share the bus lock
and the injected faults, e.g. when a supervised actor closes its bus and reopens it::

    adapter = SimAdapter([TMP102(0x48), EEPROM24C02(0x50)])
    bus = SimBus(1, devices=adapter)      # what the actor's factory builds
    adapter.inject("disconnect")          # bus now raises ENODEV on every transfer
    bus.close()
    bus = SimBus(1, devices=adapter)      # reopened: works, EEPROM contents kept

Devices see bytes, not SMBus commands: each address phase calls
:meth:`SimDevice.start`, then :meth:`SimDevice.write` with the bytes of a write
phase or :meth:`SimDevice.read` for a read phase. The SMBus helpers map onto these
phases as the SMBus specification puts them on the wire (``read_byte_data`` is
write ``[register]``, repeated START, read 1 byte). Included devices:
:class:`RegisterDevice` (generic register file), :class:`TMP102` (temperature
sensor) and :class:`EEPROM24C02` (serial EEPROM).

smbus2 is not needed: ``i2c_rdwr`` accepts ``smbus2.i2c_msg`` objects but only uses
their ``addr``, ``flags``, ``len`` and ``buf`` attributes.
"""

from __future__ import annotations

import errno
import math
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from sessions.actors.i2c._smbus import (
    BLOCK_MAX,
    I2C_M_RD,
    MSG_MAX_LEN,
    RDWR_MAX_MSGS,
    check_address,
    check_block,
    check_int,
)

__all__ = [
    "EEPROM24C02",
    "TMP102",
    "FaultKind",
    "I2cMessage",
    "RegisterDevice",
    "SimAdapter",
    "SimBus",
    "SimDevice",
]

STANDARD_MODE_HZ = 100_000.0
"""The default simulated SCL clock: standard-mode I2C (``SimBus``, and ``clock_hz`` of
an ``i2c`` resource with ``bus = "sim"``)."""

FaultKind = Literal["nack", "eio", "timeout", "disconnect", "hang"]
"""What :meth:`SimAdapter.inject` can make go wrong."""

_FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)
_FAULT_ERRNO = {"nack": errno.ENXIO, "eio": errno.EIO, "timeout": errno.ETIMEDOUT}

I2C_M_TEN = 0x0010  # i2c_msg flag: 10-bit address, not simulated
_BITS_PER_BYTE = 9  # 8 data bits + ACK/NACK
_WAIT_SLICE = 0.05  # longest wait of a stalled transfer between looks at its handle


def _os_error(code: int) -> OSError:
    """An OSError as the kernel's ioctl would raise it."""
    return OSError(code, os.strerror(code))


def _aborted_error() -> OSError:
    return OSError(errno.EBADF, f"{os.strerror(errno.EBADF)} (SimBus was aborted)")


# --------------------------------------------------------------------------- devices


class SimDevice(ABC):
    """Base class of simulated I2C devices: the byte-level hooks the bus calls.

    A transfer is a sequence of phases, each opened by an address byte (START or
    repeated START). For each phase addressed to this device the bus calls
    :meth:`start`; if it returns True (ACK) the bus then calls :meth:`write` once
    with every byte of a write phase, or :meth:`read` one or more times for a read
    phase (an SMBus block read asks for the count byte, then the data). A device
    signals a NACK on a data byte by raising ``OSError`` from ``write``/``read``.
    Subclass it to simulate another chip. Hooks run under the bus lock, one at a time.
    """

    def __init__(self, address: int) -> None:
        self._address = check_address(address, "address")

    @property
    def address(self) -> int:
        """The 7-bit address the device answers on (fixed: the bus indexes by it)."""
        return self._address

    def start(self, read: bool) -> bool:
        """An address phase for this device begins; return False to NACK it."""
        return True

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Receive the data bytes of one write phase (may be empty: a quick write)."""

    @abstractmethod
    def read(self, n: int) -> bytes:
        """Return the next ``n`` bytes of the current read phase."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self._address:#04x})"


class RegisterDevice(SimDevice):
    """A generic register file behind a one-byte pointer register.

    Wire format: a write phase is ``[pointer, data...]``; the first byte sets the
    pointer, the rest are written from there on. A read phase returns registers from
    the pointer on. The pointer auto-increments after each complete register, in
    both directions, wrapping from ``registers - 1`` to 0, and keeps its value
    between transfers. 16-bit registers travel big-endian (MSB first, as most
    sensors do); a read phase that stops after the MSB leaves the pointer where it
    was, and a write phase's odd trailing byte is discarded. A pointer value of
    ``registers`` or more is NACKed (``OSError(EIO)``), the pointer unchanged.

    Note that the SMBus *word* commands (``read_word_data``) are little-endian, so
    on a 16-bit register they return the register byte-swapped, as on hardware.
    """

    def __init__(
        self,
        address: int,
        registers: int = 256,
        width: Literal[8, 16] = 8,
        initial: Mapping[int, int] | None = None,
    ) -> None:
        super().__init__(address)
        check_int("registers", registers, 1, 256)
        if width not in (8, 16):
            raise ValueError(f"width={width!r} must be 8 or 16")
        self.width = width
        self._bytes_per_register = width // 8
        self._max = (1 << width) - 1
        self._values = [0] * registers
        self._pointer = 0
        self._byte_index = 0  # position inside the current register during a read phase
        for register, value in (initial or {}).items():
            self[register] = value

    @property
    def registers(self) -> int:
        """How many registers the device has."""
        return len(self._values)

    @property
    def pointer(self) -> int:
        """The pointer register: where the next read starts."""
        return self._pointer

    def __getitem__(self, register: int) -> int:
        """Read a register directly, bypassing the bus (for tests)."""
        return self._values[check_int("register", register, 0, self.registers - 1)]

    def __setitem__(self, register: int, value: int) -> None:
        """Set a register directly, bypassing the bus (for tests)."""
        check_int("register", register, 0, self.registers - 1)
        self._values[register] = check_int("value", value, 0, self._max)

    def start(self, read: bool) -> bool:
        """Each phase starts at the first byte of the pointed register."""
        self._byte_index = 0
        return True

    def write(self, data: bytes) -> None:
        """Set the pointer from the first byte, then write registers from there."""
        if not data:
            return
        if data[0] >= self.registers:
            raise _os_error(errno.EIO)  # NACK of an out-of-range pointer
        self._pointer = data[0]
        step = self._bytes_per_register
        for i in range(1, len(data) - step + 1, step):
            self._values[self._pointer] = int.from_bytes(data[i : i + step], "big")
            self._pointer = (self._pointer + 1) % self.registers

    def read(self, n: int) -> bytes:
        """Stream registers big-endian from the pointer, auto-incrementing."""
        out = bytearray()
        for _ in range(n):
            value = self._values[self._pointer]
            shift = 8 * (self._bytes_per_register - 1 - self._byte_index)
            out.append((value >> shift) & 0xFF)
            self._byte_index += 1
            if self._byte_index == self._bytes_per_register:
                self._byte_index = 0
                self._pointer = (self._pointer + 1) % self.registers
        return bytes(out)


class TMP102(SimDevice):
    """Texas Instruments TMP102 temperature sensor (normal 12-bit mode).

    Wire format: a write phase is ``[pointer]`` or ``[pointer, MSB, LSB]``; a read
    phase returns the pointed register MSB first, repeating it (MSB, LSB, MSB, ...)
    if more bytes are read; the pointer does not auto-increment. Registers:

    * 0 temperature: read-only, 12-bit two's complement left-justified in 16 bits,
      0.0625 C per LSB (see :meth:`encode` / :meth:`decode`). Writes to it are
      ignored apart from setting the pointer, as the datasheet makes it read-only.
    * 1 configuration: reset value ``0x60A0``. R1/R0 (resolution), AL (alert) and OS
      are read-only (OS reads 0); the other bits are stored but do not change the
      behaviour: conversions are continuous, 12-bit, without alert logic.
    * 2 T_LOW (reset 75 C) and 3 T_HIGH (reset 80 C): same format as temperature,
      the 4 low bits read as 0.

    Only the two low bits of a pointer byte are used (the others must be 0 on the
    real chip). A write phase with just the MSB leaves the register unchanged.

    The temperature drifts as a slow sine so readings are alive yet reproducible:
    ``temperature + A * (sin(w t + phase) - sin(phase))``, starting at exactly
    ``temperature``, with period :attr:`DRIFT_PERIOD_S` and amplitude chosen so the
    rate never exceeds ``drift`` C/s. ``seed`` picks the phase (None: random);
    ``drift=0`` holds the temperature constant. ``clock`` is the time source in
    seconds (a fake clock makes drift tests exact).
    """

    DRIFT_PERIOD_S = 600.0
    """Period of the simulated drift, seconds."""

    RESOLUTION_C = 0.0625
    """Celsius per LSB of the 12-bit temperature format."""

    _CONFIG_RESET = 0x60A0
    _CONFIG_WRITABLE = 0x1FD0  # F1 F0 POL TM SD CR1 CR0 EM
    _CONFIG_READ_ONLY = 0x6020  # R1 R0 AL (OS reads 0)

    def __init__(
        self,
        address: int = 0x48,
        temperature: float = 25.0,
        *,
        drift: float = 0.01,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(address)
        if not drift >= 0:
            raise ValueError(f"drift={drift!r} must be >= 0 (C per second)")
        self._clock = clock
        self._omega = 2 * math.pi / self.DRIFT_PERIOD_S
        self._amplitude = drift / self._omega  # max slope of A*sin(w t) is A*w
        self._phase = random.Random(seed).uniform(0.0, 2 * math.pi)
        self._anchor = (clock(), float(temperature))  # (time, temperature at that time)
        self._registers = {
            1: self._CONFIG_RESET,
            2: self._word(75.0),
            3: self._word(80.0),
        }
        self._pointer = 0
        self._byte_index = 0
        self._latched = 0  # the register word being read out, latched at its MSB

    @staticmethod
    def encode(celsius: float) -> bytes:
        """Celsius to the 2-byte register format (nearest LSB, clamped to range)."""
        counts = max(-2048, min(2047, round(celsius / TMP102.RESOLUTION_C)))
        return ((counts & 0xFFF) << 4).to_bytes(2, "big")

    @staticmethod
    def decode(raw: bytes | bytearray | Sequence[int]) -> float:
        """The 2 register bytes (MSB first, as read from the wire) to Celsius."""
        if len(raw) != 2:
            raise ValueError(f"raw must be 2 bytes (MSB, LSB), got {len(raw)}")
        counts = ((raw[0] << 8) | raw[1]) >> 4
        if counts & 0x800:  # 12-bit two's complement
            counts -= 0x1000
        return counts * TMP102.RESOLUTION_C

    @classmethod
    def _word(cls, celsius: float) -> int:
        return int.from_bytes(cls.encode(celsius), "big")

    @property
    def temperature(self) -> float:
        """The true temperature now, in Celsius; setting it re-anchors the drift."""
        start, base = self._anchor
        elapsed = self._clock() - start
        wobble = math.sin(self._omega * elapsed + self._phase) - math.sin(self._phase)
        return base + self._amplitude * wobble

    @temperature.setter
    def temperature(self, celsius: float) -> None:
        self._anchor = (self._clock(), float(celsius))  # one assignment: atomic

    @property
    def pointer(self) -> int:
        """The pointer register (0..3)."""
        return self._pointer

    def register(self, index: int) -> int:
        """A register's current 16-bit value, bypassing the bus (for tests)."""
        check_int("index", index, 0, 3)
        return self._word(self.temperature) if index == 0 else self._registers[index]

    def start(self, read: bool) -> bool:
        """Each phase starts at the MSB of the pointed register."""
        self._byte_index = 0
        return True

    def write(self, data: bytes) -> None:
        """Set the pointer; with two more bytes, write a writable register."""
        if not data:
            return
        self._pointer = data[0] & 0x03
        if len(data) < 3 or self._pointer == 0:
            return  # pointer only, incomplete word, or the read-only temperature
        value = (data[1] << 8) | data[2]
        if self._pointer == 1:
            old = self._registers[1]
            value = (value & self._CONFIG_WRITABLE) | (old & self._CONFIG_READ_ONLY)
        else:
            value &= 0xFFF0
        self._registers[self._pointer] = value

    def read(self, n: int) -> bytes:
        """Return the pointed register MSB first, repeating it past 2 bytes."""
        out = bytearray()
        for _ in range(n):
            if self._byte_index % 2 == 0:  # latch at the MSB so MSB/LSB agree
                self._latched = self.register(self._pointer)
            shift = 8 if self._byte_index % 2 == 0 else 0
            out.append((self._latched >> shift) & 0xFF)
            self._byte_index += 1
        return bytes(out)


class EEPROM24C02(SimDevice):
    """Microchip/Atmel 24C02 serial EEPROM: 256 bytes, 8-byte pages.

    Wire format (datasheet): a write phase is ``[word address, data...]``. The
    address alone just sets the address counter (the "dummy write" before a random
    read). Data bytes are written from the address on; the counter's low bits wrap
    *within the page*, so more than ``page_size`` bytes overwrite the page's start.
    A read phase returns bytes from the counter on, wrapping from the last byte to
    address 0. The counter keeps its value between transfers (so ``read_byte`` is a
    "current address read").

    After a write phase carrying data the chip runs its internal write cycle for
    ``write_cycle_s`` and NACKs its address meanwhile (``OSError(ENXIO)``); software
    polls with any transfer (``write_quick`` is the usual one) until it ACKs.
    Address bits above ``size`` are ignored. ``initial`` sets the contents (default
    all 0xFF, as shipped).
    """

    def __init__(
        self,
        address: int = 0x50,
        size: int = 256,
        page_size: int = 8,
        write_cycle_s: float = 0.005,
        *,
        initial: bytes | None = None,
    ) -> None:
        super().__init__(address)
        check_int("size", size, 1, 256)
        check_int("page_size", page_size, 1, size)
        if size & (size - 1) or page_size & (page_size - 1) or size % page_size:
            raise ValueError(f"size={size} and page_size={page_size} must be powers of 2")
        if not write_cycle_s >= 0:
            raise ValueError(f"write_cycle_s={write_cycle_s!r} must be >= 0")
        if initial is not None and len(initial) != size:
            raise ValueError(f"initial has {len(initial)} bytes; size is {size}")
        self.size = size
        self.page_size = page_size
        self.write_cycle_s = write_cycle_s
        self._memory = bytearray(initial if initial is not None else b"\xff" * size)
        self._counter = 0
        self._busy_until = 0.0  # time.monotonic() when the write cycle ends

    @property
    def contents(self) -> bytes:
        """A copy of the whole memory (for tests)."""
        return bytes(self._memory)

    @property
    def pointer(self) -> int:
        """The address counter: where the next read starts."""
        return self._counter

    @property
    def busy(self) -> bool:
        """True during the internal write cycle, when the chip NACKs."""
        return time.monotonic() < self._busy_until

    def start(self, read: bool) -> bool:
        """ACK unless the internal write cycle is running."""
        return not self.busy

    def write(self, data: bytes) -> None:
        """Set the address counter; write any data bytes within its page."""
        if not data:
            return  # address-only phase (quick write / ACK poll): no write cycle
        address = data[0] % self.size
        if len(data) == 1:
            self._counter = address
            return
        page = address - address % self.page_size
        offset = address % self.page_size
        for value in data[1:]:
            self._memory[page + offset] = value
            offset = (offset + 1) % self.page_size  # roll over within the page
        self._counter = page + offset
        self._busy_until = time.monotonic() + self.write_cycle_s

    def read(self, n: int) -> bytes:
        """Sequential read from the address counter, wrapping at the end of memory."""
        out = bytearray()
        for _ in range(n):
            out.append(self._memory[self._counter])
            self._counter = (self._counter + 1) % self.size
        return bytes(out)


# --------------------------------------------------------------------------- the bus


class I2cMessage(Protocol):
    """What ``i2c_rdwr`` uses of a message: the fields of ``smbus2.i2c_msg``.

    ``buf`` is a ctypes ``c_char`` pointer or array (smbus2) or a ``bytearray``;
    read messages get it filled in.
    """

    addr: int
    flags: int
    len: int
    buf: Any


@dataclass
class _Fault:
    kind: str
    address: int | None  # None: any address
    remaining: int


class SimAdapter:
    """One physical simulated bus: its devices, its bus lock and pending faults.

    Several :class:`SimBus` handles may be open on one adapter; they share the lock
    (transfers never overlap, as with the kernel's adapter lock) and the faults.
    ``devices`` is a mapping address -> device (keys must match ``device.address``)
    or an iterable of devices.
    """

    def __init__(
        self, devices: Mapping[int, SimDevice] | Iterable[SimDevice] | None = None
    ) -> None:
        # Held for the whole of each transfer. Not reentrant: to make two transfers
        # one unit, hold a lock of your own around both calls.
        self._lock = threading.Lock()
        # Stalled transfers (a "hang") and those waiting behind them wait on this; the
        # wait releases the lock, so release(), inject() and abort() still get it.
        self._cond = threading.Condition(self._lock)
        self._devices: dict[int, SimDevice] = {}
        self._faults: list[_Fault] = []
        # Bumped by "disconnect": handles opened before the bump raise ENODEV.
        self._epoch = 0
        self._stalled = 0  # transfers stalled by a "hang" right now
        self._releases = 0  # bumped by release(): ends the hangs in progress
        if isinstance(devices, Mapping):
            for address, device in devices.items():
                if address != device.address:
                    raise ValueError(
                        f"devices key {address:#04x} does not match {device!r}.address"
                    )
                self.attach(device)
        else:
            for device in devices or ():
                self.attach(device)

    @property
    def devices(self) -> Mapping[int, SimDevice]:
        """A snapshot of the attached devices by address."""
        with self._lock:
            return dict(self._devices)

    def attach(self, device: SimDevice) -> None:
        """Connect a device to the bus (between transfers)."""
        if not isinstance(device, SimDevice):
            raise TypeError(f"device must be a SimDevice, got {type(device).__name__}")
        with self._lock:
            if device.address in self._devices:
                raise ValueError(
                    f"address {device.address:#04x} is already taken by "
                    f"{self._devices[device.address]!r}"
                )
            self._devices[device.address] = device

    def detach(self, address: int) -> SimDevice:
        """Disconnect and return the device at ``address``; it then NACKs (ENXIO)."""
        with self._lock:
            try:
                return self._devices.pop(address)
            except KeyError:
                raise KeyError(f"no device at address {address:#04x}") from None

    def inject(self, kind: FaultKind, address: int | None = None, count: int = 1) -> None:
        """Make the next ``count`` transfers to ``address`` (None: any) fail.

        ``"nack"`` raises ``OSError(ENXIO)``, ``"eio"`` ``OSError(EIO)``,
        ``"timeout"`` ``OSError(ETIMEDOUT)``; ``"hang"`` stalls the transfer, holding
        the bus, until :meth:`release` (then ``OSError(ETIMEDOUT)``) or until its handle
        is aborted (:meth:`SimBus.abort`: ``OSError(EBADF)``). Faults are used up in
        the order injected, one per transfer, and strike at the address byte, so the
        failing transfer never reaches that device. ``"disconnect"`` takes the whole
        adapter away: every transfer on each handle open now raises
        ``OSError(ENODEV)`` until that handle is reopened (``open()``, or a new
        ``SimBus`` on this adapter); ``address`` must be None and ``count`` is
        ignored.
        """
        if kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {_FAULT_KINDS}")
        if address is not None:
            check_address(address, "address")
        if kind == "disconnect":
            if address is not None:
                raise ValueError("'disconnect' affects the whole adapter; address must be None")
            with self._lock:
                self._epoch += 1
            return
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"count={count!r} must be an int >= 1")
        with self._lock:
            self._faults.append(_Fault(kind, address, count))

    def clear_faults(self) -> None:
        """Drop pending nack/eio/timeout/hang faults and end a hang in progress, as
        :meth:`release` does (a disconnect needs a reopen)."""
        with self._lock:
            self._faults.clear()
            self._releases += 1
            self._cond.notify_all()

    def release(self) -> None:
        """End every hang in progress: each stalled transfer fails with
        ``OSError(ETIMEDOUT)``, as a bus driver reports a transfer it timed out, and the
        transfers waiting behind it go on. Hangs still pending stall later transfers."""
        with self._lock:
            self._releases += 1
            self._cond.notify_all()

    @property
    def stalled(self) -> int:
        """How many transfers a hang is holding right now (0 or 1: it holds the bus)."""
        return self._stalled

    def _stall(self, bus: SimBus) -> OSError:
        """A hang struck ``bus``'s transfer: hold the bus until :meth:`release` or until
        ``bus`` is aborted; the error the transfer then fails with. Lock held."""
        releases = self._releases
        self._stalled += 1
        try:
            while self._releases == releases:
                if bus._aborted:
                    return _aborted_error()
                self._cond.wait(_WAIT_SLICE)  # a slice: abort() never blocks to notify
        finally:
            self._stalled -= 1
            self._cond.notify_all()
        return _os_error(errno.ETIMEDOUT)

    def _wait_behind_stall(self, bus: SimBus) -> None:
        """A stalled transfer holds the bus: wait until it ends (``EBADF`` if ``bus`` is
        aborted meanwhile). Lock held."""
        while self._stalled:
            if bus._aborted:
                raise _aborted_error()
            self._cond.wait(_WAIT_SLICE)

    def _take_fault(self, address: int) -> _Fault | None:
        """Use up the first pending fault for ``address``. Call with the lock held."""
        for i, fault in enumerate(self._faults):
            if fault.address is None or fault.address == address:
                fault.remaining -= 1
                if fault.remaining == 0:
                    del self._faults[i]
                return fault
        return None

    def __repr__(self) -> str:
        addresses = ", ".join(f"{a:#04x}" for a in sorted(self._devices))
        return f"SimAdapter(devices=[{addresses}])"


class _Transfer:
    """One transfer in progress: runs its phases and counts the bytes on the wire."""

    def __init__(self, adapter: SimAdapter, bus: SimBus) -> None:
        self._adapter = adapter
        self._bus = bus
        self.wire_bytes = 0

    def _address_phase(self, address: int, read: bool) -> SimDevice:
        self.wire_bytes += 1  # the address byte goes out before anyone can NACK it
        fault = self._adapter._take_fault(address)
        if fault is not None:
            if fault.kind == "hang":
                raise self._adapter._stall(self._bus)
            raise _os_error(_FAULT_ERRNO[fault.kind])
        device = self._adapter._devices.get(address)
        if device is None or not device.start(read):
            raise _os_error(errno.ENXIO)  # nobody ACKed the address
        return device

    def write(self, address: int, data: bytes) -> None:
        device = self._address_phase(address, read=False)
        device.write(data)
        self.wire_bytes += len(data)

    def read(self, address: int, n: int) -> bytes:
        device = self._address_phase(address, read=True)
        return self._receive(device, n)

    def read_counted(self, address: int) -> bytes:
        """An SMBus block read phase: a count byte, then that many data bytes."""
        device = self._address_phase(address, read=True)
        count = self._receive(device, 1)[0]
        if count > BLOCK_MAX:
            raise _os_error(errno.EPROTO)  # as the kernel rejects a bad block count
        return self._receive(device, count)

    def _receive(self, device: SimDevice, n: int) -> bytes:
        data = bytes(device.read(n))
        if len(data) != n:
            raise RuntimeError(f"{device!r}.read({n}) returned {len(data)} bytes")
        self.wire_bytes += n
        return data


def _fill(buf: Any, data: bytes) -> None:
    """Copy ``data`` into an i2c message buffer."""
    if isinstance(buf, (bytearray, memoryview)):
        buf[: len(data)] = data
    else:  # ctypes POINTER(c_char) as in smbus2.i2c_msg: no slice assignment
        for i, value in enumerate(data):
            buf[i] = bytes((value,))


class SimBus:
    """A drop-in for ``smbus2.SMBus`` talking to simulated devices.

    ``bus`` is only recorded (an int or a path, as for smbus2); without it the
    handle stays closed until :meth:`open`, and transfers on a closed handle raise
    ``OSError(EBADF)``. ``force`` is accepted and ignored (no kernel drivers to
    override). ``devices`` is a :class:`SimAdapter` to share, or devices to put on a
    new one (see :class:`SimAdapter`). ``clock_hz`` sets the bit time; pass
    ``math.inf`` to make transfers instantaneous.

    Every method is one atomic transfer. Arguments are checked as the hardware
    limits them: addresses 0x03..0x77, bytes 0..255, words 0..65535, blocks of at
    most 32 bytes (``ValueError`` naming the parameter).
    """

    def __init__(
        self,
        bus: int | str | None = None,
        force: bool = False,
        *,
        devices: Mapping[int, SimDevice] | Iterable[SimDevice] | SimAdapter | None = None,
        clock_hz: float = STANDARD_MODE_HZ,
    ) -> None:
        if not clock_hz > 0:
            raise ValueError(f"clock_hz={clock_hz!r} must be > 0")
        self.clock_hz = clock_hz
        self._adapter = devices if isinstance(devices, SimAdapter) else SimAdapter(devices)
        self._bus: int | str | None = None
        self._epoch: int | None = None  # adapter epoch at open(); None: closed
        self._aborted = False
        self._pec = 0
        if bus is not None:
            self.open(bus)
        self.address: int | None = None
        """The address of the last SMBus transfer, as smbus2 keeps it."""
        self.force = force

    # -- handle lifecycle, as smbus2 ------------------------------------------------

    def __enter__(self) -> SimBus:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self, bus: int | str) -> None:
        """Open the handle (again): clears a disconnect injected before this call, and
        an :meth:`abort`."""
        if not isinstance(bus, (int, str)):
            raise TypeError(f"Unexpected type(bus)={type(bus)}")
        self._bus = bus
        with self._adapter._lock:
            self._epoch = self._adapter._epoch
            self._aborted = False

    def abort(self) -> None:
        """Tear the handle down under a transfer in progress, from any thread.

        A transfer stalled by a hang on this handle (or waiting behind one) fails at
        once with ``OSError(EBADF)``, and so does every later transfer until
        :meth:`open`; :meth:`close` still works. This is what a supervised actor's
        ``abort()`` does to a simulated bus. Never blocks: if the adapter is busy, a
        stalled transfer notices within 50 ms.
        """
        self._aborted = True
        lock = self._adapter._lock
        if lock.acquire(blocking=False):
            try:
                self._adapter._cond.notify_all()
            finally:
                lock.release()

    @property
    def aborted(self) -> bool:
        """True after :meth:`abort` until the next :meth:`open`."""
        return self._aborted

    def close(self) -> None:
        """Close the handle; the devices and the adapter keep their state."""
        self._epoch = None
        self._pec = 0
        self.address = None

    @property
    def closed(self) -> bool:
        """True until :meth:`open` and after :meth:`close`."""
        return self._epoch is None

    @property
    def bus(self) -> int | str | None:
        """The bus number or path given to :meth:`open`."""
        return self._bus

    @property
    def pec(self) -> int:
        """SMBus Packet Error Checking, 0 or 1 (settable, as in smbus2).

        The PEC byte is counted in the bit time of SMBus transfers; devices do not
        check it.
        """
        return self._pec

    @pec.setter
    def pec(self, enable: bool | int) -> None:
        self.enable_pec(bool(enable))

    def enable_pec(self, enable: bool = True) -> None:
        """Enable or disable PEC (the smbus2 method behind ``pec``)."""
        self._pec = int(enable)

    # -- the shared adapter ------------------------------------------------------------

    @property
    def adapter(self) -> SimAdapter:
        """The simulated bus this handle is open on."""
        return self._adapter

    @property
    def devices(self) -> Mapping[int, SimDevice]:
        """A snapshot of the attached devices by address."""
        return self._adapter.devices

    def attach(self, device: SimDevice) -> None:
        """Connect a device to the bus (see :meth:`SimAdapter.attach`)."""
        self._adapter.attach(device)

    def detach(self, address: int) -> SimDevice:
        """Disconnect and return a device (see :meth:`SimAdapter.detach`)."""
        return self._adapter.detach(address)

    def inject(self, kind: FaultKind, address: int | None = None, count: int = 1) -> None:
        """Make upcoming transfers fail (see :meth:`SimAdapter.inject`)."""
        self._adapter.inject(kind, address, count)

    # -- transfers -------------------------------------------------------------------

    @contextmanager
    def _transfer(self, i2c_addr: int | None, force: bool | None, pec: bool) -> Iterator[_Transfer]:
        """Hold the bus for one transfer, then sleep for its bits on the wire.

        ``i2c_addr`` is recorded as the SMBus slave address (None for ``i2c_rdwr``,
        which does not set it); ``pec`` adds the PEC byte to the bit time if enabled.
        """
        adapter = self._adapter
        with adapter._lock:
            if self._epoch is None:
                raise OSError(errno.EBADF, f"{os.strerror(errno.EBADF)} (SimBus is closed)")
            if self._aborted:
                raise _aborted_error()
            if adapter._stalled:
                adapter._wait_behind_stall(self)
            if self._epoch != adapter._epoch:
                raise _os_error(errno.ENODEV)  # the adapter went away: reopen
            if i2c_addr is not None:
                self.address = i2c_addr
            transfer = _Transfer(adapter, self)
            try:
                yield transfer
                if pec and self._pec:
                    transfer.wire_bytes += 1
            finally:
                # The bytes that went out took their time even if the transfer failed.
                time.sleep(transfer.wire_bytes * _BITS_PER_BYTE / self.clock_hz)

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        """SMBus quick command: just the address byte (write bit); raises unless ACKed."""
        check_address(i2c_addr)
        with self._transfer(i2c_addr, force, pec=False) as t:
            t.write(i2c_addr, b"")

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        """SMBus receive byte: read 1 byte at the device's current pointer."""
        check_address(i2c_addr)
        with self._transfer(i2c_addr, force, pec=True) as t:
            return t.read(i2c_addr, 1)[0]

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        """SMBus send byte: write ``[value]`` (sets the pointer on most devices)."""
        check_address(i2c_addr)
        data = bytes([check_int("value", value, 0, 0xFF)])
        with self._transfer(i2c_addr, force, pec=True) as t:
            t.write(i2c_addr, data)

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        """SMBus read byte: write ``[register]``, repeated START, read 1 byte."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        with self._transfer(i2c_addr, force, pec=True) as t:
            t.write(i2c_addr, bytes([register]))
            return t.read(i2c_addr, 1)[0]

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        """SMBus write byte: write ``[register, value]``."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        check_int("value", value, 0, 0xFF)
        with self._transfer(i2c_addr, force, pec=True) as t:
            t.write(i2c_addr, bytes([register, value]))

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        """SMBus read word: write ``[register]``, repeated START, read 2 bytes LSB first."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        with self._transfer(i2c_addr, force, pec=True) as t:
            t.write(i2c_addr, bytes([register]))
            return int.from_bytes(t.read(i2c_addr, 2), "little")

    def write_word_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        """SMBus write word: write ``[register, LSB, MSB]``."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        check_int("value", value, 0, 0xFFFF)
        with self._transfer(i2c_addr, force, pec=True) as t:
            t.write(i2c_addr, bytes([register]) + value.to_bytes(2, "little"))

    def process_call(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> int:
        """SMBus process call: write ``[register, LSB, MSB]``, repeated START, read a word."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        check_int("value", value, 0, 0xFFFF)
        with self._transfer(i2c_addr, force, pec=True) as t:
            t.write(i2c_addr, bytes([register]) + value.to_bytes(2, "little"))
            return int.from_bytes(t.read(i2c_addr, 2), "little")

    def read_block_data(self, i2c_addr: int, register: int, force: bool | None = None) -> list[int]:
        """SMBus block read: write ``[register]``, repeated START, read a count then data.

        A count above 32 raises ``OSError(EPROTO)`` as the kernel does.
        """
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        with self._transfer(i2c_addr, force, pec=True) as t:
            t.write(i2c_addr, bytes([register]))
            return list(t.read_counted(i2c_addr))

    def write_block_data(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> None:
        """SMBus block write: write ``[register, count, data...]``."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        payload = bytes(check_block("data", data))
        with self._transfer(i2c_addr, force, pec=True) as t:
            t.write(i2c_addr, bytes([register, len(payload)]) + payload)

    def block_process_call(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> list[int]:
        """SMBus block process call: block write, repeated START, block read."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        payload = bytes(check_block("data", data))
        with self._transfer(i2c_addr, force, pec=True) as t:
            t.write(i2c_addr, bytes([register, len(payload)]) + payload)
            return list(t.read_counted(i2c_addr))

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        """I2C block read: write ``[register]``, repeated START, read ``length`` bytes."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        check_int("length", length, 0, BLOCK_MAX)
        with self._transfer(i2c_addr, force, pec=False) as t:
            t.write(i2c_addr, bytes([register]))
            return list(t.read(i2c_addr, length))

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> None:
        """I2C block write: write ``[register, data...]`` (no count byte)."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        payload = bytes(check_block("data", data))
        with self._transfer(i2c_addr, force, pec=False) as t:
            t.write(i2c_addr, bytes([register]) + payload)

    def i2c_rdwr(self, *i2c_msgs: I2cMessage) -> None:
        """Run messages as one combined transfer (repeated STARTs, one STOP).

        Write messages send ``buf[:len]``; read messages (``flags & I2C_M_RD``) get
        ``buf`` filled. Messages may address different devices; if one fails, the
        earlier ones have already reached their devices, as on the wire.
        """
        if not 1 <= len(i2c_msgs) <= RDWR_MAX_MSGS:
            raise ValueError(
                f"i2c_msgs has {len(i2c_msgs)} messages; expected 1..{RDWR_MAX_MSGS}"
            )
        for i, msg in enumerate(i2c_msgs):
            check_address(msg.addr, f"i2c_msgs[{i}].addr")
            check_int(f"i2c_msgs[{i}].len", msg.len, 0, MSG_MAX_LEN)
            if msg.flags & I2C_M_TEN:
                raise ValueError(f"i2c_msgs[{i}]: 10-bit addressing is not simulated")
        with self._transfer(None, None, pec=False) as t:
            for msg in i2c_msgs:
                if msg.flags & I2C_M_RD:
                    _fill(msg.buf, t.read(msg.addr, msg.len))
                else:
                    t.write(msg.addr, bytes(msg.buf[: msg.len]))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"open bus={self._bus!r}"
        return f"SimBus({state}, {self._adapter!r}, clock_hz={self.clock_hz:g})"
