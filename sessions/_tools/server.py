"""The read-only HTTP endpoints of ``sessions run``: ``/healthz``, ``/status``, ``/metrics``.

Why the standard library's ``ThreadingHTTPServer``: the endpoints are three small
GETs for probes and scrapers, and the core must not grow a web framework
dependency for them. Each request gets a short-lived thread, so a slow scraper
never delays a health probe; the serving loop runs on one daemon thread named
``sessions-http`` that :meth:`StatusServer.stop` shuts down and joins.

Nothing here writes, unless ``[server] faults = true``: then ``POST /faults/NAME``
injects a fault into resource NAME (``sessions fault``), accepted from a loopback
address only, whatever the bind address, so a monitoring network never gets control of
the system. Off by default; meant for rehearsing failures on a staging controller.

``[server]`` is a top-level table of the config file (``bind``, ``port``), validated
with the rest as ``SystemConfig.server``; :func:`parse_server` validates a table on its
own.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from sessions._config import ServerConfig, errors_from
from sessions._errors import ConfigError
from sessions._redact import redact
from sessions._tools.metrics import CONTENT_TYPE, MetricsCollector, MetricsUnavailable, resources

if TYPE_CHECKING:
    from sessions._runtime.inject import InjectedStall
    from sessions._system import System

__all__ = ["ServerConfig", "StatusServer", "health", "parse_server"]

log = logging.getLogger("sessions.http")

ENDPOINTS = ("/healthz", "/status", "/metrics")

FAULTS = ("fail_calls", "fail_connects", "stall", "release", "drop_connection", "clear")
"""What ``POST /faults/NAME`` takes as ``{"fault": ..., "count": n}``: the
``FaultInjector`` methods; ``stall`` holds the next call until ``release``."""


def loopback_peer(address: str) -> bool:
    """Whether a client ``address`` is one of this host's loopback addresses (IPv4,
    IPv6, or IPv4 mapped into IPv6)."""
    try:
        peer = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return peer.is_loopback


def inject(system: System, stalls: dict[str, list[InjectedStall]], name: str,
           request: Any) -> tuple[int, dict[str, Any]]:
    """One fault injection asked over HTTP: (status, JSON answer). ``stalls`` keeps the
    stalls made here per resource, for a later ``release``."""
    if not isinstance(request, dict) or request.get("fault") not in FAULTS:
        return HTTPStatus.BAD_REQUEST, {"error": f"expected {{\"fault\": one of "
                                        f"{', '.join(FAULTS)}, \"count\": n}}"}
    fault, count = request["fault"], request.get("count", 1)
    try:
        faults = system.faults(name)
        if fault == "fail_calls":
            faults.fail_calls(count)
        elif fault == "fail_connects":
            faults.fail_connects(count)
        elif fault == "stall":
            stalls.setdefault(name, []).append(faults.stall_next_call())
        elif fault == "release":
            held = stalls.pop(name, [])
            for stall in held:
                stall.release()
            return HTTPStatus.OK, {"resource": name, "released": len(held)}
        elif fault == "drop_connection":
            return HTTPStatus.OK, {"resource": name, "dropped": faults.drop_connection()}
        else:
            faults.clear()
            for stall in stalls.pop(name, []):
                stall.release()
    except KeyError as err:
        return HTTPStatus.NOT_FOUND, {"error": str(err.args[0])}
    except ValueError as err:
        return HTTPStatus.BAD_REQUEST, {"error": str(err)}
    return HTTPStatus.OK, {"resource": name, "pending": faults.pending}


def parse_server(raw: Any, path: str = "server") -> ServerConfig:
    """Validate a ``[server]`` table; ``ConfigError`` with ``server.*`` paths otherwise."""
    if not isinstance(raw, Mapping):
        raise ConfigError([(path, f"expected a table, got {raw!r}")])
    try:
        return ServerConfig.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(errors_from(exc, path, dict(raw), ServerConfig)) from None


def health(system: System) -> tuple[int, dict[str, Any]]:
    """``/healthz``: 200 when every permanent resource is running, else 503 and why.

    ``transient`` and ``temporary`` resources may legitimately be stopped, so they do
    not make the system unhealthy. A pool counts as running while any member is (its
    handle serves calls).
    """
    reasons: list[dict[str, Any]] = []
    if system.state != "running":
        reasons.append(
            {
                "system": system.state,
                "reason": redact(system.failure or f"the system is {system.state}"),
            }
        )
    down: list[tuple[str, str]] = []
    for name, spec in system.config.resources.items():
        if spec.restart != "permanent":
            continue
        try:
            state = system.get(name).state
        except KeyError:  # a resource terminated and removed meanwhile
            continue
        if state != "running":
            down.append((name, state))
    if down:  # the status tree (with the faults) only when there is something to explain
        faults = {entry["name"]: entry.get("last_fault") for entry in resources(system.status())}
        reasons += [{"resource": name, "state": state, "last_fault": faults.get(name)}
                    for name, state in down]
    if reasons:
        return HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "reasons": reasons}
    return HTTPStatus.OK, {"status": "ok"}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    system: System
    metrics: MetricsCollector
    faults = False
    """``[server] faults``: POST /faults/NAME accepted (from loopback only)."""
    stalls: dict[str, list[InjectedStall]]
    """Stalls injected over HTTP, by resource, until released (under faults_lock)."""
    faults_lock: threading.Lock


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    server_version = "sessions"

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        system = self.server.system
        try:
            if path == "/healthz":
                code, body = health(system)
                self._send(code, _json(body), "application/json", send_body)
            elif path == "/status":
                self._send(HTTPStatus.OK, _json(system.status()), "application/json", send_body)
            elif path == "/metrics":
                try:
                    data = self.server.metrics.exposition()
                except MetricsUnavailable as err:
                    self._send(
                        HTTPStatus.NOT_IMPLEMENTED,
                        f"{err}\n".encode(),
                        "text/plain; charset=utf-8",
                        send_body,
                    )
                    return
                self._send(HTTPStatus.OK, data, CONTENT_TYPE, send_body)
            else:
                self._send(
                    HTTPStatus.NOT_FOUND,
                    f"not found; endpoints: {', '.join(ENDPOINTS)}\n".encode(),
                    "text/plain; charset=utf-8",
                    send_body,
                )
        except Exception as exc:  # a bug must answer 500, not kill the connection silently
            log.exception("GET %s failed", path)
            self._send(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"{redact(exc)}\n".encode(),
                "text/plain; charset=utf-8",
                send_body,
            )

    def _refuse(self) -> None:
        allow = "GET, HEAD, POST (/faults/NAME)" if self.server.faults else "GET, HEAD"
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            b"read-only: GET and HEAD only\n" if not self.server.faults else
            b"GET and HEAD; POST only to /faults/NAME\n",
            "text/plain; charset=utf-8",
            True,
            allow=allow,
        )

    do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if not path.startswith("/faults/") or not self.server.faults:
            self._refuse()
            return
        peer = self.client_address[0]
        if not loopback_peer(peer):
            self._send(HTTPStatus.FORBIDDEN, _json({"error": "fault injection is accepted "
                       "from this host's loopback addresses only"}), "application/json", True)
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"null") if length <= 65536 else None
        except (ValueError, UnicodeDecodeError):
            request = None
        name = urllib.parse.unquote(path.removeprefix("/faults/"))
        log.warning("fault injection from %s: %s %s", peer, name, request)
        with self.server.faults_lock:
            code, body = inject(self.server.system, self.server.stalls, name, request)
        self._send(code, _json(body), "application/json", True)

    def _send(
        self, code: int, body: bytes, content_type: str, send_body: bool, **headers: str
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for key, value in headers.items():
            self.send_header(key.title(), value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Access log to the ``sessions.http`` logger (debug), not to stderr."""
        log.debug("%s %s", self.address_string(), format % args)


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, default=str) + "\n").encode()


