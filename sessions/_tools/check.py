"""Reading a config file the way the operator tools need it: every problem in one
report, in file order, and the tree it would start, without starting it.

Used by ``sessions check``/``run`` (:mod:`sessions._tools.cli`) and by ``sessions demo
--config`` (:mod:`sessions._tools.demo`); neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sessions import _config
from sessions._config import SystemConfig
from sessions._errors import ConfigError
from sessions._system import System

__all__ = ["LoadedConfig", "plan", "read_config"]


@dataclass(frozen=True)
class LoadedConfig:
    """A config file read and validated for the command line."""

    path: str
    raw: dict[str, Any]
    """The TOML as read, before ``${VAR}`` substitution (``start()`` input)."""
    config: SystemConfig
    tree: dict[str, Any]
    """The tree it would start, as ``System.status()`` shows it (see ``plan``)."""


def read_config(path: str) -> LoadedConfig:
    """Read and fully validate ``path``: structure, kinds and their options, ``[server]``.

    Every problem is collected into one ``ConfigError``, in file order. Nothing is
    started: kinds are resolved and their actor objects constructed (cheap and
    side-effect free by the ``ResourceActor`` contract; ``connect()`` does the I/O)
    exactly as ``start()`` would, then dropped.
    """
    raw = _config.read_file(path)
    errors: list[tuple[str, str]] = []
    config: SystemConfig | None = None
    try:
        config = _config.load(raw)
    except ConfigError as err:
        errors += err.errors
    tree: dict[str, Any] = {}
    if config is not None:
        try:
            tree = plan(config)
        except ConfigError as err:
            errors += err.errors
    if errors or config is None:
        raise ConfigError(_in_file_order(errors, raw))
    return LoadedConfig(path, raw, config, tree)


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
