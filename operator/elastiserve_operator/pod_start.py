"""How long a model's pods take to start: creation to Ready, from the pods themselves.

The joint replica policy looks one pod start ahead (``joint_policy``): a pod asked for now
serves only that much later. The time is measured per model, because it is the model's
image, archive and node pool that make it: the p90 of the ``RECENT`` most recently created
pods that are Ready, from ``metadata.creationTimestamp`` to the ``Ready`` condition's
``lastTransitionTime``. Until one is measured, ``spec.policy.replicas.podStartSeconds``
stands in (the caller's fallback).

A pod that went unready and ready again (a failed probe) shows its last transition, so it
reads longer than its start: the p90 then leans long, which makes the policy ask for
replicas earlier, not later. Timestamps have second granularity; a start under a second
reads as ``MIN_SECONDS``.

Pure: the caller lists the pods (``reconcile``).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MIN_SECONDS", "RECENT", "pod_start_seconds", "start_durations"]

RECENT = 20
"""How many of the newest ready pods count."""
MIN_SECONDS = 1.0
"""The shortest start reported (the timestamps are whole seconds)."""


def _time(raw: object) -> float | None:
    if not isinstance(raw, str) or not raw:
        return None
    try:
        moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _ready_at(pod: Mapping[str, Any]) -> float | None:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (isinstance(condition, Mapping) and condition.get("type") == "Ready"
                and condition.get("status") == "True"):
            return _time(condition.get("lastTransitionTime"))
    return None


def start_durations(pods: Iterable[Mapping[str, Any]]) -> list[tuple[float, float]]:
    """``(created_at, seconds to Ready)`` of every Ready pod, newest first."""
    found = []
    for pod in pods:
        created = _time((pod.get("metadata") or {}).get("creationTimestamp"))
        ready = _ready_at(pod)
        if created is None or ready is None or ready < created:
            continue
        found.append((created, ready - created))
    found.sort(key=lambda item: item[0], reverse=True)
    return found


def pod_start_seconds(pods: Iterable[Mapping[str, Any]], recent: int = RECENT) -> float | None:
    """The p90 (nearest rank) start time of the ``recent`` newest Ready pods, or ``None``
    when none is Ready."""
    durations = sorted(seconds for _, seconds in start_durations(pods)[:recent])
    if not durations:
        return None
    rank = max(1, math.ceil(0.9 * len(durations)))
    return max(durations[rank - 1], MIN_SECONDS)
