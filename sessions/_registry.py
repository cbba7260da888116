"""The seed's facade: ``SessionRegistry`` and the per-resource session managers.

Both are thin layers over :func:`sessions.start`: they build a config for the
resources asked for, start a supervised system, and hand out handles. Code written
against the original ``sessions`` module keeps working, now with supervision.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar

from sessions import _config
from sessions._errors import ConfigError
from sessions._system import ConfigSource, Handle, System, start
from sessions.messages import ChildState

#: Constructor argument -> (attribute, kind, option key). Kinds are filled in by the
#: issues that implement them; unknown kinds fail with a ConfigError naming the key.
FACADE: dict[str, tuple[str, str, str]] = {
    "db_url": ("db", "database", "url"),
    "redis_url": ("redis", "redis", "url"),
    "kafka_bootstrap_servers": ("kafka", "kafka_producer", "bootstrap_servers"),
    "i2c_bus_id": ("i2c", "i2c", "bus"),
    "can_channel": ("can", "canbus", "channel"),
    "http_base_url": ("http", "http", "base_url"),
    "modbus_host": ("modbus", "modbus", "host"),
    "modbus_serial_port": ("modbus", "modbus", "serial_port"),
    "mqtt_host": ("mqtt", "mqtt", "host"),
    "opcua_url": ("opcua", "opcua", "url"),
}


class SessionRegistry:
    """One supervised system holding the platform's resources, by attribute.

    ``SessionRegistry(db_url=..., redis_url=...)`` starts a resource per argument
    given; ``registry.db``, ``registry.redis``, ``registry.kafka``, ``registry.i2c``,
    ``registry.can``, ``registry.http``, ``registry.modbus`` (``modbus_host`` for Modbus
    TCP or ``modbus_serial_port`` for an RTU line), ``registry.mqtt`` and
    ``registry.opcua`` are their handles. ``kinds`` replaces the kind
    of an attribute (``{"db": "tests.fakes:FakeDb"}``) so tests can substitute a fake;
    ``options`` adds per-attribute options (``{"db": {"pool_size": 4}}``); ``config``
    adds resources and supervisors from a config file or mapping.

    **A partial start**: one resource that cannot start (``i2c_bus_id=1`` on a machine
    without that bus, a database that is down) does not fail the registry. The others
    start and serve; that one is retried in the background by its supervisor, with
    backoff, for as long as the registry is open, and its calls fail at once with
    ``ResourceUnavailable`` naming it and why until it is up. :meth:`status` and
    :attr:`unavailable` report each resource (see ``sessions.start(partial=True)``).
    A bad argument or config still raises ``ConfigError`` before anything starts.

    **Starting from async code** never blocks the event loop: ``registry = await
    SessionRegistry.open(...)`` builds and starts it in a worker thread, and ``async
    with SessionRegistry(...) as registry`` waits for the start without blocking.
    Constructed inside a running event loop, the registry returns at once and starts
    in the background (calls made meanwhile wait for their resource, within their
    ``call_timeout``); only validating the config (which imports the kinds' modules)
    happens on the loop. Constructed outside a loop, it returns once every resource has
    started or failed its first start.

    ``with registry.db as db`` / ``async with registry.db as db`` is a lease
    (``registry.db.lease()``): one connection for the block, and for a database one
    transaction, committed on a normal exit and rolled back on an exception.
    """

    ATTRIBUTES: ClassVar[tuple[str, ...]] = (
        "db", "redis", "kafka", "i2c", "can", "http", "modbus", "mqtt", "opcua",
    )

    def __init__(
        self,
        *,
        db_url: str | None = None,
        redis_url: str | None = None,
        kafka_bootstrap_servers: str | None = None,
        kafka_group_id: str | None = None,
        i2c_bus_id: int | str | None = None,
        can_channel: str | None = None,
        http_base_url: str | None = None,
        modbus_host: str | None = None,
        modbus_serial_port: str | None = None,
        mqtt_host: str | None = None,
        opcua_url: str | None = None,
        config: ConfigSource | None = None,
        kinds: Mapping[str, str] | None = None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        given = {
            "db_url": db_url,
            "redis_url": redis_url,
            "kafka_bootstrap_servers": kafka_bootstrap_servers,
            "i2c_bus_id": i2c_bus_id,
            "can_channel": can_channel,
            "http_base_url": http_base_url,
            "modbus_host": modbus_host,
            "modbus_serial_port": modbus_serial_port,
            "mqtt_host": mqtt_host,
            "opcua_url": opcua_url,
        }
        if modbus_host is not None and modbus_serial_port is not None:
            raise ConfigError([("modbus_serial_port", "one Modbus link per registry: give "
                                "modbus_host (TCP) or modbus_serial_port (RTU), not both")])
        resources: dict[str, dict[str, Any]] = {}
        for arg, value in given.items():
            if value is None:
                continue
            attr, kind, key = FACADE[arg]
            resources[attr] = {"kind": kind, key: value}
        if modbus_serial_port is not None:
            resources["modbus"]["transport"] = "rtu"
        if kafka_group_id is not None:
            if "kafka" not in resources:
                raise ConfigError([("kafka_group_id", "needs kafka_bootstrap_servers")])
            resources["kafka_consumer"] = {
                "kind": "kafka_consumer",
                "bootstrap_servers": kafka_bootstrap_servers,
                "group_id": kafka_group_id,
            }
        for attr, kind in (kinds or {}).items():
            if attr not in resources:
                raise ConfigError([(f"kinds.{attr}", f"no resource {attr!r} was configured")])
            resources[attr]["kind"] = kind
        for attr, extra in (options or {}).items():
            if attr not in resources:
                raise ConfigError([(f"options.{attr}", f"no resource {attr!r} was configured")])
            resources[attr].update(extra)
        merged = _merge(config, resources)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # not inside an event loop: start and wait
            in_loop = False
        else:
            in_loop = True
        self.system: System = start(merged, partial=True, wait=not in_loop)

    @classmethod
    async def open(cls, **kwargs: Any) -> SessionRegistry:
        """``await SessionRegistry.open(...)``: the same arguments as the constructor;
        builds and starts the registry in a worker thread, so the event loop is never
        blocked, and returns once every resource has started or failed its first start."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(cls, **kwargs))

    async def _wait_started(self) -> None:
        """Wait, without blocking the loop, until the start is done (a background one)."""
        ready = self.system.ready
        if ready.done():
            ready.result()  # raises if the start failed
        else:
            await asyncio.wrap_future(ready)

    def status(self) -> dict[str, dict[str, Any]]:
        """Each resource by name: ``kind``, ``state`` (``running`` when it serves; for a
        pool, when one member does), ``restarts`` and ``last_fault`` (why it last failed
        to start or faulted, None if it never did)."""
        out: dict[str, dict[str, Any]] = {}

        def visit(node: dict[str, Any]) -> None:
            if node.get("type") in ("resource", "pool"):
                name = node["name"]
                last = node["last_fault"]
                for member in node.get("children", []):
                    last = last or member["last_fault"]
                out[name] = {"kind": node["kind"], "state": str(self.system.get(name).state),
                             "restarts": self.system.get(name).restarts, "last_fault": last}
                return
            for child in node.get("children", []):
                visit(child)

        visit(self.system.status())
        return out

    @property
    def unavailable(self) -> dict[str, str]:
        """The resources not serving now, each with why (its last fault, or its state):
        empty when everything is up."""
        return {name: row["last_fault"] or f"it is {row['state']}"
                for name, row in self.status().items() if row["state"] != ChildState.RUNNING}

    def __getattr__(self, attr: str) -> Handle:
        if attr in self.ATTRIBUTES or attr == "kafka_consumer":
            try:
                return self.system.get(attr)
            except KeyError:
                raise AttributeError(
                    f"SessionRegistry has no {attr!r} resource: pass its argument "
                    f"({_arg_for(attr)}) when creating the registry"
                ) from None
        raise AttributeError(f"SessionRegistry has no attribute {attr!r}")

    def get(self, name: str) -> Handle:
        """Any resource by name (including those from ``config``)."""
        return self.system.get(name)

    def close(self) -> None:
        """Stop every resource (idempotent)."""
        self.system.stop()

    def __enter__(self) -> SessionRegistry:
        self.system.ready.result()  # started already, unless constructed in a loop
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SessionRegistry:
        try:
            await self._wait_started()
        except BaseException:
            await asyncio.get_running_loop().run_in_executor(None, self.close)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)


