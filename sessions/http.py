"""The seed's HTTP session manager: ``HTTPSessionManager`` over the ``http`` kind
(:mod:`sessions.actors.http`, requests; the ``http`` extra).
"""

from __future__ import annotations

from typing import Any, ClassVar

from sessions._registry import SessionManager
from sessions.actors.http import DEFAULT_CONNECT_TIMEOUT

__all__ = ["HTTPSessionManager"]


class HTTPSessionManager(SessionManager):
    """The seed's ``HTTPSessionManager(base_url=..., **options)``: one supervised
    ``http`` resource; ``with``/``async with`` yields its handle::

        async with HTTPSessionManager(base_url="https://api.example.com") as client:
            response = await client.get("/resource")
            response.json()

    ``options`` are the kind's keys (``headers``, ``timeout``, ``retries``, ...) and the
    supervision keys (``call_timeout``, ``pool_size``, ``breaker``, ...). Given a
    ``call_timeout`` but no ``timeout``, the read timeout follows ``call_timeout``.
    """

    kind: ClassVar[str] = "http"

    def __init__(self, base_url: str, **options: Any) -> None:
        call_timeout = options.get("call_timeout")
        if isinstance(call_timeout, int | float) and "timeout" not in options:
            options["timeout"] = (min(DEFAULT_CONNECT_TIMEOUT, call_timeout), call_timeout)
        super().__init__(base_url=base_url, **options)
