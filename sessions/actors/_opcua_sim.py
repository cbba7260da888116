"""The in-process OPC UA server behind ``url = "opc.tcp://sim/NAME"`` (the ``opcua``
kind, for tests).

asyncua's own ``Server`` (the one our throwaway test server runs) listens on a loopback
port the OS picks, on an asyncio loop of its own thread; the kind connects to it with its
real client, over a real socket (secure channel, session, reads, writes, subscriptions,
the watchdog), so only the server is simulated. The resources whose url names the same
simulated server (``opc.tcp://sim/NAME``; the path is the name) share it; it outlives
their restarts and is stopped when the test harness forgets the substitutes' peers.

The address space is the server's standard one plus what the test adds
(:meth:`OPCUASim.add_variable`): variables in the namespace ``urn:sessions:sim``
(index 2), under ``Objects``, each named ``ns=2;s=NAME`` with the browse name
``2:NAME``. Anonymous sessions, no security.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from sessions._runtime import substitutes

__all__ = ["NAMESPACE", "SIM_HOST", "OPCUASim", "simulated_name", "simulator"]

_FAMILY = "opcua-sim"
_START_TIMEOUT = 20.0
_CALL_TIMEOUT = 10.0

SIM_HOST = "sim"
NAMESPACE = "urn:sessions:sim"


def simulated_name(url: str) -> str | None:
    """The simulated server's name if ``url`` is ``opc.tcp://sim[/NAME]``, else None."""
    prefix = f"opc.tcp://{SIM_HOST}"
    if url == prefix or url.startswith(prefix + "/"):
        return url[len(prefix) :].strip("/")
    return None


def simulator(name: str = "") -> OPCUASim:
    """The simulated server ``name`` (started on first use)."""
    return substitutes.peer(_FAMILY, name, lambda: OPCUASim(name))


class OPCUASim:
    """asyncua's ``Server`` on 127.0.0.1 (an OS-picked port) on its own loop thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._ns = 0
        self.port = 0
        """The loopback port the server listens on."""
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"opcua-sim-{name or 'default'}", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._start(), _START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """The endpoint the kind's client connects to."""
        return f"opc.tcp://127.0.0.1:{self.port}/{self.name}"

    def _call(self, coro: Any, timeout: float = _CALL_TIMEOUT) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        from asyncua.server.server import Server  # noqa: PLC0415 - only a sim url needs it

        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:0/{self.name}")
        server.set_server_name(f"sessions simulated server {self.name!r}")
        self._ns = await server.register_namespace(NAMESPACE)
        await server.start()
        self._server = server
        # asyncua keeps the listening asyncio server privately (set once started)
        listening: Any = server.bserver
        self.port = listening._server.sockets[0].getsockname()[1]

    # -- the address space, for tests ---------------------------------------------------

    def add_variable(
        self, name: str, value: Any, variant_type: str | None = None, *, writable: bool = True
    ) -> str:
        """Add the variable ``ns=2;s=NAME`` under ``Objects`` with ``value`` (of
        ``variant_type``, an ``asyncua.ua.VariantType`` name like ``"Int32"``, or guessed
        from the value); returns its node id string. ``writable=False``: clients' writes
        are refused (``BadNotWritable``/``BadUserAccessDenied``)."""
        return str(self._call(self._add_variable(name, value, variant_type, writable)))

    async def _add_variable(
        self, name: str, value: Any, variant_type: str | None, writable: bool
    ) -> str:
        from asyncua import ua  # noqa: PLC0415 - see _start

        variant = (
            ua.Variant(value)
            if variant_type is None
            else ua.Variant(value, getattr(ua.VariantType, variant_type))
        )
        node_id = ua.NodeId(ua.String(name), ua.Int16(self._ns))
        node = await self._server.nodes.objects.add_variable(
            node_id, f"{self._ns}:{name}", variant
        )
        if writable:
            await node.set_writable()
        return f"ns={self._ns};s={name}"

    def get(self, node_id: str) -> Any:
        """The value of ``node_id``, as the server holds it."""
        return self._call(self._server.get_node(node_id).read_value())

    def set(self, node_id: str, value: Any) -> None:
        """Set ``node_id``'s value, as the device's own logic would (subscribers are
        notified); its data type is kept."""
        self._call(self._set(node_id, value))

    async def _set(self, node_id: str, value: Any) -> None:
        from asyncua import ua  # noqa: PLC0415 - see _start

        node = self._server.get_node(node_id)
        kind = await node.read_data_type_as_variant_type()
        await self._server.write_attribute_value(node.nodeid, ua.DataValue(ua.Variant(value, kind)))

    # -- failures -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the server (clients lose their connection) and end the loop thread
        (the test harness does, after each test). Idempotent."""
        if self._loop.is_closed():
            return
        if self._server is not None and self._loop.is_running():
            with contextlib.suppress(Exception):
                self._call(self._server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self._loop.close()
