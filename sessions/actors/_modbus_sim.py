"""The in-process Modbus device behind ``host = "sim"`` (the ``modbus`` kind, for tests).

pymodbus's own server (``ModbusTcpServer``, the one its documentation and our throwaway
test servers use) serves a data model on a loopback port picked by the OS, on an
asyncio loop of its own thread. The kind then connects with its real client, over a
real socket: every request, reply, timeout and broken connection takes the path
production does, only the device is simulated. The resources configured with
``host = "sim"`` and the same ``port`` share one simulated device (the port names it;
the socket listens elsewhere), which outlives their restarts, as a real device does,
and is stopped when the test harness forgets the substitutes' peers.

The data model: 10000 coils, discrete inputs, holding registers and input registers
(addresses 0..9999; beyond, the device answers ILLEGAL DATA ADDRESS), all 0/False at
start, served for every device id. A test sets inputs (the device's
sensors) and reads what the application wrote through :class:`ModbusSim`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from sessions._runtime import substitutes

__all__ = ["TABLES", "ModbusSim", "simulator"]

_FAMILY = "modbus-sim"
_SIZE = 10000
_START_TIMEOUT = 10.0

TABLES = {"coils": "co", "discrete_inputs": "di", "holding_registers": "hr",
          "input_registers": "ir"}
"""The data tables by name, and pymodbus's name of each."""


def simulator(port: int = 502) -> ModbusSim:
    """The simulated device named by ``port`` (started on first use)."""
    return substitutes.peer(_FAMILY, str(port), lambda: ModbusSim(port))


class ModbusSim:
    """A pymodbus ``ModbusTcpServer`` on 127.0.0.1 (an OS-picked port), on its own loop
    thread, serving one data model for every device id."""

    def __init__(self, name: int) -> None:
        from pymodbus.simulator import (  # noqa: PLC0415 - only host = "sim" needs pymodbus
            DataType,
            SimData,
            SimDevice,
        )

        self.name = name
        bits = DataType.BITS
        words = DataType.REGISTERS
        self._device = SimDevice(
            id=0,  # every device id
            simdata=(
                # values= lists, not count=: pymodbus 3.16 checks a block by building
                # count x count registers
                [SimData(0, values=[False] * _SIZE, datatype=bits)],
                [SimData(0, values=[False] * _SIZE, datatype=bits)],
                [SimData(0, values=[0] * _SIZE, datatype=words)],
                [SimData(0, values=[0] * _SIZE, datatype=words)],
            ),
        )
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._serving = False
        self.port = 0
        """The loopback port the server listens on."""
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"modbus-sim-{name}", daemon=True
        )
        self._thread.start()
        try:
            self.port = self._call(self._listen(), _START_TIMEOUT)
            self._serving = True
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self, port: int = 0) -> int:
        from pymodbus.server import ModbusTcpServer  # noqa: PLC0415 - see __init__

        previous = self._server
        self._server = ModbusTcpServer(self._device, address=("127.0.0.1", port))
        if previous is not None:  # started again: the data model as the device left it
            self._server.context = previous.context
        if not await self._server.listen():
            raise OSError("the simulated Modbus device could not listen on 127.0.0.1")
        sockets = self._server.transport.sockets
        bound: int = sockets[0].getsockname()[1]
        return bound

    # -- the data model, for tests ------------------------------------------------------

    def get(self, table: str, address: int, count: int = 1) -> list[Any]:
        """``count`` values of ``table`` (``"holding_registers"``, ``"coils"``, ...) from
        ``address`` (0-based, as the kind's calls address them)."""
        got = self._call(self._server.async_getValues(1, _code(table), address, count), 5.0)
        return list(got)

    def set(self, table: str, address: int, values: list[Any]) -> None:
        """Set values of ``table`` from ``address``, as the device's own logic would
        (a sensor reading in ``input_registers``, a state in ``discrete_inputs``)."""
        code = {1: 5, 2: 2, 3: 6, 4: 4}[_code(table)]
        self._call(self._server.async_setValues(1, code, address, list(values)), 5.0)

    # -- failures -----------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._serving

    def stop(self) -> None:
        """Stop serving, as a device switched off: its connections are closed (the
        kind's next request faults) and connects are refused (failed starts) until
        :meth:`start`. The data model is kept."""
        if self._serving and self._loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._server.shutdown(), 5.0)
        self._serving = False

    def start(self) -> None:
        """Serve again, on the same loopback port, with the data as it was."""
        if not self._serving:
            self._call(self._listen(self.port), _START_TIMEOUT)
            self._serving = True

    def close(self) -> None:
        """Stop serving and end the loop thread (the test harness does, after each
        test). Idempotent."""
        if self._loop.is_closed():
            return
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()


def _code(table: str) -> int:
    """pymodbus's function code for reading ``table`` (what ``getValues`` takes)."""
    codes = {"coils": 1, "discrete_inputs": 2, "holding_registers": 3, "input_registers": 4}
    if table not in codes:
        raise ValueError(f"table must be one of {', '.join(codes)}, got {table!r}")
    return codes[table]
