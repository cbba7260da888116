"""Messages: what flows into resource actors and out of supervisors.

Internal messages (``Call`` and its kinds, ``HealthCheck``) travel through a resource's
mailbox; the public supervision events (``ChildStarted`` ... ``SupervisorGaveUp``)
are delivered to ``System.subscribe`` callbacks; ``Superseded`` is the outcome of a
keyed call a newer one replaced. All are frozen dataclasses so a subscriber can keep,
compare and log them without copying.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sessions._runtime.futures import SessionFuture
    from sessions._runtime.runner import LeaseToken

__all__ = [
    "ACTIVE",
    "Call",
    "ChildFaulted",
    "ChildRestarting",
    "ChildStarted",
    "ChildState",
    "ChildStopped",
    "CircuitChanged",
    "CircuitState",
    "ConfigReloaded",
    "Event",
    "HealthCheck",
    "KeyedCall",
    "LeaseCall",
    "Superseded",
    "SupervisorGaveUp",
]


class _StrEnum(str, Enum):
    """A state that is also its plain string: ``ChildState.RUNNING == "running"``,
    formats and serializes (status JSON, logs, metrics labels) as ``running``."""

    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]
    __hash__ = str.__hash__


class ChildState(_StrEnum):
    """The state of a child (resource, pool or supervisor) or of the whole system."""

    STARTING = "starting"
    """Connecting (or its children starting) for the first time."""
    RUNNING = "running"
    """Up and serving calls."""
    RESTARTING = "restarting"
    """Between a fault and the next successful start (backoff included)."""
    STOPPED = "stopped"
    """Ended: terminated, exited normally, given up on by its supervisor, or ignored."""
    FAILED = "failed"
    """A supervisor that gave up (restart intensity exceeded); the system when the root did."""


ACTIVE = frozenset({ChildState.STARTING, ChildState.RUNNING, ChildState.RESTARTING})
"""The states of a child that is (or is coming) up."""


class CircuitState(_StrEnum):
    """The state of a resource's circuit breaker."""

    CLOSED = "closed"
    """Calls flow; failures are counted."""
    OPEN = "open"
    """Calls are refused at once until ``reset_timeout`` has passed."""
    HALF_OPEN = "half_open"
    """One probe call is let through; its outcome closes or reopens the circuit."""


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
class LeaseCall(Call):
    """A call made under a lease (``handle.lease()``). The lease's first call, queued
    with the plain calls, begins it; the others queue on the same member only, behind
    it. (A subclass, so that a plain call carries nothing more.)"""

    lease: LeaseToken
    """The lease this call belongs to."""


@dataclass(frozen=True, slots=True)
class KeyedCall(Call):
    """A latest-value-wins call (``handle.coalescing(key)``): queued behind an older call
    with the same key that has not started, it takes that call's place in line and the
    older one resolves with :class:`Superseded`. (A subclass, so that a plain call
    carries nothing more.)"""

    key: str
    """The coalescing key, e.g. ``"setpoint:motor1"``."""


@dataclass(frozen=True, slots=True)
class Superseded:
    """The result of a coalescing call that never ran: a newer call with the same key
    replaced it while it was still queued. Not an error: the newer value is the one
    the resource gets (``isinstance(future.result(), Superseded)`` tells them apart)."""

    resource: str
    """The resource the call was queued for."""

    method: str
    """The method that was not run."""

    key: str
    """The coalescing key the newer call carried."""


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


@dataclass(frozen=True)
class ConfigReloaded:
    """A new config was applied to the running tree (``System.reload``; SIGHUP under
    ``sessions run``). Resources and supervisors it names nowhere were left untouched."""

    added: tuple[str, ...]
    """Resources and supervisors started because the new config has them."""

    removed: tuple[str, ...]
    """Resources and supervisors stopped and taken out of the tree."""

    changed: tuple[str, ...]
    """Resources restarted with their new spec; their handles keep working."""

    policies: tuple[str, ...]
    """Supervisors whose policy changed in place, their children left running."""

    failed: tuple[str, ...]
    """Added or changed resources whose start failed, each as ``"name: why"``."""


Event = (
    ChildStarted | ChildFaulted | ChildRestarting | ChildStopped | SupervisorGaveUp
    | CircuitChanged | ConfigReloaded
)
"""Every public event type."""
