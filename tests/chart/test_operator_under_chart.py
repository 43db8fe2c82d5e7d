"""The real operator process, logged in with the chart's ServiceAccount token, in the mode
where the chart's RBAC differs most from the operator's own ClusterRole: restricted to one
namespace (a Role there, cluster-scoped reads only).

This is how the namespace listing kopf does even when restricted to named namespaces was found:
without it the operator retried for a minute. The operator's settings are the rendered
ConfigMap's, except the ports (free loopback ports) and Prometheus (unreachable: the operator
must then hold the level and say so, which needs its status permissions too).

The release is installed with a non-default objective (``policy.objectiveP95Ms=123``), so the
same operator also shows a chart default reaching a model that leaves the field out. One
install and one operator serve every test here (module scope): each test uses its own models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.helm import (
    ChartValues,
    ensure_crds,
    install,
    uninstall,
    write_service_account_kubeconfig,
)
from elastiserve.testing.ports import free_port
from elastiserve.testing.processes import wait_until

pytestmark = [pytest.mark.controlplane, pytest.mark.slow]

WAIT_S = 60.0
CHART_OBJECTIVE_MS = 123


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def operator_under_chart(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ControlPlane, str, Path]]:
    """Chart installed for one namespace; the operator running with the chart's token."""
    plane = control_plane
    tmp_path = tmp_path_factory.mktemp("under-chart")
    ensure_crds(plane)
    release_ns, team, release = unique("es"), unique("team"), unique("op")
    for name in (release_ns, team):
        plane.kubectl("create", "namespace", name)
    values = ChartValues(
        set_values={"operator.replicas": 1, "operator.peering.name": release,
                    "policy.objectiveP95Ms": CHART_OBJECTIVE_MS,
                    "tenancy.hostPath.enabled": True},
        # The models here name /models/m.mar (kwok never mounts it): allowed through the
        # chart's own values, so the settings' path from values to operator is exercised.
        set_json={"watchNamespaces": [team],
                  "tenancy.hostPath.allowedDirectories": ["/models"]},
    )
    log_path = tmp_path / "operator.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        installed = install(plane, values, release=release, namespace=release_ns)
        (account,) = installed.objects("ServiceAccount")
        kubeconfig = write_service_account_kubeconfig(
            plane, tmp_path / "kubeconfig", release_ns, account["metadata"]["name"]
        )
        (config,) = [c for c in installed.objects("ConfigMap")
                     if c["metadata"]["name"].endswith("-operator")]
        env = {
            **os.environ,
            **config["data"],
            "KUBECONFIG": str(kubeconfig),
            "POD_ID": f"{release}-test",
            "ELASTISERVE_OPERATOR_NAMESPACE": release_ns,
            "ELASTISERVE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
            "ELASTISERVE_METRICS_PORT": str(free_port()),
            "ELASTISERVE_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}",
        }
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "elastiserve_operator"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        yield plane, team, log_path
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        uninstall(plane, release, release_ns)
        plane.kubectl("delete", "namespace", "--wait=false", "--ignore-not-found",
                      release_ns, team)


def test_operator_reconciles_with_only_the_charts_permissions(
    operator_under_chart: tuple[ControlPlane, str, Path],
) -> None:
    plane, team, log_path = operator_under_chart
    model = {
        "apiVersion": "elastiserve.io/v1alpha1",
        "kind": "ElasticModel",
        "metadata": {"name": "m", "namespace": team},
        "spec": {
            "model": {"levelCount": 3, "source": {"localPath": "/models/m.mar"}},
            "objective": {"p95Ms": 100},
        },
    }
    plane.kubectl("create", "-f", "-", input=json.dumps(model))

    def status() -> dict[str, Any]:
        out = plane.kubectl("get", "elasticmodel", "m", "-n", team, "-o", "json").stdout
        body: dict[str, Any] = json.loads(out).get("status") or {}
        return body

    def reconciled() -> bool:
        types = {c["type"]: c for c in status().get("conditions", [])}
        return "MetricsAvailable" in types

    wait_until(reconciled, what="the operator to write status under the chart's account",
               timeout_s=WAIT_S, interval_s=0.5,
               detail=lambda: f"; operator log tail:\n{_tail(log_path)}")
    conditions = {c["type"]: c for c in status()["conditions"]}
    # No Prometheus: the level is held and the condition says why.
    assert conditions["MetricsAvailable"]["status"] == "False"
    children = plane.kubectl(
        "get", "deployments,services,configmaps,serviceaccounts,roles,rolebindings",
        "-n", team, "-l", "app.kubernetes.io/managed-by=elastiserve-operator", "-o", "name",
    ).stdout.split()
    kinds = {child.split("/")[0] for child in children}
    assert {"deployment.apps", "service", "serviceaccount", "role.rbac.authorization.k8s.io",
            "rolebinding.rbac.authorization.k8s.io"} <= kinds, children
    peering = plane.kubectl("get", "kopfpeerings.kopf.dev", "-n", team, "-o", "json").stdout
    (item,) = json.loads(peering)["items"]
    assert item.get("status"), "the operator's keep-alive never reached the KopfPeering"
    log = log_path.read_text(encoding="utf-8", errors="replace")
    forbidden = [line for line in log.splitlines() if "Forbidden" in line or " 403" in line]
    assert forbidden == []


