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

import kafka.errors
import pytest
import redis
import requests
import responses
import responses.matchers

import sessions
from sessions.actors.kafka import AckTimeout, SendResult
from sessions.actors.opcua import NodeError
from sessions.messages import ChildFaulted, ChildStarted
from sessions.testing import (
    EventLog,
    Harness,
    fake_redis_server,
    kafka_broker,
    modbus_device,
    opcua_server,
)
from tests.support import wait_until

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


# -- kafka in memory --------------------------------------------------------------------


def kafka_config(**resources: dict[str, Any]) -> dict[str, Any]:
    kinds = {"out": "kafka_producer"}
    return {
        "supervisor": FAST,
        "resources": {
            name: {"kind": kinds.get(name.rstrip("0123456789"), "kafka_consumer"), **spec}
            for name, spec in resources.items()
        },
    }


def fetch(consumer: sessions.Handle, count: int) -> list[Any]:
    """``count`` records from a manual-mode consumer: ``fetch()`` returns what it has
    (the poll hook may have taken only some of the records sent so far), so ask again,
    each time for at most the rest, within 10 tries of at most 2 s."""
    records: list[Any] = []
    for _ in range(10):
        if len(records) == count:
            break
        records += consumer.fetch(count - len(records), timeout=2.0).result(5)
    return records


def test_kafka_produce_then_consume_with_keys_and_headers_in_memory(
    sessions_system: StartSystem,
) -> None:
    system = sessions_system(
        kafka_config(
            out={"bootstrap_servers": "memory://plant?partitions=3"},
            inp={"bootstrap_servers": "memory://plant?partitions=3", "group_id": "line3",
                 "topics": ["readings"]},
        )
    )
    out, inp = system.get("out"), system.get("inp")
    sent = [
        out.send("readings", f"{n}", key=f"sensor-{n % 2}", headers={"unit": "degC"})
        for n in range(6)
    ]
    results = [f.result(5) for f in sent]
    assert isinstance(results[0], SendResult)
    by_key = {results[n].partition for n in range(0, 6, 2)}, {
        results[n].partition for n in range(1, 6, 2)
    }
    assert all(len(partitions) == 1 for partitions in by_key)  # a key keeps its partition
    assert out.partitions_for("readings").result(5) == [0, 1, 2]
    out.flush().result(5)

    records = fetch(inp, 6)
    assert sorted(r.value for r in records) == [b"0", b"1", b"2", b"3", b"4", b"5"]
    for key in (b"sensor-0", b"sensor-1"):  # in send order within a partition
        assert [r.value for r in records if r.key == key] == sorted(
            r.value for r in records if r.key == key
        )
    assert records[0].headers == (("unit", b"degC"),)
    committed = inp.commit().result(5)
    assert sum(committed.values()) == 6
    (topic, partition), offset = next(iter(committed.items()))
    assert inp.committed(topic, partition).result(5) == offset


