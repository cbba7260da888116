"""The read-only HTTP endpoints of ``sessions run``: /healthz, /status, /metrics.

Driven over real HTTP against a real system of probe resources; the end-to-end
``sessions run`` with ``[server]`` (config parsing, signals) is in test_cli.py.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import sessions
from sessions._errors import ConfigError
from sessions._tools import cli as _cli
from sessions._tools.server import ServerConfig, StatusServer, health, parse_server
from tests.kinds import controls
from tests.support import config, wait_until

Served = tuple[sessions.System, str]


def fetch(url: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@pytest.fixture
def served() -> Iterator[Served]:
    cfg = config(
        {
            "a": {"breaker": {"failures": 50, "reset_timeout": 1.0}},
            "b": {"pool_size": 2},
            "t": {"restart": "transient"},
        },
        max_restarts=10_000,
        period=1.0,
    )
    system = sessions.start(cfg)
    server = StatusServer(ServerConfig(port=0))
    server.start(system)
    try:
        yield system, server.url
    finally:
        server.stop()
        system.stop()


def test_healthz_flips_to_503_while_a_permanent_resource_is_down_and_back(served: Served) -> None:
    system, url = served
    assert fetch(f"{url}/healthz")[:2] == (200, "application/json")
    assert json.loads(fetch(f"{url}/healthz")[2]) == {"status": "ok"}

    controls("a").fail_connects = 10**9  # every reconnect fails until we allow it
    system.get("a").break_it()
    wait_until(lambda: fetch(f"{url}/healthz")[0] == 503, what="/healthz to answer 503")
    body = json.loads(fetch(f"{url}/healthz")[2])
    assert body["status"] == "unavailable"
    (reason,) = body["reasons"]
    assert reason["resource"] == "a"
    assert reason["state"] == "restarting"
    assert "link lost" in reason["last_fault"] or "connect refused" in reason["last_fault"]

    controls("a").fail_connects = 0
    wait_until(lambda: fetch(f"{url}/healthz")[0] == 200, what="/healthz back to 200")


def test_healthz_ignores_a_stopped_transient_resource(served: Served) -> None:
    system, url = served
    system.terminate_child("t")
    assert fetch(f"{url}/healthz")[0] == 200
    system.terminate_child("a")
    code, _, body = fetch(f"{url}/healthz")
    assert code == 503
    assert json.loads(body)["reasons"] == [
        {"resource": "a", "state": "stopped", "last_fault": None}
    ]


def test_status_is_the_status_tree_as_json(served: Served) -> None:
    system, url = served
    system.get("a").echo(1).result()
    code, content_type, body = fetch(f"{url}/status")
    assert (code, content_type) == (200, "application/json")
    tree = json.loads(body)
    assert tree["name"] == "root"
    children = {c["name"]: c for c in tree["children"]}
    assert set(children) == {"a", "b", "t"}
    assert children["a"]["calls"]["ok"] == 1
    assert children["b"]["type"] == "pool"
    assert children["a"]["circuit"] == "closed"


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_parse_and_carry_calls_latency_restarts_faults_and_states(served: Served) -> None:
    system, url = served
    a = system.get("a")
    for i in range(5):
        assert a.echo(i).result() == i
    with pytest.raises(ValueError):
        a.fail().result()
    with pytest.raises(sessions.ResourceFault):
        a.break_it().result()
    wait_until(lambda: a.state == "running" and a.restarts == 1, what="a to restart")

    code, content_type, text = fetch(f"{url}/metrics")
    assert code == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    found = families(text)

    def sample(family: str, name: str, **labels: str) -> float:
        for s in found[family].samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        raise AssertionError(f"no sample {name}{labels} in {family}")

    assert found["sessions_calls"].type == "counter"
    assert sample("sessions_calls", "sessions_calls_total", resource="a", outcome="ok") == 5
    assert sample("sessions_calls", "sessions_calls_total", resource="a", outcome="error") == 1
    assert sample("sessions_calls", "sessions_calls_total", resource="a", outcome="fault") == 1
    assert (
        sample("sessions_resource_restarts", "sessions_resource_restarts_total", resource="a") == 1
    )
    assert sample("sessions_resource_faults", "sessions_resource_faults_total", resource="a") >= 1
    assert (
        sample("sessions_resource_state", "sessions_resource_state", resource="a", state="running")
        == 1
    )
    assert (
        sample(
            "sessions_resource_state", "sessions_resource_state", resource="a", state="restarting"
        )
        == 0
    )
    assert sample("sessions_queued_calls", "sessions_queued_calls", resource="b") == 0
    assert (
        sample("sessions_circuit_state", "sessions_circuit_state", resource="a", state="closed")
        == 1
    )
    assert sample("sessions_system_state", "sessions_system_state", state="running") == 1
    assert (
        sample(
            "sessions_supervisor_state",
            "sessions_supervisor_state",
            supervisor="root",
            state="running",
        )
        == 1
    )

    latency = found["sessions_call_latency_seconds"]
    assert latency.type == "histogram"
    buckets = [
        (s.labels["le"], s.value)
        for s in latency.samples
        if s.name.endswith("_bucket") and s.labels["resource"] == "a"
    ]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "buckets must be cumulative"
    assert buckets[-1][0] == "+Inf"
    count = sample(
        "sessions_call_latency_seconds", "sessions_call_latency_seconds_count", resource="a"
    )
    assert buckets[-1][1] == count == 7  # 5 ok, 1 error, 1 fault: every call that ran
    assert (
        sample("sessions_call_latency_seconds", "sessions_call_latency_seconds_sum", resource="a")
        > 0
    )
    # A pool is one resource in the metrics (its members summed), not two.
    assert {s.labels["resource"] for s in found["sessions_calls"].samples} == {"a", "b", "t"}


def test_metrics_without_prometheus_client_answer_501(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, url = served
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails
    code, _, body = fetch(f"{url}/metrics")
    assert code == 501
    assert "pip install 'applib-sessions[metrics]'" in body


def test_the_server_is_read_only_and_names_its_endpoints(served: Served) -> None:
    _, url = served
    assert fetch(f"{url}/healthz", method="POST")[0] == 405
    assert fetch(f"{url}/status", method="DELETE")[0] == 405
    code, _, body = fetch(f"{url}/nope")
    assert code == 404
    assert "/healthz" in body


def test_health_reports_a_failed_system() -> None:
    cfg = config(["a"], max_restarts=0)
    system = sessions.start(cfg)
    try:
        controls("a").fail_connects = 10
        with pytest.raises(sessions.ResourceFault):
            system.get("a").break_it().result()
        wait_until(lambda: system.state == "failed", what="the root to give up")
        code, body = health(system)
        assert code == 503
        assert body["reasons"][0]["system"] == "failed"
        assert "gave up" in body["reasons"][0]["reason"]
    finally:
        system.stop()


def test_server_config_is_validated_with_paths() -> None:
    with pytest.raises(ConfigError) as err:
        parse_server({"port": 70000, "host": "x"})
    assert sorted(p for p, _ in err.value.errors) == ["server.host", "server.port"]
    with pytest.raises(ConfigError) as err:
        parse_server({})
    assert err.value.errors == [("server.port", "required key is missing")]
    assert parse_server({"port": 0}).bind == "127.0.0.1"


def test_a_port_in_use_is_a_config_error_naming_server() -> None:
    first = StatusServer(ServerConfig(port=0))
    try:
        with pytest.raises(ConfigError) as err:
            StatusServer(ServerConfig(port=first.port))
        assert err.value.errors[0][0] == "server"
        assert "cannot listen" in err.value.errors[0][1]
    finally:
        first.stop()


# -- the same endpoints through `sessions run` in this process ---------------------------

SCENARIO: dict[str, Any] = {}


def scenario_app(system: sessions.System) -> None:
    """The app of test_run_serves_the_endpoints: records what the endpoints said."""
    url = SCENARIO["url"]
    SCENARIO["first"] = fetch(f"{url}/healthz")[0]
    controls("a").fail_connects = 10**9
    system.get("a").break_it()
    wait_until(lambda: fetch(f"{url}/healthz")[0] == 503, what="503")
    SCENARIO["down"] = json.loads(fetch(f"{url}/healthz")[2])
    controls("a").fail_connects = 0
    wait_until(lambda: fetch(f"{url}/healthz")[0] == 200, what="200 again")
    SCENARIO["metrics"] = fetch(f"{url}/metrics")[2]
    SCENARIO["status"] = json.loads(fetch(f"{url}/status")[2])


def test_run_serves_the_endpoints_while_the_app_runs(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    probe = StatusServer(ServerConfig(port=0))  # find a free port
    port = probe.port
    probe.stop()
    SCENARIO.clear()
    SCENARIO["url"] = f"http://127.0.0.1:{port}"
    path = tmp_path / "run.toml"
    path.write_text(f"""
