"""Config validation: every invalid config is a ``ConfigError`` naming the exact path.

The contract checked here: the error is a ``ValueError``; ``.path`` names the first bad
location, ``.errors`` lists every problem as ``(path, message)`` pairs, and the message
is plain English with no pydantic wording, links or chained pydantic tracebacks.
"""

from __future__ import annotations

import traceback
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pydantic
import pytest

import sessions
from sessions import ConfigError, ResourceActor
from sessions._runtime import kinds as lookup
from sessions.actors import BUILTIN_KINDS
from tests import kinds

PROBE = "tests.kinds:Probe"
BAG = "tests.test_config:Bag"
STRATEGY_MESSAGE = (
    "supervisor.strategy: expected one of one_for_one, one_for_all, rest_for_one, "
    "got 'one_for_some'"
)


class Bag(ResourceActor):
    """A kind that accepts any option and hands it back, to see what the config delivered."""

    kind = "bag"

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.received = options

    def connect(self) -> object:
        return object()

    def disconnect(self, resource: object) -> None:
        return None

    def options(self) -> dict[str, Any]:
        return dict(self.received)


def probe(**spec: Any) -> dict[str, Any]:
    """A resource table of the probe kind."""
    return {"kind": PROBE, **spec}


def config_error(config: Any) -> ConfigError:
    """Start ``config``, which must fail with a plain-English ConfigError; return it."""
    with pytest.raises(ConfigError) as info, sessions.start(config):
        pass
    err = info.value
    assert_plain(err)
    return err


def assert_plain(err: ConfigError) -> None:
    """No pydantic internals reach the user: not in the message, not in the chain."""
    text = str(err)
    for leak in ("pydantic", "errors.pydantic.dev", "validation error for", "For further"):
        assert leak not in text
    for path, message in err.errors:
        assert "pydantic" not in message
        assert isinstance(path, str)
    assert not isinstance(err.__cause__, pydantic.ValidationError)
    if isinstance(err.__context__, pydantic.ValidationError):
        assert err.__suppress_context__
    printed = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    assert "ValidationError" not in printed
    assert "errors.pydantic.dev" not in printed


# -- the error type and its message ---------------------------------------------------


def test_bad_strategy_exact_message() -> None:
    """An unknown strategy names its path, the choices and the bad value, exactly."""
    err = config_error({"supervisor": {"strategy": "one_for_some"}})
    assert str(err) == STRATEGY_MESSAGE
    assert err.path == "supervisor.strategy"
    assert err.errors == [
        (
            "supervisor.strategy",
            "expected one of one_for_one, one_for_all, rest_for_one, got 'one_for_some'",
        )
    ]


def test_config_error_is_a_value_error() -> None:
    """Callers that catch ValueError (or SessionsError) catch config problems."""
    err = config_error({"supervisor": {"strategy": "one_for_some"}})
    assert isinstance(err, ValueError)
    assert isinstance(err, sessions.SessionsError)


@pytest.mark.parametrize(("config", "shown"), [(["a"], "list"), (None, "NoneType")])
def test_a_config_that_is_no_table_nor_a_path(config: Any, shown: str) -> None:
    """Data that is neither a table nor a file path (a JSON list, a missing value) is a
    ConfigError saying what it is, not a TypeError about paths."""
    assert config_error(config).errors == [("", f"expected a table of tables, got {shown}")]


def test_bad_strategy_in_named_supervisor() -> None:
    """Strategies of ``[supervisors.NAME]`` are checked with their own path."""
    err = config_error({"supervisors": {"s": {"strategy": "all_for_one"}}})
    assert err.path == "supervisors.s.strategy"
    assert "got 'all_for_one'" in str(err)


