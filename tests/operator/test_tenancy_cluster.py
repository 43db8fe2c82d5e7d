"""Hostile specs and squatted names against the real API server, with the operator's own
least-privilege account (``rbac/operator-clusterrole.yaml``) and its default settings.

* a spec asking for a host path, a foreign image or the control plane's taint gets
  ``Degraded``/``PolicyViolation``, a Warning event, and no object at all in its namespace;
* a name held by someone else's object: that object is not changed by one byte (its
  ``resourceVersion`` stays), the model is ``Degraded``/``OwnershipConflict`` naming it, and
  deleting the model leaves it; once its owner removes it the operator creates its own;
* the operator's forced apply takes back what it must own (a pod template edited by hand)
  but not a replica count that another field manager set on the Deployment, nor that of a
  model whose annotation says an autoscaler owns it (``test_replicas_cluster.py`` has the
  rest of the replica rules);
* the NetworkPolicy exists with its two rules, and metrics have a Service port of their own;
* no finalizer is put on a model, and one left by an older operator is removed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from elastiserve.testing.controlplane import ControlPlane
from elastiserve_operator.children import AUTOSCALER_ANNOTATION, INFERENCE_PORT, METRICS_PORT
from elastiserve_operator.settings import ENV

from .cluster_harness import (
    OPERATOR_NS,
    OPERATOR_SA,
    OperatorProcess,
    install,
    token_kubeconfig,
    wait_for,
)

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

WAIT_S = 45.0
MANAGED = "app.kubernetes.io/managed-by=elastiserve-operator"
KINDS = "deployments,services,configmaps,serviceaccounts,roles,rolebindings,networkpolicies"


OWNERSHIP_RETRY_S = 5
OWNERSHIP_RETRY_ENV = ENV["ownership_retry"]


@pytest.fixture(scope="module")
def operator(
    control_plane: ControlPlane, kube_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator with its own account and the safe default settings (no host paths)."""
    install(control_plane)
    tmp = tmp_path_factory.mktemp("tenancy")
    wait_for(lambda: control_plane.kubectl("get", "sa", OPERATOR_SA, "-n", OPERATOR_NS,
                                           check=False).returncode == 0, "operator account")
    kubeconfig = token_kubeconfig(control_plane, kube_client, OPERATOR_NS, OPERATOR_SA,
                                  tmp / "kubeconfig")
    process = OperatorProcess(kubeconfig, tmp / "operator.log", "http://127.0.0.1:1",
                              extra_env={"ELASTISERVE_HOST_PATH_ENABLED": "false",
                                         "ELASTISERVE_ALLOWED_HOST_PATHS": "[]",
                                         OWNERSHIP_RETRY_ENV: str(OWNERSHIP_RETRY_S)}).start()
    try:
        yield process
    finally:
        process.stop()


def kubectl_json(plane: ControlPlane, *args: str) -> Any:
    return json.loads(plane.kubectl(*args, "-o", "json").stdout)


def create_model(plane: ControlPlane, namespace: str, name: str, spec: dict[str, Any],
                 annotations: dict[str, str] | None = None) -> None:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    plane.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
        "metadata": meta, "spec": spec}))


def pvc_spec(**serving: Any) -> dict[str, Any]:
    return {"model": {"levelCount": 2, "source": {"pvc": {"claimName": "m", "path": "m.mar"}}},
            "objective": {"p95Ms": 100}, "nodePressure": {"enabled": False},
            **({"serving": serving} if serving else {})}


def condition(plane: ControlPlane, namespace: str, name: str, kind: str) -> dict[str, Any]:
    body = kubectl_json(plane, "get", "elasticmodel", name, "-n", namespace)
    found = {c["type"]: c for c in (body.get("status") or {}).get("conditions") or []}
    return dict(found.get(kind) or {})


def warning_events(plane: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    events = kubectl_json(plane, "get", "events", "-n", namespace,
                          "--field-selector", f"involvedObject.name={name},type=Warning")
    return list(events["items"])


HOSTILE = [
    ("hostpath-root", {"model": {"levelCount": 2, "source": {"localPath": "/x.mar"}}},
     "spec.model.source.localPath"),
    ("hostpath-etc", {"model": {"levelCount": 2,
                                "source": {"localPath": "/etc/kubernetes/admin.conf"}}},
     "spec.model.source.localPath"),
    ("image", pvc_spec(image="docker.io/library/busybox:1.36"), "spec.serving.image"),
    ("control-plane", pvc_spec(tolerations=[
        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}],
        nodeSelector={"node-role.kubernetes.io/control-plane": ""}),
     "spec.serving.tolerations[0]"),
    ("other-tenant", {**pvc_spec(), "objective": {
        "p95Ms": 100, "latencyQuery": 'max(x{namespace="kube-system"})'}},
     "spec.objective.latencyQuery"),
]


