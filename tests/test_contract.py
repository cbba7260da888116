"""The resource contract a kind author reads: which methods a handle may call, the
reserved names, options declared once as ``self.config``, and the ResourceContext the
runtime hands each actor (faults from other threads, normal exit, per-connection
threads the runtime joins)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field, model_validator

import sessions
from sessions._runtime.contract import BUILT_IN_CALLS, RESERVED, public_methods
from sessions.messages import ChildFaulted, ChildStarted, ChildStopped
from tests.support import Recorder, wait_until

HERE = "tests.test_contract"


class Broken(Exception):
    pass


class Echo(sessions.ResourceActor):
    """A kind with options, one callable method, and helpers that are not callable."""

    kind = "echo"
    fault_types = (Broken,)

    class Options(BaseModel):
        prefix: str = ">"
        repeat: int = Field(1, ge=1)

    config: Options

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.reader_started = threading.Event()
        self.stop_reader = threading.Event()

    def connect(self) -> object:
        self.stop_reader.clear()
        return object()

    def disconnect(self, resource: Any) -> None:
        self.stop_reader.set()

    def echo(self, text: str) -> str:
        return self.config.prefix + text * self.config.repeat

    def start_reader(self, fail: bool) -> str:
        """Spawn a per-connection thread; if ``fail``, it raises (a fault)."""

        def read() -> None:
            self.reader_started.set()
            if fail:
                raise Broken("reader lost the link")
            self.stop_reader.wait(10)

        return self.context.spawn(read, name=f"sessions-{self.name}-reader").name

    def desync(self) -> None:
        """Found broken where it happens: a fault although not in fault_types."""
        try:
            raise ValueError("reply for another request")
        except ValueError as err:
            raise sessions.ResourceBroken("link desynchronized") from err

    def done(self) -> None:
        self.context.stop_normally()

    def finish(self) -> str:
        self.context.stop_normally("job done")
        return "bye"

    def _private(self) -> None:
        """Never callable: private."""


def start(**spec: Any) -> sessions.System:
    return sessions.start({
        "supervisor": {"backoff": {"initial": 0.01, "jitter": 0}},
        "resources": {"e": {"kind": f"{HERE}:Echo", **spec}},
    })


def test_the_callable_rule_is_what_the_kind_adds_plus_transaction() -> None:
    assert public_methods(Echo) == {"echo", "start_reader", "desync", "done", "finish",
                                    *BUILT_IN_CALLS}
    # Every hook, shortcut and setting of the base is out, the Options class too.
    assert not public_methods(sessions.ResourceActor) - BUILT_IN_CALLS
    with start() as system, pytest.raises(AttributeError, match="connect"):
        system.get("e").connect  # noqa: B018 - a hook is not callable through a handle


def test_options_are_validated_into_self_config_with_their_defaults() -> None:
    actor = Echo(repeat=2)
    assert actor.config == Echo.Options(prefix=">", repeat=2)
    with pytest.raises(ValueError, match="repeat"):
        Echo(repeat=0)
    with start(prefix="#", repeat=3) as system:
        assert system.get("e").echo("ab").result(5) == "#ababab"


def test_a_bad_option_is_a_config_error_naming_its_key() -> None:
    with pytest.raises(sessions.ConfigError, match=r"resources\.e\.repeat"):
        start(repeat=0)


class Clash(sessions.ResourceActor):
    def connect(self) -> object:
        return object()

    def config(self) -> None:  # type: ignore[override]
        """Clashes with the runtime's ``self.config``."""


def test_a_kind_defining_a_reserved_name_as_a_method_is_a_config_error() -> None:
    with pytest.raises(sessions.ConfigError, match="defines config as a method") as err:
        sessions.start({"resources": {"c": {"kind": f"{HERE}:Clash"}}})
    for name in RESERVED:
        assert name in str(err.value)


class OldStyle(sessions.ResourceActor):
    """A kind written before ``self.config``: keywords in its own signature, and
    ``super().__init__()`` without them. The runtime still sets ``self.config``."""

    class Options(BaseModel):
        port: int

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def connect(self) -> object:
        return object()

    def seen(self) -> tuple[int, int]:
        return self.port, self.config.port


def test_a_kind_that_passes_no_options_up_still_gets_self_config() -> None:
    with sessions.start({"resources": {"o": {"kind": f"{HERE}:OldStyle", "port": 7}}}) as s:
        assert s.get("o").seen().result(5) == (7, 7)