class StatusServer:
    """The endpoints of one system on one address.

    Binding happens in the constructor, so a port in use is reported before any
    resource is started; serving starts with :meth:`start`.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        try:
            family = socket.getaddrinfo(config.bind, config.port, type=socket.SOCK_STREAM,
                                        flags=socket.AI_PASSIVE)[0][0]
            server_class = _HTTPServer6 if family == socket.AF_INET6 else _HTTPServer
            self._httpd = server_class((config.bind, config.port), _Handler,
                                       bind_and_activate=True)
        except OSError as err:
            raise ConfigError(
                [("server", f"cannot listen on {config.bind}:{config.port}: {err.strerror or err}")]
            ) from None
        self._thread: threading.Thread | None = None
        self._metrics: MetricsCollector | None = None

    @property
    def port(self) -> int:
        """The port actually bound (differs from the config's when it was 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.config.bind
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self, system: System) -> None:
        """Serve ``system`` on the ``sessions-http`` thread."""
        self._metrics = MetricsCollector(system)
        self._httpd.system = system
        self._httpd.metrics = self._metrics
        self._httpd.faults = self.config.faults
        self._httpd.stalls = {}
        self._httpd.faults_lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="sessions-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread; idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
            with self._httpd.faults_lock:  # a call held over HTTP is let go at stop
                for held in self._httpd.stalls.values():
                    for stall in held:
                        stall.release()
                self._httpd.stalls.clear()
        self._httpd.server_close()
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