TABLES = ("a config file has the tables [supervisor], [supervisors.NAME], [resources.NAME], "
          "[server], [systemd]")


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        ({"supervisor": {"bogus": 1}}, "supervisor.bogus", "unknown key"),
        ({"supervisor": {"backoff": {"bogus": 1}}}, "supervisor.backoff.bogus", "unknown key"),
        ({"supervisors": {"s": {"restarts": 2}}}, "supervisors.s.restarts",
         "unknown key (did you mean 'restart'?)"),
        ({"supervisors": {"s": {"backoff": {"factor": 2}}}}, "supervisors.s.backoff.factor",
         "unknown key"),
        ({"supervisors": {"s": {"backoff": {"multiplyer": 2}}}},
         "supervisors.s.backoff.multiplyer", "unknown key (did you mean 'multiplier'?)"),
        ({"resourcez": {}}, "resourcez",
         f"unknown table [resourcez] (did you mean [resources.NAME]?); {TABLES}"),
        ({"resource": {"db": {"kind": "x"}}}, "resource",
         f"unknown table [resource] (did you mean [resources.NAME]?); {TABLES}"),
        ({"Server": {"port": 1}}, "Server",
         f"unknown table [Server] (did you mean [server]?); {TABLES}"),
        ({"db": {"kind": "x"}}, "db",
         f"unknown table [db] (a resource? write [resources.db]); {TABLES}"),
        ({"other": {}}, "other", f"unknown table [other]; {TABLES}"),
        ({"supervisor": {}, "other": {}}, "other", f"unknown table [other]; {TABLES}"),
        ({"sensors": {"t1": {"kind": "x"}}}, "sensors", f"unknown table [sensors]; {TABLES}"),
        ({"strategy": "one_for_all"}, "strategy",
         f"unknown top-level key 'strategy'; {TABLES}"),
    ],
)
def test_unknown_key(config: dict[str, Any], path: str, message: str) -> None:
    """A key the schema does not know is named with its full path, with the key it may
    have meant; an unknown top-level table with the table it may have meant."""
    err = config_error(config)
    assert err.path == path
    assert str(err) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("config", "path", "message"),
    [
        (
            {"resources": {"a": probe(call_timeout=-1)}},
            "resources.a.call_timeout",
            "must be > 0, got -1",
        ),
        (
            {"resources": {"a": probe(call_timeout=0)}},
            "resources.a.call_timeout",
            "must be > 0, got 0",
        ),
        (
            {"resources": {"a": probe(connect_timeout=0)}},
            "resources.a.connect_timeout",
            "must be > 0, got 0",
        ),
        (
            {"resources": {"a": probe(health_interval=-2.5)}},
            "resources.a.health_interval",
            "must be > 0, got -2.5",
        ),
        ({"supervisor": {"period": 0}}, "supervisor.period", "must be > 0, got 0"),
        ({"supervisor": {"period": -1.0}}, "supervisor.period", "must be > 0, got -1.0"),
        ({"supervisor": {"max_restarts": -1}}, "supervisor.max_restarts", "must be >= 0, got -1"),
        (
            {"supervisors": {"s": {"max_restarts": -3}}},
            "supervisors.s.max_restarts",
            "must be >= 0, got -3",
        ),
        (
            {"supervisor": {"backoff": {"jitter": 1.5}}},
            "supervisor.backoff.jitter",
            "must be <= 1, got 1.5",
        ),
        (
            {"supervisor": {"backoff": {"jitter": -0.1}}},
            "supervisor.backoff.jitter",
            "must be >= 0, got -0.1",
        ),
        (
            {"supervisor": {"backoff": {"initial": -1}}},
            "supervisor.backoff.initial",
            "must be >= 0, got -1",
        ),
        (
            {"supervisor": {"backoff": {"multiplier": 0.5}}},
            "supervisor.backoff.multiplier",
            "must be >= 1, got 0.5",
        ),
    ],
)
def test_out_of_range_values(config: dict[str, Any], path: str, message: str) -> None:
    """Negative, zero and out-of-range numbers say the bound and the value given."""
    err = config_error(config)
    assert err.path == path
    assert str(err) == f"{path}: {message}"


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"supervisor": {"max_restarts": "many"}}, "supervisor.max_restarts"),
        ({"resources": {"a": probe(call_timeout="soon")}}, "resources.a.call_timeout"),
        ({"resources": "everything"}, "resources"),
        ({"supervisors": {"s": "fast"}}, "supervisors.s"),
    ],
)
def test_wrong_type(config: dict[str, Any], path: str) -> None:
    """A value of the wrong type is named, with the value given."""
    err = config_error(config)
    assert err.path == path
    assert str(err).startswith(f"{path}: ")
    assert "got " in str(err)


