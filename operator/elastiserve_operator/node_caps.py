"""Per-node level caps: a hot node narrows only the replicas it hosts (pure).

``decide_caps(readings, spec, level, previous, now) -> CapsDecision`` is called once per
evaluation, before ``decide``, with one ``NodePressure`` per node that hosts a replica of
the model. A cap is a *maximum* level for the replicas on that node: each replica's level
agent serves ``min(status.activeLevel, status.nodeCaps[its node])``.

How caps relate to the model-wide level (``policy.decide``):

* **Some hosting nodes hot** -> only their replicas narrow (a cap); the model-wide level
  keeps following latency, and may widen, because the cool nodes have room.
* **Every hosting node hot** -> ``model_pressure`` carries the worst reading into the
  ``Observation`` and the policy's node-pressure rule narrows the whole model too (one
  level per stable window, no widening). The caps keep stepping at the same pace, so the
  two agree. A node without a reading is not hot, so one blind node keeps the decision
  per node.

Rules per node (thresholds from ``spec.nodePressure``, the policy's windows):

1. **Hot** (any reading at or above its threshold): a node without a cap is capped at
   once one level below ``min(level, maxLevel)`` (never below ``minLevel``; at the
   narrowest level the cap records that the node is hot). A capped node still hot after
   ``stableWindowSeconds`` since its cap last moved steps down one more level.
2. **Cool** (every reading below its threshold by the release margin, and at least one
   reading): after ``widenStabilizationSeconds`` of uninterrupted cool readings the cap
   rises one level; a cap that would no longer bind (at or above the model's level) is
   lifted. Each further step needs a new full window.
3. **In between** (the hysteresis band) or **no reading** (exporter missing, NaN, stale):
   the cap holds as it is and the cool clock restarts. No reading never narrows.
4. A node that hosts no replica any more loses its cap; node pressure switched off
   (``spec.nodePressure.enabled: false``) lifts every cap.
5. ``readings=None`` means the nodes could not be read at all (API error, no ready
   replica): every cap holds.

The release margins make the band: without them a board hovering at 85 C would be capped
and released every window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .observation import NodePressure, finite_or_none
from .policy import pressure_reasons
from .signals.nodes import worst
from .spec import ElasticModelSpec, NodePressureThresholds

__all__ = [
    "RELEASE_MARGINS",
    "CapChange",
    "CapsDecision",
    "NodeCap",
    "ReleaseMargins",
    "caps_from_status",
    "caps_status",
    "cooled",
    "decide_caps",
]


@dataclass(frozen=True)
class ReleaseMargins:
    """How far under its threshold a reading must be before a cap may rise."""

    cpu_fraction: float = 0.05
    memory_fraction: float = 0.05
    temperature_c: float = 5.0
    gpu_load_percent: float = 10.0


RELEASE_MARGINS = ReleaseMargins()
"""5 C is about what a Jetson's fan curve moves between steps; 10 points of GR3D load and
5 points of CPU/memory are well above the sample-to-sample noise of those readings."""


@dataclass(frozen=True)
class NodeCap:
    """One node's cap: the level, when it last moved, since when the node reads cool."""

    level: int
    changed_at: float
    cool_since: float | None = None


@dataclass(frozen=True)
class CapChange:
    """A cap appeared, moved or was lifted (``level`` None); the caller posts an Event."""

    node: str
    previous: int | None
    level: int | None
    reason: str

    @property
    def narrowed(self) -> bool:
        return self.level is not None and (self.previous is None or self.level < self.previous)

    @property
    def event_reason(self) -> str:
        if self.level is None:
            return "NodeCapLifted"
        return "NodeCapped" if self.narrowed else "NodeCapRaised"


@dataclass(frozen=True)
class CapsDecision:
    """The caps to keep, what changed, and the pressure the model-wide policy acts on."""

    caps: Mapping[str, NodeCap]
    changes: tuple[CapChange, ...] = ()
    model_pressure: NodePressure | None = None

    def levels(self) -> dict[str, int]:
        """``status.nodeCaps``: node -> maximum level of its replicas."""
        return {node: cap.level for node, cap in sorted(self.caps.items())}


def _release_line(limit: float, margin: float) -> float:
    """``limit - margin``, but never under half the limit: a threshold set lower than its
    margin (CPU at 0.04) would otherwise put the line below zero, and no cap would ever rise."""
    return max(limit - margin, limit / 2.0)


def cooled(
    node: NodePressure, limits: NodePressureThresholds, margins: ReleaseMargins = RELEASE_MARGINS
) -> bool | None:
    """True: every present reading is under its release line; False: some is not;
    None: no reading at all (no signal)."""
    pairs = (
        (node.cpu_fraction, _release_line(limits.cpu_fraction, margins.cpu_fraction)),
        (node.memory_fraction, _release_line(limits.memory_fraction, margins.memory_fraction)),
        (node.temperature_c, _release_line(limits.temperature_c, margins.temperature_c)),
        (node.gpu_load_percent,
         _release_line(limits.gpu_load_percent, margins.gpu_load_percent)),
    )
    present = [(v, line) for raw, line in pairs if (v := finite_or_none(raw)) is not None]
    if not present:
        return None
    return all(value < line for value, line in present)


