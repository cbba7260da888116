"""The exception tree: one base, errors named by what happened to the resource.

Every exception keeps its keyword details as attributes and survives pickling
(``__reduce__`` rebuilds it from its message and attributes), so errors can
cross process boundaries (multiprocessing, logging queues) intact.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SessionsError(Exception):
    """Base of every error raised by ``sessions``."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.__dict__.update(details)

    def __reduce__(self) -> tuple[Any, ...]:
        details = {k: v for k, v in self.__dict__.items() if not k.startswith("__")}
        return (_rebuild, (type(self), str(self), details))


def _rebuild(cls: type[SessionsError], message: str, details: dict[str, Any]) -> SessionsError:
    err = cls.__new__(cls)
    SessionsError.__init__(err, message, **details)
    return err


class ConfigError(SessionsError, ValueError):
    """The configuration is invalid.

    ``path`` names the first bad location (``"supervisor.strategy"``);
    ``errors`` lists every problem found as ``(path, message)`` pairs.
    """

    path: str
    errors: Sequence[tuple[str, str]]

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        errors = list(errors) or [("", "invalid configuration")]
        lines = [f"{p}: {m}" if p else m for p, m in errors]
        if len(lines) == 1:
            message = lines[0]
        else:
            message = f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(message, path=errors[0][0], errors=errors)


class ResourceFault(SessionsError):
    """A call broke its resource; the call had started, so its outcome is unknown.

    The driver's exception is ``__cause__``. The resource is being restarted.
    """

    resource: str
    method: str


class ResourceBroken(SessionsError):
    """Raised by a kind where it finds its resource broken (a reader saw EOF, a reply
    proved the link desynchronized): always a fault, whatever ``is_fault`` says, so the
    kind need not recognise its own errors after the fact. Raise it ``from`` the
    driver's error; the caller gets ``ResourceFault`` with this as ``__cause__``."""


class InjectedFault(ResourceBroken):
    """A fault injected on cue (``system.faults(name)``, ``sessions fault``) to rehearse
    a failure: never raised by a real resource. A fault like any other: the resource
    restarts, the caller gets ``ResourceFault`` with this as ``__cause__``."""


class ResourceUnavailable(SessionsError):
    """The resource is not serving calls: stopped, terminated, its supervisor gave up,
    or its circuit is open. The call was not executed."""

    resource: str


class LeaseBroken(ResourceUnavailable):
    """A call made under a lease (``handle.lease()``, ``with handle``) cannot run: the
    lease's member faulted, stopped or restarted, the lease was revoked (left idle past
    its ``idle_timeout``, or dropped without being exited), or it has ended.

    Nothing was sent to another member in its place: whatever the lease did on its
    member's connection may be lost (a database rolled its transaction back). Leave the
    block and take a new lease. ``lease`` names the lease, ``resource`` its member.
    """

    lease: str


class CallTimeout(SessionsError, TimeoutError):
    """The call did not complete within its ``call_timeout``.

    ``started`` says whether it had begun: if not, it was never executed and
    never will be; if it had, its outcome is unknown.
    """

    resource: str
    started: bool


class ChildRunning(SessionsError):
    """``delete_child`` of a child that is running (Erlang/OTP's ``{error, running}``):
    ``terminate_child`` it first. ``name`` is the child."""

    name: str


class DeviceError(SessionsError):
    """A device on a bus did not answer (NACK) or lost arbitration; the bus itself is fine."""

    address: int | None
    errno: int
