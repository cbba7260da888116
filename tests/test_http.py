"""The ``http`` kind against a real local HTTP server (``tests.servers.HttpServer``).

Faults are real: the server drops or resets connections (``mode``), is stopped and
started again on the same port, or is killed with a request in flight. Waiting is on
futures, events and conditions with deadlines; no test asserts on elapsed time.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import re
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from urllib3.util.retry import Retry

import sessions
from sessions._tools.cli import main
from sessions.actors.http import HTTPActor
from sessions.http import HTTPSessionManager
from sessions.messages import ChildStarted, CircuitChanged
from tests.servers import HttpServer
from tests.support import FakeClock, Recorder, wait_until

MakeServer = Callable[..., HttpServer]


def http_config(base_url: str, **options: Any) -> dict[str, Any]:
    """One ``http`` resource named ``api``; restarts fast and without jitter."""
    return {
        "supervisor": {
            "max_restarts": 20,
            "backoff": {"initial": 0.01, "max": 0.05, "jitter": 0.0},
        },
        "resources": {"api": {"kind": "http", "base_url": base_url, **options}},
    }


def post_counted(api: sessions.Handle, path: str) -> tuple[str, Any]:
    """One POST; ("ok", server's count) if acknowledged, ("error", exc) otherwise."""
    try:
        response = api.post(path, json={"n": 1}).result()
    except requests.ConnectionError as exc:
        return "error", exc
    assert response.status_code == 200
    return "ok", response.json()["count"]


# -- calls ------------------------------------------------------------------------------


def test_methods_headers_and_json_bodies(http_server: HttpServer) -> None:
    cfg = http_config(http_server.url, headers={"X-Client": "sessions-test"})
    with sessions.start(cfg) as system:
        api = system.get("api")
        for method in ("get", "post", "put", "patch", "delete", "options"):
            response = api.call(
                method, "/echo", json={"method": method}, headers={"X-Call": method}
            ).result()
            assert isinstance(response, requests.Response)
            assert response.status_code == 200
            echo = response.json()
            assert echo["method"] == method.upper()
            assert echo["headers"]["X-Client"] == "sessions-test"  # from the config
            assert echo["headers"]["X-Call"] == method  # per call
            assert json.loads(echo["body"]) == {"method": method}
        head = api.head("/echo").result()
        assert head.status_code == 200 and head.content == b""
        generic = api.request("get", "/echo", params={"q": "a b"}).result()
        assert generic.json()["path"] == "/echo?q=a+b"


def test_responses_are_read_and_detached_from_the_connection(http_server: HttpServer) -> None:
    with sessions.start(http_config(http_server.url)) as system:
        response = system.get("api").get("/echo").result()
    # The system is stopped and its Session closed: the response is plain data.
    assert response.raw is None
    assert response.json()["method"] == "GET"
    assert response.text.startswith("{")
    assert list(response.iter_content(8))  # served from the read body
    assert response.request.method == "GET"
    assert response.ok and response.elapsed.total_seconds() >= 0


def test_statuses_are_responses_never_errors(http_server: HttpServer) -> None:
    cfg = http_config(http_server.url, breaker={"failures": 1, "reset_timeout": 60})
    with sessions.start(cfg) as system:
        api = system.get("api")
        for code in (201, 204, 301, 404, 429, 500, 503):
            response = api.get(f"/status/{code}", allow_redirects=False).result()
            assert response.status_code == code
        with pytest.raises(requests.HTTPError):
            api.get("/status/500").result().raise_for_status()  # the caller's choice
        assert api.circuit == "closed"  # statuses are not failures
        assert api.restarts == 0 and api.state == "running"


def test_paths_join_base_url_and_foreign_origins_are_refused(http_server: HttpServer) -> None:
    cfg = http_config(f"{http_server.url}/count", breaker={"failures": 1, "reset_timeout": 60})
    with sessions.start(cfg) as system:
        api = system.get("api")
        assert api.get("a").result().json()["path"] == "/count/a"
        assert api.get("/b").result().json()["path"] == "/count/b"
        assert api.get().result().json()["path"] == "/count"
        same_origin = http_server.url_for("/echo")
        assert api.get(same_origin).result().json()["path"] == "/echo"
        for foreign in (
            "http://example.invalid/x",
            "//example.invalid/x",
            f"https://127.0.0.1:{http_server.port}/echo",
        ):
            with pytest.raises(ValueError, match="not on this resource's origin"):
                api.get(foreign).result()
        assert api.url("/x?y=1").result() == f"{http_server.url}/count/x?y=1"
        assert api.circuit == "closed"  # caller errors do not count
        assert api.restarts == 0


def _redirect_first_hop(location: str) -> Callable[..., requests.Response]:
    """A response hook turning the answer to ``/echo`` into a 302 to ``location``."""

    def hook(response: requests.Response, **_: Any) -> requests.Response:
        if response.url.endswith("/echo"):
            response.status_code = 302
            response.headers["Location"] = location
        return response

    return hook


def test_configured_headers_and_auth_stay_on_the_origin_across_redirects(
    http_server: HttpServer, make_http_server: MakeServer
) -> None:
    other = make_http_server()
    cfg = http_config(
        http_server.url, headers={"X-API-Key": "key-s3cr3t"}, auth={"token": "tok-s3cr3t"}
    )
    with sessions.start(cfg) as system:
        api = system.get("api")
        hook = _redirect_first_hop(http_server.url_for("/echo?hop=2"))
        same = api.get("/echo", hooks={"response": hook}).result()
        assert same.json()["path"] == "/echo?hop=2"
        assert same.json()["headers"]["X-API-Key"] == "key-s3cr3t"
        assert same.json()["headers"]["Authorization"] == "Bearer tok-s3cr3t"
        assert [r.status_code for r in same.history] == [302]
        assert same.history[0].raw is None  # the history is detached too
        hook = _redirect_first_hop(other.url_for("/echo?hop=2"))
        away = api.get("/echo", hooks={"response": hook}, headers={"X-Call": "1"}).result()
        headers = away.json()["headers"]
        assert away.url == other.url_for("/echo?hop=2")
        assert "X-API-Key" not in headers and "Authorization" not in headers
        assert headers["X-Call"] == "1"  # the caller's own per-call header is kept


def test_unbounded_timeouts_and_streaming_are_refused(http_server: HttpServer) -> None:
    with sessions.start(http_config(http_server.url)) as system:
        api = system.get("api")
        for bad in (None, (1, None), 0, -1, (1, 2, 3), "5"):
            with pytest.raises(ValueError, match="timeout must be"):
                api.get("/echo", timeout=bad).result()
        with pytest.raises(ValueError, match="stream=True"):
            api.get("/echo", stream=True).result()
        with pytest.raises(TypeError):
            api.get("/echo", no_such_argument=1).result()
        assert api.get("/echo", timeout=(2, 3)).result().status_code == 200
        assert api.restarts == 0


def test_basic_and_bearer_auth_from_the_environment(
    http_server: HttpServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SESSIONS_TEST_API_USER", "alice")
    monkeypatch.setenv("SESSIONS_TEST_API_PASS", "pw-s3cr3t-basic")
    monkeypatch.setenv("SESSIONS_TEST_API_TOKEN", "tok-s3cr3t-bearer")
    cfg = http_config(
        http_server.url,
        auth={"username": "${SESSIONS_TEST_API_USER}", "password": "${SESSIONS_TEST_API_PASS}"},
    )
    cfg["resources"]["bearer"] = {
        "kind": "http",
        "base_url": http_server.url,
        "auth": {"token": "${SESSIONS_TEST_API_TOKEN}"},
    }
    rec = Recorder()
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        basic = system.get("api").get("/echo").result().json()["headers"]["Authorization"]
        assert basic == "Basic " + base64.b64encode(b"alice:pw-s3cr3t-basic").decode()
        bearer = system.get("bearer").get("/echo").result().json()["headers"]["Authorization"]
        assert bearer == "Bearer tok-s3cr3t-bearer"
        http_server.mode = "reset"  # errors, and a fault, while the secrets are in use
        with pytest.raises(requests.ConnectionError):
            system.get("api").get("/echo").result()
        with pytest.raises(sessions.ResourceFault):
            system.get("bearer").transaction(
                _close_pools_then_get, http_server.url_for("/echo")
            ).result()
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        http_server.mode = "normal"
        visible = json.dumps(system.status()) + repr(rec.events) + caplog.text
    assert "s3cr3t" not in visible


def test_auth_and_base_url_mistakes_name_keys_never_secrets() -> None:
    for auth, message in (
        ({"username": "u", "password": "pw-s3cr3t", "token": "tok-s3cr3t"}, "not both"),
        ({"username": "u"}, "needs both username and password"),
        ({"password": "pw-s3cr3t"}, "needs both username and password"),
        ({}, "give username and password, or token"),
        ({"user": "u", "password": "pw-s3cr3t"}, "unknown key"),
    ):
        with pytest.raises(sessions.ConfigError) as info:
            sessions.start(http_config("http://127.0.0.1:1", auth=auth))
        assert message in str(info.value)
        assert "s3cr3t" not in str(info.value)
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start(http_config("http://bob:pw-s3cr3t@127.0.0.1:1/"))
    assert "must not contain credentials" in str(info.value)
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"base_url": "ftp://127.0.0.1/"}, "resources.api"),
        ({"base_url": "http:///nohost"}, "resources.api"),
        ({"base_url": "http://127.0.0.1/?a=1"}, "resources.api"),
        ({"timeout": 0}, "resources.api.timeout"),
        ({"timeout": [1, 2, 3]}, "resources.api.timeout"),
        ({"timeout": [1, -2]}, "resources.api.timeout"),
        ({"retries": -1}, "resources.api.retries"),
        ({"retries": {"totl": 1}}, "resources.api.retries"),
        ({"retries": {"status_forcelist": [700]}}, "resources.api.retries"),
        ({"verfy": False}, "resources.api.verfy"),
    ],
)
def test_invalid_options_are_config_errors(options: dict[str, Any], path: str) -> None:
    cfg = http_config("http://127.0.0.1:1")
    cfg["resources"]["api"].update(options)
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start(cfg)
    assert info.value.path.startswith(path)