def test_a_spawned_thread_is_joined_when_its_connection_ends() -> None:
    rec = Recorder()
    with start(restart="permanent") as system:
        system.subscribe(rec)
        e = system.get("e")
        name = e.start_reader(False).result(5)
        assert [t for t in threading.enumerate() if t.name == name]
        e.transaction(lambda conn: None).result(5)
        system.restart_child("e")  # the connection ends: its reader must end with it
        assert not [t for t in threading.enumerate() if t.name == name]
        assert e.echo("x").result(5) == ">x"


def test_an_error_escaping_a_spawned_thread_is_a_fault_of_its_connection() -> None:
    rec = Recorder()
    with start() as system:
        system.subscribe(rec)
        e = system.get("e")
        e.start_reader(True).result(5)
        rec.wait_for(lambda ev: isinstance(ev, ChildStarted) and ev.restarts == 1)
        (fault,) = rec.of(ChildFaulted)
        assert fault.name == "e" and "reader lost the link" in fault.error
        assert e.echo("y").result(5) == ">y"


def test_spawn_needs_a_running_incarnation() -> None:
    actor = Echo()
    with pytest.raises(RuntimeError, match="running incarnation"):
        actor.context.spawn(lambda: None, name="sessions-nowhere")


def test_stop_normally_through_the_context_ends_a_transient_resource() -> None:
    with start(restart="transient") as system:
        e = system.get("e")
        assert e.finish().result(5) == "bye"
        wait_until(lambda: e.state == "stopped", what="e stopped normally")
        with pytest.raises(sessions.ResourceUnavailable):
            e.echo("z").result(5)


def test_report_fault_without_an_incarnation_is_ignored() -> None:
    actor = Echo()
    actor.report_fault(Broken("nobody is connected"))  # no error, nothing to crash
    assert actor.context.connected is False


def test_a_kind_raising_resource_broken_is_a_fault_whatever_is_fault_says() -> None:
    rec = Recorder()
    with start() as system:
        system.subscribe(rec)
        e = system.get("e")
        error = e.desync().exception(5)
        assert isinstance(error, sessions.ResourceFault) and error.method == "desync"
        assert isinstance(error.__cause__, sessions.ResourceBroken)
        assert isinstance(error.__cause__.__cause__, ValueError)
        rec.wait_for(lambda ev: isinstance(ev, ChildStarted) and ev.restarts == 1)
        assert e.echo("ok").result(5) == ">ok"


class Bare(sessions.ResourceActor):
    def connect(self) -> object:
        return object()


class Strict(sessions.ResourceActor):
    class Options(BaseModel):
        low: int = 0
        high: int = 1

        @model_validator(mode="after")
        def ordered(self) -> Strict.Options:
            if self.low > self.high:
                raise ValueError("low must not exceed high")
            return self

    def connect(self) -> object:
        return object()


def test_direct_construction_reports_bad_options_by_key() -> None:
    """Constructed directly (a test, a tool), a kind reports what ``sessions check``
    would: every bad key by name, and a rule across keys as ``(options)``."""
    assert Bare().config is None
    assert Echo().config == Echo.Options()  # the defaults, validated
    with pytest.raises(TypeError) as no_options:
        Bare(b=1, a=2)
    assert str(no_options.value) == "Bare takes no options (got a, b)"
    with pytest.raises(ValueError) as bad:
        Echo(repeat=0, prefix=[1])
    assert str(bad.value) == ("Echo: prefix: expected a string, got [1]; "
                              "repeat: must be >= 1, got 0")
    with pytest.raises(ValueError) as across:
        Strict(low=3, high=2)
    assert str(across.value) == "Strict: (options): low must not exceed high"


class Closed(sessions.ResourceActor):
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prefix: str = ">"

    def connect(self) -> object:
        return object()


def test_direct_construction_suggests_the_key_a_typo_meant() -> None:
    with pytest.raises(ValueError) as err:
        Closed(prefx="x")
    assert str(err.value) == "Closed: prefx: unknown key (did you mean 'prefix'?)"


class Aliased(sessions.ResourceActor):
    """An option whose config key is not a Python name (``from``), by a field alias."""

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        from_: str = Field("start", alias="from")
        to: str = "end"

    config: Options

    def connect(self) -> object:
        return object()

    def route(self) -> tuple[str, str]:
        return self.config.from_, self.config.to


