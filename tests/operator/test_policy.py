"""The level policy, one table row per rule, plus properties that hold for any input.

Fixture numbers: four levels served by two workers, batch-1 service times 5/8.3/13.3/20 ms
(capacities 400/240/150/100 rps per replica), objective 100 ms. So the headroom line is
80 ms, the breach line (10 % tolerance) 110 ms and the panic line 200 ms. The queueing
model predicts for the full level 39 ms at 50 rps, 86 ms at 80 rps, 162 ms at 90 rps and
``inf`` from 100 rps; level 2 fits the objective up to ~125 rps, level 1 up to ~215 rps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastiserve_operator.observation import NodePressure, Observation
from elastiserve_operator.policy import Cause, Decision, decide, predict_p95_s, pressure_reasons
from elastiserve_operator.policy_state import PolicyState, Recommendation, Sample
from elastiserve_operator.profile import LevelProfile
from elastiserve_operator.spec import ElasticModelSpec, parse_spec

NOW = 10_000.0
PROFILE = tuple(
    LevelProfile(f"w{pct}", service_time_s=0.020 / factor, accuracy=acc)
    for pct, factor, acc in (
        (25, 4.0, 0.905), (50, 2.4, 0.923), (75, 1.5, 0.931), (100, 1.0, 0.935)
    )
)

SLOW_W75 = LevelProfile("w75", service_time_s=0.150)
"""A level the model says cannot meet the 100 ms objective at any rate."""


def make_spec(**overrides: Any) -> ElasticModelSpec:
    """Spec of the fixture model; ``policy``/``levels``/... keys replace whole sections."""
    raw: dict[str, Any] = {
        "model": {"levelCount": 4, "source": {"localPath": "/m.mar"}},
        "objective": {"p95Ms": 100},
        "serving": {"workers": 2},
    }
    raw.update(overrides)
    return parse_spec(raw)


def make_state(
    level: int,
    *,
    age: float = 3600.0,
    changed_ago: float | None = None,
    settle_left: float | None = None,
    samples: tuple[tuple[float, float], ...] = (),
    recs: tuple[tuple[float, int], ...] | None = None,
    rate: float = 50.0,
) -> PolicyState:
    """State ``age`` seconds old; samples/recs given as (seconds ago, value).

    By default the recommendation window holds only the current level, so nothing widens
    unless a row says so.
    """
    recommendations = ((0.0, level),) if recs is None else recs
    return PolicyState(
        level=level,
        started_at=NOW - age,
        last_change_at=None if changed_ago is None else NOW - changed_ago,
        settle_until=None if settle_left is None else NOW + settle_left,
        samples=tuple(Sample(NOW - ago, p95, rate) for ago, p95 in samples),
        recommendations=tuple(
            Recommendation(NOW - ago, lv) for ago, lv in recs_sorted(recommendations)
        ),
    )


def recs_sorted(recs: tuple[tuple[float, int], ...]) -> list[tuple[float, int]]:
    return sorted(recs, key=lambda r: -r[0])


def obs(p95: float | None, rate: float | None = 50.0, *, ago: float | None = 0.0,
        node: NodePressure | None = None, ready: int | None = None) -> Observation:
    return Observation(p95, rate, None if ago is None else NOW - ago, node, ready)


def breach_history(p95: float, span: int = 60, step: int = 5) -> tuple[tuple[float, float], ...]:
    """Samples every ``step`` seconds over the last ``span`` seconds, all at ``p95``."""
    return tuple((float(ago), p95) for ago in range(span, 0, -step))


@dataclass(frozen=True)
class Row:
    name: str
    state: PolicyState
    observation: Observation
    level: int
    cause: Cause
    spec: dict[str, Any] = field(default_factory=dict)
    metrics_available: bool = True
    profile: tuple[LevelProfile, ...] = PROFILE


ROWS = (
    # 1. bounds: the spec wins over anything the metrics say
    Row("clamp-above-max", make_state(3), obs(0.02), 2, Cause.CLAMPED,
        {"levels": {"maxLevel": 2}}),
    Row("clamp-below-min-even-without-metrics", make_state(0), obs(None), 1, Cause.CLAMPED,
        {"levels": {"minLevel": 1}}),
    # 2. missing or stale metrics hold the level and say so
    Row("p95-missing", make_state(2), obs(None), 2, Cause.METRICS_MISSING,
        metrics_available=False),
    Row("p95-nan", make_state(2), obs(math.nan), 2, Cause.METRICS_MISSING,
        metrics_available=False),
    Row("p95-inf", make_state(2), obs(math.inf), 2, Cause.METRICS_MISSING,
        metrics_available=False),
    Row("p95-negative", make_state(2), obs(-0.1), 2, Cause.METRICS_MISSING,
        metrics_available=False),
    Row("rate-missing-during-overload", make_state(3), obs(0.9, None), 3,
        Cause.METRICS_MISSING, metrics_available=False),
    Row("rate-nan", make_state(3), obs(0.9, math.nan), 3, Cause.METRICS_MISSING,
        metrics_available=False),
    Row("sample-too-old", make_state(3), obs(0.9, ago=61), 3, Cause.METRICS_STALE,
        metrics_available=False),
    # 2a. idle is data: a rate of 0 with no latency (none, or NaN: a quantile over zero
    #     requests) is a model nobody called; nothing waited, so it widens after its window
    Row("idle-without-latency-widens-after-its-window",
        make_state(1, recs=((290.0, 3), (150.0, 3))), obs(None, 0.0), 3, Cause.HEADROOM),
    Row("idle-with-nan-latency-widens-after-its-window",
        make_state(1, recs=((290.0, 3), (150.0, 3))), obs(math.nan, 0.0), 3, Cause.HEADROOM),
    Row("idle-waits-for-the-widen-window", make_state(1), obs(None, 0.0), 1,
        Cause.STABILIZING),
    Row("idle-with-an-infinite-latency-is-a-broken-query",
        make_state(1, recs=((290.0, 3), (150.0, 3))), obs(math.inf, 0.0), 1,
        Cause.METRICS_MISSING, metrics_available=False),
    Row("no-rate-and-no-latency-is-missing-not-idle", make_state(1, recs=((290.0, 3),)),
        obs(None, None), 1, Cause.METRICS_MISSING, metrics_available=False),
    Row("idle-but-stale-holds", make_state(1, recs=((290.0, 3),)), obs(None, 0.0, ago=61),
        1, Cause.METRICS_STALE, metrics_available=False),
    Row("sample-from-the-future", make_state(3), obs(0.9, ago=-120), 3, Cause.METRICS_STALE,
        metrics_available=False),
    Row("sample-without-timestamp", make_state(3), obs(0.9, ago=None), 3, Cause.METRICS_STALE,
        metrics_available=False),
    Row("stale-limit-is-configurable", make_state(3), obs(0.02, ago=61), 3, Cause.STEADY,
        {"policy": {"staleAfterSeconds": 120}}),
    # 3. settle after a switch
    Row("settling-ignores-a-panic-reading", make_state(2, changed_ago=10, settle_left=20),
        obs(0.9), 2, Cause.SETTLING),
    Row("settling-still-acts-on-a-predicted-overload",
        make_state(2, changed_ago=10, settle_left=20), obs(0.9, 200.0), 1,
        Cause.PREDICTED_OVERLOAD),
    Row("no-settling-after-a-widening", make_state(2, changed_ago=10), obs(0.3, 50.0), 1,
        Cause.PANIC),
    # 4. panic
    Row("panic-narrows-to-the-level-that-fits", make_state(3), obs(0.25, 150.0), 1, Cause.PANIC),
    Row("panic-narrows-at-least-one-level", make_state(3), obs(0.25, 50.0), 2, Cause.PANIC),
    Row("panic-uses-the-window-mean", make_state(3, samples=((4.0, 0.05),)), obs(0.3, 50.0), 3,
        Cause.BREACH_PENDING),
    Row("panic-threshold-is-configurable", make_state(3), obs(0.25, 50.0), 3,
        Cause.BREACH_PENDING, {"policy": {"panicThreshold": 3.0}}),
    Row("panic-in-step-mode-moves-one-level", make_state(3), obs(0.25, 150.0), 2, Cause.PANIC,
        {"policy": {"mode": "Step"}}),
    Row("panic-narrowing-stops-at-min-level", make_state(3), obs(0.9, 300.0), 2, Cause.PANIC,
        {"levels": {"minLevel": 2}}),
    Row("panic-at-min-level-holds", make_state(1), obs(0.9, 300.0), 1, Cause.AT_MIN_LEVEL,
        {"levels": {"minLevel": 1}}),
    Row("panic-at-level-zero-holds", make_state(0), obs(0.9, 500.0), 0, Cause.AT_MIN_LEVEL),
    # 4b. overload predicted from the request rate before the latency shows it
    Row("rate-beyond-capacity-narrows-early", make_state(3), obs(0.05, 100.0), 2,
        Cause.PREDICTED_OVERLOAD),
    Row("rate-per-replica-uses-ready-replicas", make_state(3), obs(0.05, 120.0, ready=2), 3,
        Cause.STEADY),
    Row("rate-for-one-ready-replica-overloads", make_state(3), obs(0.05, 120.0, ready=1), 2,
        Cause.PREDICTED_OVERLOAD),
    Row("corroborated-predicted-breach-narrows", make_state(3), obs(0.085, 90.0), 2,
        Cause.PREDICTED_OVERLOAD),
    Row("predicted-breach-without-corroboration-holds", make_state(3), obs(0.05, 90.0), 3,
        Cause.STEADY),
    Row("predicted-breach-waits-while-settling", make_state(3, changed_ago=5, settle_left=25),
        obs(0.085, 90.0), 3, Cause.SETTLING),
    Row("no-prediction-in-step-mode", make_state(3), obs(0.05, 100.0), 3, Cause.STEADY,
        {"policy": {"mode": "Step"}}),
    Row("short-profile-falls-back-to-step", make_state(3), obs(0.05, 100.0), 3, Cause.STEADY,
        profile=PROFILE[:2]),
    # 5. sustained breach
    Row("sustained-breach-narrows", make_state(3, samples=breach_history(0.13), rate=80.0),
        obs(0.13, 80.0), 2, Cause.SUSTAINED_BREACH),
    Row("sustained-breach-jumps-when-model-says-so",
        make_state(3, samples=breach_history(0.15)), obs(0.15, 50.0), 1,
        Cause.SUSTAINED_BREACH, profile=(*PROFILE[:2], SLOW_W75, PROFILE[3])),
    Row("breach-within-tolerance-holds", make_state(3, samples=breach_history(0.105)),
        obs(0.105, 80.0), 3, Cause.STEADY),
    Row("breach-not-observed-long-enough", make_state(3, age=30, samples=breach_history(0.13, 30)),
        obs(0.13, 80.0), 3, Cause.BREACH_PENDING),
    Row("breach-window-restarts-after-settle",
        make_state(3, changed_ago=60, samples=breach_history(0.13, 25)), obs(0.13, 80.0), 3,
        Cause.BREACH_PENDING),
    Row("sustained-breach-in-step-mode", make_state(3, samples=breach_history(0.13)),
        obs(0.13, 80.0), 2, Cause.SUSTAINED_BREACH, {"policy": {"mode": "Step"}}),
    Row("sustained-breach-at-min-level", make_state(0, samples=breach_history(0.13)),
        obs(0.13, 80.0), 0, Cause.AT_MIN_LEVEL),
    # 6. node pressure
    Row("cpu-pressure-narrows-one-level", make_state(3), obs(0.02, 30.0, node=NodePressure(0.95)),
        2, Cause.NODE_PRESSURE),
    Row("memory-pressure-narrows", make_state(3),
        obs(0.02, 30.0, node=NodePressure(memory_fraction=0.97)), 2, Cause.NODE_PRESSURE),
    Row("jetson-temperature-narrows", make_state(3),
        obs(0.02, 30.0, node=NodePressure(temperature_c=91.0)), 2, Cause.NODE_PRESSURE),
    Row("gpu-load-narrows", make_state(3),
        obs(0.02, 30.0, node=NodePressure(gpu_load_percent=99.0)), 2, Cause.NODE_PRESSURE),
    Row("pressure-steps-once-per-stable-window", make_state(2, changed_ago=40),
        obs(0.02, 30.0, node=NodePressure(0.95)), 2, Cause.NODE_PRESSURE_HOLD),
    Row("pressure-blocks-widening", make_state(1, recs=((300.0, 3), (0.0, 3))),
        obs(0.02, 30.0, node=NodePressure(0.95)), 0, Cause.NODE_PRESSURE),
    Row("pressure-at-min-level-holds", make_state(0), obs(0.02, 30.0, node=NodePressure(0.95)),
        0, Cause.NODE_PRESSURE_HOLD),
    Row("pressure-ignored-when-disabled", make_state(3),
        obs(0.02, 30.0, node=NodePressure(0.99)), 3, Cause.STEADY,
        {"nodePressure": {"enabled": False}}),
    Row("nan-pressure-readings-ignored", make_state(3),
        obs(0.02, 30.0, node=NodePressure(math.nan, math.nan, math.nan, math.nan)), 3,
        Cause.STEADY),
    Row("latency-outranks-pressure", make_state(3),
        obs(0.3, 150.0, node=NodePressure(0.95)), 1, Cause.PANIC),
    # 7. widening
    Row("widen-jumps-to-the-stabilised-recommendation",
        make_state(1, recs=((290.0, 3), (150.0, 3))), obs(0.02, 30.0), 3, Cause.HEADROOM),
    Row("widen-takes-the-minimum-over-the-window",
        make_state(1, recs=((290.0, 3), (150.0, 2))), obs(0.02, 30.0), 2, Cause.HEADROOM),
    Row("widen-waits-while-a-narrow-recommendation-is-in-the-window",
        make_state(1, recs=((290.0, 3), (100.0, 1))), obs(0.02, 30.0), 1, Cause.STABILIZING),
    Row("old-recommendations-expire", make_state(1, recs=((400.0, 0), (290.0, 3))),
        obs(0.02, 30.0), 3, Cause.HEADROOM),
    Row("widen-window-is-configurable", make_state(1, recs=((100.0, 1),)), obs(0.02, 30.0), 3,
        Cause.HEADROOM, {"policy": {"widenStabilizationSeconds": 60}}),
    Row("widen-respects-max-level", make_state(1, recs=((290.0, 3),)), obs(0.02, 30.0), 2,
        Cause.HEADROOM, {"levels": {"maxLevel": 2}}),
    Row("widen-needs-headroom-at-the-wider-level", make_state(2, recs=((290.0, 3),)),
        obs(0.05, 80.0), 2, Cause.STEADY),
    Row("widen-headroom-is-configurable", make_state(2, recs=((290.0, 3),)), obs(0.05, 80.0), 3,
        Cause.HEADROOM, {"policy": {"headroom": 0.1}}),
    Row("no-widening-while-over-objective", make_state(2, recs=((290.0, 3),)),
        obs(0.105, 30.0), 2, Cause.STABILIZING),
    Row("fresh-operator-waits-a-window-before-widening", PolicyState.initial(1, NOW - 100),
        obs(0.02, 30.0), 1, Cause.STABILIZING),
    Row("step-mode-widens-one-level", make_state(1, recs=((290.0, 2), (100.0, 2))),
        obs(0.02, 30.0), 2, Cause.HEADROOM, {"policy": {"mode": "Step"}}),
    Row("step-mode-needs-measured-headroom", make_state(1, recs=((290.0, 2),)), obs(0.09, 30.0),
        1, Cause.STEADY, {"policy": {"mode": "Step"}}),
    Row("steady-at-max", make_state(3), obs(0.03, 30.0), 3, Cause.STEADY),
    # spec.policy.loops: Worker -- latency is the workers' business (test_policy_mode.py)
    Row("worker-loops-ignore-a-panic-p95", make_state(3), obs(0.9, 300.0), 3, Cause.WORKER_LOOP,
        {"policy": {"loops": "Worker"}}),
    Row("worker-loops-node-pressure-lowers-the-ceiling", make_state(3),
        obs(None, node=NodePressure(0.95)), 2, Cause.NODE_PRESSURE,
        {"policy": {"loops": "Worker"}}),
)


class TestRules:
    @pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
    def test_row(self, row: Row) -> None:
        decision = decide(row.observation, make_spec(**row.spec), row.profile, row.state, NOW)
        assert (decision.level, decision.cause) == (row.level, row.cause), decision.reason
        assert decision.metrics_available is row.metrics_available
        assert decision.previous_level == row.state.level
        assert decision.state.level == decision.level
        assert decision.reason

    def test_rows_cover_every_cause(self) -> None:
        assert {row.cause for row in ROWS} == set(Cause)


class TestStateAfterADecision:
    def test_a_switch_clears_samples_and_stamps_the_change(self) -> None:
        state = make_state(3, samples=breach_history(0.13))
        decision = decide(obs(0.13, 80.0), make_spec(), PROFILE, state, NOW)
        assert decision.changed
        assert decision.state.samples == ()
        assert decision.state.last_change_at == NOW

    def test_a_narrowing_is_remembered_as_a_recommendation(self) -> None:
        decision = decide(obs(0.3, 150.0), make_spec(), PROFILE, make_state(3), NOW)
        assert decision.state.recommendations[-1] == Recommendation(NOW, 1)

    def test_a_repeated_sample_is_recorded_once(self) -> None:
        state = make_state(3)
        first = decide(obs(0.05, 50.0), make_spec(), PROFILE, state, NOW)
        second = decide(obs(0.05, 50.0), make_spec(), PROFILE, first.state, NOW + 1)
        assert len(second.state.samples) == 1

    def test_samples_older_than_the_stable_window_are_dropped(self) -> None:
        state = make_state(3, samples=((600.0, 0.5), (30.0, 0.05)))
        decision = decide(obs(0.05, 50.0), make_spec(), PROFILE, state, NOW)
        assert [s.at for s in decision.state.samples] == [NOW - 30.0, NOW]

    def test_decisions_carry_the_predictions(self) -> None:
        decision = decide(obs(0.05, 50.0), make_spec(), PROFILE, make_state(3), NOW)
        assert len(decision.predicted_p95_s) == 4
        assert decision.predicted_p95_s[3] == pytest.approx(0.039, abs=0.001)

    def test_reason_names_levels_and_numbers(self) -> None:
        decision = decide(obs(0.25, 150.0), make_spec(), PROFILE, make_state(3), NOW)
        assert decision.reason.startswith("p95 250 ms >= 2x objective 100 ms")
        assert "narrowing 3 (w100) -> 1 (w50)" in decision.reason


class TestScenarios:
    """Several evaluations in a row, as the operator's timer would make them."""

    @staticmethod
    def run(spec: ElasticModelSpec, state: PolicyState,
            ticks: list[tuple[float, float, float]]) -> list[Decision]:
        decisions = []
        for at, p95, rate in ticks:
            decision = decide(Observation(p95, rate, at), spec, PROFILE, state, at)
            decisions.append(decision)
            state = decision.state
        return decisions

    def test_load_step_predictive_jumps_step_mode_walks(self) -> None:
        ticks = [(float(t), 0.3, 150.0) for t in range(5, 400, 5)]
        predictive = self.run(make_spec(), PolicyState.initial(3, 0.0), ticks)
        stepping = self.run(make_spec(policy={"mode": "Step"}), PolicyState.initial(3, 0.0), ticks)
        assert next(d.level for d in predictive if d.changed) == 1
        moves = [(d.state.last_change_at, d.level) for d in stepping if d.changed]
        assert [level for _, level in moves] == [2, 1, 0]
        assert moves[1][0] is not None and moves[1][0] >= 35.0  # waited out the settle time

    def test_widening_waits_the_stabilisation_window_after_a_narrowing(self) -> None:
        spec = make_spec()
        overload = [(5.0, 0.3, 150.0)]
        calm = [(float(t), 0.02, 30.0) for t in range(40, 700, 5)]
        decisions = self.run(spec, PolicyState.initial(3, -1000.0), overload + calm)
        changes = [(d.state.last_change_at, d.level) for d in decisions if d.changed]
        assert changes == [(5.0, 1), (310.0, 3)]  # the window is inclusive

    def test_recovery_below_the_breach_line_cancels_a_pending_narrowing(self) -> None:
        spec = make_spec()
        ticks = [(float(t), 0.13 if t < 40 else 0.06, 80.0) for t in range(5, 120, 5)]
        decisions = self.run(spec, PolicyState.initial(3, 0.0), ticks)
        assert not any(d.changed for d in decisions)


