"""The ``opcua`` kind against a real asyncua server in a subprocess (tests/opcua_server.py).

Faults are real: the server is killed with SIGKILL and started again on the same port, or
frozen with SIGSTOP. Waiting is on futures, events and ``wait_until`` with deadlines; no
test asserts on elapsed time. An asyncua server takes a second or two to start: tests that
do not hurt the server share one (module scope).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    from asyncua.ua.status_codes import StatusCodes
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI") == "true":
        raise  # CI installs the opcua extra: a missing driver is a failure, not a skip
    pytest.skip("OPC UA TESTS NOT RUN: asyncua missing; "
                "pip install 'applib-sessions[opcua]'", allow_module_level=True)

import sessions
from sessions import SessionRegistry
from sessions.actors.opcua import NodeError, OPCUAActor, OPCUADataChange
from sessions.messages import ChildFaulted, ChildRestarting, ChildState
from sessions.opcua import OPCUA_KIND, OPCUASessionManager
from tests.certs import Issued, self_signed
from tests.servers import _reserve_port
from tests.support import Recorder, ScriptServer, wait_until

pytestmark = pytest.mark.timeout(120)

TEMPERATURE = "ns=2;s=Plant.Temperature"
COUNT = "ns=2;s=Plant.Count"
LABEL = "ns=2;s=Plant.Label"
SERIAL = "ns=2;s=Plant.Serial"  # read-only
PLANT = "ns=2;s=Plant"


class OPCUAServer(ScriptServer):
    """``tests/opcua_server.py`` in a subprocess; keeps its port across kill and start.
    ``options``: its command line options (``--user NAME:PASSWORD``, ``--security CERT
    KEY``)."""

    def __init__(self, *options: str) -> None:
        self.port = _reserve_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/plant"
        self.options = options
        super().__init__()

    name = "OPC UA server"

    def command(self) -> list[str]:
        return ["tests.opcua_server", str(self.port), *self.options]


@pytest.fixture(scope="module")
def shared_server() -> Iterator[OPCUAServer]:
    """One server for the tests that do not kill, freeze or rely on its initial data."""
    server = OPCUAServer().start()
    yield server
    server.kill()


@pytest.fixture
def own_server() -> Iterator[OPCUAServer]:
    """A server of the test's own, to kill or freeze."""
    server = OPCUAServer().start()
    yield server
    server.kill()


def opcua_config(url: str, **options: Any) -> dict[str, Any]:
    """One ``opcua`` resource named ``line``; restarts quick, intensity generous."""
    return {
        "supervisor": {"max_restarts": 200, "period": 10.0,
                       "backoff": {"initial": 0.05, "max": 0.3, "jitter": 0.0}},
        "resources": {"line": {"kind": OPCUA_KIND, "url": url, "timeout": 1.0,
                               "keepalive": 0.5, "call_timeout": 5.0, **options}},
    }


def answers(line: sessions.Handle) -> bool:
    """Whether a read succeeds now (for wait_until while the session recovers)."""
    try:
        line.read(COUNT).result(timeout=5.0)
    except Exception:
        return False
    return True


# -- calls ------------------------------------------------------------------------------


def test_read_and_write_each_type(shared_server: OPCUAServer) -> None:
    with sessions.start(opcua_config(shared_server.url)) as system:
        line = system.get("line")
        assert line.write(TEMPERATURE, 21.25).result() is None
        assert line.write(COUNT, 42).result() is None  # an int, written as the node's Int32
        assert line.write(LABEL, "valve").result() is None
        assert line.read(TEMPERATURE).result() == 21.25
        assert line.read(COUNT).result() == 42
        assert line.read(LABEL).result() == "valve"
        assert line.read_many([TEMPERATURE, COUNT, LABEL]).result() == [21.25, 42, "valve"]
        assert line.write(COUNT, -3, "Int32").result() is None
        assert line.read(COUNT).result() == -3
        assert line.read("i=2259").result() == 0  # ServerState.Running
        assert line.state == ChildState.RUNNING and line.restarts == 0


def test_browse_path_and_call(shared_server: OPCUAServer) -> None:
    with sessions.start(opcua_config(shared_server.url)) as system:
        line = system.get("line")
        assert line.browse_path(["0:Objects", "2:Plant", "2:Temperature"]).result() == \
            TEMPERATURE
        assert line.call_method(PLANT, "2:Add", 1.5, 2.25).result() == 3.75
        assert line.call_method(PLANT, "ns=2;s=Plant.Add", 2.0, 2.0).result() == 4.0
        assert line.call("call", PLANT, "2:Add", 1.0, 1.0).result() == 2.0
        with pytest.raises(NodeError, match="2:Nope"):
            line.browse_path(["0:Objects", "2:Plant", "2:Nope"]).result()
        assert line.restarts == 0


