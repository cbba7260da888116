"""The ``i2c`` resource kind: one supervised actor per physical I2C bus.

Why an actor per bus
--------------------
Devices on an I2C bus keep their pointer register *between* transfers, so "write the
pointer, then read" done as two transfers can read another caller's register when
two threads (or processes) interleave. ``smbus2.SMBus`` has no locking at all and
caches the slave address, so two threads sharing one object can even send a transfer
to the other thread's device. One actor owning the bus runs every call to completion
before the next one starts, so :meth:`I2CActor.transaction` makes any multi-transfer
sequence atomic for every caller in the process; ``process_lock = true`` extends that
to other processes that lock the same file. It is one actor per *bus*, never one per
device: devices on one bus share the wire, and per-device actors would race exactly
as threads do.

Configuration (``[resources.NAME]`` with ``kind = "i2c"``; see :class:`I2COptions`)::

    [resources.bus]
    kind = "i2c"
    bus = "sim"              # 1 (/dev/i2c-1), "/dev/i2c-1", or "sim"
    clock_hz = 400_000
    devices = [
        { type = "tmp102", address = 0x48 },
        { type = "eeprom24c02", address = 0x50 },
        { type = "registers", address = 0x20, width = 16 },
    ]
    init = [{ address = 0x20, register = 0x01, value = 0x60 }]

Calls (through a handle, each returns a future of plain data): the ``smbus2.SMBus``
methods ``read_byte``, ``write_byte``, ``read_byte_data``, ``write_byte_data``,
``read_word_data``, ``write_word_data``, ``read_i2c_block_data``,
``write_i2c_block_data``, ``read_block_data``, ``write_block_data``,
``process_call``, ``block_process_call``, ``write_quick`` and ``i2c_rdwr`` (which
returns the data of its read messages as a list of ``bytes``), plus ``scan()`` and
``transaction(fn, *args, **kwargs)``, where ``fn`` gets a :class:`GuardedBus` valid
for that call only.

Errors: faults versus caller errors
-----------------------------------
Every bus operation is wrapped; the kernel's error code (Documentation/i2c/fault-codes)
decides who hears about it. A *fault* propagates as the original ``OSError``, so the
core reports ``ResourceFault`` to the caller with that ``OSError`` as ``__cause__`` and
restarts the actor: the bus is reopened and ``pec``, ``force`` and the ``init`` writes
are applied again. Everything else goes to the caller only; the bus stays up.

=================================  ===================================================
errno of the ``OSError``           outcome
=================================  ===================================================
ENXIO (6), EREMOTEIO (121)         NACK: ``DeviceError(address=, errno=)`` to the
                                   caller; in ``scan()`` the address is just absent
EAGAIN (11)                        lost arbitration: ``DeviceError`` to the caller
EPROTO, EBADMSG                    bad block count, bad PEC byte: ``DeviceError``
EBUSY claiming an address (hw)     a kernel driver owns it: ``DeviceError`` (use
                                   ``force``); only on hardware, where smbus2 shows it
EIO, ETIMEDOUT, EBUSY              ``DeviceError`` for the first ``fault_threshold -
                                   1`` in a row; the ``fault_threshold``-th in a row
                                   is a **fault**. A successful transfer resets the
                                   count; NACKs neither count nor reset it
ENODEV (19) for an address, while  NACK, as ENXIO: Linux's ``i2c-stub`` answers
the device node is there (hw)      ENODEV for an address with no chip, where real bus
                                   drivers answer ENXIO (the error keeps ``errno=19``)
ENODEV, EBADF, ENOENT, ESHUTDOWN   **fault** at once: the adapter (or our handle on
                                   it) is gone
EOPNOTSUPP (95)                    the adapter cannot do that transfer type (e.g.
                                   ``i2c_rdwr`` on an SMBus-only adapter): an
                                   ``OSError(EOPNOTSUPP)`` to the caller naming the
                                   missing ``I2C_FUNC_*`` capability; not a fault
any other errno (EINVAL, ...)      the ``OSError`` to the caller, unchanged
(bad argument: register 256)       ``ValueError`` (``TypeError`` for a non-int) to the
                                   caller, before any transfer
=================================  ===================================================

``DeviceError`` is raised ``from`` the ``OSError``. Inside ``transaction(fn)`` the
same mapping applies per operation, so ``fn`` may catch a ``DeviceError`` (an EEPROM
ACK-poll); a fault is raised again after ``fn`` returns even if ``fn`` swallowed it.

Hangs
-----
Nothing here waits without a bound but the kernel: one transfer is one ioctl, ended by
the bus driver's own timeout (the adapter's; a device holding SCL low gives
ETIMEDOUT). The ``process_lock`` is polled (non-blocking ``flock``) for at most
``lock_timeout``, never waited for in the kernel. ``abort(bus)`` (the runtime gave
up on a stalled call) replaces the bus descriptor by an ``O_PATH`` one (``dup2``), so
every later ioctl fails with EBADF (a fault) while the number stays taken until
``disconnect()``; it ends a wait for the process lock; on the simulator it calls
``SimBus.abort()``, which also ends a transfer stalled by ``inject("hang")``. An ioctl
already in the kernel cannot be interrupted: it ends at the driver's timeout.

The simulator
-------------
``bus = "sim"`` uses :mod:`sessions.actors.i2c.sim` (smbus2 is then not needed; it is only
imported when a hardware bus connects). The simulated bus (a ``SimAdapter``) is
built once, when the resource is created, so device state survives restarts as a
chip's does. To reach it from Python (to inject faults or inspect registers): pass
your own ``SimAdapter`` as ``devices`` (or ``adapter``), or name it with
``sim_name = "..."`` and look it up with :func:`sim_adapter`.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import importlib.util
import inspect
import logging
import os
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from sessions._errors import DeviceError
from sessions._redact import describe
from sessions._runtime.contract import ResourceActor
from sessions.actors.i2c._smbus import (
    ADDRESS_MAX,
    ADDRESS_MIN,
    BLOCK_MAX,
    I2C_M_RD,
    MSG_MAX_LEN,
    RDWR_MAX_MSGS,
    check_address,
    check_block,
    check_int,
)
from sessions.actors.i2c.sim import (
    EEPROM24C02,
    STANDARD_MODE_HZ,
    TMP102,
    RegisterDevice,
    SimAdapter,
    SimBus,
    SimDevice,
)

__all__ = [
    "GuardedBus",
    "I2CActor",
    "I2COptions",
    "InitWrite",
    "SimDeviceSpec",
    "sim_adapter",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

_FUNC_I2C = 0x00000001  # I2C_FUNCS bits (linux/i2c.h)
_FUNC_SMBUS_QUICK = 0x00010000
_FUNC_SMBUS_READ_BYTE = 0x00020000

#: The capability each call needs, as ``i2cdetect -F`` names it: what an EOPNOTSUPP
#: (the adapter cannot do that transfer type) reports as missing.
_FUNC_NEEDED: dict[str, tuple[int, str]] = {
    "i2c_rdwr": (_FUNC_I2C, "I2C_FUNC_I2C, plain I2C transfers (I2C_RDWR)"),
    "write_quick": (_FUNC_SMBUS_QUICK, "I2C_FUNC_SMBUS_QUICK"),
    "read_byte": (_FUNC_SMBUS_READ_BYTE, "I2C_FUNC_SMBUS_READ_BYTE"),
    "write_byte": (0x00040000, "I2C_FUNC_SMBUS_WRITE_BYTE"),
    "read_byte_data": (0x00080000, "I2C_FUNC_SMBUS_READ_BYTE_DATA"),
    "write_byte_data": (0x00100000, "I2C_FUNC_SMBUS_WRITE_BYTE_DATA"),
    "read_word_data": (0x00200000, "I2C_FUNC_SMBUS_READ_WORD_DATA"),
    "write_word_data": (0x00400000, "I2C_FUNC_SMBUS_WRITE_WORD_DATA"),
    "process_call": (0x00800000, "I2C_FUNC_SMBUS_PROC_CALL"),
    "read_block_data": (0x01000000, "I2C_FUNC_SMBUS_READ_BLOCK_DATA"),
    "write_block_data": (0x02000000, "I2C_FUNC_SMBUS_WRITE_BLOCK_DATA"),
    "read_i2c_block_data": (0x04000000, "I2C_FUNC_SMBUS_READ_I2C_BLOCK"),
    "write_i2c_block_data": (0x08000000, "I2C_FUNC_SMBUS_WRITE_I2C_BLOCK"),
    "block_process_call": (0x00008000, "I2C_FUNC_SMBUS_BLOCK_PROC_CALL"),
}

#: The device did not acknowledge: one device's problem, the bus is fine.
NACK_ERRNOS = frozenset({errno.ENXIO, errno.EREMOTEIO})
#: The device answered, but with something wrong (or another master won the bus).
DEVICE_ERRNOS = frozenset({errno.EAGAIN, errno.EPROTO, errno.EBADMSG})
#: Vague bus trouble: a fault only when it repeats ``fault_threshold`` times in a row.
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.ETIMEDOUT, errno.EBUSY})
#: The adapter (or our handle on it) is gone: a fault at once.
FATAL_ERRNOS = frozenset({errno.ENODEV, errno.EBADF, errno.ENOENT, errno.ESHUTDOWN})

# Addresses i2cdetect probes with a read rather than a quick write: a quick write can
# corrupt the AT24RF08 EEPROM (0x50-0x5F), and some chips at 0x30-0x37 lock up on it.
_READ_PROBED = frozenset({*range(0x30, 0x38), *range(0x50, 0x60)})


# --------------------------------------------------------------------------- options


def _int_like(value: Any, kind: str, message: str) -> int:
    """An int from TOML (int) or from ``${ENV}`` substitution (``"72"``, ``"0x48"``)."""
    if isinstance(value, str):
        try:
            return int(value.strip(), 0)
        except ValueError:
            raise PydanticCustomError(kind, message) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError(kind, message)
    return value


def _address(value: Any) -> int:
    message = f"must be a 7-bit I2C address in {ADDRESS_MIN:#04x}..{ADDRESS_MAX:#04x}"
    address = _int_like(value, "i2c_address", message)
    if not ADDRESS_MIN <= address <= ADDRESS_MAX:
        raise PydanticCustomError("i2c_address", message)
    return address


def _register(value: Any) -> int:
    message = "must be a register number in 0..255"
    register = _int_like(value, "i2c_register", message)
    if not 0 <= register <= 0xFF:
        raise PydanticCustomError("i2c_register", message)
    return register


Address = Annotated[
    int,
    BeforeValidator(_address),
    Field(json_schema_extra={"minimum": ADDRESS_MIN, "maximum": ADDRESS_MAX}),
]
Register = Annotated[
    int, BeforeValidator(_register), Field(json_schema_extra={"minimum": 0, "maximum": 255})
]


def _default(device: type[SimDevice], key: str) -> Any:
    """The default of ``key`` in ``device``'s constructor (the one place it is written)."""
    return inspect.signature(device).parameters[key].default


