"""The ``modbus`` kind: one supervised actor per Modbus TCP link or RTU serial line.

A Modbus link answers one request at a time: on a serial line a second master talking
while the first waits garbles both frames, and pymodbus's synchronous clients have no
contract for use from several threads. One actor owns the link (one
``ModbusTcpClient`` or ``ModbusSerialClient``, pymodbus 3.x) and runs every request to
its reply before the next one starts, so concurrent callers each get their own reply.
The driver's own retries are 0: a link that breaks is restarted by the supervisor.

Configuration (``[resources.NAME]`` with ``kind = "modbus"``; see :class:`ModbusOptions`)::

    [resources.plc]
    kind = "modbus"
    transport = "tcp"        # or "rtu": serial_port, baudrate, parity, stopbits, bytesize
    host = "192.168.1.20"
    port = 502
    timeout = 1.0            # seconds the driver waits for a reply
    device_id = 1            # the default unit/slave id of every call

Calls (through a handle; each returns a future of plain data), each with a keyword
``device_id`` defaulting to the config's: ``read_coils``, ``read_discrete_inputs``
(``address, count``: a list of bools), ``read_holding_registers``,
``read_input_registers`` (a list of ints), ``write_coil``, ``write_coils``,
``write_register``, ``write_registers`` (``None``), ``read_value(address, type,
word_order, table)`` and ``write_value(address, value, type, word_order)`` (a typed
int16/uint16/int32/uint32/float32 in one or two registers, decoded by pymodbus's
``convert_from_registers``/``convert_to_registers``).

What is a fault, and what goes to the caller:

==============================================  ========================  =======================
what happened                                   the caller gets           the resource
==============================================  ========================  =======================
a bad argument (address out of 0..65535, a      ``ValueError`` or         keeps running; nothing
count the protocol cannot carry, a register     ``TypeError``             was sent
value outside 0..65535, an unknown type)
the device answers with a Modbus exception      ``DeviceError`` naming    keeps running
(illegal function, illegal data address,        the device id, the
illegal data value, device failure, busy,       function, the address
gateway errors)                                 and the exception code
no reply within ``timeout``, a reply of the     ``ResourceFault`` (cause: **fault**: restarted on a
wrong device or transaction (pymodbus           ``ModbusIOException``)    new connection (a late
``ModbusIOException``)                                                    reply cannot be taken for
                                                                          the next request's)
... on a read with ``read_retries = N``         the value, if one of N    keeps running; each
                                                more tries answers        retry on a new
                                                                          connection; never writes
the connection is refused, reset or closed      ``ResourceFault`` (cause: **fault**: restarted
(``ConnectionException``, ``OSError``)          that error)
the connect at start fails                      nobody (calls wait, at    failed start: retried
                                                most ``call_timeout``)    with backoff
a call still blocked at ``stall_timeout``       ``ResourceFault``         **fault**: ``abort()``
                                                                          shuts the socket down
==============================================  ========================  =======================

``DeviceError`` is this module's :class:`DeviceError`, a subclass of
``sessions.DeviceError`` (so ``except sessions.DeviceError`` catches the I2C and the
Modbus ones alike); it pickles like every ``sessions`` error.

Keep ``timeout * (1 + read_retries)`` below the resource's ``call_timeout``, or a
caller may give up on a read the actor is still retrying.

pymodbus is imported lazily (when a resource connects), so that this module, and
``ModbusSessionManager`` with it, can be imported without the ``modbus`` extra.

``host = "sim"`` (for tests) connects the same client, over a real loopback socket, to
pymodbus's own server on an in-process simulated device named by ``port``
(:mod:`sessions.actors._modbus_sim`): every row of the table above takes the path it
takes in production.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sessions._errors import DeviceError as BaseDeviceError
from sessions._runtime.abort import shutdown_socket
from sessions._runtime.contract import ResourceActor

if TYPE_CHECKING:
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient
    from pymodbus.pdu import ModbusPDU

    Client = ModbusTcpClient | ModbusSerialClient

__all__ = ["DeviceError", "ModbusActor", "ModbusOptions"]

log = logging.getLogger("sessions.modbus")

#: Modbus exception codes (Modbus Application Protocol V1.1b3, section 7).
EXCEPTION_NAMES: dict[int, str] = {
    1: "ILLEGAL FUNCTION",
    2: "ILLEGAL DATA ADDRESS",
    3: "ILLEGAL DATA VALUE",
    4: "SERVER DEVICE FAILURE",
    5: "ACKNOWLEDGE",
    6: "SERVER DEVICE BUSY",
    8: "MEMORY PARITY ERROR",
    10: "GATEWAY PATH UNAVAILABLE",
    11: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}

#: The most items one request may carry (the PDU is at most 253 bytes).
MAX_READ_BITS = 2000
MAX_READ_REGISTERS = 125
MAX_WRITE_BITS = 1968
MAX_WRITE_REGISTERS = 123

ValueType = Literal["int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["big", "little"]

#: type -> registers it takes.
_WIDTH: dict[str, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}

_Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]

_TCP_KEYS = ("host", "port")

SIM_HOST = "sim"
"""``host = "sim"``: the in-process simulated device (:mod:`sessions.actors._modbus_sim`)."""
_RTU_KEYS = ("serial_port", "baudrate", "parity", "stopbits", "bytesize")


class DeviceError(BaseDeviceError):
    """The device answered with a Modbus exception (an illegal address or function, a
    value it refuses, busy...): the caller's problem, the link is fine. ``device_id``,
    ``function`` (the method called), ``address`` and ``exception_code`` say which."""

    device_id: int
    function: str
    exception_code: int


class ModbusOptions(BaseModel):
    """Config keys of a ``modbus`` resource (besides the supervision keys); the one place
    they and their defaults are declared (``ModbusActor.Options``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    transport: Literal["tcp", "rtu"] = Field(
        "tcp", description="tcp (Modbus TCP: host, port) or rtu (a serial line: serial_port, "
        "baudrate, parity, stopbits, bytesize)."
    )
    host: str | None = Field(
        None, description='tcp: the device or gateway host (required). "sim": an '
        "in-process simulated device named by port (for tests; pymodbus's own server on a "
        "loopback port)."
    )
    port: int | None = Field(None, ge=1, le=65535, description="tcp: the TCP port (502).")
    serial_port: str | None = Field(
        None, description="rtu: the serial device, e.g. /dev/ttyUSB0 (required)."
    )
    # The keys of one transport default to None (their default is in the description,
    # applied by _new_client), so that a key given for the other transport is an error.
    baudrate: int | None = Field(None, gt=0, description="rtu: bits per second (19200).")
    parity: Literal["N", "E", "O"] | None = Field(None, description="rtu: N, E or O (N).")
    stopbits: Literal[1, 2] | None = Field(None, description="rtu: 1 or 2 (1).")
    bytesize: Literal[7, 8] | None = Field(None, description="rtu: 7 or 8 data bits (8).")
    timeout: _Seconds = Field(
        1.0, description="Seconds the driver waits to connect and for each reply; no reply "
        "in time is a fault. Keep timeout * (1 + read_retries) below call_timeout."
    )
    device_id: int = Field(
        1, ge=0, le=255, description="The device (unit, slave) id a call uses unless it "
        "passes device_id=."
    )
    read_retries: int = Field(
        0, ge=0, le=10, description="Reads that get no reply are tried again this many "
        "times, each on a new connection, before it is a fault. Writes never are."
    )
    word_order: WordOrder = Field(
        "big", description="Default word order of read_value/write_value for 32-bit types."
    )

    @model_validator(mode="after")
    def _transport_keys(self) -> ModbusOptions:
        if self.transport == "tcp":
            if self.host is None:
                raise ValueError("transport 'tcp' needs host")
            wrong = [k for k in _RTU_KEYS if getattr(self, k) is not None]
        else:
            if self.serial_port is None:
                raise ValueError("transport 'rtu' needs serial_port")
            wrong = [k for k in _TCP_KEYS if getattr(self, k) is not None]
        if wrong:
            raise ValueError(f"{', '.join(wrong)}: not a key of transport {self.transport!r}")
        return self


class ModbusActor(ResourceActor):
    """One Modbus TCP connection or RTU serial line (see the module docstring)."""

    kind: ClassVar[str] = "modbus"

    Options = ModbusOptions
    config: ModbusOptions

    # -- lifecycle --------------------------------------------------------------------

    def connect(self) -> Client:
        """Open the link: a TCP connect, or the serial port opened."""
        client = self._new_client()
        if not client.connect():
            client.close()  # type: ignore[no-untyped-call]
            raise ConnectionError(f"cannot connect to {self._where()}")
        self._unit_key = _unit_keyword(client.read_coils)
        return client

    def check_connection(self) -> str:
        """``sessions check --connect``: read holding register 0 of ``device_id``. Any
        answer, a Modbus exception included, proves the device is there."""
        try:
            self.read_holding_registers(0)
        except DeviceError as exc:
            return f"{self._where()}: device {self.config.device_id} answered: {exc}"
        return f"{self._where()}: device {self.config.device_id} answered"

    def disconnect(self, resource: Client) -> None:
        resource.close()  # type: ignore[no-untyped-call]

    def abort(self, resource: Client | None) -> None:
        """From another thread: end a request blocked on the link. A TCP socket is shut
        down (the blocked read sees EOF: ``ConnectionException``, a fault); a serial
        read is cancelled. Non-blocking, idempotent, never raises."""
        if resource is None:
            return  # connect() still running: its timeout bounds it
        sock = getattr(resource, "socket", None)
        if sock is None:
            return
        with contextlib.suppress(Exception):
            if hasattr(sock, "cancel_read"):  # a serial.Serial
                sock.cancel_read()
                sock.cancel_write()
            else:
                shutdown_socket(sock)

    def is_fault(self, exc: BaseException) -> bool:
        from pymodbus.exceptions import (  # noqa: PLC0415 - lazy driver import
            ConnectionException,
            ModbusIOException,
        )

        return isinstance(exc, ConnectionException | ModbusIOException | OSError)

    # -- calls ------------------------------------------------------------------------

    def read_coils(self, address: int, count: int = 1, *,
                   device_id: int | None = None) -> list[bool]:
        """Coils (function 1): ``count`` bools from ``address``."""
        _check_range("count", count, 1, MAX_READ_BITS)
        pdu = self._run("read_coils", address, device_id, read=True, count=count)
        return [bool(b) for b in pdu.bits[:count]]

    def read_discrete_inputs(self, address: int, count: int = 1, *,
                             device_id: int | None = None) -> list[bool]:
        """Discrete inputs (function 2): ``count`` bools from ``address``."""
        _check_range("count", count, 1, MAX_READ_BITS)
        pdu = self._run("read_discrete_inputs", address, device_id, read=True, count=count)
        return [bool(b) for b in pdu.bits[:count]]

    def read_holding_registers(self, address: int, count: int = 1, *,
                               device_id: int | None = None) -> list[int]:
        """Holding registers (function 3): ``count`` unsigned 16-bit ints."""
        _check_range("count", count, 1, MAX_READ_REGISTERS)
        pdu = self._run("read_holding_registers", address, device_id, read=True, count=count)
        return list(pdu.registers[:count])

    def read_input_registers(self, address: int, count: int = 1, *,
                             device_id: int | None = None) -> list[int]:
        """Input registers (function 4): ``count`` unsigned 16-bit ints."""
        _check_range("count", count, 1, MAX_READ_REGISTERS)
        pdu = self._run("read_input_registers", address, device_id, read=True, count=count)
        return list(pdu.registers[:count])

    def write_coil(self, address: int, value: bool, *, device_id: int | None = None) -> None:
        """One coil (function 5)."""
        if not isinstance(value, bool | int):
            raise TypeError(f"value must be a bool, got {value!r}")
        self._run("write_coil", address, device_id, value=bool(value))

    def write_coils(self, address: int, values: Sequence[bool], *,
                    device_id: int | None = None) -> None:
        """Consecutive coils (function 15)."""
        bits = [bool(v) for v in _items("values", values, 1, MAX_WRITE_BITS)]
        self._run("write_coils", address, device_id, values=bits)

    def write_register(self, address: int, value: int, *,
                       device_id: int | None = None) -> None:
        """One holding register (function 6), 0..65535."""
        _check_range("value", value, 0, 0xFFFF)
        self._run("write_register", address, device_id, value=value)

    def write_registers(self, address: int, values: Sequence[int], *,
                        device_id: int | None = None) -> None:
        """Consecutive holding registers (function 16), each 0..65535."""
        registers = list(_items("values", values, 1, MAX_WRITE_REGISTERS))
        for value in registers:
            _check_range("values[]", value, 0, 0xFFFF)
        self._run("write_registers", address, device_id, values=registers)

    def read_value(self, address: int, type: ValueType = "uint16",
                   word_order: WordOrder | None = None, *,
                   table: Literal["holding", "input"] = "holding",
                   device_id: int | None = None) -> int | float:
        """One typed value from ``table``'s registers at ``address`` (two registers for
        the 32-bit types, in ``word_order``; default: the config's ``word_order``)."""
        if table not in ("holding", "input"):
            raise ValueError(f"table must be 'holding' or 'input', got {table!r}")
        data_type, order = self._typed(type, word_order)
        read = self.read_holding_registers if table == "holding" else self.read_input_registers
        registers = read(address, _WIDTH[type], device_id=device_id)
        value = self.resource.convert_from_registers(registers, data_type, word_order=order)
        assert isinstance(value, int | float)
        return value

    def write_value(self, address: int, value: float, type: ValueType = "uint16",
                    word_order: WordOrder | None = None, *,
                    device_id: int | None = None) -> None:
        """One typed value into the holding registers at ``address`` (function 6 for the
        16-bit types, 16 for the 32-bit ones)."""
        data_type, order = self._typed(type, word_order)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"value must be a number, got {value!r}")
        if type != "float32":
            if not isinstance(value, int):
                raise TypeError(f"a {type} value must be an int, got {value!r}")
            bits = 16 if _WIDTH[type] == 1 else 32
            low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if type.startswith("int") \
                else (0, (1 << bits) - 1)
            _check_range("value", value, low, high)
        registers = self.resource.convert_to_registers(value, data_type, word_order=order)
        if len(registers) == 1:
            self.write_register(address, registers[0], device_id=device_id)
        else:
            self.write_registers(address, registers, device_id=device_id)

    # -- internals --------------------------------------------------------------------

    def _new_client(self) -> Client:
        from pymodbus.client import (  # noqa: PLC0415 - lazy driver import
            ModbusSerialClient,
            ModbusTcpClient,
        )

        config = self.config
        if config.transport == "tcp":
            assert config.host is not None
            if config.host == SIM_HOST:  # the same client, to the simulated device's port
                from sessions.actors._modbus_sim import simulator  # noqa: PLC0415

                return ModbusTcpClient("127.0.0.1", port=simulator(config.port or 502).port,
                                       timeout=config.timeout, retries=0)
            return ModbusTcpClient(config.host, port=config.port or 502,
                                   timeout=config.timeout, retries=0)
        assert config.serial_port is not None
        return ModbusSerialClient(config.serial_port, baudrate=config.baudrate or 19200,
                                  parity=config.parity or "N", stopbits=config.stopbits or 1,
                                  bytesize=config.bytesize or 8, timeout=config.timeout,
                                  retries=0)

    def _where(self) -> str:
        config = self.config
        if config.transport == "tcp":
            return f"modbus tcp {config.host}:{config.port or 502}"
        return f"modbus rtu {config.serial_port}"

    def _typed(self, type_: str, word_order: str | None) -> tuple[Any, WordOrder]:
        if type_ not in _WIDTH:
            raise ValueError(f"type must be one of {', '.join(_WIDTH)}, got {type_!r}")
        order = self.config.word_order if word_order is None else word_order
        if order not in ("big", "little"):
            raise ValueError(f"word_order must be 'big' or 'little', got {order!r}")
        converter = getattr(self.resource, "convert_to_registers", None)
        if converter is None or "word_order" not in inspect.signature(converter).parameters:
            raise NotImplementedError(  # pymodbus before 3.9 has no converters with it
                "read_value/write_value need pymodbus's convert_from_registers and "
                "convert_to_registers with word_order (pymodbus 3.9 or later)")
        data_type = getattr(self.resource.DATATYPE, type_.upper())
        return data_type, order  # type: ignore[return-value]

    def _run(self, function: str, address: int, device_id: int | None, *,
             read: bool = False, **arguments: Any) -> ModbusPDU:
        """Send one request and return its reply; a Modbus exception reply raises
        :class:`DeviceError`. Reads with no reply are retried ``read_retries`` times."""
        from pymodbus.exceptions import ModbusIOException  # noqa: PLC0415

        _check_range("address", address, 0, 0xFFFF)
        unit = self.config.device_id if device_id is None else device_id
        _check_range("device_id", unit, 0, 255)
        client = self.resource
        call: Callable[..., ModbusPDU] = getattr(client, function)
        arguments[self._unit_key] = unit
        tries = 1 + (self.config.read_retries if read else 0)
        for attempt in range(1, tries + 1):
            try:
                pdu = call(address, **arguments)
                break
            except ModbusIOException as exc:
                if attempt == tries:
                    raise
                log.warning("%s: %s(address=%d, device_id=%d) got no reply (%s); "
                            "retry %d of %d on a new connection", self.name, function,
                            address, unit, exc, attempt, tries - 1)
                client.close()  # a late reply must not be read as the retry's
        if pdu.isError():
            code = int(getattr(pdu, "exception_code", 0))
            why = EXCEPTION_NAMES.get(code, f"exception code {code}")
            raise DeviceError(
                f"device {unit}: {function} at address {address}: {why} (code {code})",
                device_id=unit, function=function, address=address, exception_code=code,
                errno=0,
            )
        return pdu

    _unit_key: str = "device_id"


def _unit_keyword(method: Callable[..., Any]) -> str:
    """``device_id`` (pymodbus 3.10+) or ``slave`` (older 3.x): what the installed client
    calls the unit id."""
    parameters = inspect.signature(method).parameters
    return "device_id" if "device_id" in parameters else "slave"


def _check_range(what: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be in {low}..{high}, got {value}")


def _items(what: str, values: Any, low: int, high: int) -> Sequence[Any]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"{what} must be a list, got {values!r}")
    if not low <= len(values) <= high:
        raise ValueError(f"{what} must hold {low}..{high} items, got {len(values)}")
    return values
