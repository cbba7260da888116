"""A throwaway OPC UA server for tests/test_opcua.py (asyncua's own ``Server``), run as a
subprocess so a test can SIGKILL it, start it again on the same port, or freeze it with
SIGSTOP.

``python -m tests.opcua_server PORT``: the endpoint ``opc.tcp://127.0.0.1:PORT/plant``,
namespace ``urn:sessions:test`` (index 2) holding an object ``Plant`` with writable
variables ``Temperature`` (Double, 20.5, ``ns=2;s=Plant.Temperature``), ``Count`` (Int32,
7, ``ns=2;s=Plant.Count``) and ``Label`` (String, "pump", ``ns=2;s=Plant.Label``), and a
method ``Add`` (``ns=2;s=Plant.Add``: two Doubles in, their sum out). It prints ``ready``
once serving.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from asyncua import Server, ua
from asyncua.common.methods import uamethod

NAMESPACE = "urn:sessions:test"


@uamethod  # type: ignore[untyped-decorator,misc]
def add(parent: object, a: float, b: float) -> float:
    return a + b


async def serve(port: int) -> None:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plant")
    server.set_server_name("sessions test server")
    idx = await server.register_namespace(NAMESPACE)
    plant = await server.nodes.objects.add_object(ua.NodeId("Plant", idx), f"{idx}:Plant")
    for name, value, variant in (("Temperature", 20.5, ua.VariantType.Double),
                                 ("Count", 7, ua.VariantType.Int32),
                                 ("Label", "pump", ua.VariantType.String)):
        var = await plant.add_variable(ua.NodeId(f"Plant.{name}", idx), f"{idx}:{name}",
                                       ua.Variant(value, variant))
        await var.set_writable()
    await plant.add_method(ua.NodeId("Plant.Add", idx), f"{idx}:Add", add,
                           [ua.VariantType.Double, ua.VariantType.Double],
                           [ua.VariantType.Double])
    async with server:
        print("ready", flush=True)
        await asyncio.Event().wait()  # until killed


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