def test_restart_type_invalid() -> None:
    """An unknown restart type lists the three valid ones."""
    err = config_error({"resources": {"a": probe(restart="sometimes")}})
    assert err.path == "resources.a.restart"
    assert str(err) == (
        "resources.a.restart: expected one of permanent, transient, temporary, got 'sometimes'"
    )


def test_missing_kind() -> None:
    """A resource table without ``kind`` says the key is required."""
    err = config_error({"resources": {"a": {"label": "x"}}})
    assert err.path == "resources.a.kind"
    assert str(err) == "resources.a.kind: required key is missing"


# -- cross references -----------------------------------------------------------------


def test_resource_unknown_supervisor() -> None:
    """A resource under a supervisor that does not exist names it and the known ones."""
    err = config_error(
        {"supervisors": {"db_sup": {}}, "resources": {"a": probe(supervisor="nope")}}
    )
    assert err.path == "resources.a.supervisor"
    assert str(err) == "resources.a.supervisor: unknown supervisor 'nope' (known: root, db_sup)"


def test_supervisor_unknown_parent() -> None:
    """A supervisor whose parent does not exist is named at its ``parent`` key."""
    err = config_error({"supervisors": {"s": {"parent": "nope"}}})
    assert err.path == "supervisors.s.parent"
    assert "unknown supervisor 'nope'" in str(err)
    assert "root" in str(err)


def test_root_supervisor_has_no_parent() -> None:
    """``[supervisor]`` is the root: giving it a parent is an error."""
    err = config_error({"supervisor": {"parent": "x"}})
    assert err.path == "supervisor.parent"


@pytest.mark.parametrize(
    "supervisors",
    [
        {"s": {"parent": "s"}},
        {"s": {"parent": "t"}, "t": {"parent": "s"}},
        {"a": {"parent": "c"}, "b": {"parent": "a"}, "c": {"parent": "b"}},
    ],
)
def test_supervisor_cycles(supervisors: dict[str, Any]) -> None:
    """Supervisors whose parents form a cycle are rejected (not an endless loop)."""
    err = config_error({"supervisors": supervisors})
    assert err.path.startswith("supervisors.")
    assert err.path.endswith(".parent")
    assert all("cycle" in message for _, message in err.errors)
    assert {p for p, _ in err.errors} == {f"supervisors.{n}.parent" for n in supervisors}


def test_resource_named_like_a_supervisor() -> None:
    """A resource cannot share its name with a supervisor."""
    err = config_error({"supervisors": {"s": {}}, "resources": {"s": probe()}})
    assert err.path == "resources.s"
    assert str(err) == "resources.s: name is already used by a supervisor"


def test_resource_named_root() -> None:
    """``root`` is the root supervisor's name, so no resource may take it."""
    err = config_error({"resources": {"root": probe()}})
    assert err.path == "resources.root"


def test_supervisors_root_reserved() -> None:
    """``[supervisors.root]`` is refused: the root is configured by ``[supervisor]``."""
    err = config_error({"supervisors": {"root": {}}})
    assert err.path == "supervisors.root"
    assert "root" in str(err)


