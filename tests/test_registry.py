"""The seed's facade: ``SessionRegistry`` and ``SessionManager`` over a supervised system."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

import sessions
from sessions import ConfigError, Handle, ResourceUnavailable, SessionManager, SessionRegistry
from tests import kinds
from tests.support import wait_until

PROBE = "tests.kinds:Probe"
DB_URL = "postgresql://u:pw@h/db"


def make_registry(**kwargs: Any) -> SessionRegistry:
    """A registry whose ``db`` is a probe."""
    return SessionRegistry(db_url=DB_URL, kinds={"db": PROBE}, **kwargs)


# -- SessionRegistry ------------------------------------------------------------------


def test_registry_attribute_is_a_working_handle() -> None:
    """``registry.db`` is a Handle; its calls run on the resource and return futures."""
    with make_registry() as registry:
        handle = registry.db
        assert isinstance(handle, Handle)
        assert handle.name == "db"
        assert handle.kind == "probe"
        assert handle.state == "running"
        assert handle.echo(1).get() == 1
        assert handle.echo({"k": [1, 2]}).result(10) == {"k": [1, 2]}
        assert registry.db is handle  # stable


def test_registry_argument_reaches_the_kind() -> None:
    """The constructor argument becomes the kind's option (``db_url`` -> ``url``)."""
    with make_registry() as registry:
        assert registry.db.apply(lambda p: p.url).result(10) == DB_URL
        assert registry.system.config.resources["db"].options == {"url": DB_URL}


def test_registry_status_has_no_credentials() -> None:
    """The URL's password does not show in the handle's repr or the status tree."""
    with make_registry() as registry:
        text = repr(registry.db) + json.dumps(registry.system.status())
    assert DB_URL not in text
    assert ":pw@" not in text


def test_registry_options() -> None:
    """``options`` adds per-attribute options, including supervision keys."""
    with make_registry(options={"db": {"label": "main", "call_timeout": 2.0}}) as registry:
        assert registry.db.apply(lambda p: p.label).result(10) == "main"
        assert registry.system.config.resources["db"].call_timeout == 2.0


def test_registry_handle_context_managers() -> None:
    """``with registry.db as db`` is a lease of the resource for the block."""
    with make_registry() as registry:
        with registry.db as db:
            assert isinstance(db, sessions.Lease)
            assert (db.name, db.member, db.active) == ("db", "db", True)
            assert db.echo("sync").result(10) == "sync"
        assert not db.active
        assert registry.db.state == "running"  # leaving the block stops nothing


def test_registry_async_handle_context_manager() -> None:
    """``async with registry.db as db`` is a lease too; its calls can be awaited."""

    async def main(registry: SessionRegistry) -> tuple[bool, Any]:
        async with registry.db as db:
            return isinstance(db, sessions.Lease) and db.active, await db.echo("async")

    with make_registry() as registry:
        assert asyncio.run(main(registry)) == (True, "async")


def test_registry_unconfigured_attribute() -> None:
    """A known attribute that was not configured names the argument to pass."""
    with make_registry() as registry:
        with pytest.raises(AttributeError) as info:
            _ = registry.redis
        assert "redis_url=" in str(info.value)
        for attr, arg in [
            ("kafka", "kafka_bootstrap_servers="),
            ("i2c", "i2c_bus_id="),
            ("can", "can_channel="),
            ("http", "http_base_url="),
            ("modbus", "modbus_host=... or modbus_serial_port="),
            ("mqtt", "mqtt_host="),
            ("opcua", "opcua_url="),
            ("kafka_consumer", "kafka_group_id="),
        ]:
            with pytest.raises(AttributeError, match=arg):
                getattr(registry, attr)
        assert not hasattr(registry, "redis")


def test_registry_modbus_tcp_and_rtu_together_is_a_config_error() -> None:
    """One Modbus link per registry: a host and a serial port together are refused,
    before anything starts."""
    with pytest.raises(ConfigError, match=r"modbus_serial_port.*not both"):
        SessionRegistry(modbus_host="10.0.0.5", modbus_serial_port="/dev/ttyUSB0")


def test_registry_unknown_attribute() -> None:
    """Any other attribute is an ordinary AttributeError naming it."""
    with make_registry() as registry, pytest.raises(AttributeError, match="'nothing'"):
        _ = registry.nothing


