"""The typed spec: defaults like the CRD, refuses what the CRD refuses, names the field."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.replica_spec import replica_policy_from_spec
from elastiserve_operator.spec import (
    CHART_DEFAULTED,
    LocalPathSource,
    NodePressureThresholds,
    PolicyMode,
    PolicySettings,
    PvcSource,
    SpecDefaults,
    SpecError,
    UrlSource,
    check_update,
    parse_defaults,
    parse_spec,
)

from .invalid_specs import INVALID_SPECS, InvalidSpec, valid_spec


class TestDefaults:
    def test_minimal_spec_gets_every_default(self) -> None:
        spec = parse_spec(valid_spec())
        assert spec.levels.min_level == 0
        assert spec.levels.max_level == 3
        assert spec.levels.initial_level == 3
        assert spec.replicas == 1
        assert spec.policy.mode is PolicyMode.PREDICTIVE
        assert (spec.policy.stable_window_s, spec.policy.panic_window_s) == (60, 6)
        assert spec.policy.widen_stabilization_s == 300
        assert spec.policy.tolerance == pytest.approx(0.1)
        assert spec.node_pressure.enabled is True
        assert spec.serving.workers == 1
        assert spec.allow_request_pinning is False
        assert spec.objective.p95_s == pytest.approx(0.1)

    def test_max_level_defaults_to_full_model_and_initial_to_max(self) -> None:
        raw = valid_spec()
        raw["levels"] = {"minLevel": 1, "maxLevel": 2}
        levels = parse_spec(raw).levels
        assert (levels.min_level, levels.max_level, levels.initial_level) == (1, 2, 2)

    def test_integers_are_accepted_for_number_fields(self) -> None:
        raw = valid_spec()
        raw["policy"] = {"panicThreshold": 3}
        assert parse_spec(raw).policy.panic_threshold == 3.0


CLUSTER = SpecDefaults(
    objective_p95_ms=123,
    latency_query="latency-q",
    request_rate_query="rate-q",
    policy=PolicySettings(mode=PolicyMode.STEP, stable_window_s=120, panic_window_s=10,
                          evaluation_interval_s=2, tolerance=0.2),
    node_pressure=NodePressureThresholds(cpu_fraction=0.75),
)


class TestChartDefaults:
    """Fields the CRD leaves unset take the operator's defaults; the spec's own win."""

    def test_left_out_fields_take_the_defaults_and_say_so(self) -> None:
        raw = valid_spec()
        del raw["objective"]
        spec = parse_spec(raw, CLUSTER)
        assert spec.objective.p95_ms == 123
        assert spec.objective.latency_query == "latency-q"
        assert spec.objective.request_rate_query == "rate-q"
        assert spec.policy == CLUSTER.policy
        assert spec.node_pressure.cpu_fraction == 0.75
        assert spec.defaulted == frozenset(CHART_DEFAULTED)

    def test_spec_values_win_field_by_field(self) -> None:
        raw = valid_spec()
        raw["objective"] = {"p95Ms": 80, "latencyQuery": "mine"}
        raw["policy"] = {"mode": "Predictive", "panicWindowSeconds": 20}
        raw["nodePressure"] = {"cpuFraction": 0.5}
        spec = parse_spec(raw, CLUSTER)
        assert (spec.objective.p95_ms, spec.objective.latency_query) == (80, "mine")
        assert spec.objective.request_rate_query == "rate-q"
        assert spec.policy.mode is PolicyMode.PREDICTIVE and spec.policy.panic_window_s == 20
        assert spec.policy.stable_window_s == 120  # the cluster's, not the built-in 60
        assert spec.node_pressure.cpu_fraction == 0.5
        for path in ("objective.p95Ms", "objective.latencyQuery", "policy.mode",
                     "policy.panicWindowSeconds", "nodePressure.cpuFraction"):
            assert path not in spec.defaulted
        assert {"objective.requestRateQuery", "policy.stableWindowSeconds"} <= spec.defaulted

    def test_without_defaults_the_builtin_ones_equal_to_the_charts_apply(self) -> None:
        raw = valid_spec()
        del raw["objective"]
        spec = parse_spec(raw)
        assert spec.objective.p95_ms == 100 and spec.policy == PolicySettings()
        assert spec.objective.latency_query is None  # the caller's own query

    def test_no_default_objective_makes_it_required(self) -> None:
        raw = valid_spec()
        del raw["objective"]
        with pytest.raises(SpecError, match="no default objective") as caught:
            parse_spec(raw, SpecDefaults(objective_p95_ms=None))
        assert caught.value.path == "spec.objective.p95Ms"

    @pytest.mark.parametrize(
        ("policy", "field", "says"),
        [
            ({"panicWindowSeconds": 150}, "spec.policy.panicWindowSeconds",
             "stableWindowSeconds=120 from the operator's defaults"),
            ({"stableWindowSeconds": 8}, "spec.policy.panicWindowSeconds",
             "panicWindowSeconds=10 from the operator's defaults"),
            ({"panicThreshold": 1.15}, "spec.policy.panicThreshold",
             "tolerance=0.2 from the operator's defaults"),
            ({"staleAfterSeconds": 1}, "spec.policy.staleAfterSeconds",
             "evaluationIntervalSeconds=2 from the operator's defaults"),
        ],
    )
    def test_a_spec_value_that_breaks_a_relation_with_a_default_is_refused(
        self, policy: dict[str, Any], field: str, says: str
    ) -> None:
        # CEL sees only one side of each pair here and lets the object in; the operator
        # must refuse it (reported as Degraded/InvalidSpec), not clamp it.
        raw = valid_spec()
        raw["policy"] = policy
        with pytest.raises(SpecError, match=says) as caught:
            parse_spec(raw, CLUSTER)
        assert caught.value.path == field

    def test_batch_delay_against_a_default_objective(self) -> None:
        raw = valid_spec()
        del raw["objective"]
        raw["serving"] = {"maxBatchDelayMs": 150}
        with pytest.raises(SpecError, match="p95Ms=123 from the operator's defaults"):
            parse_spec(raw, CLUSTER)
        assert parse_spec(raw, SpecDefaults(objective_p95_ms=200)).serving.max_batch_delay_ms == 150

    def test_defaults_are_checked_with_the_specs_rules(self) -> None:
        got = parse_defaults({"objective": {"p95Ms": 250}, "policy": {"mode": "Step"},
                              "nodePressure": {"gpuLoadPercent": 80}})
        assert got.objective_p95_ms == 250 and got.policy.mode is PolicyMode.STEP
        assert got.node_pressure.gpu_load_percent == 80.0
        assert parse_defaults({}) == SpecDefaults()
        with pytest.raises(SpecError) as caught:
            parse_defaults({"policy": {"settleSeconds": 400}})
        assert caught.value.path == "policy.settleSeconds"
        with pytest.raises(SpecError) as caught:
            parse_defaults({"nodePressure": {"cpuFraction": 1.5}})
        assert caught.value.path == "nodePressure.cpuFraction"


class TestSources:
    @pytest.mark.parametrize(
        ("source", "expected"),
        [
            ({"localPath": "/m.mar"}, LocalPathSource("/m.mar")),
            ({"pvc": {"claimName": "models", "path": "a/m.mar"}}, PvcSource("models", "a/m.mar")),
            (
                {"url": {"url": "https://host/m.mar", "sha256": "0" * 64}},
                UrlSource("https://host/m.mar", "0" * 64),
            ),
        ],
    )
    def test_each_source_kind_parses(self, source: dict[str, Any], expected: object) -> None:
        raw = valid_spec()
        raw["model"]["source"] = source
        assert parse_spec(raw).model.source == expected


class TestFullSpec:
    def test_every_section_is_read(self) -> None:
        raw = valid_spec()
        raw.update(
            replicas=3,
            allowRequestPinning=True,
            levels={"minLevel": 1, "maxLevel": 3, "initialLevel": 2},
            objective={"p95Ms": 250, "latencyQuery": "q1", "requestRateQuery": "q2"},
            policy={"mode": "Step", "headroom": 0.3, "settleSeconds": 10},
            nodePressure={"enabled": False, "temperatureCelsius": 70},
            serving={
                "workers": 4,
                "batchSize": 8,
                "maxBatchDelayMs": 20,
                "image": "elastiserve/serve:dev",
                "resources": {"limits": {"cpu": "2", "memory": "1Gi"}},
                "nodeSelector": {"kubernetes.io/arch": "arm64"},
                "tolerations": [{"key": "jetson", "operator": "Exists"}],
                "runtimeClassName": "nvidia",
            },
        )
        raw["model"]["profile"] = [
            {"name": f"w{p}", "serviceTimeMs": 20.0 / f, "accuracy": a}
            for p, f, a in ((25, 4, 0.905), (50, 2.4, 0.923), (75, 1.5, 0.931), (100, 1, 0.935))
        ]
        spec = parse_spec(raw)
        assert spec.replicas == 3 and spec.allow_request_pinning
        assert spec.objective.latency_query == "q1"
        assert spec.policy.mode is PolicyMode.STEP
        assert spec.node_pressure.temperature_c == 70.0
        assert spec.serving.resources == {"limits": {"cpu": "2", "memory": "1Gi"}}
        assert spec.serving.node_selector == {"kubernetes.io/arch": "arm64"}
        assert spec.serving.runtime_class_name == "nvidia"
        assert [e.name for e in spec.model.profile] == ["w25", "w50", "w75", "w100"]
        assert spec.model.profile[3].service_time_ms == pytest.approx(20.0)


class TestRefusals:
    @pytest.mark.parametrize("case", INVALID_SPECS, ids=lambda c: c.name)
    def test_python_mirror_refuses_what_the_crd_refuses(self, case: InvalidSpec) -> None:
        with pytest.raises(SpecError) as caught:
            if case.old is None:
                parse_spec(case.spec)
                replica_policy_from_spec(case.spec)  # spec.policy.replicas: its own mirror
            else:
                check_update(case.old, case.spec)
        assert caught.value.path == case.field
        if case.kind == "cel":  # our own wording: both layers say the same thing
            assert case.message in str(caught.value)

    def test_valid_base_of_the_table_is_accepted(self) -> None:
        parse_spec(valid_spec())

    @pytest.mark.parametrize(
        ("raw", "path"),
        [
            ("not a mapping", "spec"),
            ({"objective": {"p95Ms": 100}}, "spec.model"),
            ({**valid_spec(), "replicas": "3"}, "spec.replicas"),
            ({**valid_spec(), "replicas": True}, "spec.replicas"),
            ({**valid_spec(), "allowRequestPinning": "yes"}, "spec.allowRequestPinning"),
            ({**valid_spec(), "policy": {"tolerance": float("nan")}}, "spec.policy.tolerance"),
            ({**valid_spec(), "serving": {"nodeSelector": {"a": 1}}}, "spec.serving.nodeSelector"),
            ({**valid_spec(), "serving": {"tolerations": "x"}}, "spec.serving.tolerations"),
        ],
    )
    def test_wrong_types_name_the_field(self, raw: object, path: str) -> None:
        with pytest.raises(SpecError) as caught:
            parse_spec(raw)
        assert caught.value.path == path


class TestUpdates:
    def test_source_may_change(self) -> None:
        new = valid_spec()
        new["model"]["source"] = {"pvc": {"claimName": "models", "path": "v2.mar"}}
        assert check_update(valid_spec(), new).model.source == PvcSource("models", "v2.mar")
