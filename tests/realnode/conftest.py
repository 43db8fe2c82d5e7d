"""Fixtures of the real-node tests of one ``ElasticModel`` served by the operator as a
process (``test_hpa.py``, ``test_joint_policy.py``): a real Prometheus scraping the serving
pods, a small archived bundle, and the operator with its least-privilege account.

A module that uses them defines a module-scoped fixture ``bed`` (a ``ModelBed``): the
namespaces and names are that module's own, so the teardown of one module (which deletes
its namespaces) never races the setup of the next.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from elastiserve.testing.pod_discovery import discover_pods
from elastiserve.testing.processes import wait_until
from elastiserve.testing.prometheus import PrometheusServer, file_sd_job, run_prometheus
from tests.operator.cluster_harness import CLUSTER_ROLE, CRD, PEERING_CRD, OperatorProcess
from tests.realnode.model_bed import ModelBed
from tests.serving.bundles import make_bundle

LEVELS = ("L0-25pct", "L1-50pct", "L2-75pct", "L3-100pct")
"""The generated bundle's levels, narrowest first."""


@pytest.fixture(scope="module")
def bed_prometheus(real_cluster: Any, bed: ModelBed, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the annotated pods the API lists in the bed's namespace."""
    work = tmp_path_factory.mktemp(f"{bed.ns}-prometheus")

    def list_pods() -> list[dict[str, Any]]:
        listed = real_cluster.plane.kubectl("get", "pods", "-n", bed.ns, "-o", "json",
                                            timeout_s=20, check=False)
        if listed.returncode != 0:
            return []
        items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
        return items

    with discover_pods(list_pods, work / "targets" / "pods.json") as targets, \
            run_prometheus(work / "server", [], extra_jobs=[file_sd_job(targets)]) as server:
        yield server


@pytest.fixture(scope="module")
def bed_mar(bed: ModelBed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated 4-level bundle, archived as ``elastiserve archive`` does (torch
    threads left to the pod's CPU request); readable by the serving pod's user (it is
    mounted as a single file: hostPath)."""
    work = tmp_path_factory.mktemp(f"{bed.ns}-model")
    bundle = make_bundle(work / "bundle", ratios=(0.25, 0.5, 0.75, 1.0), names=LEVELS, size=28)
    done = subprocess.run([sys.executable, "-m", "elastiserve.cli", "archive", str(bundle),
                           "--name", bed.model, "--export-path", str(work / "mar")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    path = work / "mar" / f"{bed.model}.mar"
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def bed_operator(real_cluster: Any, product_images_on_node: Any, bed: ModelBed, bed_mar: Path,
                 bed_prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[OperatorProcess]:
    """The operator as a process with its least-privilege account (a ClusterRole of the
    bed's own name, so that nothing here collides with the chart the quick-start test
    installs), for the bed's namespace only; removed with everything it made afterwards."""
    plane = real_cluster.plane
    work = tmp_path_factory.mktemp(f"{bed.ns}-operator")
    role = yaml.safe_load(CLUSTER_ROLE.read_text(encoding="utf-8"))
    role["metadata"]["name"] = bed.account
    account = [
        role,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": bed.operator_ns}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": bed.ns}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": bed.account, "namespace": bed.operator_ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": bed.account},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": bed.account},
         "subjects": [{"kind": "ServiceAccount", "name": bed.account,
                       "namespace": bed.operator_ns}]},
    ]
    process: OperatorProcess | None = None
    try:
        plane.kubectl("apply", "--server-side", "-f", str(CRD), "-f", str(PEERING_CRD))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                      "crd/elasticmodels.elastiserve.io")
        plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(account))
        wait_until(lambda: plane.kubectl("-n", bed.operator_ns, "get", "sa", bed.account,
                                         check=False).returncode == 0,
                   what="the operator's ServiceAccount", timeout_s=30.0)
        token = plane.kubectl("-n", bed.operator_ns, "create", "token", bed.account,
                              "--duration=2h").stdout.strip()
        admin = yaml.safe_load(plane.kubeconfig_path.read_text(encoding="utf-8"))
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": bed.account, "user": {"token": token}}],
            "contexts": [{"name": "ctx", "context": {"cluster": admin["clusters"][0]["name"],
                                                     "user": bed.account}}],
            "current-context": "ctx",
        }), encoding="utf-8")
        kubeconfig.chmod(0o600)
        settings = {
            "ELASTISERVE_SERVING_IMAGE": product_images_on_node["serving"].ref,
            "ELASTISERVE_SERVING_IMAGE_PULL_POLICY": "Never",
            "ELASTISERVE_ALLOWED_HOST_PATHS": json.dumps([str(bed_mar.parent)]),
        }
        process = OperatorProcess(kubeconfig, work / "operator.log", bed_prometheus.url,
                                  namespaces=(bed.ns,), extra_env=settings).start()
        yield process
    finally:
        plane.kubectl("-n", bed.ns, "delete", "hpa,elasticmodel", "--all", "--wait=true",
                      "--timeout=120s", check=False, timeout_s=130)
        if process is not None:
            process.stop()
            print("operator log tail:\n" + process.log_tail())
        plane.kubectl("delete", "namespace", bed.ns, bed.operator_ns, "--ignore-not-found",
                      "--timeout=120s", check=False, timeout_s=130)
        plane.kubectl("delete", "clusterrolebinding,clusterrole", bed.account,
                      "--ignore-not-found", check=False)
        # The quick-start test that follows on this cluster installs them with the chart.
        plane.kubectl("delete", "-f", str(CRD), "-f", str(PEERING_CRD), "--ignore-not-found",
                      "--timeout=60s", check=False, timeout_s=70)
