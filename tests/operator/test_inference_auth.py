"""``spec.serving.tokenAuthorization`` and the ``InferenceAuth`` condition (pure, no cluster).

TorchServe's bearer keys are generated per server: with several replicas behind one Service a
client's key works on one pod only. The operator must say so on the CR rather than leave users
to find out from refused requests, and must pass ``Disabled`` on to the pods.
"""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.children import Owner, build_deployment
from elastiserve_operator.settings import OperatorSettings
from elastiserve_operator.spec import SpecError, parse_spec
from elastiserve_operator.status import reconcile_patch


def spec(replicas: int = 1, **serving: Any) -> dict[str, Any]:
    return {"model": {"levelCount": 2, "source": {"localPath": "/m/m.mar"}},
            "objective": {"p95Ms": 100}, "replicas": replicas, "serving": serving}


def auth_condition(raw: dict[str, Any]) -> dict[str, Any]:
    patch = reconcile_patch({}, 3, parse_spec(raw), None, None, 1000.0)
    return next(c for c in patch["conditions"] if c["type"] == "InferenceAuth")


def serving_args(raw: dict[str, Any]) -> list[str]:
    pod = build_deployment(Owner("m", "ns", "u"), parse_spec(raw), OperatorSettings())
    return [str(a) for a in pod["spec"]["template"]["spec"]["containers"][0]["args"]]


def test_one_replica_with_its_own_key_is_fine() -> None:
    condition = auth_condition(spec())
    assert (condition["status"], condition["reason"]) == ("True", "PodKey")
    assert condition["observedGeneration"] == 3
    assert "--disable-token-auth" not in serving_args(spec())


def test_several_replicas_with_per_pod_keys_are_reported_with_the_fix() -> None:
    condition = auth_condition(spec(replicas=3))
    assert (condition["status"], condition["reason"]) == ("False", "PerPodKeys")
    assert "3 replicas" in condition["message"]
    assert "tokenAuthorization: Disabled" in condition["message"]


def test_disabled_reaches_the_pod_and_the_condition_says_who_authenticates() -> None:
    raw = spec(replicas=3, tokenAuthorization="Disabled")
    condition = auth_condition(raw)
    assert (condition["status"], condition["reason"]) == ("True", "Delegated")
    assert "--disable-token-auth" in serving_args(raw)


@pytest.mark.parametrize("value", ["disabled", "Off", True, 0])
def test_other_values_are_refused_with_the_choices(value: object) -> None:
    with pytest.raises(SpecError, match="must be Enabled or Disabled"):
        parse_spec(spec(tokenAuthorization=value))


def test_invalid_spec_has_no_auth_condition() -> None:
    patch = reconcile_patch({}, 1, None, None, "spec.x: bad", 1000.0)
    assert "InferenceAuth" not in {c["type"] for c in patch["conditions"]}