# -- timeouts and connection errors go to the caller ------------------------------------


def test_a_read_timeout_goes_to_the_caller_and_the_actor_keeps_running(
    make_http_server: MakeServer,
) -> None:
    server = make_http_server()
    rec = Recorder()
    cfg = http_config(server.url, timeout=[3.05, 0.3])
    with sessions.start(cfg) as system:
        system.subscribe(rec)
        api = system.get("api")
        with pytest.raises(requests.ReadTimeout):
            api.get("/slow?seconds=60").result()
        with pytest.raises(requests.ReadTimeout):  # a per-call timeout overrides it
            api.get("/slow?seconds=60", timeout=(3.05, 0.2)).result()
        assert api.get("/echo").result().status_code == 200
        assert api.restarts == 0 and api.state == "running"
        assert not [e for e in rec.events if not isinstance(e, CircuitChanged)]
    server.kill()  # ends the slow handlers at once


@pytest.mark.parametrize("mode", ["drop", "reset"])
def test_server_closing_connections_gives_clear_errors_then_recovers(
    http_server: HttpServer, mode: str
) -> None:
    with sessions.start(http_config(http_server.url)) as system:
        api = system.get("api")
        assert api.get("/echo").result().status_code == 200  # a keep-alive connection
        http_server.mode = mode  # type: ignore[assignment]
        for _ in range(3):  # "aborted", "reset by peer", "closed without response"
            with pytest.raises(requests.ConnectionError):
                api.get("/count/g").result()
            with pytest.raises(requests.ConnectionError):
                api.post("/count/p", json={}).result()
        http_server.mode = "normal"
        assert api.get("/echo").result().status_code == 200
        assert api.restarts == 0 and api.state == "running"
        # Nothing was sent twice: with the default retries = 0 no request is re-sent.
        assert http_server.counts["/count/g"] <= 3
        assert http_server.counts["/count/p"] <= 3