def test_registry_handle_unknown_method() -> None:
    """A method the kind does not have is an AttributeError naming the resource."""
    with make_registry() as registry, pytest.raises(AttributeError, match="'db'"):
        _ = registry.db.no_such_method


@pytest.mark.parametrize("which", ["kinds", "options"])
def test_registry_kinds_options_for_unconfigured(which: str) -> None:
    """``kinds``/``options`` for an attribute that was not configured is a ConfigError."""
    kwargs: dict[str, Any] = {"kinds": {"db": PROBE}}
    if which == "kinds":
        kwargs["kinds"]["redis"] = PROBE
    else:
        kwargs["options"] = {"redis": {"x": 1}}
    with pytest.raises(ConfigError) as info:
        SessionRegistry(db_url=DB_URL, **kwargs)
    assert info.value.path == f"{which}.redis"
    assert "redis" in str(info.value)


def test_registry_kinds_without_any_argument() -> None:
    """``kinds`` alone, without the attribute's argument, is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        SessionRegistry(kinds={"db": PROBE})
    assert info.value.path == "kinds.db"


def test_registry_group_id_needs_servers() -> None:
    """``kafka_group_id`` without ``kafka_bootstrap_servers`` is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        SessionRegistry(kafka_group_id="g")
    assert info.value.path == "kafka_group_id"


def test_registry_bad_option_is_config_error() -> None:
    """An option the kind rejects fails the registry with the resource's path."""
    with pytest.raises(ConfigError) as info:
        make_registry(options={"db": {"bogus": 1}})
    assert info.value.path == "resources.db.bogus"


def test_registry_close_idempotent() -> None:
    """``close`` stops every resource; calling it again is harmless."""
    registry = make_registry()
    handle = registry.db
    assert handle.echo(1).result(10) == 1
    registry.close()
    assert handle.state == "stopped"
    assert registry.system.state == "stopped"
    registry.close()
    assert kinds.controls("db").disconnects == 1
    with pytest.raises(ResourceUnavailable):
        handle.echo(2).result(10)


def test_registry_context_manager_closes() -> None:
    """Leaving ``with`` stops the system, also when the block raises."""
    with pytest.raises(RuntimeError, match="boom"), make_registry() as registry:
        assert registry.db.echo(1).result(10) == 1
        raise RuntimeError("boom")
    assert registry.system.state == "stopped"
    assert kinds.controls("db").disconnects == 1


def test_registry_async_context_manager() -> None:
    """``async with SessionRegistry(...)`` closes on exit without blocking the loop."""

    async def main() -> tuple[SessionRegistry, Any]:
        async with make_registry() as registry:
            return registry, await registry.db.echo(7)

    registry, value = asyncio.run(main())
    assert value == 7
    assert registry.system.state == "stopped"


def test_registry_config_mapping_merges() -> None:
    """``config`` adds resources (and supervisors), reachable with ``get``."""
    config: dict[str, Any] = {
        "supervisors": {"extras": {"max_restarts": 1}},
        "resources": {
            "cache": {"kind": PROBE, "label": "c"},
            "queue": {"kind": PROBE, "supervisor": "extras"},
        },
    }
    with make_registry(config=config) as registry:
        assert registry.get("cache").apply(lambda p: p.label).result(10) == "c"
        assert registry.get("queue").echo(2).result(10) == 2
        assert registry.get("db") is registry.db
        assert [c.name for c in registry.system.which_children("extras")] == ["queue"]
        with pytest.raises(KeyError, match="nothing"):
            registry.get("nothing")
    assert list(config["resources"]) == ["cache", "queue"]  # the caller's mapping is untouched