def test_an_aliased_option_is_spelled_by_its_alias_in_the_config() -> None:
    """The config spells the field as its alias says; the actor gets it (with the
    defaults filled in) also when it is built again by a restart; the field's Python
    name is not a config key."""
    spec = {"kind": f"{HERE}:Aliased", "from": "a"}
    with sessions.start({"resources": {"r": spec}}) as system:
        r = system.get("r")
        assert r.route().result(5) == ("a", "end")
        system.restart_child("r")
        assert r.route().result(5) == ("a", "end")
        system.start_child("s", {"kind": f"{HERE}:Aliased", "from": "b", "to": "c"})
        assert system.get("s").route().result(5) == ("b", "c")
    assert Aliased(**{"from": "x"}).config.from_ == "x"
    with pytest.raises(sessions.ConfigError) as err:
        sessions.start({"resources": {"r": {"kind": f"{HERE}:Aliased", "from_": "a"}}})
    assert str(err.value) == "resources.r.from_: unknown key (did you mean 'from'?)"


def test_spawn_names_its_thread_makes_it_a_daemon_and_logs_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="sessions.actor")
    rec = Recorder()
    with start() as system:
        system.subscribe(rec)
        e = system.get("e")
        names: list[tuple[str, bool]] = []
        e.transaction(lambda conn: None).result(5)
        assert e.start_reader(False).result(5) == "sessions-e-reader"
        names += [(t.name, t.daemon) for t in threading.enumerate()
                  if t.name == "sessions-e-reader"]
        assert names == [("sessions-e-reader", True)]
        e.start_reader(True).result(5)
        rec.wait_for(lambda ev: isinstance(ev, ChildStarted) and ev.restarts == 1)
    assert ("thread sessions-e-reader ended with Broken('reader lost the link')"
            in caplog.messages)


def test_spawn_outside_an_incarnation_says_where_to_call_it() -> None:
    with pytest.raises(RuntimeError) as err:
        Echo().context.spawn(lambda: None, name="sessions-nowhere")
    assert str(err.value) == ("spawn() needs a running incarnation (call it from "
                              "connect() or a call)")


def test_stop_normally_without_a_reason_says_finished() -> None:
    rec = Recorder()
    with start(restart="transient") as system:
        system.subscribe(rec)
        e = system.get("e")
        e.done().result(5)
        (stopped,) = rec.wait_for(lambda ev: isinstance(ev, ChildStopped))
        assert stopped.reason == "exited normally: finished"


# -- a kind given as the class itself (a config built in Python) ----------------------


def test_a_class_object_is_a_kind_even_one_defined_in_a_function() -> None:
    """``{"kind": Echo}``: the class itself, stored by its ``module:qualname``; a class
    defined inside a function (not importable by name) resolves to that very class, for
    static and dynamic children alike, and its options are checked like any kind's."""

    def local_kind(greeting: str) -> type[sessions.ResourceActor]:
        class Local(sessions.ResourceActor):
            def connect(self) -> object:
                return object()

            def disconnect(self, resource: Any) -> None:
                pass

            def hello(self) -> str:
                return greeting

        return Local

    first, second = local_kind("one"), local_kind("two")
    with sessions.start({"resources": {"e": {"kind": Echo, "prefix": "#"},
                                       "l": {"kind": first}}}) as system:
        assert system.get("e").echo("x").result(5) == "#x"
        assert system.get("e").kind == "echo"  # the class's own kind name
        assert system.get("l").kind == f"{HERE}:test_a_class_object_is_a_kind_even_one_" \
                                       "defined_in_a_function.<locals>.local_kind.<locals>.Local"
        assert system.get("l").hello().result(5) == "one"
        system.start_child("d", {"kind": second})
        assert system.get("d").hello().result(5) == "two"
        system.terminate_child("l")  # a restart builds the class it started with
        system.restart_child("l")
        assert system.get("l").hello().result(5) == "one"
        assert system.child_spec("d")["kind"] == system.get("l").kind  # one name, two classes
        with pytest.raises(sessions.ConfigError) as info:
            system.start_child("bad", {"kind": Echo, "repeat": 0})
        assert [p for p, _ in info.value.errors] == ["resources.bad.repeat"]


def test_a_class_that_is_no_resource_actor_is_a_config_error_naming_it() -> None:
    with pytest.raises(sessions.ConfigError) as info:
        sessions.start({"resources": {"x": {"kind": int}}})
    assert info.value.errors == [(
        "resources.x.kind",
        "a class given as the kind must be a sessions.ResourceActor subclass, got builtins.int",
    )]


# -- batch_ready: a kind may decline a batch ------------------------------------------


