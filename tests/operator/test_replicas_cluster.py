"""The replica count against the real API server (kwok nodes), with the operator's own
least-privilege account: the model's ``scale`` subresource, autoscalers that own the count,
and the joint policy.

* ``kubectl scale elasticmodel`` reaches the Deployment and is never reverted;
* an ``autoscaling/v2`` HPA aimed at the model is accepted, and what the HPA controller
  does with it (read the model's ``scale``: count, pods, selector; write the count through
  it as ``kube-controller-manager``) works and is honoured. The HPA controller itself does
  not run in this test bed (``elastiserve.testing.components.CONTROLLERS``): the test does
  its write;
* a count another field manager set on the Deployment (``kubectl scale deployment``, an
  HPA aimed at it) is kept until the model's ``spec.replicas`` changes; an annotation added
  to a running model keeps the Deployment's count (no reset to 1 while handing it over);
* the joint policy and the annotation together are refused with a condition;
* the joint policy, fed by a real Prometheus, scales the Deployment through its ``scale``
  subresource, says so in the status, an Event and a metric, and measures the pod start
  time from the model's kwok pods.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.prometheus import ScrapeTarget, run_prometheus
from elastiserve_operator.children import AUTOSCALER_ANNOTATION

from .cluster_harness import (
    OPERATOR_NS,
    OPERATOR_SA,
    LatencyExporter,
    OperatorProcess,
    install,
    token_kubeconfig,
    wait_for,
)

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

WAIT_S = 45.0
FAST_QUERY = (
    "histogram_quantile(0.95, sum by (le) (rate(elastiserve_request_latency_seconds_bucket"
    '{namespace="$namespace",ModelName="$model"}[4s])))'
)
FAST_RATE = 'sum(rate(ts_inference_requests_total{namespace="$namespace",model_name="$model"}[4s]))'


@pytest.fixture(scope="module")
def kubeconfig(
    control_plane: ControlPlane, kube_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    install(control_plane)
    wait_for(lambda: control_plane.kubectl("get", "sa", OPERATOR_SA, "-n", OPERATOR_NS,
                                           check=False).returncode == 0, "operator account")
    return token_kubeconfig(control_plane, kube_client, OPERATOR_NS, OPERATOR_SA,
                            tmp_path_factory.mktemp("replicas") / "kubeconfig")


@pytest.fixture
def operator(kubeconfig: Path, kube_namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator for this test's namespace only, without Prometheus (the width holds)."""
    process = OperatorProcess(kubeconfig, tmp_path / "operator.log", "http://127.0.0.1:1",
                              namespaces=(kube_namespace,)).start()
    try:
        yield process
    finally:
        process.stop()


def kubectl_json(plane: ControlPlane, *args: str) -> Any:
    return json.loads(plane.kubectl(*args, "-o", "json").stdout)


def model_spec(count: int = 1, **policy: Any) -> dict[str, Any]:
    return {"model": {"levelCount": 2, "source": {"localPath": "/models/m.mar"}},
            "objective": {"p95Ms": 100}, "replicas": count,
            "policy": {"evaluationIntervalSeconds": 1, "panicWindowSeconds": 2,
                       "stableWindowSeconds": 6, **policy},
            "nodePressure": {"enabled": False}}


def create_model(plane: ControlPlane, namespace: str, name: str, spec: dict[str, Any],
                 annotations: dict[str, str] | None = None) -> None:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    plane.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
        "metadata": meta, "spec": spec}))


