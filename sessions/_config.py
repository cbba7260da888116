"""Configuration: the TOML/mapping shape, validated with pydantic.

Every problem becomes a :class:`~sessions.ConfigError` whose path names the exact
location (``supervisor.strategy``, ``resources.bus.call_timeout``); pydantic's own
messages and tracebacks never reach the user.
"""

from __future__ import annotations

import difflib
import inspect
import ipaddress
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sessions._errors import ConfigError
from sessions._explain import did_you_mean, explain
from sessions._redact import redact
from sessions._runtime.contract import ResourceActor, construct
from sessions._runtime.kinds import kind_name, resolve_kind

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = "root"
STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
RESTART_TYPES = ("permanent", "transient", "temporary")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BackoffConfig(_Model):
    """``backoff = { initial, max, multiplier, jitter }``."""

    initial: float = Field(0.1, ge=0, description="Delay before the first restart (s).")
    max: float = Field(30.0, ge=0, description="Cap on the delay before jitter (s).")
    multiplier: float = Field(2.0, ge=1, description="Growth per consecutive failure.")
    jitter: float = Field(0.1, ge=0, le=1, description="Random spread, fraction of the delay.")

    @field_validator("initial", "max")
    @classmethod
    def _finite(cls, value: float) -> float:
        if math.isinf(value):
            raise ValueError("must be a finite number of seconds: with inf the child would "
                             "wait in 'restarting' for ever (restart = \"temporary\" is how "
                             "to not restart a child), got inf")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> BackoffConfig:
        if "initial" in self.model_fields_set and self.initial > self.max:
            default = "" if "max" in self.model_fields_set else " (the default)"
            raise ValueError(f"initial = {self.initial:g} is above max = {self.max:g}"
                             f"{default}, the cap on every delay: make initial <= max")
        return self


class SupervisorConfig(_Model):
    """``[supervisor]`` (the root) or ``[supervisors.NAME]``."""

    strategy: Literal["one_for_one", "one_for_all", "rest_for_one"] = "one_for_one"
    max_restarts: int = Field(3, ge=0, description="Restarts allowed within `period`.")
    period: float = Field(5.0, gt=0, description="Intensity window (s).")
    backoff: BackoffConfig = BackoffConfig()
    parent: str | None = Field(None, description="Parent supervisor; omitted: the root.")
    restart: Literal["permanent", "transient", "temporary"] = Field(
        "permanent", description="What its parent does when it gives up: restart it "
        "(permanent, transient) or leave it stopped (temporary). Not for the root.")
    auto_shutdown: Literal["never", "any_significant", "all_significant"] = Field(
        "never", description="Shut this supervisor down (a normal exit) when any, or all, "
        "of its significant children have ended by themselves (OTP's auto_shutdown).")
    significant: bool = Field(
        False, description="Its own ending counts for its parent's auto_shutdown; needs "
        "restart = transient or temporary. Not for the root.")


class BreakerConfig(_Model):
    """``breaker = { failures, reset_timeout }``: the circuit breaker of a resource."""

    failures: int = Field(5, ge=1, description="Consecutive failures that open the circuit.")
    reset_timeout: float = Field(10.0, gt=0, description="Seconds open before one probe call.")

    @field_validator("reset_timeout")
    @classmethod
    def _finite(cls, value: float) -> float:
        if math.isinf(value):
            raise ValueError("must be a finite number of seconds: with inf an open circuit "
                             "would never probe again and refuse every call for ever, got inf")
        return value


def _kind_value(value: Any) -> Any:
    """A kind given as a class object is stored by name (see ``kind_name``); another class
    is refused here, where the message can say what a class must be."""
    value = kind_name(value)
    if isinstance(value, type):
        raise ValueError(f"a class given as the kind must be a sessions.ResourceActor "
                         f"subclass, got {value.__module__}.{value.__qualname__}")
    return value


