"""The pytest plugin (``sessions_pytest``) and ``sessions.testing``, run the way an
application's test suite runs them: pytest in a fresh directory (``pytester``)."""

from __future__ import annotations

import textwrap

import pytest

from sessions.messages import ChildStarted, ChildStopped
from sessions.testing import EventLog, merge

POLICY_TEST = '''
import pytest
import sessions
from sessions.messages import ChildRestarting, ChildStarted, SupervisorGaveUp

CONFIG = {
    "supervisor": {"max_restarts": 2, "period": 60, "backoff": {"initial": 0.01}},
    "resources": {"db": {"kind": "tests.kinds:Probe"}},
}

def test_restart_policy(sessions_system, sessions_events):
    system = sessions_system(CONFIG)
    db = system.get("db")
    faults = system.faults("db")
    for n in (1, 2):
        faults.fail_calls(1)
        with pytest.raises(sessions.ResourceFault):
            db.echo(n).result(5)
        sessions_events.wait_for(ChildStarted, name="db", restarts=n, timeout=5)
    assert len(sessions_events.of(ChildRestarting)) == 2
    faults.fail_calls(1)
    with pytest.raises(sessions.ResourceFault):
        db.echo(3).result(5)
    gave_up = sessions_events.wait_for(SupervisorGaveUp, timeout=5)
    assert gave_up.reason.startswith("more than 2 restarts within 60.0s")
'''


def test_a_restart_policy_tested_end_to_end(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_policy=POLICY_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_a_leaked_library_thread_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_leak='''
        import threading

        def test_leaks(sessions_system):
            sessions_system({"resources": {"a": {"kind": "tests.kinds:Probe"}}})
            stop = threading.Event()
            threading.Thread(target=stop.wait, args=(8,), name="sessions-left-behind",
                             daemon=True).start()
    ''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*library threads still running after stop: sessions-left-behind*"])


def test_an_unresolved_future_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_future='''
        import time
        import sessions

        HELD = []  # as a leaked structure of the library would hold it

        def test_forgets(sessions_system):
            sessions_system({"resources": {}})
            HELD.append(sessions.SessionFuture("a", "write", time.monotonic() + 60))
    ''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*1 call(s) never resolved after stop: write() on 'a'*"])


def test_a_toml_file_with_overrides(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", plant=textwrap.dedent('''
        [resources.a]
        kind = "tests.kinds:Probe"
        label = "production"
    '''))
    pytester.makepyfile(test_toml='''
        def test_overridden(sessions_system):
            system = sessions_system("plant.toml",
                                     overrides={"resources": {"a": {"label": "test"}}})
            assert system.get("a").apply(lambda probe: probe.label).result(5) == "test"
    ''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_event_log_wait_for_matches_class_fields_instances_and_predicates() -> None:
    log = EventLog()
    log(ChildStarted("root", "a", "probe", 0))
    log(ChildStarted("root", "a", "probe", 1))
    log(ChildStopped("root", "b", "terminated"))
    assert log.wait_for(ChildStarted, restarts=1, timeout=0).restarts == 1
    assert log.wait_for(ChildStarted, count=2, timeout=0).restarts == 1
    assert log.wait_for(ChildStopped("root", "b", "terminated"), timeout=0).name == "b"
    assert log.wait_for(lambda e: getattr(e, "name", "") == "b", timeout=0).reason == "terminated"
    assert [e.restarts for e in log.matching(ChildStarted, name="a")] == [0, 1]
    with pytest.raises(AssertionError, match=r"no event matching ChildStarted\(name='c'\) "
                                             r"within 0.05s; events seen: \[ChildStarted"):
        log.wait_for(ChildStarted, name="c", timeout=0.05)


def test_merge_is_recursive_and_copies() -> None:
    base = {"resources": {"a": {"kind": "k", "url": "x"}}, "supervisor": {"max_restarts": 3}}
    merged = merge(base, {"resources": {"a": {"url": "y"}, "b": {"kind": "k"}}})
    assert merged == {"resources": {"a": {"kind": "k", "url": "y"}, "b": {"kind": "k"}},
                      "supervisor": {"max_restarts": 3}}
    assert base["resources"]["a"]["url"] == "x"