def test_a_dropped_post_is_never_sent_twice(http_server: HttpServer) -> None:
    """In "drop" mode the server reads (and counts) each request, then closes without
    answering: every POST is counted exactly once, and none is acknowledged. An
    idempotent GET is retried when retries are configured; the POST still is not."""
    cfg = http_config(http_server.url, retries=2)
    with sessions.start(cfg) as system:
        api = system.get("api")
        http_server.mode = "drop"
        outcomes = [post_counted(api, "/count/p") for _ in range(5)]
        assert [kind for kind, _ in outcomes] == ["error"] * 5
        assert http_server.counts["/count/p"] == 5
        with pytest.raises(requests.ConnectionError):
            api.get("/count/g").result()
        assert http_server.counts["/count/g"] == 3  # sent, then retried twice
        http_server.mode = "normal"
        assert post_counted(api, "/count/p") == ("ok", 6)


def test_server_stopped_and_restarted(make_http_server: MakeServer) -> None:
    server = make_http_server()
    with sessions.start(http_config(server.url, call_timeout=10)) as system:
        api = system.get("api")
        assert post_counted(api, "/count/w") == ("ok", 1)
        server.stop()
        for _ in range(3):  # refused at once: a clear error, well within call_timeout
            with pytest.raises(requests.ConnectionError, match="Connection refused"):
                api.post("/count/w", json={}).result()
        server.start()
        assert post_counted(api, "/count/w") == ("ok", 2)
        server.kill()
        with pytest.raises(requests.ConnectionError):
            api.get("/echo").result()
        server.start()
        assert api.get("/echo").result().status_code == 200
        assert api.restarts == 0
    assert server.counts["/count/w"] == 2  # the refused POSTs never reached it


