"""The typed spec: defaults like the CRD, refuses what the CRD refuses, names the field."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.spec import (
    LocalPathSource,
    PolicyMode,
    PvcSource,
    SpecError,
    UrlSource,
    check_update,
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
