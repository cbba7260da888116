"""The ``modbus`` kind against a real pymodbus server in a subprocess (tests/modbus_server.py).

Faults are real: the server is killed with SIGKILL and started again on the same port,
frozen with SIGSTOP, or holds a request past the client's timeout (``--stall``). Waiting
is on futures and ``wait_until`` with deadlines; no test asserts on elapsed time.
"""

from __future__ import annotations

import concurrent.futures
import os
import pickle
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import pymodbus  # noqa: F401
    import serial  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI") == "true":
        raise  # CI installs the modbus extra: a missing driver is a failure, not a skip
    pytest.skip("MODBUS TESTS NOT RUN: pymodbus/pyserial missing; "
                "pip install 'applib-sessions[modbus]'", allow_module_level=True)

import sessions
from sessions import SessionRegistry
from sessions.actors.modbus import DeviceError, ModbusActor
from sessions.messages import ChildState
from sessions.modbus import MODBUS_KIND, ModbusSessionManager
from tests.servers import _reserve_port
from tests.support import ScriptServer, abort_from_another_thread, wait_until

pytestmark = pytest.mark.timeout(90)


class ModbusServer(ScriptServer):
    """``tests/modbus_server.py`` in a subprocess; keeps its port across kill and start."""

    def __init__(self, tmp_path: Path, *options: str, transport: str = "tcp",
                 where: str | None = None) -> None:
        self.port = _reserve_port()
        self.where = where or str(self.port)
        self.transport = transport
        self.log = tmp_path / f"requests-{self.port}.log"
        self.options = options
        super().__init__()

    name = "modbus server"

    def command(self) -> list[str]:
        return ["tests.modbus_server", self.transport, self.where, "--log", str(self.log),
                *self.options]

    def requests(self, function_code: int) -> int:
        """How many requests with ``function_code`` reached the ``--stall`` address."""
        if not self.log.exists():
            return 0
        lines = self.log.read_text().split("\n")
        return sum(1 for line in lines if line.split(" ")[:1] == [str(function_code)])


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ModbusServer]]:
    servers: list[ModbusServer] = []

    def make(*options: str, **kwargs: Any) -> ModbusServer:
        server = ModbusServer(tmp_path, *options, **kwargs)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


def modbus_config(port: int, **options: Any) -> dict[str, Any]:
    """One ``modbus`` resource named ``plc``; restarts quick, intensity generous."""
    return {
        "supervisor": {"max_restarts": 200, "period": 10.0,
                       "backoff": {"initial": 0.02, "max": 0.2, "jitter": 0.0}},
        "resources": {"plc": {"kind": MODBUS_KIND, "host": "127.0.0.1", "port": port,
                              "timeout": 0.5, "call_timeout": 5.0, **options}},
    }


def answers(plc: sessions.Handle, address: int = 0) -> bool:
    """Whether a read succeeds now (for wait_until while the link recovers)."""
    try:
        plc.read_holding_registers(address).result(timeout=5.0)
    except Exception:
        return False
    return True


# -- calls ------------------------------------------------------------------------------


def test_each_table_reads_and_writes(make_server: Callable[..., ModbusServer]) -> None:
    server = make_server()
    with sessions.start(modbus_config(server.port)) as system:
        plc = system.get("plc")
        assert plc.write_coil(3, True).result() is None
        assert plc.write_coils(5, [True, False, True]).result() is None
        assert plc.read_coils(2, 7).result() == [False, True, False, True, False, True, False]
        assert plc.read_discrete_inputs(0, 4).result() == [False, True, False, True]
        assert plc.write_register(7, 0xBEEF).result() is None
        assert plc.write_registers(8, [1, 2, 65535]).result() is None
        assert plc.read_holding_registers(7, 4).result() == [0xBEEF, 1, 2, 65535]
        assert plc.read_input_registers(3, 3).result() == [30, 40, 50]
        # device_id per call (this server serves every id from one data model)
        assert plc.read_input_registers(4, device_id=17).result() == [40]
        with pytest.raises(ValueError, match=r"address must be in 0\.\.65535"):
            plc.read_coils(70000).result()
        with pytest.raises(ValueError, match=r"value must be in 0\.\.65535"):
            plc.write_register(1, 70000).result()
        with pytest.raises(ValueError, match="count"):
            plc.read_holding_registers(0, 126).result()
        assert plc.state == ChildState.RUNNING and plc.restarts == 0