def _arg_for(attr: str) -> str:
    """The constructor argument(s) that configure ``attr``, as a hint: ``db_url=...``."""
    if attr == "kafka_consumer":
        return "kafka_group_id=..."
    return " or ".join(f"{arg}=..." for arg, (a, _, _) in FACADE.items() if a == attr)


def _merge(config: ConfigSource | None, resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The facade's resources appended to ``config`` (a mapping or a TOML path)."""
    if config is None:
        return {"resources": resources}
    if isinstance(config, Mapping):
        base = dict(config)
    else:
        loaded = _config.load(config)
        base = loaded.model_dump(exclude_none=True)
        base["resources"] = {
            name: {**spec.model_dump(exclude_none=True), **spec.options}
            for name, spec in loaded.resources.items()
        }
    clash = set(base.get("resources", {})) & set(resources)
    if clash:
        raise ConfigError([(f"resources.{n}", "also given as a SessionRegistry argument")
                           for n in sorted(clash)])
    base["resources"] = {**base.get("resources", {}), **resources}
    return base


class SessionManager:
    """A one-resource supervised system; ``with``/``async with`` yields its handle.

    ``SessionManager("redis", url=...)`` or a subclass that sets ``kind``. The
    supervision keys (``restart``, ``call_timeout``, ...) may be passed too;
    ``supervisor`` sets the root supervisor's policy.
    """

    kind: ClassVar[str] = ""

    def __init__(self, kind: str | None = None, *, name: str | None = None,
                 supervisor: Mapping[str, Any] | None = None, **options: Any) -> None:
        self._kind = kind or self.kind
        if not self._kind:
            raise ConfigError([("kind", "SessionManager needs a kind")])
        self._name = name or self._kind.rpartition(":")[2].replace(".", "_")
        self._config: dict[str, Any] = {
            "supervisor": dict(supervisor or {}),
            "resources": {self._name: {"kind": self._kind, **options}},
        }
        self._system: System | None = None

    def start(self) -> Handle:
        """Start the system (once) and return the handle."""
        if self._system is None or self._system.state == ChildState.STOPPED:
            self._system = start(self._config)
        return self._system.get(self._name)

    @property
    def system(self) -> System | None:
        """The running system, or None before ``start``/``with``."""
        return self._system

    def stop(self) -> None:
        """Stop the resource (idempotent)."""
        if self._system is not None:
            self._system.stop()

    def __enter__(self) -> Handle:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> Handle:
        return await asyncio.get_running_loop().run_in_executor(None, self.start)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop)
