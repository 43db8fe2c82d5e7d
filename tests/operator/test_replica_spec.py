"""``spec.policy.replicas``: defaults, the accepted shapes, and refusals that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.replica_spec import (
    CHART_DEFAULTED_REPLICAS,
    MAX_REPLICAS,
    REPLICA_DEFAULTS,
    ReplicaPolicy,
    parse_replica_policy,
    replica_policy_from_spec,
)
from elastiserve_operator.spec import SpecDefaults, SpecError, parse_spec


class TestDefaults:
    def test_absent_is_off(self) -> None:
        assert parse_replica_policy(None) == ReplicaPolicy()
        assert ReplicaPolicy().enabled is False

    def test_enabled_with_max_takes_every_default(self) -> None:
        policy = parse_replica_policy({"enabled": True, "max": 12})
        assert policy == ReplicaPolicy(enabled=True, min_replicas=1, max_replicas=12,
                                       scale_up_stabilization_s=0,
                                       scale_down_stabilization_s=300,
                                       target_share_of_narrowest=0.8, tolerance=0.1,
                                       pod_start_s=60)

    def test_defaults_table_matches_the_dataclass(self) -> None:
        policy = ReplicaPolicy()
        assert {
            "enabled": policy.enabled,
            "min": policy.min_replicas,
            "scaleUpStabilizationSeconds": policy.scale_up_stabilization_s,
            "scaleDownStabilizationSeconds": policy.scale_down_stabilization_s,
            "targetShareOfNarrowest": policy.target_share_of_narrowest,
            "tolerance": policy.tolerance,
            "widthShareOfObjective": policy.width_share_of_objective,
            "guardShareOfObjective": policy.guard_share_of_objective,
            "podStartSeconds": policy.pod_start_s,
        } == REPLICA_DEFAULTS

    def test_every_field(self) -> None:
        policy = parse_replica_policy({
            "enabled": True, "min": 3, "max": 40, "scaleUpStabilizationSeconds": 30,
            "scaleDownStabilizationSeconds": 600, "targetShareOfNarrowest": 0.7,
            "tolerance": 0.05, "podStartSeconds": 90, "widthShareOfObjective": 0.85,
            "guardShareOfObjective": 1,
        })
        assert policy == ReplicaPolicy(True, 3, 40, 30, 600, 0.7, 0.05, 90,
                                       pod_start_defaulted=False,
                                       width_share_of_objective=0.85,
                                       guard_share_of_objective=1.0)

    def test_the_pod_start_time_defaults_to_the_operators(self) -> None:
        """``podStartSeconds`` is chart-defaulted: the CRD has no default for it."""
        assert CHART_DEFAULTED_REPLICAS == ("podStartSeconds",)
        policy = parse_replica_policy({"enabled": True, "max": 4}, pod_start_s=150)
        assert (policy.pod_start_s, policy.pod_start_defaulted) == (150, True)
        own = parse_replica_policy({"enabled": True, "max": 4, "podStartSeconds": 20},
                                   pod_start_s=150)
        assert (own.pod_start_s, own.pod_start_defaulted) == (20, False)
        assert parse_replica_policy(None, pod_start_s=150).pod_start_s == 150
        spec = {"policy": {"replicas": {"enabled": True, "max": 4}}}
        assert replica_policy_from_spec(spec, SpecDefaults(pod_start_s=75)).pod_start_s == 75
        assert replica_policy_from_spec({}, SpecDefaults(pod_start_s=75)).pod_start_s == 75

    def test_disabled_may_leave_max_out(self) -> None:
        assert parse_replica_policy({"min": 2}).max_replicas == MAX_REPLICAS

    def test_clamp(self) -> None:
        policy = ReplicaPolicy(enabled=True, min_replicas=2, max_replicas=5)
        assert [policy.clamp(n) for n in (0, 2, 4, 9)] == [2, 2, 4, 5]


def _refused(raw: Any) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_replica_policy(raw)
    return caught.value


@pytest.mark.parametrize(
    ("raw", "path", "words"),
    [
        ({"enabled": True}, "spec.policy.replicas.max", "required when enabled"),
        ({"enabled": True, "max": 0}, "spec.policy.replicas.max", ">= 1"),
        ({"enabled": True, "max": 1001}, "spec.policy.replicas.max", "<= 1000"),
        ({"enabled": True, "min": 0, "max": 3}, "spec.policy.replicas.min", ">= 1"),
        ({"enabled": True, "min": 5, "max": 3}, "spec.policy.replicas.min", "min must be <= max"),
        ({"enabled": "yes", "max": 3}, "spec.policy.replicas.enabled", "true or false"),
        ({"enabled": True, "max": 3.5}, "spec.policy.replicas.max", "integer"),
        ({"enabled": True, "max": True}, "spec.policy.replicas.max", "integer"),
        ({"max": 3, "scaleUpStabilizationSeconds": -1},
         "spec.policy.replicas.scaleUpStabilizationSeconds", ">= 0"),
        ({"max": 3, "scaleDownStabilizationSeconds": 3601},
         "spec.policy.replicas.scaleDownStabilizationSeconds", "<= 3600"),
        ({"max": 3, "targetShareOfNarrowest": 0},
         "spec.policy.replicas.targetShareOfNarrowest", "> 0"),
        ({"max": 3, "targetShareOfNarrowest": 1.2},
         "spec.policy.replicas.targetShareOfNarrowest", "<= 1"),
        ({"max": 3, "targetShareOfNarrowest": float("nan")},
         "spec.policy.replicas.targetShareOfNarrowest", "finite"),
        ({"max": 3, "tolerance": 0.6}, "spec.policy.replicas.tolerance", "<= 0.5"),
        ({"max": 3, "widthShareOfObjective": 0},
         "spec.policy.replicas.widthShareOfObjective", "> 0"),
        ({"max": 3, "widthShareOfObjective": 1.1},
         "spec.policy.replicas.widthShareOfObjective", "<= 1"),
        ({"max": 3, "guardShareOfObjective": -0.5},
         "spec.policy.replicas.guardShareOfObjective", "> 0"),
        ({"max": 3, "guardShareOfObjective": 1.5},
         "spec.policy.replicas.guardShareOfObjective", "<= 1"),
        ({"max": 3, "guardShareOfObjective": "high"},
         "spec.policy.replicas.guardShareOfObjective", "number"),
        ({"max": 3, "tolerance": "10%"}, "spec.policy.replicas.tolerance", "number"),
        ({"max": 3, "podStartSeconds": 0}, "spec.policy.replicas.podStartSeconds", ">= 1"),
        ({"max": 3, "maxReplicas": 4}, "spec.policy.replicas.maxReplicas", "unknown field"),
        ([1, 2], "spec.policy.replicas", "must be an object"),
    ],
)
def test_bad_values_are_refused_with_their_path(raw: Any, path: str, words: str) -> None:
    error = _refused(raw)
    assert error.path == path
    assert words in str(error)


class TestFromSpec:
    def test_reads_policy_replicas(self) -> None:
        spec = {"policy": {"mode": "Predictive", "replicas": {"enabled": True, "max": 8}}}
        assert replica_policy_from_spec(spec).max_replicas == 8

    @pytest.mark.parametrize("spec", [{}, {"policy": {}}, {"policy": {"mode": "Step"}}])
    def test_absent_is_off(self, spec: dict[str, Any]) -> None:
        assert replica_policy_from_spec(spec) == ReplicaPolicy()

    @pytest.mark.parametrize(("spec", "path"), [
        ("x", "spec"), ({"policy": 3}, "spec.policy"),
        ({"policy": {"replicas": {"enabled": True}}}, "spec.policy.replicas.max"),
    ])
    def test_bad_shapes(self, spec: Any, path: str) -> None:
        with pytest.raises(SpecError) as caught:
            replica_policy_from_spec(spec)
        assert caught.value.path == path

    def test_level_spec_parsing_ignores_the_section(self) -> None:
        """``spec.py`` reads only its own fields, so the section can be added to the CRD
        without touching the level policy's mirror."""
        raw = {"model": {"levelCount": 4, "source": {"localPath": "/m.mar"}},
               "objective": {"p95Ms": 100},
               "policy": {"replicas": {"enabled": True, "min": 2, "max": 10}}}
        assert parse_spec(raw).policy.mode.value == "Predictive"
        assert replica_policy_from_spec(raw).min_replicas == 2
