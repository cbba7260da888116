"""The ``sessions`` command line: ``check``, ``run``, ``schema`` and ``demo``.

Why a command line at all: the supervision policy lives in a TOML file, so an
operator needs to validate that file before deploying it (``check``), to run a
program under it with health and metrics endpoints (``run``), and to get editor
completion for it (``schema``), none of which should require writing Python.

Errors meant for the operator are one line each, naming the file and the config
path of the problem (``plant.toml: resources.bus.kind: unknown resource kind``);
``-v`` adds the traceback and the library's INFO log, ``-vv`` its DEBUG log.

Exit codes (the same for every command; see :data:`EXIT_CODES`):

* 0: success (``run``: the app returned, or SIGINT/SIGTERM stopped the system)
* 1: ``run``: the app raised; ``check --connect``: a resource failed to open;
  ``demo``: a call was lost (or the demo's own code raised); any command: an
  unexpected internal error
* 2: the command line or the config is invalid (or ``--app`` cannot be imported,
  or the ``[server]`` port cannot be bound)
* 3: ``run``: the root supervisor gave up (while starting or while running)
* 130: a second SIGINT/SIGTERM forced the exit while stopping
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import ipaddress
import json
import logging
import math
import operator
import os
import re
import signal
import sys
import textwrap
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from pydantic import BaseModel

import sessions
from sessions import _config
from sessions._config import ROOT, ResourceConfig, SupervisorConfig, SystemConfig
from sessions._errors import ConfigError, ResourceFault, ResourceUnavailable
from sessions._redact import describe, redact
from sessions._runtime.kinds import resolve_kind
from sessions._system import System, status_rows
from sessions._tools.check import read_config
from sessions._tools.server import FAULTS, StatusServer, parse_server
from sessions._tools.systemd import SystemdNotifier
from sessions.messages import ChildState, Event, SupervisorGaveUp
from sessions.supervisor._tree import ResourceChild, stall_timeout

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_GAVE_UP = 3
EXIT_FORCED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success; run: the app returned, or SIGINT/SIGTERM stopped the system",
    EXIT_FAILED: "run: the app raised; check --connect: a resource failed to open; "
    "demo: a call was lost (or the demo's own code raised); or an unexpected internal error",
    EXIT_CONFIG: "invalid command line or config (also: --app not importable, server port "
    "not bindable)",
    EXIT_GAVE_UP: "run: the root supervisor gave up",
    EXIT_FORCED: "a second SIGINT/SIGTERM forced the exit while stopping",
}

log = logging.getLogger("sessions.cli")


class CLIError(Exception):
    """A problem to report to the operator in one line, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


# -- check ----------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """``sessions check CONFIG [--connect]``."""
    loaded = read_config(args.config)
    out = sys.stdout
    print(f"{loaded.path}: valid; it would start:", file=out)
    for line in render_tree(loaded.tree, loaded.config):
        print(line, file=out)
    if loaded.config.server is not None:
        server = loaded.config.server
        host = f"[{server.bind}]" if ":" in server.bind else server.bind
        print(
            f"server: http://{host}:{server.port} (GET /healthz, /status, /metrics)",
            file=out,
        )
    if loaded.config.systemd.ready is not None:
        names = loaded.config.systemd.ready
        verb = "runs" if len(names) == 1 else "run"
        print(f"systemd: READY=1 once {', '.join(names) or 'started'}"
              f"{f' {verb}' if names else ''}", file=out)
    for name, path, message in unbounded_waits(loaded.config):
        log.warning("resources.%s.%s %s", name, path, message)
    for path, message in loaded.warnings:
        log.warning("%s: %s", path, message)
    if not loaded.config.resources:
        log.warning("no [resources.NAME] tables: the tree starts empty (an app may add "
                    "children with System.start_child)")
    if not args.connect:
        return EXIT_OK
    return connect_all(loaded.config, out, args.verbose)