@pytest.mark.parametrize(("type_", "value", "order", "raw"), [
    ("int16", -2, "big", [0xFFFE]),
    ("uint16", 65000, "big", [65000]),
    ("int32", -100000, "big", [0xFFFE, 0x7960]),
    ("uint32", 0x12345678, "big", [0x1234, 0x5678]),
    ("uint32", 0x12345678, "little", [0x5678, 0x1234]),
    ("float32", 1.5, "big", [0x3FC0, 0x0000]),
    ("float32", 1.5, "little", [0x0000, 0x3FC0]),
])
def test_typed_values_round_trip(make_server: Callable[..., ModbusServer], type_: str,
                                 value: float, order: str, raw: list[int]) -> None:
    server = make_server()
    with sessions.start(modbus_config(server.port)) as system:
        plc = system.get("plc")
        plc.write_value(20, value, type_, order).result()
        assert plc.read_holding_registers(20, len(raw)).result() == raw
        assert plc.read_value(20, type_, order).result() == value
        with pytest.raises(ValueError, match="type must be one of"):
            plc.read_value(20, "float64").result()


def test_word_order_default_comes_from_the_config(
        make_server: Callable[..., ModbusServer]) -> None:
    server = make_server()
    with sessions.start(modbus_config(server.port, word_order="little")) as system:
        plc = system.get("plc")
        plc.write_value(30, 0x00010002, "uint32").result()
        assert plc.read_holding_registers(30, 2).result() == [2, 1]
        assert plc.read_value(30, "uint32").result() == 0x00010002
        assert plc.read_value(5, "uint16", table="input").result() == 50


def test_illegal_address_is_a_device_error_and_not_a_fault(
        make_server: Callable[..., ModbusServer]) -> None:
    server = make_server()
    with sessions.start(modbus_config(server.port, device_id=7)) as system:
        plc = system.get("plc")
        with pytest.raises(DeviceError) as caught:
            plc.read_holding_registers(5000, 2).result()
        err = caught.value
        assert isinstance(err, sessions.DeviceError) and isinstance(err, sessions.SessionsError)
        assert "device 7" in str(err) and "read_holding_registers" in str(err)
        assert "address 5000" in str(err) and "ILLEGAL DATA ADDRESS" in str(err)
        assert (err.device_id, err.function, err.address, err.exception_code) == (
            7, "read_holding_registers", 5000, 2)
        copy = pickle.loads(pickle.dumps(err))
        assert type(copy) is DeviceError and str(copy) == str(err)
        assert copy.device_id == 7 and copy.address == 5000
        with pytest.raises(DeviceError, match="write_register at address 9999"):
            plc.write_register(9999, 1).result()
        assert plc.read_input_registers(1).result() == [10]
        assert plc.state == ChildState.RUNNING and plc.restarts == 0


def test_eight_threads_on_one_link_each_get_their_own_replies(
        make_server: Callable[..., ModbusServer]) -> None:
    server = make_server()
    rounds = 40
    with sessions.start(modbus_config(server.port)) as system:
        plc = system.get("plc")
        start = threading.Barrier(8)

        def worker(n: int) -> list[tuple[int, int]]:
            start.wait()
            wrong = []
            for i in range(rounds):
                value = n * 1000 + i
                plc.write_register(100 + n, value)  # not awaited: interleaves with others
                got = plc.read_holding_registers(100 + n).result(timeout=10)
                if got != [value]:
                    wrong.append((value, got[0]))
            return wrong

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(worker, range(8)))
        assert results == [[]] * 8
        assert plc.read_holding_registers(100, 8).result() == [
            n * 1000 + rounds - 1 for n in range(8)]
        assert plc.restarts == 0


# -- faults -----------------------------------------------------------------------------


def test_server_killed_then_back_the_resource_restarts_and_serves(
        make_server: Callable[..., ModbusServer]) -> None:
    server = make_server()
    with sessions.start(modbus_config(server.port, call_timeout=2.0)) as system:
        plc = system.get("plc")
        plc.write_register(1, 42).result()
        server.kill()
        with pytest.raises((sessions.ResourceFault, sessions.ResourceUnavailable)) as caught:
            plc.read_holding_registers(1).result(timeout=10)
        if isinstance(caught.value, sessions.ResourceFault):
            assert "Connection" in type(caught.value.__cause__).__name__
        assert plc.state != ChildState.RUNNING  # reconnecting: refused, with backoff
        server.start()  # same port; the data is gone with the process
        wait_until(lambda: answers(plc), timeout=20, what="the link back")
        assert plc.read_holding_registers(1).result() == [0]
        assert plc.state == ChildState.RUNNING and plc.restarts >= 1