class ResourceConfig(BaseModel):
    """``[resources.NAME]``: the supervision keys; every other key goes to the kind."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: Annotated[str, BeforeValidator(_kind_value)] = Field(
        description="Built-in kind, entry point name, 'package.module:Class', or (in a "
        "config given as a dict) the class itself.")
    supervisor: str | None = Field(None, description="Supervisor name; omitted: the root.")
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    call_timeout: float = Field(
        5.0, gt=0, description="Max wait for a call to complete (s); finite: it is the "
        "deadline of every call.")
    connect_timeout: float = Field(
        30.0, gt=0, description="Max time for one connect (s); inf: no limit (sessions "
        "check warns).")
    stall_timeout: float | None = Field(
        None, gt=0, description="A call (or health check, poll) still running after this "
        "is a fault: its caller gets ResourceFault, the connection is aborted and the "
        "resource restarted (s); omitted: twice call_timeout.")
    health_interval: float | None = Field(
        None, gt=0, description="Seconds between health checks; omitted: none.")
    shutdown_timeout: float | Literal["brutal_kill"] = Field(
        5.0, description="Time to finish the current call and disconnect on a stop (s); "
        "then the connection is aborted. 'infinity' (or inf): wait for ever; 'brutal_kill': "
        "abort at once, no graceful disconnect (Erlang/OTP's three shutdown forms).")

    @field_validator("shutdown_timeout", mode="plain",
                     json_schema_input_type=float | Literal["infinity", "brutal_kill"])
    @classmethod
    def _shutdown(cls, value: Any) -> float | str:
        """A number > 0 (inf allowed), "infinity" or "brutal_kill", as OTP's shutdown."""
        if value == "brutal_kill":
            return "brutal_kill"
        if value == "infinity":
            return math.inf
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise ValueError(
            f"expected seconds > 0, 'infinity' or 'brutal_kill', got {redact(repr(value))}")
    pool_size: int = Field(
        1, ge=1, le=1024, description="Actors (connections, threads) behind one handle.")
    significant: bool = Field(
        False, description="Its ending by itself (transient: normally; temporary: any "
        "way) counts for its supervisor's auto_shutdown; needs restart = transient or "
        "temporary, and pool_size = 1.")
    breaker: BreakerConfig | None = Field(None, description="Circuit breaker; omitted: none.")

    @field_validator("call_timeout")
    @classmethod
    def _call_deadline(cls, value: float) -> float:
        if math.isinf(value):
            raise ValueError("must be a finite number of seconds: it is the deadline of every "
                             "call (result() waits until it; stall_timeout = inf is how to turn "
                             "the stall watchdog off), got inf")
        return value

    @field_validator("health_interval")
    @classmethod
    def _health_finite(cls, value: float | None) -> float | None:
        if value is not None and math.isinf(value):
            raise ValueError("must be a finite number of seconds (omit health_interval for no "
                             "health checks), got inf")
        return value

    @property
    def options(self) -> dict[str, Any]:
        """The keys that belong to the resource kind's constructor."""
        return dict(self.model_extra or {})


class ServerConfig(_Model):
    """``[server]``: where ``sessions run`` serves its read-only endpoints."""

    bind: str = Field(
        "127.0.0.1",
        description="Address to listen on: an IPv4 or IPv6 address of this host or a host "
        "name ('0.0.0.0': every IPv4 interface, '::': every IPv6 one). The endpoints are "
        "read-only but show resource names.",
    )
    port: int = Field(
        ge=0, le=65535, description="TCP port; 0 picks a free one (printed at start)."
    )
    faults: bool = Field(
        False, description="Accept fault injection (`sessions fault`, POST /faults/NAME) "
        "from this host's loopback addresses only, to rehearse failures on a staging "
        "controller. Off: the endpoints are read-only.",
    )

    @field_validator("bind")
    @classmethod
    def _address(cls, value: str) -> str:
        problem = bind_problem(value)
        if problem:
            raise ValueError(problem)
        return value


class SystemdConfig(_Model):
    """``[systemd]``: what ``sessions run`` tells systemd (``Type=notify``), when it
    runs under it (``$NOTIFY_SOCKET`` set; otherwise the table is only validated)."""

    ready: list[str] | None = Field(
        None,
        description="Resources that must be running before READY=1 is sent (systemd then "
        "considers the service started). Default: every permanent resource. READY=1 is "
        "never sent early: a resource that does not come up holds it back (STATUS= says "
        "which), and systemd's TimeoutStartSec= decides how long that may last.",
    )