def test_bad_nodes_are_caller_errors_naming_the_node(shared_server: OPCUAServer) -> None:
    with sessions.start(opcua_config(shared_server.url)) as system:
        line = system.get("line")
        with pytest.raises(NodeError, match=r"ns=2;s=NoSuchNode.*BadNodeIdUnknown") as caught:
            line.read("ns=2;s=NoSuchNode").result()
        err = caught.value
        assert isinstance(err, sessions.SessionsError) and isinstance(err, ValueError)
        assert (err.node_id, err.operation, err.status) == (
            "ns=2;s=NoSuchNode", "read", "BadNodeIdUnknown")
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is NodeError and copy.node_id == err.node_id
        with pytest.raises(NodeError, match="not a valid node id"):
            line.read("this is no node id").result()
        with pytest.raises(NodeError, match=r"ns=2;s=Plant\.Label.*write"):
            line.write(LABEL, 1.5, "Double").result()  # BadTypeMismatch
        with pytest.raises(NodeError, match=r"ns=2;s=Plant\.Count"):
            line.write(COUNT, "seven").result()  # not an Int32
        with pytest.raises(NodeError, match="ns=2;s=NoSuchNode"):
            line.read_many([COUNT, "ns=2;s=NoSuchNode"]).result()
        with pytest.raises(NodeError, match="ns=2;s=Plant"):
            line.call_method(PLANT, "2:Add", "x").result()
        with pytest.raises(ValueError, match="variant_type"):
            line.write(COUNT, 1, "Int99").result()
        assert answers(line)
        assert line.state == ChildState.RUNNING and line.restarts == 0


def test_eight_threads_read_and_write_concurrently(shared_server: OPCUAServer) -> None:
    rounds = 25
    with sessions.start(opcua_config(shared_server.url)) as system:
        line = system.get("line")
        start = threading.Barrier(8)

        def worker(n: int) -> list[Any]:
            start.wait()
            wrong = []
            for i in range(rounds):
                line.write(LABEL, f"w{n}-{i}")  # not awaited: interleaves with the others
                got = line.read_many([COUNT, TEMPERATURE]).result(timeout=10)
                if len(got) != 2:
                    wrong.append(got)
                if line.call_method(PLANT, "2:Add", float(n), float(i)).result(timeout=10) != n + i:
                    wrong.append((n, i))
            return wrong

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(worker, range(8)))
        assert results == [[]] * 8
        assert line.read(LABEL).result().startswith("w")
        assert line.restarts == 0


def test_subscription_gets_data_changes(shared_server: OPCUAServer) -> None:
    seen: list[OPCUADataChange] = []
    got = threading.Condition()

    def on_change(change: OPCUADataChange) -> None:
        assert threading.current_thread().name.startswith("sessions-line-opcua-sub-")
        with got:
            seen.append(change)
            got.notify_all()

    def wait_for(value: Any) -> None:
        with got:
            assert got.wait_for(lambda: any(c.value == value for c in seen), timeout=10), seen

    with sessions.start(opcua_config(shared_server.url)) as system:
        line = system.get("line")
        line.write(TEMPERATURE, 1.0).result()
        line.subscribe(TEMPERATURE, on_change, period=0.05).result()
        wait_for(1.0)  # the current value comes first
        line.write(TEMPERATURE, 2.5).result()
        wait_for(2.5)
        assert seen[-1].node_id == TEMPERATURE and seen[-1].status == "Good"
        stats = line.subscriptions().result()
        assert stats[TEMPERATURE]["delivered"] >= 2
        line.unsubscribe(TEMPERATURE).result()
        with pytest.raises(KeyError):
            line.unsubscribe(TEMPERATURE).result()
        assert line.subscriptions().result() == {}


# -- faults -----------------------------------------------------------------------------


