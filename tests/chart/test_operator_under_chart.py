"""The real operator process, logged in with the chart's ServiceAccount token, in the mode
where the chart's RBAC differs most from the operator's own ClusterRole: restricted to one
namespace (a Role there, cluster-scoped reads only).

This is how the namespace listing kopf does even when restricted to named namespaces was found:
without it the operator retried for a minute. The operator's settings are the rendered
ConfigMap's, except the ports (free loopback ports) and Prometheus (unreachable: the operator
must then hold the level and say so, which needs its status permissions too).
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


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def operator_under_chart(
    control_plane: ControlPlane, tmp_path: Path
) -> Iterator[tuple[ControlPlane, str, Path]]:
    """Chart installed for one namespace; the operator running with the chart's token."""
    plane = control_plane
    ensure_crds(plane)
    release_ns, team, release = unique("es"), unique("team"), unique("op")
    for name in (release_ns, team):
        plane.kubectl("create", "namespace", name)
    values = ChartValues(
        set_values={"operator.replicas": 1, "operator.peering.name": release},
        set_json={"watchNamespaces": [team]},
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


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
