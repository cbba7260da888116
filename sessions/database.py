"""The seed's database session manager: ``DatabaseSessionManager`` over the ``database``
kind (:mod:`sessions.actors.database`, SQLAlchemy; the ``database`` or ``postgres`` extra).

Importing this module needs no driver: SQLAlchemy is imported when the resource starts.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sessions._registry import SessionManager

__all__ = ["DatabaseSessionManager"]


class DatabaseSessionManager(SessionManager):
    """The seed's database session manager, now supervised.

    ``with DatabaseSessionManager(url=...) as db`` (or ``async with``) yields the handle
    of a one-resource system of kind ``database``; ``**options`` are any other config
    keys of the kind and supervision keys (``pool_size``, ``call_timeout``, ...).
    """

    kind: ClassVar[str] = "database"

    def __init__(self, url: str | None = None, **options: Any) -> None:
        # No url: the kind's own default (one place for it, DatabaseOptions).
        if url is not None:
            options["url"] = url
        super().__init__(**options)
