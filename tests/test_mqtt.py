"""The ``mqtt`` kind against a real Mosquitto broker (``tests.servers.MosquittoServer``)
on a free port, started by the test. Faults are real: the broker is killed (SIGKILL) or
stopped and started again on the same port; a stalled call makes the runtime abort the
connection. Waiting is on futures, events and ``wait_until``; no fixed sleeps.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI") == "true":
        raise  # CI installs the mqtt extra: a missing driver is a failure, not a skip
    pytest.skip("MQTT TESTS NOT RUN: paho-mqtt missing; pip install 'applib-sessions[mqtt]'",
                allow_module_level=True)

import sessions
from sessions import SessionRegistry
from sessions.actors.mqtt import MQTTActor, MQTTMessage
from sessions.messages import ChildFaulted, ChildRestarting
from sessions.mqtt import MQTT_KIND, MQTTSessionManager
from tests.servers import MosquittoServer, _reserve_port
from tests.support import Recorder, wait_until

pytestmark = pytest.mark.timeout(120)

BACKOFF = {"initial": 0.05, "max": 0.2, "jitter": 0.0}


def _config(broker: MosquittoServer, **resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "supervisor": {"backoff": BACKOFF, "max_restarts": 1000, "period": 60.0},
        "resources": {
            name: {"kind": MQTT_KIND, "host": "127.0.0.1", "port": broker.port,
                   "call_timeout": 10.0, **spec}
            for name, spec in resources.items()
        },
    }


class Inbox:
    """A subscription callback that keeps what it receives and the thread it ran on."""

    def __init__(self) -> None:
        self.messages: list[MQTTMessage] = []
        self.threads: set[str] = set()
        self._cond = threading.Condition()

    def __call__(self, message: MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self.threads.add(threading.current_thread().name)
            self._cond.notify_all()

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[MQTTMessage]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise AssertionError(f"timed out waiting for {count} messages: {self.messages}")
            return list(self.messages)


@pytest.fixture
def broker(make_mosquitto_server: Callable[..., MosquittoServer]) -> MosquittoServer:
    return make_mosquitto_server()


@pytest.fixture
def make_broker(
    make_mosquitto_server: Callable[..., MosquittoServer],
) -> Callable[..., MosquittoServer]:
    return make_mosquitto_server


@pytest.fixture
def raw_client(broker: MosquittoServer) -> Iterator[Callable[[str], paho.Client]]:
    """Plain paho clients (their own loop_start thread), disconnected at the end."""
    clients: list[paho.Client] = []

    def make(client_id: str) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        assert connected.wait(10), "raw client did not connect"
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.disconnect()
        client.loop_stop()


def _running(handle: Any, restarts: int = 0) -> Callable[[], bool]:
    return lambda: handle.state == "running" and handle.restarts >= restarts


# -- publish, subscribe --------------------------------------------------------------


def test_publish_qos_0_1_2_resolves_and_a_subscriber_receives_each(
    broker: MosquittoServer,
) -> None:
    inbox = Inbox()
    with sessions.start(_config(broker, pub={}, sub={})) as system:
        pub, sub = system.get("pub"), system.get("sub")
        assert sub.subscribe("plant/+/temp", inbox, qos=2).result() is None
        futures = [pub.publish("plant/line1/temp", f"t{qos}", qos=qos) for qos in (0, 1, 2)]
        assert [f.result() for f in futures] == [None, None, None]
        received = inbox.wait_for(3)
        assert sorted((m.payload, m.qos) for m in received) == [
            (b"t0", 0), (b"t1", 1), (b"t2", 2)]
        assert all(m.topic == "plant/line1/temp" and not m.retain for m in received)
        stats = sub.subscriptions().result()
        assert stats["plant/+/temp"]["delivered"] == 3
        assert stats["plant/+/temp"]["qos"] == 2
        # unsubscribe: nothing more is delivered to it
        sub.unsubscribe("plant/+/temp").result()
        assert sub.subscriptions().result() == {}
        with pytest.raises(KeyError):
            sub.unsubscribe("plant/+/temp").result()
        assert pub.restarts == 0 and sub.restarts == 0


def test_publish_reaches_a_plain_paho_subscriber(
    broker: MosquittoServer, raw_client: Callable[[str], paho.Client]
) -> None:
    got: concurrent.futures.Future[paho.MQTTMessage] = concurrent.futures.Future()
    client = raw_client("raw-sub")
    client.on_message = lambda c, u, msg: got.done() or got.set_result(msg)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.subscribe("raw/#", qos=1)
    assert subscribed.wait(10)
    with sessions.start(_config(broker, pub={})) as system:
        system.get("pub").publish("raw/x", b"\x00\x01bin", qos=1).result()
        msg = got.result(10)
        assert (msg.topic, msg.payload, msg.qos) == ("raw/x", b"\x00\x01bin", 1)


def test_a_retained_message_is_delivered_to_a_later_subscriber(broker: MosquittoServer) -> None:
    inbox = Inbox()
    with sessions.start(_config(broker, pub={}, late={})) as system:
        system.get("pub").publish("plant/status", "online", qos=1, retain=True).result()
        system.get("late").subscribe("plant/status", inbox, qos=1).result()
        (message,) = inbox.wait_for(1)
        assert (message.payload, message.retain) == (b"online", True)


def test_callbacks_run_on_a_library_thread_and_a_slow_one_blocks_nothing(
    broker: MosquittoServer,
) -> None:
    release = threading.Event()
    started = threading.Event()
    seen: list[bytes] = []
    threads: set[str] = set()

    def slow(message: MQTTMessage) -> None:
        threads.add(threading.current_thread().name)
        seen.append(message.payload)
        started.set()
        release.wait(30)

    fast = Inbox()
    with sessions.start(_config(broker, pub={}, sub={"queue_size": 2})) as system:
        pub, sub = system.get("pub"), system.get("sub")
        sub.subscribe("slow/#", slow).result()
        sub.subscribe("fast/#", fast).result()
        try:
            pub.publish("slow/0", "0", qos=1).result()
            assert started.wait(10)
            for i in range(1, 10):
                pub.publish("slow/x", str(i), qos=1).result()
            # one in the callback, two queued, the seven between them dropped (oldest first)
            wait_until(lambda: sub.subscriptions().result()["slow/#"]["dropped"] == 7,
                       what="7 drops")
            # the actor and the other subscription are not held up by the slow callback
            pub.publish("fast/1", "f", qos=1).result()
            assert fast.wait_for(1)[0].payload == b"f"
            stats = sub.subscriptions().result()["slow/#"]
            assert stats["queued"] == 2 and stats["delivered"] == 0
        finally:
            release.set()
        wait_until(lambda: sub.subscriptions().result()["slow/#"]["delivered"] == 3,
                   what="the queued messages delivered")
        assert seen == [b"0", b"8", b"9"]
    me = threading.current_thread().name
    assert len(threads) == 1 and me not in threads
    assert next(iter(threads)).startswith("sessions-sub-mqtt-sub-")
    assert len(fast.threads) == 1 and fast.threads != threads


# -- faults and restarts -------------------------------------------------------------


def test_broker_killed_and_restarted_the_subscriptions_are_replayed(
    broker: MosquittoServer,
) -> None:
    inbox = Inbox()
    with sessions.start(_config(broker, pub={}, sub={})) as system:
        pub, sub = system.get("pub"), system.get("sub")
        sub.subscribe("alarm/#", inbox, qos=1).result()
        pub.publish("alarm/door", "before", qos=1).result()
        inbox.wait_for(1)
        faults = Recorder()
        system.subscribe(faults)
        broker.kill()  # SIGKILL: no persistence, the broker forgets every subscription
        for name in ("pub", "sub"):  # the loop threads saw the connection drop
            faults.wait_for(lambda e, n=name: isinstance(e, ChildFaulted) and e.name == n)
        broker.start()
        wait_until(_running(sub, 1), timeout=20, what="sub running again")
        wait_until(_running(pub, 1), timeout=20, what="pub running again")
        pub.publish("alarm/door", "after", qos=1).result()
        assert inbox.wait_for(2)[-1].payload == b"after"
        assert inbox.payloads() == [b"before", b"after"]
        assert len(inbox.threads) == 1  # the same delivery thread name across restarts


def test_no_acknowledged_qos1_publish_is_lost_across_a_broker_restart(
    make_broker: Callable[..., MosquittoServer],
) -> None:
    """A persistent broker and persistent sessions (clean_session false, QoS 1): every
    publish whose future resolved OK reaches the subscriber, also those made while it was
    disconnected. Mosquitto saves its database on a clean stop and once a second, so the
    restart here is a stop (SIGTERM), not a SIGKILL, which loses up to a second of
    acknowledged messages by the broker's own design."""
    broker = make_broker(persistence=True)
    inbox = Inbox()
    total = 300
    config = _config(
        broker,
        pub={"client_id": "durable-pub", "clean_session": False},
        sub={"client_id": "durable-sub", "clean_session": False, "queue_size": 10_000},
    )
    with sessions.start(config) as system:
        pub, sub = system.get("pub"), system.get("sub")
        sub.subscribe("durable/#", inbox, qos=1).result()
        acked: list[int] = []
        failed: list[int] = []
        halfway = threading.Event()

        def publish_all() -> None:
            for i in range(total):
                try:
                    pub.publish("durable/n", str(i), qos=1).result()
                except (sessions.ResourceFault, sessions.CallTimeout,
                        sessions.ResourceUnavailable):
                    failed.append(i)
                else:
                    acked.append(i)
                if i == total // 3:
                    halfway.set()

        publisher = threading.Thread(target=publish_all, name="test-publisher")
        publisher.start()
        assert halfway.wait(30)
        broker.restart()  # mid-run
        publisher.join(90)
        assert not publisher.is_alive()
        assert pub.restarts >= 1 and sub.restarts >= 1
        assert len(acked) > total // 3
        assert acked[-1] == total - 1  # publishing went on after the restart
        wanted = {str(i).encode() for i in acked}
        wait_until(lambda: wanted <= set(inbox.payloads()), timeout=30,
                   what="every acknowledged publish received")
        assert sub.subscriptions().result()["durable/#"]["dropped"] == 0