def test_killed_with_a_request_in_flight(make_http_server: MakeServer) -> None:
    server = make_http_server()
    cfg = http_config(server.url, timeout=[3.05, 120], call_timeout=150)
    with sessions.start(cfg) as system:
        api = system.get("api")
        slow = api.get("/slow?seconds=120")
        wait_until(lambda: server.active_requests == 1, what="the slow request to arrive")
        server.kill()
        with pytest.raises(requests.ConnectionError):
            slow.result()
        server.start()
        assert api.get("/echo").result().status_code == 200
        assert api.restarts == 0


def test_outage_under_load_loses_no_acknowledged_post(make_http_server: MakeServer) -> None:
    """Four threads POST through a stop and a start. Every call resolves with a 200 or
    a ConnectionError; every acknowledged POST was counted once by the server, and no
    POST was sent twice."""
    server = make_http_server()
    done = threading.Event()
    lock = threading.Lock()
    acked: list[int] = []
    errors: list[BaseException] = []
    attempts = [0]

    def writer(api: sessions.Handle) -> None:
        while not done.is_set():
            with lock:
                attempts[0] += 1
            kind, value = post_counted(api, "/count/w")
            with lock:
                (acked if kind == "ok" else errors).append(value)

    with sessions.start(http_config(server.url, pool_size=2, call_timeout=10)) as system:
        api = system.get("api")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(writer, api) for _ in range(4)]
            try:
                wait_until(lambda: len(acked) >= 20, what="writes before the outage")
                server.stop()
                wait_until(lambda: len(errors) >= 10, what="errors during the outage")
                before = len(acked)
                server.start()
                wait_until(lambda: len(acked) >= before + 20, what="writes after the outage")
            finally:
                done.set()
            for worker in workers:
                worker.result(30)  # nothing but 200s and ConnectionErrors
        assert api.restarts == 0
    assert len(set(acked)) == len(acked)  # each acknowledged POST counted once
    assert len(acked) <= server.counts["/count/w"] <= attempts[0]


# -- circuit breaker, pools, retries ----------------------------------------------------


def test_breaker_opens_against_a_stopped_server_and_closes_after(
    make_http_server: MakeServer,
) -> None:
    server = make_http_server()
    clock = FakeClock()
    rec = Recorder()
    cfg = http_config(server.url, breaker={"failures": 3, "reset_timeout": 30})
    with sessions.start(cfg, clock=clock) as system:
        system.subscribe(rec)
        api = system.get("api")
        assert api.get("/echo").result().status_code == 200
        server.stop()
        for _ in range(3):
            with pytest.raises(requests.ConnectionError):
                api.get("/echo").result()
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "open")
        refused = api.get("/echo")
        assert refused.done()
        with pytest.raises(sessions.ResourceUnavailable, match="circuit open"):
            refused.result(0)
        server.start()
        with pytest.raises(sessions.ResourceUnavailable):  # still open until the reset
            api.get("/echo").result(0)
        clock.advance(31)
        assert api.get("/echo").result().status_code == 200  # the probe
        rec.wait_for(lambda e: isinstance(e, CircuitChanged) and e.state == "closed")
        assert api.circuit == "closed"
        assert api.restarts == 0  # the breaker did the work, not restarts


