"""The seed's Redis session manager: ``RedisSessionManager`` over the ``redis`` kind
(:mod:`sessions.actors.redis`, redis-py; the ``redis`` extra).

Importing this module needs no driver: redis-py is imported when the resource starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sessions._registry import SessionManager

__all__ = ["RedisSessionManager"]


class RedisSessionManager(SessionManager):
    """``with RedisSessionManager(url="redis://cache:6379/0") as cache:`` -- the seed's
    Redis session manager.

    Starts a one-resource supervised system (resource name ``"redis"`` unless ``name`` is
    given) and yields its handle from ``with`` and ``async with``. Every ``redis`` option
    (:class:`RedisOptions`, redis-py connection keywords) and supervision key
    (``call_timeout``, ``pool_size``, ``breaker``, ...) may be passed as a keyword;
    ``supervisor`` sets the root supervisor's policy.
    """

    kind: ClassVar[str] = "redis"

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        supervisor: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name=name, supervisor=supervisor, url=url, **options)
