"""The policy simulator: its Prometheus arithmetic, its determinism, and the comparison."""

from __future__ import annotations

import math

import pytest

from elastiserve_operator.profile import LevelProfile
from elastiserve_operator.simulate import (
    PolicyController,
    SimConfig,
    StaticController,
    histogram_quantile,
    ramp_trace,
    simulate,
    standard_trace,
)
from elastiserve_operator.spec import ElasticModelSpec, parse_spec

# A slow model keeps the request count (and the test's run time) small: full level 40 ms,
# 50 rps with two workers; the narrowest level serves 200 rps.
PROFILE = tuple(
    LevelProfile(name, service_time_s=0.040 / factor, accuracy=acc)
    for name, factor, acc in (
        ("w25", 4.0, 0.905), ("w50", 2.4, 0.923), ("w75", 1.5, 0.931), ("w100", 1.0, 0.935)
    )
)


def spec(mode: str = "Predictive") -> ElasticModelSpec:
    return parse_spec(
        {
            "model": {"levelCount": 4, "source": {"localPath": "/sim.mar"}},
            "objective": {"p95Ms": 250},
            "serving": {"workers": 2},
            "policy": {"mode": mode},
        }
    )


class TestHistogramQuantile:
    BUCKETS = (0.1, 0.2, 0.5)

    @pytest.mark.parametrize(
        ("counts", "expected"),
        [
            ((100, 0, 0, 0), 0.095),  # rank 95 of 100 in the first bucket: 0 + 0.1 * 0.95
            ((50, 50, 0, 0), 0.19),  # rank 95: 45 into the second bucket of 50
            ((0, 0, 10, 0), 0.485),
            ((90, 0, 0, 10), 0.5),  # in +Inf: the highest finite edge, as Prometheus does
            ((0, 0, 0, 0), None),
        ],
    )
    def test_interpolates_like_prometheus(
        self, counts: tuple[int, ...], expected: float | None
    ) -> None:
        result = histogram_quantile(0.95, self.BUCKETS, counts)
        assert result == (None if expected is None else pytest.approx(expected))


class TestTraces:
    def test_standard_trace_reaches_twice_the_capacity(self) -> None:
        trace = standard_trace(100.0, 1800)
        assert len(trace) == 1800
        assert max(trace) == pytest.approx(200.0)
        assert trace[0] == pytest.approx(50.0)

    def test_short_trace_keeps_the_shape(self) -> None:
        assert sorted(set(standard_trace(10.0, 60))) == sorted(set(standard_trace(10.0, 1800)))

    def test_ramp_stays_between_its_bounds(self) -> None:
        trace = ramp_trace(100.0)
        assert min(trace) == pytest.approx(30.0) and max(trace) == pytest.approx(190.0)


class TestSimulation:
    def test_same_seed_same_result(self) -> None:
        trace = standard_trace(50.0, 120)
        runs = [
            simulate(trace, PROFILE, spec(), PolicyController("p", spec(), PROFILE))
            for _ in range(2)
        ]
        assert runs[0] == runs[1]

    def test_light_load_meets_the_objective_at_full_width(self) -> None:
        result = simulate([20.0] * 120, PROFILE, spec(), StaticController("full", 3))
        assert result.violation_pct == 0.0
        assert result.mean_acc == pytest.approx(93.5)
        assert result.rejected_pct == 0.0

    def test_overload_is_rejected_past_the_queue_limit(self) -> None:
        result = simulate(
            [100.0] * 60, PROFILE, spec(), StaticController("full", 3), SimConfig(queue_limit=10)
        )
        assert result.rejected_pct > 30.0
        assert result.violation_pct > 90.0

    def test_policy_without_metrics_keeps_its_start_level(self) -> None:
        # No traffic: p95 is NaN and the rate 0, so the policy must hold the initial level.
        result = simulate([0.0] * 60, PROFILE, spec(), PolicyController("p", spec(), PROFILE))
        assert result.switches == 0
        assert math.isnan(result.p95_ms)


class TestComparison:
    def test_predictive_beats_both_static_baselines(self) -> None:
        trace = standard_trace(50.0, 600)
        full = simulate(trace, PROFILE, spec(), StaticController("full", 3))
        narrowest = simulate(trace, PROFILE, spec(), StaticController("narrowest", 0))
        predictive = simulate(trace, PROFILE, spec(), PolicyController("p", spec(), PROFILE))
        assert predictive.violation_pct < full.violation_pct / 4
        assert predictive.mean_acc > narrowest.mean_acc + 1.0
        assert predictive.switches >= 2