@pytest.mark.parametrize(("name", "spec", "path"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_spec_beyond_the_settings_gets_nothing(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
    name: str, spec: dict[str, Any], path: str,
) -> None:
    plane = control_plane
    create_model(plane, kube_namespace, name, spec)
    wait_for(lambda: condition(plane, kube_namespace, name, "Degraded").get("reason")
             == "PolicyViolation", f"{name} refused", WAIT_S,
             show=lambda: operator.log_tail())
    degraded = condition(plane, kube_namespace, name, "Degraded")
    assert degraded["status"] == "True" and path in degraded["message"]
    assert degraded["observedGeneration"] == 1
    wait_for(lambda: warning_events(plane, kube_namespace, name), "a Warning event", WAIT_S)
    (event,) = warning_events(plane, kube_namespace, name)
    assert event["reason"] == "PolicyViolation" and path in event["message"]
    children = plane.kubectl("get", f"{KINDS},secrets,pods", "-n", kube_namespace,
                             "-l", MANAGED, "-o", "name").stdout.split()
    assert children == []
    assert plane.kubectl("get", "secret", f"{name}-inference-key", "-n", kube_namespace,
                         check=False).returncode != 0


def test_a_squatted_name_is_left_alone_named_and_survives_the_model(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
) -> None:
    plane = control_plane
    name = f"sq-{uuid.uuid4().hex[:6]}"
    # Someone else's ConfigMap (no owner) and Role, where the model's children would go.
    plane.kubectl("create", "configmap", f"{name}-config", "-n", kube_namespace,
                  "--from-literal=app=theirs")
    plane.kubectl("create", "role", f"{name}-level-agent", "-n", kube_namespace,
                  "--verb=get", "--resource=secrets")
    before = {kind: kubectl_json(plane, "get", kind, obj, "-n", kube_namespace)
              for kind, obj in (("configmap", f"{name}-config"),
                                ("role", f"{name}-level-agent"))}
    create_model(plane, kube_namespace, name, pvc_spec())
    wait_for(lambda: condition(plane, kube_namespace, name, "Degraded").get("reason")
             == "OwnershipConflict", "the conflict reported", WAIT_S,
             show=lambda: operator.log_tail())
    message = condition(plane, kube_namespace, name, "Degraded")["message"]
    assert f"ConfigMap {name}-config exists and is not this model's" in message
    assert f"Role {name}-level-agent exists and is not this model's" in message
    (event,) = warning_events(plane, kube_namespace, name)
    assert event["reason"] == "OwnershipConflict"
    for kind, obj in before.items():
        now = kubectl_json(plane, "get", kind, obj["metadata"]["name"], "-n", kube_namespace)
        assert now["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"], kind
        assert "ownerReferences" not in now["metadata"]
    # Nothing that would use them: no RoleBinding to their Role, no pods on their ConfigMap.
    for kind in ("deployment", "rolebinding"):
        assert plane.kubectl("get", kind, "-n", kube_namespace, "-l", MANAGED,
                             "-o", "name").stdout.split() == [], kind
    # Deleting the model deletes what it owns, never theirs.
    plane.kubectl("delete", "elasticmodel", name, "-n", kube_namespace, "--timeout=30s")
    wait_for(lambda: plane.kubectl("get", "serviceaccount", f"{name}-level-agent", "-n",
                                   kube_namespace, check=False).returncode != 0,
             "the model's own children collected", WAIT_S)
    for kind, obj in before.items():
        now = kubectl_json(plane, "get", kind, obj["metadata"]["name"], "-n", kube_namespace)
        assert now["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_a_freed_name_is_taken_on_the_next_retry(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
) -> None:
    plane = control_plane
    name = f"fr-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "service", "clusterip", name, "-n", kube_namespace,
                  "--tcp=80:80")
    create_model(plane, kube_namespace, name, pvc_spec())
    wait_for(lambda: condition(plane, kube_namespace, name, "Degraded").get("reason")
             == "OwnershipConflict", "the conflict reported", WAIT_S)
    plane.kubectl("delete", "service", name, "-n", kube_namespace)
    # Nothing watches an object without the operator's labels: only the retry, every
    # OWNERSHIP_RETRY_S here (a minute by default), sees the name freed.
    wait_for(lambda: condition(plane, kube_namespace, name, "Degraded").get("status")
             == "False", "the model reconciled once the name is free",
             OWNERSHIP_RETRY_S + 30.0,
             show=lambda: operator.log_tail())
    service = kubectl_json(plane, "get", "service", name, "-n", kube_namespace)
    (ref,) = service["metadata"]["ownerReferences"]
    assert ref["kind"] == "ElasticModel" and ref["name"] == name
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"http": INFERENCE_PORT, "metrics": METRICS_PORT}  # metrics: its own port
    policy = kubectl_json(plane, "get", "networkpolicy", f"{name}-serving", "-n",
                          kube_namespace)
    rules = policy["spec"]["ingress"]
    assert [r["ports"][0]["port"] for r in rules] == [INFERENCE_PORT, METRICS_PORT]
    assert rules[0]["from"] == [{"podSelector": {}}]
    assert rules[1]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    assert policy["spec"]["policyTypes"] == ["Ingress"]