def test_pool_of_three_sessions_serves_eight_threads(http_server: HttpServer) -> None:
    with sessions.start(http_config(http_server.url, pool_size=3)) as system:
        api = system.get("api")
        served = {
            api.transaction(lambda _s: threading.current_thread().name).result() for _ in range(30)
        }
        assert served == {"sessions-api#0", "sessions-api#1", "sessions-api#2"}
        sessions_seen = {api.transaction(id).result() for _ in range(30)}
        assert len(sessions_seen) == 3  # one Session per member

        def caller(_: int) -> list[int]:
            return [api.post("/count/pool", json={}).result().json()["count"] for _ in range(12)]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            counts = [c for batch in pool.map(caller, range(8)) for c in batch]
        assert sorted(counts) == list(range(1, 97))
        assert http_server.counts["/count/pool"] == 96
        assert http_server.connections_accepted <= 3  # each Session keeps its connection


def test_retries_become_a_urllib3_retry_on_the_adapter(http_server: HttpServer) -> None:
    retries = {"total": 2, "status_forcelist": [503], "backoff_factor": 0}
    with sessions.start(http_config(http_server.url, retries=retries)) as system:
        api = system.get("api")

        def mounted(session: requests.Session) -> tuple[Any, ...]:
            retry = session.get_adapter(http_server.url).max_retries
            assert isinstance(retry, Retry)
            return retry.total, tuple(retry.status_forcelist or ()), retry.raise_on_status

        assert api.transaction(mounted).result() == (2, (503,), False)
        response = api.get("/status/503").result()
        assert response.status_code == 503  # the last response, not a RetryError
        assert http_server.counts["/status/503"] == 3
        assert api.post("/status/503").result().status_code == 503
        assert http_server.counts["/status/503"] == 4  # POST is not retried

    with sessions.start(http_config(http_server.url, retries=4)) as system:
        total = (
            system.get("api")
            .transaction(lambda s: s.get_adapter(http_server.url).max_retries.total)
            .result()
        )
        assert total == 4
    with sessions.start(http_config(http_server.url)) as system:
        default = (
            system.get("api")
            .transaction(
                lambda s: (
                    s.get_adapter(http_server.url).max_retries.total,
                    s.get_adapter(http_server.url).max_retries.read,
                )
            )
            .result()
        )
        assert default == (0, False)  # requests' own default


# -- the one fault ------------------------------------------------------------------------


def _close_pools_then_get(session: requests.Session, url: str) -> requests.Response:
    """Close the Session's connection pools under it, then use it."""
    pools = session.get_adapter(url).poolmanager.pools  # type: ignore[attr-defined]
    for key in pools.keys():  # noqa: SIM118  # the container refuses plain iteration
        pools[key].close()
    return session.get(url)


def test_a_closed_pool_is_a_fault_and_the_restart_builds_a_new_session(
    http_server: HttpServer,
) -> None:
    rec = Recorder()
    with sessions.start(http_config(http_server.url)) as system:
        system.subscribe(rec)
        api = system.get("api")
        assert api.get("/echo").result().status_code == 200  # opens a pool
        before = api.transaction(id).result()
        with pytest.raises(sessions.ResourceFault, match="outcome is unknown") as info:
            api.transaction(_close_pools_then_get, http_server.url_for("/echo")).result()
        assert isinstance(info.value.__cause__, requests.ConnectionError)
        rec.wait_for(lambda e: isinstance(e, ChildStarted) and e.restarts == 1)
        assert api.get("/echo").result().status_code == 200
        assert api.transaction(id).result() != before
        assert api.restarts == 1


# -- the seed's manager, and the optional extra --------------------------------------------


