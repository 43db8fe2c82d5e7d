"""CRD validation rules (CEL) are enforced by the real API server.

Our ElasticModel CRD will lean on ``x-kubernetes-validations`` for cross-field rules (a minimum
level not above the maximum); this proves the test bed evaluates them, with the status code and
message a client sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client import ApiException

from elastiserve.testing.processes import wait_until

pytestmark = pytest.mark.controlplane

GROUP = "test.elastiserve.io"
PLURAL = "rangedthings"
RULE_MESSAGE = "minLevel must not exceed maxLevel"


def crd_manifest() -> dict[str, Any]:
    spec_schema = {
        "type": "object",
        "required": ["minLevel", "maxLevel"],
        "properties": {
            "minLevel": {"type": "integer", "minimum": 0},
            "maxLevel": {"type": "integer", "minimum": 0},
        },
        "x-kubernetes-validations": [
            {"rule": "self.minLevel <= self.maxLevel", "message": RULE_MESSAGE}
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": PLURAL, "singular": "rangedthing", "kind": "RangedThing"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": spec_schema},
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def ranged_crd(kube_client: Any) -> Iterator[str]:
    ext = k8s.ApiextensionsV1Api(kube_client)
    name = f"{PLURAL}.{GROUP}"
    manifest: Any = crd_manifest()  # the client serialises a plain dict as it is
    ext.create_custom_resource_definition(manifest)

    def established() -> bool:
        crd: Any = ext.read_custom_resource_definition(name)
        return any(
            c.type == "Established" and c.status == "True" for c in crd.status.conditions or []
        )

    wait_until(established, what=f"CRD {name} to be Established", timeout_s=30)
    try:
        yield name
    finally:
        ext.delete_custom_resource_definition(name)


def thing(name: str, low: int, high: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "RangedThing",
        "metadata": {"name": name},
        "spec": {"minLevel": low, "maxLevel": high},
    }


def create(kube_client: Any, namespace: str, body: dict[str, Any]) -> Any:
    api = k8s.CustomObjectsApi(kube_client)
    return api.create_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, body)


def test_object_breaking_the_cel_rule_is_refused(
    kube_client: Any, kube_namespace: str, ranged_crd: str
) -> None:
    with pytest.raises(ApiException) as caught:
        create(kube_client, kube_namespace, thing("inverted", low=3, high=1))
    assert caught.value.status == 422
    status = json.loads(str(caught.value.body))
    assert status["reason"] == "Invalid"
    causes = status["details"]["causes"]
    assert any(c["field"] == "spec" and RULE_MESSAGE in c["message"] for c in causes), causes


def test_valid_object_is_accepted(kube_client: Any, kube_namespace: str, ranged_crd: str) -> None:
    created = create(kube_client, kube_namespace, thing("fine", low=1, high=3))
    assert created["spec"] == {"minLevel": 1, "maxLevel": 3}


def test_schema_validation_also_applies(
    kube_client: Any, kube_namespace: str, ranged_crd: str
) -> None:
    with pytest.raises(ApiException) as caught:
        create(kube_client, kube_namespace, thing("negative", low=-1, high=3))
    assert caught.value.status == 422
    assert "spec.minLevel" in str(caught.value.body)