def unbounded_waits(config: SystemConfig) -> list[tuple[str, str, str]]:
    """``(resource, config path, message)`` for every timeout a resource sets to an
    unbounded wait: ``stall_timeout = inf`` (no watchdog), and the kind's own timeouts
    (``connect_timeout = 0`` for libpq, ``socket_timeout = None`` for redis, ...), with
    which a peer that stops answering wedges the resource until the stall watchdog aborts
    it. The kind's are asked of its ``Options`` model (its ``unbounded_waits()``), which
    knows what its driver makes of each value; kinds without one are not checked."""
    found: list[tuple[str, str, str]] = []
    for name, spec in config.resources.items():
        if spec.stall_timeout is not None and math.isinf(spec.stall_timeout):
            found.append(
                (
                    name,
                    "stall_timeout",
                    "= inf turns the stall watchdog off: a call blocked on a peer that "
                    "stopped answering is bounded only by the driver's own timeouts",
                )
            )
        if math.isinf(spec.connect_timeout):
            found.append(
                (
                    name,
                    "connect_timeout",
                    "= inf: a connect that hangs (a black-holed host, a device that never "
                    "answers) holds the start of the tree for ever",
                )
            )
        try:
            cls = resolve_kind(spec.kind, f"resources.{name}.kind")
            model = getattr(cls, "Options", None)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                continue
            check = getattr(model.model_validate(dict(spec.options)), "unbounded_waits", None)
            if callable(check):
                found += [(name, path, message) for path, message in check()]
        except Exception as exc:  # validated already: a warning must not break check
            log.debug("resources.%s: cannot check for unbounded waits: %r", name, exc)
    return found


def render_tree(tree: dict[str, Any], config: SystemConfig) -> list[str]:
    """A text tree of supervisors (strategy, intensity, backoff) and resources (kind,
    restart type, pool size, breaker, timeouts), in start order."""
    return [prefix + _describe_node(node, config) for prefix, node in status_rows(tree)]


def _describe_node(node: dict[str, Any], config: SystemConfig) -> str:
    name = node["name"]
    if node.get("type") == "supervisor":
        sup = config.supervisor if name == ROOT else config.supervisors[name]
        b = sup.backoff
        window = "ever" if math.isinf(sup.period) else f"in {sup.period:g}s"
        return (
            f"{name}: supervisor {sup.strategy}, at most {sup.max_restarts} restarts "
            f"{window}, backoff {b.initial:g}s..{b.max:g}s x{b.multiplier:g} "
            f"±{b.jitter:.0%}"
        )
    spec = config.resources[name]
    kind = node.get("kind") or spec.kind
    kind_text = kind if kind == spec.kind else f"{kind} ({spec.kind})"
    parts = [f"{name}: {kind_text}", spec.restart]
    if node.get("type") == "pool":
        parts.append(f"pool of {len(node.get('children', []))}")
    elif spec.pool_size > 1:
        parts.append(f"pool_size {spec.pool_size} lowered to 1 by the kind")
    if spec.breaker is not None:
        parts.append(
            f"breaker after {spec.breaker.failures} failures, probe every "
            f"{spec.breaker.reset_timeout:g}s"
        )
    if spec.health_interval is not None:
        parts.append(f"health check every {spec.health_interval:g}s")
    parts.append(
        f"call_timeout {seconds(spec.call_timeout)}, stall_timeout "
        f"{seconds(stall_timeout(spec))}, connect_timeout {seconds(spec.connect_timeout)}, "
        "shutdown_timeout "
        + (spec.shutdown_timeout if isinstance(spec.shutdown_timeout, str)
           else seconds(spec.shutdown_timeout))
    )
    return ", ".join(parts)


def seconds(value: float) -> str:
    """``2.5s``, or ``infinity`` for an unbounded wait (the config's own word for it)."""
    return "infinity" if math.isinf(value) else f"{value:g}s"


@dataclass(frozen=True)
class ConnectResult:
    """The outcome of opening one resource once."""

    name: str
    kind: str
    ok: bool
    seconds: float
    detail: str