def deployment_replicas(plane: ControlPlane, namespace: str, name: str) -> int:
    body = kubectl_json(plane, "get", "deployment", f"{name}-serving", "-n", namespace)
    return int(body["spec"]["replicas"])


def bump(plane: ControlPlane, namespace: str, name: str, objective: int) -> None:
    plane.kubectl("patch", "elasticmodel", name, "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"objective": {"p95Ms": objective},
                                             "serving": {"workers": objective // 100}}}))


@pytest.mark.parametrize("autoscaled", [False, True])
def test_forced_fields_are_the_operators_and_an_autoscaled_replica_count_is_not(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
    autoscaled: bool,
) -> None:
    plane = control_plane
    name = f"as-{uuid.uuid4().hex[:6]}"
    annotations = {AUTOSCALER_ANNOTATION: "keda"} if autoscaled else None
    create_model(plane, kube_namespace, name, {**pvc_spec(), "replicas": 1}, annotations)
    wait_for(lambda: plane.kubectl("get", "deployment", f"{name}-serving", "-n",
                                   kube_namespace, check=False).returncode == 0,
             "the Deployment", WAIT_S, show=lambda: operator.log_tail())
    # An autoscaler writes the scale subresource; a person edits the pod template.
    plane.kubectl("scale", "deployment", f"{name}-serving", "-n", kube_namespace,
                  "--replicas=3")
    plane.kubectl("set", "image", f"deployment/{name}-serving", "-n", kube_namespace,
                  "torchserve=evil.example/miner:1")
    bump(plane, kube_namespace, name, 200)  # a reconcile that changes the Deployment

    def settled() -> bool:
        body = kubectl_json(plane, "get", "deployment", f"{name}-serving", "-n",
                            kube_namespace)
        (serving, *_) = body["spec"]["template"]["spec"]["containers"]
        args = serving["args"]
        return bool(serving["image"] != "evil.example/miner:1"
                    and args[args.index("--workers") + 1] == "2")

    wait_for(settled, "the template taken back", WAIT_S, show=lambda: operator.log_tail())
    # The count someone else set stays, annotated or not: kubectl owns it now.
    assert deployment_replicas(plane, kube_namespace, name) == 3
    expected = "autoscaler:keda" if autoscaled else "autoscaler:kubectl"
    wait_for(lambda: kubectl_json(plane, "get", "elasticmodel", name, "-n", kube_namespace)[
        "status"].get("replicasOwner") == expected, f"replicasOwner {expected}", WAIT_S)


def test_no_finalizer_and_an_old_one_is_removed(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
) -> None:
    plane = control_plane
    name = f"fin-{uuid.uuid4().hex[:6]}"
    create_model(plane, kube_namespace, name, pvc_spec())
    wait_for(lambda: condition(plane, kube_namespace, name, "Ready"), "a status", WAIT_S)
    body = kubectl_json(plane, "get", "elasticmodel", name, "-n", kube_namespace)
    assert body["metadata"].get("finalizers") in (None, [])
    old = f"old-{uuid.uuid4().hex[:6]}"
    plane.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
        "metadata": {"name": old, "namespace": kube_namespace,
                     "finalizers": ["elastiserve.io/operator"]},
        "spec": pvc_spec()}))
    wait_for(lambda: not kubectl_json(plane, "get", "elasticmodel", old, "-n",
                                      kube_namespace)["metadata"].get("finalizers"),
             "the old finalizer removed", WAIT_S, show=lambda: operator.log_tail())
    plane.kubectl("delete", "elasticmodel", name, old, "-n", kube_namespace, "--timeout=20s")

