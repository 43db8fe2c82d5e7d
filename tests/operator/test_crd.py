"""The CRD document: readable with kubectl explain, and in step with the Python mirror."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import elastiserve_operator
from elastiserve_operator.replica_spec import CHART_DEFAULTED_REPLICAS, REPLICA_DEFAULTS
from elastiserve_operator.spec import CHART_DEFAULTED, DEFAULTS

from .invalid_specs import INVALID_SPECS

CRD_PATH = Path(elastiserve_operator.__file__).parent / "crd" / "elasticmodels.yaml"


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    with CRD_PATH.open() as handle:
        loaded: dict[str, Any] = yaml.safe_load(handle)
    return loaded


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    assert isinstance(version, dict)
    return version


def _properties(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, sub in schema.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from _properties(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _properties(schema["items"], f"{path}[]")


def _schema_at(root: dict[str, Any], dotted: str) -> dict[str, Any]:
    node = root
    for key in dotted.split("."):
        node = node["properties"][key]
    return node


class TestShape:
    def test_identity(self, crd: dict[str, Any]) -> None:
        assert crd["metadata"]["name"] == "elasticmodels.elastiserve.io"
        assert crd["spec"]["group"] == "elastiserve.io"
        assert crd["spec"]["scope"] == "Namespaced"
        assert crd["spec"]["names"]["kind"] == "ElasticModel"
        assert "em" in crd["spec"]["names"]["shortNames"]
        version = _version(crd)
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        # scale: kubectl scale, an HPA or a KEDA ScaledObject may target the model.
        assert version["subresources"] == {"status": {}, "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }}

    def test_printer_columns(self, crd: dict[str, Any]) -> None:
        columns = {c["name"]: c["jsonPath"] for c in _version(crd)["additionalPrinterColumns"]}
        assert columns["Level"] == ".status.activeLevel"
        assert columns["P95 ms"] == ".status.p95Ms"
        # The objective in effect: a spec may leave it to the operator's default.
        assert columns["Objective ms"] == ".status.effectivePolicy.objective.p95Ms"
        assert columns["Ready"] == ".status.readyReplicas"
        assert columns["Age"] == ".metadata.creationTimestamp"
        assert columns["Replicas Owner"] == ".status.replicasOwner"
        wide = {c["name"] for c in _version(crd)["additionalPrinterColumns"] if c.get("priority")}
        assert "Replicas Owner" in wide  # -o wide only: the default header stays as documented

    def test_every_field_has_a_description(self, crd: dict[str, Any]) -> None:
        root = _version(crd)["schema"]["openAPIV3Schema"]
        undocumented = [
            path
            for path, schema in _properties(root, "")
            if path != ".metadata" and not schema.get("description")
        ]
        assert undocumented == []

    def test_status_conditions_are_a_map_keyed_by_type(self, crd: dict[str, Any]) -> None:
        root = _version(crd)["schema"]["openAPIV3Schema"]
        conditions = _schema_at(root, "status.conditions")
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert "observedGeneration" in conditions["items"]["properties"]


class TestInStepWithPython:
    @pytest.mark.parametrize("key", sorted(DEFAULTS))
    def test_defaults_match(self, crd: dict[str, Any], key: str) -> None:
        root = _version(crd)["schema"]["openAPIV3Schema"]
        assert _schema_at(root, f"spec.{key}")["default"] == DEFAULTS[key]

    def test_sections_with_defaults_default_to_empty_objects(self, crd: dict[str, Any]) -> None:
        # Without `default: {}` on the parent, the API server never applies nested defaults
        # when the whole section is omitted, and the CEL rules would see missing fields.
        root = _version(crd)["schema"]["openAPIV3Schema"]
        for section in ("levels", "nodePressure", "serving"):
            assert _schema_at(root, f"spec.{section}")["default"] == {}

    @pytest.mark.parametrize("key", CHART_DEFAULTED)
    def test_chart_defaulted_fields_have_no_crd_default(
        self, crd: dict[str, Any], key: str
    ) -> None:
        # Unset must stay visible in the object: the operator fills it from its settings.
        root = _version(crd)["schema"]["openAPIV3Schema"]
        assert "default" not in _schema_at(root, f"spec.{key}")
        section = key.split(".")[0]
        assert _schema_at(root, f"spec.{section}").get("default") in (None, {})

    def test_nothing_outside_the_chart_defaulted_set_lost_its_default(
        self, crd: dict[str, Any]
    ) -> None:
        assert not set(DEFAULTS) & set(CHART_DEFAULTED)
        root = _version(crd)["schema"]["openAPIV3Schema"]
        assert _schema_at(root, "spec")["required"] == ["model"]
        assert "required" not in _schema_at(root, "spec.objective")

    def test_cel_rules_on_chart_defaulted_fields_are_guarded(self, crd: dict[str, Any]) -> None:
        # An unguarded rule on a field without a default fails on every object that
        # leaves it out ("no such key"), i.e. it would refuse the minimal spec.
        root = _version(crd)["schema"]["openAPIV3Schema"]
        for rule in _schema_at(root, "spec.policy")["x-kubernetes-validations"]:
            fields = [f for f in ("panicWindowSeconds", "stableWindowSeconds",
                                  "evaluationIntervalSeconds", "panicThreshold", "tolerance",
                                  "settleSeconds", "widenStabilizationSeconds",
                                  "staleAfterSeconds") if f"self.{f}" in rule["rule"]]
            assert fields and all(f"!has(self.{f})" in rule["rule"] for f in fields), rule

    def test_the_batch_delay_rule_is_guarded(self, crd: dict[str, Any]) -> None:
        # serving.maxBatchDelayMs is chart-defaulted now: a CR may leave it out.
        root = _version(crd)["schema"]["openAPIV3Schema"]
        (rule,) = [r["rule"] for r in _schema_at(root, "spec")["x-kubernetes-validations"]
                   if "maxBatchDelayMs" in r["rule"]]
        assert "!has(self.serving.maxBatchDelayMs)" in rule
        assert "!has(self.objective.p95Ms)" in rule

    def test_the_status_says_where_the_inference_key_is(self, crd: dict[str, Any]) -> None:
        root = _version(crd)["schema"]["openAPIV3Schema"]
        assert _schema_at(root, "status.inferenceKeySecret")["type"] == "string"
        columns = {c["name"]: c for c in _version(crd)["additionalPrinterColumns"]}
        assert columns["Key Secret"]["jsonPath"] == ".status.inferenceKeySecret"
        assert columns["Key Secret"]["priority"] == 1  # -o wide only

    def test_the_scale_subresource_paths_exist(self, crd: dict[str, Any]) -> None:
        root = _version(crd)["schema"]["openAPIV3Schema"]
        scale = _version(crd)["subresources"]["scale"]
        for key, kind in (("specReplicasPath", "integer"), ("statusReplicasPath", "integer"),
                          ("labelSelectorPath", "string")):
            assert _schema_at(root, scale[key].lstrip("."))["type"] == kind

    @pytest.mark.parametrize("key", sorted(REPLICA_DEFAULTS))
    def test_replica_policy_defaults_match(self, crd: dict[str, Any], key: str) -> None:
        root = _version(crd)["schema"]["openAPIV3Schema"]
        field = _schema_at(root, f"spec.policy.replicas.{key}")
        if key in CHART_DEFAULTED_REPLICAS:
            assert "default" not in field  # the operator's (the chart's) default
        else:
            assert field["default"] == REPLICA_DEFAULTS[key]

    def test_replica_policy_fields_are_the_pythons(self, crd: dict[str, Any]) -> None:
        root = _version(crd)["schema"]["openAPIV3Schema"]
        fields = set(_schema_at(root, "spec.policy.replicas")["properties"])
        assert fields == set(REPLICA_DEFAULTS) | {"max"}
        assert "default" not in _schema_at(root, "spec.policy.replicas.max")
        # No `default: {}` on the section: a model without it has no replica policy at all.
        assert "default" not in _schema_at(root, "spec.policy.replicas")

    @pytest.mark.parametrize(
        "case", [c for c in INVALID_SPECS if c.kind == "cel"], ids=lambda c: c.name
    )
    def test_cel_messages_exist(self, case: Any) -> None:
        assert case.message in CRD_PATH.read_text()
