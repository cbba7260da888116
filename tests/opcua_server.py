"""A throwaway OPC UA server for tests/test_opcua.py (asyncua's own ``Server``), run as a
subprocess so a test can SIGKILL it, start it again on the same port, or freeze it with
SIGSTOP.

``python -m tests.opcua_server PORT [--user NAME:PASSWORD] [--security CERT KEY]``: the
endpoint ``opc.tcp://127.0.0.1:PORT/plant``, namespace ``urn:sessions:test`` (index 2)
holding an object ``Plant`` with writable variables ``Temperature`` (Double, 20.5,
``ns=2;s=Plant.Temperature``), ``Count`` (Int32, 7, ``ns=2;s=Plant.Count``) and ``Label``
(String, "pump", ``ns=2;s=Plant.Label``), a read-only variable ``Serial`` (String,
"SN-0001", ``ns=2;s=Plant.Serial``), a method ``Add`` (``ns=2;s=Plant.Add``: two
Doubles in, their sum out) and a method ``CloseSessions`` (``ns=2;s=Plant.CloseSessions``:
closes every client session on the server, the caller's too, and keeps their connections
open, so that their next request is refused with ``BadSessionNotActivated``). It prints
``ready`` once serving.

``--user NAME:PASSWORD``: only that user may open a session (anonymous sessions and
other passwords are refused with ``BadUserAccessDenied``). ``--security CERT KEY``: the
only endpoint is Basic256Sha256 SignAndEncrypt, with that certificate (DER) and private
key (PEM); clients' certificates are accepted without a trust list. Sessions get the
``User`` role either way: a write to a variable that is not writable is refused with
``BadUserAccessDenied``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from asyncua import Server, ua
from asyncua.common.methods import uamethod
from asyncua.crypto.permission_rules import User, UserRole

NAMESPACE = "urn:sessions:test"


@uamethod  # type: ignore[untyped-decorator,misc]
def add(parent: object, a: float, b: float) -> float:
    return a + b


class OneUser:
    """asyncua's user manager interface: ``name`` with ``password``, nobody else."""

    def __init__(self, name: str, password: str) -> None:
        self.name = name
        self.password = password

    def get_user(self, iserver: Any, username: str | None = None,
                 password: str | None = None, certificate: Any = None) -> User | None:
        if username == self.name and password == self.password:
            return User(role=UserRole.User)
        return None


async def serve(port: int, user: str | None, security: list[str] | None) -> None:
    user_manager = None
    if user is not None:
        name, _, password = user.partition(":")
        user_manager = OneUser(name, password)
    server = Server(user_manager=user_manager)  # type: ignore[arg-type]
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/plant")
    server.set_server_name("sessions test server")
    if user is not None:
        server.set_security_IDs(["Username"])
    if security is not None:
        cert, key = security
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        await server.load_certificate(cert)
        await server.load_private_key(key)
    idx = await server.register_namespace(NAMESPACE)
    plant = await server.nodes.objects.add_object(ua.NodeId("Plant", idx), f"{idx}:Plant")
    for name, value, variant in (("Temperature", 20.5, ua.VariantType.Double),
                                 ("Count", 7, ua.VariantType.Int32),
                                 ("Label", "pump", ua.VariantType.String)):
        var = await plant.add_variable(ua.NodeId(f"Plant.{name}", idx), f"{idx}:{name}",
                                       ua.Variant(value, variant))
        await var.set_writable()
    await plant.add_variable(ua.NodeId("Plant.Serial", idx), f"{idx}:Serial",
                             ua.Variant("SN-0001", ua.VariantType.String))
    await plant.add_method(ua.NodeId("Plant.Add", idx), f"{idx}:Add", add,
                           [ua.VariantType.Double, ua.VariantType.Double],
                           [ua.VariantType.Double])

    async def close_sessions(parent: object) -> list[ua.Variant]:
        for session in list(server.iserver._external_sessions.values()):
            await session.close_session()
        return []

    await plant.add_method(ua.NodeId("Plant.CloseSessions", idx), f"{idx}:CloseSessions",
                           close_sessions, [], [])
    async with server:
        print("ready", flush=True)
        await asyncio.Event().wait()  # until killed


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    parser = argparse.ArgumentParser(prog="python -m tests.opcua_server")
    parser.add_argument("port", type=int)
    parser.add_argument("--user", metavar="NAME:PASSWORD")
    parser.add_argument("--security", nargs=2, metavar=("CERT", "KEY"))
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.user, args.security))


if __name__ == "__main__":
    main()
