"""Resource kinds: one module (or package, with its simulator beside it) per kind.

``sessions.actors`` is also the public home of the contract a kind implements
(:class:`ResourceActor`, :class:`Deferred`, :data:`IGNORE`, :class:`ResourceContext`)
and of :func:`resolve_kind`, which finds a kind by name: built-in, from the entry-point
group ``sessions.resources``, or ``"package.module:Class"``. A kind's module is
imported only when a config names it, so every driver stays an optional extra.
"""

from __future__ import annotations

from sessions._runtime.contract import IGNORE, Deferred, ResourceActor, ResourceContext
from sessions._runtime.kinds import BUILTIN_KINDS, resolve_kind

__all__ = [  # noqa: RUF022 - plain sorted() order, as tests/test_exports.py checks
    "BUILTIN_KINDS",
    "Deferred",
    "IGNORE",
    "ResourceActor",
    "ResourceContext",
    "resolve_kind",
]