def test_nested_supervisors_valid() -> None:
    """Parents may be declared after their children; resources land where they are put."""
    config = {
        "supervisors": {
            "inner": {"parent": "outer", "strategy": "one_for_all"},
            "outer": {"parent": "root"},
        },
        "resources": {
            "a": probe(supervisor="inner"),
            "b": probe(supervisor="root"),
            "c": probe(),
        },
    }
    with sessions.start(config) as system:
        assert [c.name for c in system.which_children()] == ["outer", "b", "c"]
        assert [c.name for c in system.which_children("outer")] == ["inner"]
        assert [c.name for c in system.which_children("inner")] == ["a"]
        assert system.get("a").echo("x").result(10) == "x"


# -- kinds and their options ----------------------------------------------------------


def test_unknown_kind_lists_known_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown kind name lists the known kinds and the 'package.module:Class' form."""
    monkeypatch.setitem(BUILTIN_KINDS, "probe", PROBE)
    err = config_error({"resources": {"a": {"kind": "nosuchkind"}}})
    assert err.path == "resources.a.kind"
    message = str(err)
    assert message.startswith("resources.a.kind: ")
    assert "'nosuchkind'" in message
    assert "probe" in message
    assert "'package.module:Class'" in message


def test_unknown_kind_without_builtin_kinds() -> None:
    """With no kinds registered the message still explains the explicit form."""
    err = config_error({"resources": {"a": {"kind": "nosuchkind"}}})
    assert err.path == "resources.a.kind"
    assert "'package.module:Class'" in str(err)


def test_builtin_kind_name_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind registered by name is found by that name."""
    monkeypatch.setitem(BUILTIN_KINDS, "probe", PROBE)
    with sessions.start({"resources": {"a": {"kind": "probe"}}}) as system:
        assert system.get("a").echo(3).result(10) == 3


def test_entry_points_are_scanned_once_and_again_for_an_unknown_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scanning the installed distributions takes milliseconds: a config of many
    resources scans once, not once per resource; a name not found scans afresh (a kind
    installed since)."""
    scans: list[str] = []
    installed: list[Any] = []

    def fake(group: str) -> list[Any]:
        scans.append(group)
        return list(installed)

    monkeypatch.setattr(lookup, "entry_points", fake)
    lookup._scan.cache_clear()
    for _ in range(50):
        assert lookup.resolve_kind(PROBE) is kinds.Probe
    assert scans == ["sessions.resources"]
    installed.append(EntryPoint("added", PROBE, "sessions.resources"))
    assert lookup.resolve_kind("added") is kinds.Probe
    assert len(scans) == 2
    lookup._scan.cache_clear()


@pytest.mark.parametrize(
    "kind", ["tests.kinds:Conn", "tests.kinds:controls", "tests.kinds:NoSuchName"]
)
def test_kind_not_a_resource_actor(kind: str) -> None:
    """A 'module:Class' path to something that is not a ResourceActor is refused."""
    err = config_error({"resources": {"a": {"kind": kind}}})
    assert err.path == "resources.a.kind"
    assert f"{kind!r}" in str(err)
    assert "ResourceActor" in str(err)


def test_kind_module_not_importable() -> None:
    """A 'module:Class' path whose module cannot be imported names the module."""
    err = config_error({"resources": {"a": {"kind": "no_such_module_xyz:Thing"}}})
    assert err.path == "resources.a.kind"
    assert "'no_such_module_xyz'" in str(err)


def test_unknown_probe_option() -> None:
    """An option the kind's constructor does not take is named and the accepted keys listed."""
    err = config_error({"resources": {"a": probe(bogus=1)}})
    assert err.path == "resources.a.bogus"
    message = str(err)
    assert message.startswith("resources.a.bogus: ")
    for accepted in ("label", "unhealthy", "url"):
        assert accepted in message


def test_misspelt_supervision_key_reported_as_unknown_option() -> None:
    """A typo of a supervision key (``call_timout``) does not pass silently."""
    err = config_error({"resources": {"a": probe(call_timout=3)}})
    assert err.path == "resources.a.call_timout"


