"""The operator's own Prometheus metrics, on a private registry.

A private ``CollectorRegistry`` (not the global one) so that tests can start several
operators in one process and the exposition holds only what this module declares, plus the
process collector (RSS, CPU seconds) that the footprint benchmark and dashboards read.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

__all__ = ["RECONCILE_BUCKETS", "OperatorMetrics"]

RECONCILE_BUCKETS = (
    0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1,
    0.125, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
    60.0,
)
"""Neighbouring bounds at most a third apart from 5 ms to 1 s, so a quantile read from the
buckets is off by one small step (175 vs 200 ms), not by 2x (the earlier 500/1000 ms
buckets); bounds on both sides of the 200 ms reconcile target. Up to a minute so that a
burst (100 models created at once queue behind each other) gets a bound too rather than
+Inf. 30 buckets: a few kB of exposition per histogram (none of them is per model)."""


@dataclass
class OperatorMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)
        self.decisions = Counter(
            "elastiserve_operator_decisions", "Policy evaluations by cause.", ["cause"], registry=r
        )
        self.switches = Counter(
            "elastiserve_operator_level_switches",
            "Level changes by direction.",
            ["namespace", "name", "direction"],
            registry=r,
        )
        self.level = Gauge(
            "elastiserve_operator_active_level",
            "Level each ElasticModel was told to serve.",
            ["namespace", "name"],
            registry=r,
        )
        self.objective = Gauge(
            "elastiserve_operator_objective_seconds",
            "The p95 objective each ElasticModel runs with (its spec's or the chart default).",
            ["namespace", "name"],
            registry=r,
        )
        self.reconcile = Histogram(
            "elastiserve_operator_reconcile_duration_seconds",
            "Time to ensure an ElasticModel's children and status.",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.evaluation = Histogram(
            "elastiserve_operator_evaluation_duration_seconds",
            "Time of one policy evaluation (metrics queries included).",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.evaluation_lag = Histogram(
            "elastiserve_operator_evaluation_lag_seconds",
            "How late each policy evaluation starts against its schedule (a fixed grid of "
            "the model's interval): whether every model keeps its interval.",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.evaluations_skipped = Counter(
            "elastiserve_operator_evaluations_skipped",
            "Evaluation rounds skipped because a model's loop fell a whole interval behind.",
            registry=r,
        )
        self.api_requests = Histogram(
            "elastiserve_operator_api_request_duration_seconds",
            "Round trip of the operator's own API server requests (kopf's excluded), by "
            "method: separates a slow API server from a busy operator.",
            ["method"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.loop_lag = Histogram(
            "elastiserve_operator_event_loop_lag_seconds",
            "How late a 1 s timer fires on the operator's event loop (CPU starvation or a "
            "blocking call delays every handler by this much).",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "elastiserve_operator_gc_pause_seconds",
            "Time of one cyclic garbage collection by generation (it stops the event loop: "
            "every evaluation, reconcile and watch waits).",
            ["generation"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=r,
        )
        self.heap_trim = Histogram(
            "elastiserve_operator_heap_trim_seconds",
            "Time of one hand-back of the free heap to the system (glibc malloc_trim, "
            "every 30 s; it runs on the event loop).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25), registry=r,
        )
        self.status_writes = Counter(
            "elastiserve_operator_status_writes",
            "Status applies sent, by writer (reconcile: the reconcile and Deployment events; "
            "policy: the evaluations).",
            ["writer"], registry=r,
        )
        self.status_writes_skipped = Counter(
            "elastiserve_operator_status_writes_skipped",
            "Evaluations whose status apply was not sent: the freshest status known (kopf's "
            "copy, or the answer to the operator's own last write) already said it all. "
            "stale_copy: only the answer did (kopf's copy lagged behind it).",
            ["reason"], registry=r,
        )
        self.applies = Counter(
            "elastiserve_operator_child_applies",
            "Children sent to the API server by server-side apply.",
            registry=r,
        )
        self.skipped_applies = Counter(
            "elastiserve_operator_child_applies_skipped",
            "Children a reconcile did not send: unchanged since this process applied them.",
            registry=r,
        )
        self.drifts = Counter(
            "elastiserve_operator_child_drifts",
            "Children deleted or changed by someone else, and so applied again.",
            ["kind"],
            registry=r,
        )
        self.ready_corrections = Counter(
            "elastiserve_operator_ready_corrections",
            "Times the policy loop rewrote a status readyReplicas that disagreed with the "
            "Deployment (a lost race between two status writes).",
            registry=r,
        )
        self.errors = Counter(
            "elastiserve_operator_errors", "Failures by stage.", ["stage"], registry=r
        )
        self.node_caps = Gauge(
            "elastiserve_operator_node_cap_level",
            "Maximum level of a model's replicas on a hot node (no series: not capped).",
            ["namespace", "name", "node"],
            registry=r,
        )
        self.node_cap_changes = Counter(
            "elastiserve_operator_node_cap_changes",
            "Per-node caps set or stepped down (narrow), raised or lifted (widen).",
            ["namespace", "name", "direction"],
            registry=r,
        )
        self.desired_replicas = Gauge(
            "elastiserve_operator_desired_replicas",
            "Replica count the joint policy asked of each ElasticModel's Deployment (no series: "
            "the policy is off or another party owns the count).",
            ["namespace", "name"],
            registry=r,
        )
        self.replica_changes = Counter(
            "elastiserve_operator_replica_changes",
            "Replica counts the joint policy changed, by direction (out, in) and cause.",
            ["namespace", "name", "direction", "cause"],
            registry=r,
        )
        self.pod_start = Gauge(
            "elastiserve_operator_pod_start_seconds",
            "Pod start time (creation to Ready, p90 of the model's recent pods) the joint "
            "policy plans with: measured, or the model's podStartSeconds until measured.",
            ["namespace", "name"],
            registry=r,
        )
        self.served_share = Gauge(
            "elastiserve_operator_served_share",
            "Share of a model's unpinned requests its workers answered at each level over the "
            "last minute (no series: nothing answered, or no reading).",
            ["namespace", "name", "level"],
            registry=r,
        )
        self._capped: dict[tuple[str, str], set[str]] = {}
        self._served: dict[tuple[str, str], set[str]] = {}

    def observe_request(self, method: str, seconds: float) -> None:
        self.api_requests.labels(method).observe(seconds)

    def watch_gc(self) -> Callable[[], None]:
        """Time every garbage collection into ``gc_pause`` (a ``gc.callbacks`` hook); the
        returned function removes the hook. With 1,000 models the collector scans millions
        of objects, and a full collection is one long stop of the event loop: this says
        how long and how often."""
        started: dict[int, float] = {}

        def hook(phase: str, info: Mapping[str, Any]) -> None:
            generation = int(info.get("generation", 0))
            if phase == "start":
                started[generation] = time.perf_counter()
            elif generation in started:
                self.gc_pause.labels(str(generation)).observe(
                    time.perf_counter() - started.pop(generation))

        gc.callbacks.append(hook)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                gc.callbacks.remove(hook)

        return remove

    async def watch_loop_lag(self, period_s: float = 1.0) -> None:
        """Sample the event loop's lag forever (cancel to stop); one wake-up per period."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + period_s
            await asyncio.sleep(period_s)
            self.loop_lag.observe(max(0.0, loop.time() - due))

    def set_node_caps(self, namespace: str, name: str, caps: Mapping[str, int]) -> None:
        """One series per capped node of the model; a lifted cap's series goes away."""
        known = self._capped.setdefault((namespace, name), set())
        for node in known - set(caps):
            with contextlib.suppress(KeyError):
                self.node_caps.remove(namespace, name, node)
        for node, level in caps.items():
            self.node_caps.labels(namespace, name, node).set(level)
        self._capped[(namespace, name)] = set(caps)

    def set_served_share(self, namespace: str, name: str, shares: Mapping[str, float]) -> None:
        """One series per level served in the window; a level no longer served goes away."""
        known = self._served.setdefault((namespace, name), set())
        for level in known - set(shares):
            with contextlib.suppress(KeyError):
                self.served_share.remove(namespace, name, level)
        for level, share in shares.items():
            self.served_share.labels(namespace, name, level).set(share)
        self._served[(namespace, name)] = set(shares)

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted model's series so that the exposition does not grow forever."""
        self.forget_replicas(namespace, name)
        for gauge in (self.level, self.objective):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
        self.set_node_caps(namespace, name, {})
        self._capped.pop((namespace, name), None)
        self.set_served_share(namespace, name, {})
        self._served.pop((namespace, name), None)

    def forget_replicas(self, namespace: str, name: str) -> None:
        """Drop the joint policy's series of a model (deleted, or its policy off)."""
        for gauge in (self.desired_replicas, self.pod_start):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` on ``port`` from a background thread."""
        start_http_server(port, addr=address, registry=self.registry)
