"""spec.policy.loops (which loops choose the level), the workers' bounds in the status, and
what the workers served (pure pieces; the CRD's schema is checked by test_crd.py)."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from elastiserve_operator.metrics import OperatorMetrics
from elastiserve_operator.observation import NodePressure, Observation
from elastiserve_operator.policy import Cause, decide
from elastiserve_operator.policy_state import PolicyState
from elastiserve_operator.served_share import (
    SERVED_SHARE_QUERY,
    read_served_shares,
    served_shares,
    share_for_status,
)
from elastiserve_operator.signals.prometheus import LabelledValue, PrometheusError
from elastiserve_operator.spec import Loops, SpecError, parse_spec
from elastiserve_operator.status import effective_policy, evaluation_patch, worker_bounds

NOW = 10_000.0


def make_spec(policy: dict[str, Any] | None = None, **levels: int) -> Any:
    raw: dict[str, Any] = {
        "model": {"levelCount": 4, "source": {"localPath": "/m.mar"}},
        "objective": {"p95Ms": 150},
        "levels": {"minLevel": 1, **levels},
    }
    if policy is not None:
        raw["policy"] = policy
    return parse_spec(raw)


class TestLoopsSpec:
    @pytest.mark.parametrize(
        ("raw", "loops"),
        [(None, Loops.BOTH), ("Both", Loops.BOTH), ("Operator", Loops.OPERATOR),
         ("Worker", Loops.WORKER)],
    )
    def test_parsed_with_both_the_default(self, raw: str | None, loops: Loops) -> None:
        spec = make_spec({} if raw is None else {"loops": raw})
        assert spec.policy.loops is loops

    @pytest.mark.parametrize("raw", ["both", "", 1, None, "Workers"])
    def test_anything_else_is_refused_naming_the_field(self, raw: object) -> None:
        with pytest.raises(SpecError) as info:
            make_spec({"loops": raw})
        assert info.value.path == "spec.policy.loops"
        assert "Both, Operator, Worker" in info.value.message

    def test_effective_policy_reports_the_loops(self) -> None:
        assert effective_policy(make_spec({"loops": "Worker"}))["policy"]["loops"] == "Worker"


class TestWorkerBounds:
    @pytest.mark.parametrize(
        ("loops", "bounds"),
        [("Both", {"floor": 1, "objectiveMs": 150}), ("Worker", {"floor": 1, "objectiveMs": 150}),
         ("Operator", None)],
    )
    def test_floor_is_min_level_and_none_for_operator_only(
        self, loops: str, bounds: dict[str, int] | None
    ) -> None:
        assert worker_bounds(make_spec({"loops": loops})) == bounds


def state(level: int, changed_ago: float | None = None) -> PolicyState:
    return PolicyState(level=level, started_at=NOW - 3600,
                       last_change_at=None if changed_ago is None else NOW - changed_ago)


def observe(p95: float | None, node: NodePressure | None = None) -> Observation:
    return Observation(p95, 50.0, NOW, node)


WORKER = {"loops": "Worker", "stableWindowSeconds": 60}


@pytest.mark.parametrize(
    ("case", "st", "observation", "level", "cause"),
    [
        ("a panic p95 does not move the ceiling", state(3), observe(0.9), 3, Cause.WORKER_LOOP),
        ("no metrics needed", state(3), observe(None), 3, Cause.WORKER_LOOP),
        ("NaN p95 is not a reason to hold", state(3), observe(math.nan), 3, Cause.WORKER_LOOP),
        ("node pressure lowers the ceiling", state(3), observe(None, NodePressure(0.95)), 2,
         Cause.NODE_PRESSURE),
        ("one step per stable window", state(2, changed_ago=30),
         observe(None, NodePressure(0.95)), 2, Cause.NODE_PRESSURE_HOLD),
        ("never below minLevel", state(1, changed_ago=600), observe(None, NodePressure(0.95)),
         1, Cause.NODE_PRESSURE_HOLD),
        ("cool again: back to maxLevel after a window", state(1, changed_ago=61), observe(0.9),
         3, Cause.WORKER_LOOP),
        ("cool, but within the window: hold", state(1, changed_ago=30), observe(0.02), 1,
         Cause.WORKER_LOOP),
        ("a ceiling above maxLevel is clamped first", state(3), observe(0.02), 2, Cause.CLAMPED),
    ],
)
def test_worker_loops_decisions(
    case: str, st: PolicyState, observation: Observation, level: int, cause: Cause
) -> None:
    spec = make_spec(WORKER, maxLevel=2) if cause is Cause.CLAMPED else make_spec(WORKER)
    decision = decide(observation, spec, (), st, NOW)
    assert (decision.level, decision.cause) == (level, cause), (case, decision.reason)
    assert decision.metrics_available and decision.reason
    assert decision.state.level == decision.level


@pytest.mark.parametrize("loops", ["Both", "Operator"])
def test_both_and_operator_keep_the_operators_latency_rules(loops: str) -> None:
    """Missing metrics still hold (and say so) when the operator's loop sets the level."""
    decision = decide(observe(None), make_spec({"loops": loops}), (), state(3), NOW)
    assert (decision.level, decision.cause) == (3, Cause.METRICS_MISSING)
    assert not decision.metrics_available