[server]
bind = "127.0.0.1"
port = {port}

[supervisor]
max_restarts = 10000
period = 1.0
backoff = {{ initial = 0.01, max = 0.05 }}

[resources.a]
kind = "tests.kinds:Probe"
""")
    code = _cli.main(["run", str(path), "--app", "tests.test_server:scenario_app"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"serving http://127.0.0.1:{port}" in err
    assert SCENARIO["first"] == 200
    assert SCENARIO["down"]["reasons"][0]["resource"] == "a"
    assert "sessions_calls" in families(SCENARIO["metrics"])
    assert SCENARIO["status"]["children"][0]["name"] == "a"
    with pytest.raises(urllib.error.URLError):  # the server is gone with the system
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


# -- fault injection (POST /faults/NAME, [server] faults = true) --------------------------


def post(url: str, body: Any) -> tuple[int, Any]:
    """(status, JSON answer) of one POST."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        data = err.read()
        return err.code, json.loads(data) if data.startswith(b"{") else data.decode()


@pytest.fixture
def faultable() -> Iterator[Served]:
    system = sessions.start(config(["a"], max_restarts=100, period=1.0))
    server = StatusServer(ServerConfig(port=0, faults=True))
    server.start(system)
    try:
        yield system, server.url
    finally:
        server.stop()
        system.stop()


