"""``sessions demo``: a simulated plant controller that keeps running through faults.

What it shows, on embedded defaults with no server and no hardware: several worker
threads run a control loop at a fixed rate - read a TMP102 temperature sensor over
I2C, compute a motor speed setpoint, send it to a motor drive with a CAN
request/response, log reading and reply to SQLite - while a fault injector breaks one
resource every ``--fault-every`` seconds (an I2C EIO burst, a CAN bus-off, a dropped
database connection). The supervisors restart what broke; the control loop only sees
some calls fail with a clear error and carries on.

The tree (``sessions demo --print-config`` prints it as TOML)::

    root (one_for_one)
    ├── field (rest_for_one)      the drive is restarted whenever the sensor bus is,
    │   ├── sensors  i2c          as a controller would re-home it
    │   └── drive    canbus
    └── log          database

The point of the summary is the last line of README's call semantics: every call's
future resolves exactly once. Calls are counted as ok, failed with a clear error (by
exception type, one example message each), or *lost* - a future still unresolved after
the system stopped. The demo exits 0 only if none was lost (and its own code, as
opposed to the calls it makes, raised nothing).

``--config FILE`` runs the same loop against other resources: the file needs one
resource each of kind ``i2c`` (a TMP102 at 0x48), ``canbus`` (a drive answering the
protocol of :mod:`sessions.actors.canbus.sim` as node 1) and ``database``. Faults are injected
only where the demo can reach a simulator: an I2C bus with ``bus = "sim"`` and a
``sim_name``, a CAN bus on the ``virtual`` interface (the demo then starts the
simulated drive on its channel); the database connection can always be dropped.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import math
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, TextIO

from sessions._config import SystemConfig, check_options, load
from sessions._errors import ConfigError, SessionsError
from sessions._redact import redact
from sessions._system import Handle, System, start, status_rows
from sessions._tools.check import read_config
from sessions.actors.canbus import CANBusActor
from sessions.actors.i2c import I2CActor
from sessions.actors.i2c.sim import TMP102

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["DEMO_TOML", "DESCRIPTION", "add_arguments", "run_demo"]

DESCRIPTION = """\
A simulated plant controller under supervision, on embedded defaults (no server, no
hardware). Worker threads run a control loop at a fixed rate: read a TMP102 over I2C,
compute a motor speed, send it to a motor drive with a CAN request/response, log both
to SQLite. Every --fault-every seconds a random fault is injected (I2C EIO burst, CAN
bus-off, dropped database connection) and the supervisors heal it. A live view shows
the supervision tree (state, restarts, calls/s, p50/p99 latency, queued calls, last
fault) and the loop's cycle rate; --no-tui (or a stdout that is not a terminal) prints
plain lines instead. On exit (end of --duration, or Ctrl-C) a summary counts calls ok,
failed with a clear error, and lost (never resolved; must be 0)."""

DEMO_TOML = """\
# The plant controller of `sessions demo`. Save it, edit it, and run the same demo
# against it with `sessions demo --config FILE`.

[supervisor]                       # root: the field bus supervisor and the log
strategy = "one_for_one"
max_restarts = 20
period = 10.0
backoff = { initial = 0.05, max = 1.0, multiplier = 2.0, jitter = 0.1 }

[supervisors.field]                # the sensor bus and the drive: restart the drive
strategy = "rest_for_one"          # whenever the sensor bus restarts
max_restarts = 10
period = 10.0
backoff = { initial = 0.05, max = 1.0 }

[resources.sensors]
kind = "i2c"
supervisor = "field"
bus = "sim"                        # the simulator; 1 for /dev/i2c-1
sim_name = "sessions-demo"         # lets the demo reach the simulator to inject faults
devices = [
    { type = "tmp102", address = 0x48, temperature = 24.0, drift = 0.5 },
    { type = "eeprom24c02", address = 0x50 },
]
fault_threshold = 3                # 3 EIO in a row: the bus is restarted
call_timeout = 1.0
connect_timeout = 2.0

[resources.drive]
kind = "canbus"
supervisor = "field"
interface = "virtual"              # the demo runs the simulated drive on this channel
channel = "sessions-demo"
request_timeout = 0.25
call_timeout = 1.0
connect_timeout = 2.0

