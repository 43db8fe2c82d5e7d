"""The real node runs pods as a cluster would: restricted security context, probes, limits in
the pod's cgroup, Services routed by kube-proxy, logs and exec through the API server.

These run on the session's ``real_cluster`` (kubelet + containerd + runc + kube-proxy inside
the test network) with the harness's echo image, so they need no product image.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from elastiserve.testing.processes import wait_until

pytestmark = [pytest.mark.controlplane, pytest.mark.realnode, pytest.mark.slow]

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _apply(cluster: Any, namespace: str, *objects: dict[str, Any]) -> None:
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
    cluster.plane.kubectl("apply", "-n", namespace, "-f", "-", input=body)


def _echo_deployment(image: str, replicas: int) -> dict[str, Any]:
    labels = {"app": "echo"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "echo"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "echo",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "args": [":8080"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"},
                                           "periodSeconds": 1},
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                                      "limits": {"memory": "48Mi"}},
                        "securityContext": RESTRICTED_CONTAINER,
                    }],
                },
            },
        },
    }


def _service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }


def _namespace(cluster: Any, name: str) -> str:
    cluster.plane.kubectl("create", "namespace", name)
    wait_until(
        lambda: cluster.plane.kubectl("get", "sa", "default", "-n", name, check=False)
        .returncode == 0,
        what=f"ServiceAccount {name}/default", timeout_s=30.0,
    )
    return name


def _ready_pods(cluster: Any, namespace: str) -> list[dict[str, Any]]:
    out = cluster.plane.kubectl("get", "pods", "-n", namespace, "-l", "app=echo", "-o", "json")
    pods = json.loads(out.stdout)["items"]
    return [
        pod for pod in pods
        if any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions") or [])
    ]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode().strip())


class TestPodsRun:
    def test_restricted_pods_become_ready_and_the_service_routes_to_each(
        self, real_cluster: Any
    ) -> None:
        ns = _namespace(real_cluster, "realnode-echo")
        _apply(real_cluster, ns, _echo_deployment(real_cluster.node.echo_image, 2), _service())
        wait_until(lambda: len(_ready_pods(real_cluster, ns)) == 2,
                   what="both echo pods Ready through their httpGet probe", timeout_s=90.0)
        pods = _ready_pods(real_cluster, ns)
        names = {pod["metadata"]["name"] for pod in pods}
        assert all(pod["spec"]["nodeName"] == real_cluster.node.name for pod in pods)

        svc = json.loads(real_cluster.plane.kubectl("get", "svc", "echo", "-n", ns,
                                                    "-o", "json").stdout)
        cluster_ip = svc["spec"]["clusterIP"]
        seen: set[str] = set()

        def both_answered() -> bool:
            try:
                seen.add(_get(f"http://{cluster_ip}/"))
            except OSError:
                return False
            return names <= seen

        # kube-proxy picks a backend at random per connection: keep asking until both answer.
        wait_until(both_answered, what=f"the ClusterIP {cluster_ip} to reach both pods",
                   timeout_s=60.0, interval_s=0.05,
                   detail=lambda: f" (answered: {sorted(seen)}, pods: {sorted(names)})")
        assert seen == names

    def test_logs_exec_and_limits_reach_the_container(self, real_cluster: Any) -> None:
        ns = "realnode-echo"
        pods = _ready_pods(real_cluster, ns)
        assert pods, "the routing test starts the echo pods"
        pod = pods[0]
        name = pod["metadata"]["name"]
        exec_out = real_cluster.plane.kubectl("exec", "-n", ns, name, "--", "/pause", "-v")
        assert exec_out.stdout.strip() == "elastiserve-pause"
        real_cluster.plane.kubectl("logs", "-n", ns, name)  # answers (empty log is fine)
        uid = pod["metadata"]["uid"]
        cgroup_root = real_cluster.node.layout.cgroup_root
        limits = list(Path("/sys/fs/cgroup/memory", cgroup_root).rglob(
            f"pod{uid}/memory.limit_in_bytes"))
        assert limits, f"no memory cgroup for pod {uid} under {cgroup_root}"
        assert int(limits[0].read_text()) == 48 * 1024 * 1024

    def test_deleting_the_namespace_stops_the_pods(self, real_cluster: Any) -> None:
        ns = "realnode-echo"
        real_cluster.plane.kubectl("delete", "namespace", ns, "--wait=false")
        wait_until(
            lambda: real_cluster.plane.kubectl("get", "namespace", ns, check=False)
            .returncode != 0,
            what=f"namespace {ns} to be gone", timeout_s=90.0, interval_s=0.5,
        )
        shims = real_cluster.node.ctr("tasks", "ls").stdout.strip().splitlines()[1:]
        running = [line for line in shims if "RUNNING" in line]
        assert not running, f"containers still running after the namespace went: {running}"
