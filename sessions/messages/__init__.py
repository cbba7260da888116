"""Messages: what flows into resource actors and out of supervisors.

Internal messages (``Call``, ``HealthCheck``) travel through a resource's
mailbox; the public supervision events (``ChildStarted`` ... ``SupervisorGaveUp``)
are delivered to ``System.subscribe`` callbacks. All are frozen dataclasses so a
subscriber can keep, compare and log them without copying.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sessions._runtime.futures import SessionFuture

__all__ = [
    "Call",
    "ChildFaulted",
    "ChildRestarting",
    "ChildStarted",
    "ChildStopped",
    "CircuitChanged",
    "Event",
    "HealthCheck",
    "SupervisorGaveUp",
]


@dataclass(frozen=True, slots=True)
class Call:
    """One call from a handle, queued in a resource's mailbox."""

    fn: Callable[..., Any]
    """The unbound method (or function) to run as ``fn(actor, *args, **kwargs)``."""

    args: tuple[Any, ...]
    """Positional arguments."""

    kwargs: Mapping[str, Any]
    """Keyword arguments."""

    future: SessionFuture[Any]
    """Resolved exactly once with the result or the error; carries the deadline."""


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Asks the actor to run its ``health_check`` between calls."""


@dataclass(frozen=True)
class ChildStarted:
    """A child (resource or supervisor) is up and serving."""

    supervisor: str
    """Name of the supervising supervisor."""

    name: str
    """Name of the child."""

    kind: str
    """Resource kind, or ``"supervisor"``."""

    restarts: int
    """Completed restarts of this child so far (0 on the first start)."""


@dataclass(frozen=True)
class ChildFaulted:
    """A child broke: a call or health check faulted, a connect failed, or a
    sub-supervisor gave up."""

    supervisor: str
    """Name of the supervising supervisor."""

    name: str
    """Name of the child."""

    error: str
    """The fault, credentials redacted."""

    during_start: bool
    """True if the fault was a failed connect (or replay) rather than a running fault."""


@dataclass(frozen=True)
class ChildRestarting:
    """A child will be restarted after a backoff delay."""

    supervisor: str
    """Name of the supervising supervisor."""

    name: str
    """Name of the child."""

    delay: float
    """Backoff before the restart, in seconds."""

    attempt: int
    """Consecutive failures of this child, 1 for the first (the ``n`` of the backoff)."""


@dataclass(frozen=True)
class ChildStopped:
    """A child stopped and will not be restarted by this decision."""

    supervisor: str
    """Name of the supervising supervisor."""

    name: str
    """Name of the child."""

    reason: str
    """Why: ``"terminated"``, ``"system stopped"``, ``"temporary child faulted"``..."""


@dataclass(frozen=True)
class SupervisorGaveUp:
    """A supervisor exceeded its restart intensity, stopped its children and escalated."""

    supervisor: str
    """Name of the supervisor that gave up."""

    reason: str
    """What exhausted it, credentials redacted."""


@dataclass(frozen=True)
class CircuitChanged:
    """A resource's circuit breaker opened, half-opened or closed."""

    name: str
    """Name of the resource."""

    state: str
    """``"open"``, ``"half_open"`` or ``"closed"``."""

    reason: str
    """The failure that opened it, or what closed it."""


Event = (
    ChildStarted | ChildFaulted | ChildRestarting | ChildStopped | SupervisorGaveUp | CircuitChanged
)
"""Every public event type."""