[resources.log]
kind = "database"
url = "sqlite:///plant.db"         # the demo uses a temporary directory instead
call_timeout = 2.0
connect_timeout = 5.0
"""

TMP102_ADDRESS = 0x48
EEPROM_ADDRESS = 0x50
DRIVE_NODE = 1
CALIBRATION = (600, 80, 20)
"""Default calibration kept in the EEPROM: base rpm, rpm per degree C, reference C."""
TABLE = "sessions_demo_readings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` command's options."""
    parser.add_argument(
        "--duration",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="run this long, then stop and summarize (default: until Ctrl-C)",
    )
    parser.add_argument(
        "--fault-every",
        type=_positive,
        default=3.0,
        metavar="SECONDS",
        help="seconds between injected faults (default 3)",
    )
    parser.add_argument(
        "--workers", type=int, default=4, metavar="N", help="control loop threads (default 4)"
    )
    parser.add_argument(
        "--rate",
        type=_positive,
        default=10.0,
        metavar="HZ",
        help="control cycles per second per worker (default 10)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="run against the resources of FILE instead of the embedded "
        "defaults (see --print-config)",
    )
    parser.add_argument(
        "--no-tui",
        action="store_true",
        help="plain periodic lines instead of the live view (automatic "
        "when stdout is not a terminal)",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the embedded config (TOML) and exit"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the fault injector's choices (default: random)",
    )


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


# -- the plant: which resources, and how to reach their simulators ----------------------


@dataclass
class Plant:
    """The three resources the control loop uses and the simulators behind them."""

    sensors: str
    drive: str
    log: str
    i2c_sim_name: str | None
    i2c_is_sim: bool
    fault_threshold: int
    can_channel: str | int | None
    can_virtual: bool


def _plant(config: SystemConfig) -> Plant:
    """Find the demo's resources by kind (the first of each)."""
    by_kind: dict[str, str] = {}
    for name, spec in config.resources.items():
        by_kind.setdefault(spec.kind, name)
    missing = [k for k in ("i2c", "canbus", "database") if k not in by_kind]
    if missing:
        raise ConfigError(
            [
                (
                    "resources",
                    "the demo needs one resource of each kind i2c, "
                    f"canbus and database; missing: {', '.join(missing)}",
                )
            ]
        )
    # Options as the kinds resolve them, defaults included (not repeated here).
    i2c = check_options(I2CActor, config.resources[by_kind["i2c"]].options,
                        f"resources.{by_kind['i2c']}")
    can = check_options(CANBusActor, config.resources[by_kind["canbus"]].options,
                        f"resources.{by_kind['canbus']}")
    return Plant(
        sensors=by_kind["i2c"],
        drive=by_kind["canbus"],
        log=by_kind["database"],
        i2c_sim_name=i2c.get("sim_name") if i2c.get("bus") == "sim" else None,
        i2c_is_sim=i2c.get("bus") == "sim",
        fault_threshold=int(i2c["fault_threshold"]),
        can_channel=can.get("channel"),
        can_virtual=can["interface"] == "virtual",
    )


def _embedded_config(tmpdir: str) -> dict[str, Any]:
    """The embedded TOML with a throwaway database and a CAN channel of this run."""
    raw: dict[str, Any] = tomllib.loads(DEMO_TOML)
    raw["resources"]["log"]["url"] = f"sqlite:///{os.path.join(tmpdir, 'plant.db')}"
    raw["resources"]["drive"]["channel"] = f"sessions-demo-{os.getpid()}-{next(_RUNS)}"
    return raw


_RUNS = itertools.count(1)


# -- counting every call ------------------------------------------------------------------