def test_kafka_consumer_restarted_resumes_from_its_committed_offset_in_memory(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    system = sessions_system(
        kafka_config(
            out={"bootstrap_servers": "memory://plant", "serializer": "json"},
            inp={"bootstrap_servers": "memory://plant", "group_id": "g", "topics": "t",
                 "deserializer": "json"},
        )
    )
    out, inp = system.get("out"), system.get("inp")
    for n in range(5):
        out.send("t", {"n": n}).result(5)
    first = fetch(inp, 3)
    assert [r.value for r in first] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert inp.commit().result(5) == {("t", 0): 3}
    assert [r.value for r in fetch(inp, 2)] == [{"n": 3}, {"n": 4}]

    system.faults("inp").fail_calls(1)  # read 3 and 4, but crashed before committing
    with pytest.raises(sessions.ResourceFault):
        inp.commit().result(5)
    sessions_events.wait_for(ChildStarted, name="inp", restarts=1, timeout=5)
    again = fetch(inp, 2)
    assert [r.value for r in again] == [{"n": 3}, {"n": 4}]  # at-least-once


def test_kafka_handler_mode_and_consumer_groups_in_memory(
    sessions_system: StartSystem,
) -> None:
    handled: list[tuple[str, bytes]] = []
    done = threading.Semaphore(0)

    def handler(name: str) -> Callable[[Any], None]:
        def handle(record: Any) -> None:
            handled.append((name, record.value))
            done.release()

        return handle

    system = sessions_system(
        kafka_config(
            out={"bootstrap_servers": "memory://plant?partitions=2"},
            a={"bootstrap_servers": "memory://plant?partitions=2", "group_id": "g",
               "topics": ["t"]},
            b={"bootstrap_servers": "memory://plant?partitions=2", "group_id": "g",
               "topics": ["t"]},
            audit={"bootstrap_servers": "memory://plant?partitions=2", "group_id": "audit",
                   "topics": ["t"]},
        )
    )
    for name in ("a", "b", "audit"):
        system.get(name).consume(handler(name)).result(5)
    assert len(system.get("a").assignment().result(5)) == 1  # the group shares them out
    assert len(system.get("b").assignment().result(5)) == 1
    assert len(system.get("audit").assignment().result(5)) == 2  # another group: all
    out = system.get("out")
    for key in ("a", "b", "c", "d"):  # murmur2: keys on both partitions
        out.send("t", key, key=key).result(5)
    for _ in range(8):
        assert done.acquire(timeout=5)
    assert sorted(v for n, v in handled if n == "audit") == [b"a", b"b", b"c", b"d"]
    assert sorted(v for n, v in handled if n != "audit") == [b"a", b"b", b"c", b"d"]
    assert {n for n, _ in handled} == {"a", "b", "audit"}
    broker = kafka_broker("plant")
    wait_until(lambda: sum(broker.committed("g", "t", p) or 0 for p in (0, 1)) == 4,
               what="the group's commits after the handlers")


def test_kafka_broker_down_is_an_ack_timeout_fault_in_memory(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    system = sessions_system(
        kafka_config(out={"bootstrap_servers": "memory://plant", "ack_timeout": 0.3})
    )
    out = system.get("out")
    assert out.send("t", "before").result(5).offset == 0
    broker = kafka_broker("plant")
    broker.down()
    late = out.send("t", "unacked")
    with pytest.raises(sessions.ResourceFault) as caught:
        late.result(5)
    assert isinstance(caught.value.__cause__, AckTimeout)
    sessions_events.wait_for(ChildFaulted, name="out", timeout=5)
    broker.up()  # reconnects succeed again
    sessions_events.wait_for(ChildStarted, name="out", restarts=1, timeout=5)
    assert out.send("t", "after").result(5).offset == 1  # the unacked one died with its producer
    assert [r.value for r in broker.records("t")] == [b"before", b"after"]


def test_kafka_caller_errors_stay_with_the_caller_in_memory(sessions_system: StartSystem) -> None:
    system = sessions_system(kafka_config(out={"bootstrap_servers": "memory://plant"}))
    out = system.get("out")
    with pytest.raises(kafka.errors.InvalidTopicError):
        out.send("not a topic!", "x").result(5)
    with pytest.raises(kafka.errors.MessageSizeTooLargeError):
        out.send("t", b"x" * 2_000_000).result(5)
    assert out.send("t", "fine").result(5).offset == 0
    assert out.restarts == 0


def test_kafka_urls_naming_one_broker_must_agree_on_partitions(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    system = sessions_system(
        kafka_config(out={"bootstrap_servers": "memory://plant?partitions=2"},
                     out2={"bootstrap_servers": "memory://plant?partitions=3"}),
        partial=True,
    )
    failed = sessions_events.wait_for(
        lambda e: isinstance(e, ChildFaulted) and "partitions" in e.error, timeout=5
    )
    assert "that broker has partitions=" in failed.error
    assert system.get(failed.name).restarts == 0  # never started
    started = {"out", "out2"} - {failed.name}
    assert kafka_broker("plant").default_partitions == (2 if started == {"out"} else 3)


def test_kafka_memory_url_errors_are_config_errors() -> None:
    with pytest.raises(sessions.ConfigError, match="cannot be listed with other"):
        sessions.start(kafka_config(out={"bootstrap_servers": ["memory://a", "broker:9092"]}))
    with pytest.raises(sessions.ConfigError, match="partitions must be a whole number"):
        sessions.start(kafka_config(out={"bootstrap_servers": "memory://a?partitions=0"}))


def test_kafka_consumer_faults_on_a_dead_broker_and_on_a_dropped_connection_in_memory(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    system = sessions_system(
        kafka_config(
            out={"bootstrap_servers": "memory://plant"},
            inp={"bootstrap_servers": "memory://plant", "group_id": "g", "topics": ["t"],
                 "fault_after": 0.2},
        )
    )
    out, inp = system.get("out"), system.get("inp")
    assert inp.assignment().result(5) == [("t", 0)]
    broker = kafka_broker("plant")
    broker.down()  # a polling consumer sees nothing; the link watch makes it a fault
    faulted = sessions_events.wait_for(ChildFaulted, name="inp", timeout=5)
    assert "no connection to any broker" in faulted.error
    broker.up()
    sessions_events.wait_for(ChildStarted, name="inp", restarts=1, timeout=5)

    out.send("t", "one").result(5)
    system.faults("inp").drop_connection()  # the kind's abort(): the member leaves
    sessions_events.wait_for(ChildStarted, name="inp", restarts=2, timeout=5)
    assert [r.value for r in fetch(inp, 1)] == [b"one"]
    assert inp.assignment().result(5) == [("t", 0)]


# -- http on responses ------------------------------------------------------------------

API = "http://plant-api.test/v1"
"""A host that does not exist: only ``responses`` answers for it."""


def http_config(**spec: Any) -> dict[str, Any]:
    return {"supervisor": FAST, "resources": {"api": {"kind": "http", "base_url": API, **spec}}}


def test_http_calls_go_through_the_kind_to_registered_responses(
    sessions_system: StartSystem,
) -> None:
    with responses.RequestsMock() as mock:
        mock.get(f"{API}/orders", json=[{"id": 7}])
        mock.post(f"{API}/orders", status=201, json={"id": 8},
                  match=[responses.matchers.json_params_matcher({"item": "bolt"})])
        mock.get(f"{API}/orders/9", status=404)
        system = sessions_system(http_config(headers={"X-Client": "plant-7"}, pool_size=2))
        api = system.get("api")
        listed = api.get("orders").result(5)
        assert listed.json() == [{"id": 7}] and listed.raw is None  # detached, plain data
        assert api.post("orders", json={"item": "bolt"}).result(5).status_code == 201
        assert api.get("orders/9").result(5).status_code == 404  # a status is an answer
        assert [c.request.headers["X-Client"] for c in mock.calls] == ["plant-7"] * 3
    assert api.restarts == 0


def test_http_fault_classification_on_responses(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"{API}/down", body=requests.ConnectionError("refused (mocked)"))
        mock.get(f"{API}/up", json={"ok": True})
        system = sessions_system(http_config(breaker={"failures": 2, "reset_timeout": 60}))
        api = system.get("api")
        # A connection error goes to the caller, never a restart; the breaker counts it.
        for _ in range(2):
            with pytest.raises(requests.ConnectionError, match="refused"):
                api.get("down").result(5)
        with pytest.raises(sessions.ResourceUnavailable, match="circuit"):
            api.get("up").result(5)
        assert api.restarts == 0
        # A fault (here injected by the runtime) restarts the resource with a new Session.
        system2 = sessions_system(http_config())
        api2 = system2.get("api")
        system2.faults("api").fail_calls(1)
        with pytest.raises(sessions.ResourceFault):
            api2.get("up").result(5)
        sessions_events.wait_for(ChildStarted, name="api", restarts=1, timeout=5)
        assert api2.get("up").result(5).json() == {"ok": True}


# -- modbus on pymodbus's own server ------------------------------------------------------


def modbus_config(**spec: Any) -> dict[str, Any]:
    return {
        "supervisor": FAST,
        "resources": {"plc": {"kind": "modbus", "host": "sim", "port": 502, "timeout": 0.5,
                              **spec}},
    }


def test_modbus_calls_on_the_simulated_device(sessions_system: StartSystem) -> None:
    system = sessions_system(modbus_config())
    plc = system.get("plc")
    device = modbus_device(502)
    device.set("input_registers", 10, [215, 216])  # the device's sensors
    device.set("discrete_inputs", 3, [True])
    assert plc.read_input_registers(10, 2).result(5) == [215, 216]
    assert plc.read_discrete_inputs(2, 3).result(5) == [False, True, False]
    plc.write_register(100, 1500).result(5)
    plc.write_coils(0, [True, False, True]).result(5)
    plc.write_value(200, -2.5, "float32").result(5)
    assert device.get("holding_registers", 100) == [1500]
    assert device.get("coils", 0, 3) == [True, False, True]
    assert plc.read_value(200, "float32").result(5) == -2.5
    assert plc.read_holding_registers(0, 1, device_id=7).result(5) == [0]  # any device id
    # A Modbus exception is the caller's: the link is fine.
    with pytest.raises(sessions.DeviceError, match="ILLEGAL DATA ADDRESS"):
        plc.read_holding_registers(9999, 2).result(5)
    assert plc.restarts == 0


def test_modbus_device_switched_off_is_a_fault_then_failed_starts(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    system = sessions_system(modbus_config())
    plc = system.get("plc")
    plc.write_register(1, 42).result(5)
    device = modbus_device(502)
    device.stop()
    with pytest.raises(sessions.ResourceFault):
        plc.read_holding_registers(1).result(5)
    sessions_events.wait_for(ChildFaulted, name="plc", timeout=5)
    device.start()
    sessions_events.wait_for(ChildStarted, name="plc", restarts=1, timeout=5)
    assert plc.read_holding_registers(1).result(5) == [42]  # the device kept its data

    system.faults("plc").fail_calls(1)  # and the runtime's injection, as for every kind
    with pytest.raises(sessions.ResourceFault):
        plc.read_holding_registers(1).result(5)
    sessions_events.wait_for(ChildStarted, name="plc", restarts=2, timeout=5)


def test_kafka_handler_errors_retry_then_dead_letter_in_memory(
    sessions_system: StartSystem,
) -> None:
    attempts: list[bytes] = []
    settled = threading.Semaphore(0)

    def handle(record: Any) -> None:
        attempts.append(record.value)
        if record.value == b"bad":
            raise ValueError("cannot parse")
        settled.release()

    system = sessions_system(
        kafka_config(
            out={"bootstrap_servers": "memory://plant"},
            inp={"bootstrap_servers": "memory://plant", "group_id": "g", "topics": ["t"],
                 "on_handler_error": "retry", "max_retries": 2, "retry_backoff": 0.01,
                 "dead_letter_topic": "t.dlq"},
        )
    )
    inp, out = system.get("inp"), system.get("out")
    inp.consume(handle).result(5)
    for value in ("good", "bad", "after"):
        out.send("t", value).result(5)
    assert settled.acquire(timeout=5) and settled.acquire(timeout=5)
    assert attempts == [b"good", b"bad", b"bad", b"bad", b"after"]  # 1 try + 2 retries
    (dead,) = kafka_broker("plant").records("t.dlq")
    assert dead.value == b"bad"
    assert ("dlq.original.offset", b"1") in dead.headers
    stats = inp.stats().result(5)
    assert (stats["retries"], stats["dead_lettered"], stats["handled"]) == (2, 1, 2)
    wait_until(lambda: kafka_broker("plant").committed("g", "t", 0) == 3,
               what="the commit after the handler")


# -- opcua on asyncua's own server -------------------------------------------------------


def test_opcua_calls_and_subscriptions_on_the_simulated_server(
    sessions_system: StartSystem, sessions_events: EventLog
) -> None:
    server = opcua_server("plant")  # before the system: the nodes exist when it connects
    temperature = server.add_variable("Plant.Temperature", 20.5, "Double")
    count = server.add_variable("Plant.Count", 7, "Int32")
    serial = server.add_variable("Plant.Serial", "SN-0001", writable=False)
    system = sessions_system({"supervisor": FAST, "resources": {
        "line": {"kind": "opcua", "url": "opc.tcp://sim/plant", "keepalive": 0.5}}})
    line = system.get("line")
    assert line.read(temperature).result(5) == 20.5
    assert line.read_many([count, serial]).result(5) == [7, "SN-0001"]
    line.write(count, 9).result(5)  # the node's Int32 type, read once per connection
    assert server.get(count) == 9
    assert line.browse_path(["0:Objects", "2:Plant.Count"]).result(5) == count
    # The server's refusals are the caller's: the session goes on.
    with pytest.raises(NodeError, match=r"BadUserAccessDenied|BadNotWritable"):
        line.write(serial, "forged").result(5)
    with pytest.raises(NodeError, match="BadNodeIdUnknown"):
        line.read("ns=2;s=Plant.Nothing").result(5)
    assert line.restarts == 0

    changes: list[Any] = []
    arrived = threading.Semaphore(0)

    def on_change(change: Any) -> None:
        changes.append(change.value)
        arrived.release()

    line.subscribe(temperature, on_change, period=0.05).result(5)
    assert arrived.acquire(timeout=5)  # the current value first
    server.set(temperature, 21.0)
    assert arrived.acquire(timeout=5)
    system.faults("line").fail_calls(1)
    with pytest.raises(sessions.ResourceFault):
        line.read(temperature).result(5)
    sessions_events.wait_for(ChildStarted, name="line", restarts=1, timeout=10)
    assert arrived.acquire(timeout=5)  # replayed: the current value again
    server.set(temperature, 22.5)
    assert arrived.acquire(timeout=5)
    assert changes == [20.5, 21.0, 21.0, 22.5]


# -- the stall watchdog aborts a call on every substitute ---------------------------------


@pytest.mark.parametrize(
    ("spec", "call"),
    [
        ({"kind": "redis", "url": "fakeredis://"}, ("get", "k")),
        ({"kind": "kafka_producer", "bootstrap_servers": "memory://"}, ("partitions_for", "t")),
        ({"kind": "kafka_consumer", "bootstrap_servers": "memory://", "group_id": "g",
          "topics": ["t"]}, ("assignment",)),
        ({"kind": "modbus", "host": "sim", "port": 1502}, ("read_coils", 0)),
        ({"kind": "opcua", "url": "opc.tcp://sim/stall"}, ("read", "i=2259")),
    ],
    ids=["redis", "kafka_producer", "kafka_consumer", "modbus", "opcua"],
)
def test_a_stalled_call_is_aborted_and_the_substitute_serves_again(
    sessions_system: StartSystem,
    sessions_events: EventLog,
    spec: dict[str, Any],
    call: tuple[Any, ...],
) -> None:
    system = sessions_system(
        {"supervisor": FAST, "resources": {"res": {**spec, "stall_timeout": 0.5}}}
    )
    res = system.get("res")
    method, *args = call
    getattr(res, method)(*args).result(10)
    stall = system.faults("res").stall_next_call()
    with pytest.raises(sessions.ResourceFault, match="stall"):
        getattr(res, method)(*args).result(10)
    sessions_events.wait_for(ChildStarted, name="res", restarts=1, timeout=10)
    assert stall.aborted  # the caller is failed first, then the connection torn down
    getattr(res, method)(*args).result(10)