class SystemConfig(_Model):
    """The whole file."""

    supervisor: SupervisorConfig = SupervisorConfig()
    supervisors: dict[str, SupervisorConfig] = {}
    resources: dict[str, ResourceConfig] = {}
    server: ServerConfig | None = None
    systemd: SystemdConfig = SystemdConfig()

    def ready_resources(self) -> list[str]:
        """The resources READY=1 waits for: ``[systemd] ready``, else every permanent
        resource (transient and temporary ones may end for good and stay down)."""
        if self.systemd.ready is not None:
            return list(self.systemd.ready)
        return [name for name, spec in self.resources.items() if spec.restart == "permanent"]


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def bind_problem(bind: str) -> str | None:
    """Why ``bind`` is not an address to listen on (an IP address or a host name), or
    None. Whether it is an address of *this* host is for ``sessions check`` to find out
    (:func:`sessions._tools.check.probe_bind`)."""
    if not bind:
        return ("must not be empty: use '0.0.0.0' (every IPv4 interface), '::' (every IPv6 "
                "one) or one address of this host")
    if "://" in bind:
        return (f"is a URL: bind takes an address only ('127.0.0.1', '::1', 'localhost'), "
                f"got {redact(repr(bind))}")
    if bind.startswith("[") and bind.endswith("]"):
        return f"write an IPv6 address without brackets: {bind[1:-1]!r}"
    try:
        ipaddress.ip_address(bind)
        return None
    except ValueError:
        pass
    host, sep, port = bind.rpartition(":")
    if sep and port.isdigit() and host.count(":") == 0:
        return f"is an address only: write bind = {host!r} and port = {port}, got {bind!r}"
    if ":" in bind:
        return f"not a valid IPv6 address, got {bind!r}"
    name = bind[:-1] if bind.endswith(".") else bind  # a fully qualified name's final dot
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return f"not a valid IPv4 address (four numbers 0-255), got {bind!r}"
    if len(name) > 253:
        return f"a host name has at most 253 characters, got {len(name)}"
    if not all(_HOST_LABEL.fullmatch(label) for label in labels):
        return f"not an IP address or a host name, got {redact(repr(bind))}"
    return None


# -- loading --------------------------------------------------------------------------

#: Largest config file read (bytes): far above any real plant's, far below one that would
#: take minutes and gigabytes to validate.
MAX_FILE_BYTES = 1024 * 1024
#: Most resource (and supervisor) tables in one file; each resource is at least one
#: thread and one connection.
MAX_TABLES = 1000
#: The top-level tables of a config file, as the operator writes them.
TOP_LEVEL = {"supervisor": "[supervisor]", "supervisors": "[supervisors.NAME]",
             "resources": "[resources.NAME]", "server": "[server]", "systemd": "[systemd]"}

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_NAME_RULE = "names are letters, digits, '_', '-' and '.', starting with a letter or '_'"
_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def _substitute(value: Any, path: str, errors: list[tuple[str, str]]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string, recursively."""
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group("name"), m.group("default")
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            errors.append(
                (path, f"environment variable {name} is not set (use ${{{name}:-default}})")
            )
            return m.group(0)

        return _ENV.sub(repl, value)
    if isinstance(value, Mapping):
        return {k: _substitute(v, _join(path, str(k)), errors) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    return value


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def errors_from(exc: ValidationError, prefix: str, data: Any,
                model: type[BaseModel] | None) -> list[tuple[str, str]]:
    """Translate a pydantic ValidationError into ``(path, message)`` pairs naming the
    user's keys (see :mod:`sessions._explain`); ``data`` is what was validated."""
    return explain(exc, prefix, data, model)


def read_file(source: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file; ``ConfigError`` (path ``""``) saying what is wrong with it.

    A leading UTF-8 byte order mark is skipped (valid UTF-8, written by some Windows
    editors; TOML 1.0 does not forbid it). Bytes that are not UTF-8 are reported by line
    and column. A file over :data:`MAX_FILE_BYTES`, one with more than
    :data:`MAX_TABLES` resources or supervisors, and one with nothing in it are errors.
    """
    path = Path(source)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise ConfigError([("", f"config file {str(path)!r} does not exist")]) from None
    except OSError as err:
        raise ConfigError([("", f"cannot read config file {str(path)!r}: "
                                f"{err.strerror or err}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([("", f"{path}: the file is {max(size, len(data)):,} bytes; a "
                                f"config file may have at most {MAX_FILE_BYTES:,} (1 MiB)")])
    try:
        raw: dict[str, Any] = tomllib.loads(_decode(path, data))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([("", f"{path}: invalid TOML: {err}")]) from None
    if not raw:
        raise ConfigError([("", f"{path}: the file is empty (no tables, no keys): there is "
                                "nothing to supervise; a config has [resources.NAME] tables")])
    for key in ("resources", "supervisors"):
        tables = raw.get(key)
        if isinstance(tables, dict) and len(tables) > MAX_TABLES:
            raise ConfigError([(key, f"{len(tables):,} tables; a config file may have at "
                                     f"most {MAX_TABLES:,} (each resource is a thread and a "
                                     "connection at least)")])
    return raw


def _decode(path: Path, data: bytes) -> str:
    """``data`` as text: UTF-8, a leading BOM skipped; ``ConfigError`` with the line and
    column of the first byte that is not UTF-8."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConfigError([("", f"{path}: UTF-16 text (it starts with a UTF-16 byte order "
                                "mark): save it as UTF-8")])
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        begin = data.rfind(b"\n", 0, err.start) + 1
        column = len(data[begin:err.start].decode("utf-8", errors="replace")) + 1
        raise ConfigError([("", f"{path}: not UTF-8 text: line {line}, column {column}: byte "
                                f"0x{data[err.start]:02x} ({err.reason}); save the file as "
                                "UTF-8")]) from None