def test_registry_config_file_merges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``config`` may be a TOML path; its supervisors and substitutions carry over."""
    monkeypatch.delenv("SESSIONS_TEST_LABEL", raising=False)
    path = tmp_path / "extra.toml"
    path.write_text(
        "[supervisor]\n"
        'strategy = "one_for_all"\n'
        "[supervisors.extras]\n"
        "max_restarts = 1\n"
        "[resources.extra]\n"
        f'kind = "{PROBE}"\n'
        'supervisor = "extras"\n'
        'label = "${SESSIONS_TEST_LABEL:-dflt}"\n',
        encoding="utf-8",
    )
    with make_registry(config=path) as registry:
        assert registry.get("extra").apply(lambda p: p.label).result(10) == "dflt"
        assert registry.system.config.supervisor.strategy == "one_for_all"
        assert registry.system.config.supervisors["extras"].max_restarts == 1
        assert registry.db.echo(1).result(10) == 1


def test_registry_config_name_clash() -> None:
    """A config resource with the same name as an argument's is a ConfigError."""
    with pytest.raises(ConfigError) as info:
        make_registry(config={"resources": {"db": {"kind": PROBE}}})
    assert info.value.path == "resources.db"


def test_registry_invalid_config_is_config_error() -> None:
    """Problems in ``config`` are reported with their paths."""
    with pytest.raises(ConfigError) as info:
        make_registry(config={"supervisor": {"strategy": "one_for_some"}})
    assert info.value.path == "supervisor.strategy"


# -- SessionManager -------------------------------------------------------------------


def test_manager_with_yields_working_handle() -> None:
    """``with SessionManager(kind, **options)`` yields a handle; leaving it stops the
    resource."""
    manager = SessionManager(PROBE, label="x")
    assert manager.system is None
    with manager as handle:
        assert isinstance(handle, Handle)
        assert handle.echo(1).result(10) == 1
        assert handle.apply(lambda p: p.label).result(10) == "x"
        assert manager.system is not None
        assert manager.system.state == "running"
    assert handle.state == "stopped"
    assert manager.system.state == "stopped"
    assert kinds.controls(handle.name).disconnects == 1
    with pytest.raises(ResourceUnavailable):
        handle.echo(2).result(10)


def test_manager_async_with() -> None:
    """``async with SessionManager(...)`` yields the handle and stops on exit."""
    manager = SessionManager(PROBE, name="probe", label="y")

    async def main() -> tuple[Handle, Any, Any]:
        async with manager as handle:
            return handle, await handle.echo("a"), await handle.apply(lambda p: p.label)

    handle, value, label = asyncio.run(main())
    assert (value, label) == ("a", "y")
    assert handle.name == "probe"
    assert handle.state == "stopped"


def test_manager_name_and_supervision_keys() -> None:
    """``name`` names the resource; supervision keys and ``supervisor`` are applied."""
    manager = SessionManager(
        PROBE, name="p", call_timeout=1.5, restart="transient", supervisor={"max_restarts": 7}
    )
    with manager as handle:
        assert handle.name == "p"
        assert manager.system is not None
        config = manager.system.config
        assert config.resources["p"].call_timeout == 1.5
        assert config.resources["p"].restart == "transient"
        assert config.supervisor.max_restarts == 7


def test_manager_start_once_and_stop_idempotent() -> None:
    """``start`` returns the same handle when called again; ``stop`` may repeat."""
    manager = SessionManager(PROBE, name="p")
    manager.stop()  # before start: nothing to do
    first = manager.start()
    try:
        assert manager.start() is first
        assert kinds.controls("p").connects == 1
    finally:
        manager.stop()
    manager.stop()
    assert first.state == "stopped"


def test_manager_subclass_kind() -> None:
    """A subclass that sets ``kind`` needs no kind argument."""

    class ProbeManager(SessionManager):
        kind: ClassVar[str] = PROBE

    with ProbeManager(name="sub") as handle:
        assert handle.echo(3).result(10) == 3
        assert handle.kind == "probe"


def test_manager_without_kind() -> None:
    """A SessionManager without a kind is a ConfigError at construction."""
    with pytest.raises(ConfigError) as info:
        SessionManager()
    assert info.value.path == "kind"
    with pytest.raises(ConfigError):
        SessionManager("")


def test_manager_bad_options() -> None:
    """Invalid options or policy fail on entry with the usual paths, leaving no thread."""
    with pytest.raises(ConfigError) as info, SessionManager(PROBE, name="p", bogus=1):
        pass
    assert info.value.path == "resources.p.bogus"
    manager = SessionManager(PROBE, supervisor={"strategy": "one_for_some"})
    with pytest.raises(ConfigError) as info, manager:
        pass
    assert str(info.value) == (
        "supervisor.strategy: expected one of one_for_one, one_for_all, rest_for_one, "
        "got 'one_for_some'"
    )