class Tally:
    """Counts every call by outcome and knows which futures are still unresolved.

    A call's outcome is counted when its future resolves (a done callback), not when a
    worker stops waiting for it: ``result()`` can raise ``CallTimeout`` while the call
    is still running, and such a call must still resolve later. A result that is itself
    a future (the CAN drive's ``PendingReply``) is followed: the call resolves with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ok = 0
        self.failed: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.unclear: Counter[str] = Counter()
        self.local: Counter[str] = Counter()
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self.cycles = 0
        self.complete = 0

    def track(self, future: concurrent.futures.Future[Any]) -> concurrent.futures.Future[Any]:
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._settle)
        return future

    def _settle(self, future: concurrent.futures.Future[Any]) -> None:
        error: BaseException | None = None
        if future.cancelled():
            error = concurrent.futures.CancelledError()
        result = None
        if error is None:
            error = future.exception()
            if error is None:
                result = future.result()
        if isinstance(result, concurrent.futures.Future):
            self.track(result)  # the call resolves with its reply
        with self._lock:
            self._pending.discard(future)
            if isinstance(result, concurrent.futures.Future):
                return
            if error is None:
                self.ok += 1
                return
            name = type(error).__name__
            if isinstance(error, (SessionsError, TimeoutError)):
                self.failed[name] += 1
            else:
                self.unclear[name] += 1
            self.examples.setdefault(name, _one_line(error))

    def local_error(self, error: BaseException) -> None:
        """An error raised by the demo's own code rather than by a call."""
        with self._lock:
            name = type(error).__name__
            self.local[name] += 1
            self.examples.setdefault(f"local {name}", _one_line(error))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def wait_resolved(self, timeout: float) -> int:
        """Wait up to ``timeout`` for every tracked future; the number still pending."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return 0
            left = deadline - time.monotonic()
            if left <= 0:
                return len(pending)
            concurrent.futures.wait(pending, timeout=min(left, 0.1))

    def cycle(self, complete: bool) -> None:
        with self._lock:
            self.cycles += 1
            self.complete += complete


def _one_line(error: BaseException) -> str:
    text = " ".join(redact(error).split())
    cause = error.__cause__
    if cause is not None:
        text += f" (cause: {type(cause).__name__}: {' '.join(redact(cause).split())})"
    return text if len(text) <= 160 else text[:157] + "..."


# -- the control loop -------------------------------------------------------------------


class _CallFailed(Exception):
    """A handle call failed (its error is the cause, and the tally counts it)."""


class Controller:
    """One control loop: read temperature, set the drive's speed, log both."""

    def __init__(
        self, system: System, plant: Plant, tally: Tally, rate: float, stop: threading.Event
    ) -> None:
        self.sensors: Handle = system.get(plant.sensors)
        self.drive: Handle = system.get(plant.drive)
        self.log: Handle = system.get(plant.log)
        self.tally = tally
        self.period = 1.0 / rate
        self.stop = stop
        self.calibration = CALIBRATION

    def call(self, future: concurrent.futures.Future[Any]) -> Any:
        """Wait for one handle call; its outcome is tallied when its future resolves."""
        self.tally.track(future)
        try:
            result = future.result()
            if isinstance(result, concurrent.futures.Future):  # a reply still to come
                # Bounded only to guard the demo itself against a reply that never
                # resolves (the tally would then count it as lost).
                result = result.result(timeout=getattr(result, "timeout", 1.0) + 2.0)
        except Exception as exc:
            raise _CallFailed from exc
        return result

    def run(self, worker: int) -> None:
        """Cycles at a fixed rate; a late cycle skips ahead rather than bursting."""
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.tally.cycle(self.cycle(worker))
            next_at += self.period
            now = time.monotonic()
            next_at = max(next_at, now)
            self.stop.wait(next_at - now)

    def cycle(self, worker: int) -> bool:
        """One control cycle; False if a step failed (the error is in the tally)."""
        from sessions.actors.canbus import sim as drive  # noqa: PLC0415 - python-can is an extra

        try:
            raw = self.call(self.sensors.read_i2c_block_data(TMP102_ADDRESS, 0, 2))
            celsius = TMP102.decode(bytes(raw))
            base, gain, reference = self.calibration
            rpm = max(0, min(3000, round(base + gain * (celsius - reference))))
            request = drive.request_message(drive.encode_set_speed(rpm), DRIVE_NODE)
            frame = self.call(self.drive.request(request, drive.response_id(DRIVE_NODE)))
            reply = drive.decode_reply(bytes(frame.data))
            self.call(
                self.log.execute(
                    f"INSERT INTO {TABLE} (at, worker, celsius, setpoint, status, speed) "
                    "VALUES (:at, :worker, :celsius, :setpoint, :status, :speed)",
                    {
                        "at": time.time(),
                        "worker": worker,
                        "celsius": celsius,
                        "setpoint": rpm,
                        "status": reply.status,
                        "speed": reply.value,
                    },
                )
            )
        except _CallFailed:  # counted by the tally when its future resolved
            return False
        except Exception as exc:  # a bug of the demo itself: shown, never hidden
            self.tally.local_error(exc)
            return False
        return True

    def prepare(self, plant: Plant) -> None:
        """Create the log table and read the calibration from the EEPROM (writing the
        defaults to a blank simulated one)."""
        try:
            self.call(
                self.log.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} (at DOUBLE PRECISION, worker INTEGER, "
                    "celsius DOUBLE PRECISION, setpoint INTEGER, status INTEGER, speed INTEGER)"
                )
            )
        except _CallFailed as err:
            cause = err.__cause__
            raise RuntimeError(
                f"cannot create the demo's table {TABLE} in {plant.log!r}: "
                f"{type(cause).__name__}: {redact(cause)}"
            ) from cause
        write = plant.i2c_is_sim  # never write an unknown EEPROM on real hardware

        def calibrate(bus: Any) -> tuple[int, int, int]:
            data = bus.read_i2c_block_data(EEPROM_ADDRESS, 0x00, 4)
            if data == [0xFF] * 4:
                base, gain, reference = CALIBRATION
                if write:
                    bus.write_i2c_block_data(
                        EEPROM_ADDRESS, 0x00, [base >> 8, base & 0xFF, gain, reference]
                    )
                return CALIBRATION
            return ((data[0] << 8) | data[1], data[2], data[3])

        try:
            self.calibration = self.call(self.sensors.transaction(calibrate))
        except _CallFailed:  # no EEPROM there: keep the defaults (the error is tallied)
            self.calibration = CALIBRATION