def test_seed_manager_async_with(http_server: HttpServer) -> None:
    async def main() -> tuple[Any, int]:
        async with HTTPSessionManager(base_url=http_server.url) as client:
            response = await client.get("/echo")
            status = (await client.post("/count/m", json={"a": 1})).status_code
            return response.json(), status

    echo, status = asyncio.run(main())
    assert echo["method"] == "GET" and status == 200


def test_seed_manager_with_and_options(http_server: HttpServer) -> None:
    manager = HTTPSessionManager(
        base_url=http_server.url, call_timeout=2.0, headers={"X-Seed": "1"}, pool_size=2
    )
    with manager as client:
        assert client.kind == "http" and client.name == "http"
        assert client.get("/echo").result().json()["headers"]["X-Seed"] == "1"
        assert manager.system is not None
        options = manager.system.config.resources["http"].options
        assert tuple(options["timeout"]) == (2.0, 2.0)  # the read timeout follows call_timeout
    assert client.state == "stopped"


def test_actor_constructor_checks_its_options() -> None:
    actor = HTTPActor("http://127.0.0.1:8080/api", retries={"total": 1}, timeout=4)
    assert actor.config.timeout == 4
    assert actor.url("/v1") == "http://127.0.0.1:8080/api/v1"
    assert actor.url("?x=1") == "http://127.0.0.1:8080/api?x=1"
    with pytest.raises(ValueError, match="retries"):
        HTTPActor("http://127.0.0.1:8080", retries={"total": -1})


def test_module_imports_without_requests() -> None:
    """The manager can be exported from ``sessions`` without the ``http`` extra; using
    the kind without it is an ImportError naming requests."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["requests"] = None
        from sessions.actors.http import HTTPActor
        from sessions.http import HTTPSessionManager
        actor = HTTPActor("http://127.0.0.1:1")
        try:
            actor.connect()
        except ImportError as exc:
            print("ImportError", "requests" in str(exc))
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
    assert done.stdout.strip() == "ImportError True"


# -- abort and bounded waits (issue 9) ----------------------------------------------------


class OnItsThread:
    """The actor driven as its runtime drives it: every hook and call on one thread of
    its own (a plain executor thread), ``abort()`` from the test's thread."""

    def __init__(self, actor: HTTPActor) -> None:
        self.actor = actor
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="http-actor")

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._thread.submit(fn, *args, **kwargs)

    def connect(self) -> requests.Session:
        def connect() -> requests.Session:
            self.actor.resource = self.actor.connect()
            return self.actor.resource

        session: requests.Session = self.run(connect).result(timeout=30)
        return session

    def disconnect(self) -> None:
        resource, self.actor.resource = self.actor.resource, None
        self.run(self.actor.disconnect, resource).result(timeout=30)

    def close(self) -> None:
        self._thread.shutdown(wait=True)


@pytest.mark.parametrize("retries", [0, {"total": 3, "allowed_methods": ["GET"]}])
def test_abort_wakes_a_request_in_flight_and_disconnect_works(
    make_http_server: MakeServer, retries: Any
) -> None:
    server = make_http_server()
    actor = HTTPActor(server.url, timeout=(3.05, 60.0), retries=retries)
    runner = OnItsThread(actor)
    try:
        session = runner.connect()
        assert runner.run(actor.get, "/echo").result(timeout=10).status_code == 200
        blocked = runner.run(actor.get, "/slow", params={"seconds": 30})
        # The /slow request itself (the /echo one may still be finishing its handler).
        wait_until(lambda: server.counts["/slow"] == 1, what="the request to reach the server")
        actor.abort(session)  # from this thread, as the runtime does
        with pytest.raises(requests.ConnectionError) as info:
            blocked.result(timeout=10)
        assert actor.counts_as_failure(info.value)
        assert server.counts["/slow"] == 1  # a retry, if allowed, never reached the server
        actor.abort(session)  # idempotent
        # The aborted Session reaches the server no more: its pools are closed, a fault.
        with pytest.raises(requests.ConnectionError) as closed:
            runner.run(actor.get, "/echo").result(timeout=10)
        assert actor.is_fault(closed.value)
        runner.disconnect()
        actor.abort(session)  # after disconnect: no error
        runner.connect()  # the next incarnation is a normal Session
        assert runner.run(actor.get, "/echo").result(timeout=10).status_code == 200
        runner.disconnect()
    finally:
        runner.close()
        server.kill()  # ends the slow handler at once