def test_the_last_will_is_published_when_the_connection_is_cut(
    broker: MosquittoServer,
) -> None:
    """A call stalls past stall_timeout: the runtime aborts the connection (the socket is
    shut down, no DISCONNECT), so the broker publishes the will; a clean stop does not."""
    inbox = Inbox()
    release = threading.Event()
    will = {"topic": "plant/status/dev", "payload": "offline", "qos": 1, "retain": False}
    config = _config(broker, watcher={},
                     dev={"will": will, "stall_timeout": 0.5, "call_timeout": 5.0})
    with sessions.start(config) as system:
        watcher, dev = system.get("watcher"), system.get("dev")
        watcher.subscribe("plant/status/#", inbox, qos=1).result()
        stuck = dev.transaction(lambda conn: release.wait(30))
        try:
            (message,) = inbox.wait_for(1, timeout=20)
            assert (message.topic, message.payload) == ("plant/status/dev", b"offline")
            with pytest.raises(sessions.ResourceFault):
                stuck.result()
        finally:
            release.set()
        wait_until(_running(dev, 1), timeout=20, what="dev restarted")
        dev.publish("plant/status/dev", "online", qos=1).result()
        inbox.wait_for(2)
    # the clean stop of dev (a DISCONNECT) published no will: only "online" came after
    assert inbox.payloads() == [b"offline", b"online"]