# -- fault injection ------------------------------------------------------------------


@dataclass
class Injected:
    """One injected fault, for the view and the summary."""

    at: float
    kind: str
    text: str


class Injector:
    """Breaks one resource at a time, only where a simulator (or a handle call) can."""

    def __init__(self, system: System, plant: Plant, can_sim: Any, rng: random.Random) -> None:
        self.system = system
        self.plant = plant
        self.can_sim = can_sim
        self.rng = rng
        self.recover_at: float | None = None
        self.log: list[Injected] = []
        self.kinds: Counter[str] = Counter()
        self.choices: list[tuple[str, Callable[[], str]]] = [("database", self._drop_db)]
        if plant.i2c_sim_name is not None:
            self.choices.insert(0, ("i2c", self._i2c_eio))
        if can_sim is not None:
            self.choices.insert(-1, ("can", self._can_bus_off))

    def inject(self, elapsed: float) -> Injected:
        kind, fn = self.rng.choice(self.choices)
        try:
            text = fn()
        except Exception as exc:  # e.g. the simulator is not reachable any more
            text = f"could not inject ({type(exc).__name__}: {redact(exc)})"
        self.kinds[kind] += 1
        event = Injected(elapsed, kind, text)
        self.log.append(event)
        return event

    def tick(self, now: float) -> None:
        """Bring a bus-off drive back once its off-time has passed."""
        if self.recover_at is not None and now >= self.recover_at:
            self.recover_at = None
            self.can_sim.recover()

    def finish(self) -> None:
        if self.recover_at is not None:
            self.recover_at = None
            self.can_sim.recover()

    def _i2c_eio(self) -> str:
        from sessions.actors.i2c import sim_adapter  # noqa: PLC0415

        assert self.plant.i2c_sim_name is not None
        count = self.plant.fault_threshold
        sim_adapter(self.plant.i2c_sim_name).inject("eio", count=count)
        return f"I2C EIO burst x{count} on {self.plant.sensors!r}"

    def _can_bus_off(self) -> str:
        self.can_sim.bus_off()
        self.recover_at = time.monotonic() + 0.5
        return f"CAN bus-off on {self.plant.drive!r} (drive silent for 0.5s)"

    def _drop_db(self) -> str:
        def drop(conn: Any) -> None:
            conn.invalidate()  # the DBAPI connection is closed under SQLAlchemy's feet

        self.system.get(self.plant.log).transaction(drop)  # a ResourceFault, by design
        return f"database connection of {self.plant.log!r} dropped"


