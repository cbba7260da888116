"""Random interleavings of calls, faults, failed connects and restarts from several threads.

Each run draws the supervisor's strategy, so group restarts (one_for_all, rest_for_one)
interleave with everything else. Calls may also hang until aborted (a frozen peer) or
past abort (returning late, after their incarnation was abandoned), and children may be
terminated and restarted by hand; urgent calls jump the queue and keyed calls (latest
value wins) replace each other. Invariants: every future resolves exactly once; each
caller's executed calls ran in its order; a call that timed out before starting never
ran; a successful call ran exactly once; a superseded call never ran and a newer call
with its key came after it; restarts never exceed the intensity without the supervisor
giving up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import threading
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

import sessions
from sessions.messages import ChildFaulted, Superseded, SupervisorGaveUp
from tests.kinds import CONTROLS, LIFECYCLE, controls
from tests.support import Recorder, config

MAX_RESTARTS = 4


class CallsFaultsRestarts(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        CONTROLS.clear()
        LIFECYCLE.clear()
        self.recorder = Recorder()
        self.system: sessions.System | None = None
        self.callers = itertools.count()
        self.ordered: dict[tuple[str, int], list[tuple[int, concurrent.futures.Future[Any]]]] = {}
        self.all: list[concurrent.futures.Future[Any]] = []
        self.resolutions: dict[int, int] = {}
        self.keyed: dict[tuple[str, str], list[concurrent.futures.Future[Any]]] = {}
        """Each (resource, key)'s calls in the order they were made (one thread)."""
        # Reentrant: add_done_callback() runs the counting callback at once, in the
        # caller's thread, when the future is already resolved (refused, expired), and
        # _track() is called with the lock held.
        self.lock = threading.RLock()

    @initialize(strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]))
    def start(self, strategy: str) -> None:
        cfg = config(
            {"a": {"stall_timeout": 0.2, "shutdown_timeout": 0.5},
             "b": {"call_timeout": 0.05, "shutdown_timeout": 0.5}},
            strategy=strategy,
            max_restarts=MAX_RESTARTS,
            period=600,
            backoff={"initial": 0.001, "max": 0.004, "jitter": 0.5},
        )
        self.system = sessions.start(cfg)
        self.system.subscribe(self.recorder)

    @property
    def running(self) -> sessions.System:
        assert self.system is not None
        return self.system

    def _track(self, future: concurrent.futures.Future[Any]) -> concurrent.futures.Future[Any]:
        self.resolutions[id(future)] = 0

        def count(f: concurrent.futures.Future[Any]) -> None:
            with self.lock:
                self.resolutions[id(f)] += 1

        future.add_done_callback(count)
        self.all.append(future)
        return future

    @rule(name=st.sampled_from("ab"), threads=st.integers(1, 4), per_thread=st.integers(1, 15))
    def calls_from_threads(self, name: str, threads: int, per_thread: int) -> None:
        handle = self.running.get(name)
        ids = [next(self.callers) for _ in range(threads)]
        for cid in ids:
            self.ordered[(name, cid)] = []

        def run(cid: int) -> None:
            for seq in range(per_thread):
                fut = handle.record(cid, seq)
                with self.lock:
                    self._track(fut)
                    self.ordered[(name, cid)].append((seq, fut))

        workers = [threading.Thread(target=run, args=(cid,)) for cid in ids]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    @rule(name=st.sampled_from("ab"), count=st.integers(1, 5))
    def urgent_calls(self, name: str, count: int) -> None:
        """One caller's urgent calls: ahead of the queue, in their own order."""
        handle = self.running.get(name).urgent
        cid = next(self.callers)
        self.ordered[(name, cid)] = calls = []
        with self.lock:
            for seq in range(count):
                calls.append((seq, self._track(handle.record(cid, seq))))

    @rule(name=st.sampled_from("ab"), key=st.sampled_from(["k1", "k2"]),
          count=st.integers(1, 8), urgent=st.booleans())
    def setpoints(self, name: str, key: str, count: int, urgent: bool) -> None:
        """One caller's latest-value-wins calls under ``key`` (maybe urgent too)."""
        handle = self.running.get(name)
        view = (handle.urgent if urgent else handle).coalescing(key)
        cid = next(self.callers)
        self.ordered[(name, cid)] = calls = []
        with self.lock:
            for seq in range(count):
                future = self._track(view.record(cid, seq))
                calls.append((seq, future))
                self.keyed.setdefault((name, key), []).append(future)

    @rule(name=st.sampled_from("ab"))
    def fault(self, name: str) -> None:
        self._track(self.running.get(name).break_it())

    @rule(name=st.sampled_from("ab"))
    def caller_error(self, name: str) -> None:
        self._track(self.running.get(name).fail())

    @rule(name=st.sampled_from("ab"), count=st.integers(1, 2))
    def fail_next_connects(self, name: str, count: int) -> None:
        with controls(name).lock:
            controls(name).fail_connects += count

    @rule(delay=st.floats(0.0, 0.1))
    def stall_b(self, delay: float) -> None:
        """Hold b's thread so calls queued behind it can time out before starting."""
        started, release = threading.Event(), threading.Event()
        self._track(self.running.get("b").block(started, release))
        threading.Timer(delay, release.set).start()

    @rule(name=st.sampled_from("ab"))
    def hang_until_aborted(self, name: str) -> None:
        """A call to a frozen peer: the stall watchdog fails it and aborts the link."""
        self._track(self.running.get(name).stall(threading.Event()))

    @rule(name=st.sampled_from("ab"), delay=st.floats(0.0, 0.4))
    def hang_past_abort(self, name: str, delay: float) -> None:
        """A call abort() cannot reach, returning late (maybe after it was abandoned)."""
        release = threading.Event()
        self._track(self.running.get(name).stubborn(threading.Event(), release))
        threading.Timer(delay, release.set).start()

    @rule(name=st.sampled_from("ab"))
    def restart_child(self, name: str) -> None:
        # A failed connect (retried by policy) or a supervisor that gave up is fine here.
        with contextlib.suppress(sessions.ResourceUnavailable):
            self.running.restart_child(name)

    @rule(name=st.sampled_from("ab"))
    def terminate_child(self, name: str) -> None:
        """Stopped by hand: its calls are refused until restart_child (or, in a group,
        until a sibling's fault restarts the group, as in OTP)."""
        self.running.terminate_child(name)

    def teardown(self) -> None:
        if self.system is None:
            return
        try:
            _, not_done = concurrent.futures.wait(self.all, timeout=30)
            assert not not_done, f"{len(not_done)} futures never resolved"
        finally:
            self.system.stop()
        with self.lock:
            assert all(n == 1 for n in self.resolutions.values()), "a future resolved twice"
        for (name, cid), calls in self.ordered.items():
            ran = [seq for c, seq, _ in controls(name).log if c == cid]
            assert ran == sorted(ran) and len(set(ran)) == len(ran), (name, cid, ran)
            for seq, fut in calls:
                err = fut.exception(0)
                if err is None and isinstance(fut.result(0), Superseded):
                    assert seq not in ran, "a superseded call ran"
                elif err is None:
                    assert seq in ran, "a successful call did not run"
                elif isinstance(err, sessions.CallTimeout) and not err.started:
                    assert seq not in ran, "a call ran after it timed out"
                else:
                    assert isinstance(err, (sessions.ResourceUnavailable, sessions.CallTimeout)), (
                        err
                    )
        for futures in self.keyed.values():
            superseded = [isinstance(f.exception(0) or f.result(0), Superseded)
                          for f in futures]
            assert not superseded[-1], "the newest call of a key was superseded"
        faults = [e for e in self.recorder.of(ChildFaulted) if e.supervisor == "root"]
        gave_up = self.recorder.of(SupervisorGaveUp)
        if len(faults) > MAX_RESTARTS:
            assert gave_up, "restarts exceeded the intensity without a give-up"
            assert len(faults) == MAX_RESTARTS + 1
        else:
            assert not gave_up


CallsFaultsRestarts.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCallsFaultsRestarts = CallsFaultsRestarts.TestCase