def model_status(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return dict(kubectl_json(plane, "get", "elasticmodel", name, "-n", namespace)
                .get("status") or {})


def condition(plane: ControlPlane, namespace: str, name: str, kind: str) -> dict[str, Any]:
    found = {c["type"]: c for c in model_status(plane, namespace, name).get("conditions") or []}
    return dict(found.get(kind) or {})


def deployment(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any] | None:
    done = plane.kubectl("get", "deployment", f"{name}-serving", "-n", namespace, "-o", "json",
                         "--show-managed-fields", check=False)
    return json.loads(done.stdout) if done.returncode == 0 else None


def count(plane: ControlPlane, namespace: str, name: str) -> int | None:
    found = deployment(plane, namespace, name)
    return int(found["spec"]["replicas"]) if found is not None else None


def replica_managers(plane: ControlPlane, namespace: str, name: str) -> set[str]:
    found = deployment(plane, namespace, name) or {}
    return {e["manager"] for e in found.get("metadata", {}).get("managedFields") or []
            if "f:replicas" in (e.get("fieldsV1") or {}).get("f:spec", {})}


def scale_of(plane: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    raw = plane.kubectl("get", "--raw", f"/apis/elastiserve.io/v1alpha1/namespaces/{namespace}"
                                        f"/elasticmodels/{name}/scale").stdout
    return dict(json.loads(raw))


def bump(plane: ControlPlane, namespace: str, name: str, objective: int) -> None:
    """A spec change that is not the count (a reconcile that applies the Deployment)."""
    plane.kubectl("patch", "elasticmodel", name, "-n", namespace, "--type=merge",
                  "-p", json.dumps({"spec": {"objective": {"p95Ms": objective},
                                             "serving": {"workers": objective // 100}}}))


def workers(plane: ControlPlane, namespace: str, name: str) -> str:
    found = deployment(plane, namespace, name) or {}
    args = found["spec"]["template"]["spec"]["containers"][0]["args"]
    return str(args[args.index("--workers") + 1])


def held(check: Any, seconds: float, every_s: float = 0.5) -> None:
    """``check`` stays true for ``seconds`` (several of the operator's evaluations)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert check()
        time.sleep(every_s)


def test_kubectl_scale_on_the_model_reaches_the_deployment_and_stays(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
) -> None:
    plane, ns, name = control_plane, kube_namespace, f"ks-{uuid.uuid4().hex[:6]}"
    create_model(plane, ns, name, model_spec(1))
    wait_for(lambda: count(plane, ns, name) == 1, "the Deployment", WAIT_S,
             show=operator.log_tail)
    plane.kubectl("scale", "elasticmodel", name, "-n", ns, "--replicas=3")
    wait_for(lambda: count(plane, ns, name) == 3, "the Deployment scaled", WAIT_S,
             show=operator.log_tail)
    # What an HPA reads through the model's scale subresource: the count, the pods, and the
    # selector that finds them (the kwok pods become ready).
    wait_for(lambda: scale_of(plane, ns, name)["status"].get("replicas") == 3,
             "status.replicas", WAIT_S, show=lambda: model_status(plane, ns, name))
    scale = scale_of(plane, ns, name)
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["selector"] == f"elastiserve.io/model={name}"
    pods = kubectl_json(plane, "get", "pods", "-n", ns, "-l", scale["status"]["selector"])
    assert len(pods["items"]) == 3
    assert model_status(plane, ns, name)["replicasOwner"] == "spec"
    # Never reverted: several evaluations and a reconcile later, still 3 on both.
    bump(plane, ns, name, 200)
    wait_for(lambda: workers(plane, ns, name) == "2", "the reconcile", WAIT_S)
    held(lambda: count(plane, ns, name) == 3
         and kubectl_json(plane, "get", "em", name, "-n", ns)["spec"]["replicas"] == 3, 4.0)


def test_an_hpa_may_target_the_model_and_its_writes_are_honoured(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
) -> None:
    plane, ns, name = control_plane, kube_namespace, f"hpa-{uuid.uuid4().hex[:6]}"
    create_model(plane, ns, name, model_spec(1))
    wait_for(lambda: count(plane, ns, name) == 1, "the Deployment", WAIT_S,
             show=operator.log_tail)
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "scaleTargetRef": {"apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
                               "name": name},
            "minReplicas": 1, "maxReplicas": 6,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": "elastiserve_requests_per_second"},
                "target": {"type": "AverageValue", "averageValue": "115"}}}],
        },
    }
    plane.kubectl("create", "-f", "-", input=json.dumps(hpa))
    stored = kubectl_json(plane, "get", "hpa", name, "-n", ns)
    assert stored["spec"]["scaleTargetRef"]["kind"] == "ElasticModel"
    # The HPA controller's write, as it makes it: through the target's scale subresource.
    plane.kubectl("patch", "elasticmodel", name, "-n", ns, "--subresource=scale",
                  "--type=merge", "--field-manager=kube-controller-manager",
                  "-p", json.dumps({"spec": {"replicas": 4}}))
    wait_for(lambda: count(plane, ns, name) == 4, "the Deployment scaled", WAIT_S,
             show=operator.log_tail)
    model = kubectl_json(plane, "get", "em", name, "-n", ns, "--show-managed-fields")
    writers = {(e["manager"], e.get("subresource")) for e in model["metadata"]["managedFields"]}
    assert ("kube-controller-manager", "scale") in writers
    bump(plane, ns, name, 200)
    wait_for(lambda: workers(plane, ns, name) == "2", "the reconcile", WAIT_S)
    held(lambda: count(plane, ns, name) == 4 and scale_of(plane, ns, name)["spec"]["replicas"]
         == 4, 4.0)
    # The status names the HPA as the count's owner (the model's managedFields say so).
    status = model_status(plane, ns, name)
    assert status["replicasOwner"] == "autoscaler:kube-controller-manager"
    (owned,) = [c for c in status["conditions"] if c["type"] == "ReplicaOwnership"]
    assert (owned["status"], owned["reason"]) == ("True", "AutoscalerOnModel")


def test_a_count_set_on_the_deployment_is_kept_until_the_spec_changes(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
) -> None:
    plane, ns, name = control_plane, kube_namespace, f"dp-{uuid.uuid4().hex[:6]}"
    create_model(plane, ns, name, model_spec(1))
    wait_for(lambda: count(plane, ns, name) == 1, "the Deployment", WAIT_S,
             show=operator.log_tail)
    # As an HPA aimed at the Deployment would (it writes as kube-controller-manager).
    plane.kubectl("scale", "deployment", f"{name}-serving", "-n", ns, "--replicas=3")
    wait_for(lambda: model_status(plane, ns, name).get("replicasOwner") == "autoscaler:kubectl",
             "the owner reported", WAIT_S, show=lambda: model_status(plane, ns, name))
    assert condition(plane, ns, name, "ReplicaOwnership")["reason"] == "Autoscaler"
    bump(plane, ns, name, 200)  # a reconcile that applies the Deployment (forced)
    wait_for(lambda: workers(plane, ns, name) == "2", "the reconcile", WAIT_S)
    held(lambda: count(plane, ns, name) == 3, 3.0)
    assert replica_managers(plane, ns, name) == {"kubectl"}
    # A new spec.replicas takes it back.
    plane.kubectl("scale", "elasticmodel", name, "-n", ns, "--replicas=2")
    wait_for(lambda: count(plane, ns, name) == 2, "taken back", WAIT_S, show=operator.log_tail)
    wait_for(lambda: model_status(plane, ns, name).get("replicasOwner") == "spec",
             "the spec owns it again", WAIT_S)
    assert replica_managers(plane, ns, name) == {"elastiserve-operator"}


def test_an_annotation_added_to_a_running_model_keeps_the_deployments_count(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
) -> None:
    plane, ns, name = control_plane, kube_namespace, f"an-{uuid.uuid4().hex[:6]}"
    create_model(plane, ns, name, model_spec(3))
    wait_for(lambda: count(plane, ns, name) == 3, "the Deployment", WAIT_S,
             show=operator.log_tail)
    plane.kubectl("annotate", "elasticmodel", name, "-n", ns, f"{AUTOSCALER_ANNOTATION}=keda")
    wait_for(lambda: model_status(plane, ns, name).get("replicasOwner") == "autoscaler:keda",
             "the annotation acted on", WAIT_S, show=operator.log_tail)
    # Handed over, not dropped: server-side apply would have reset it to 1.
    wait_for(lambda: "elastiserve-policy" in replica_managers(plane, ns, name),
             "the hand-over", WAIT_S, show=lambda: replica_managers(plane, ns, name))
    assert count(plane, ns, name) == 3
    assert replica_managers(plane, ns, name) == {"elastiserve-policy"}  # not the apply's
    # KEDA (here: kubectl) scales the Deployment; reconciles leave it.
    plane.kubectl("scale", "deployment", f"{name}-serving", "-n", ns, "--replicas=5")
    bump(plane, ns, name, 200)
    wait_for(lambda: workers(plane, ns, name) == "2", "the reconcile", WAIT_S)
    held(lambda: count(plane, ns, name) == 5, 3.0)


def test_the_joint_policy_with_the_annotation_is_refused_with_a_condition(
    control_plane: ControlPlane, kube_namespace: str, operator: OperatorProcess,
) -> None:
    plane, ns, name = control_plane, kube_namespace, f"cf-{uuid.uuid4().hex[:6]}"
    create_model(plane, ns, name, model_spec(2, replicas={"enabled": True, "max": 4}),
                 annotations={AUTOSCALER_ANNOTATION: "keda"})
    wait_for(lambda: condition(plane, ns, name, "ReplicaOwnership").get("status") == "False",
             "the conflict reported", WAIT_S, show=operator.log_tail)
    owned = condition(plane, ns, name, "ReplicaOwnership")
    assert owned["reason"] == "ConflictingOwners"
    assert f"{AUTOSCALER_ANNOTATION}=keda" in owned["message"]
    def warnings() -> list[str]:
        return [e["reason"] for e in kubectl_json(
            plane, "get", "events", "-n", ns, "--field-selector",
            f"involvedObject.name={name},type=Warning")["items"]]

    wait_for(warnings, "a Warning event", WAIT_S)
    assert warnings() == ["ConflictingOwners"]
    assert model_status(plane, ns, name)["replicasOwner"] == "autoscaler:keda"
    assert count(plane, ns, name) == 1  # the Deployment's default: the count was never sent
    assert replica_managers(plane, ns, name) == set()


def test_the_joint_policy_scales_the_deployment(
    control_plane: ControlPlane, kubeconfig: Path, kube_namespace: str, tmp_path: Path,
) -> None:
    plane, ns, name = control_plane, kube_namespace, f"jp-{uuid.uuid4().hex[:6]}"
    exporter = LatencyExporter(ns, name, rate_rps=50.0).start()
    with run_prometheus(tmp_path / "prom", [ScrapeTarget("exporter",
                                                         f"127.0.0.1:{exporter.port}")],
                        scrape_interval_s=1) as prometheus:
        process = OperatorProcess(kubeconfig, tmp_path / "operator.log", prometheus.url,
                                  namespaces=(ns,)).start()
        try:
            # Narrowest level 30 rps per replica, 80 % of it: 24. 50 rps needs 3 replicas for
            # capacity (the widest level, 10 rps, fits at no rate: width wants the max, 3).
            spec = model_spec(1, replicas={"enabled": True, "min": 1, "max": 3})
            spec["model"] = {"levelCount": 3, "source": {"localPath": "/models/m.mar"},
                             "profile": [{"name": f"w{k}", "capacityRps": c, "accuracy": a}
                                         for k, (c, a) in enumerate(((30.0, 0.80),
                                                                     (20.0, 0.85),
                                                                     (10.0, 0.90)))]}
            spec["objective"] = {"p95Ms": 100, "latencyQuery": FAST_QUERY,
                                 "requestRateQuery": FAST_RATE}
            create_model(plane, ns, name, spec)
            wait_for(lambda: count(plane, ns, name) == 3, "the joint policy's count", 60.0,
                     show=lambda: (model_status(plane, ns, name), process.log_tail()))
            status = model_status(plane, ns, name)
            assert status["replicasOwner"] == "operator-joint-policy"
            assert status["desiredReplicas"] == 3
            assert "elastiserve-policy" in replica_managers(plane, ns, name)
            events = kubectl_json(plane, "get", "events", "-n", ns, "--field-selector",
                                  f"involvedObject.name={name}")["items"]
            scaled = [e["message"] for e in events
                      if e["reason"] in ("NarrowestOverShare", "WidthTarget")]
            # One Event per change: 1 -> 3, or 1 -> 2 -> 3 while the rate window fills.
            assert scaled and all("scaling " in m for m in scaled), scaled
            assert any(m.endswith("-> 3") for m in scaled), scaled
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{process.metrics_port}/metrics", timeout=5) as answer:
                exposition = answer.read().decode()
            assert (f'elastiserve_operator_desired_replicas{{name="{name}",namespace="{ns}"}} '
                    "3.0") in exposition
            # The kwok pods become ready: their start time replaces podStartSeconds.
            wait_for(lambda: (model_status(plane, ns, name).get("replicaDecision") or {})
                     .get("podStartSource") == "Measured", "the pod start measured", 90.0,
                     show=lambda: model_status(plane, ns, name).get("replicaDecision"))
            measured = model_status(plane, ns, name)["replicaDecision"]["podStartSeconds"]
            assert 1.0 <= measured < 60.0
            # A reconcile leaves the count to the policy.
            bump(plane, ns, name, 200)
            wait_for(lambda: workers(plane, ns, name) == "2", "the reconcile", WAIT_S)
            held(lambda: count(plane, ns, name) == 3, 3.0)
        finally:
            process.stop()
            exporter.stop()
            print("operator log tail:\n" + process.log_tail())