def test_manager_exit_on_error_stops() -> None:
    """An exception in the ``with`` block still stops the resource and propagates."""
    manager = SessionManager(PROBE, name="p")
    with pytest.raises(KeyError), manager as handle:
        handle.echo(1).result(10)
        raise KeyError("boom")
    assert manager.system is not None
    assert manager.system.state == "stopped"


def test_manager_is_exported() -> None:
    """Both facades are part of the public API."""
    assert sessions.SessionManager is SessionManager
    assert sessions.SessionRegistry is SessionRegistry


# -- partial start: one unavailable resource does not fail the registry ---------------

FAST = {"supervisor": {"backoff": {"initial": 0.01, "max": 0.05, "jitter": 0.0}}}


def test_registry_resource_comes_up_later() -> None:
    """A resource whose first starts fail is unavailable at first, then serves once a
    retry succeeds; its failed starts do not count toward restart intensity."""
    kinds.controls("db").fail_connects = 10**6
    config: dict[str, Any] = {"supervisor": {**FAST["supervisor"], "max_restarts": 1},
                              "resources": {"other": {"kind": PROBE}}}
    with make_registry(config=config) as registry:
        assert registry.get("other").echo(1).result(10) == 1
        assert list(registry.unavailable) == ["db"]
        with pytest.raises(ResourceUnavailable, match="'db' is unavailable"):
            registry.db.echo(1).result(10)
        wait_until(lambda: kinds.controls("db").connects >= 5, what="retries")
        kinds.controls("db").fail_connects = 0  # the database is back
        wait_until(lambda: registry.db.state == "running", what="db to come up")
        assert registry.db.echo(2).result(10) == 2
        assert registry.unavailable == {}
        assert registry.status()["db"]["last_fault"].startswith("start failed")
        assert registry.system.state == "running"  # 5+ failed starts, max_restarts = 1


def test_registry_every_resource_unavailable_still_opens() -> None:
    """Even with nothing able to start, the registry opens and reports each resource."""
    kinds.controls("db").fail_connects = 10**6
    with make_registry(config=FAST) as registry:
        assert list(registry.unavailable) == ["db"]
        with pytest.raises(ResourceUnavailable):
            registry.db.echo(1).result(10)


class _Ticker:
    """A task that counts while the event loop is free."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.005)


def _open_gate_later(gate: threading.Event, delay: float) -> None:
    threading.Timer(delay, gate.set).start()


def test_registry_open_does_not_block_the_loop() -> None:
    """``await SessionRegistry.open(...)`` starts in a worker thread: another task keeps
    ticking while a connect takes its time."""
    gate = threading.Event()
    kinds.controls("db").connect_gate = gate

    async def main() -> tuple[int, int, Any]:
        ticker = _Ticker()
        task = asyncio.create_task(ticker.run())
        await asyncio.sleep(0)
        _open_gate_later(gate, 0.3)
        registry = await SessionRegistry.open(db_url=DB_URL, kinds={"db": PROBE})
        during = ticker.ticks
        async with registry:
            value = await registry.db.echo("up")
        task.cancel()
        return during, ticker.ticks, value

    during, _, value = asyncio.run(main())
    assert during >= 10  # the loop ran all along the 0.3 s start
    assert value == "up"


def test_registry_async_with_starts_in_the_background() -> None:
    """``async with SessionRegistry(...)``: constructed in the loop, it returns at once
    and starts in the background; entering waits without blocking; a call made before
    the start is done waits for the resource."""
    gate = threading.Event()
    kinds.controls("db").connect_gate = gate

    async def main() -> tuple[float, str, int, Any, Any]:
        ticker = _Ticker()
        task = asyncio.create_task(ticker.run())
        await asyncio.sleep(0)
        started = time.monotonic()
        registry = make_registry()
        took = time.monotonic() - started
        state = str(registry.db.state)
        early = registry.db.echo("early")
        _open_gate_later(gate, 0.3)
        before = ticker.ticks
        async with registry:
            during = ticker.ticks - before
            late = await registry.db.echo("late")
        task.cancel()
        return took, state, during, await early, late

    took, state, during, early, late = asyncio.run(main())
    assert took < 0.25
    assert state == "starting"
    assert during >= 10
    assert (early, late) == ("early", "late")
