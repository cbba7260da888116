"""Substitutes selected by config alone: the application's calls, through handles, on an
in-process peer instead of a server, with the actor semantics and fault classification
of production (docs/testing.md, "Substitutes").

Every test uses the plugin's fixtures (``sessions_system``, ``sessions_events``), as an
application's tests would: the harness also checks that no library thread or future
leaked, and forgets the named peers after each test.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import redis

import sessions
from sessions.messages import ChildFaulted, ChildStarted
from sessions.testing import EventLog, Harness, fake_redis_server

StartSystem = Callable[..., sessions.System]

FAST = {"max_restarts": 100, "period": 60.0, "backoff": {"initial": 0.01, "max": 0.05}}


# -- redis on fakeredis -----------------------------------------------------------------


def redis_config(**resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "supervisor": FAST,
        "resources": {name: {"kind": "redis", **spec} for name, spec in resources.items()},
    }


def test_redis_commands_batches_pipelines_and_errors_on_fakeredis(
    sessions_system: StartSystem,
) -> None:
    system = sessions_system(redis_config(cache={"url": "fakeredis://"}))
    cache = system.get("cache")
    assert cache.set("k", "v", ex=100).result(5) is True
    assert cache.get("k").result(5) == b"v"
    # Fired together: the actor sends the queued commands as one automatic pipeline.
    gate = threading.Event()
    held = cache.transaction(lambda _client: gate.wait(5))
    counts = [cache.incr("n") for _ in range(20)]
    gate.set()
    held.result(5)
    assert [f.result(5) for f in counts] == list(range(1, 21))
    assert cache.batch_stats().result(5)["largest"] == 20
    assert cache.pipeline(
        lambda p: (p.set("a", 1), p.incr("a")), transaction=True
    ).result(5) == [True, 2]
    # An error reply goes to its caller; the connection goes on, nothing restarts.
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        cache.lpush("k", "x").result(5)
    assert cache.get("k").result(5) == b"v"
    assert cache.restarts == 0


def test_redis_resources_naming_one_fake_server_share_it(sessions_system: StartSystem) -> None:
    system = sessions_system(
        redis_config(
            writer={"url": "fakeredis://plant"},
            reader={"url": "fakeredis://plant", "decode_responses": True, "pool_size": 2},
            db2={"url": "fakeredis://plant/2"},
            elsewhere={"url": "fakeredis://other"},
        )
    )
    system.get("writer").set("k", "v").result(5)
    assert system.get("reader").get("k").result(5) == "v"
    assert system.get("db2").get("k").result(5) is None  # another database of that server
    assert system.get("elsewhere").get("k").result(5) is None  # another server
    assert fake_redis_server("plant").dbs[0].get(b"k") is not None


def test_redis_pubsub_on_fakeredis_is_replayed_after_a_restart(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    system = sessions_system(
        redis_config(sub={"url": "fakeredis://bus"}, pub={"url": "fakeredis://bus"})
    )
    sub, pub = system.get("sub"), system.get("pub")
    received: list[bytes] = []
    arrived = threading.Semaphore(0)

    def on_message(message: dict[str, Any]) -> None:
        received.append(message["data"])
        arrived.release()

    sub.subscribe("alarms", on_message).result(5)
    assert pub.publish("alarms", "one").result(5) == 1
    assert arrived.acquire(timeout=5)

    system.faults("sub").drop_connection()
    sessions_events.wait_for(ChildStarted, name="sub", restarts=1, timeout=5)
    # The replay subscribes again before the restarted actor serves a call.
    assert sub.ping().result(5) is True
    assert pub.publish("alarms", "two").result(5) == 1
    assert arrived.acquire(timeout=5)
    assert received == [b"one", b"two"]


def test_redis_injected_fault_restarts_and_the_fake_keeps_its_data(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    system = sessions_system(redis_config(cache={"url": "fakeredis://"}))
    cache = system.get("cache")
    cache.set("k", "kept").result(5)
    system.faults("cache").fail_calls(1)
    with pytest.raises(sessions.ResourceFault) as caught:
        cache.get("k").result(5)
    assert isinstance(caught.value.__cause__, sessions.InjectedFault)
    sessions_events.wait_for(ChildStarted, name="cache", restarts=1, timeout=5)
    assert cache.get("k").result(5) == b"kept"  # a real server keeps its data too


def test_redis_fake_server_going_down_is_a_fault_of_the_driver(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    system = sessions_system(redis_config(cache={"url": "fakeredis://"}))
    cache = system.get("cache")
    assert cache.ping().result(5) is True
    server = fake_redis_server()
    server.connected = False  # fakeredis: refuse connections, break the open ones
    with pytest.raises(sessions.ResourceFault) as caught:
        cache.get("k").result(5)
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    faulted = sessions_events.wait_for(ChildFaulted, name="cache", timeout=5)
    assert "ConnectionError" in faulted.error
    server.connected = True
    sessions_events.wait_for(ChildStarted, name="cache", restarts=1, timeout=5)
    assert cache.ping().result(5) is True


def test_redis_fake_servers_are_forgotten_after_each_test() -> None:
    config = redis_config(cache={"url": "fakeredis://shared"})
    first = Harness()
    first.start(config).get("cache").set("k", "v").result(5)
    assert first.finish() == []
    second = Harness()
    assert second.start(config).get("cache").get("k").result(5) is None
    assert second.finish() == []


def test_redis_fakeredis_url_errors_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(sessions.ConfigError, match="the database after the name"):
        sessions.start(redis_config(cache={"url": "fakeredis://plant/zero"}))
    with pytest.raises(sessions.ConfigError, match=r"fakeredis://\[NAME\]\[/DB\]"):
        sessions.start(redis_config(cache={"url": "fakeredis://plant?decode_responses=1"}))

    import importlib.util  # noqa: PLC0415

    real = importlib.util.find_spec

    def without_fakeredis(name: str, *args: Any) -> Any:
        return None if name == "fakeredis" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_fakeredis)
    with pytest.raises(sessions.ConfigError, match=r"pip install 'applib-sessions\[testing\]'"):
        sessions.start(redis_config(cache={"url": "fakeredis://"}))
