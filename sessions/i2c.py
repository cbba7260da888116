"""The seed's I2C session manager: ``I2CSessionManager`` over the ``i2c`` kind
(:mod:`sessions.actors.i2c`, smbus2 for a hardware bus; the ``i2c`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sessions._registry import SessionManager

__all__ = ["I2CSessionManager"]


class I2CSessionManager(SessionManager):
    """``with I2CSessionManager(bus=1) as i2c:`` -- the seed's I2C session manager.

    Starts a one-resource supervised system (resource name ``"i2c"`` unless ``name``
    is given) and yields its handle from ``with`` and ``async with``. Every ``i2c``
    option (:class:`I2COptions`) and supervision key (``call_timeout``, ...) may be
    passed as a keyword; ``supervisor`` sets the root supervisor's policy.
    """

    kind: ClassVar[str] = "i2c"

    def __init__(
        self,
        bus: int | str,
        *,
        name: str | None = None,
        supervisor: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(None, name=name, supervisor=supervisor, bus=bus, **options)
