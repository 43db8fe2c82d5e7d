"""One inference key per ``ElasticModel``: its Secret, the pods' gateway, the status (pure).

TorchServe generates its bearer keys per server, so replicas behind one Service could not be
called with one key, and its key check also refused the kubelet's probe. The pods now run a
gateway that checks the one key in the model's Secret; these tests read the objects the
operator builds, and the status it writes, without a cluster.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest

from elastiserve_operator.children import (
    INFERENCE_KEY_FILE,
    Owner,
    build_children,
    build_deployment,
    build_key_secret,
    names_for,
)
from elastiserve_operator.settings import OperatorSettings
from elastiserve_operator.spec import SpecError, parse_spec
from elastiserve_operator.status import RECONCILE_OPTIONAL, reconcile_patch, status_holds

OWNER = Owner("m", "ns", "u")
SECRET = names_for("m").key_secret


def spec(replicas: int = 1, **serving: Any) -> dict[str, Any]:
    return {"model": {"levelCount": 2, "source": {"localPath": "/m/m.mar"}},
            "objective": {"p95Ms": 100}, "replicas": replicas, "serving": serving}


def patch_for(raw: dict[str, Any]) -> dict[str, Any]:
    return reconcile_patch({}, 3, parse_spec(raw), None, None, 1000.0, key_secret=SECRET)


def auth_condition(raw: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in patch_for(raw)["conditions"] if c["type"] == "InferenceAuth")


def pod(raw: dict[str, Any]) -> dict[str, Any]:
    deployment = build_deployment(OWNER, parse_spec(raw), OperatorSettings())
    template: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return template


def serving_container(raw: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod(raw)["containers"][0]
    assert container["name"] == "torchserve"
    return container


def test_the_secret_is_named_after_the_model_owned_by_it_and_holds_the_key() -> None:
    secret = build_key_secret(OWNER, "s3cr3t")
    assert secret["metadata"]["name"] == SECRET == "m-inference-key"
    assert secret["metadata"]["namespace"] == "ns"
    (ref,) = secret["metadata"]["ownerReferences"]
    assert ref["uid"] == "u" and ref["controller"] is True and ref["kind"] == "ElasticModel"
    assert base64.b64decode(secret["data"]["key"]) == b"s3cr3t"
    assert "immutable" not in secret  # rotating the key is editing the Secret
    assert names_for("x" * 80).key_secret.endswith("-inference-key")
    assert len(names_for("x" * 80).key_secret) <= 63


def test_the_secret_is_not_among_the_applied_children() -> None:
    """An apply would send a fresh key on every reconcile and replace the one clients hold."""
    kinds = {c["kind"] for c in build_children(OWNER, parse_spec(spec()), OperatorSettings())}
    assert "Secret" not in kinds


@pytest.mark.parametrize("replicas", [1, 3])
def test_every_replica_mounts_the_key_and_the_gateway_checks_it(replicas: int) -> None:
    container = serving_container(spec(replicas))
    args = container["args"]
    assert args[args.index("--key-file") + 1] == INFERENCE_KEY_FILE
    assert "--disable-token-auth" not in args and "--gateway" not in args
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "inference-key"]
    assert mount["readOnly"] is True
    assert INFERENCE_KEY_FILE.startswith(mount["mountPath"] + "/")
    (volume,) = [v for v in pod(spec(replicas))["volumes"] if v["name"] == "inference-key"]
    assert volume["secret"]["secretName"] == SECRET
    assert volume["secret"]["items"] == [{"key": "key", "path": "key"}]
    assert volume["secret"]["defaultMode"] == 0o440


def test_only_the_serving_container_sees_the_key() -> None:
    containers = pod(spec())["containers"]
    agent = next(c for c in containers if c["name"] == "level-agent")
    assert "inference-key" not in {m["name"] for m in agent["volumeMounts"]}


def test_probes_use_the_gateways_routes_that_need_no_key() -> None:
    container = serving_container(spec())
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready",
                                                      "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}


def test_one_shared_key_is_reported_with_where_it_is() -> None:
    for replicas in (1, 3):
        condition = auth_condition(spec(replicas))
        assert (condition["status"], condition["reason"]) == ("True", "SharedKey")
        assert SECRET in condition["message"] and condition["observedGeneration"] == 3
        assert patch_for(spec(replicas))["inferenceKeySecret"] == SECRET


def test_disabled_runs_the_gateway_without_a_key_and_says_who_authenticates() -> None:
    raw = spec(replicas=3, tokenAuthorization="Disabled")
    condition = auth_condition(raw)
    assert (condition["status"], condition["reason"]) == ("True", "Delegated")
    args = serving_container(raw)["args"]
    assert "--gateway" in args and "--key-file" not in args
    assert "inference-key" not in {v["name"] for v in pod(raw)["volumes"]}
    assert serving_container(raw)["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # The status stops pointing to a Secret the pods no longer check.
    enabled = patch_for(spec(replicas=3))
    disabled = reconcile_patch(enabled, 4, parse_spec(raw), None, None, 2000.0,
                               key_secret=SECRET)
    assert "inferenceKeySecret" not in disabled
    assert not status_holds(enabled, disabled, RECONCILE_OPTIONAL)


@pytest.mark.parametrize("value", ["disabled", "Off", True, 0])
def test_other_values_are_refused_with_the_choices(value: object) -> None:
    with pytest.raises(SpecError, match="must be Enabled or Disabled"):
        parse_spec(spec(tokenAuthorization=value))


def test_invalid_spec_has_no_auth_condition_nor_secret() -> None:
    patch = reconcile_patch({}, 1, None, None, "spec.x: bad", 1000.0, key_secret=SECRET)
    assert "InferenceAuth" not in {c["type"] for c in patch["conditions"]}
    assert "inferenceKeySecret" not in patch