def test_probe_options_reach_the_constructor() -> None:
    """Options other than the supervision keys are passed to the kind."""
    with sessions.start({"resources": {"a": probe(label="hello", call_timeout=7)}}) as system:
        handle = system.get("a")
        assert handle.apply(lambda p: p.label).result(10) == "hello"
        assert system.config.resources["a"].call_timeout == 7.0
        assert system.config.resources["a"].options == {"label": "hello"}


# -- several problems -----------------------------------------------------------------


def test_several_schema_problems_all_listed() -> None:
    """Every schema problem is in ``.errors``; ``.path`` is the first; the message lists all."""
    err = config_error(
        {
            "supervisor": {"strategy": "x", "period": 0},
            "resources": {"a": probe(call_timeout=0), "b": probe(restart="never")},
        }
    )
    paths = [p for p, _ in err.errors]
    assert paths == [
        "supervisor.strategy",
        "supervisor.period",
        "resources.a.call_timeout",
        "resources.b.restart",
    ]
    assert err.path == "supervisor.strategy"
    message = str(err)
    assert message.startswith("4 problems:\n")
    for path, text in err.errors:
        assert f"{path}: {text}" in message


def test_several_reference_problems_all_listed() -> None:
    """Cross-reference problems are all reported together."""
    err = config_error(
        {
            "supervisors": {"root": {}, "s": {"parent": "ghost"}},
            "resources": {"s": probe(), "a": probe(supervisor="nope")},
        }
    )
    assert set(p for p, _ in err.errors) == {
        "supervisors.root",
        "supervisors.s.parent",
        "resources.s",
        "resources.a.supervisor",
    }


def test_several_kind_problems_all_listed() -> None:
    """Kind and option problems of different resources are all reported, in config order."""
    err = config_error(
        {
            "resources": {
                "a": {"kind": "nosuchkind"},
                "b": probe(bogus=1, other=2),
                "c": {"kind": "tests.kinds:Conn"},
            }
        }
    )
    assert [p for p, _ in err.errors] == [
        "resources.a.kind",
        "resources.b.bogus",
        "resources.b.other",
        "resources.c.kind",
    ]
    assert err.path == "resources.a.kind"


# -- environment variables ------------------------------------------------------------


def test_env_substitution(monkeypatch: pytest.MonkeyPatch) -> None:
    """``${VAR}`` is replaced by the variable's value, also inside a longer string."""
    monkeypatch.setenv("SESSIONS_TEST_PW", "s3cret")
    monkeypatch.setenv("SESSIONS_TEST_HOST", "db.example")
    config = {
        "resources": {"a": probe(url="postgresql://u:${SESSIONS_TEST_PW}@${SESSIONS_TEST_HOST}/x")}
    }
    with sessions.start(config) as system:
        url = system.get("a").apply(lambda p: p.url).result(10)
    assert url == "postgresql://u:s3cret@db.example/x"


def test_env_default_used_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """``${VAR:-default}`` gives the default when unset, the value when set."""
    monkeypatch.delenv("SESSIONS_TEST_LABEL", raising=False)
    config = {"resources": {"a": probe(label="${SESSIONS_TEST_LABEL:-fallback}")}}
    with sessions.start(config) as system:
        assert system.get("a").apply(lambda p: p.label).result(10) == "fallback"
    monkeypatch.setenv("SESSIONS_TEST_LABEL", "from-env")
    with sessions.start(config) as system:
        assert system.get("a").apply(lambda p: p.label).result(10) == "from-env"


def test_env_empty_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """``${VAR:-}`` is the empty string when unset."""
    monkeypatch.delenv("SESSIONS_TEST_EMPTY", raising=False)
    config = {"resources": {"a": probe(label="<${SESSIONS_TEST_EMPTY:-}>")}}
    with sessions.start(config) as system:
        assert system.get("a").apply(lambda p: p.label).result(10) == "<>"