def connect_one(name: str, spec: ResourceConfig) -> ConnectResult:
    """Open resource ``name`` once, prove it answers, then close it.

    Runs it as the only child of a throwaway system whose supervisor gives up on the
    first failure, so the kind's own ``connect()`` (with ``connect_timeout``), its
    replay steps (device init writes, session settings) and ``disconnect()`` run on
    the library's threads exactly as in production, and a failure is reported
    rather than retried. Then the kind's ``check_connection()`` runs as one call: a
    kind that connects lazily (``http``) makes a real exchange there and says what it
    checked. Pools open one member; breakers and health checks are off.
    """
    single = ResourceConfig.model_validate(
        {
            **spec.options,
            "kind": spec.kind,
            "call_timeout": spec.call_timeout,
            "connect_timeout": spec.connect_timeout,
            "shutdown_timeout": spec.shutdown_timeout,
        }
    )
    config = SystemConfig(supervisor=SupervisorConfig(max_restarts=0), resources={name: single})
    began = time.monotonic()
    system = System(config)
    try:
        system._boot()
        ok, detail = _check_connection(system, name)
        return ConnectResult(name, spec.kind, ok, time.monotonic() - began, detail)
    except ResourceUnavailable as err:
        fault = _last_fault(system.status(), name) or str(err)
        fault = re.sub(r"(?:\\[nt]|\s)+", " ", fault.removeprefix("start failed: "))
        return ConnectResult(name, spec.kind, False, time.monotonic() - began, redact(fault))
    finally:
        system.stop()


def _check_connection(system: System, name: str) -> tuple[bool, str]:
    """Run the kind's ``check_connection()`` on the actor's thread; ``(ok, detail)``."""
    node = system._resources[name]
    assert isinstance(node, ResourceChild)  # connect_one's resource is never a pool
    actor = node.actor
    try:
        checked = system.get(name).transaction(lambda _resource: actor.check_connection())
        what = checked.result()
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, ResourceFault) and exc.__cause__ else exc
        return False, describe(cause)
    return True, "connected" if what is None else f"connected: {redact(what)}"


def _last_fault(tree: dict[str, Any], name: str) -> str | None:
    if tree.get("name") == name and tree.get("type") != "supervisor":
        fault = tree.get("last_fault")
        return None if fault is None else str(fault)
    for child in tree.get("children", ()):
        found = _last_fault(child, name)
        if found is not None:
            return found
    return None


def connect_all(config: SystemConfig, out: TextIO, verbose: int = 0) -> int:
    """``check --connect``: open every resource once, in parallel; report each.

    The throwaway supervisors' own warnings ("faulted", "gave up") would repeat each
    failure in log form, so they are silenced unless ``-v`` asks for the log.
    """
    names = list(config.resources)
    if not names:
        print("no resources to connect", file=out)
        return EXIT_OK
    longest = max(
        connect_timeout for connect_timeout in (config.resources[n].connect_timeout for n in names)
    )
    limit = "no time limit" if math.isinf(longest) else f"at most {longest:g}s"
    print(f"connecting each resource once (in parallel; {limit}):", file=out)
    supervisor_log = logging.getLogger("sessions.supervisor")
    old_level = supervisor_log.level
    if not verbose:
        supervisor_log.setLevel(logging.CRITICAL + 1)
    try:
        with ThreadPoolExecutor(
            max_workers=min(8, len(names)), thread_name_prefix="sessions-check"
        ) as pool:
            results = list(pool.map(lambda n: connect_one(n, config.resources[n]), names))
    finally:
        supervisor_log.setLevel(old_level)
    width = max(len(n) for n in names)
    kind_width = max(len(r.kind) for r in results)
    for r in results:
        status = "ok    " if r.ok else "FAILED"
        print(
            f"  {status}  {r.name:<{width}}  {r.kind:<{kind_width}}  {r.seconds:6.2f}s  {r.detail}",
            file=out,
        )
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(
            f"{len(failed)} of {len(results)} resources failed to connect: {', '.join(failed)}",
            file=out,
        )
        return EXIT_FAILED
    print(f"all {len(results)} resources connected", file=out)
    return EXIT_OK