# -- the view -------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the tree view."""

    prefix: str
    name: str
    kind: str
    state: str
    restarts: int
    rate: float | None
    p50: float | None
    p99: float | None
    queued: int | None
    last_fault: str | None


@dataclass
class Snapshot:
    """What the view shows at one moment."""

    elapsed: float
    rows: list[Row]
    cycles: int
    cycle_rate: float
    ok: int
    failed: int
    pending: int
    faults: list[Injected]
    workers: int
    system_state: str


@dataclass
class _Rates:
    """Per-second rates over the last ~2 seconds, from cumulative counters."""

    window: float = 2.0
    history: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def update(self, key: str, now: float, total: int) -> float:
        points = self.history.setdefault(key, deque())
        points.append((now, total))
        while len(points) > 2 and now - points[1][0] >= self.window:
            points.popleft()
        then, before = points[0]
        return 0.0 if now <= then else (total - before) / (now - then)


def _tree_rows(tree: dict[str, Any], rates: _Rates, now: float) -> list[Row]:
    rows: list[Row] = []
    for prefix, node in status_rows(tree, ("├─ ", "└─ ", "│  ", "   ")):
        kind = node.get("kind") or node.get("strategy") or ""
        if node.get("type") == "supervisor":
            rows.append(
                Row(
                    prefix,
                    node["name"],
                    str(kind),
                    node["state"],
                    node["restarts"],
                    None,
                    None,
                    None,
                    None,
                    node.get("last_fault"),
                )
            )
            continue
        calls = node.get("calls") or {}
        total = sum(int(v) for v in calls.values())
        restarts = int(node.get("restarts") or 0)
        if node.get("type") == "pool":
            restarts += sum(int(m.get("restarts") or 0) for m in node.get("children", ()))
        rows.append(
            Row(
                prefix,
                node["name"],
                str(kind),
                node["state"],
                restarts,
                rates.update(node["name"], now, total),
                node.get("latency_p50_ms"),
                node.get("latency_p99_ms"),
                node.get("queued"),
                node.get("last_fault"),
            )
        )
    return rows


STATE_STYLES = {
    "running": "green",
    "restarting": "yellow",
    "starting": "cyan",
    "stopped": "dim",
    "failed": "bold red",
}


