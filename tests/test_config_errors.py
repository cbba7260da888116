"""Config errors and defaults, key by key: every bound, every default, every message.

``tests/test_config.py`` checks the shape of a ``ConfigError``; this file checks what
each one says (the key, the resource, the value, the rule) and where the limits of
each key are, through ``sessions.start``, ``System.start_child``,
``sessions.check_childspecs`` and ``System.config``.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import (
    AfterValidator,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails

import sessions
from sessions import ConfigError, ResourceActor
from sessions._config import read_file
from tests.support import config, in_thread
from tests.test_config import BAG, config_error, probe

HERE = "tests.test_config_errors"
NAME_RULE = "names are letters, digits, '_', '-' and '.', starting with a letter or '_'"


class _Quiet(ResourceActor):
    """A kind that connects to nothing."""

    def connect(self) -> object:
        return object()

    def disconnect(self, resource: object) -> None:
        return None


class Needy(_Quiet):
    """A kind with required constructor keys, one of them keyword-only."""

    kind = "needy"

    def __init__(self, host: str, *args: Any, port: int = 5432, user: str) -> None:
        super().__init__()
        self.where = (host, port, user)

    def where_to(self) -> tuple[str, int, str]:
        return self.where


class Bare(_Quiet):
    """A kind that takes no options at all."""

    kind = "bare"


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"a level must be > 0, not {value}")
    return value


class Modelled(_Quiet):
    """A kind whose keys are described by an ``Options`` model."""

    kind = "modelled"

    class Options(BaseModel):
        model_config = ConfigDict(extra="allow", frozen=True)

        port: int = Field(ge=1)
        mode: str = "fast"
        ratio: float = Field(0.5, lt=1)
        level: Annotated[float, AfterValidator(_positive)] | Literal["auto"] = "auto"
        home: AnyUrl | None = None

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.received = options

    def options(self) -> dict[str, Any]:
        return dict(self.received)



class Retry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    total: int = 3


class Paired(_Quiet):
    """A kind whose keys take one of several forms, as the built-in kinds' do."""

    kind = "paired"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        timeout: float | tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = 1.0
        verify: bool | str = True
        retries: int | Retry = 0


def _no_spaces(tag: str) -> str:
    if " " in tag:
        raise ValueError(f"spaces are not allowed in a tag, got {tag!r}")
    return tag


class Tagged(_Quiet):
    """A kind with a list whose items its own validator checks."""

    kind = "tagged"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        tags: list[Annotated[str, AfterValidator(_no_spaces)]] = []


#: The keys ``Passing`` refuses, as the ``redis`` kind refuses the ones the supervisor owns.
_OWNED = {"restarts": "the supervisor restarts the resource"}


class Passing(_Quiet):
    """A kind that passes its unknown keys on to its driver, as ``redis`` does: it refuses
    some ("not allowed"), and a key it passes on may still have a bad value."""

    kind = "passing"

    class Options(BaseModel):
        model_config = ConfigDict(extra="allow", frozen=True)

        timeout: float = 1.0

        @model_validator(mode="wrap")
        @classmethod
        def _driver_keys(cls, data: Any, handler: Any) -> Any:
            problems = []
            for key, value in (data.items() if isinstance(data, Mapping) else ()):
                if key in _OWNED:
                    problem = f"not allowed: {_OWNED[key]}"
                elif key == "timeouts" and not isinstance(value, list):
                    problem = f"expected a list of seconds, got {value!r}"
                else:
                    continue
                problems.append(InitErrorDetails(type="value_error", loc=(key,), input=value,
                                                 ctx={"error": ValueError(problem)}))
            if problems:
                raise ValidationError.from_exception_data(cls.__name__, problems)
            return handler(data)


class Picky(_Quiet):
    """A kind whose constructor refuses a value its signature accepts."""

    kind = "picky"

    def __init__(self, port: int = 1) -> None:
        super().__init__()
        if port < 1:
            raise ValueError(f"port must be >= 1, got {port}")


class _Target(BaseModel):
    url: AnyUrl


class Located(_Quiet):
    """A kind whose constructor validates its key with a pydantic model of its own (as
    the ``canbus`` kind's filters are)."""

    kind = "located"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = _Target.model_validate({"url": url}).url


class Queried(_Quiet):
    """A kind whose url's query string gives more keys (the ``redis`` kind's url takes
    options too), checked by its constructor against its ``Options``."""

    kind = "queried"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)

        url: str
        timeout: float = 1.0

    def __init__(self, **options: Any) -> None:
        super().__init__()
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(options["url"]).query))
        self.settings = self.Options.model_validate({**options, **query})


# -- defaults ---------------------------------------------------------------------------


def test_supervision_defaults() -> None:
    """An empty supervisor table and a resource table with only ``kind`` get the
    documented defaults (the OTP-like intensity 3 in 5 s, a 0.1 s backoff doubling up
    to 30 s with 10 % jitter; call, connect and shutdown timeouts 5, 30, 5 s)."""
    with sessions.start({"supervisors": {"s": {}}, "resources": {"a": probe()}}) as system:
        cfg = system.config
    for sup in (cfg.supervisor, cfg.supervisors["s"]):
        assert sup.strategy == "one_for_one"
        assert sup.max_restarts == 3
        assert sup.period == 5.0
        assert (sup.backoff.initial, sup.backoff.max, sup.backoff.multiplier,
                sup.backoff.jitter) == (0.1, 30.0, 2.0, 0.1)
        assert sup.parent is None
        assert sup.restart == "permanent"
        assert sup.auto_shutdown == "never"
        assert sup.significant is False
    res = cfg.resources["a"]
    assert res.supervisor is None
    assert res.restart == "permanent"
    assert res.call_timeout == 5.0
    assert res.connect_timeout == 30.0
    assert res.stall_timeout is None
    assert res.health_interval is None
    assert res.shutdown_timeout == 5.0
    assert res.pool_size == 1
    assert res.significant is False
    assert res.breaker is None
    assert res.options == {}
    assert cfg.server is None


def test_breaker_and_server_defaults() -> None:
    """``breaker = {}`` opens after 5 failures for 10 s; ``[server]`` binds to localhost."""
    with sessions.start({"resources": {"a": probe(breaker={})},
                         "server": {"port": 0}}) as system:
        cfg = system.config
        assert system.get("a").circuit == "closed"
    assert cfg.resources["a"].breaker is not None
    assert (cfg.resources["a"].breaker.failures, cfg.resources["a"].breaker.reset_timeout) == (
        5, 10.0)
    assert cfg.server is not None
    assert (cfg.server.bind, cfg.server.port) == ("127.0.0.1", 0)


