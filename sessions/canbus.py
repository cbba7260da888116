"""The seed's CAN session manager: ``CANBusSessionManager`` over the ``canbus`` kind
(:mod:`sessions.actors.canbus`, python-can; the ``can`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sessions._registry import SessionManager

__all__ = ["CANBusSessionManager"]


class CANBusSessionManager(SessionManager):
    """The seed's CAN session manager: a one-bus supervised system.

    ``with CANBusSessionManager(interface="socketcan", channel="can0") as bus:`` (or
    ``async with``) yields the bus's handle; other keywords are the kind's config keys
    and the supervision keys (``call_timeout``, ``restart``, ...).
    """

    kind: ClassVar[str] = "canbus"

    def __init__(
        self,
        interface: str = "virtual",
        channel: str | int | None = None,
        *,
        name: str | None = None,
        supervisor: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if channel is not None:
            options["channel"] = channel
        super().__init__("canbus", name=name, supervisor=supervisor, interface=interface, **options)