def test_a_chart_default_reaches_a_model_that_leaves_the_field_out(
    operator_under_chart: tuple[ControlPlane, str, Path],
) -> None:
    plane, team, log_path = operator_under_chart
    source = {"levelCount": 3, "source": {"localPath": "/models/m.mar"}}
    models = [
        {"metadata": {"name": "defaulted", "namespace": team},
         "spec": {"model": source, "policy": {"stableWindowSeconds": 90}, "replicas": 0}},
        # CEL sees one side of the pair only (the stable window is the chart's 60 s).
        {"metadata": {"name": "conflicting", "namespace": team},
         "spec": {"model": source, "policy": {"panicWindowSeconds": 90}}},
    ]
    for model in models:
        body = {"apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel", **model}
        plane.kubectl("create", "-f", "-", input=json.dumps(body))

    def status(name: str) -> dict[str, Any]:
        out = plane.kubectl("get", "elasticmodel", name, "-n", team, "-o", "json").stdout
        body: dict[str, Any] = json.loads(out)
        assert "objective" not in body["spec"]  # the API server injected nothing
        return body.get("status") or {}

    def degraded(name: str) -> dict[str, Any] | None:
        return {c["type"]: c for c in status(name).get("conditions", [])}.get("Degraded")

    def detail() -> str:
        return f"; operator log tail:\n{_tail(log_path)}"

    wait_until(lambda: "effectivePolicy" in status("defaulted"), what="an effective policy",
               timeout_s=WAIT_S, interval_s=0.5, detail=detail)
    # Readiness of the Deployment the first reconcile created, not "no Deployment yet" (the
    # status is written together with the children, before the Deployment exists).
    def ready_reason() -> str | None:
        conditions = {c["type"]: c for c in status("defaulted").get("conditions", [])}
        return (conditions.get("Ready") or {}).get("reason")

    wait_until(lambda: ready_reason() == "ScaledToZero", what="Ready from the created "
               "Deployment", timeout_s=WAIT_S, interval_s=0.5, detail=detail)
    effective = status("defaulted")["effectivePolicy"]
    assert effective["objective"]["p95Ms"] == CHART_OBJECTIVE_MS
    assert effective["sources"]["objective.p95Ms"] == "chartDefault"
    assert effective["policy"]["stableWindowSeconds"] == 90
    assert effective["sources"]["policy.stableWindowSeconds"] == "spec"
    assert effective["policy"]["panicWindowSeconds"] == 6  # the chart's value
    table = plane.kubectl("get", "elasticmodel", "defaulted", "-n", team).stdout.splitlines()
    start = table[0].index("OBJECTIVE MS")  # columns are left-aligned; some are empty yet
    assert table[1][start:].split()[0] == str(CHART_OBJECTIVE_MS), table

    wait_until(lambda: degraded("conflicting") is not None, what="the conflict reported",
               timeout_s=WAIT_S, interval_s=0.5, detail=detail)
    condition = degraded("conflicting")
    assert condition is not None
    assert (condition["status"], condition["reason"]) == ("True", "InvalidSpec")
    assert "panicWindowSeconds must be <= stableWindowSeconds" in condition["message"]
    assert "stableWindowSeconds=60 from the operator's defaults" in condition["message"]
    assert "effectivePolicy" not in status("conflicting")


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