def test_child_spec_leaves_out_exactly_the_defaults() -> None:
    """``child_spec`` shows only what differs from the defaults: a key set to its default
    value is left out, one set to anything else is shown."""
    defaults = {"restart": "permanent", "call_timeout": 5.0, "connect_timeout": 30.0,
                "shutdown_timeout": 5.0, "pool_size": 1, "significant": False}
    changed = {"restart": "transient", "call_timeout": 6.0, "connect_timeout": 31.0,
               "shutdown_timeout": 4.0, "stall_timeout": 2.0, "health_interval": 60.0}
    with sessions.start({"resources": {"d": probe(**defaults), "c": probe(**changed)}}) as system:
        assert system.child_spec("d") == {"kind": "tests.kinds:Probe"}
        assert system.child_spec("c") == {"kind": "tests.kinds:Probe", **changed}


# -- bounds: the edge value is accepted, the one beyond it named with the bound ---------


@pytest.mark.parametrize(("table", "key", "edge"), [
    ("backoff", "initial", 0.0),
    ("backoff", "max", 0.0),
    ("backoff", "multiplier", 1.0),
    ("backoff", "jitter", 0.0),
    ("backoff", "jitter", 1.0),
    ("supervisor", "max_restarts", 0),
])
def test_supervisor_edge_values_are_accepted(table: str, key: str, edge: float) -> None:
    sup: dict[str, Any] = {"backoff": {key: edge}} if table == "backoff" else {key: edge}
    with sessions.start({"supervisors": {"s": sup}}) as system:
        got = system.config.supervisors["s"]
        assert (getattr(got.backoff, key) if table == "backoff" else getattr(got, key)) == edge


@pytest.mark.parametrize(("sup", "path", "message"), [
    ({"backoff": {"max": -0.5}}, "supervisors.s.backoff.max", "must be >= 0, got -0.5"),
    ({"backoff": {"initial": -0.5}}, "supervisors.s.backoff.initial", "must be >= 0, got -0.5"),
    ({"backoff": {"multiplier": 0.99}}, "supervisors.s.backoff.multiplier",
     "must be >= 1, got 0.99"),
    ({"backoff": {"jitter": 1.01}}, "supervisors.s.backoff.jitter", "must be <= 1, got 1.01"),
    ({"period": 0.0}, "supervisors.s.period", "must be > 0, got 0.0"),
])
def test_supervisor_values_beyond_the_edge(sup: dict[str, Any], path: str, message: str) -> None:
    err = config_error({"supervisors": {"s": sup}})
    assert err.errors == [(path, message)]


@pytest.mark.parametrize(("spec", "check"), [
    ({"pool_size": 1}, lambda r: r.pool_size == 1),
    ({"breaker": {"failures": 1, "reset_timeout": 0.001}},
     lambda r: (r.breaker.failures, r.breaker.reset_timeout) == (1, 0.001)),
    ({"stall_timeout": 0.001}, lambda r: r.stall_timeout == 0.001),
    ({"health_interval": 1000}, lambda r: r.health_interval == 1000.0),
])
def test_resource_edge_values_are_accepted(spec: dict[str, Any], check: Any) -> None:
    with sessions.start({"resources": {"a": probe(**spec)}}) as system:
        assert check(system.config.resources["a"])


@pytest.mark.parametrize(("spec", "path", "message"), [
    ({"pool_size": 0}, "resources.a.pool_size", "must be >= 1, got 0"),
    ({"pool_size": 1025}, "resources.a.pool_size", "must be <= 1024, got 1025"),
    ({"breaker": {"failures": 0}}, "resources.a.breaker.failures", "must be >= 1, got 0"),
    ({"breaker": {"reset_timeout": 0}}, "resources.a.breaker.reset_timeout",
     "must be > 0, got 0"),
    ({"breaker": {"failure": 3}}, "resources.a.breaker.failure",
     "unknown key (did you mean 'failures'?)"),
    ({"stall_timeout": 0}, "resources.a.stall_timeout", "must be > 0, got 0"),
    ({"stall_timeout": -1.5}, "resources.a.stall_timeout", "must be > 0, got -1.5"),
    ({"health_interval": 0}, "resources.a.health_interval", "must be > 0, got 0"),
])
def test_resource_values_beyond_the_edge(spec: dict[str, Any], path: str, message: str) -> None:
    err = config_error({"resources": {"a": probe(**spec)}})
    assert err.errors == [(path, message)]



# -- unbounded values: where inf means something, and where it is refused ------------

_FINITE = "must be a finite number of seconds"


@pytest.mark.parametrize(("cfg", "path", "message"), [
    ({"resources": {"a": probe(call_timeout=math.inf)}}, "resources.a.call_timeout",
     f"{_FINITE}: it is the deadline of every call (result() waits until it; stall_timeout = "
     "inf is how to turn the stall watchdog off), got inf"),
    ({"resources": {"a": probe(call_timeout=math.nan)}}, "resources.a.call_timeout",
     "must be > 0, got nan"),
    ({"resources": {"a": probe(health_interval=math.inf)}}, "resources.a.health_interval",
     f"{_FINITE} (omit health_interval for no health checks), got inf"),
    ({"resources": {"a": probe(breaker={"reset_timeout": math.inf})}},
     "resources.a.breaker.reset_timeout",
     f"{_FINITE}: with inf an open circuit would never probe again and refuse every call "
     "for ever, got inf"),
    ({"supervisor": {"backoff": {"max": math.inf}}}, "supervisor.backoff.max",
     f"{_FINITE}: with inf the child would wait in 'restarting' for ever (restart = "
     "\"temporary\" is how to not restart a child), got inf"),
    ({"supervisors": {"s": {"backoff": {"initial": math.inf}}}}, "supervisors.s.backoff.initial",
     f"{_FINITE}: with inf the child would wait in 'restarting' for ever (restart = "
     "\"temporary\" is how to not restart a child), got inf"),
])
def test_inf_is_refused_where_it_would_break_or_mean_nothing(
        cfg: dict[str, Any], path: str, message: str) -> None:
    """call_timeout is a deadline (an infinite one crashed every call's wait)."""
    assert config_error(cfg).errors == [(path, message)]


def test_inf_is_accepted_where_it_means_no_limit() -> None:
    """connect_timeout and stall_timeout (``sessions check`` warns), the intensity period
    (every restart counts) and the backoff multiplier (capped by max)."""
    cfg = {"supervisor": {"period": math.inf, "backoff": {"multiplier": math.inf}},
           "resources": {"a": probe(connect_timeout=math.inf, stall_timeout=math.inf)}}
    with sessions.start(cfg) as system:
        assert system.get("a").echo(1).result(10) == 1
        assert math.isinf(system.config.supervisor.period)


