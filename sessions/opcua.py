"""The OPC UA session manager: ``OPCUASessionManager`` over the ``opcua`` kind
(:mod:`sessions.actors.opcua`, asyncua; the ``opcua`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sessions._registry import SessionManager

__all__ = ["OPCUASessionManager"]

#: The kind as a config names it.
OPCUA_KIND = "opcua"


class OPCUASessionManager(SessionManager):
    """``with OPCUASessionManager(url="opc.tcp://10.0.0.7:4840") as line:`` -- one
    supervised OPC UA client session (resource name ``"opcua"`` unless ``name`` is
    given); ``with``/``async with`` yields its handle::

        with OPCUASessionManager(url="opc.tcp://10.0.0.7:4840/plant") as line:
            line.write("ns=2;s=Plant.Count", 5).result()
            line.read("ns=2;s=Plant.Temperature").result()

    ``options`` are the kind's keys (``url``, ``timeout``, ``keepalive``, ``username``,
    ``password``, ``security``, ``queue_size``; see
    :class:`sessions.actors.opcua.OPCUAOptions`) and the supervision keys
    (``call_timeout``, ``restart``, ...); ``supervisor`` sets the root supervisor's policy.
    """

    kind: ClassVar[str] = OPCUA_KIND

    def __init__(self, *, name: str | None = None,
                 supervisor: Mapping[str, Any] | None = None, **options: Any) -> None:
        super().__init__(None, name=name or "opcua", supervisor=supervisor, **options)
