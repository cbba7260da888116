"""A throwaway Modbus server for tests/test_modbus.py, run as a subprocess (so a test can
SIGKILL it, start it again on the same port, or freeze it with SIGSTOP).

``python -m tests.modbus_server tcp PORT [--stall ADDRESS --stall-count N --stall-seconds S]
[--log PATH]`` or ``... rtu SERIAL_DEVICE``. Every device id is served by one data model:
100 coils, 100 discrete inputs (odd addresses on), 200 holding registers (0), 100 input
registers (address * 10). A request at the ``--stall`` address is held ``--stall-seconds``
(the whole server with it) the first ``--stall-count`` times; every request at that address
is logged to ``--log`` as ``FUNCTION_CODE ADDRESS``. It prints ``ready`` once serving.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=("tcp", "rtu"))
    parser.add_argument("where")
    parser.add_argument("--stall", type=int, default=-1)
    parser.add_argument("--stall-count", type=int, default=0)
    parser.add_argument("--stall-seconds", type=float, default=0.0)
    parser.add_argument("--log", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    stalls = [args.stall_count]

    def trace_pdu(sending: bool, pdu: Any) -> Any:
        if not sending and getattr(pdu, "address", None) == args.stall:
            if args.log:
                with open(args.log, "a") as log:
                    log.write(f"{pdu.function_code} {pdu.address}\n")
            if stalls[0] > 0:
                stalls[0] -= 1
                time.sleep(args.stall_seconds)  # holds the whole server, as a busy device
        return pdu

    device = ModbusDeviceContext(
        co=ModbusSequentialDataBlock(1, [False] * 100),
        di=ModbusSequentialDataBlock(1, [bool(i % 2) for i in range(100)]),
        hr=ModbusSequentialDataBlock(1, [0] * 200),
        ir=ModbusSequentialDataBlock(1, [i * 10 for i in range(100)]),
    )
    context = ModbusServerContext(devices=device)

    async def serve() -> None:
        server: ModbusTcpServer | ModbusSerialServer
        if args.transport == "tcp":
            server = ModbusTcpServer(context, address=("127.0.0.1", int(args.where)),
                                     trace_pdu=trace_pdu)
        else:
            server = ModbusSerialServer(context, port=args.where, baudrate=115200,
                                        trace_pdu=trace_pdu)
        await server.listen()
        print("ready", flush=True)
        await asyncio.Event().wait()  # until killed

    asyncio.run(serve())


if __name__ == "__main__":
    main()
