"""Prometheus exposition of a running :class:`~sessions.System` (``GET /metrics``).

Why a custom collector rather than ``Counter``/``Histogram`` objects: the figures
already exist - every resource keeps its call outcomes and a latency histogram
(:class:`~sessions._runtime.stats.CallStats`), and the tree knows states and
restarts. Mirroring them into client-library metrics would mean updating a second
copy on the hot path of every call. A collector reads them at scrape time instead,
and lives in a registry of its own, so importing ``sessions`` never adds anything to
``prometheus_client``'s global registry (a host application's ``/metrics`` stays its
own).

``prometheus-client`` is an optional extra (``applib-sessions[metrics]``); it is
imported only when a scrape happens, and its absence is reported as
:class:`MetricsUnavailable`, which the HTTP server turns into a ``501``.

Metric names (labels in braces):

* ``sessions_system_state{state}``: 1 for the system's state (running, failed, stopped).
* ``sessions_resource_state{resource,kind,state}``: 1 for the current state, 0 for the
  others (starting, running, restarting, stopped, failed).
* ``sessions_resource_restarts_total{resource,kind}``: completed restarts.
* ``sessions_resource_faults_total{resource,kind}``: faults (a faulting call or health
  check, a failed connect) seen since the metrics collector was created.
* ``sessions_calls_total{resource,kind,outcome}``: calls by outcome (ok, error, fault,
  timeout, refused).
* ``sessions_call_latency_seconds{resource,kind}``: histogram of the time from queueing
  a call to its result (queue wait included).
* ``sessions_queued_calls{resource,kind}``: calls waiting in the mailbox.
* ``sessions_abandoned_threads{resource,kind}``: threads of abandoned incarnations
  still blocked in a driver call after ``abort()`` (stalls); should be 0.
* ``sessions_circuit_state{resource,state}``: 1 for the breaker's state (closed, open,
  half_open); only resources with a ``breaker``.
* ``sessions_supervisor_state{supervisor,state}`` and
  ``sessions_supervisor_restarts_total{supervisor}``; ``sessions_supervisor_gave_up_total``.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sessions._runtime.stats import BUCKETS, OUTCOMES, CallStats
from sessions.messages import ChildFaulted, ChildState, CircuitState, Event, SupervisorGaveUp

if TYPE_CHECKING:
    from sessions._system import System

__all__ = ["CONTENT_TYPE", "MetricsCollector", "MetricsUnavailable"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format's content type (what ``prometheus_client`` also sends)."""

STATES = tuple(ChildState)
CIRCUIT_STATES = tuple(CircuitState)
SYSTEM_STATES = ("running", "failed", "stopped")


class MetricsUnavailable(RuntimeError):
    """``prometheus-client`` is not installed; the message says how to install it."""


def call_stats(system: System, name: str) -> CallStats | None:
    """The call statistics of resource ``name`` (summed over a pool's members); None if
    the resource is gone (a dynamic child removed between two looks)."""
    try:
        return system.stats(name)
    except KeyError:
        return None


