"""Finding a resource kind by name.

A kind is resolved, in order, from the built-in table below, from the entry-point
group ``sessions.resources`` (so other packages can add kinds), or from an explicit
``"package.module:Class"`` string. A kind's module is imported only when a config
names it, so every driver stays an optional extra (and this layer imports no kind).
"""

from __future__ import annotations

import functools
import importlib
import sys
import weakref
from importlib.metadata import entry_points
from typing import Any

from sessions._errors import ConfigError
from sessions._runtime.contract import RESERVED, ResourceActor, reserved_clashes

#: kind -> "module:Class" of the built-in kinds (imported only when a config names them).
BUILTIN_KINDS: dict[str, str] = {
    "i2c": "sessions.actors.i2c:I2CActor",
    "canbus": "sessions.actors.canbus:CANBusActor",
    "database": "sessions.actors.database:DatabaseActor",
    "redis": "sessions.actors.redis:RedisActor",
    "kafka_producer": "sessions.actors.kafka:KafkaProducerActor",
    "kafka_consumer": "sessions.actors.kafka:KafkaConsumerActor",
    "http": "sessions.actors.http:HTTPActor",
    "modbus": "sessions.actors.modbus:ModbusActor",
    "mqtt": "sessions.actors.mqtt:MQTTActor",
    "opcua": "sessions.actors.opcua:OPCUAActor",
}

#: kind -> pip extra to suggest when its driver is missing.
_EXTRAS: dict[str, str] = {
    "i2c": "i2c",
    "canbus": "can",
    "database": "database",
    "redis": "redis",
    "kafka_producer": "kafka",
    "kafka_consumer": "kafka",
    "http": "http",
    "modbus": "modbus",
    "mqtt": "mqtt",
    "opcua": "opcua",
}


#: "module:qualname" -> a kind given as a class object (``{"kind": Thermostat}``). Weak:
#: a class the program drops is forgotten. Written by any caller thread (a config being
#: validated); a dict write is atomic under the GIL, and two writes for one name can
#: only come from two classes of one qualname, where the later is the one meant.
_CLASSES: weakref.WeakValueDictionary[str, type[ResourceActor]] = (
    weakref.WeakValueDictionary())


def kind_name(value: Any) -> Any:
    """``value`` as a config stores a kind: a ResourceActor subclass given as a class
    object becomes its ``"module:qualname"`` (remembered, so it resolves to that very
    class even when it was defined in a function or a script); anything else is returned
    unchanged for validation to judge."""
    if isinstance(value, type) and issubclass(value, ResourceActor):
        name = f"{value.__module__}:{value.__qualname__}"
        _CLASSES[name] = value
        return name
    return value


@functools.lru_cache(maxsize=4)
def _scan(path: tuple[str, ...]) -> dict[str, str]:
    """The entry points of the group (a scan of every installed distribution's metadata,
    milliseconds each: cached per ``sys.path``, so a config of a thousand resources does
    not scan a thousand times)."""
    return {ep.name: ep.value for ep in entry_points(group="sessions.resources")}


def _entry_point_kinds(fresh: bool = False) -> dict[str, str]:
    if fresh:
        _scan.cache_clear()
    return _scan(tuple(sys.path))


def resolve_kind(kind: str, path: str = "kind") -> type[ResourceActor]:
    """The ResourceActor subclass for ``kind``; ConfigError naming ``path`` otherwise."""
    given = _CLASSES.get(kind)
    if given is not None:
        return _checked(given, kind, path)
    target = BUILTIN_KINDS.get(kind) or _entry_point_kinds().get(kind)
    if target is None and ":" not in kind:  # installed since the last scan?
        target = _entry_point_kinds(fresh=True).get(kind)
    if target is None:
        if ":" not in kind:
            known = ", ".join(sorted({*BUILTIN_KINDS, *_entry_point_kinds()})) or "none"
            raise ConfigError([(path, f"unknown resource kind {kind!r} (built-in and "
                                      f"installed kinds: {known}; or use 'package.module:Class')")])
        target = kind
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        extra = _EXTRAS.get(kind)
        hint = f"; install it with: pip install 'applib-sessions[{extra}]'" if extra else ""
        raise ConfigError([(path, f"cannot import {module_name!r} for kind {kind!r}: "
                                  f"{err}{hint}")]) from err
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, ResourceActor)):
        raise ConfigError([(path, f"{target!r} is not a sessions.ResourceActor subclass")])
    return _checked(cls, target, path)


def _checked(cls: type[ResourceActor], target: str, path: str) -> type[ResourceActor]:
    clashes = reserved_clashes(cls)
    if clashes:
        raise ConfigError([(path, f"{target!r} defines {', '.join(clashes)} as a method; "
                                  f"the runtime sets {', '.join(sorted(RESERVED))} on every "
                                  f"actor: rename it")])
    return cls