class Batching(sessions.ResourceActor):
    """A batch method; ``ready`` says whether calls may be batched right now."""

    batch_methods = frozenset({"put"})
    fault_types = (Broken,)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.ready = True
        self.asked = 0

    def connect(self) -> list[Any]:
        return []

    def batch_ready(self) -> bool:
        self.asked += 1
        return self.ready

    def put(self, value: int) -> int:
        if value < 0:
            raise Broken(f"link lost at {value}")
        self.resource.append(("put", value))
        return value

    def run_batch(self, calls: Any) -> Any:
        self.resource.append(("batch", [args[0] for _, args, _ in calls]))
        return super().run_batch(calls)

    def hold(self, started: threading.Event, release: threading.Event,
             ready: bool) -> None:
        self.ready = ready
        started.set()
        release.wait(10)

    def log(self) -> tuple[list[Any], int]:
        return list(self.resource), self.asked


@pytest.mark.parametrize("ready", [True, False])
def test_batch_ready_false_runs_each_call_alone(ready: bool) -> None:
    """Calls queued behind a held call form one batch when the kind is ready, and run
    one by one (asked before each) when it is not."""
    with sessions.start({"resources": {"b": {"kind": Batching}}}) as system:
        b = system.get("b")
        started, release = threading.Event(), threading.Event()
        held = b.hold(started, release, ready)
        assert started.wait(10)
        futures = [b.put(i) for i in range(3)]
        release.set()
        held.result(10)
        assert [f.result(10) for f in futures] == [0, 1, 2]
        log, asked = b.log().result(10)
    puts = [("put", 0), ("put", 1), ("put", 2)]
    assert log == ([("batch", [0, 1, 2]), *puts] if ready else puts)
    assert asked == (1 if ready else 3)


def test_a_declined_batch_leaves_the_calls_behind_a_fault_to_the_next_connection() -> None:
    """Not ready: the first call faults alone and the calls queued behind it are served
    by the next connection (in a batch, the fault would have failed them all)."""
    cfg = {"supervisor": {"backoff": {"initial": 0.01, "jitter": 0}},
           "resources": {"b": {"kind": Batching}}}
    with sessions.start(cfg) as system:
        b = system.get("b")
        started, release = threading.Event(), threading.Event()
        held = b.hold(started, release, False)
        assert started.wait(10)
        broken, after = b.put(-1), [b.put(i) for i in (1, 2)]
        release.set()
        held.result(10)
        with pytest.raises(sessions.ResourceFault):
            broken.result(10)
        assert [f.result(10) for f in after] == [1, 2]
        assert b.restarts == 1



RELEASE_STUCK = threading.Event()
"""Lets the stuck thread of ``Threads`` end (a test sets it once it has checked)."""


class Threads(sessions.ResourceActor):
    """Spawns two threads per connection: one that ends a moment after the disconnect,
    and one that ignores it (a driver call the disconnect cannot reach)."""

    kind = "threads"

    def __init__(self) -> None:
        super().__init__()
        self.closed = threading.Event()

    def connect(self) -> object:
        self.closed = threading.Event()
        return object()

    def disconnect(self, resource: Any) -> None:
        self.closed.set()

    def spawn_two(self) -> None:
        closed = self.closed

        def lingering() -> None:
            closed.wait(30)
            threading.Event().wait(0.05)  # takes a moment to wind down

        def stuck() -> None:
            RELEASE_STUCK.wait(30)

        self.context.spawn(lingering, name=f"sessions-{self.name}-lingering")
        self.context.spawn(stuck, name=f"sessions-{self.name}-stuck")

    def crash(self) -> None:
        raise sessions.ResourceBroken("link lost")


def test_spawned_threads_are_joined_within_a_bound_and_a_stuck_one_is_left_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    """After the disconnect, the runtime waits for the connection's threads together up
    to SPAWN_JOIN (2 s): one ending a moment later is joined quietly; one still blocked
    is logged by name and left running, and the restart goes on without it."""
    RELEASE_STUCK.clear()
    with caplog.at_level(logging.WARNING, logger="sessions"), sessions.start({
        "supervisor": {"backoff": {"initial": 0.01, "jitter": 0}},
        "resources": {"t": {"kind": Threads}},
    }) as system:
        t = system.get("t")
        t.spawn_two().result(5)
        with pytest.raises(sessions.ResourceFault):
            t.crash().result(5)
        wait_until(lambda: t.restarts == 1 and t.state == "running", timeout=15,
                   what="the restart, not held up by the stuck thread")
        left = [r.getMessage() for r in caplog.records if "did not end" in r.getMessage()]
        assert left == ["thread sessions-t-stuck of 't' did not end within 2.0 s of its "
                        "disconnect (left running)"]
        assert [th.name for th in threading.enumerate()
                if th.name.startswith("sessions-t-")] == ["sessions-t-stuck"]
        RELEASE_STUCK.set()