def _hot_node(
    node: str,
    reasons: list[str],
    cap: NodeCap | None,
    level: int,
    lo: int,
    hi: int,
    stable_s: float,
    now: float,
) -> tuple[NodeCap, CapChange | None]:
    what = ", ".join(reasons)
    if cap is None:
        target = max(lo, min(level, hi) - 1)
        reason = (f"node {node}: {what}; capping its replicas at level {target} "
                  f"(model level {level})")
        return NodeCap(target, now), CapChange(node, None, target, reason)
    target = max(lo, min(cap.level, level) - 1)
    if target < cap.level and now - cap.changed_at >= stable_s:
        reason = (f"node {node}: still {what} after {stable_s:g} s; capping its replicas "
                  f"{cap.level} -> {target}")
        return NodeCap(target, now), CapChange(node, cap.level, target, reason)
    return NodeCap(cap.level, cap.changed_at), None


def _cool_node(
    node: str, cap: NodeCap, level: int, window_s: float, now: float
) -> tuple[NodeCap | None, CapChange | None]:
    since = cap.cool_since if cap.cool_since is not None else now
    if now - since < window_s:
        return NodeCap(cap.level, cap.changed_at, since), None
    raised = cap.level + 1
    if raised >= level:
        reason = (f"node {node}: readings under their release lines for {window_s:g} s; "
                  f"lifting the cap at {cap.level} (model level {level})")
        return None, CapChange(node, cap.level, None, reason)
    reason = (f"node {node}: readings under their release lines for {window_s:g} s; "
              f"raising its cap {cap.level} -> {raised}")
    return NodeCap(raised, now, now), CapChange(node, cap.level, raised, reason)


def decide_caps(
    readings: Mapping[str, NodePressure] | None,
    spec: ElasticModelSpec,
    level: int,
    previous: Mapping[str, NodeCap],
    now: float,
    *,
    enabled: bool = True,
    margins: ReleaseMargins = RELEASE_MARGINS,
) -> CapsDecision:
    """The caps after this evaluation; see the module docstring for the rules.

    ``level`` is the model-wide level before this evaluation's decision; ``enabled``
    False (the operator's ``ELASTISERVE_NODE_PRESSURE``) lifts every cap like the spec's
    switch does.
    """
    limits = spec.node_pressure
    if not (enabled and limits.enabled):
        lifted = tuple(
            CapChange(node, cap.level, None, f"node {node}: node pressure switched off; "
                      f"lifting the cap at {cap.level}")
            for node, cap in sorted(previous.items())
        )
        return CapsDecision({}, lifted)
    if readings is None:
        return CapsDecision(dict(previous))
    lo, hi = spec.levels.min_level, spec.levels.max_level
    policy = spec.policy
    caps: dict[str, NodeCap] = {}
    changes: list[CapChange] = []
    for node, gone in sorted(previous.items()):
        if node not in readings:
            changes.append(CapChange(node, gone.level, None,
                                     f"node {node}: hosts no replica any more; cap lifted"))
    hot_nodes = 0
    for node, reading in sorted(readings.items()):
        cap = previous.get(node)
        reasons = pressure_reasons(reading, limits)
        new: NodeCap | None
        change: CapChange | None
        if reasons:
            hot_nodes += 1
            new, change = _hot_node(node, reasons, cap, level, lo, hi,
                                    policy.stable_window_s, now)
        elif cap is None:
            continue
        elif cooled(reading, limits, margins):
            new, change = _cool_node(node, cap, level, policy.widen_stabilization_s, now)
        else:  # in the hysteresis band, or no reading: hold, and the cool clock restarts
            new, change = NodeCap(cap.level, cap.changed_at), None
        if new is not None:
            caps[node] = new
        if change is not None:
            changes.append(change)
    everywhere = bool(readings) and hot_nodes == len(readings)
    return CapsDecision(caps, tuple(changes), worst(readings.values()) if everywhere else None)


def caps_status(decision: CapsDecision) -> dict[str, Any]:
    """The status fields the policy's apply sends (left out when empty, so removed)."""
    if not decision.caps:
        return {}
    return {
        "nodeCaps": decision.levels(),
        "nodeCapState": {node: _cap_state(cap) for node, cap in sorted(decision.caps.items())},
    }


def _cap_state(cap: NodeCap) -> dict[str, Any]:
    # No nulls: the API server prunes them, and then the status would never equal the
    # patch (``status_holds``) and every evaluation would write it again.
    state: dict[str, Any] = {"level": cap.level, "changedAt": cap.changed_at}
    if cap.cool_since is not None:
        state["coolSince"] = cap.cool_since
    return state


def caps_from_status(status: Mapping[str, Any], now: float) -> dict[str, NodeCap]:
    """The caps kept in the status; a malformed entry restarts its clocks at ``now``
    (which only delays its next step by one window)."""
    raw_state = status.get("nodeCapState")
    state = raw_state if isinstance(raw_state, Mapping) else {}
    raw_levels = status.get("nodeCaps")
    levels = raw_levels if isinstance(raw_levels, Mapping) else {}
    caps: dict[str, NodeCap] = {}
    for node, level in levels.items():
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            continue
        entry = state.get(node)
        changed, cool = now, None
        if isinstance(entry, Mapping) and entry.get("level") == level:
            changed = _number(entry.get("changedAt"), now)
            cool_raw = entry.get("coolSince")
            cool = _number(cool_raw, now) if cool_raw is not None else None
        caps[str(node)] = NodeCap(level, changed, cool)
    return caps


def _number(raw: object, default: float) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    return default