@pytest.mark.parametrize(("backoff", "message"), [
    ({"initial": 10, "max": 1},
     "initial = 10 is above max = 1, the cap on every delay: make initial <= max"),
    ({"initial": 60},
     "initial = 60 is above max = 30 (the default), the cap on every delay: make initial <= max"),
])
def test_a_backoff_starting_above_its_cap_is_refused(backoff: dict[str, Any],
                                                     message: str) -> None:
    assert config_error({"supervisor": {"backoff": backoff}}).errors == [
        ("supervisor.backoff", message)]


@pytest.mark.parametrize("backoff", [{"initial": 5, "max": 5}, {"max": 0.05}, {"max": 0}])
def test_a_backoff_cap_below_the_default_start_is_accepted(backoff: dict[str, Any]) -> None:
    """Only an ``initial`` the file sets is compared: ``max = 0`` alone means no delay."""
    with sessions.start({"supervisor": {"backoff": backoff}}) as system:
        assert system.config.supervisor.backoff.max == backoff["max"]


@pytest.mark.parametrize(("server", "errors"), [
    ({"port": -1}, [("server.port", "must be >= 0, got -1")]),
    ({"port": 65536}, [("server.port", "must be <= 65535, got 65536")]),
    ({}, [("server.port", "required key is missing")]),
    ({"port": 80, "host": "x"}, [("server.host", "unknown key")]),
])
def test_server_port_range(server: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    assert config_error({"server": server}).errors == errors


def test_server_port_edges_are_accepted() -> None:
    for port in (0, 65535):
        with sessions.start({"server": {"port": port, "bind": "0.0.0.0"}}) as system:
            assert system.config.server is not None
            assert (system.config.server.port, system.config.server.bind) == (port, "0.0.0.0")



@pytest.mark.parametrize(("bind", "message"), [
    ("", "must not be empty: use '0.0.0.0' (every IPv4 interface), '::' (every IPv6 one) or "
         "one address of this host"),
    ("999.1.1.1", "not a valid IPv4 address (four numbers 0-255), got '999.1.1.1'"),
    ("10.0.0", "not a valid IPv4 address (four numbers 0-255), got '10.0.0'"),
    ("localhost:8080", "is an address only: write bind = 'localhost' and port = 8080, "
                       "got 'localhost:8080'"),
    ("[::1]", "write an IPv6 address without brackets: '::1'"),
    ("::g", "not a valid IPv6 address, got '::g'"),
    ("http://example.org", "is a URL: bind takes an address only ('127.0.0.1', '::1', "
                           "'localhost'), got 'http://example.org'"),
    ("my host", "not an IP address or a host name, got 'my host'"),
    ("-bad-.example", "not an IP address or a host name, got '-bad-.example'"),
    ("my host.", "not an IP address or a host name, got 'my host.'"),
    ("[::1", "not a valid IPv6 address, got '[::1'"),
    ("1::2::3", "not a valid IPv6 address, got '1::2::3'"),
    (".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 62]),
     "a host name has at most 253 characters, got 254"),
])
def test_server_bind_must_be_an_address(bind: str, message: str) -> None:
    """What ``run`` would fail to listen on is named by ``check`` (whether the address is
    one of this host's is ``sessions check``'s to find out: see test_cli)."""
    assert config_error({"server": {"bind": bind, "port": 0}}).errors == [("server.bind", message)]


_LONGEST_NAME = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "::1", "127.0.0.1", "localhost",
                                  "plant-gw.example.org", "plant-gw.example.org.", "plc-1.",
                                  _LONGEST_NAME, f"{_LONGEST_NAME}."])
def test_server_bind_accepts_addresses_and_host_names(bind: str) -> None:
    with sessions.start({"server": {"bind": bind, "port": 0}}) as system:
        assert system.config.server is not None and system.config.server.bind == bind


# -- shutdown_timeout: seconds, 'infinity' or 'brutal_kill' ---------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("brutal_kill", "brutal_kill"),
    ("infinity", math.inf),
    (math.inf, math.inf),
    (3, 3.0),
    (0.25, 0.25),
])
def test_shutdown_timeout_forms(value: Any, expected: Any) -> None:
    with sessions.start({"resources": {"a": probe(shutdown_timeout=value)}}) as system:
        got = system.config.resources["a"].shutdown_timeout
    assert got == expected
    assert type(got) is type(expected)


@pytest.mark.parametrize(("value", "shown"), [
    (0, "0"),
    (-2, "-2"),
    (True, "True"),
    ("soon", "'soon'"),
    ("Infinity", "'Infinity'"),
    ("brutal", "'brutal'"),
    ("postgresql://u:hunter2@db/x", "'postgresql://u:***@db/x'"),
])
def test_shutdown_timeout_refused_values(value: Any, shown: str) -> None:
    """Anything else names the three accepted forms and the value (its password masked)."""
    err = config_error({"resources": {"a": probe(shutdown_timeout=value)}})
    assert err.errors == [("resources.a.shutdown_timeout",
                           f"expected seconds > 0, 'infinity' or 'brutal_kill', got {shown}")]
    assert "hunter2" not in str(err)


# -- pydantic's errors in plain words ------------------------------------------------


@pytest.mark.parametrize(("cfg", "error"), [
    ({"supervisor": {"max_restarts": "many"}},
     ("supervisor.max_restarts", "expected an integer, got 'many'")),
    ({"supervisor": {"auto_shutdown": "sometimes"}},
     ("supervisor.auto_shutdown",
      "expected one of never, any_significant, all_significant, got 'sometimes'")),
    ({"supervisors": {"s": {"restart": "always"}}},
     ("supervisors.s.restart", "expected one of permanent, transient, temporary, got 'always'")),
    ({"supervisors": {"s": "fast"}},
     ("supervisors.s", "expected a table, got 'fast'")),
    ({"resources": {"a": "fast"}},
     ("resources.a", "expected a table, got 'fast'")),
    ({"resources": {"a": probe(significant="maybe")}},
     ("resources.a.significant", "expected true or false, got 'maybe'")),
])
def test_schema_messages(cfg: dict[str, Any], error: tuple[str, str]) -> None:
    """Each kind of schema problem is one plain sentence ending with the value given."""
    assert config_error(cfg).errors == [error]


@pytest.mark.parametrize("name", ["model", "url", "default", "list"])
def test_a_resource_named_like_a_schema_tag_is_named_at_its_key(name: str) -> None:
    """pydantic names the members of a union ``model``, ``url``, ``list``...: a resource
    the user named so is still a key of the file, not a union member."""
    err = config_error({"resources": {name: probe(call_timeout=0)}})
    assert err.errors == [(f"resources.{name}.call_timeout", "must be > 0, got 0")]