def test_server_killed_then_back_resource_reconnects_and_replays_subscription(
        own_server: OPCUAServer) -> None:
    server = own_server
    seen: list[Any] = []
    got = threading.Condition()
    faulted = threading.Event()

    def on_change(change: OPCUADataChange) -> None:
        with got:
            seen.append(change.value)
            got.notify_all()

    def wait_for(value: Any) -> None:
        with got:
            assert got.wait_for(lambda: value in seen, timeout=20), seen

    with sessions.start(opcua_config(server.url, call_timeout=3.0)) as system:
        line = system.get("line")
        line.subscribe(COUNT, on_change, period=0.05).result()
        line.write(COUNT, 11).result()
        wait_for(11)
        server.kill()
        try:
            line.read(COUNT).result(timeout=10)
        except (sessions.ResourceFault, sessions.ResourceUnavailable, sessions.CallTimeout):
            faulted.set()
        # the watchdog may have restarted it first; either way the session was lost
        wait_until(lambda: faulted.is_set() or line.restarts > 0, timeout=20,
                   what="the lost connection noticed")
        server.start()  # same port; the values are the initial ones again
        wait_until(lambda: answers(line), timeout=30, what="the session back")
        assert line.restarts >= 1
        wait_for(7)  # the replayed subscription delivers the restarted server's value
        line.write(COUNT, 12).result()
        wait_for(12)
        assert line.read(COUNT).result() == 12


def test_frozen_server_fails_the_call_in_time_and_recovers(own_server: OPCUAServer) -> None:
    server = own_server
    with sessions.start(opcua_config(server.url, call_timeout=3.0)) as system:
        line = system.get("line")
        assert line.read(COUNT).result() == 7
        server.freeze()
        with pytest.raises((sessions.ResourceFault, sessions.ResourceUnavailable,
                            sessions.CallTimeout)):
            line.read(COUNT).result(timeout=10)  # bounded by call_timeout, not by us
        server.thaw()
        wait_until(lambda: answers(line), timeout=30, what="the session back")
        assert line.state == ChildState.RUNNING


def test_a_stalled_call_is_aborted_from_another_thread(own_server: OPCUAServer) -> None:
    # The driver would wait 20 s; the runtime gives up at stall_timeout and calls abort()
    # from its watchdog thread, which closes the transport without blocking. keepalive is
    # long so that asyncua's watchdog does not notice first.
    server = own_server
    config = opcua_config(server.url, timeout=20.0, keepalive=60.0, call_timeout=1.0,
                          stall_timeout=1.5, connect_timeout=30.0)
    with sessions.start(config) as system:
        line = system.get("line")
        assert answers(line)
        server.freeze()
        with pytest.raises((sessions.CallTimeout, sessions.ResourceFault)):
            line.read(COUNT).result(timeout=10)
        wait_until(lambda: line.restarts >= 1 or line.state != ChildState.RUNNING,
                   timeout=8, what="the stalled call aborted")
        server.thaw()
        wait_until(lambda: answers(line), timeout=40, what="the session back")


def test_health_check_notices_a_frozen_server_without_calls(own_server: OPCUAServer) -> None:
    server = own_server
    config = opcua_config(server.url, timeout=0.5, keepalive=60.0, health_interval=0.3)
    with sessions.start(config) as system:
        line = system.get("line")
        assert answers(line)
        server.freeze()
        wait_until(lambda: line.restarts >= 1 or line.state != ChildState.RUNNING,
                   timeout=10, what="the health check's fault")
        server.thaw()
        wait_until(lambda: answers(line), timeout=30, what="the session back")


def test_no_library_thread_left_after_stop(shared_server: OPCUAServer) -> None:
    with sessions.start(opcua_config(shared_server.url)) as system:
        line = system.get("line")
        line.subscribe(COUNT, lambda change: None).result()
        names = [t.name for t in threading.enumerate()]
        assert "sessions-line-opcua-loop" in names
    wait_until(lambda: not [t for t in threading.enumerate()
                            if t.name.startswith("sessions-line-")],
               timeout=10, what="every thread of the resource ended")


def test_session_manager(shared_server: OPCUAServer) -> None:
    with OPCUASessionManager(url=shared_server.url, timeout=2.0) as line:
        assert line.read(LABEL).result() is not None
        assert line.name == "opcua"


def test_session_registry_opcua_url(shared_server: OPCUAServer) -> None:
    """``SessionRegistry(opcua_url=...)``: the server is ``registry.opcua``."""
    with SessionRegistry(opcua_url=shared_server.url,
                         options={"opcua": {"timeout": 2.0}}) as registry:
        assert registry.opcua.kind == "opcua"
        assert registry.opcua.read(LABEL).result() is not None