_DEVICE_KEYS: dict[str, tuple[str, ...]] = {
    "tmp102": ("temperature", "drift", "seed"),
    "eeprom24c02": ("size", "page_size", "write_cycle_s", "initial"),
    "registers": ("registers", "width", "initial"),
}


class SimDeviceSpec(BaseModel):
    """One simulated device for ``bus = "sim"``: ``{ type = "tmp102", address = 0x48 }``.

    The keys after ``address`` belong to one type each (see their descriptions); a key
    given for another type is an error rather than silently ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["tmp102", "eeprom24c02", "registers"] = Field(
        description="tmp102 (temperature sensor), eeprom24c02 (256-byte EEPROM) or "
        "registers (a generic register file behind a pointer register)."
    )
    address: Address = Field(description="7-bit address, 0x03..0x77.")
    # None: the device's own default (its constructor's, quoted in the description).
    temperature: float | None = Field(
        None, description=f"tmp102: start temperature, C ({_default(TMP102, 'temperature')})."
    )
    drift: float | None = Field(
        None, ge=0, description=f"tmp102: max drift, C/s ({_default(TMP102, 'drift')}; 0 holds)."
    )
    seed: int | None = Field(None, description="tmp102: drift phase seed (random).")
    size: int | None = Field(
        None, description=f"eeprom24c02: bytes, a power of 2 ({_default(EEPROM24C02, 'size')})."
    )
    page_size: int | None = Field(
        None, description=f"eeprom24c02: page bytes ({_default(EEPROM24C02, 'page_size')})."
    )
    write_cycle_s: float | None = Field(
        None,
        ge=0,
        description="eeprom24c02: internal write cycle, s "
        f"({_default(EEPROM24C02, 'write_cycle_s')}).",
    )
    registers: int | None = Field(
        None,
        ge=1,
        le=256,
        description=f"registers: how many ({_default(RegisterDevice, 'registers')}).",
    )
    width: Literal[8, 16] | None = Field(
        None, description=f"registers: bits per register ({_default(RegisterDevice, 'width')})."
    )
    initial: dict[int, int] | None = Field(
        None,
        description="registers: {register: value}; eeprom24c02: {address: byte} "
        "(the rest 0xFF); default all 0 / all 0xFF.",
    )

    @model_validator(mode="after")
    def _check_keys_and_build(self) -> SimDeviceSpec:
        allowed = _DEVICE_KEYS[self.type]
        for key in self.model_fields_set - {"type", "address"}:
            if key not in allowed:
                raise PydanticCustomError(
                    "i2c_device_key",
                    "key '{key}' does not apply to type '{type}' (its keys: address, {keys})",
                    {"key": key, "type": self.type, "keys": ", ".join(allowed)},
                )
        try:
            self.build()
        except (TypeError, ValueError) as err:
            raise PydanticCustomError(
                "i2c_device",
                "{type} device rejected its keys: {err}",
                {"type": self.type, "err": str(err)},
            ) from None
        return self

    def build(self) -> SimDevice:
        """A new simulated device with these settings (the device's own defaults for
        the keys not given)."""
        given = {
            key: value
            for key in _DEVICE_KEYS[self.type]
            if key != "initial" and (value := getattr(self, key)) is not None
        }
        if self.type == "tmp102":
            return TMP102(self.address, **given)
        if self.type == "eeprom24c02":
            chip = EEPROM24C02(self.address, **given)
            if self.initial is None:
                return chip
            memory = bytearray(chip.contents)  # erased, as the chip comes
            for address, value in self.initial.items():
                if not 0 <= address < chip.size or not 0 <= value <= 0xFF:
                    raise ValueError(
                        f"initial[{address}]={value} is not a byte in 0..{chip.size - 1}"
                    )
                memory[address] = value
            return EEPROM24C02(self.address, **given, initial=bytes(memory))
        return RegisterDevice(self.address, **given, initial=self.initial)


class InitWrite(BaseModel):
    """A device init write, applied at connect and after every reconnect, in order.

    ``{ address = 0x20, register = 0x01, value = 0x60 }`` is ``write_byte_data``;
    with ``word = true`` it is ``write_word_data``, which SMBus sends LSB first;
    ``byteorder = "big"`` sends the MSB first instead, as most sensors' 16-bit
    registers expect (TMP102: ``{ address = 0x48, register = 1, word = true,
    byteorder = "big", value = 0x60A0 }``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Address = Field(description="7-bit device address, 0x03..0x77.")
    # Not named `register`: that would shadow ABCMeta.register on the model class.
    reg: Register = Field(alias="register", description="Register (command) byte, 0..255.")
    word: bool = Field(False, description="16-bit write (write_word_data) instead of a byte.")
    byteorder: Literal["little", "big"] = Field(
        "little", description="For word writes: 'little' (SMBus order) or 'big' (MSB first)."
    )
    value: int = Field(description="0..255, or 0..65535 with word = true.")

    @field_validator("byteorder")
    @classmethod
    def _byteorder_needs_word(cls, value: str, info: ValidationInfo) -> str:
        if value == "big" and not info.data.get("word", False):
            raise PydanticCustomError("i2c_init", "only applies to word = true writes")
        return value

    @field_validator("value", mode="before")
    @classmethod
    def _value_fits(cls, value: Any, info: ValidationInfo) -> int:
        word = bool(info.data.get("word", False))
        message = (
            "must be 0..65535 (word = true)"
            if word
            else ("must be a byte 0..255 (set word = true for a 16-bit write)")
        )
        number = _int_like(value, "i2c_init_value", message)
        if not 0 <= number <= (0xFFFF if word else 0xFF):
            raise PydanticCustomError("i2c_init_value", message)
        return number

    def apply(self, bus: Any) -> None:
        """Do the write on a raw bus (``smbus2.SMBus`` or ``SimBus``)."""
        if not self.word:
            bus.write_byte_data(self.address, self.reg, self.value)
            return
        value = self.value
        if self.byteorder == "big":
            value = ((value & 0xFF) << 8) | (value >> 8)
        bus.write_word_data(self.address, self.reg, value)


_BUS_HELP = (
    "expected a bus number N for /dev/i2c-N, an absolute device path such as '/dev/i2c-1', or 'sim'"
)


class I2COptions(BaseModel):
    """The keys of an ``i2c`` resource (constructor keywords of :class:`I2CActor`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    bus: int | str = Field(
        description="Bus number N (/dev/i2c-N), a device path, or 'sim' for the simulator."
    )
    force: bool = Field(
        False, description="Use I2C_SLAVE_FORCE: talk to addresses a kernel driver owns."
    )
    pec: bool = Field(False, description="SMBus Packet Error Checking on every SMBus call.")
    process_lock: bool = Field(
        False,
        description="Also hold an flock on `lock_path` for each call, so processes that "
        "share the bus (and lock the same file) serialize too.",
    )
    lock_path: str | None = Field(
        None,
        description="File to flock with process_lock. Default: the bus device file; for "
        "'sim', <tempdir>/sessions-i2c-sim-<sim_name or 'default'>.lock.",
    )
    devices: list[SimDeviceSpec] | None = Field(
        None,
        description="'sim' only: the simulated devices on the bus. From Python also a "
        "SimAdapter or a list of SimDevice objects (see `adapter`).",
    )
    adapter: SkipJsonSchema[SimAdapter | None] = Field(
        None, description="'sim' only, Python only: a ready SimAdapter to open."
    )
    sim_name: str | None = Field(
        None,
        min_length=1,
        description="'sim' only: register the simulated bus under this name so "
        "sessions.actors.i2c.sim_adapter(name) returns it (to inject faults).",
    )
    clock_hz: float = Field(
        STANDARD_MODE_HZ,
        gt=0,
        description="'sim' only: simulated SCL clock, Hz (inf: no bit time).",
    )
    init: list[InitWrite] = Field(
        [], description="Device init writes, applied in order at connect and every reconnect."
    )
    fault_threshold: int = Field(
        3,
        ge=1,
        description="EIO/ETIMEDOUT/EBUSY this many times in a row is a bus fault (restart).",
    )
    lock_timeout: float = Field(
        5.0,
        gt=0,
        allow_inf_nan=False,
        description="With process_lock: longest wait for another process to release the "
        "lock (s); past it the call fails with TimeoutError (ETIMEDOUT), not a fault. A "
        "blocking flock would wait forever for a process that hangs holding the bus. "
        "Keep it below call_timeout.",
    )

    @model_validator(mode="before")
    @classmethod
    def _objects_as_adapter(cls, data: Any) -> Any:
        """``devices`` given as a ``SimAdapter`` or as ``SimDevice`` objects: an adapter."""
        if not isinstance(data, Mapping):
            return data
        devices = data.get("devices")
        is_adapter = isinstance(devices, SimAdapter)
        is_objects = (
            isinstance(devices, (list, tuple))
            and bool(devices)
            and all(isinstance(d, SimDevice) for d in devices)
        )
        if not (is_adapter or is_objects):
            return data
        if data.get("adapter") is not None:
            raise PydanticCustomError("i2c_adapter", "give either devices or adapter, not both")
        out = {k: v for k, v in data.items() if k != "devices"}
        out["adapter"] = devices if is_adapter else SimAdapter(devices)
        return out

    @field_validator("bus", mode="before")
    @classmethod
    def _check_bus(cls, value: Any) -> int | str:
        if isinstance(value, str):
            text = value.strip()
            if text == "sim" or text.startswith("/"):
                return text
            if text.isdigit():  # "${I2C_BUS}" substitution gives a string
                return int(text)
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise PydanticCustomError("i2c_bus", _BUS_HELP)

    @field_validator("devices", "adapter", "sim_name", "clock_hz")
    @classmethod
    def _sim_only(cls, value: Any, info: ValidationInfo) -> Any:
        bus = info.data.get("bus")
        if info.field_name == "clock_hz" and value == STANDARD_MODE_HZ:
            return value  # the default (re-validated when the actor is built): not "given"
        if bus is not None and bus != "sim" and value is not None:
            raise PydanticCustomError(
                "i2c_sim_only",
                "only applies to bus = 'sim' (this bus is {bus})",
                {"bus": repr(bus)},
            )
        return value

    @field_validator("devices")
    @classmethod
    def _distinct_addresses(cls, value: list[SimDeviceSpec] | None) -> list[SimDeviceSpec] | None:
        seen: dict[int, int] = {}
        for index, spec in enumerate(value or ()):
            if spec.address in seen:
                raise PydanticCustomError(
                    "i2c_devices",
                    "devices.{a} and devices.{b} both use address {addr}",
                    {"a": seen[spec.address], "b": index, "addr": f"{spec.address:#04x}"},
                )
            seen[spec.address] = index
        return value

    @field_validator("adapter")
    @classmethod
    def _not_with_devices(cls, value: SimAdapter | None, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("devices") is not None:
            raise PydanticCustomError("i2c_adapter", "give either devices or adapter, not both")
        return value


# --------------------------------------------------------------------------- sim registry

_SIM_ADAPTERS: weakref.WeakValueDictionary[str, SimAdapter] = weakref.WeakValueDictionary()


def sim_adapter(name: str) -> SimAdapter:
    """The simulated bus of the live ``i2c`` resource configured with ``sim_name = name``.

    Lets a program that configured its bus in TOML reach the simulator, e.g. to
    ``inject("nack", 0x48)``. Entries last as long as their resource object; a newer
    resource with the same ``sim_name`` replaces the entry. ``KeyError`` if none.
    """
    try:
        return _SIM_ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(_SIM_ADAPTERS)) or "none"
        raise KeyError(f"no simulated I2C bus named {name!r} (live: {known})") from None


# --------------------------------------------------------------------------- arguments


@dataclass
class _SimMsg:
    """An ``i2c_msg`` for the simulator, built from a plain-data message."""

    addr: int
    flags: int
    len: int
    buf: bytearray = field(default_factory=bytearray)


def _read_back(msg: Any) -> bytes:
    """The data a read message received (smbus2 ``i2c_msg`` or a bytearray buffer)."""
    buf = msg.buf
    if isinstance(buf, (bytearray, bytes, memoryview)):
        return bytes(buf[: msg.len])
    return bytes(msg)


# --------------------------------------------------------------------------- the surface


class _SMBusSurface:
    """The ``smbus2.SMBus`` methods, checked and routed through ``_io``.

    Shared by the actor (each method is one handle call) and by :class:`GuardedBus`
    (the bus a ``transaction`` function gets), so both report errors the same way.
    Arguments are checked here because ``smbus2`` silently truncates out-of-range
    values into its ctypes structures (register 256 would write register 0).
    """

    def _io(
        self, method: str, address: int | None, args: tuple[Any, ...], force: bool | None = None
    ) -> Any:
        raise NotImplementedError

    def _probe(self, address: int) -> bool:
        raise NotImplementedError

    def _make_msgs(self, msgs: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def write_quick(self, i2c_addr: int, force: bool | None = None) -> None:
        """SMBus quick command: only the address byte; ``DeviceError`` unless ACKed."""
        check_address(i2c_addr)
        self._io("write_quick", i2c_addr, (i2c_addr,), force)

    def read_byte(self, i2c_addr: int, force: bool | None = None) -> int:
        """SMBus receive byte: one byte at the device's current pointer."""
        check_address(i2c_addr)
        return int(self._io("read_byte", i2c_addr, (i2c_addr,), force))

    def write_byte(self, i2c_addr: int, value: int, force: bool | None = None) -> None:
        """SMBus send byte (on most devices: sets the pointer register)."""
        check_address(i2c_addr)
        check_int("value", value, 0, 0xFF)
        self._io("write_byte", i2c_addr, (i2c_addr, value), force)

    def read_byte_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        """SMBus read byte: write ``register``, repeated START, read one byte."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        return int(self._io("read_byte_data", i2c_addr, (i2c_addr, register), force))

    def write_byte_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        """SMBus write byte: ``[register, value]``."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        check_int("value", value, 0, 0xFF)
        self._io("write_byte_data", i2c_addr, (i2c_addr, register, value), force)

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        """SMBus read word (little-endian on the wire), 0..65535."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        return int(self._io("read_word_data", i2c_addr, (i2c_addr, register), force))

    def write_word_data(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> None:
        """SMBus write word: ``[register, LSB, MSB]``."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        check_int("value", value, 0, 0xFFFF)
        self._io("write_word_data", i2c_addr, (i2c_addr, register, value), force)

    def process_call(
        self, i2c_addr: int, register: int, value: int, force: bool | None = None
    ) -> int:
        """SMBus process call: write a word, read a word back, one transfer."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        check_int("value", value, 0, 0xFFFF)
        return int(self._io("process_call", i2c_addr, (i2c_addr, register, value), force))

    def read_block_data(self, i2c_addr: int, register: int, force: bool | None = None) -> list[int]:
        """SMBus block read: the device sends a count, then that many bytes."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        return list(self._io("read_block_data", i2c_addr, (i2c_addr, register), force))

    def write_block_data(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> None:
        """SMBus block write: ``[register, count, data...]`` (at most 32 bytes)."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        values = check_block("data", data, BLOCK_MAX)
        self._io("write_block_data", i2c_addr, (i2c_addr, register, values), force)

    def block_process_call(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> list[int]:
        """SMBus block process call: block write, then block read, one transfer."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        values = check_block("data", data, BLOCK_MAX)
        return list(self._io("block_process_call", i2c_addr, (i2c_addr, register, values), force))

    def read_i2c_block_data(
        self, i2c_addr: int, register: int, length: int, force: bool | None = None
    ) -> list[int]:
        """I2C block read: write ``register``, read ``length`` (0..32) bytes."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        check_int("length", length, 0, BLOCK_MAX)
        args = (i2c_addr, register, length)
        return list(self._io("read_i2c_block_data", i2c_addr, args, force))

    def write_i2c_block_data(
        self, i2c_addr: int, register: int, data: Sequence[int], force: bool | None = None
    ) -> None:
        """I2C block write: ``[register, data...]`` (no count byte, at most 32 bytes)."""
        check_address(i2c_addr)
        check_int("register", register, 0, 0xFF)
        values = check_block("data", data, BLOCK_MAX)
        self._io("write_i2c_block_data", i2c_addr, (i2c_addr, register, values), force)

    def i2c_rdwr(self, *msgs: Any) -> list[bytes]:
        """Several messages as one combined transfer (repeated STARTs, one STOP).

        Each message is plain data, ``{"addr": 0x50, "write": [0x00]}`` or
        ``{"addr": 0x50, "read": 4}``, or an ``smbus2.i2c_msg`` (filled in place, as
        smbus2 does). Returns the data of the read messages, in order, one ``bytes``
        each: ``i2c_rdwr({"addr": 0x50, "write": [0]}, {"addr": 0x50, "read": 4})``
        gives ``[b"..."]``.
        """
        if not 1 <= len(msgs) <= RDWR_MAX_MSGS:
            raise ValueError(f"i2c_rdwr takes 1..{RDWR_MAX_MSGS} messages, got {len(msgs)}")
        built = self._make_msgs(msgs)
        addresses = {m.addr for m in built}
        address = next(iter(addresses)) if len(addresses) == 1 else None
        self._io("i2c_rdwr", address, tuple(built))
        return [_read_back(m) for m in built if m.flags & I2C_M_RD]

    def scan(self) -> list[int]:
        """Addresses 0x03..0x77 that acknowledge, ascending, as ``i2cdetect`` probes.

        A quick write, or a one-byte read at 0x30-0x37 and 0x50-0x5F where a quick
        write is unsafe. NACKs are the normal answer of an empty address, not errors;
        on hardware, an address a kernel driver owns (``UU`` in i2cdetect) is listed.
        """
        return [a for a in range(ADDRESS_MIN, ADDRESS_MAX + 1) if self._probe(a)]


class GuardedBus(_SMBusSurface):
    """The bus a ``transaction`` function receives: the SMBus methods and ``scan()``.

    Errors are mapped exactly as for handle calls (``DeviceError`` for a NACK, faults
    counted), so a NACK inside a transaction can be caught and retried. It is valid
    only while its transaction runs: using it afterwards raises ``RuntimeError``, so
    a live bus can never leak out to another thread.
    """

    __slots__ = ("_actor", "_conn")

    def __init__(self, actor: I2CActor, conn: _Conn) -> None:
        self._actor: I2CActor | None = actor
        self._conn = conn  # the connection it was made for, even if a newer one opens

    def _live(self) -> I2CActor:
        actor = self._actor
        if actor is None:
            raise RuntimeError("this bus object was only valid during its transaction() call")
        return actor

    def _io(
        self, method: str, address: int | None, args: tuple[Any, ...], force: bool | None = None
    ) -> Any:
        return self._live()._transfer(self._conn, method, address, args, force)

    def _probe(self, address: int) -> bool:
        return self._live()._probe_on(self._conn, address)

    def _make_msgs(self, msgs: Sequence[Any]) -> list[Any]:
        return self._live()._make_msgs(msgs)

    @property
    def pec(self) -> bool:
        """Whether SMBus PEC is on for the open bus (the ``pec`` option)."""
        self._live()
        return bool(self._conn.bus.pec)

    @property
    def force(self) -> bool:
        """The open bus's default ``force`` for every call (the ``force`` option)."""
        self._live()
        return bool(self._conn.bus.force)


class _Conn:
    """One open bus and what belongs to that connection alone.

    Calls bind to the connection they started on (a ``transaction`` keeps using its
    bus even if the runtime abandoned it and a new one opened meanwhile), and
    ``disconnect``/``abort`` touch only their own connection: an abandoned
    incarnation still disconnecting must not close its successor's lock file.
    """

    __slots__ = ("aborted", "bus", "closing", "fault", "lock_fd", "strikes")

    def __init__(self, bus: Any) -> None:
        self.bus = bus
        self.lock_fd: int | None = None
        self.strikes = 0
        """EIO/ETIMEDOUT/EBUSY in a row on this bus."""
        self.fault: BaseException | None = None
        """The OSError this connection classified as a fault (recognised by identity)."""
        self.aborted = threading.Event()
        """Set by abort(): also wakes a wait for the process lock."""
        self.closing = threading.Lock()
        """Held while the bus descriptor is swapped (abort) or closed (disconnect), so
        abort() never touches a descriptor number that close() has freed."""


# --------------------------------------------------------------------------- the actor


class I2CActor(_SMBusSurface, ResourceActor):
    """Owns one I2C bus (``/dev/i2c-N`` through smbus2, or the simulator).

    A lease (``with bus.lease() as b``, ``with registry.i2c as b``) is exclusive use
    of the bus for the block: its transfers run in order and no other caller's transfer
    comes in between, so a multi-step exchange may span several calls (and the caller's
    own logic between them) where ``transaction(fn)`` needs it in one function. Other
    callers wait until the block ends; writes already made are not undone if it raises.
    ``process_lock`` is held per transfer, not for the block.

    Why the state lives where it does: the ``SimAdapter`` (the simulated wire and its
    devices) and the ``init`` replay steps are made once in ``__init__`` and survive
    restarts, as the chips and the config do; the open bus, the process-lock file and
    the consecutive-error count belong to one connection and are made in ``connect()``.
    Faults are recognised by identity (:meth:`is_fault`): the method that decided an
    ``OSError`` is a fault remembers it, so an unrelated ``OSError`` a transaction
    function raises itself is never mistaken for a dead bus.
    """

    kind: ClassVar[str] = "i2c"
    Options = I2COptions
    config: I2COptions

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        opts = self.config
        self._sim: SimAdapter | None = None
        if opts.bus == "sim":
            if opts.adapter is not None:
                self._sim = opts.adapter
            else:
                self._sim = SimAdapter([spec.build() for spec in opts.devices or ()])
            if opts.sim_name is not None:
                _SIM_ADAPTERS[opts.sim_name] = self._sim
        elif importlib.util.find_spec("smbus2") is None:
            raise ValueError(
                f"bus={opts.bus!r} needs smbus2: pip install 'applib-sessions[i2c]' "
                "(or use bus = 'sim')"
            )
        self._device_path: str | None = None
        if isinstance(opts.bus, int):
            self._device_path = f"/dev/i2c-{opts.bus}"
        elif opts.bus != "sim":
            self._device_path = opts.bus
        self._lock_path = (
            opts.lock_path
            or self._device_path
            or os.path.join(
                tempfile.gettempdir(), f"sessions-i2c-sim-{opts.sim_name or 'default'}.lock"
            )
        )
        self._conns: dict[int, _Conn] = {}
        """Every connection not yet disconnected, by id() of its bus object."""
        self._smbus2: Any = None
        for index, write in enumerate(opts.init):
            self.replay(f"init:{index}", write.apply)

    @classmethod
    def max_pool_size(cls, options: Mapping[str, Any]) -> tuple[int, str]:
        """One actor per bus: it is what makes a write-pointer-then-read atomic."""
        return 1, (
            "an I2C bus has one owner: one actor serializes every transfer on it, and a "
            "pool would interleave them again"
        )

    # -- lifecycle ------------------------------------------------------------------

    def connect(self) -> Any:
        """Open the bus, apply ``pec`` (``force`` is per handle), open the lock file.

        The ``init`` writes follow as replay steps, at the first connect and after
        every reconnect.
        """
        opts = self.config
        bus: Any
        if self._sim is not None:
            bus = SimBus("sim", opts.force, devices=self._sim, clock_hz=opts.clock_hz)
        else:
            self._smbus2 = importlib.import_module("smbus2")
            bus = self._smbus2.SMBus(opts.bus, force=opts.force)
        conn = _Conn(bus)
        try:
            if opts.pec:
                try:
                    bus.enable_pec(True)
                except OSError as err:
                    raise OSError(
                        errno.EOPNOTSUPP, f"pec = true, but bus {opts.bus!r} refused PEC: {err}"
                    ) from err
            if opts.process_lock:
                create = self._sim is not None or opts.lock_path is not None
                flags = os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
                conn.lock_fd = os.open(self._lock_path, flags | os.O_CLOEXEC, 0o666)
        except BaseException:
            bus.close()
            raise
        self._conns[id(bus)] = conn
        return bus

    def disconnect(self, resource: Any) -> None:
        """Close the bus and the lock file (which drops the lock if a call held it)."""
        conn = self._conns.pop(id(resource), None)
        try:
            if conn is None:
                resource.close()
            else:
                with conn.closing:  # not while abort() swaps the descriptor
                    resource.close()
        finally:
            if conn is not None and conn.lock_fd is not None:
                fd, conn.lock_fd = conn.lock_fd, None
                os.close(fd)

    def abort(self, resource: Any) -> None:
        """From another thread: make every later transfer on ``resource`` fail at once
        with ``EBADF`` (a fault), and end a wait for the process lock. Never blocks.

        Simulator: :meth:`SimBus.abort`, which also ends a transfer stalled by a hang.
        Hardware: the bus descriptor is replaced (``dup2``) by an ``O_PATH`` descriptor,
        on which every ioctl fails with ``EBADF``; the number stays taken until
        ``disconnect()`` closes it, so no other file can get it meanwhile. An ioctl
        already inside the kernel cannot be interrupted by anything: it ends at the bus
        driver's own timeout (the adapter's, typically a second or less), and a
        ``transaction()`` stops at its next transfer. ``resource`` None (``connect()``
        has not returned): opening a bus does not block, nothing to do.
        """
        if resource is None:
            return
        conn = self._conns.get(id(resource))
        if conn is not None:
            conn.aborted.set()
        if isinstance(resource, SimBus):
            resource.abort()
            return
        if conn is None or not conn.closing.acquire(blocking=False):
            return  # unknown, or being closed right now by disconnect()
        try:
            fd = getattr(resource, "fd", None)
            if isinstance(fd, int) and fd >= 0:
                # O_PATH (Linux, as i2c-dev): any ioctl on it fails with EBADF.
                dead = os.open("/", getattr(os, "O_PATH", os.O_RDONLY) | os.O_CLOEXEC)
                try:
                    os.dup2(dead, fd)  # atomic: the number never becomes free
                finally:
                    os.close(dead)
        except Exception as exc:  # abort() must not raise
            log.warning(
                "i2c %r: abort could not swap the bus descriptor: %s", self.name, describe(exc)
            )
        finally:
            conn.closing.release()

    def is_fault(self, exc: BaseException) -> bool:
        """True only for the very ``OSError`` a connection classified as a fault."""
        return any(conn.fault is exc for conn in list(self._conns.values()))

    def health_check(self) -> None:
        """Fault if our bus handle was closed or, on hardware, the device node vanished
        (a USB adapter unplugged). Sends nothing on the bus."""
        bus = self.resource
        conn = self._conn_of(bus)
        closed = bus is None or (
            bus.closed if isinstance(bus, SimBus) else getattr(bus, "fd", None) is None
        )
        if closed:
            conn.fault = OSError(errno.EBADF, "the I2C bus handle is closed")
        elif self._device_path is not None and not os.path.exists(self._device_path):
            conn.fault = FileNotFoundError(
                errno.ENOENT, "the I2C adapter is gone", self._device_path
            )
        if conn.fault is not None:
            raise conn.fault

    # -- calls ----------------------------------------------------------------------

    def transaction(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(bus, *args, **kwargs)`` with no other call interleaved; its result.

        ``bus`` is a :class:`GuardedBus`: the SMBus methods and ``scan()``, errors
        mapped as for handle calls, valid only during this call. With
        ``process_lock`` the file lock is held for the whole of ``fn``. Return plain
        data. A fault inside ``fn`` restarts the bus even if ``fn`` caught it.
        """
        conn = self._conn_of(self.resource)
        bus = GuardedBus(self, conn)
        self._lock(conn)
        try:
            result = fn(bus, *args, **kwargs)
        except BaseException as exc:
            fault = conn.fault
            if fault is not None and exc is not fault:
                raise fault  # noqa: B904 - the fault matters; exc stays its __context__
            raise
        finally:
            bus._actor = None
            self._unlock(conn)
        if conn.fault is not None:
            raise conn.fault
        return result

    def scan(self) -> list[int]:
        """Addresses 0x03..0x77 that acknowledge (see :meth:`_SMBusSurface.scan`)."""
        conn = self._conn_of(self.resource)
        bus = GuardedBus(self, conn)  # every probe on the bus the scan started on
        self._lock(conn)
        try:
            return bus.scan()
        finally:
            bus._actor = None
            self._unlock(conn)

    # -- plumbing -------------------------------------------------------------------

    def _conn_of(self, bus: Any) -> _Conn:
        """The connection of ``bus`` (a detached one for a bus connect() did not open,
        e.g. a test double)."""
        conn = self._conns.get(id(bus))
        return conn if conn is not None else _Conn(bus)

    def _io(
        self, method: str, address: int | None, args: tuple[Any, ...], force: bool | None = None
    ) -> Any:
        conn = self._conn_of(self.resource)
        if conn.lock_fd is None:
            return self._transfer(conn, method, address, args, force)
        self._lock(conn)
        try:
            return self._transfer(conn, method, address, args, force)
        finally:
            self._unlock(conn)

    def _transfer(
        self,
        conn: _Conn,
        method: str,
        address: int | None,
        args: tuple[Any, ...],
        force: bool | None,
    ) -> Any:
        """One bus operation on ``conn``'s bus, its error mapped (see the module's table)."""
        bus = conn.bus
        try:
            if force is None:
                result = getattr(bus, method)(*args)
            else:
                result = getattr(bus, method)(*args, force=force)
        except OSError as exc:
            err = self._classify(exc, method, address, force, conn)
            if err is exc:
                raise
            raise err from exc
        conn.strikes = 0
        return result

    def _probe(self, address: int) -> bool:
        return self._probe_on(self._conn_of(self.resource), address)

    def _probe_on(self, conn: _Conn, address: int) -> bool:
        """Does ``address`` answer? NACKs and device errors are just 'no'. Runs inside
        ``scan()`` or a transaction, which already hold the bus lock."""
        bus = conn.bus
        funcs = getattr(bus, "funcs", None)  # smbus2: the adapter's I2C_FUNCS; sim: all
        use_read = address in _READ_PROBED
        if funcs is not None:
            if not funcs & _FUNC_SMBUS_QUICK:
                use_read = True
            elif not funcs & _FUNC_SMBUS_READ_BYTE:
                use_read = False
        try:
            if use_read:
                bus.read_byte(address)
            else:
                bus.write_quick(address)
        except OSError as exc:
            err = self._classify(exc, "scan", address, None, conn)
            if isinstance(err, DeviceError):
                return bool(getattr(err, "claimed", False))
            raise  # a fault, or an error the caller gets unchanged: _classify returned exc
        conn.strikes = 0
        return True

    def _classify(
        self,
        exc: OSError,
        method: str,
        address: int | None,
        force: bool | None,
        conn: _Conn | None = None,
    ) -> BaseException:
        """What a failed operation raises: a DeviceError, or ``exc`` itself (a fault,
        remembered in the connection's ``fault``, or an error the caller gets
        unchanged). ``conn`` defaults to the current connection."""
        if conn is None:
            conn = self._conn_of(self.resource)
        code = exc.errno
        where = f"device {address:#04x}" if address is not None else "the devices addressed"
        text = exc.strerror or os.strerror(code or 0)
        bus = conn.bus
        if code == errno.ENODEV and self._adapter_present(address):
            # Linux's i2c-stub answers ENODEV for an address with no chip, where real
            # bus drivers answer ENXIO; the adapter is still there, so it is a NACK.
            code = errno.ENXIO
        if code in FATAL_ERRNOS:
            conn.fault = exc
            return exc
        if code == errno.EOPNOTSUPP:
            return self._unsupported(exc, method)
        if code in NACK_ERRNOS:
            return DeviceError(
                f"{method}(): {where} did not acknowledge ({text}); nothing answered there, "
                f"or the device is busy",
                address=address,
                errno=exc.errno,
            )
        if code in DEVICE_ERRNOS:
            why = "lost arbitration to another master" if code == errno.EAGAIN else text
            return DeviceError(f"{method}(): {where}: {why}", address=address, errno=code)
        if (
            code == errno.EBUSY
            and self._sim is None
            and method != "i2c_rdwr"
            and address is not None
            and getattr(bus, "address", address) != address
        ):
            # smbus2 only records the address once the I2C_SLAVE ioctl succeeded, so the
            # EBUSY came from claiming the address: a kernel driver owns it. (i2c_rdwr
            # claims no address: its EBUSY is the bus's.)
            return DeviceError(
                f"{method}(): address {address:#04x} is in use by a kernel driver; "
                "pass force=True (or force = true in the config) to use it anyway",
                address=address,
                errno=code,
                claimed=True,
            )
        if code in TRANSIENT_ERRNOS:
            conn.strikes += 1
            threshold = self.config.fault_threshold
            if conn.strikes >= threshold:
                conn.fault = exc
                return exc
            return DeviceError(
                f"{method}(): {where}: {text} ({conn.strikes} of {threshold} bus errors "
                "in a row before the bus is restarted)",
                address=address,
                errno=code,
            )
        return exc

    def _adapter_present(self, address: int | None) -> bool:
        """For an ENODEV: is it about the address (a hardware bus whose device node is
        still there) rather than the adapter itself being gone?"""
        return (
            address is not None
            and self._device_path is not None
            and os.path.exists(self._device_path)
        )

    def _unsupported(self, exc: OSError, method: str) -> OSError:
        """EOPNOTSUPP: the adapter cannot do this kind of transfer. A caller error naming
        the missing capability (linux/i2c.h ``I2C_FUNC_*``) and what the adapter has."""
        need = _FUNC_NEEDED.get(method)
        funcs = getattr(self._conn_of(self.resource).bus, "funcs", None)
        have = f" (its I2C_FUNCS: {int(funcs):#010x})" if funcs is not None else ""
        missing = f"{need[1]} ({need[0]:#x})" if need is not None else "this transfer type"
        hint = (
            "; it supports SMBus transfers only: use the SMBus methods"
            if need is not None and need[0] == _FUNC_I2C
            else ""
        )
        return OSError(
            errno.EOPNOTSUPP,
            f"{method}(): the adapter of bus {self.config.bus!r} does not support "
            f"{missing}{have}{hint}",
        )

    def _make_msgs(self, msgs: Sequence[Any]) -> list[Any]:
        """Plain-data messages as objects the bus takes; i2c_msg objects as they are."""
        out: list[Any] = []
        for i, msg in enumerate(msgs):
            if not isinstance(msg, Mapping):
                if not all(hasattr(msg, a) for a in ("addr", "flags", "len", "buf")):
                    raise TypeError(
                        f"i2c_rdwr message {i} must be {{'addr', 'read' | 'write'}} or an "
                        f"smbus2.i2c_msg, got {type(msg).__name__}"
                    )
                check_address(msg.addr, f"msgs[{i}].addr")
                out.append(msg)
                continue
            keys = set(msg)
            if "addr" not in keys or len(keys & {"read", "write"}) != 1 or len(keys) != 2:
                raise ValueError(
                    f"i2c_rdwr message {i} must have 'addr' and one of 'read' (a length) "
                    f"or 'write' (bytes), got keys {sorted(keys)}"
                )
            addr = check_address(msg["addr"], f"msgs[{i}].addr")
            if "read" in msg:
                length = check_int(f"msgs[{i}].read", msg["read"], 0, MSG_MAX_LEN)
                if self._smbus2 is not None:
                    out.append(self._smbus2.i2c_msg.read(addr, length))
                else:
                    out.append(_SimMsg(addr, I2C_M_RD, length, bytearray(length)))
            else:
                data = bytes(check_block(f"msgs[{i}].write", msg["write"], MSG_MAX_LEN))
                if self._smbus2 is not None:
                    out.append(self._smbus2.i2c_msg.write(addr, data))
                else:
                    out.append(_SimMsg(addr, 0, len(data), bytearray(data)))
        return out

    def _lock(self, conn: _Conn) -> None:
        """Take the process lock if enabled, waiting at most ``lock_timeout``. Never
        nested: a handle call, ``scan()`` or a transaction takes it once; what runs
        inside goes straight to ``_transfer``/``_probe_on``.

        The wait polls a non-blocking ``flock`` rather than blocking in the kernel: a
        process that hangs while it holds the bus must not hang us with it, and
        ``abort()`` must be able to end the wait.
        """
        fd = conn.lock_fd
        if fd is None:
            return
        deadline = time.monotonic() + self.config.lock_timeout
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass  # another process holds it
            except OSError as exc:
                conn.fault = exc  # our lock file handle is broken: reopen everything
                raise
            if conn.aborted.is_set():
                conn.fault = OSError(
                    errno.EBADF, "the I2C bus was aborted while waiting for the process lock"
                )
                raise conn.fault
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    errno.ETIMEDOUT,
                    f"another process held the bus lock {self._lock_path!r} for more than "
                    f"lock_timeout={self.config.lock_timeout}s",
                )
            conn.aborted.wait(min(pause, left))
            pause = min(pause * 2, 0.02)

    def _unlock(self, conn: _Conn) -> None:
        if conn.lock_fd is not None:
            fcntl.flock(conn.lock_fd, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- seed facade
