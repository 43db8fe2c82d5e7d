"""No takeover, and refusals, behind the ``KubeApi`` seam (the request pattern; the real API
server's answers to the same preconditions are in ``test_tenancy_cluster.py``).

A child is created only where its name is free and written only while it carries this
model's controller reference; a foreign holder is left untouched and named in ``Degraded``
(``OwnershipConflict``), with the RoleBinding and the Deployment withheld. A spec beyond the
operator's allow-lists is refused whole (``PolicyViolation``): no child, no key, a Warning.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import kopf
import pytest

from elastiserve_operator.children import AUTOSCALER_ANNOTATION
from elastiserve_operator.reconcile import evaluate, reconcile
from tests.operator.test_reconcile_writes import RecordingApi, body, runtime


def degraded(status: dict[str, Any]) -> dict[str, Any]:
    (condition,) = [c for c in status["conditions"] if c["type"] == "Degraded"]
    return dict(condition)


def warnings(api: RecordingApi) -> list[dict[str, Any]]:
    return [c for c in api.creates if c["kind"] == "Event" and c["type"] == "Warning"]


def foreign(kind: str, name: str, api_version: str = "v1",
            owner: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "uid": f"foreign-{name}"}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": api_version, "kind": kind, "metadata": meta, "data": {"x": "y"}}


OTHER_MODEL = {"apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
               "name": "other", "uid": "u-other", "controller": True}
OTHER_CONTROLLER = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "someone",
                    "uid": "u-dep", "controller": True}


@pytest.mark.parametrize(("kind", "name", "api_version", "owner"), [
    ("ConfigMap", "resnet-config", "v1", None),
    ("ServiceAccount", "resnet-level-agent", "v1", OTHER_CONTROLLER),
    ("Role", "resnet-level-agent", "rbac.authorization.k8s.io/v1", OTHER_MODEL),
    ("Service", "resnet", "v1", {**OTHER_MODEL, "controller": False}),
])
def test_a_foreign_holder_is_left_untouched_and_named(
    kind: str, name: str, api_version: str, owner: dict[str, Any] | None,
) -> None:
    api = RecordingApi()
    held = foreign(kind, name, api_version, owner)
    api.stored[(kind, name)] = copy.deepcopy(held)
    with pytest.raises(kopf.TemporaryError, match="held by others"):
        asyncio.run(reconcile(runtime(api), body()))
    assert api.stored[(kind, name)] == held  # not one field changed
    writes = [obj for k, sub, obj in api.applies if k == kind and not sub]
    assert all(w["metadata"].get("resourceVersion") for w in writes)  # create-only tries
    applied = {k for k, sub, _ in api.applies if not sub}
    assert "Deployment" not in applied and "RoleBinding" not in applied
    condition = degraded(api.status_writes()[-1])
    assert (condition["status"], condition["reason"]) == ("True", "OwnershipConflict")
    assert f"{kind} {name} exists and is not this model's" in condition["message"]
    (event,) = warnings(api)
    assert event["reason"] == "OwnershipConflict" and name in event["message"]


def test_the_deployment_held_by_another_is_not_written() -> None:
    api = RecordingApi()
    held = foreign("Deployment", "resnet-serving", "apps/v1", OTHER_CONTROLLER)
    api.stored[("Deployment", "resnet-serving")] = copy.deepcopy(held)
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(reconcile(runtime(api), body()))
    assert api.stored[("Deployment", "resnet-serving")] == held
    assert "resnet-serving" in degraded(api.status_writes()[-1])["message"]


def test_a_retry_posts_no_second_warning_and_a_freed_name_is_taken() -> None:
    api = RecordingApi()
    api.stored[("ConfigMap", "resnet-config")] = foreign("ConfigMap", "resnet-config")
    rt = runtime(api)
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(reconcile(rt, body()))
    status = api.status_writes()[-1]
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(reconcile(rt, body(status=status)))
    assert len(warnings(api)) == 1
    del api.stored[("ConfigMap", "resnet-config")]  # its owner removed it
    asyncio.run(reconcile(rt, body(status=status)))
    assert degraded(api.status_writes()[-1])["status"] == "False"
    assert "ownerReferences" in api.stored[("ConfigMap", "resnet-config")]["metadata"]
    assert ("Deployment", "resnet-serving") in api.stored


def test_a_child_replaced_by_someone_else_is_not_written_to() -> None:
    api = RecordingApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, body()))
    status = api.status_writes()[-1]
    # Deleted and re-created by someone else, unseen by this process: a known uid no more.
    api.stored[("ConfigMap", "resnet-config")] = foreign("ConfigMap", "resnet-config")
    rt.applied.forget(("ml", "ConfigMap", "resnet-config"))
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(reconcile(rt, body(generation=2, status=status)))
    assert api.stored[("ConfigMap", "resnet-config")]["data"] == {"x": "y"}
    assert degraded(api.status_writes()[-1])["reason"] == "OwnershipConflict"


def test_known_children_are_written_with_their_uid_and_new_ones_create_only() -> None:
    api = RecordingApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, body()))
    first = [obj for _, sub, obj in api.applies if not sub]
    assert all(obj["metadata"]["resourceVersion"] == "1" for obj in first)
    api.applies.clear()
    changed = body(generation=2)
    changed["spec"]["replicas"] = 3
    asyncio.run(reconcile(rt, changed))
    (deployment,) = [obj for kind, sub, obj in api.applies if kind == "Deployment" and not sub]
    assert deployment["metadata"]["uid"] == api.stored[("Deployment", "resnet-serving")][
        "metadata"]["uid"]
    assert "resourceVersion" not in deployment["metadata"]


def test_an_autoscaled_model_leaves_replicas_out_of_the_apply() -> None:
    api = RecordingApi()
    scaled = body()
    scaled["metadata"]["annotations"] = {AUTOSCALER_ANNOTATION: "keda"}
    asyncio.run(reconcile(runtime(api), scaled))
    (deployment,) = [obj for kind, sub, obj in api.applies if kind == "Deployment" and not sub]
    assert "replicas" not in deployment["spec"]
    api2 = RecordingApi()
    asyncio.run(reconcile(runtime(api2), body()))
    (plain,) = [obj for kind, sub, obj in api2.applies if kind == "Deployment" and not sub]
    assert plain["spec"]["replicas"] == 1


@pytest.mark.parametrize(("source", "serving", "objective", "path"), [
    ({"localPath": "/x.mar"}, {}, {}, "spec.model.source.localPath"),
    ({"localPath": "/etc/kubernetes/admin.conf"}, {}, {}, "spec.model.source.localPath"),
    (None, {"image": "evil.example/miner:1"}, {}, "spec.serving.image"),
    (None, {"tolerations": [{"operator": "Exists"}]}, {}, "spec.serving.tolerations[0]"),
    (None, {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}, {},
     "spec.serving.nodeSelector[node-role.kubernetes.io/control-plane]"),
    (None, {"runtimeClassName": "kata-privileged"}, {}, "spec.serving.runtimeClassName"),
    (None, {}, {"latencyQuery": 'sum(rate(x{namespace="other"}[1m]))'},
     "spec.objective.latencyQuery"),
])
def test_a_spec_beyond_the_allow_lists_gets_no_child_no_key_and_a_warning(
    source: dict[str, Any] | None, serving: dict[str, Any], objective: dict[str, Any],
    path: str,
) -> None:
    api = RecordingApi()
    asking = body()
    if source is not None:
        asking["spec"]["model"]["source"] = source
    asking["spec"]["serving"] = serving
    asking["spec"]["objective"].update(objective)
    rt = runtime(api)
    with pytest.raises(kopf.PermanentError, match="policy violation"):
        asyncio.run(reconcile(rt, asking))
    assert [k for k, sub, _ in api.applies if not sub] == []
    assert [c for c in api.creates if c["kind"] == "Secret"] == []
    (status,) = api.status_writes()
    condition = degraded(status)
    assert (condition["status"], condition["reason"]) == ("True", "PolicyViolation")
    assert condition["message"].startswith("not applied: " + path)
    assert condition["observedGeneration"] == 1
    assert "inferenceKeySecret" not in status
    (event,) = warnings(api)
    assert event["reason"] == "PolicyViolation" and event["type"] == "Warning"
    # Its policy loop runs no query at all (the runtime's Prometheus is a bare object).
    assert asyncio.run(evaluate(rt, {**asking, "status": status})) is None