def test_a_refused_connection_is_a_failed_start_retried(
    make_broker: Callable[..., MosquittoServer],
) -> None:
    broker = make_broker()
    broker.stop()
    with sessions.start(_config(broker, m={"timeout": 1.0}), wait=False) as system:
        m = system.get("m")
        call = m.publish("a/b", "x", qos=1)  # waits in the mailbox for a connection
        broker.start()
        assert call.result(20) is None
        assert m.state == "running"


# -- caller errors and config --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        (("a/#", "x"), {}, ValueError),  # wildcard in a publish topic
        (("a/+/b", "x"), {}, ValueError),
        (("", "x"), {}, ValueError),
        (("a\0b", "x"), {}, ValueError),
        (("a" * 65536, "x"), {}, ValueError),
        ((b"a/b", "x"), {}, TypeError),
        (("a/b", "x"), {"qos": 3}, ValueError),
        (("a/b", "x"), {"qos": -1}, ValueError),
        (("a/b", "x"), {"qos": "1"}, TypeError),
        (("a/b", "x"), {"qos": True}, TypeError),
        (("a/b", "x" * 17), {}, ValueError),  # max_payload = 16
        (("a/b", object()), {}, TypeError),
        (("a/b", "x"), {"retain": "yes"}, TypeError),
    ],
)
def test_bad_publish_arguments_are_caller_errors(
    broker: MosquittoServer, args: tuple[Any, ...], kwargs: dict[str, Any],
    error: type[Exception],
) -> None:
    inbox = Inbox()
    with sessions.start(_config(broker, m={"max_payload": 16})) as system:
        m = system.get("m")
        m.subscribe("#", inbox).result()
        with pytest.raises(error):
            m.publish(*args, **kwargs).result()
        m.publish("a/ok", "fine", qos=1).result()
        assert inbox.wait_for(1)[0].payload == b"fine"  # nothing was sent before it
        assert (m.state, m.restarts) == ("running", 0)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("a/#/b", print), ValueError),
        (("a/b#", print), ValueError),
        (("a/b+", print), ValueError),
        (("", print), ValueError),
        (("a/b", "not callable"), TypeError),
        (("a/b", print, 3), ValueError),
    ],
)
def test_bad_subscribe_arguments_are_caller_errors(
    broker: MosquittoServer, args: tuple[Any, ...], error: type[Exception]
) -> None:
    with sessions.start(_config(broker, m={})) as system:
        m = system.get("m")
        with pytest.raises(error):
            m.subscribe(*args).result()
        assert m.subscriptions().result() == {}
        assert (m.state, m.restarts) == ("running", 0)


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ({"prot": 1883}, "resources.m.prot"),
        ({"port": 0}, "resources.m.port"),
        ({"keepalive": 0}, "resources.m.keepalive"),
        ({"queue_size": 0}, "resources.m.queue_size"),
        ({"will": {"topic": "a/#"}}, "resources.m.will.topic"),
        ({"will": {"topic": "a", "qos": 3}}, "resources.m.will.qos"),
        ({"will": {"topic": "a", "colour": "red"}}, "resources.m.will.colour"),
        ({"ca_certs": "/x.pem"}, "ca_certs needs tls"),
        ({"password": "secret"}, "password needs username"),
    ],
)
def test_bad_config_keys_are_a_config_error_naming_the_key(
    spec: dict[str, Any], where: str
) -> None:
    config = {"resources": {"m": {"kind": MQTT_KIND, **spec}}}
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start(config)
    assert where in str(info.value)
    assert "secret" not in str(info.value)


