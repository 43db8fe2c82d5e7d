"""Workloads on the real control plane: scheduling onto kwok nodes and garbage collection.

These are the behaviours an operator leans on and a fake API would get wrong: the scheduler
honouring node selectors, taints and extended resources, and owner references cascading.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client as k8s

from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.kwok_nodes import (
    EDGE_POOL,
    EDGE_TAINT_KEY,
    GPU_RESOURCE,
    default_nodes,
)
from elastiserve.testing.processes import wait_until

pytestmark = pytest.mark.controlplane

NODES = default_nodes()
JETSONS = {node.name for node in NODES if node.arch == "arm64"}
ALL_NODES = {node.name for node in NODES}
WAIT_S = 60.0


def deployment(name: str, replicas: int, *, edge: bool = False) -> k8s.V1Deployment:
    """A Deployment of a placeholder image (kwok never pulls it); ``edge`` targets the Jetsons."""
    labels = {"app": name}
    requests = {"cpu": "100m", "memory": "64Mi"}
    resources = k8s.V1ResourceRequirements(requests=requests)
    pod = k8s.V1PodSpec(
        containers=[
            k8s.V1Container(name="model", image="elastiserve/noop:test", resources=resources)
        ]
    )
    if edge:
        pod.node_selector = {"kubernetes.io/arch": "arm64"}
        pod.tolerations = [
            k8s.V1Toleration(
                key=EDGE_TAINT_KEY, operator="Equal", value=EDGE_POOL, effect="NoSchedule"
            )
        ]
        # One GPU each: three replicas can only fit by taking one board each.
        resources.limits = {GPU_RESOURCE: "1"}
        resources.requests = {**requests, GPU_RESOURCE: "1"}
    return k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1DeploymentSpec(
            replicas=replicas,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod),
        ),
    )


def running_pods(core: k8s.CoreV1Api, namespace: str, app: str) -> list[Any]:
    pods: list[Any] = core.list_namespaced_pod(namespace, label_selector=f"app={app}").items
    return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def wait_running(core: k8s.CoreV1Api, namespace: str, app: str, count: int) -> list[Any]:
    wait_until(
        lambda: len(running_pods(core, namespace, app)) == count,
        what=f"{count} Running pods of {app}",
        timeout_s=WAIT_S,
        interval_s=0.25,
    )
    return running_pods(core, namespace, app)


class TestScheduling:
    def test_deployment_pods_run_on_fake_server_node(
        self, kube_client: Any, kube_namespace: str
    ) -> None:
        apps, core = k8s.AppsV1Api(kube_client), k8s.CoreV1Api(kube_client)
        apps.create_namespaced_deployment(kube_namespace, deployment("web", 3))
        pods = wait_running(core, kube_namespace, "web", 3)
        placed = {pod.spec.node_name for pod in pods}
        assert placed <= ALL_NODES
        # No toleration for the edge taint: the Jetsons are off limits.
        assert placed == {"server-0"}
        assert all(pod.status.pod_ip for pod in pods)

        def available() -> int:
            status: Any = apps.read_namespaced_deployment_status("web", kube_namespace).status
            return int(status.available_replicas or 0)

        wait_until(
            lambda: available() == 3,
            what="deployment web to report 3 available replicas",
            timeout_s=WAIT_S,
        )

    def test_arm64_gpu_deployment_fills_the_jetson_pool_and_no_more(
        self, kube_client: Any, kube_namespace: str
    ) -> None:
        """Three boards with one GPU each: one replica per board, the fourth is unschedulable."""
        apps, core = k8s.AppsV1Api(kube_client), k8s.CoreV1Api(kube_client)
        apps.create_namespaced_deployment(kube_namespace, deployment("edge", 4, edge=True))
        pods = wait_running(core, kube_namespace, "edge", 3)
        assert sorted(pod.spec.node_name for pod in pods) == sorted(JETSONS)

        def unschedulable() -> bool:
            pods: list[Any] = core.list_namespaced_pod(
                kube_namespace, label_selector="app=edge"
            ).items
            return any(
                c.type == "PodScheduled" and c.reason == "Unschedulable"
                for p in pods
                for c in (p.status.conditions or [])
            )

        wait_until(unschedulable, what="the fourth replica marked Unschedulable", timeout_s=WAIT_S)


class TestGarbageCollection:
    @pytest.mark.parametrize("propagation", ["Background", "Foreground"])
    def test_deleting_a_deployment_removes_its_replicasets_and_pods(
        self, kube_client: Any, kube_namespace: str, propagation: str
    ) -> None:
        apps, core = k8s.AppsV1Api(kube_client), k8s.CoreV1Api(kube_client)
        apps.create_namespaced_deployment(kube_namespace, deployment("doomed", 2))
        wait_running(core, kube_namespace, "doomed", 2)
        assert apps.list_namespaced_replica_set(kube_namespace).items

        apps.delete_namespaced_deployment(
            "doomed", kube_namespace, body=k8s.V1DeleteOptions(propagation_policy=propagation)
        )

        def all_gone() -> bool:
            return not (
                apps.list_namespaced_deployment(kube_namespace).items
                or apps.list_namespaced_replica_set(kube_namespace).items
                or core.list_namespaced_pod(kube_namespace).items
            )

        wait_until(all_gone, what=f"{propagation} deletion to cascade", timeout_s=WAIT_S)


class TestTools:
    def test_kubectl_sees_the_labelled_fake_nodes(self, control_plane: ControlPlane) -> None:
        out = control_plane.kubectl(
            "get", "nodes", "-L", "kubernetes.io/arch,nvidia.com/jetson.model", "--no-headers"
        ).stdout
        rows = {line.split()[0]: line.split() for line in out.splitlines()}
        assert set(rows) == ALL_NODES
        assert all(row[1] == "Ready" for row in rows.values())
        assert "agx-orin-32gb" in rows["jetson-agx-orin-0"]

    def test_server_reports_the_built_version(self, kube_client: Any) -> None:
        version = k8s.VersionApi(kube_client).get_code()
        assert version.git_version.startswith("v1.")
        assert version.git_version != "v0.0.0-master+$Format:%H$"

    def test_helm_talks_to_the_cluster(self, control_plane: ControlPlane) -> None:
        assert control_plane.helm("version", "--short").stdout.startswith("v3.")
        listed = control_plane.helm("list", "--all-namespaces", "--output", "json").stdout
        assert listed.strip() == "[]"