def test_values_in_messages_have_their_passwords_masked() -> None:
    secret = "postgresql://plant:hunter2@db/x"
    err = config_error({"supervisor": {"strategy": secret, "max_restarts": secret}})
    assert err.errors == [
        ("supervisor.strategy",
         "expected one of one_for_one, one_for_all, rest_for_one, got 'postgresql://plant:***@db/x'"),
        ("supervisor.max_restarts", "expected an integer, got 'postgresql://plant:***@db/x'"),
    ]
    assert "hunter2" not in str(err)


# -- environment variables -----------------------------------------------------------


def test_missing_variables_come_first_then_schema_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset variable is reported with its exact advice, before the schema problems,
    each at the path of the string that used it (list items by index)."""
    monkeypatch.delenv("SESSIONS_TEST_NOPE", raising=False)
    err = config_error({
        "supervisor": {"period": 0},
        "resources": {"a": {"kind": BAG, "hosts": ["ok", "${SESSIONS_TEST_NOPE}"]}},
    })
    assert err.errors == [
        ("resources.a.hosts[1]",
         "environment variable SESSIONS_TEST_NOPE is not set (use ${SESSIONS_TEST_NOPE:-default})"),
        ("supervisor.period", "must be > 0, got 0"),
    ]


def test_missing_variables_come_with_the_cross_reference_problems(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A config valid in shape but with an unset variable and a bad reference lists both."""
    monkeypatch.delenv("SESSIONS_TEST_NOPE", raising=False)
    err = config_error({"resources": {"a": probe(label="${SESSIONS_TEST_NOPE}", supervisor="x")}})
    assert err.errors == [
        ("resources.a.label",
         "environment variable SESSIONS_TEST_NOPE is not set (use ${SESSIONS_TEST_NOPE:-default})"),
        ("resources.a.supervisor", "unknown supervisor 'x' (known: root)"),
    ]


def test_a_check_that_sees_an_unset_variable_names_it_as_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The placeholder stays as the file wrote it: the unknown supervisor is
    '${SESSIONS_TEST_NOPE}', not a name the user never wrote."""
    monkeypatch.delenv("SESSIONS_TEST_NOPE", raising=False)
    err = config_error({"resources": {"a": probe(supervisor="${SESSIONS_TEST_NOPE}")}})
    assert err.errors == [
        ("resources.a.supervisor",
         "environment variable SESSIONS_TEST_NOPE is not set (use ${SESSIONS_TEST_NOPE:-default})"),
        ("resources.a.supervisor", "unknown supervisor '${SESSIONS_TEST_NOPE}' (known: root)"),
    ]


def test_only_well_formed_references_are_substituted(monkeypatch: pytest.MonkeyPatch) -> None:
    """``${NAME}`` needs a name (letters, digits, '_', not starting with a digit);
    anything else is left as written."""
    monkeypatch.setenv("SESSIONS_TEST_V1", "one")
    monkeypatch.setenv("_SESSIONS_TEST", "two")
    label = "${SESSIONS_TEST_V1}|${_SESSIONS_TEST}|${1X}|$SESSIONS_TEST_V1|${}|${A-B}"
    with sessions.start({"resources": {"a": probe(label=label)}}) as system:
        got = system.get("a").apply(lambda p: p.label).result(10)
    assert got == "one|two|${1X}|$SESSIONS_TEST_V1|${}|${A-B}"


def test_a_set_variable_wins_over_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Also when it is set to the empty string."""
    monkeypatch.setenv("SESSIONS_TEST_EMPTYSET", "")
    with sessions.start({"resources": {"a": probe(label="<${SESSIONS_TEST_EMPTYSET:-d}>")}}) as s:
        assert s.get("a").apply(lambda p: p.label).result(10) == "<>"


# -- files -------------------------------------------------------------------------------