# -- config -----------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "key"), [
    ({"url": "opc.tcp://127.0.0.1:4840", "timout": 1.0}, "resources.line.timout"),
    ({"url": "http://127.0.0.1:4840"}, "resources.line.url"),
    ({"url": "opc.tcp://127.0.0.1:4840", "timeout": 0}, "resources.line.timeout"),
    ({}, "resources.line.url"),
])
def test_bad_config_keys_are_config_errors_naming_the_key(options: dict[str, Any],
                                                          key: str) -> None:
    config = {"resources": {"line": {"kind": "opcua", **options}}}
    with pytest.raises(sessions.ConfigError) as caught:
        sessions.start(config)
    assert key in str(caught.value)


def test_password_needs_username() -> None:
    with pytest.raises(sessions.ConfigError, match="password needs username"):
        sessions.start({"resources": {"line": {
            "kind": "opcua", "url": "opc.tcp://h:4840", "password": "x"}}})


def test_kind_is_registered() -> None:
    assert OPCUAActor.kind == OPCUA_KIND == "opcua"


# -- sessions check --connect ------------------------------------------------------------


def test_check_connect_reads_the_server_state(shared_server: OPCUAServer, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from sessions._tools.cli import main  # noqa: PLC0415

    dead = _reserve_port()  # nothing listens there
    path = tmp_path / "line.toml"
    path.write_text(
        f'[resources.up]\nkind = "{OPCUA_KIND}"\nurl = "{shared_server.url}"\n'
        f'[resources.down]\nkind = "{OPCUA_KIND}"\nurl = "opc.tcp://127.0.0.1:{dead}"\n'
        f'timeout = 0.5\nconnect_timeout = 5.0\n',
        encoding="utf-8",
    )
    assert main(["check", str(path), "--connect"]) == 1
    out = capsys.readouterr().out
    assert f"opcua {shared_server.url}: server state Running" in out, out
    assert "1 of 2 resources failed to connect: down" in out, out


# -- status codes: the server refuses an operation, the session is fine ------------------


@pytest.mark.parametrize(("call", "node_id", "operation", "status"), [
    (lambda line: line.read("ns=2;s=NoSuchNode"), "ns=2;s=NoSuchNode", "read",
     "BadNodeIdUnknown"),
    (lambda line: line.read_many([COUNT, "ns=2;s=NoSuchNode"]), "ns=2;s=NoSuchNode",
     "read_many", "BadNodeIdUnknown"),
    (lambda line: line.write("ns=2;s=NoSuchNode", 1), "ns=2;s=NoSuchNode", "write",
     "BadNodeIdUnknown"),
    # a variable not writable: the server refuses the write to the session's user
    (lambda line: line.write(SERIAL, "SN-9999"), SERIAL, "write", "BadUserAccessDenied"),
    (lambda line: line.write(SERIAL, "SN-9999", "String"), SERIAL, "write",
     "BadUserAccessDenied"),
    # the server's check: a Double for a String node
    (lambda line: line.write(LABEL, 1.5, "Double"), LABEL, "write", "BadTypeMismatch"),
    # the kind's check against the node's type, before anything is sent
    (lambda line: line.write(COUNT, "seven"), COUNT, "write", "BadTypeMismatch"),
    (lambda line: line.browse_path(["0:Objects", "2:Plant", "2:Nope"]),
     "0:Objects/2:Plant/2:Nope", "browse_path", "BadNoMatch"),
    (lambda line: line.call_method(PLANT, "2:Nope", 1.0), PLANT, "call 2:Nope",
     "BadNoMatch"),
    (lambda line: line.subscribe("ns=2;s=NoSuchNode", lambda change: None),
     "ns=2;s=NoSuchNode", "subscribe", "BadNodeIdUnknown"),
], ids=["read-unknown", "read_many-unknown", "write-unknown", "write-read-only",
        "write-read-only-typed", "write-type-server", "write-type-client",
        "browse-no-match", "call-no-such-method", "subscribe-unknown"])
def test_a_refused_operation_is_a_node_error_naming_the_node_and_the_status(
        shared_server: OPCUAServer, call: Callable[[sessions.Handle], Any], node_id: str,
        operation: str, status: str) -> None:
    with sessions.start(opcua_config(shared_server.url)) as system:
        line = system.get("line")
        with pytest.raises(NodeError) as caught:
            call(line).result()
        err = caught.value
        assert (err.node_id, err.operation, err.status) == (node_id, operation, status)
        assert err.status_code == int(getattr(StatusCodes, status))
        assert f"{node_id}: {operation}: {status}" in str(err)
        assert line.read(SERIAL).result() == "SN-0001"  # the session is fine, nothing written
        assert line.subscriptions().result() == {}
        assert line.state == ChildState.RUNNING and line.restarts == 0


@pytest.mark.parametrize("args", [(1.0,), (1.0, 2.0, 3.0)], ids=["too-few", "too-many"])
def test_a_methods_bad_arguments_are_a_node_error(shared_server: OPCUAServer,
                                                  args: tuple[float, ...]) -> None:
    """The server's status for them is its own (asyncua's answers BadUnexpectedError);
    what matters is that the caller gets it, naming the object and the method."""
    with sessions.start(opcua_config(shared_server.url)) as system:
        line = system.get("line")
        with pytest.raises(NodeError) as caught:
            line.call_method(PLANT, "2:Add", *args).result()
        err = caught.value
        assert (err.node_id, err.operation) == (PLANT, "call 2:Add")
        assert err.status is not None and err.status.startswith("Bad")
        assert err.status_code is not None
        assert line.call_method(PLANT, "2:Add", 1.0, 2.0).result() == 3.0
        assert line.state == ChildState.RUNNING and line.restarts == 0


# -- user name and password; security ------------------------------------------------------

USER = "operator"
PASSWORD = "right-Pa55-c4f1e2"
WRONG_PASSWORD = "wrong-Pa55-0b9d37"
PASSWORD_ENV = "SESSIONS_TEST_OPCUA_PASSWORD"


@pytest.fixture(scope="module")
def user_server() -> Iterator[OPCUAServer]:
    """A server that only lets ``USER`` with ``PASSWORD`` open a session."""
    server = OPCUAServer("--user", f"{USER}:{PASSWORD}").start()
    yield server
    server.kill()


def _texts(error: BaseException | None) -> list[str]:
    texts: list[str] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        texts += [str(error), repr(error)]
        error = error.__cause__ or error.__context__
    return texts


def _start_failures(events: Recorder, count: int) -> list[ChildFaulted]:
    found = events.wait_for(
        lambda e: isinstance(e, ChildFaulted) and e.name == "line" and e.during_start,
        count=count, timeout=30)
    return [e for e in found if isinstance(e, ChildFaulted)]


def test_a_user_name_and_a_password_from_the_environment_open_the_session(
        user_server: OPCUAServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The password is read from the environment; asyncua logs the requests it sends
    at DEBUG, the session's activation with the password in it: masked."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    caplog.set_level(logging.DEBUG)
    config = opcua_config(user_server.url, username=USER, password=f"${{{PASSWORD_ENV}}}")
    with sessions.start(config) as system:
        line = system.get("line")
        line.write(COUNT, 9).result()
        assert line.read(COUNT).result() == 9
        with pytest.raises(NodeError, match="BadUserAccessDenied"):
            line.write(SERIAL, "SN-9999").result()  # the user may not write that one
        assert line.state == ChildState.RUNNING and line.restarts == 0
        assert PASSWORD not in json.dumps(system.status())
    assert "ActivateSessionRequest" in caplog.text  # the request was logged...
    assert PASSWORD not in caplog.text  # ...without the password


@pytest.mark.parametrize(("credentials", "status"), [
    # the wrong one, from the environment
    ({"username": USER, "password": f"${{{PASSWORD_ENV}}}"}, "BadUserAccessDenied"),
    ({"username": "intruder", "password": PASSWORD}, "BadUserAccessDenied"),
    ({}, "BadIdentityTokenRejected"),  # anonymous: the endpoint only takes user names
], ids=["wrong-password", "unknown-user", "anonymous"])
def test_a_refused_login_is_a_failed_start_retried_and_no_password_is_shown(
        user_server: OPCUAServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, credentials: dict[str, str], status: str) -> None:
    """The server refuses to activate the session: a failed start, retried with
    backoff, the reason naming the server, the user and the status; neither password
    shows in the events, the logs, the status or the caller's error."""
    monkeypatch.setenv(PASSWORD_ENV, WRONG_PASSWORD)
    caplog.set_level(logging.DEBUG)
    events = Recorder()
    config = opcua_config(user_server.url, call_timeout=2.0, **credentials)
    with sessions.start(config, wait=False) as system:
        system.subscribe(events)
        line = system.get("line")
        with pytest.raises(sessions.CallTimeout) as caught:
            line.read(COUNT).result()
        assert not caught.value.started  # it waited for a start that never came
        failures = _start_failures(events, count=2)
        who = (f"user {credentials['username']!r}" if credentials
               else "an anonymous session")
        assert all(f"ConnectionRefusedError: opcua {user_server.url} refused the login of "
                   f"{who}: {status}" in e.error for e in failures), failures[0]
        retries = [e for e in events.wait_for(
            lambda e: isinstance(e, ChildRestarting) and e.name == "line", count=3)
            if isinstance(e, ChildRestarting)]
        attempts, delays = [e.attempt for e in retries], [e.delay for e in retries]
        assert attempts == list(range(attempts[0], attempts[0] + len(attempts)))
        assert all(d > 0 for d in delays) and delays == sorted(delays)  # backoff
        assert line.state != ChildState.RUNNING and line.restarts == 0
        shown_status = json.dumps(system.status())
        assert status in shown_status
    shown = [shown_status, caplog.text, *(repr(e) for e in events.events), *_texts(caught.value)]
    for text in shown:
        assert WRONG_PASSWORD not in text and PASSWORD not in text, text


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Issued]:
    """Self-signed application instance certificates: the server's (asyncua's default
    application URI) and the client's (asyncua's client default)."""
    directory = tmp_path_factory.mktemp("pki")
    return {
        "server": self_signed(directory, "server", uri="urn:freeopcua:python:server",
                              server=True),
        "client": self_signed(directory, "client",
                              uri="urn:example.org:FreeOpcUa:opcua-asyncio", server=False),
    }


@pytest.fixture(scope="module")
def secure_server(pki: dict[str, Issued]) -> Iterator[OPCUAServer]:
    """A server whose only endpoint is Basic256Sha256 SignAndEncrypt, and whose only
    user is ``USER``."""
    server = OPCUAServer("--security", str(pki["server"].cert), str(pki["server"].key),
                         "--user", f"{USER}:{PASSWORD}").start()
    yield server
    server.kill()


def test_basic256sha256_sign_and_encrypt_with_a_user(
        secure_server: OPCUAServer, pki: dict[str, Issued]) -> None:
    """The kind's ``security`` string: the client's certificate and key; the session is
    signed and encrypted, the password sent encrypted with the server's key."""
    client = pki["client"]
    security = f"Basic256Sha256,SignAndEncrypt,{client.cert},{client.key}"
    config = opcua_config(secure_server.url, security=security, username=USER,
                          password=PASSWORD)
    with sessions.start(config) as system:
        line = system.get("line")
        line.write(LABEL, "sealed").result()
        assert line.read(LABEL).result() == "sealed"
        assert line.call_method(PLANT, "2:Add", 1.0, 2.0).result() == 3.0
        assert line.state == ChildState.RUNNING and line.restarts == 0


def test_no_security_against_a_secured_endpoint_is_a_failed_start(
        secure_server: OPCUAServer) -> None:
    events = Recorder()
    config = opcua_config(secure_server.url, username=USER, password=PASSWORD)
    with sessions.start(config, wait=False) as system:
        system.subscribe(events)
        line = system.get("line")
        failures = _start_failures(events, count=2)
        assert all(f"opcua {secure_server.url} has no endpoint with the security asked "
                   "for (None): UaError: No matching endpoints" in e.error
                   for e in failures), failures[0]
        assert line.state != ChildState.RUNNING and line.restarts == 0


def test_a_session_status_is_a_fault_and_the_resource_restarts(own_server: OPCUAServer) -> None:
    """The server closes the session and keeps the connection: the next request is
    refused with BadSessionNotActivated, a session status (the fault table's "a session
    or channel error"): a fault, the resource restarts on a new session. keepalive is
    long so that asyncua's watchdog does not find it first."""
    config = opcua_config(own_server.url, keepalive=60.0)
    with sessions.start(config) as system:
        line = system.get("line")
        assert line.read(COUNT).result() == 7
        line.call_method(PLANT, "2:CloseSessions").result()
        with pytest.raises(sessions.ResourceFault) as caught:
            line.read(COUNT).result()
        assert "BadSessionNotActivated" in str(caught.value), caught.value
        assert not isinstance(caught.value.__cause__, NodeError)
        wait_until(lambda: answers(line), timeout=30, what="the session back")
        assert line.restarts == 1 and line.state == ChildState.RUNNING