def series(level: str | None, value: float) -> LabelledValue:
    labels = {} if level is None else {"ElasticLevel": level}
    return LabelledValue(labels, value, NOW)


@pytest.mark.parametrize(
    ("values", "shares"),
    [
        ([], {}),
        ([series("L0", 0.0), series("L2", 0.0)], {}),  # nothing answered is no share
        ([series("L2", 10.0)], {"L2": 1.0}),
        ([series("L0", 30.0), series("L2", 10.0)], {"L0": 0.75, "L2": 0.25}),
        ([series("L0", 1.0), series("L0", 1.0), series("L1", 2.0)], {"L0": 0.5, "L1": 0.5}),
        ([series("L0", 1.0), series(None, 5.0), series("", 5.0)], {"L0": 1.0}),
        ([series("L0", 1.0), series("L1", -3.0), series("L2", math.inf)], {"L0": 1.0}),
        ([series("L0", 1.0), series("x" * 64, 5.0), series("a\nb", 5.0)], {"L0": 1.0}),
        ([series("L0", 1.0), series("L1", 2.0)], {"L0": 0.333, "L1": 0.667}),
    ],
)
def test_served_shares(values: list[LabelledValue], shares: dict[str, float]) -> None:
    assert served_shares(values) == shares


class FakeVectors:
    def __init__(self, answer: tuple[LabelledValue, ...] | Exception) -> None:
        self.answer = answer
        self.queries: list[str] = []

    async def query_vector(self, promql: str) -> tuple[LabelledValue, ...]:
        self.queries.append(promql)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_read_served_shares_runs_the_grouped_query() -> None:
    source = FakeVectors((series("L0", 3.0), series("L1", 1.0)))
    assert asyncio.run(read_served_shares(source, "q")) == {"L0": 0.75, "L1": 0.25}
    assert source.queries == ["q"]
    assert "sum by (ElasticLevel)" in SERVED_SHARE_QUERY
    assert "elastiserve_request_latency_seconds_count" in SERVED_SHARE_QUERY


@pytest.mark.parametrize("error", [PrometheusError("timeout"), RuntimeError("bug")])
def test_a_failed_query_is_no_share(error: Exception) -> None:
    assert asyncio.run(read_served_shares(FakeVectors(error), "q")) == {}
    assert asyncio.run(read_served_shares(None, "q")) == {}


def test_evaluation_patch_carries_the_share_only_when_known() -> None:
    spec = make_spec()
    decision = decide(observe(0.02), spec, (), state(3), NOW)
    with_share = evaluation_patch({}, 1, decision, observe(0.02), (), NOW, {"L0": 1.0})
    without = evaluation_patch({}, 1, decision, observe(0.02), (), NOW, {})
    assert with_share["servedShare"] == {"L0": 1.0}
    assert "servedShare" not in without


def test_served_share_gauge_drops_levels_no_longer_served() -> None:
    metrics = OperatorMetrics()
    metrics.set_served_share("ns", "m", {"L0": 0.25, "L2": 0.75})
    metrics.set_served_share("ns", "m", {"L2": 1.0})

    def value(level: str) -> float | None:
        return metrics.registry.get_sample_value(
            "elastiserve_operator_served_share", {"namespace": "ns", "name": "m", "level": level})

    assert value("L0") is None and value("L2") == 1.0
    metrics.forget("ns", "m")
    assert value("L2") is None


@pytest.mark.parametrize(
    ("previous", "fresh", "written"),
    [
        (None, {"L0": 0.5, "L2": 0.5}, {"L0": 0.5, "L2": 0.5}),
        ({"L0": 0.5, "L2": 0.5}, {"L0": 0.52, "L2": 0.48}, {"L0": 0.5, "L2": 0.5}),  # wobble
        ({"L0": 0.5, "L2": 0.5}, {"L0": 0.56, "L2": 0.44}, {"L0": 0.56, "L2": 0.44}),
        ({"L0": 0.5, "L2": 0.5}, {"L0": 0.5, "L1": 0.5}, {"L0": 0.5, "L1": 0.5}),  # new level
        ({"L0": 0.5, "L2": 0.5}, {}, {}),  # nothing answered: the field goes
        ({"L0": "x", "L2": 0.5}, {"L0": 0.5, "L2": 0.5}, {"L0": 0.5, "L2": 0.5}),
        ({"L0": True, "L2": 0.5}, {"L0": 1.0, "L2": 0.5}, {"L0": 1.0, "L2": 0.5}),
        ("garbage", {"L2": 1.0}, {"L2": 1.0}),
    ],
)
def test_status_keeps_its_share_until_it_moves_five_points(
    previous: Any, fresh: dict[str, float], written: dict[str, float]
) -> None:
    assert share_for_status(previous, fresh) == written