def test_missing_file_message(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert config_error(path).errors == [("", f"config file {str(path)!r} does not exist")]


def test_invalid_toml_message(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[resources.a\n", encoding="utf-8")
    ((where, message),) = config_error(path).errors
    assert where == ""
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 1" in message


def test_not_utf8_message(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[resources.a]\nlabel = "caf\xe9"\n')
    ((where, message),) = config_error(path).errors
    assert where == ""
    assert message == (f"{path}: not UTF-8 text: line 2, column 13: byte 0xe9 (invalid "
                       "continuation byte); save the file as UTF-8")


@pytest.mark.parametrize(("text", "line", "column"), [
    (b'\n# plant\n[resources.a]\nlabel = "\xc3\xa9t\xe9"\nkind = "x"\n', 4, 12),
    (b'\nlabel = "caf\xe9"\n', 2, 13),
])
def test_not_utf8_position_is_counted_from_the_start_of_the_file(
        tmp_path: Path, text: bytes, line: int, column: int) -> None:
    """Every line before the bad byte counts (a leading blank one too, none after it); the
    column counts the characters of its own line, not its bytes."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(text)
    assert config_error(path).errors == [
        ("", f"{path}: not UTF-8 text: line {line}, column {column}: byte 0xe9 (invalid "
             "continuation byte); save the file as UTF-8")]


def test_unreadable_path_message(tmp_path: Path) -> None:
    ((where, message),) = config_error(tmp_path).errors
    assert where == ""
    assert message == f"cannot read config file {str(tmp_path)!r}: Is a directory"



def test_a_utf8_byte_order_mark_is_skipped(tmp_path: Path) -> None:
    """Valid UTF-8 (Windows editors write it); TOML 1.0 does not forbid it, tomllib
    alone would say 'Invalid statement' at line 1."""
    path = tmp_path / "bom.toml"
    path.write_bytes(b'\xef\xbb\xbf[resources.a]\nkind = "tests.kinds:Probe"\n')
    with sessions.start(path) as system:
        assert list(system.config.resources) == ["a"]


@pytest.mark.parametrize(("encoding", "mark"), [("utf-16-le", b"\xff\xfe"),
                                              ("utf-16-be", b"\xfe\xff")])
def test_utf16_text_is_named(tmp_path: Path, encoding: str, mark: bytes) -> None:
    """Little- or big-endian: both byte order marks are recognised."""
    path = tmp_path / "utf16.toml"
    path.write_bytes(mark + '[resources.a]\nkind = "x"\n'.encode(encoding))
    assert config_error(path).errors == [
        ("", f"{path}: UTF-16 text (it starts with a UTF-16 byte order mark): save it as UTF-8")]


@pytest.mark.parametrize("text", ["", "\n  \n", "# nothing here yet\n"])
def test_an_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    """A file with nothing in it is far more likely a wrong path or a truncated deploy than
    a plant with nothing to supervise (a mapping {} stays valid for the library)."""
    path = tmp_path / "empty.toml"
    path.write_text(text, encoding="utf-8")
    assert config_error(path).errors == [
        ("", f"{path}: the file is empty (no tables, no keys): there is nothing to supervise; "
             "a config has [resources.NAME] tables")]


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_bytes(b"# padding\n" * (1024 * 1024 // 10 + 1))
    size = path.stat().st_size
    assert config_error(path).errors == [
        ("", f"{path}: the file is {size:,} bytes; a config file may have at most 1,048,576 "
             "(1 MiB)")]


def test_a_file_of_exactly_the_size_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "full.toml"
    head = b'[resources.a]\nkind = "tests.kinds:Probe"\n'
    path.write_bytes(head + b"#" * (1024 * 1024 - len(head) - 1) + b"\n")
    assert path.stat().st_size == 1024 * 1024
    with sessions.start(path) as system:
        assert list(system.config.resources) == ["a"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_a_stream_is_read_only_to_one_byte_past_the_size_limit(tmp_path: Path) -> None:
    """A path with no size to check first (a pipe, a device such as /dev/zero) is read up
    to one byte past the limit, then refused: never to its end."""
    path = tmp_path / "stream.toml"
    os.mkfifo(path)
    total = 4 * 1024 * 1024
    chunk = b"# padding\n" * 6554

    def write() -> int:
        written = 0
        try:
            with open(path, "wb", buffering=0) as pipe:
                while written < total:
                    written += pipe.write(chunk[:total - written]) or 0
        except BrokenPipeError:  # the reader closed the pipe: what it had was enough
            pass
        return written

    writer = in_thread(write)
    errors = config_error(path).errors
    assert errors == [("", f"{path}: the file is 1,048,577 bytes; a config file may have "
                           "at most 1,048,576 (1 MiB)")]
    assert writer.result(timeout=10) < total


@pytest.mark.parametrize("table", ["resources", "supervisors"])
def test_more_tables_than_the_limit_are_refused(tmp_path: Path, table: str) -> None:
    path = tmp_path / "many.toml"
    kind = 'kind = "tests.kinds:Probe"\n' if table == "resources" else ""
    path.write_text("".join(f"[{table}.t{i}]\n{kind}" for i in range(1001)), encoding="utf-8")
    assert config_error(path).errors == [
        (table, "1,001 tables; a config file may have at most 1,000 (each resource is a "
                "thread and a connection at least)")]
    path.write_text("".join(f"[{table}.t{i}]\n{kind}" for i in range(1000)), encoding="utf-8")
    assert len(read_file(path)[table]) == 1000


def test_file_values_are_substituted_and_cross_checked(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSIONS_TEST_NOPE", raising=False)
    path = tmp_path / "s.toml"
    path.write_text('[resources.a]\nkind = "tests.kinds:Probe"\nsupervisor = "x"\n'
                    'label = "${SESSIONS_TEST_NOPE}"\n', encoding="utf-8")
    assert [p for p, _ in config_error(path).errors] == ["resources.a.label",
                                                        "resources.a.supervisor"]


# -- the tree: names, parents, cycles ------------------------------------------------


def test_a_chain_leading_into_a_cycle_is_reported_not_looped() -> None:
    """``a`` under ``b``, ``b`` and ``c`` each other's parent: a ConfigError at every
    supervisor whose parents never reach the root, naming the cycle (never a hang)."""
    future = in_thread(lambda: config_error({"supervisors": {
        "a": {"parent": "b"}, "b": {"parent": "c"}, "c": {"parent": "b"}, "ok": {}}}))
    err = future.result(timeout=10)
    assert [p for p, _ in err.errors] == ["supervisors.a.parent", "supervisors.b.parent",
                                          "supervisors.c.parent"]
    messages = [m for _, m in err.errors]
    assert messages == ["supervisors form a cycle: b -> c -> b",
                        "supervisors form a cycle: b -> c -> b",
                        "supervisors form a cycle: c -> b -> c"]


def test_a_self_parent_names_itself() -> None:
    err = config_error({"supervisors": {"s": {"parent": "s"}}})
    assert err.errors == [("supervisors.s.parent", "supervisors form a cycle: s -> s")]


def test_a_long_chain_to_the_root_is_no_cycle() -> None:
    """Parents declared after their children, a chain of four ending at ``root``."""
    sups = {"d": {"parent": "c"}, "c": {"parent": "b"}, "b": {"parent": "a"},
            "a": {"parent": "root"}}
    with sessions.start(config({"x": {"supervisor": "d"}}, supervisors=sups)) as system:
        assert [c.name for c in system.which_children()] == ["a"]
        assert [c.name for c in system.which_children("d")] == ["x"]


def test_unknown_parent_lists_the_known_supervisors() -> None:
    err = config_error({"supervisors": {"s": {"parent": "ghost"}, "t": {}}})
    assert err.errors == [("supervisors.s.parent",
                           "unknown supervisor 'ghost' (known: root, s, t)")]


def test_root_reserved_exact_message() -> None:
    err = config_error({"supervisors": {"root": {}}})
    assert err.errors == [("supervisors.root", "'root' is the root supervisor's name")]


@pytest.mark.parametrize(("root", "error"), [
    ({"parent": "x"}, ("supervisor.parent", "the root supervisor has no parent")),
    ({"restart": "transient"},
     ("supervisor.restart",
      "the root supervisor has no parent to restart it: giving up fails the system")),
    ({"restart": "temporary"},
     ("supervisor.restart",
      "the root supervisor has no parent to restart it: giving up fails the system")),
    ({"significant": True, "restart": "permanent"},
     ("supervisor.significant", "the root supervisor has no parent")),
])
def test_root_supervisor_keys(root: dict[str, Any], error: tuple[str, str]) -> None:
    assert config_error({"supervisor": root}).errors == [error]


def test_root_supervisor_keys_are_checked_when_another_table_is_invalid() -> None:
    """The cross-reference checks run on the valid part of an invalid file: the root
    supervisor's own table included."""
    err = config_error({"supervisor": {"restart": "transient"},
                        "resources": {"a": probe(pool_size=0)}})
    assert err.errors == [
        ("resources.a.pool_size", "must be >= 1, got 0"),
        ("supervisor.restart",
         "the root supervisor has no parent to restart it: giving up fails the system")]


def test_the_root_may_be_named_as_a_parent_and_a_supervisor() -> None:
    with sessions.start({"supervisors": {"s": {"parent": "root"}},
                         "resources": {"a": probe(supervisor="root")}}) as system:
        assert [c.name for c in system.which_children()] == ["a", "s"]


SIGNIFICANT_PERMANENT = ("a significant child needs restart = transient or temporary "
                         "(a permanent one never ends for good)")
SIGNIFICANT_POOL = "a pool (pool_size > 1) cannot be significant"


@pytest.mark.parametrize(("cfg", "errors"), [
    ({"supervisors": {"s": {"significant": True}}},
     [("supervisors.s.significant", SIGNIFICANT_PERMANENT)]),
    ({"resources": {"a": probe(significant=True)}},
     [("resources.a.significant", SIGNIFICANT_PERMANENT)]),
    ({"resources": {"a": probe(significant=True, restart="temporary", pool_size=2)}},
     [("resources.a.significant", SIGNIFICANT_POOL)]),
    ({"resources": {"a": probe(significant=True, pool_size=3)}},
     [("resources.a.significant", SIGNIFICANT_PERMANENT),
      ("resources.a.significant", SIGNIFICANT_POOL)]),
])
def test_significant_messages(cfg: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    assert config_error(cfg).errors == errors


def test_significant_children_that_can_end_are_accepted() -> None:
    cfg = {"supervisors": {"s": {"significant": True, "restart": "transient"}},
           "resources": {"a": probe(significant=True, restart="temporary", supervisor="s"),
                         "p": probe(pool_size=2, restart="transient")}}
    with sessions.start(cfg) as system:
        assert system.config.resources["a"].significant
        assert system.count_children() == sessions.ChildCount(
            specs=2, active=2, supervisors=1, resources=1)


GOOD_NAMES = ["a", "Z", "_", "_x", "a9", "db.main", "db-main", "a_b.c-d", "A.-_9"]
BAD_NAMES = ["9a", "-a", ".a", "a b", "a/b", "a:b", "é", "a\n", "a#1", " a"]


def test_valid_names() -> None:
    cfg = {"supervisors": {f"s{n}": {} for n in GOOD_NAMES},
           "resources": {n: probe() for n in GOOD_NAMES}}
    with sessions.start(cfg) as system:
        assert [c.name for c in system.which_children()][:len(GOOD_NAMES)] == GOOD_NAMES


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names(name: str) -> None:
    """A bad name is reported with the naming rule, at its table."""
    err = config_error({"supervisors": {name: {}, "s": {}}})
    assert err.errors == [(f"supervisors.{name}", NAME_RULE)]
    err = config_error({"supervisors": {"s": {}}, "resources": {name: probe(), "a": probe()}})
    assert err.errors == [(f"resources.{name}", NAME_RULE)]


def test_invalid_resource_name_message() -> None:
    err = config_error({"resources": {"a b": probe()}})
    assert err.errors == [("resources.a b", NAME_RULE)]


def test_unknown_supervisor_of_a_resource_lists_the_known() -> None:
    err = config_error({"supervisors": {"s": {}, "t": {}},
                       "resources": {"a": probe(supervisor="u")}})
    assert err.errors == [("resources.a.supervisor", "unknown supervisor 'u' (known: root, s, t)")]


def test_resource_named_root_message() -> None:
    err = config_error({"resources": {"root": probe()}})
    assert err.errors == [("resources.root", "name is already used by a supervisor")]


def test_systemd_ready_in_a_file_without_resources() -> None:
    err = config_error({"supervisors": {"s": {}}, "systemd": {"ready": ["s", "root", "plc"]}})
    assert err.errors == [
        ("systemd.ready[0]", "'s' is a supervisor; name its resources (resources: none)"),
        ("systemd.ready[1]", "'root' is a supervisor; name its resources (resources: none)"),
        ("systemd.ready[2]", "unknown resource 'plc' (resources: none)"),
    ]


# -- dynamic children: start_child and check_childspecs ------------------------------


@pytest.mark.parametrize("name", ["a b", "9a", "-x", "a/b"])
def test_start_child_refuses_an_invalid_name(name: str) -> None:
    with sessions.start(config(["a"])) as system:
        with pytest.raises(ConfigError) as info:
            system.start_child(name, {"kind": "tests.kinds:Probe"})
        assert info.value.errors == [(f"resources.{name}", NAME_RULE)]
        assert [c.name for c in system.which_children()] == ["a"]


def test_start_child_reports_the_name_and_the_spec_problems_together() -> None:
    with sessions.start(config(["a"])) as system:
        with pytest.raises(ConfigError) as info:
            system.start_child("a b", {"kind": "tests.kinds:Probe", "call_timeout": 0})
        assert info.value.errors == [("resources.a b", NAME_RULE),
                                     ("resources.a b.call_timeout", "must be > 0, got 0")]


def test_start_child_name_and_unset_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SESSIONS_TEST_NOPE", raising=False)
    with sessions.start(config(["a"])) as system:
        with pytest.raises(ConfigError) as info:
            system.start_child("b c", {"kind": "tests.kinds:Probe",
                                       "label": "${SESSIONS_TEST_NOPE}"})
        assert info.value.errors == [
            ("resources.b c", NAME_RULE),
            ("resources.b c.label", "environment variable SESSIONS_TEST_NOPE is not set "
                                    "(use ${SESSIONS_TEST_NOPE:-default})")]


def test_start_child_substitutes_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONS_TEST_DYN", "dynamic")
    with sessions.start(config(["a"])) as system:
        b = system.start_child("b", {"kind": "tests.kinds:Probe", "label": "${SESSIONS_TEST_DYN}",
                                     "call_timeout": "${SESSIONS_TEST_T:-2.5}"})
        assert b.apply(lambda p: p.label).result(10) == "dynamic"
        assert system.child_spec("b")["call_timeout"] == 2.5


@pytest.mark.parametrize(("spec", "starts"), [
    ({"significant": True}, False),
    ({"significant": True, "restart": "transient", "pool_size": 2}, False),
    ({"significant": True, "restart": "temporary"}, True),
    ({"significant": True, "restart": "transient"}, True),
    ({"pool_size": 2}, True),
])
def test_start_child_significant_rule(spec: dict[str, Any], starts: bool) -> None:
    with sessions.start(config(["a"])) as system:
        if starts:
            system.start_child("b", {"kind": "tests.kinds:Probe", **spec})
            assert [c.name for c in system.which_children()] == ["a", "b"]
        else:
            with pytest.raises(ConfigError) as info:
                system.start_child("b", {"kind": "tests.kinds:Probe", **spec})
            assert info.value.errors == [
                ("resources.b.significant", "a significant child needs restart = transient "
                 "or temporary, and pool_size = 1")]


def test_check_childspecs_names_and_shapes() -> None:
    with pytest.raises(ConfigError) as info:
        sessions.check_childspecs({"a b": {"kind": "tests.kinds:Probe"},
                                   "c": {"kind": "tests.kinds:Probe", "pool_size": 0}})
    assert info.value.errors == [("resources.a b", NAME_RULE),
                                 ("resources.c.pool_size", "must be >= 1, got 0")]


def test_check_childspecs_names_a_nested_key_as_written() -> None:
    """A dynamic child's nested unknown key gets its suggestion, and one named like a
    pydantic schema tag (``url``, ``list``, ``default``) is still the user's key."""
    with pytest.raises(ConfigError) as info:
        sessions.check_childspecs({"a": probe(breaker={"failure": 3}),
                                   "b": probe(breaker={"url": "x"})})
    assert info.value.errors == [
        ("resources.a.breaker.failure", "unknown key (did you mean 'failures'?)"),
        ("resources.b.breaker.url", "unknown key"),
    ]


# -- a kind's own keys ---------------------------------------------------------------


def test_missing_required_constructor_keys_are_named() -> None:
    """Every required constructor key (keyword-only included) missing from the table is
    named at its path; ``*args`` and keys with defaults are not required."""
    err = config_error({"resources": {"n": {"kind": f"{HERE}:Needy"}}})
    assert err.errors == [("resources.n.host", "required key is missing"),
                          ("resources.n.user", "required key is missing")]


def test_one_missing_constructor_key() -> None:
    err = config_error({"resources": {"n": {"kind": f"{HERE}:Needy", "host": "h"}}})
    assert err.errors == [("resources.n.user", "required key is missing")]


def test_required_constructor_keys_reach_the_kind() -> None:
    spec = {"kind": f"{HERE}:Needy", "host": "h", "user": "u"}
    with sessions.start({"resources": {"n": spec}}) as system:
        assert system.get("n").where_to().result(10) == ("h", 5432, "u")
        other = system.start_child("m", {**spec, "port": 1})
        assert other.where_to().result(10) == ("h", 1, "u")
        with pytest.raises(ConfigError) as info:
            system.start_child("o", {"kind": f"{HERE}:Needy", "user": "u"})
        assert info.value.errors == [("resources.o.host", "required key is missing")]


def test_unknown_keys_are_named_before_missing_ones() -> None:
    """``args`` (the ``*args`` parameter) is not a key; the accepted ones are listed."""
    err = config_error({"resources": {"n": {"kind": f"{HERE}:Needy", "args": 1, "hots": "h"}}})
    assert err.errors == [
        ("resources.n.args", "unknown key for kind Needy (accepted: host, port, user)"),
        ("resources.n.hots",
         "unknown key for kind Needy (accepted: host, port, user) (did you mean 'host'?)"),
    ]


def test_a_kind_without_options() -> None:
    err = config_error({"resources": {"b": {"kind": f"{HERE}:Bare", "x": 1}}})
    assert err.errors == [("resources.b.x",
                           "unknown key for kind Bare (this kind takes no options)")]
    with sessions.start({"resources": {"b": {"kind": f"{HERE}:Bare"}}}) as system:
        assert system.get("b").state == "running"


def test_options_model_validates_and_fills_defaults() -> None:
    """A kind's ``Options`` model: values are converted, defaults filled in, extra keys
    (when the model allows them) passed through, problems named at their path."""
    spec = {"kind": f"{HERE}:Modelled", "port": "8080", "colour": "red"}
    with sessions.start({"resources": {"m": spec}}) as system:
        assert system.get("m").options().result(10) == {
            "port": 8080, "mode": "fast", "ratio": 0.5, "level": "auto", "home": None,
            "colour": "red"}
    err = config_error({"resources": {"m": {"kind": f"{HERE}:Modelled", "port": 0}}})
    assert err.errors == [("resources.m.port", "must be >= 1, got 0")]
    err = config_error({"resources": {"m": {"kind": f"{HERE}:Modelled"}}})
    assert err.errors == [("resources.m.port", "required key is missing")]



def test_a_dynamic_childs_supervision_and_kind_problems_come_together() -> None:
    """start_child and check_childspecs report a spec's kind keys with its supervision
    keys, not once the supervision keys are fixed."""
    spec = {"kind": f"{HERE}:Modelled", "pool_size": 0, "port": 0}
    expected = [("resources.m.pool_size", "must be >= 1, got 0"),
                ("resources.m.port", "must be >= 1, got 0")]
    with pytest.raises(ConfigError) as info:
        sessions.check_childspecs({"m": spec})
    assert info.value.errors == expected
    with sessions.start({}) as system, pytest.raises(ConfigError) as info:
        system.start_child("m", spec)
    assert info.value.errors == expected


def test_check_childspecs_checks_a_kinds_keys() -> None:
    with pytest.raises(ConfigError) as info:
        sessions.check_childspecs({
            "n": {"kind": f"{HERE}:Needy", "host": "h"},
            "m": {"kind": f"{HERE}:Modelled", "port": -1},
            "b": {"kind": f"{HERE}:Bare", "y": 2},
        })
    assert info.value.errors == [
        ("resources.n.user", "required key is missing"),
        ("resources.m.port", "must be >= 1, got -1"),
        ("resources.b.y", "unknown key for kind Bare (this kind takes no options)"),
    ]


@pytest.mark.parametrize(("options", "errors"), [
    ({"ratio": 1}, [("resources.m.ratio", "must be < 1, got 1")]),
    ({"level": -1}, [("resources.m.level", "a level must be > 0, not -1.0")]),
    ({"level": "high"}, [("resources.m.level", "expected a number or 'auto', got 'high'")]),
    ({"level": [1]}, [("resources.m.level", "expected a number or 'auto', got [1]")]),
    ({"home": "nowhere"}, [
        ("resources.m.home", "expected a URL (relative URL without a base), got 'nowhere'")]),
])
def test_options_model_messages(options: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    """A kind's own keys get the same plain sentences and exact paths as the supervision
    keys, also for a key that may take one of several forms: the problem of the form the
    value has (a number below the bound), or else the forms accepted."""
    err = config_error({"resources": {"m": {"kind": f"{HERE}:Modelled", "port": 1, **options}}})
    assert err.errors == errors


def test_options_model_alternative_forms_are_accepted() -> None:
    spec = {"kind": f"{HERE}:Modelled", "port": 1, "level": 2, "ratio": 0.99,
            "home": "http://example.org/"}
    with sessions.start({"resources": {"m": spec}}) as system:
        got = system.get("m").options().result(10)
    assert (got["level"], got["ratio"], str(got["home"])) == (2.0, 0.99, "http://example.org/")


# -- a key that takes one of several forms -------------------------------------------


@pytest.mark.parametrize(("options", "errors"), [
    ({"timeout": "x"}, [("resources.p.timeout",
                         "expected a number or a list of 2 numbers > 0, got 'x'")]),
    ({"timeout": [1, -2]}, [("resources.p.timeout[1]", "must be > 0, got -2")]),
    ({"timeout": [1, 2, 3]}, [("resources.p.timeout", "expected at most 2 items, got 3 items")]),
    ({"timeout": []}, [("resources.p.timeout", "expected 2 items, got 0")]),
    ({"verify": 3}, [("resources.p.verify", "expected true, false or a string, got 3")]),
    ({"retries": {"totl": 1}}, [("resources.p.retries.totl",
                                 "unknown key (did you mean 'total'?)")]),
    ({"retries": "many"}, [("resources.p.retries", "expected an integer or a table, got 'many'")]),
])
def test_a_union_is_reported_at_the_users_key_in_the_users_words(
        options: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    """No union member's name (``timeout.tuple[...]``, ``verify.bool``) and no pydantic
    wording ("after validation", "Input should be") reaches the message: the problem of
    the form the value has, or else every form accepted; list items by index."""
    err = config_error({"resources": {"p": {"kind": f"{HERE}:Paired", **options}}})
    assert err.errors == errors


# -- every problem in one report -----------------------------------------------------


def test_supervision_keys_and_kind_keys_are_reported_together() -> None:
    """A resource whose supervision keys are wrong still has its kind's keys checked, so
    one report lists both (not the kind's only once the rest is fixed)."""
    err = config_error({"resources": {"m": {
        "kind": f"{HERE}:Modelled", "call_timeout": "x", "port": 0, "ratio": 2,
        "breaker": {"failures": 0}}}})
    assert err.errors == [
        ("resources.m.call_timeout", "expected a number, got 'x'"),
        ("resources.m.breaker.failures", "must be >= 1, got 0"),
        ("resources.m.port", "must be >= 1, got 0"),
        ("resources.m.ratio", "must be < 1, got 2"),
    ]


def test_structure_references_and_kinds_are_reported_together() -> None:
    """Schema problems, cross-references (checked on the tables that are valid) and kind
    problems come in one ConfigError."""
    err = config_error({
        "supervisor": {"strategy": "sometimes"},
        "supervisors": {"s": {"parent": "nobody"}},
        "resources": {"a": {"kind": f"{HERE}:Bare", "supervisor": "ghost", "x": 1},
                      "b": {"kind": f"{HERE}:Nowhere"}},
    })
    assert [path for path, _ in err.errors] == [
        "supervisor.strategy", "supervisors.s.parent", "resources.a.supervisor",
        "resources.a.x", "resources.b.kind"]



def test_a_key_whose_variable_is_unset_is_not_also_judged_by_the_kind(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The kind would see the ``${VAR}`` placeholder, not a value: the unset variable is
    the one problem there; the table's other keys are still checked."""
    monkeypatch.delenv("SESSIONS_TEST_NOPE", raising=False)
    err = config_error({"resources": {"m": {
        "kind": f"{HERE}:Modelled", "port": "${SESSIONS_TEST_NOPE}", "ratio": 2}}})
    assert err.errors == [
        ("resources.m.port", "environment variable SESSIONS_TEST_NOPE is not set (use "
                             "${SESSIONS_TEST_NOPE:-default})"),
        ("resources.m.ratio", "must be < 1, got 2"),
    ]
    with pytest.raises(ConfigError) as info:
        sessions.check_childspecs({"m": {"kind": f"{HERE}:Modelled", "pool_size": 0,
                                         "port": "${SESSIONS_TEST_NOPE}"}})
    assert [path for path, _ in info.value.errors] == ["resources.m.port",
                                                      "resources.m.pool_size"]


def test_a_kinds_unknown_key_gets_one_suggestion() -> None:
    """The kind's model already suggests its own key: no second suggestion is added."""
    err = config_error({"resources": {"p": {"kind": f"{HERE}:Paired", "timout": 1}}})
    assert err.errors == [("resources.p.timout", "unknown key (did you mean 'timeout'?)")]


@pytest.mark.parametrize(("options", "errors"), [
    ({"kind": f"{HERE}:Paired", "retries": {"x": 1}},
     [("resources.p.retries.x", "unknown key")]),
    ({"kind": f"{HERE}:Tagged", "tags": ["ok", "not ok"]},
     [("resources.p.tags[1]", "spaces are not allowed in a tag, got 'not ok'")]),
    ({"kind": f"{HERE}:Passing", "timeouts": 3},
     [("resources.p.timeouts", "expected a list of seconds, got 3")]),
])
def test_no_key_is_suggested_for_a_nested_key_or_a_value(
        options: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    """A key inside a table or a list, or a key the kind accepts with a bad value, is what
    the user meant: no "did you mean" from the resource's own keys (``retries``, ``tags``,
    ``timeout``)."""
    assert config_error({"resources": {"p": options}}).errors == errors


def test_a_key_the_kind_refuses_gets_a_suggestion() -> None:
    """A key the kind does not allow ("not allowed", as ``redis`` says of the keys the
    supervisor owns) may be a misspelt supervision key."""
    err = config_error({"resources": {"p": {"kind": f"{HERE}:Passing", "restarts": 3}}})
    assert err.errors == [("resources.p.restarts", "not allowed: the supervisor restarts the "
                           "resource (did you mean 'restart'?)")]


def test_a_constructor_rejecting_its_options_is_reported_with_the_other_problems() -> None:
    """Also in a file with other problems (and for a dynamic child's spec): the kind and
    the resource are named."""
    kind = f"{HERE}:Picky"
    rejected = ("resources.p", f"kind {kind!r} rejected its options: port must be >= 1, got 0")
    err = config_error({"supervisor": {"strategy": "x"},
                        "resources": {"p": {"kind": kind, "port": 0}}})
    assert err.errors == [
        ("supervisor.strategy", "expected one of one_for_one, one_for_all, rest_for_one, "
                                "got 'x'"),
        rejected]
    with pytest.raises(ConfigError) as info:
        sessions.check_childspecs({"p": {"kind": kind, "port": 0, "pool_size": 0}})
    assert info.value.errors == [("resources.p.pool_size", "must be >= 1, got 0"), rejected]


def test_a_constructor_validating_its_keys_reports_them_at_their_path() -> None:
    """A pydantic model the constructor validates with is reported like an ``Options``
    model: at the key, in plain words."""
    err = config_error({"resources": {"w": {"kind": f"{HERE}:Located", "url": "nowhere"}}})
    assert err.errors == [
        ("resources.w.url", "expected a URL (relative URL without a base), got 'nowhere'")]


def test_a_constructor_checking_its_options_model_gets_its_suggestions() -> None:
    """A key the url's query string gives, refused by the kind's ``Options`` in its
    constructor, is named with the key of that model it may have meant."""
    err = config_error({"resources": {"q": {"kind": f"{HERE}:Queried",
                                            "url": "plc://cell-4?timout=3"}}})
    assert err.errors == [("resources.q.timout", "unknown key (did you mean 'timeout'?)")]


def test_a_misspelt_supervision_key_is_suggested_in_a_resource() -> None:
    err = config_error({"resources": {"b": {"kind": f"{HERE}:Bare", "call_timout": 1}}})
    assert err.errors == [("resources.b.call_timout", "unknown key for kind Bare (this kind "
                           "takes no options) (did you mean 'call_timeout'?)")]