def test_frozen_server_fails_the_call_in_time_and_recovers_after_thaw(
        make_server: Callable[..., ModbusServer]) -> None:
    server = make_server()
    with sessions.start(modbus_config(server.port, timeout=0.5, call_timeout=2.0)) as system:
        plc = system.get("plc")
        assert plc.read_input_registers(2).result() == [20]
        server.freeze()
        call = plc.read_input_registers(2)
        with pytest.raises((sessions.ResourceFault, sessions.CallTimeout)) as caught:
            call.result(timeout=10)  # the runtime's own bound: call_timeout (2 s)
        if isinstance(caught.value, sessions.ResourceFault):
            assert type(caught.value.__cause__).__name__ == "ModbusIOException"
        server.thaw()
        wait_until(lambda: answers(plc), timeout=20, what="the link back after SIGCONT")
        assert plc.read_input_registers(2).result() == [20]
        assert plc.state == ChildState.RUNNING and plc.restarts >= 1


def test_stalled_call_is_aborted_by_the_watchdog(
        make_server: Callable[..., ModbusServer]) -> None:
    """A driver timeout longer than stall_timeout: the runtime calls abort(), which shuts
    the socket down under the blocked read, and the resource restarts."""
    server = make_server()
    config = modbus_config(server.port, timeout=60.0, call_timeout=1.0, stall_timeout=1.5)
    with sessions.start(config) as system:
        plc = system.get("plc")
        assert answers(plc)
        server.freeze()
        with pytest.raises((sessions.ResourceFault, sessions.CallTimeout)):
            plc.read_holding_registers(0).result(timeout=10)
        wait_until(lambda: plc.restarts >= 1, what="the stalled call aborted")
        server.thaw()
        wait_until(lambda: answers(plc), timeout=20, what="the link back")


def test_abort_is_non_blocking_and_idempotent(make_server: Callable[..., ModbusServer]) -> None:
    server = make_server()
    actor = ModbusActor(host="127.0.0.1", port=server.port)
    abort_from_another_thread(actor, None)
    client = actor.connect()
    try:
        abort_from_another_thread(actor, client)
        abort_from_another_thread(actor, client)
        from pymodbus.exceptions import ConnectionException  # noqa: PLC0415

        with pytest.raises(ConnectionException):
            client.read_holding_registers(0, count=1)
    finally:
        actor.disconnect(client)
        abort_from_another_thread(actor, client)


def test_read_retries_retry_a_read_that_got_no_reply(
        make_server: Callable[..., ModbusServer]) -> None:
    # The server holds the first request at address 50 for 1.3 s; the client waits 1 s.
    server = make_server("--stall", "50", "--stall-count", "1", "--stall-seconds", "1.3")
    config = modbus_config(server.port, timeout=1.0, read_retries=1, call_timeout=10.0)
    with sessions.start(config) as system:
        plc = system.get("plc")
        assert plc.read_holding_registers(50).result() == [0]
        assert server.requests(3) == 2  # the first try and one retry
        assert plc.restarts == 0 and plc.state == ChildState.RUNNING


def test_read_retries_never_retry_a_write(make_server: Callable[..., ModbusServer]) -> None:
    server = make_server("--stall", "60", "--stall-count", "1", "--stall-seconds", "1.3")
    config = modbus_config(server.port, timeout=1.0, read_retries=3, call_timeout=10.0)
    with sessions.start(config) as system:
        plc = system.get("plc")
        with pytest.raises(sessions.ResourceFault) as caught:
            plc.write_register(60, 7).result()
        assert type(caught.value.__cause__).__name__ == "ModbusIOException"
        wait_until(lambda: answers(plc, 61), timeout=20, what="the link back")
        assert plc.read_holding_registers(60).result() == [7]  # the outcome was unknown
        assert server.requests(6) == 1
        assert plc.restarts == 1