# -- run ------------------------------------------------------------------------------


class _Stop(BaseException):
    """Raised in the main thread by a signal (or by the root giving up) to end the app.

    A ``BaseException`` like ``KeyboardInterrupt``, so an app's ``except Exception``
    does not swallow it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


GAVE_UP = "gave_up"


class _Interrupts:
    """SIGINT/SIGTERM handling for ``run``.

    While *armed* (booting, or the app running) the first signal raises one
    :class:`_Stop` in the main thread and disarms; a signal while stopping is
    remembered, and another one after it forces the exit (code 130), for a shutdown
    stuck in a driver. The root supervisor giving up interrupts the app the same way
    (a SIGTERM sent to the main thread, marked so it is not mistaken for the
    operator's), since nothing can serve the app's calls any more.
    """

    def __init__(self) -> None:
        self.armed = False
        self.received: str | None = None
        self.gave_up = False
        self._self_signal = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        """Take over SIGINT and SIGTERM (only possible in the main thread; elsewhere,
        e.g. ``main()`` called from a worker thread, signals keep their handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is signal.SIG_IGN:
                continue  # ignored by whoever started us (a background job): respect it
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._self_signal:
            self._self_signal = False
            reason = GAVE_UP
        else:
            reason = signal.Signals(signum).name
            if self.received is not None and not self.armed:
                print(
                    f"sessions: {reason} again while stopping: forced exit",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(EXIT_FORCED)
            if self.received is None:
                self.received = reason
                if not self.armed:
                    print(
                        f"sessions: {reason}: already stopping (send it again to force)",
                        file=sys.stderr,
                        flush=True,
                    )
        if self.armed:
            self.armed = False
            raise _Stop(reason)

    def root_gave_up(self) -> None:
        """From the event thread: the root supervisor gave up; interrupt the app."""
        self.gave_up = True
        if self.armed and threading.main_thread().is_alive():
            self._self_signal = True
            ident = threading.main_thread().ident
            if ident is not None and hasattr(signal, "pthread_kill"):
                signal.pthread_kill(ident, signal.SIGTERM)


class _Reloader:
    """SIGHUP (``systemctl reload``): read the config file again and apply it to the
    running tree (:meth:`System.reload`).

    The signal handler only sets a flag: the reload runs on its own thread
    (``sessions-reload``), never inside the app's main thread. Signals arriving during a
    reload fold into one more reload after it. A file that does not validate changes
    nothing and is reported, as ``sessions check`` would report it. ``on_reloading`` and
    ``on_reloaded`` are called around each reload (the systemd notifier's
    ``RELOADING=1`` and ``READY=1``); ``on_reloaded`` gets the config now running (the
    new one, or the old one if the file was refused).
    """

    def __init__(self, path: str, server: Any,
                 on_reloading: Callable[[], None] = lambda: None,
                 on_reloaded: Callable[[SystemConfig], None] = lambda config: None) -> None:
        self.path = path
        self.system: System | None = None
        """Set by :meth:`start`; a SIGHUP before it waits for it."""
        self.server = server
        """The ``[server]`` table running: a change to it needs a restart of the process."""
        self.on_reloading = on_reloading
        self.on_reloaded = on_reloaded
        self._wanted = threading.Event()
        self._stopping = False
        self._previous: Any = None
        self._installed = False
        self._thread = threading.Thread(target=self._loop, name="sessions-reload", daemon=True)

    def install(self) -> None:
        """Take over SIGHUP (main thread only, unless ignored), before the tree starts:
        a SIGHUP that comes early (systemd may send one right after READY=1) is kept
        for when the tree is up, never left to end the process."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
            return  # nohup: respect it
        self._previous = signal.signal(signal.SIGHUP, self._handle)
        self._installed = True

    def start(self, system: System) -> None:
        """Reload ``system`` on SIGHUP from now on (a SIGHUP already received too)."""
        self.system = system
        self._thread.start()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._wanted.set()

    def stop(self) -> None:
        """Restore SIGHUP's handler, let a reload in progress finish, join the thread."""
        if self._installed:
            signal.signal(signal.SIGHUP, self._previous)
            self._installed = False
        self._stopping = True
        self._wanted.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping:
                return
            system = self.system
            assert system is not None  # the thread starts with start(system)
            self.on_reloading()
            try:
                self.reload(system)
            finally:
                self.on_reloaded(system.config)

    def reload(self, system: System) -> None:
        """One reload, reported on stderr."""
        say = functools.partial(print, file=sys.stderr, flush=True)
        try:
            loaded = read_config(self.path, probe_server=False)
            if loaded.config.server != self.server:
                say(f"sessions: {self.path}: [server] changed: it applies at the next start "
                    "of the process, not on reload")
            event = system.reload(loaded.raw)
        except ConfigError as err:
            say(f"sessions: reload of {self.path} refused, nothing changed:")
            for path, message in err.errors:
                say(f"sessions:   {path + ': ' if path else ''}{message}")
            return
        except Exception as exc:  # the running tree is kept; say why the reload stopped
            say(f"sessions: reload of {self.path} failed: {type(exc).__name__}: "
                f"{redact(exc)}")
            return
        parts = [f"{label} {', '.join(names)}" for label, names in (
            ("added", event.added), ("removed", event.removed), ("changed", event.changed),
            ("policy of", event.policies)) if names]
        say(f"sessions: reloaded {self.path}: {'; '.join(parts) or 'nothing changed'}")
        for failure in event.failed:
            say(f"sessions: reload: {redact(failure)}")


def _load_app(spec: str) -> Callable[[System], Any]:
    """Import ``module:function`` (the working directory is importable: see
    :func:`_importable_cwd`)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"--app: expected 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise CLIError(
            f"--app {spec}: cannot import {module_name!r}: {type(err).__name__}: {err}"
        ) from err
    try:
        fn = operator.attrgetter(attr)(module)
    except AttributeError:
        raise CLIError(f"--app {spec}: module {module_name!r} has no {attr!r}") from None
    if not callable(fn):
        raise CLIError(f"--app {spec}: {attr!r} is not callable")
    return fn  # type: ignore[no-any-return]


def cmd_run(args: argparse.Namespace) -> int:
    """``sessions run CONFIG [--app module:function]``."""
    loaded = read_config(args.config, probe_server=False)  # bound for real below
    app = _load_app(args.app) if args.app else None
    server = StatusServer(loaded.config.server) if loaded.config.server is not None else None
    interrupts = _Interrupts()
    system: System | None = None
    reloader: _Reloader | None = None
    notifier: SystemdNotifier | None = None
    outcome = "returned"
    try:
        try:
            interrupts.armed = True  # from here on, the first signal raises _Stop
            interrupts.install()
            reloader = _Reloader(loaded.path, loaded.config.server)
            reloader.install()
            # Started in the background so that systemd can be told READY=1 as soon as
            # the [systemd] ready resources run; the app still waits for the whole tree.
            system = sessions.start(loaded.raw, wait=False)
            # -- systemd hook (sessions/_tools/systemd.py): READY=1, STATUS=, WATCHDOG=1
            # here; RELOADING=1 and READY=1 around a SIGHUP reload (_Reloader);
            # STOPPING=1 in the finally below.
            notifier = SystemdNotifier.from_environment(
                system, loaded.config.ready_resources())
            if notifier is not None:
                notifier.start()
            try:
                system.ready.result()
            except ResourceUnavailable as err:
                interrupts.armed = False
                print(f"sessions: {loaded.path}: {redact(err)}", file=sys.stderr)
                return EXIT_GAVE_UP
            system._events.flush()  # boot events are history for later subscribers,
            running = system  # as with start(wait=True): /metrics counts faults from here

            def on_event(event: Event) -> None:
                if isinstance(event, SupervisorGaveUp) and event.supervisor == ROOT:
                    interrupts.root_gave_up()

            system.subscribe(on_event)
            if system.state == ChildState.FAILED:
                interrupts.root_gave_up()
            if server is not None:
                server.start(system)
            if notifier is not None:
                tell = notifier
                reloader.on_reloading = tell.reloading
                reloader.on_reloaded = lambda config: tell.ready(config.ready_resources())
            reloader.start(system)
            served = f"; serving {server.url} (/healthz /status /metrics)" if server else ""
            print(
                f"sessions: {_count(len(loaded.config.resources), 'resource')} "
                f"running{served}",
                file=sys.stderr,
                flush=True,
            )
            if app is not None:
                app(running)
            else:
                while True:  # no app: supervise until a signal (or the root gives up)
                    time.sleep(3600)
        finally:
            interrupts.armed = False
    except _Stop as stop:
        outcome = GAVE_UP if stop.reason == GAVE_UP else "signal"
        if outcome == "signal":
            print(f"sessions: {stop.reason}: stopping", file=sys.stderr, flush=True)
    except SystemExit as exc:
        outcome = "returned" if exc.code in (None, 0) else "raised"
        if outcome == "raised":
            print(f"sessions: app {args.app} exited with {exc.code!r}", file=sys.stderr)
    except Exception as exc:
        outcome = "raised"
        _report(f"app {args.app} raised {type(exc).__name__}: {redact(exc)}", args.verbose)
    finally:
        if reloader is not None:
            reloader.stop()
        if notifier is not None:  # systemd hook: STOPPING=1, and the notifier thread ends
            notifier.stopping(None if system is None else system.failure)
        if server is not None:
            server.stop()
        if system is not None:
            system.stop()
        interrupts.restore()
    failure = None if system is None else system.failure
    if interrupts.gave_up or failure is not None:
        print(f"sessions: {redact(failure or 'the root supervisor gave up')}", file=sys.stderr)
        return EXIT_GAVE_UP
    left = [
        t.name for t in threading.enumerate() if t.name.startswith("sessions-") and t.is_alive()
    ]
    if left:
        print(f"sessions: threads still running after stop: {', '.join(left)}", file=sys.stderr)
    print("sessions: stopped", file=sys.stderr, flush=True)
    return EXIT_FAILED if outcome == "raised" else EXIT_OK


# -- schema ---------------------------------------------------------------------------


def cmd_fault(args: argparse.Namespace) -> int:
    """``sessions fault CONFIG RESOURCE FAULT [--count N]``."""
    table = _config.read_file(args.config).get("server")  # only [server]: no ${VAR} needed
    server = None if table is None else parse_server(table)
    if server is None or not server.faults or server.port == 0:
        raise ConfigError([("server", "sessions fault needs a [server] table with a fixed "
                            "port and faults = true (in the config the run uses)")])
    host = server.bind
    if host in ("0.0.0.0", "::") or not _is_loopback(host):
        host = "::1" if ":" in host else "127.0.0.1"  # loopback only: the run refuses others
    url = f"http://{'[' + host + ']' if ':' in host else host}:{server.port}/faults/" + (
        urllib.parse.quote(args.resource, safe=""))
    body = json.dumps({"fault": args.fault, "count": args.count}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace").strip()
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("error", detail)
        raise CLIError(f"{url}: {err.code} {err.reason}: {detail}", EXIT_FAILED) from None
    except OSError as err:
        raise CLIError(f"cannot reach the run at {url}: {err}", EXIT_FAILED) from None
    print(f"sessions: {args.resource}: {args.fault} injected: {json.dumps(answer)}")
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def cmd_schema(args: argparse.Namespace) -> int:
    """``sessions schema [-o FILE]``."""
    from sessions._tools.schema import build_schema  # noqa: PLC0415 - imports every kind

    text = json.dumps(build_schema(), indent=args.indent) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as err:
            raise CLIError(f"--output {args.output}: {err.strerror or err}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


# -- demo -----------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """``sessions demo``."""
    from sessions._tools.demo import run_demo  # noqa: PLC0415 - only this command needs it

    return run_demo(args)


# -- parser and main ------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    """Wraps prose paragraphs to the terminal and keeps indented lines (the exit code
    tables) as written, which neither of argparse's own formatters does."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith("  ") for line in lines):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(
                    textwrap.fill(
                        " ".join(lines), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
        return "\n\n".join(paragraphs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    from sessions._tools import demo as _demo  # noqa: PLC0415

    codes = "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())
    parser = argparse.ArgumentParser(
        prog="sessions",
        description="Supervised resource actors: validate a config, run a program under "
        "it, print its JSON Schema, or watch the plant demo heal faults.",
        epilog=f"exit codes:\n{codes}\n\n'sessions COMMAND --help' describes each command.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"sessions {sessions.__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show tracebacks and the library's log (-vv: debug log)",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="show tracebacks and the library's log (-vv: debug log)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser(
        "check",
        parents=[common],
        formatter_class=_Formatter,
        help="validate a config file and show what would start",
        description="Validate CONFIG: structure, supervisor references, every resource's "
        "kind and its options, and [server] (its address resolved and bound to a free "
        "port, as run would). Prints every problem with its path (exit 2), or the tree "
        "that would start (exit 0). Nothing is started unless --connect is given. The "
        "working directory is importable, as with 'python -m': a kind "
        "'mymodule:Class' may live in it.",
        epilog="exit codes: 0 valid (and, with --connect, every resource opened); "
        "1 a resource failed to open; 2 invalid config",
    )
    check.add_argument("config", metavar="CONFIG", help="the TOML config file")
    check.add_argument(
        "--connect",
        action="store_true",
        help="also open each resource once (in parallel, within its "
        "connect_timeout) and report ok or the reason it failed "
        "(credentials redacted)",
    )
    check.set_defaults(func=cmd_check)

    run = sub.add_parser(
        "run",
        parents=[common],
        formatter_class=_Formatter,
        help="start the tree, run an app function, serve /healthz /status /metrics",
        description="Start the supervision tree of CONFIG, then call the app function "
        "with the sessions.System in the main thread; when it returns, stop "
        "everything in reverse start order. Without --app, supervise until "
        "SIGINT/SIGTERM. With a [server] table (bind, port) in CONFIG, serve "
        "read-only GET /healthz, /status and /metrics meanwhile. "
        "SIGINT/SIGTERM interrupt the app and stop gracefully; a second one "
        "forces the exit. Started by systemd as a Type=notify service (NOTIFY_SOCKET "
        "set), it sends READY=1 once the [systemd] ready resources run, STATUS= lines, "
        "WATCHDOG=1 while nothing is stalled, and STOPPING=1. The working directory is "
        "importable, as with 'python -m': the app and a kind 'mymodule:Class' may live "
        "in it.",
        epilog=f"exit codes:\n{codes}",
    )
    run.add_argument("config", metavar="CONFIG", help="the TOML config file")
    run.add_argument(
        "--app",
        metavar="MODULE:FUNCTION",
        help="function to call with the System (the working directory is "
        "importable); omitted: run until a signal",
    )
    run.set_defaults(func=cmd_run)

    fault = sub.add_parser(
        "fault",
        parents=[common],
        formatter_class=_Formatter,
        help="inject a fault into a resource of a running 'sessions run' (rehearsal)",
        description="Ask the 'sessions run' of CONFIG, over its [server] endpoint on this "
        "host, to inject FAULT into RESOURCE: fail_calls and fail_connects (the next "
        "--count calls or connects fail), stall (the next call hangs until 'release', or "
        "until the stall watchdog aborts it), drop_connection (torn down now, as by the "
        "peer), clear. Refused unless CONFIG's [server] has 'faults = true'; accepted "
        "from loopback only. For rehearsing failures on a staging controller.",
        epilog="exit codes: 0 injected; 1 refused or not reachable; 2 invalid config or "
        "no [server] with a fixed port and faults = true",
    )
    fault.add_argument("config", metavar="CONFIG", help="the TOML config file of the run")
    fault.add_argument("resource", metavar="RESOURCE", help="the resource (name#i: a member)")
    fault.add_argument("fault", metavar="FAULT", choices=FAULTS,
                       help=f"one of: {', '.join(FAULTS)}")
    fault.add_argument("--count", type=int, default=1,
                       help="fail_calls, fail_connects: how many (default 1)")
    fault.set_defaults(func=cmd_fault)

    schema = sub.add_parser(
        "schema",
        parents=[common],
        help="print the JSON Schema of the config file (for editor completion)",
        description="Print the JSON Schema (draft 2020-12) of the config file, including "
        "the keys of every built-in kind whose driver is installed (kinds "
        "left out are named in the schema's description). Point Taplo / Even "
        "Better TOML at it with a '#:schema ./sessions.schema.json' first line.",
    )
    schema.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE instead of standard output"
    )
    schema.add_argument("--indent", type=int, default=2, help="JSON indent (default 2)")
    schema.set_defaults(func=cmd_schema)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        formatter_class=_Formatter,
        help="a simulated plant controller healing injected faults (no server needed)",
        description=_demo.DESCRIPTION,
        epilog="exit codes: 0 no call was lost (also after Ctrl-C); 1 a call was lost (or the "
        "demo's own code raised); 2 invalid --config",
    )
    _demo.add_arguments(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def _report(message: str, verbose: int) -> None:
    """One line for the operator; the traceback of the exception being handled with -v."""
    if verbose:
        traceback.print_exc(file=sys.stderr)
    hint = "" if verbose else " (run with -v for the traceback)"
    print(f"sessions: error: {message}{hint}", file=sys.stderr)


@contextlib.contextmanager
def _logging(verbose: int, quiet: bool) -> Iterator[None]:
    """Show the library's log on stderr for this command, then leave logging as it was.

    Warnings (faults, restarts) by default; nothing below errors for the demo, whose
    view shows faults already; INFO with -v, DEBUG with -vv.
    """
    logger = logging.getLogger("sessions")
    if verbose >= 2:
        level = logging.DEBUG
    elif verbose == 1:
        level = logging.INFO
    else:
        level = logging.CRITICAL + 1 if quiet else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.setLevel(level)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old_level) if old_level else level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def _importable_cwd() -> None:
    """Put the working directory first on ``sys.path``, as ``python -m`` does, so a kind
    (``kind = "mykinds:Thermostat"``) or an ``--app`` in it imports the same whether the
    command is run as ``sessions`` (whose ``sys.path[0]`` is the script's directory) or
    as ``python -m sessions``. Like ``python -m``, a module there shadows an installed
    one of the same name."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``sys.exit(main())``)."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    _importable_cwd()
    verbose: int = args.verbose
    with _logging(verbose, quiet=args.command == "demo"):
        try:
            code: int = args.func(args)
            return code
        except ConfigError as err:
            where = getattr(args, "config", None)
            prefix = f"{where}: " if where else ""
            if verbose:
                traceback.print_exc(file=sys.stderr)
            for path, message in err.errors:
                location = f"{path}: " if path else ""
                if not path and where and where in message:
                    location, lead = "", ""  # the message names the file already
                else:
                    lead = prefix
                print(f"sessions: {lead}{location}{message}", file=sys.stderr)
            return EXIT_CONFIG
        except CLIError as err:
            if verbose:
                traceback.print_exc(file=sys.stderr)
            print(f"sessions: error: {err}", file=sys.stderr)
            return err.code
        except KeyboardInterrupt:
            print("sessions: interrupted", file=sys.stderr)
            return EXIT_FORCED
        except Exception as exc:
            _report(f"{type(exc).__name__}: {redact(exc)}", verbose)
            return EXIT_FAILED


def _count(n: int, noun: str) -> str:
    """``1 resource``, ``2 resources``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
