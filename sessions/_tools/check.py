"""Reading a config file the way the operator tools need it: every problem in one
report, in file order, and the tree it would start, without starting it.

Used by ``sessions check``/``run`` (:mod:`sessions._tools.cli`) and by ``sessions demo
--config`` (:mod:`sessions._tools.demo`); neither imports the other.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sessions import _config
from sessions._config import ServerConfig, SystemConfig
from sessions._errors import ConfigError
from sessions._system import System

__all__ = ["LoadedConfig", "plan", "probe_bind", "read_config"]


@dataclass(frozen=True)
class LoadedConfig:
    """A config file read and validated for the command line."""

    path: str
    raw: dict[str, Any]
    """The TOML as read, before ``${VAR}`` substitution (``start()`` input)."""
    config: SystemConfig
    tree: dict[str, Any]
    """The tree it would start, as ``System.status()`` shows it (see ``plan``)."""
    warnings: list[tuple[str, str]] = field(default_factory=list)
    """``(path, message)``: what may fail at ``run`` but is not wrong in the file
    (the ``[server]`` port is in use now)."""


def read_config(path: str, probe_server: bool = True) -> LoadedConfig:
    """Read and fully validate ``path``: structure, kinds and their options, ``[server]``.

    Every problem is collected into one ``ConfigError``, in file order. Nothing is
    started: kinds are resolved and their actor objects constructed (cheap and
    side-effect free by the ``ResourceActor`` contract; ``connect()`` does the I/O)
    exactly as ``start()`` would, then dropped. ``[server]``'s address is resolved and
    bound to a free port, as ``run`` would bind it (see :func:`probe_bind`), unless
    ``probe_server`` is false (``run``, which binds it for real).
    """
    raw = _config.read_file(path)
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    config: SystemConfig | None = None
    try:
        config = _config.load(raw)
    except ConfigError as err:
        errors += err.errors
    server = raw.get("server")
    if probe_server and isinstance(server, dict):
        with contextlib.suppress(ValidationError):  # a bad table is reported by load()
            bind_errors, warnings = probe_bind(ServerConfig.model_validate(server))
            errors += bind_errors
    tree: dict[str, Any] = {}
    if config is not None:
        try:
            tree = plan(config)
        except ConfigError as err:
            errors += err.errors
    if errors or config is None:
        raise ConfigError(_in_file_order(errors, raw))
    return LoadedConfig(path, raw, config, tree, warnings)


def _in_file_order(errors: list[tuple[str, str]], raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Sort problems by where their key appears in the file: top-level table, the table
    in it (a resource), the key in that (stable otherwise)."""

    def position(item: tuple[str, str]) -> tuple[int, ...]:
        parts = item[0].replace("[", ".[").split(".") if item[0] else []
        if not parts:
            return (-1,)
        out: list[int] = []
        node: Any = raw
        for part in parts[:3]:
            if not isinstance(node, dict):
                break
            keys = list(node)
            out.append(keys.index(part) if part in node else len(keys))
            node = node.get(part)
        return tuple(out)

    return sorted(errors, key=position)


def plan(config: SystemConfig) -> dict[str, Any]:
    """The tree ``config`` would start, as ``System.status()`` shows it, without starting.

    Raises ``ConfigError`` for unknown kinds, bad kind options and options the kind's
    constructor rejects. Builds a ``System`` (which validates exactly as ``start()``
    does) and stops it before it boots: only its event thread ever runs.
    """
    system = System(config)
    try:
        return system.status()
    finally:
        system.stop()


def probe_bind(server: ServerConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(errors, warnings)`` for listening on ``[server]``'s address, found out the way
    ``run`` would: the name resolved, the address bound (to a free port, so a running
    instance on the configured port does not matter). An address that does not resolve
    or is not one of this host's is an error (``run`` would exit 2 on it); the configured
    port being in use or privileged now is a warning, since that may change by the time
    ``run`` starts.
    """
    bind, port = server.bind, server.port
    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        return [("server.bind", f"cannot resolve {bind!r} ({reason}): `sessions run` "
                                "could not listen on it")], []
    family, kind, proto, _, address = infos[0]
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    for probe_port in (0, port) if port else (0,):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as run's server
            try:
                sock.bind((address[0], probe_port, *address[2:]))
            except OSError as err:
                reason = err.strerror or str(err)
                if probe_port == 0:
                    errors.append(("server.bind", f"cannot listen on {bind!r} on this host "
                                                  f"({reason}): `sessions run` would exit 2"))
                    break
                what = ("needs privileges here" if err.errno in (errno.EACCES, errno.EPERM)
                        else "is in use now")
                warnings.append(("server.port", f"{port} on {bind} {what} ({reason}): "
                                                "`sessions run` fails unless that changes"))
    return errors, warnings
