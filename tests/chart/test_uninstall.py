"""Uninstalling leaves nothing stuck, in either order, against the real API server.

The operator runs as a local process with the chart's ServiceAccount token and settings (as in
``test_operator_under_chart.py``), restricted to one team namespace. Each test installs its
own release, lets the operator create a model's children, and then:

* *models first*: deletes the model while the operator runs, then ``helm uninstall``, then
  deletes the namespaces;
* *operator first*: ``helm uninstall`` and the operator process killed (what an uninstall
  does to its pod, without a goodbye), then deletes the model and the namespaces.

Every deletion must complete within its deadline. An operator that put a finalizer on its
models (kopf does, for any resource with a daemon) fails the second order: with nobody left
to remove it, the model and its namespace stay ``Terminating`` for ever.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@contextmanager
def released(plane: ControlPlane, tmp: Path) -> Iterator[tuple[str, str, str, Callable[[], None]]]:
    """(release namespace, team namespace, release, kill the operator) with it running."""
    ensure_crds(plane)
    release_ns, team, release = unique("es"), unique("team"), unique("op")
    for name in (release_ns, team):
        plane.kubectl("create", "namespace", name)
    values = ChartValues(set_values={"operator.replicas": 1, "operator.peering.name": release},
                         set_json={"watchNamespaces": [team]})
    installed = install(plane, values, release=release, namespace=release_ns)
    (account,) = installed.objects("ServiceAccount")
    kubeconfig = write_service_account_kubeconfig(plane, tmp / "kubeconfig", release_ns,
                                                  account["metadata"]["name"])
    (config,) = [c for c in installed.objects("ConfigMap")
                 if c["metadata"]["name"].endswith("-operator")]
    env = {**os.environ, **config["data"], "KUBECONFIG": str(kubeconfig),
           "POD_ID": f"{release}-test", "ELASTISERVE_OPERATOR_NAMESPACE": release_ns,
           "ELASTISERVE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{free_port()}/healthz",
           "ELASTISERVE_METRICS_PORT": str(free_port()),
           "ELASTISERVE_PROMETHEUS_URL": f"http://127.0.0.1:{free_port()}"}
    log = (tmp / "operator.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "elastiserve_operator"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()

    def kill() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    try:
        yield release_ns, team, release, kill
    finally:
        kill()
        plane.kubectl("delete", "namespace", "--wait=false", "--ignore-not-found",
                      release_ns, team)


def create_model(plane: ControlPlane, team: str, tmp: Path) -> None:
    plane.kubectl("create", "-f", "-", input=json.dumps({
        "apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
        "metadata": {"name": "m", "namespace": team},
        "spec": {"model": {"levelCount": 2,
                           "source": {"pvc": {"claimName": "models", "path": "m.mar"}}},
                 "objective": {"p95Ms": 100}},
    }))

    def served() -> bool:
        return plane.kubectl("get", "deployment", "m-serving", "-n", team,
                             check=False).returncode == 0

    wait_until(served, what="the model's Deployment", timeout_s=WAIT_S, interval_s=0.5,
               detail=lambda: "; operator log:\n" + _tail(tmp / "operator.log"))


def finalizers(plane: ControlPlane, team: str) -> list[str]:
    body: dict[str, Any] = json.loads(plane.kubectl("get", "elasticmodel", "m", "-n", team,
                                                    "-o", "json").stdout)
    return list(body["metadata"].get("finalizers") or [])


def gone(plane: ControlPlane, *args: str) -> Callable[[], bool]:
    return lambda: plane.kubectl("get", *args, check=False).returncode != 0


def delete_and_wait(plane: ControlPlane, what: str, *args: str) -> None:
    """``kubectl delete`` without waiting, then a deadline on the object being gone."""
    plane.kubectl("delete", "--wait=false", *args)
    wait_until(gone(plane, *args), what=f"{what} deleted", timeout_s=WAIT_S, interval_s=0.5,
               detail=lambda: "; still: " + plane.kubectl("get", *args, "-o", "yaml",
                                                          check=False).stdout[-1500:])


def test_models_first_then_helm_uninstall_then_namespaces(
    control_plane: ControlPlane, tmp_path: Path,
) -> None:
    plane = control_plane
    with released(plane, tmp_path) as (release_ns, team, release, kill):
        create_model(plane, team, tmp_path)
        assert finalizers(plane, team) == []
        delete_and_wait(plane, "the model", "elasticmodel", "m", "-n", team)
        wait_until(gone(plane, "deployment", "m-serving", "-n", team),
                   what="its Deployment collected", timeout_s=WAIT_S, interval_s=0.5)
        uninstall(plane, release, release_ns)
        kill()
        for namespace in (team, release_ns):
            delete_and_wait(plane, f"namespace {namespace}", "namespace", namespace)


def test_helm_uninstall_first_then_models_and_namespaces(
    control_plane: ControlPlane, tmp_path: Path,
) -> None:
    plane = control_plane
    with released(plane, tmp_path) as (release_ns, team, release, kill):
        create_model(plane, team, tmp_path)
        uninstall(plane, release, release_ns)
        kill()  # the uninstall's pod deletion: no operator is left to act on anything
        delete_and_wait(plane, "the model", "elasticmodel", "m", "-n", team)
        for namespace in (team, release_ns):
            delete_and_wait(plane, f"namespace {namespace}", "namespace", namespace)


def test_namespace_deleted_with_its_model_while_no_operator_runs(
    control_plane: ControlPlane, tmp_path: Path,
) -> None:
    """The commonest clean-up: the team's namespace goes, model and all, operator gone."""
    plane = control_plane
    with released(plane, tmp_path) as (release_ns, team, release, kill):
        create_model(plane, team, tmp_path)
        kill()
        delete_and_wait(plane, f"namespace {team}", "namespace", team)
        uninstall(plane, release, release_ns)
        delete_and_wait(plane, f"namespace {release_ns}", "namespace", release_ns)


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