def load(source: str | os.PathLike[str] | Mapping[str, Any]) -> SystemConfig:
    """Read, substitute and validate a config file path or mapping.

    Every problem is reported at once: the supervision keys, the cross-references
    between tables and each resource's kind and kind keys (also of a table whose
    supervision keys are wrong), as one ``ConfigError``.
    """
    raw: Any = read_file(source) if isinstance(source, (str, os.PathLike)) else source
    errors: list[tuple[str, str]] = []
    raw = _substitute(raw, "", errors)
    unset = [path for path, _ in errors]  # keys still holding a ${VAR} placeholder
    if not isinstance(raw, Mapping):
        raise ConfigError([("", f"expected a table of tables, got {type(raw).__name__}")])
    errors += _unknown_tables(raw)
    known = {k: v for k, v in raw.items() if k in TOP_LEVEL}
    config: SystemConfig | None = None
    try:
        config = SystemConfig.model_validate(known)
    except ValidationError as exc:
        errors += errors_from(exc, "", known, SystemConfig)
    errors += _check_tree(config if config is not None else _valid_part(known))
    if errors:
        resources = known.get("resources")
        if isinstance(resources, Mapping):
            errors += _besides(kind_errors(resources), unset)
        raise ConfigError(errors)
    assert config is not None
    return config