def test_abort_reaches_a_request_through_a_proxy(make_http_server: MakeServer) -> None:
    """Connections of the adapter's proxy managers are tracked too (the test server
    serves a proxied request line, ``GET http://origin/slow``, as its own path)."""
    proxy = make_http_server()
    actor = HTTPActor("http://api.invalid", timeout=(3.05, 60.0), trust_env=False)
    runner = OnItsThread(actor)
    try:
        session = runner.connect()
        blocked = runner.run(
            actor.get, "/slow", params={"seconds": 30}, proxies={"http": proxy.url}
        )
        wait_until(lambda: proxy.active_requests == 1, what="the request to reach the proxy")
        actor.abort(session)
        with pytest.raises(requests.ConnectionError):
            blocked.result(timeout=10)
        runner.disconnect()
    finally:
        runner.close()
        proxy.kill()


def test_abort_before_a_session_exists_does_nothing() -> None:
    actor = HTTPActor("http://api.invalid")
    actor.abort(None)
    session = actor.connect()  # no I/O
    actor.abort(session)
    actor.abort(session)
    actor.disconnect(session)


def test_infinite_timeouts_are_refused_too(http_server: HttpServer) -> None:
    with pytest.raises(sessions.ConfigError, match=r"resources\.api\.timeout"):
        sessions.start(http_config(http_server.url, timeout=float("inf")))
    with pytest.raises(sessions.ConfigError, match=r"resources\.api\.timeout"):
        sessions.start(http_config(http_server.url, timeout=[3.05, float("inf")]))
    with sessions.start(http_config(http_server.url)) as system:
        with pytest.raises(ValueError, match="infinity"):
            system.get("api").get("/echo", timeout=float("inf")).result()
        with pytest.raises(ValueError, match="infinity"):
            system.get("api").get("/echo", timeout=(1, float("inf"))).result()


def test_a_stalled_request_is_aborted_and_the_resource_serves_again(
    make_http_server: MakeServer,
) -> None:
    """End to end: the runtime's stall watchdog calls abort(); the stuck thread ends at
    once (the autouse fixture fails the test if it outlives it) instead of in 30 s."""
    server = make_http_server()
    cfg = http_config(server.url, timeout=[3.05, 60.0], call_timeout=10.0, stall_timeout=0.5)
    try:
        with sessions.start(cfg) as system:
            api = system.get("api")
            with pytest.raises(sessions.ResourceFault, match="stalled"):
                api.get("/slow?seconds=30").result()
            assert api.get("/echo").result().status_code == 200
            assert api.restarts == 1
            assert system.status()["children"][0]["abandoned"] == 0
    finally:
        server.kill()


# -- sessions check --connect ------------------------------------------------------------


def test_check_connect_sends_a_request_and_says_what_it_checked(
    http_server: HttpServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """connect() does no I/O (the API may be down at start), so `check --connect` would
    report a dead port as connected: the kind's check_connection() sends HEAD base_url
    through the Session and reports the status line, or the reason there was no answer."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead = free.getsockname()[1]  # closed again: nothing listens there
    path = tmp_path / "api.toml"
    path.write_text(
        f'[resources.up]\nkind = "http"\nbase_url = "{http_server.url_for("/v1/")}"\n'
        f'[resources.down]\nkind = "http"\nbase_url = "http://127.0.0.1:{dead}/v1/"\n',
        encoding="utf-8",
    )
    assert main(["check", str(path), "--connect"]) == 1
    out = capsys.readouterr().out
    assert re.search(
        rf"ok +up +http +[0-9.]+s  connected: HEAD {re.escape(http_server.url_for('/v1/'))} "
        r"answered \d{3} ",
        out,
    ), out
    assert re.search(
        rf"FAILED +down +http +[0-9.]+s  ConnectionError: HEAD http://127.0.0.1:{dead}/v1/ "
        r"got no answer: NewConnectionError: .*Connection refused",
        out,
    ), out
    assert "1 of 2 resources failed to connect: down" in out