def resources(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The resource and pool entries of a ``status()`` tree (pool members excluded)."""
    if tree.get("type") in ("resource", "pool"):
        yield tree
        return
    for child in tree.get("children", ()):
        yield from resources(child)


def supervisors(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The supervisor entries of a ``status()`` tree (pools are not supervisors here)."""
    if tree.get("type") != "supervisor":
        return
    yield tree
    for child in tree.get("children", ()):
        yield from supervisors(child)


class MetricsCollector:
    """Counts faults from supervision events and renders the whole exposition.

    Create it when serving starts (fault counts begin then: boot-time events are
    already history) and :meth:`close` it when serving stops.
    """

    def __init__(self, system: System) -> None:
        self._system = system
        self._lock = threading.Lock()
        self._faults: Counter[str] = Counter()
        self._gave_up: Counter[str] = Counter()
        self._unsubscribe = system.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        with self._lock:
            if isinstance(event, ChildFaulted):
                self._faults[event.name.partition("#")[0]] += 1
            elif isinstance(event, SupervisorGaveUp):
                self._gave_up[event.supervisor] += 1

    def close(self) -> None:
        """Stop counting events."""
        self._unsubscribe()

    def faults(self) -> dict[str, int]:
        """Faults per resource (and per sub-supervisor that gave up) so far."""
        with self._lock:
            return dict(self._faults)

    def collect(self) -> Iterator[Any]:
        """The metric families (``prometheus_client`` collector protocol)."""
        from prometheus_client.core import (  # noqa: PLC0415 - optional extra
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        system = self._system
        tree = system.status()
        faults = self.faults()
        with self._lock:
            gave_up = dict(self._gave_up)

        state = GaugeMetricFamily(
            "sessions_system_state", "1 for the system's current state.", labels=["state"]
        )
        current = system.state
        for s in SYSTEM_STATES:
            state.add_metric([s], 1.0 if s == current else 0.0)
        yield state

        res_state = GaugeMetricFamily(
            "sessions_resource_state",
            "1 for the resource's current state, 0 for the others.",
            labels=["resource", "kind", "state"],
        )
        restarts = CounterMetricFamily(
            "sessions_resource_restarts",
            "Completed restarts of the resource.",
            labels=["resource", "kind"],
        )
        fault_count = CounterMetricFamily(
            "sessions_resource_faults",
            "Faults (faulting call or health check, failed connect) since serving started.",
            labels=["resource", "kind"],
        )
        calls = CounterMetricFamily(
            "sessions_calls", "Calls by outcome.", labels=["resource", "kind", "outcome"]
        )
        latency = HistogramMetricFamily(
            "sessions_call_latency_seconds",
            "Time from queueing a call to its result, queue wait included.",
            labels=["resource", "kind"],
        )
        queued = GaugeMetricFamily(
            "sessions_queued_calls", "Calls waiting in the mailbox.", labels=["resource", "kind"]
        )
        abandoned = GaugeMetricFamily(
            "sessions_abandoned_threads",
            "Threads of abandoned incarnations still blocked in a driver call.",
            labels=["resource", "kind"],
        )
        circuit = GaugeMetricFamily(
            "sessions_circuit_state",
            "1 for the circuit breaker's current state.",
            labels=["resource", "state"],
        )
        for entry in resources(tree):
            name, kind = entry["name"], entry["kind"]
            labels = [name, kind]
            for s in STATES:
                res_state.add_metric([*labels, s], 1.0 if entry["state"] == s else 0.0)
            restarts.add_metric(labels, float(_restarts(entry)))
            fault_count.add_metric(labels, float(faults.get(name, 0)))
            queued.add_metric(labels, float(entry.get("queued") or 0))
            abandoned.add_metric(labels, float(entry.get("abandoned") or 0))
            if entry.get("circuit") is not None:
                for s in CIRCUIT_STATES:
                    circuit.add_metric([name, s], 1.0 if entry["circuit"] == s else 0.0)
            live = call_stats(system, name)
            if live is None:
                continue
            stats = live.copy()  # one consistent view: the resource keeps counting
            outcomes = dict(stats.outcomes)
            for outcome in OUTCOMES:
                calls.add_metric([*labels, outcome], float(outcomes.get(outcome, 0)))
            cumulative, buckets = 0, []
            per_bucket = list(stats.buckets)
            for bound, n in zip(BUCKETS, per_bucket, strict=False):
                cumulative += n
                buckets.append((_bound(bound), float(cumulative)))
            cumulative += per_bucket[-1]  # the +Inf bucket is the count, consistently
            buckets.append(("+Inf", float(cumulative)))
            latency.add_metric(labels, buckets, sum_value=float(stats.sum))
        yield from (res_state, restarts, fault_count, calls, latency, queued, abandoned,
                    circuit)

        sup_state = GaugeMetricFamily(
            "sessions_supervisor_state",
            "1 for the supervisor's current state.",
            labels=["supervisor", "state"],
        )
        sup_restarts = CounterMetricFamily(
            "sessions_supervisor_restarts",
            "Completed restarts of the supervisor.",
            labels=["supervisor"],
        )
        sup_gave_up = CounterMetricFamily(
            "sessions_supervisor_gave_up",
            "Times the supervisor exceeded its restart intensity since serving started.",
            labels=["supervisor"],
        )
        for sup in supervisors(tree):
            for s in STATES:
                sup_state.add_metric([sup["name"], s], 1.0 if sup["state"] == s else 0.0)
            sup_restarts.add_metric([sup["name"]], float(sup["restarts"]))
            sup_gave_up.add_metric([sup["name"]], float(gave_up.get(sup["name"], 0)))
        yield from (sup_state, sup_restarts, sup_gave_up)

    def exposition(self) -> bytes:
        """The Prometheus text format of everything above.

        Raises :class:`MetricsUnavailable` if ``prometheus-client`` is not installed.
        """
        try:
            from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415
        except ImportError as err:
            raise MetricsUnavailable(
                f"metrics need prometheus-client ({err}); install it with: "
                "pip install 'applib-sessions[metrics]'"
            ) from None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry)


def _restarts(entry: dict[str, Any]) -> int:
    """A pool's restarts are its own plus its members' (as ``Handle.restarts`` counts)."""
    total = int(entry.get("restarts") or 0)
    if entry.get("type") == "pool":
        total += sum(int(m.get("restarts") or 0) for m in entry.get("children", ()))
    return total


def _bound(seconds: float) -> str:
    """A bucket bound as Prometheus clients print it (``0.0001``, ``1.0``)."""
    return repr(float(seconds))
