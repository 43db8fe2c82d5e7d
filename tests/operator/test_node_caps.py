"""Per-node level caps (pure): one table row per rule, then sequences that must not flap.

Fixture: four levels (0..3), thresholds from the CRD defaults (CPU/memory 0.9, 85 C, GPU
95 %), release lines 0.85 / 80 C / 85 %, stable window 60 s, widen stabilisation 120 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastiserve_operator.node_caps import (
    CapsDecision,
    NodeCap,
    caps_from_status,
    caps_status,
    cooled,
    decide_caps,
)
from elastiserve_operator.observation import NodePressure
from elastiserve_operator.spec import ElasticModelSpec, parse_spec

NOW = 50_000.0
STABLE_S = 60
WIDEN_S = 120

HOT_GPU = NodePressure(gpu_load_percent=99.0, temperature_c=70.0)
HOT_TEMP = NodePressure(temperature_c=91.0, gpu_load_percent=40.0)
BAND = NodePressure(temperature_c=82.0)  # under 85, over the 80 C release line
COOL = NodePressure(temperature_c=60.0, gpu_load_percent=30.0, cpu_fraction=0.2)
BLIND = NodePressure()
NAN = NodePressure(temperature_c=math.nan, gpu_load_percent=math.inf)


def make_spec(**pressure: Any) -> ElasticModelSpec:
    return parse_spec({
        "model": {"levelCount": 4, "source": {"localPath": "/m.mar"}},
        "objective": {"p95Ms": 100},
        "policy": {"stableWindowSeconds": STABLE_S, "widenStabilizationSeconds": WIDEN_S},
        "nodePressure": pressure,
    })


SPEC = make_spec()


def cap(level: int, changed_ago: float = 0.0, cool_ago: float | None = None) -> NodeCap:
    return NodeCap(level, NOW - changed_ago, None if cool_ago is None else NOW - cool_ago)


@dataclass(frozen=True)
class Row:
    name: str
    readings: dict[str, NodePressure] | None
    previous: dict[str, NodeCap] = field(default_factory=dict)
    level: int = 3
    caps: dict[str, int] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    model_pressure: bool = False
    spec: ElasticModelSpec = SPEC


ROWS = [
    Row("hot-gpu-caps-only-its-node", {"a": HOT_GPU, "b": COOL}, caps={"a": 2},
        events=("a:NodeCapped",)),
    Row("hot-temperature-caps", {"a": HOT_TEMP, "b": COOL}, caps={"a": 2},
        events=("a:NodeCapped",)),
    Row("cap-is-below-a-narrowed-model", {"a": HOT_GPU, "b": COOL}, level=2, caps={"a": 1},
        events=("a:NodeCapped",)),
    Row("at-min-level-records-hot-node", {"a": HOT_GPU, "b": COOL}, level=0, caps={"a": 0},
        events=("a:NodeCapped",)),
    Row("missing-reading-no-cap", {"a": BLIND, "b": COOL}),
    Row("nan-reading-no-cap", {"a": NAN, "b": COOL}),
    Row("cool-nodes-no-cap", {"a": COOL, "b": COOL}),
    Row("missing-reading-holds-cap", {"a": BLIND}, previous={"a": cap(1, 500.0)},
        caps={"a": 1}),
    Row("still-hot-within-window-holds", {"a": HOT_GPU, "b": COOL},
        previous={"a": cap(2, STABLE_S - 1)}, caps={"a": 2}),
    Row("still-hot-after-window-steps-down", {"a": HOT_GPU, "b": COOL},
        previous={"a": cap(2, STABLE_S)}, caps={"a": 1}, events=("a:NodeCapped",)),
    Row("still-hot-never-below-min", {"a": HOT_GPU, "b": COOL},
        previous={"a": cap(0, 999.0)}, caps={"a": 0}),
    Row("band-holds-cap", {"a": BAND, "b": COOL}, previous={"a": cap(1, 999.0, 999.0)},
        caps={"a": 1}),
    Row("cool-starts-clock", {"a": COOL}, previous={"a": cap(1, 999.0)}, caps={"a": 1}),
    Row("cool-short-of-window-holds", {"a": COOL}, previous={"a": cap(1, 999.0, WIDEN_S - 1)},
        caps={"a": 1}),
    Row("cool-for-window-raises-one", {"a": COOL}, previous={"a": cap(0, 999.0, WIDEN_S)},
        caps={"a": 1}, events=("a:NodeCapRaised",)),
    Row("cool-cap-reaching-model-level-lifted", {"a": COOL},
        previous={"a": cap(2, 999.0, WIDEN_S)}, events=("a:NodeCapLifted",)),
    Row("node-without-replica-loses-cap", {"b": COOL}, previous={"a": cap(1)},
        events=("a:NodeCapLifted",)),
    Row("unreadable-nodes-hold-everything", None, previous={"a": cap(1)}, caps={"a": 1}),
    Row("pressure-off-lifts-everything", {"a": HOT_GPU}, previous={"a": cap(1)},
        events=("a:NodeCapLifted",), spec=make_spec(enabled=False)),
    Row("every-hosting-node-hot-narrows-model", {"a": HOT_GPU, "b": HOT_TEMP},
        caps={"a": 2, "b": 2}, events=("a:NodeCapped", "b:NodeCapped"), model_pressure=True),
    Row("one-blind-node-keeps-it-per-node", {"a": HOT_GPU, "b": BLIND}, caps={"a": 2},
        events=("a:NodeCapped",)),
    Row("custom-threshold", {"a": NodePressure(temperature_c=76.0), "b": COOL}, caps={"a": 2},
        events=("a:NodeCapped",), spec=make_spec(temperatureCelsius=75)),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_caps(row: Row) -> None:
    decision = decide_caps(row.readings, row.spec, row.level, row.previous, NOW)
    assert decision.levels() == row.caps
    assert tuple(f"{c.node}:{c.event_reason}" for c in decision.changes) == row.events
    assert (decision.model_pressure is not None) == row.model_pressure
    for change in decision.changes:
        assert change.node in change.reason  # the Event message names the node


def test_every_node_hot_passes_the_worst_reading_on() -> None:
    decision = decide_caps({"a": HOT_GPU, "b": HOT_TEMP}, SPEC, 3, {}, NOW)
    assert decision.model_pressure == NodePressure(
        temperature_c=91.0, gpu_load_percent=99.0
    )


def test_cool_clock_restarts_in_the_band() -> None:
    held = decide_caps({"a": BAND}, SPEC, 3, {"a": cap(1, 999.0, 50.0)}, NOW)
    assert held.caps["a"].cool_since is None
    cooling = decide_caps({"a": COOL}, SPEC, 3, held.caps, NOW + 5)
    assert cooling.caps["a"].cool_since == NOW + 5


@pytest.mark.parametrize(
    ("reading", "expected"),
    [(COOL, True), (BAND, False), (HOT_GPU, False), (BLIND, None), (NAN, None),
     (NodePressure(cpu_fraction=0.86), False), (NodePressure(cpu_fraction=0.84), True)],
)
def test_cooled(reading: NodePressure, expected: bool | None) -> None:
    assert cooled(reading, SPEC.node_pressure) is expected


def test_a_threshold_under_its_margin_can_still_release() -> None:
    low = make_spec(cpuFraction=0.04).node_pressure
    assert cooled(NodePressure(cpu_fraction=0.019), low) is True
    assert cooled(NodePressure(cpu_fraction=0.021), low) is False


def run(
    trace: list[NodePressure], step_s: float = 5.0, level: int = 3
) -> tuple[list[CapsDecision], dict[str, NodeCap]]:
    caps: dict[str, NodeCap] = {}
    decisions = []
    for i, reading in enumerate(trace):
        decision = decide_caps({"a": reading, "b": COOL}, SPEC, level, caps, NOW + i * step_s)
        decisions.append(decision)
        caps = dict(decision.caps)
    return decisions, caps


def test_temperature_hovering_at_the_threshold_does_not_flap() -> None:
    # 84/86 C alternating for 10 minutes: capped once, then held in the band.
    trace = [NodePressure(temperature_c=86.0 if i % 2 else 84.0) for i in range(120)]
    decisions, caps = run(trace)
    changes = [c for d in decisions for c in d.changes]
    # Hot every other reading: the cap steps down once per stable window, never back up.
    assert all(c.narrowed for c in changes)
    assert caps["a"].level == 0
    assert len(changes) == 3  # 3 -> 2 at once, -> 1 after 60 s, -> 0 after 120 s


def test_a_brief_spike_caps_then_releases_only_after_the_window() -> None:
    trace = [HOT_GPU] * 2 + [COOL] * 40  # 10 s hot, then 200 s cool, 5 s apart
    decisions, caps = run(trace)
    events = [(i, c.event_reason) for i, d in enumerate(decisions) for c in d.changes]
    first_cool = 2
    lifted_at = next(i for i, reason in events if reason == "NodeCapLifted")
    assert events[0] == (0, "NodeCapped")
    assert (lifted_at - first_cool) * 5.0 >= WIDEN_S
    assert "a" not in caps and len(events) == 2


def test_status_round_trip() -> None:
    decision = decide_caps({"a": HOT_GPU, "b": COOL}, SPEC, 3, {"b": cap(1, 999.0)}, NOW)
    status = caps_status(decision)
    assert status["nodeCaps"] == {"a": 2, "b": 1}
    assert caps_from_status(status, NOW + 100) == decision.caps
    assert caps_status(CapsDecision({})) == {}


def test_malformed_status_restarts_the_clocks() -> None:
    status = {
        "nodeCaps": {"a": 1, "b": "x", "c": -1, "d": True, "e": 2},
        "nodeCapState": {"a": {"level": 2, "changedAt": 1.0}, "e": "junk"},
    }
    assert caps_from_status(status, NOW) == {"a": NodeCap(1, NOW), "e": NodeCap(2, NOW)}
    assert caps_from_status({"nodeCaps": "junk"}, NOW) == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([60.0, 78.0, 82.0, 84.0, 86.0, 95.0, math.nan]),
                min_size=1, max_size=80))
def test_every_move_is_backed_by_its_readings(temperatures: list[float]) -> None:
    # A narrowing needs a hot reading now; a widening needs a full window of readings
    # under the release line (80 C) with none missing: no flapping, whatever the trace.
    trace = [NodePressure(temperature_c=t) for t in temperatures]
    decisions, _ = run(trace)
    window = int(WIDEN_S / 5.0)
    for i, decision in enumerate(decisions):
        for change in decision.changes:
            if change.narrowed:
                assert temperatures[i] >= 85.0
            else:
                assert i >= window
                assert all(t < 80.0 for t in temperatures[i - window:i + 1])