class TestHelpers:
    def test_pressure_reasons_lists_each_reading_over_its_limit(self) -> None:
        spec = make_spec()
        node = NodePressure(cpu_fraction=0.95, memory_fraction=0.5, temperature_c=90.0)
        assert pressure_reasons(node, spec.node_pressure) == [
            "cpu 95% >= 90%",
            "temperature 90 C >= 85 C",
        ]
        assert pressure_reasons(None, spec.node_pressure) == []

    def test_predictions_grow_with_width(self) -> None:
        predictions = predict_p95_s(PROFILE, 60.0, workers=2)
        assert list(predictions) == sorted(predictions)


class TestStateSerialisation:
    def test_round_trip(self) -> None:
        state = make_state(2, changed_ago=100, settle_left=5, samples=((10.0, 0.05),),
                           recs=((50.0, 3),))
        assert PolicyState.from_dict(state.to_dict()) == state

    @pytest.mark.parametrize("raw", [{"version": 99}, {"version": 1, "level": 2}, {"version": 1,
                             "level": 1, "startedAt": 0, "samples": [[1, 2]]}])
    def test_bad_input_is_refused(self, raw: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            PolicyState.from_dict(raw)


# --------------------------------------------------------------------------- properties

maybe_bad = st.one_of(st.none(), st.just(math.nan), st.just(math.inf), st.just(-math.inf))
latency = st.floats(min_value=0.0, max_value=5.0)
rates = st.floats(min_value=0.0, max_value=1000.0)


@st.composite
def bounds_and_spec(draw: st.DrawFn) -> tuple[int, int, ElasticModelSpec]:
    lo = draw(st.integers(0, 3))
    hi = draw(st.integers(lo, 3))
    mode = draw(st.sampled_from(["Predictive", "Step"]))
    return lo, hi, make_spec(levels={"minLevel": lo, "maxLevel": hi}, policy={"mode": mode})


@st.composite
def histories(draw: st.DrawFn, level: int) -> PolicyState:
    samples = draw(st.lists(st.tuples(st.floats(0.0, 120.0), latency), max_size=8))
    recs = draw(st.lists(st.tuples(st.floats(0.0, 400.0), st.integers(0, 3)), max_size=8))
    changed = draw(st.one_of(st.none(), st.floats(0.0, 600.0)))
    settle = draw(st.one_of(st.none(), st.floats(-30.0, 30.0)))
    return make_state(level, changed_ago=changed, settle_left=settle,
                      samples=tuple(sorted(samples, reverse=True)), recs=tuple(recs) or None)


class TestProperties:
    @settings(max_examples=300, deadline=None)
    @given(data=st.data(), spec_bounds=bounds_and_spec(), p95=latency, rate=rates,
           cpu=st.floats(0.0, 1.0))
    def test_level_never_leaves_the_bounds(self, data: st.DataObject,
                                           spec_bounds: tuple[int, int, ElasticModelSpec],
                                           p95: float, rate: float, cpu: float) -> None:
        lo, hi, spec = spec_bounds
        state = data.draw(histories(data.draw(st.integers(0, 3))))
        decision = decide(obs(p95, rate, node=NodePressure(cpu)), spec, PROFILE, state, NOW)
        assert lo <= decision.level <= hi

    @settings(max_examples=300, deadline=None)
    @given(data=st.data(), spec_bounds=bounds_and_spec(), bad=maybe_bad, good=latency,
           bad_is_rate=st.booleans())
    def test_never_moves_on_missing_metrics(self, data: st.DataObject,
                                            spec_bounds: tuple[int, int, ElasticModelSpec],
                                            bad: float | None, good: float,
                                            bad_is_rate: bool) -> None:
        lo, hi, spec = spec_bounds
        state = data.draw(histories(data.draw(st.integers(lo, hi))))
        observation = obs(good, bad) if bad_is_rate else obs(bad, 50.0)
        decision = decide(observation, spec, PROFILE, state, NOW)
        assert decision.level == state.level
        assert not decision.metrics_available
        assert decision.state == state

    @settings(max_examples=200, deadline=None)
    @given(data=st.data(), spec_bounds=bounds_and_spec(), p95=latency, rate=rates)
    def test_same_inputs_same_decision(self, data: st.DataObject,
                                       spec_bounds: tuple[int, int, ElasticModelSpec],
                                       p95: float, rate: float) -> None:
        _, _, spec = spec_bounds
        state = data.draw(histories(data.draw(st.integers(0, 3))))
        assert decide(obs(p95, rate), spec, PROFILE, state, NOW) == decide(
            obs(p95, rate), spec, PROFILE, state, NOW
        )

    @settings(max_examples=100, deadline=None)
    @given(spec_bounds=bounds_and_spec(),
           ticks=st.lists(st.tuples(st.one_of(latency, maybe_bad), rates), min_size=1,
                          max_size=60))
    def test_sequences_stay_in_bounds_and_carry_the_level(
        self, spec_bounds: tuple[int, int, ElasticModelSpec],
        ticks: list[tuple[float | None, float]],
    ) -> None:
        lo, hi, spec = spec_bounds
        state = PolicyState.initial(hi, 0.0)
        for index, (p95, rate) in enumerate(ticks):
            now = 5.0 * (index + 1)
            decision = decide(Observation(p95, rate, now), spec, PROFILE, state, now)
            assert lo <= decision.level <= hi
            assert decision.state.level == decision.level
            state = decision.state
