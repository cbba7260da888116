"""Reading a config file the way the operator tools need it: every problem in one
report, in file order, and the tree it would start, without starting it.

Used by ``sessions check``/``run`` (:mod:`sessions._tools.cli`) and by ``sessions demo
--config`` (:mod:`sessions._tools.demo`); neither imports the other.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sessions import _config
from sessions._config import SystemConfig
from sessions._errors import ConfigError
from sessions._runtime.kinds import resolve_kind
from sessions._system import System
from sessions.supervisor._tree import make_actor

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

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

    Every problem is collected into one ``ConfigError``. Nothing is started: kinds are
    resolved and their actor objects constructed (cheap and side-effect free by the
    ``ResourceActor`` contract; ``connect()`` does the I/O) exactly as ``start()``
    would, then dropped.
    """
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        _config.load(path)  # raises the ConfigError worded as the library words it
        raise
    try:
        config = _config.load(raw)
    except ConfigError as err:
        # Still check the kinds of the resource tables that are valid on their own, so
        # one run lists every problem rather than one layer at a time.
        errors = [*err.errors, *_kind_errors(raw)]
        raise ConfigError(_in_file_order(errors, raw)) from None
    try:
        tree = plan(config)
    except ConfigError as err:
        raise ConfigError(_in_file_order(list(err.errors), raw)) from None
    return LoadedConfig(path, raw, config, tree)


def _kind_errors(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Kind and option problems of each resource table that is valid by itself."""
    errors: list[tuple[str, str]] = []
    tables = raw.get("resources")
    if not isinstance(tables, dict):
        return errors
    for name, table in tables.items():
        if not isinstance(table, dict):
            continue
        try:
            spec = _config.resource_spec(str(name), table)
        except ConfigError:
            continue  # already reported by load()
        path = f"resources.{name}"
        try:
            cls = resolve_kind(spec.kind, f"{path}.kind")
            make_actor(cls, _config.check_options(cls, spec.options, path), spec.kind, path)
        except ConfigError as err:
            errors += err.errors
    return errors


def _in_file_order(errors: list[tuple[str, str]], raw: dict[str, Any]) -> list[tuple[str, str]]:
    """Sort problems by where their table appears in the file (stable otherwise)."""
    top = {key: i for i, key in enumerate(raw)}

    def key(item: tuple[str, str]) -> tuple[int, int]:
        parts = item[0].split(".")
        first = top.get(parts[0], -1 if not parts[0] else len(top))
        table = raw.get(parts[0])
        second = -1
        if len(parts) > 1 and isinstance(table, dict):
            second = {k: i for i, k in enumerate(table)}.get(parts[1], len(table))
        return first, second

    return sorted(errors, key=key)


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
