"""The Modbus session manager: ``ModbusSessionManager`` over the ``modbus`` kind
(:mod:`sessions.actors.modbus`, pymodbus; the ``modbus`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sessions._registry import SessionManager

__all__ = ["ModbusSessionManager"]

#: The kind as a config names it.
MODBUS_KIND = "modbus"


class ModbusSessionManager(SessionManager):
    """``with ModbusSessionManager(host="10.0.0.5") as plc:`` -- one supervised Modbus
    link (resource name ``"modbus"`` unless ``name`` is given); ``with``/``async with``
    yields its handle::

        with ModbusSessionManager(host="10.0.0.5", port=502, device_id=3) as plc:
            plc.write_register(10, 1234).result()
            plc.read_value(20, "float32").result()

    ``options`` are the kind's keys (``transport``, ``host``, ``port``, ``serial_port``,
    ``timeout``, ``device_id``, ``read_retries``, ...; see
    :class:`sessions.actors.modbus.ModbusOptions`) and the supervision keys
    (``call_timeout``, ``restart``, ...); ``supervisor`` sets the root supervisor's policy.
    """

    kind: ClassVar[str] = MODBUS_KIND

    def __init__(self, *, name: str | None = None,
                 supervisor: Mapping[str, Any] | None = None, **options: Any) -> None:
        super().__init__(None, name=name or "modbus", supervisor=supervisor, **options)