def _unknown_tables(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A top-level key that is none of the four tables, with what it may have meant."""
    errors = []
    for key, value in raw.items():
        if key in TOP_LEVEL:
            continue
        what = f"unknown table [{key}]" if isinstance(value, Mapping) else \
            f"unknown top-level key {key!r}"
        close = difflib.get_close_matches(str(key), list(TOP_LEVEL), n=1, cutoff=0.7)
        hint = f" (did you mean {TOP_LEVEL[close[0]]}?)" if close else ""
        if not hint and isinstance(value, Mapping) and "kind" in value:
            hint = f" (a resource? write [resources.{key}])"
        errors.append((str(key), f"{what}{hint}; a config file has the tables "
                                 f"{', '.join(TOP_LEVEL.values())}"))
    return errors


def _valid_part(raw: Mapping[str, Any]) -> SystemConfig:
    """The tables of an invalid config that are valid on their own (an invalid supervisor
    as a default one, so references to its name still resolve), for the cross-reference
    checks to run on as much of the file as they can."""

    def valid(model: type[_Model] | type[ResourceConfig], table: Any) -> Any:
        try:
            return model.model_validate(table)
        except ValidationError:
            return None

    sups = raw.get("supervisors")
    resources = raw.get("resources")
    return SystemConfig.model_construct(
        supervisor=valid(SupervisorConfig, raw.get("supervisor", {})) or SupervisorConfig(),
        supervisors={str(n): valid(SupervisorConfig, t) or SupervisorConfig()
                     for n, t in sups.items()} if isinstance(sups, Mapping) else {},
        resources={str(n): r for n, t in resources.items()
                   if (r := valid(ResourceConfig, t)) is not None}
        if isinstance(resources, Mapping) else {},
        server=None,
        systemd=SystemdConfig(),
    )


def kind_errors(resources: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The kind and kind-key problems of every resource table that names a kind, whatever
    its supervision keys (so one report has both)."""
    errors: list[tuple[str, str]] = []
    for name, table in resources.items():
        errors += _table_kind_errors(table, f"resources.{name}")
    return errors


def _besides(errors: list[tuple[str, str]], unset: list[str]) -> list[tuple[str, str]]:
    """``errors`` but those at, above or below a key whose ``${VAR}`` is unset: the kind
    saw the placeholder there, not a value (the unset variable is the problem)."""

    def related(path: str, other: str) -> bool:
        return any(a == b or a.startswith((f"{b}.", f"{b}[")) for a, b in
                   ((path, other), (other, path)))

    return [(p, m) for p, m in errors if not any(related(p, u) for u in unset)]


def _table_kind_errors(table: Any, path: str) -> list[tuple[str, str]]:
    kind = kind_name(table.get("kind")) if isinstance(table, Mapping) else None
    if not isinstance(kind, str):
        return []  # reported by the schema
    options = {k: v for k, v in table.items() if k not in ResourceConfig.model_fields}
    try:
        cls = resolve_kind(kind, f"{path}.kind")
        make_actor(cls, check_options(cls, options, path), kind, path)
    except ConfigError as err:
        return list(err.errors)
    return []


def make_actor(cls: type[ResourceActor], options: dict[str, Any], kind: str,
               path: str) -> ResourceActor:
    """Construct a kind's actor object (side-effect free by the ResourceActor contract:
    ``connect()`` does the I/O); a constructor rejecting its options is a config error."""
    try:
        return construct(cls, options)
    except ValidationError as err:
        raise ConfigError(errors_from(err, path, options, cls.Options)) from err
    except (TypeError, ValueError) as err:
        raise ConfigError([(path, f"kind {kind!r} rejected its options: "
                                  f"{redact(err)}")]) from err


def _check_tree(config: SystemConfig) -> list[tuple[str, str]]:
    """Cross-references: supervisor names, parents, cycles, name clashes."""
    errors: list[tuple[str, str]] = []
    sups = config.supervisors
    if ROOT in sups:
        errors.append((f"supervisors.{ROOT}", f"{ROOT!r} is the root supervisor's name"))
    known = ", ".join([ROOT, *sups])
    for name, sup in sups.items():
        if sup.parent is not None and sup.parent != ROOT and sup.parent not in sups:
            errors.append((f"supervisors.{name}.parent",
                           f"unknown supervisor {sup.parent!r} (known: {known})"))
        chain, cur = [name], sup.parent
        while cur is not None and cur in sups:
            if cur in chain:
                cycle = " -> ".join([*chain[chain.index(cur):], cur])
                errors.append((f"supervisors.{name}.parent",
                               f"supervisors form a cycle: {cycle}"))
                break
            chain.append(cur)
            cur = sups[cur].parent
    if config.supervisor.parent is not None:
        errors.append(("supervisor.parent", "the root supervisor has no parent"))
    if config.supervisor.restart != "permanent":
        errors.append(("supervisor.restart", "the root supervisor has no parent to "
                       "restart it: giving up fails the system"))
    if config.supervisor.significant:
        errors.append(("supervisor.significant", "the root supervisor has no parent"))
    tables = [*((f"supervisors.{n}", c.restart, c.significant, 1) for n, c in sups.items()),
              *((f"resources.{n}", r.restart, r.significant, r.pool_size)
                for n, r in config.resources.items())]
    for path, restart, significant, pool_size in tables:
        if significant and restart == "permanent":
            errors.append((f"{path}.significant", "a significant child needs restart = "
                           "transient or temporary (a permanent one never ends for good)"))
        if significant and pool_size > 1:
            errors.append((f"{path}.significant", "a pool (pool_size > 1) cannot be "
                           "significant"))
    for name in [*sups, *config.resources]:
        if not _NAME.fullmatch(name):
            kind = "supervisors" if name in sups else "resources"
            errors.append((f"{kind}.{name}", _NAME_RULE))
    for name, res in config.resources.items():
        if res.supervisor is not None and res.supervisor != ROOT and res.supervisor not in sups:
            errors.append((f"resources.{name}.supervisor",
                           f"unknown supervisor {res.supervisor!r} (known: {known})"))
        if name in sups or name == ROOT:
            errors.append((f"resources.{name}", "name is already used by a supervisor"))
    for i, name in enumerate(config.systemd.ready or []):
        if name in config.resources:
            continue
        resources = ", ".join(config.resources) or "none"
        what = (f"{name!r} is a supervisor; name its resources"
                if name in sups or name == ROOT else f"unknown resource {name!r}")
        errors.append((f"systemd.ready[{i}]", f"{what} (resources: {resources})"))
    return errors


def resource_spec(name: str, spec: Mapping[str, Any] | ResourceConfig,
                  path: str | None = None) -> ResourceConfig:
    """Validate one resource table (used for dynamic children); its kind's keys too
    when the supervision keys have problems (otherwise the caller checks them)."""
    if isinstance(spec, ResourceConfig):
        return spec
    errors: list[tuple[str, str]] = []
    if not _NAME.fullmatch(name):
        errors.append((f"resources.{name}", _NAME_RULE))
    where = path or f"resources.{name}"
    raw = _substitute(spec, where, errors)
    res: ResourceConfig | None = None
    try:
        res = ResourceConfig.model_validate(raw)
    except ValidationError as exc:
        errors += errors_from(exc, where, raw, ResourceConfig)
    if res is not None and res.significant and (
            res.restart == "permanent" or res.pool_size > 1):
        errors.append((f"{where}.significant", "a significant child needs restart = "
                       "transient or temporary, and pool_size = 1"))
    if errors:  # with the kind's own problems, so one report has them all
        unset = [p for p, m in errors if m.startswith("environment variable ")]
        raise ConfigError(errors + _besides(_table_kind_errors(raw, where), unset))
    assert res is not None
    return res


def check_options(cls: type, options: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Validate a kind's constructor keys: its ``Options`` model if it has one,
    otherwise its ``__init__`` signature. Unknown keys are named.

    With a model, the result has every field under its Python name (an aliased field
    too, though the config spells it by its alias), defaults filled in: what
    ``max_pool_size`` reads, and what ``construct`` validates again by name."""
    model = getattr(cls, "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        try:
            validated = model.model_validate(dict(options))
        except ValidationError as exc:
            raise ConfigError(_suggest(errors_from(exc, path, dict(options), model), path,
                                       model.model_fields)) from None
        fields = {k: getattr(validated, k) for k in model.model_fields}
        return fields | dict(validated.model_extra or {})
    if cls.__init__ is ResourceActor.__init__:  # type: ignore[misc]
        params = {}  # neither Options nor a constructor of its own: no options
    else:
        params = dict(inspect.signature(cls.__init__).parameters)  # type: ignore[misc]
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(options)
    accepted = [n for n, p in params.items() if n != "self" and p.kind in
                (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in accepted]
    if unknown:
        hint = f"accepted: {', '.join(accepted)}" if accepted else "this kind takes no options"
        raise ConfigError(_suggest(
            [(_join(path, k), f"unknown key for kind {cls.__name__} ({hint})") for k in unknown],
            path, accepted))
    missing = [n for n, p in params.items() if n != "self" and p.default is p.empty
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in options]
    if missing:
        raise ConfigError([(_join(path, k), "required key is missing") for k in missing])
    return dict(options)


def _suggest(errors: list[tuple[str, str]], path: str,
             fields: Mapping[str, Any] | list[str]) -> list[tuple[str, str]]:
    """Add "did you mean" to an unknown key of a resource table, among the kind's keys and
    the supervision keys (``call_timout`` -> ``call_timeout``)."""
    out = []
    for where, message in errors:
        key = where[len(path) + 1:] if where.startswith(f"{path}.") else ""
        hint = ""
        direct = bool(key) and "." not in key and "[" not in key and key not in fields
        if direct and "did you mean" not in message and (
                "unknown" in message or "not allowed" in message):
            hint = did_you_mean(key, [*fields, *ResourceConfig.model_fields])
        out.append((where, message + hint))
    return out
