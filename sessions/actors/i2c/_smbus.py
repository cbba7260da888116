"""SMBus/I2C limits and argument checks shared by the I2C actor and the simulator.

Both check arguments before anything reaches a bus: ``smbus2`` silently truncates
out-of-range values into its ctypes structures (register 256 would write register 0),
so a bad value must fail with an error that names it, on real and simulated buses
alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ADDRESS_MIN, ADDRESS_MAX = 0x03, 0x77
"""7-bit addresses not reserved by the I2C specification (the range ``scan()`` probes)."""

BLOCK_MAX = 32  # longest SMBus block (linux/i2c.h I2C_SMBUS_BLOCK_MAX)
RDWR_MAX_MSGS = 42  # most messages one I2C_RDWR ioctl accepts (i2c-dev)
MSG_MAX_LEN = 8192  # longest i2c_msg i2c-dev accepts
I2C_M_RD = 0x0001  # i2c_msg flag: read message (linux/i2c.h)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` if it is an int (not a bool) in ``low..high``, else a named error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name}={value!r} is out of range {low}..{high}")
    return value


def check_address(value: Any, name: str = "i2c_addr") -> int:
    """``value`` if it is a usable 7-bit address, else a named error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not ADDRESS_MIN <= value <= ADDRESS_MAX:
        raise ValueError(
            f"{name}={value:#04x} is not a usable 7-bit I2C address "
            f"({ADDRESS_MIN:#04x}..{ADDRESS_MAX:#04x})"
        )
    return value


def check_block(name: str, data: Any, limit: int = BLOCK_MAX) -> list[int]:
    """``data`` as a list of byte values, at most ``limit`` long, else a named error."""
    if isinstance(data, (str, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(f"{name} must be a sequence of bytes, got {type(data).__name__}")
    values = list(data)
    if len(values) > limit:
        raise ValueError(f"{name} has {len(values)} bytes; the limit is {limit}")
    for i, value in enumerate(values):
        check_int(f"{name}[{i}]", value, 0, 0xFF)
    return values