# -- config -----------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "where"), [
    ({"baudrat": 9600}, "resources.plc.baudrat"),
    ({"baudrate": 9600}, "baudrate: not a key of transport 'tcp'"),
    ({"host": None}, "transport 'tcp' needs host"),
    ({"transport": "rtu"}, "transport 'rtu' needs serial_port"),
    ({"transport": "rtu", "serial_port": "/dev/null", "tcp_port": 5}, "port: not a key"),
    ({"timeout": 0}, "resources.plc.timeout"),
    ({"device_id": 256}, "resources.plc.device_id"),
    ({"parity": "X"}, "resources.plc.parity"),
])
def test_bad_config_is_a_config_error_naming_the_key(options: dict[str, Any],
                                                     where: str) -> None:
    options = dict(options)
    port = options.pop("tcp_port", 1502)
    config = modbus_config(port, **options)
    plc = config["resources"]["plc"]
    if options.get("host", "") is None:
        del plc["host"]
    if options.get("transport") == "rtu":
        plc.pop("host")
        if port == 1502:
            plc.pop("port")
    with pytest.raises(sessions.ConfigError) as caught:
        sessions.start(config)
    assert where in str(caught.value)


def test_session_manager(make_server: Callable[..., ModbusServer]) -> None:
    server = make_server()
    with ModbusSessionManager(host="127.0.0.1", port=server.port, device_id=3) as plc:
        assert plc.name == "modbus"
        plc.write_value(40, -1.25, "float32").result()
        assert plc.read_value(40, "float32").result() == -1.25


def test_session_registry_modbus_host(make_server: Callable[..., ModbusServer]) -> None:
    """``SessionRegistry(modbus_host=...)``: the link is ``registry.modbus``, its other
    keys come from ``options``."""
    server = make_server()
    with SessionRegistry(modbus_host="127.0.0.1",
                         options={"modbus": {"port": server.port, "device_id": 3}}) as registry:
        assert registry.modbus.kind == MODBUS_KIND
        registry.modbus.write_register(7, 77).result()
        assert registry.modbus.read_holding_registers(7, 1).result() == [77]
        assert registry.unavailable == {}


# -- RTU over a pseudo-terminal pair ------------------------------------------------------


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    socat = shutil.which("socat")
    if socat is None:
        if os.environ.get("CI") == "true":
            pytest.fail("socat is needed for the RTU test")
        pytest.skip("RTU TEST NOT RUN: socat is not installed")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    proc = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={a}",
                             f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: a.exists() and b.exists(), what="socat's pty pair")
        yield str(a), str(b)
    finally:
        proc.kill()
        proc.wait(10)


def test_rtu_over_a_serial_line(make_server: Callable[..., ModbusServer],
                                pty_pair: tuple[str, str]) -> None:
    server_end, client_end = pty_pair
    make_server(transport="rtu", where=server_end)
    config = {
        "supervisor": {"backoff": {"initial": 0.02, "max": 0.2, "jitter": 0.0}},
        "resources": {"line": {"kind": MODBUS_KIND, "transport": "rtu",
                               "serial_port": client_end, "baudrate": 115200,
                               "timeout": 1.0, "device_id": 1}},
    }
    with sessions.start(config) as system:
        line = system.get("line")
        line.write_registers(10, [5, 6]).result()
        assert line.read_holding_registers(10, 2).result() == [5, 6]
        assert line.read_input_registers(2, 2, device_id=1).result() == [20, 30]
        line.write_value(12, 3.5, "float32").result()
        assert line.read_value(12, "float32").result() == 3.5
        with pytest.raises(DeviceError, match="device 1: read_coils at address 4000"):
            line.read_coils(4000).result()
        assert line.restarts == 0
    # The registry's modbus_serial_port is the same RTU link, transport set for it.
    with SessionRegistry(modbus_serial_port=client_end,
                         options={"modbus": {"baudrate": 115200, "timeout": 1.0}}) as registry:
        assert registry.modbus.read_holding_registers(10, 2).result() == [5, 6]


# -- sessions check --connect ------------------------------------------------------------


def test_check_connect_reads_a_register(make_server: Callable[..., ModbusServer],
                                        tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from sessions._tools.cli import main  # noqa: PLC0415

    server = make_server()
    dead = _reserve_port()  # nothing listens there
    path = tmp_path / "plc.toml"
    path.write_text(
        f'[resources.up]\nkind = "{MODBUS_KIND}"\nhost = "127.0.0.1"\nport = {server.port}\n'
        f'device_id = 4\n'
        f'[resources.down]\nkind = "{MODBUS_KIND}"\nhost = "127.0.0.1"\nport = {dead}\n'
        f'timeout = 0.5\n',
        encoding="utf-8",
    )
    assert main(["check", str(path), "--connect"]) == 1
    out = capsys.readouterr().out
    assert f"connected: modbus tcp 127.0.0.1:{server.port}: device 4 answered" in out, out
    assert f"cannot connect to modbus tcp 127.0.0.1:{dead}" in out, out
    assert "1 of 2 resources failed to connect: down" in out, out