def test_env_substitution_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Substituted values are validated like literal ones (and numbers are parsed)."""
    monkeypatch.setenv("SESSIONS_TEST_STRATEGY", "one_for_all")
    monkeypatch.delenv("SESSIONS_TEST_TIMEOUT", raising=False)
    config = {
        "supervisor": {"strategy": "${SESSIONS_TEST_STRATEGY}"},
        "resources": {"a": probe(call_timeout="${SESSIONS_TEST_TIMEOUT:-2.5}")},
    }
    with sessions.start(config) as system:
        assert system.config.supervisor.strategy == "one_for_all"
        assert system.config.resources["a"].call_timeout == 2.5
    monkeypatch.setenv("SESSIONS_TEST_STRATEGY", "one_for_some")
    err = config_error(config)
    assert str(err) == STRATEGY_MESSAGE


def test_env_substitution_nested_tables_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strings deep inside tables and lists are substituted; other values are untouched."""
    monkeypatch.setenv("SESSIONS_TEST_A", "alpha")
    monkeypatch.delenv("SESSIONS_TEST_B", raising=False)
    config = {
        "resources": {
            "bag": {
                "kind": BAG,
                "nested": {"deep": {"x": "${SESSIONS_TEST_A}", "n": 3}},
                "items": ["${SESSIONS_TEST_A}", "literal", "${SESSIONS_TEST_B:-beta}", 4.5],
                "tables": [{"k": "${SESSIONS_TEST_A}-${SESSIONS_TEST_B:-b}"}],
                "flag": True,
            }
        }
    }
    with sessions.start(config) as system:
        received = system.get("bag").options().result(10)
    assert received == {
        "nested": {"deep": {"x": "alpha", "n": 3}},
        "items": ["alpha", "literal", "beta", 4.5],
        "tables": [{"k": "alpha-b"}],
        "flag": True,
    }


def test_env_value_not_expanded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable's value that looks like ``${...}`` is taken literally."""
    monkeypatch.setenv("SESSIONS_TEST_RAW", "${HOME}")
    config = {"resources": {"a": probe(label="${SESSIONS_TEST_RAW}")}}
    with sessions.start(config) as system:
        assert system.get("a").apply(lambda p: p.label).result(10) == "${HOME}"


@pytest.mark.parametrize(
    ("resource", "path"),
    [
        (probe(label="${SESSIONS_TEST_MISSING}"), "resources.a.label"),
        ({"kind": BAG, "nested": {"deep": "x${SESSIONS_TEST_MISSING}"}}, "resources.a.nested.deep"),
        ({"kind": BAG, "items": ["ok", "${SESSIONS_TEST_MISSING}"]}, "resources.a.items[1]"),
    ],
)
def test_env_missing_variable(
    monkeypatch: pytest.MonkeyPatch, resource: dict[str, Any], path: str
) -> None:
    """A variable without default that is unset names the path and the variable."""
    monkeypatch.delenv("SESSIONS_TEST_MISSING", raising=False)
    err = config_error({"resources": {"a": resource}})
    assert err.path == path
    assert str(err).startswith(f"{path}: ")
    assert "SESSIONS_TEST_MISSING" in str(err)
    assert "${SESSIONS_TEST_MISSING:-default}" in str(err)


def test_env_missing_in_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Missing variables are reported outside resources too, with the other problems."""
    monkeypatch.delenv("SESSIONS_TEST_MISSING", raising=False)
    monkeypatch.delenv("SESSIONS_TEST_MISSING2", raising=False)
    err = config_error(
        {
            "supervisor": {"strategy": "${SESSIONS_TEST_MISSING}"},
            "resources": {"a": probe(label="${SESSIONS_TEST_MISSING2}")},
        }
    )
    paths = [p for p, _ in err.errors]
    assert "supervisor.strategy" in paths
    assert "resources.a.label" in paths
    assert any("SESSIONS_TEST_MISSING2" in m for _, m in err.errors)


# -- TOML files -----------------------------------------------------------------------

TOML = """\
[supervisor]
strategy = "rest_for_one"
max_restarts = 5
period = 2.5

