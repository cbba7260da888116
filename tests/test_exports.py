"""The public surface (in the style of trio's test_exports): ``__all__``, logging, typing,
and the shape of the message classes."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.resources
import inspect
import json
import logging
import subprocess
import sys
import textwrap
import types
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

import sessions
import sessions.messages

PUBLIC_MODULES = [
    "sessions", "sessions.messages", "sessions.supervisor", "sessions.actors", "sessions.testing",
]


def _defined_here(obj: Any, modname: str) -> bool:
    """A class or function defined in ``modname`` or below it (not one imported from a
    sibling package for internal use, such as ``ConfigError`` in ``sessions.actors``)."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        return False
    origin = getattr(obj, "__module__", "") or ""
    return origin == modname or origin.startswith(f"{modname}.")


@pytest.mark.parametrize("modname", PUBLIC_MODULES)
def test_all_sorted_unique(modname: str) -> None:
    """``__all__`` is sorted and has no duplicates."""
    names = importlib.import_module(modname).__all__
    assert list(names) == sorted(set(names))


@pytest.mark.parametrize("modname", PUBLIC_MODULES)
def test_all_names_exist(modname: str) -> None:
    """Every name in ``__all__`` is an attribute of the module."""
    module = importlib.import_module(modname)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing


@pytest.mark.parametrize("modname", PUBLIC_MODULES)
def test_all_nothing_private(modname: str) -> None:
    """Nothing private is exported (``__version__`` is the one dunder allowed)."""
    module = importlib.import_module(modname)
    private = [n for n in module.__all__ if n.startswith("_") and n != "__version__"]
    assert not private


@pytest.mark.parametrize("modname", PUBLIC_MODULES)
def test_public_names_are_exported(modname: str) -> None:
    """Every public class/function of the library in the namespace is in ``__all__``."""
    module = importlib.import_module(modname)
    public = {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and _defined_here(obj, modname)
    }
    assert public <= set(module.__all__), sorted(public - set(module.__all__))