def test_faults_are_refused_unless_enabled(served: Served) -> None:
    _, url = served
    code, answer = post(f"{url}/faults/a", {"fault": "fail_calls"})
    assert code == 405 and "GET and HEAD only" in answer


def test_fault_injection_over_http(faultable: Served) -> None:
    system, url = faultable
    a = system.get("a")
    assert post(f"{url}/faults/a", {"fault": "fail_calls", "count": 2}) == (
        200, {"resource": "a", "pending": {"calls": 2, "connects": 0, "stalls": 0}})
    for _ in range(2):
        with pytest.raises(sessions.ResourceFault):
            a.echo(1).result(5)
        wait_until(lambda: a.state == "running", what="a back")
    assert a.restarts == 2
    code, answer = post(f"{url}/faults/a", {"fault": "stall"})
    assert code == 200 and answer["pending"]["stalls"] == 1
    held = a.echo("held")
    wait_until(lambda: system.faults("a").pending["stalls"] == 0, what="the call held")
    assert not held.done()
    assert post(f"{url}/faults/a", {"fault": "release"}) == (
        200, {"resource": "a", "released": 1})
    assert held.result(5) == "held"
    assert post(f"{url}/faults/a", {"fault": "drop_connection"}) == (
        200, {"resource": "a", "dropped": 1})
    wait_until(lambda: a.restarts == 3 and a.state == "running", what="a reconnected")


def test_bad_fault_requests_say_what_was_wrong(faultable: Served) -> None:
    _, url = faultable
    code, answer = post(f"{url}/faults/a", {"fault": "explode"})
    assert code == 400 and "fail_calls, fail_connects, stall" in answer["error"]
    code, answer = post(f"{url}/faults/a", {"fault": "fail_calls", "count": 0})
    assert code == 400 and "n must be a positive int, got 0" in answer["error"]
    code, answer = post(f"{url}/faults/nope", {"fault": "fail_calls"})
    assert code == 404 and "no resource named 'nope'" in answer["error"]
    code, answer = post(f"{url}/status", {"fault": "fail_calls"})
    assert code == 405 and "POST only to /faults/NAME" in answer


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.5", False), ("192.168.1.20", False), ("fe80::1%eth0", False),
    ("::ffff:10.0.0.5", False), ("2001:db8::1", False), ("not an address", False),
])
def test_only_loopback_peers_may_inject(address: str, loopback: bool) -> None:
    from sessions._tools.server import loopback_peer  # noqa: PLC0415

    assert loopback_peer(address) is loopback
