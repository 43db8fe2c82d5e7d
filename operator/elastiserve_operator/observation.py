"""What the policy sees at one evaluation: latency, load and node readings.

These are plain values with no behaviour, kept apart from ``policy.py`` so that the
gatherers (``signals/prometheus.py``, ``signals/nodes.py``) can build them without
importing the policy, and the policy tests can build them without any client.

Missing data is ``None`` (or NaN, which the policy treats the same); the policy decides
what missing means, the gatherers never invent a value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["NodePressure", "Observation", "finite_or_none"]


def finite_or_none(value: float | None) -> float | None:
    """``value`` if it is a finite number, else ``None`` (NaN/Inf mean "no reading")."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class NodePressure:
    """Readings of the node that hosts (the busiest of) the serving pods.

    Fractions are of allocatable resources (what pods may use), not of capacity, because
    allocatable is what runs short first. Jetson readings are optional: most nodes do not
    export them.
    """

    cpu_fraction: float | None = None
    memory_fraction: float | None = None
    temperature_c: float | None = None
    gpu_load_percent: float | None = None


@dataclass(frozen=True)
class Observation:
    """One evaluation's inputs.

    ``p95_s`` is the end-to-end p95 latency in seconds, ``request_rate_rps`` the arriving
    request rate (a counter incremented when a request enters, so that it keeps counting the
    demand during overload; a completion counter saturates at the current capacity and makes
    the predictor optimistic), ``sampled_at`` the epoch seconds the values belong to, and
    ``ready_replicas`` the replicas sharing that rate (``None``: assume ``spec.replicas``).
    """

    p95_s: float | None
    request_rate_rps: float | None
    sampled_at: float | None
    node: NodePressure | None = None
    ready_replicas: int | None = None