[supervisor.backoff]
initial = 0.01
jitter = 0.0

[resources.zeta]
kind = "tests.kinds:Probe"
label = "${SESSIONS_TEST_TOML:-z}"

[resources.alpha]
kind = "tests.kinds:Probe"
call_timeout = 3

[resources.mid]
kind = "tests.kinds:Probe"
restart = "transient"
"""


@pytest.mark.parametrize("as_str", [False, True])
def test_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, as_str: bool) -> None:
    """A TOML path (str or Path) starts the system it describes and stops on exit."""
    monkeypatch.delenv("SESSIONS_TEST_TOML", raising=False)
    path = tmp_path / "sessions.toml"
    path.write_text(TOML, encoding="utf-8")
    with sessions.start(str(path) if as_str else path) as system:
        assert system.state == "running"
        assert system.config.supervisor.strategy == "rest_for_one"
        assert system.config.supervisor.max_restarts == 5
        assert system.config.supervisor.backoff.initial == 0.01
        assert system.config.resources["alpha"].call_timeout == 3.0
        assert system.get("zeta").apply(lambda p: p.label).result(10) == "z"
    assert system.state == "stopped"


def test_toml_table_order_is_start_order(tmp_path: Path) -> None:
    """``[resources.*]`` tables start in file order (not alphabetical)."""
    path = tmp_path / "sessions.toml"
    path.write_text(TOML, encoding="utf-8")
    with sessions.start(path) as system:
        children = system.which_children()
        assert [c.name for c in children] == ["zeta", "alpha", "mid"]
        assert {c.type for c in children} == {"resource"}
        assert {c.state for c in children} == {"running"}
        connects = [name for event, name in kinds.LIFECYCLE if event == "connect"]
        assert connects == ["zeta", "alpha", "mid"]
    disconnects = [name for event, name in kinds.LIFECYCLE if event == "disconnect"]
    assert disconnects == ["mid", "alpha", "zeta"]


def test_mapping_order_is_start_order() -> None:
    """For a mapping, insertion order is start order."""
    names = ["m", "b", "y", "a"]
    with sessions.start({"resources": {n: probe() for n in names}}) as system:
        assert [c.name for c in system.which_children()] == names


def test_toml_invalid_syntax(tmp_path: Path) -> None:
    """A file that is not TOML is a ConfigError naming the file."""
    path = tmp_path / "broken.toml"
    path.write_text('[resources.a\nkind = "x"\n', encoding="utf-8")
    err = config_error(path)
    assert str(path) in str(err)
    assert "TOML" in str(err)


def test_toml_invalid_values(tmp_path: Path) -> None:
    """Schema problems in a file get the same paths as in a mapping."""
    path = tmp_path / "bad.toml"
    path.write_text('[supervisor]\nstrategy = "one_for_some"\n', encoding="utf-8")
    err = config_error(path)
    assert str(err) == STRATEGY_MESSAGE
    assert err.path == "supervisor.strategy"


def test_toml_missing_file(tmp_path: Path) -> None:
    """A path that does not exist is a ConfigError naming the file."""
    path = tmp_path / "absent.toml"
    err = config_error(path)
    assert str(path) in str(err)
    assert "does not exist" in str(err)


def test_toml_not_utf8(tmp_path: Path) -> None:
    """A file that is not UTF-8 (so not TOML) is a ConfigError naming the file."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[resources.a]\nkind = "tests.kinds:Probe"\nlabel = "caf\xe9"\n')
    err = config_error(path)
    assert str(path) in str(err)


def test_toml_path_is_a_directory(tmp_path: Path) -> None:
    """A path naming a directory is a ConfigError naming it, not an OSError."""
    err = config_error(tmp_path)
    assert str(tmp_path) in str(err)