@pytest.mark.parametrize("modname", PUBLIC_MODULES)
def test_star_import(modname: str) -> None:
    """``from module import *`` gives exactly ``__all__``."""
    namespace: dict[str, Any] = {}
    exec(f"from {modname} import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(importlib.import_module(modname).__all__)


def test_version() -> None:
    """``__version__`` is exported and is a dotted version string."""
    assert "__version__" in sessions.__all__
    parts = sessions.__version__.split(".")
    assert len(parts) >= 2
    assert all(p.isdigit() for p in parts[:2])


def test_exported_classes_report_public_module() -> None:
    """Exported objects are defined inside the package."""
    for name in sessions.__all__:
        obj = getattr(sessions, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("sessions"), name


# -- logging --------------------------------------------------------------------------


def test_logger_has_null_handler() -> None:
    """The ``sessions`` logger has a NullHandler and nothing else."""
    handlers = logging.getLogger("sessions").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
    assert all(isinstance(h, logging.NullHandler) for h in handlers)


def test_library_configures_no_handlers() -> None:
    """Importing (and starting) the library adds no handler anywhere but the NullHandler,
    and changes no level: logging is left to the application."""
    code = textwrap.dedent(
        """
        import logging
        root_before = list(logging.root.handlers), logging.root.level
        import sessions, sessions.messages, sessions.supervisor, sessions.actors
        with sessions.start({"resources": {"a": {"kind": "tests.kinds:Probe"}}}) as s:
            s.get("a").echo(1).result(10)
        assert (list(logging.root.handlers), logging.root.level) == root_before
        for name, logger in logging.root.manager.loggerDict.items():
            if not isinstance(logger, logging.Logger):
                continue
            if name == "sessions" or name.startswith("sessions."):
                kinds = [type(h).__name__ for h in logger.handlers]
                expected = ["NullHandler"] if name == "sessions" else []
                assert kinds == expected, (name, kinds)
                assert logger.propagate, name
                assert logger.level == logging.NOTSET, name
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_py_typed_ships() -> None:
    """The PEP 561 marker is part of the package."""
    assert (importlib.resources.files("sessions") / "py.typed").is_file()


# -- message classes ------------------------------------------------------------------

MESSAGE_CLASSES = [
    obj
    for name in sessions.messages.__all__
    if isinstance(obj := getattr(sessions.messages, name), type) and not issubclass(obj, Enum)
]

STATE_ENUMS = [sessions.messages.ChildState, sessions.messages.CircuitState]


@pytest.mark.parametrize("enum", STATE_ENUMS, ids=lambda e: e.__name__)
def test_states_are_str_enums_that_read_as_their_value(enum: type[Enum]) -> None:
    """A state compares, formats, hashes and serializes as its plain string (status JSON,
    log lines, metric labels, dict keys), and every member has a docstring line."""
    source = inspect.getsource(enum)
    for member in enum:
        assert isinstance(member, str)
        assert member == member.value and f"{member}" == member.value == str(member)
        assert {member.value: 1}[member] == 1
        assert json.dumps(member) == f'"{member.value}"'
        assert f'{member.name} = "{member.value}"' in source
    tree = ast.parse(textwrap.dedent(source))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for i, node in enumerate(body):
        if isinstance(node, ast.Assign):
            following = body[i + 1] if i + 1 < len(body) else None
            assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant), (
                f"{enum.__name__}.{node.targets[0].id} has no docstring line")  # type: ignore[attr-defined]


def test_event_union_covers_public_events() -> None:
    """``Event`` is the union of every public event class (all but the mailbox messages
    and a call's ``Superseded`` outcome)."""
    event = sessions.messages.Event
    assert isinstance(event, types.UnionType)
    internal = {sessions.messages.Call, sessions.messages.LeaseCall,
                sessions.messages.KeyedCall, sessions.messages.HealthCheck,
                sessions.messages.Superseded}
    assert set(event.__args__) == set(MESSAGE_CLASSES) - internal


def _example(cls: type) -> Any:
    """An instance of a message dataclass with placeholder field values."""
    return cls(**{f.name: None for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_message_is_frozen_dataclass(cls: type) -> None:
    """Every message is a frozen dataclass: assigning to a field raises."""
    assert dataclasses.is_dataclass(cls)
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen
    message = _example(cls)
    fields = dataclasses.fields(cls)
    for field in fields:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, field.name, 1)
    if not fields:
        # A field-less slotted frozen dataclass refuses any assignment; CPython raises
        # TypeError there rather than FrozenInstanceError (a dataclasses quirk).
        with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
            message.anything = 1


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_message_equality(cls: type) -> None:
    """Messages compare by value, so subscribers can compare and collect them."""
    assert _example(cls) == _example(cls)


DOCUMENTED = [*MESSAGE_CLASSES, sessions.ChildInfo, sessions.Stall, sessions.Backoff,
              sessions.RestartIntensity]


@pytest.mark.parametrize("cls", DOCUMENTED, ids=lambda c: c.__name__)
def test_every_field_has_a_docstring(cls: type) -> None:
    """Each field declaration is followed by a docstring line, and the class has one too."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    classdef = tree.body[0]
    assert isinstance(classdef, ast.ClassDef)
    assert ast.get_docstring(classdef)
    body = classdef.body
    undocumented = []
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        nxt = body[i + 1] if i + 1 < len(body) else None
        documented = (
            isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
            and nxt.value.value.strip() != ""
        )
        if not documented:
            undocumented.append(stmt.target.id)
    assert not undocumented
    declared = {
        s.target.id for s in body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
    }
    inherited = {f.name for base in cls.__bases__ if dataclasses.is_dataclass(base)
                 for f in dataclasses.fields(base)}  # documented in the base class
    assert declared == {f.name for f in dataclasses.fields(cls)} - inherited


DRIVERS = ("sqlalchemy", "psycopg", "redis", "kafka", "can", "smbus2", "requests",
           "prometheus_client", "rich", "pymodbus", "serial", "paho", "asyncua")


def test_star_import_and_the_seed_module_paths_need_no_driver() -> None:
    """``from sessions import *`` and the seed's own module paths (``sessions.http``,
    ``sessions.database``, ...) work with every driver missing: a driver is imported
    only when its resource connects."""
    blocked = "; ".join(f"sys.modules[{d!r}] = None" for d in DRIVERS)
    code = textwrap.dedent(f"""
        import sys
        {blocked}
        from sessions import *
        from sessions.database import DatabaseSessionManager
        from sessions.redis import RedisSessionManager
        from sessions.kafka import KafkaSessionManager
        from sessions.i2c import I2CSessionManager
        from sessions.canbus import CANBusSessionManager
        from sessions.http import HTTPSessionManager
        from sessions.modbus import ModbusSessionManager
        from sessions.mqtt import MQTTSessionManager
        from sessions.opcua import OPCUASessionManager
        import sessions
        assert sessions.HTTPSessionManager is HTTPSessionManager
        assert sessions.ModbusSessionManager is ModbusSessionManager
        assert sessions.MQTTSessionManager is MQTTSessionManager
        assert sessions.OPCUASessionManager is OPCUASessionManager
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