def render_rich(snap: Snapshot) -> Any:
    """The live view as a rich renderable (also used to capture it for the docs)."""
    from rich.console import Group  # noqa: PLC0415 - rich is the optional `tui` extra
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    last = snap.faults[-1] if snap.faults else None
    header = Text.assemble(
        ("sessions demo", "bold"),
        f"  t={snap.elapsed:.1f}s  control loop ",
        (f"{snap.cycle_rate:.1f} cycles/s", "bold cyan"),
        f" ({snap.workers} workers, {snap.cycles} cycles)  system ",
        (snap.system_state, STATE_STYLES.get(snap.system_state, "")),
    )
    table = Table(expand=True, pad_edge=False, box=None, header_style="bold")
    for col in ("tree", "kind", "state"):
        table.add_column(col, no_wrap=True)
    for col in ("restarts", "calls/s", "p50 ms", "p99 ms", "queued"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("last fault", no_wrap=True, overflow="ellipsis", ratio=1, min_width=12)
    for row in snap.rows:
        table.add_row(
            Text(row.prefix, style="dim") + Text(row.name, style="bold"),
            row.kind,
            Text(row.state, style=STATE_STYLES.get(row.state, "")),
            str(row.restarts),
            "" if row.rate is None else f"{row.rate:.0f}",
            _ms(row.p50),
            _ms(row.p99),
            "" if row.queued is None else str(row.queued),
            Text(_short_fault(row.last_fault), style="red" if row.last_fault else ""),
        )
    calls = Text.assemble(
        "calls: ",
        (f"{snap.ok} ok", "green"),
        ", ",
        (f"{snap.failed} failed with a clear error", "yellow" if snap.failed else ""),
        f", {snap.pending} in flight",
    )
    faults = Text.assemble("faults injected: ", (str(len(snap.faults)), "bold"))
    if last is not None:
        faults.append(f", the last at {last.at:.1f}s: {last.text}")
    return Group(
        header,
        Text(""),
        table,
        Text(""),
        calls,
        faults,
        Text("Ctrl-C stops and prints the summary", style="dim"),
    )


def _short_fault(fault: str | None) -> str:
    """``execute: ConnectionLost('...')`` -> ``ConnectionLost('...')``: the exception is
    what tells the story in a narrow column; the full text is in ``/status``."""
    if not fault:
        return ""
    match = re.search(r"\b[A-Z]\w*(?:Error|Exception|Lost|Broken|Fault|Timeout)\w*\(.*", fault)
    return match.group(0) if match else fault


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def plain_line(snap: Snapshot) -> str:
    """The ``--no-tui`` progress line."""
    parts = [
        f"t={snap.elapsed:6.1f}s cycles={snap.cycles} ({snap.cycle_rate:.1f}/s) "
        f"ok={snap.ok} failed={snap.failed} in_flight={snap.pending}"
    ]
    for row in snap.rows:
        if row.rate is not None:
            parts.append(f"{row.name} {row.state} restarts={row.restarts} {row.rate:.0f}/s")
    return " | ".join(parts)


# -- running it -----------------------------------------------------------------------


@contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _shielded() -> Iterator[None]:
    """While shutting down: a first Ctrl-C is ignored with a note, a second forces exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal seen
        if seen:
            os._exit(130)
        seen = True
        print("stopping; Ctrl-C again forces the exit", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_demo(args: argparse.Namespace) -> int:
    """``sessions demo``; returns the exit code (0: no call was lost)."""
    out: TextIO = sys.stdout
    if args.print_config:
        out.write(DEMO_TOML)
        return 0
    if args.workers < 1:
        raise ConfigError([("--workers", f"expected at least 1, got {args.workers}")])
    with ExitStack() as stack:
        if args.config:
            raw: dict[str, Any] = dict(read_config(args.config).raw)
        else:
            tmpdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="sessions-demo-"))
            raw = _embedded_config(tmpdir)
        plant = _plant(load(raw))
        return _run(args, raw, plant, out, stack)
    raise AssertionError("unreachable")  # pragma: no cover


def _run(
    args: argparse.Namespace, raw: dict[str, Any], plant: Plant, out: TextIO, stack: ExitStack
) -> int:
    tui = not args.no_tui and out.isatty() and _has_rich()
    can_sim = None
    if plant.can_virtual:
        from sessions.actors.canbus.sim import MotorDriveSim  # noqa: PLC0415

        can_sim = MotorDriveSim(str(plant.can_channel or "sessions-demo"), node_id=DRIVE_NODE)
        can_sim.start()
        stack.callback(can_sim.stop)
    print("starting the plant ...", file=out, flush=True)
    system = start(raw)
    stack.callback(system.stop)
    tally = Tally()
    stop = threading.Event()
    began = time.monotonic()
    rng = random.Random(args.seed)
    injector = Injector(system, plant, can_sim, rng)
    controller = Controller(system, plant, tally, args.rate, stop)
    controller.prepare(plant)
    workers = [
        threading.Thread(
            target=controller.run, args=(i,), daemon=True, name=f"sessions-demo-worker-{i}"
        )
        for i in range(args.workers)
    ]
    for w in workers:
        w.start()
    rates = _Rates()
    interrupted = False

    def snapshot() -> Snapshot:
        now = time.monotonic()
        return Snapshot(
            elapsed=now - began,
            rows=_tree_rows(system.status(), rates, now),
            cycles=tally.cycles,
            cycle_rate=rates.update(" cycles", now, tally.cycles),
            ok=tally.ok,
            failed=sum(tally.failed.values()) + sum(tally.unclear.values()),
            pending=tally.pending,
            faults=list(injector.log),
            workers=args.workers,
            system_state=system.state,
        )

    duration = math.inf if args.duration is None else args.duration
    next_fault = began + args.fault_every
    try:
        with _interrupt_on_sigterm(), _view(tui, out) as show:
            next_line = began
            while True:
                now = time.monotonic()
                if now - began >= duration:
                    break
                injector.tick(now)
                if now >= next_fault:
                    event = injector.inject(now - began)
                    next_fault += args.fault_every
                    if not tui:
                        print(f"t={event.at:6.1f}s injected: {event.text}", file=out, flush=True)
                if tui:
                    show(snapshot())
                elif now >= next_line:
                    print(plain_line(snapshot()), file=out, flush=True)
                    next_line += 1.0
                time.sleep(
                    max(
                        0.0,
                        min(
                            0.25, began + duration - time.monotonic(), next_fault - time.monotonic()
                        ),
                    )
                )
    except KeyboardInterrupt:
        interrupted = True
    with _shielded():
        stop.set()
        for w in workers:
            w.join()
        injector.finish()
        final = snapshot()
        rows = _count_rows(system, plant)
        system.stop()
        lost = tally.wait_resolved(timeout=2.0)
    elapsed = time.monotonic() - began
    ok = lost == 0 and not tally.local
    _summary(
        out,
        final=final,
        tally=tally,
        injector=injector,
        elapsed=elapsed,
        lost=lost,
        rows=rows,
        interrupted=interrupted,
    )
    return 0 if ok else 1


def _count_rows(system: System, plant: Plant) -> int | None:
    try:
        return int(system.get(plant.log).scalar(f"SELECT COUNT(*) FROM {TABLE}").result())
    except Exception:
        return None


@contextmanager
def _view(tui: bool, out: TextIO) -> Iterator[Callable[[Snapshot], None]]:
    """A function that shows a snapshot: a rich ``Live`` redraw, or nothing (the plain
    mode prints its own lines)."""
    if not tui:
        yield lambda snap: None
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    console = Console(file=out)
    with Live(Text("starting ..."), console=console, refresh_per_second=4, transient=False) as live:
        yield lambda snap: live.update(render_rich(snap))


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _summary(
    out: TextIO,
    *,
    final: Snapshot,
    tally: Tally,
    injector: Injector,
    elapsed: float,
    lost: int,
    rows: int | None,
    interrupted: bool,
) -> None:
    restarts = {r.name: r.restarts for r in final.rows if r.rate is not None}
    failed = sum(tally.failed.values())
    unclear = sum(tally.unclear.values())
    how = "interrupted" if interrupted else "finished"
    lines = [
        "",
        f"sessions demo summary ({how} after {elapsed:.1f}s)",
        f"  control cycles   {tally.cycles} ({tally.cycles / max(elapsed, 1e-9):.1f}/s), "
        f"{tally.complete} complete",
        f"  faults injected  {len(injector.log)}"
        + (f" ({_counts(injector.kinds)})" if injector.log else ""),
        f"  restarts         {sum(restarts.values())} ({_counts(restarts)})",
        f"  calls ok         {tally.ok}",
        f"  calls failed     {failed} with a clear error"
        + (f" ({_counts(tally.failed)})" if failed else ""),
    ]
    for name, _ in tally.failed.most_common():
        lines.append(f"                     {name}: e.g. {tally.examples[name]}")
    if unclear:
        lines.append(f"  unexpected       {unclear} ({_counts(tally.unclear)})")
        for name, _ in tally.unclear.most_common():
            lines.append(f"                     {name}: e.g. {tally.examples[name]}")
    local = sum(tally.local.values())
    if local:
        lines.append(f"  demo errors      {local} in the demo's own code ({_counts(tally.local)})")
        for name, _ in tally.local.most_common():
            lines.append(f"                     {name}: e.g. {tally.examples['local ' + name]}")
    lines.append(f"  calls lost       {lost}")
    if rows is not None:
        lines.append(f"  rows logged      {rows}")
    if lost:
        lines.append(f"result: FAILED, {lost} calls never resolved")
    elif local:
        lines.append("result: FAILED, the demo's own code raised (see demo errors)")
    else:
        lines.append("result: OK, every call resolved (ok or with a clear error)")
    print("\n".join(lines), file=out, flush=True)


def _counts(counter: Counter[str] | dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.items())
