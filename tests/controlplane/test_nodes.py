"""The fake node pool: real board numbers, and manifests kwok will manage."""

from __future__ import annotations

from elastiserve.testing.kwok_nodes import (
    EDGE_TAINT,
    GPU_RESOURCE,
    JETSON_MODEL_LABEL,
    KWOK_ANNOTATION,
    default_nodes,
)


def test_pool_is_three_jetsons_and_one_server() -> None:
    nodes = default_nodes()
    jetsons = [n for n in nodes if n.arch == "arm64"]
    servers = [n for n in nodes if n.arch == "amd64"]
    assert len(jetsons) == 3 and len(servers) == 1
    assert {n.labels[JETSON_MODEL_LABEL] for n in jetsons} == {
        "agx-orin-32gb",
        "orin-nx-16gb",
        "orin-nano-8gb",
    }
    assert all(n.gpus == 1 and n.taints == (EDGE_TAINT,) for n in jetsons)
    assert servers[0].gpus == 0 and servers[0].taints == ()
    assert len({n.internal_ip for n in nodes}) == len(nodes)


def test_manifest_carries_what_the_scheduler_and_kwok_read() -> None:
    nano = next(n for n in default_nodes() if n.name == "jetson-orin-nano-0")
    manifest = nano.manifest()
    assert manifest["metadata"]["annotations"] == {KWOK_ANNOTATION: "fake"}
    labels = manifest["metadata"]["labels"]
    assert labels["kubernetes.io/arch"] == "arm64"
    assert labels["node.kubernetes.io/instance-type"] == "k3s"
    status = manifest["status"]
    assert status["capacity"] == {
        "cpu": "6",
        "memory": "8Gi",
        "pods": "110",
        "ephemeral-storage": "64Gi",
        GPU_RESOURCE: "1",
    }
    # Allocatable is what the scheduler fits pods into: less than the board has.
    assert status["allocatable"]["cpu"] == "5500m"
    assert status["allocatable"]["memory"] == "6656Mi"
    assert manifest["spec"]["taints"] == [EDGE_TAINT]