def test_client_id_defaults_to_one_derived_from_the_resource_name() -> None:
    actor = MQTTActor()
    actor.name = "telemetry"
    assert actor._client_id() == "sessions-telemetry"
    assert MQTTActor.max_pool_size({})[0] == 1


def test_the_seed_manager(broker: MosquittoServer) -> None:
    inbox = Inbox()
    with MQTTSessionManager(host="127.0.0.1", port=broker.port) as mqtt:
        mqtt.subscribe("seed/#", inbox, qos=1).result()
        mqtt.publish("seed/x", "1", qos=1).result()
        assert inbox.wait_for(1)[0].payload == b"1"


def test_session_registry_mqtt_host(broker: MosquittoServer) -> None:
    """``SessionRegistry(mqtt_host=...)``: the broker is ``registry.mqtt``."""
    inbox = Inbox()
    with SessionRegistry(mqtt_host="127.0.0.1",
                         options={"mqtt": {"port": broker.port}}) as registry:
        assert registry.mqtt.kind == MQTT_KIND
        registry.mqtt.subscribe("registry/#", inbox, qos=1).result()
        registry.mqtt.publish("registry/x", "2", qos=1).result()
        assert inbox.wait_for(1)[0].payload == b"2"


def test_check_connect(broker: MosquittoServer, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    from sessions._tools.cli import main  # noqa: PLC0415

    dead = _reserve_port()
    path = tmp_path / "mqtt.toml"
    path.write_text(
        f'[resources.up]\nkind = "mqtt"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        f'[resources.down]\nkind = "mqtt"\nhost = "127.0.0.1"\nport = {dead}\n'
        f'timeout = 0.5\n',
        encoding="utf-8",
    )
    assert main(["check", str(path), "--connect"]) == 1
    out = capsys.readouterr().out
    assert f"mqtt 127.0.0.1:{broker.port}: connected as 'sessions-up'" in out, out
    assert "1 of 2 resources failed to connect: down" in out, out


def test_a_publish_whose_ack_never_comes_times_out_and_the_resource_keeps_running(
    broker: MosquittoServer,
) -> None:
    """The broker is frozen (SIGSTOP): the PUBLISH is written, no PUBACK comes. The
    runtime fails the deferred reply at stall_timeout (CallTimeout, started) and the
    actor, free meanwhile, keeps serving; a late PUBACK is dropped."""
    config = _config(broker, m={"stall_timeout": 1.0, "call_timeout": 5.0})
    with sessions.start(config) as system:
        m = system.get("m")
        broker.freeze()
        try:
            call = m.publish("slow/ack", "x", qos=1)
            with pytest.raises(sessions.CallTimeout) as info:
                call.result()
            assert info.value.started
            assert m.subscriptions().result() == {}  # the actor was not held up
        finally:
            broker.thaw()
        m.publish("slow/ack", "y", qos=1).result()
        assert (m.state, m.restarts) == ("running", 0)


def test_abort_is_non_blocking_idempotent_and_ends_the_loop(broker: MosquittoServer) -> None:
    from tests.support import abort_from_another_thread  # noqa: PLC0415

    stuck: concurrent.futures.Future[Any] = concurrent.futures.Future()
    connection: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def hold(conn: Any) -> None:
        connection.set_result(conn)
        stuck.result(30)

    with sessions.start(_config(broker, m={"stall_timeout": 30.0})) as system:
        m = system.get("m")
        call = m.transaction(hold)
        conn = connection.result(10)
        actor = MQTTActor(host="127.0.0.1", port=broker.port)
        actor.name = "m"
        abort_from_another_thread(actor, conn)
        abort_from_another_thread(actor, conn)  # idempotent
        abort_from_another_thread(actor, None)  # no connection: nothing to do
        assert conn.closed.is_set()
        assert conn.thread is not None
        conn.thread.join(10)
        assert not conn.thread.is_alive()  # the loop thread ended quietly
        stuck.set_result(None)
        call.result()


def test_subscribing_a_filter_again_replaces_its_callback(broker: MosquittoServer) -> None:
    inbox, other = Inbox(), Inbox()
    with sessions.start(_config(broker, m={})) as system:
        m = system.get("m")
        m.subscribe("open/#", inbox, qos=1).result()
        m.subscribe("open/#", other, qos=1).result()  # the same filter: replaced
        m.publish("open/x", "1", qos=1).result()
        assert other.wait_for(1)[0].payload == b"1"
        assert inbox.payloads() == []
        assert list(m.subscriptions().result()) == ["open/#"]
        assert (m.state, m.restarts) == ("running", 0)


# -- authentication and TLS ----------------------------------------------------------

USER = "plant"
PASSWORD = "right-Pa55-7f3c9e"
WRONG_PASSWORD = "wrong-Pa55-91ab04"
PASSWORD_ENV = "SESSIONS_TEST_MQTT_PASSWORD"


def _texts(error: BaseException | None) -> list[str]:
    """``str`` and ``repr`` of ``error`` and of every exception it was raised from."""
    texts: list[str] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    return texts


def _start_failures(events: Recorder, name: str, count: int) -> list[ChildFaulted]:
    found = events.wait_for(
        lambda e: isinstance(e, ChildFaulted) and e.name == name and e.during_start,
        count=count, timeout=30)
    return [e for e in found if isinstance(e, ChildFaulted)]


def test_a_username_and_a_password_from_the_environment_connect(
    make_broker: Callable[..., MosquittoServer], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A broker that refuses anonymous clients: the password is given as "${ENV}",
    read from the environment when the config is loaded."""
    broker = make_broker(users={USER: PASSWORD})
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    inbox = Inbox()
    config = _config(broker, m={"username": USER, "password": f"${{{PASSWORD_ENV}}}"})
    with sessions.start(config) as system:
        m = system.get("m")
        m.subscribe("auth/#", inbox, qos=1).result()
        m.publish("auth/x", "in", qos=1).result()
        assert inbox.wait_for(1)[0].payload == b"in"
        assert (m.state, m.restarts) == ("running", 0)
        assert PASSWORD not in json.dumps(system.status())


@pytest.mark.parametrize("credentials", [
    {"username": USER, "password": f"${{{PASSWORD_ENV}}}"},  # the wrong one, from the env
    {},  # anonymous
], ids=["wrong-password", "anonymous"])
def test_a_refused_login_is_a_failed_start_retried_and_no_password_is_shown(
    make_broker: Callable[..., MosquittoServer], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, credentials: dict[str, str],
) -> None:
    """The broker answers CONNACK 5 (not authorized): a failed start, retried with
    backoff; the reason names the refusal, and neither password appears in the events,
    the logs, the status or the caller's error."""
    broker = make_broker(users={USER: PASSWORD})
    monkeypatch.setenv(PASSWORD_ENV, WRONG_PASSWORD)
    caplog.set_level(logging.DEBUG)
    events = Recorder()
    config = _config(broker, m={**credentials, "call_timeout": 2.0})
    with sessions.start(config, wait=False) as system:
        system.subscribe(events)
        m = system.get("m")
        with pytest.raises(sessions.CallTimeout) as info:
            m.publish("auth/x", "never", qos=1).result()
        assert not info.value.started  # it waited for a start that never came
        failures = _start_failures(events, "m", count=2)
        assert all(f"mqtt 127.0.0.1:{broker.port} refused the connection (CONNACK: "
                   "Not authorized)" in e.error for e in failures), failures[0]
        retries = [e for e in events.wait_for(
            lambda e: isinstance(e, ChildRestarting) and e.name == "m", count=3)
            if isinstance(e, ChildRestarting)]
        attempts, delays = [e.attempt for e in retries], [e.delay for e in retries]
        assert attempts == list(range(attempts[0], attempts[0] + len(attempts)))
        assert all(d > 0 for d in delays) and delays == sorted(delays)  # backoff
        assert m.state != "running" and m.restarts == 0
        status = json.dumps(system.status())
        assert "Not authorized" in status
    shown = [status, caplog.text, *(repr(e) for e in events.events), *_texts(info.value)]
    for text in shown:
        assert WRONG_PASSWORD not in text and PASSWORD not in text, text


@pytest.fixture
def tls_broker(make_broker: Callable[..., MosquittoServer],
               tmp_path: Path) -> tuple[MosquittoServer, Path]:
    """A broker with a TLS listener, its certificate (127.0.0.1, localhost) signed by a
    throwaway CA; the CA's certificate file."""
    from tests.certs import make_ca  # noqa: PLC0415 - cryptography: only these tests need it

    ca = make_ca(tmp_path / "pki")
    server = ca.issue("broker")
    return make_broker(tls=(ca.cert, server.cert, server.key)), ca.cert


def test_tls_verified_with_the_brokers_ca_connects_and_round_trips(
    tls_broker: tuple[MosquittoServer, Path],
) -> None:
    broker, ca = tls_broker
    inbox = Inbox()
    config = _config(broker, m={"tls": True, "ca_certs": str(ca)})
    with sessions.start(config) as system:
        m = system.get("m")
        m.subscribe("tls/#", inbox, qos=2).result()
        for qos in (0, 1, 2):
            m.publish(f"tls/{qos}", f"sealed {qos}", qos=qos).result()
        received = inbox.wait_for(3)
        assert sorted(m.payload for m in received) == [b"sealed 0", b"sealed 1", b"sealed 2"]
        assert (m.state, m.restarts) == ("running", 0)


def test_tls_verified_with_the_system_cas_is_a_failed_start_naming_verification(
    tls_broker: tuple[MosquittoServer, Path],
) -> None:
    """No ca_certs: the system's CAs do not know the broker's: the handshake fails
    certificate verification, a failed start (retried), never a connection."""
    broker, _ = tls_broker
    events = Recorder()
    with sessions.start(_config(broker, m={"tls": True}), wait=False) as system:
        system.subscribe(events)
        m = system.get("m")
        failures = _start_failures(events, "m", count=2)
        assert all("certificate verify failed" in e.error for e in failures), failures
        assert m.state != "running" and m.restarts == 0
