"""The fake nodes of the test bed: a k3s edge pool of Jetson boards and one x86 server.

The operator's decisions depend on where replicas run (a Jetson Orin Nano has a quarter of an
AGX Orin's memory) and on node labels, taints and allocatable resources, so the fake nodes carry
the numbers of real boards. kwok marks them Ready and runs every pod scheduled onto them;
nothing actually executes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
POOL_LABEL = "elastiserve.io/pool"
JETSON_MODEL_LABEL = "nvidia.com/jetson.model"
EDGE_TAINT_KEY = POOL_LABEL
EDGE_POOL = "edge"
SERVER_POOL = "server"
GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class FakeNode:
    """What one fake node claims to be: capacity, what is left after system reservations, labels."""

    name: str
    arch: str
    cpu_cores: int
    memory_gib: int
    allocatable_cpu: str
    allocatable_memory: str
    gpus: int = 0
    internal_ip: str = "10.0.0.1"
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    os_image: str = "Debian GNU/Linux 12 (bookworm)"
    kernel: str = "6.1.0-37-amd64"
    kubelet_version: str = "v1.36.3"
    ephemeral_storage_gib: int = 100

    def manifest(self) -> dict[str, Any]:
        """The Node object, status included: the API server keeps a node's status on create."""
        labels = {
            "kubernetes.io/arch": self.arch,
            "kubernetes.io/os": "linux",
            "kubernetes.io/hostname": self.name,
            "type": "kwok",
            **self.labels,
        }
        capacity = {
            "cpu": str(self.cpu_cores),
            "memory": f"{self.memory_gib}Gi",
            "pods": "110",
            "ephemeral-storage": f"{self.ephemeral_storage_gib}Gi",
        }
        allocatable = {
            **capacity,
            "cpu": self.allocatable_cpu,
            "memory": self.allocatable_memory,
        }
        if self.gpus:
            capacity[GPU_RESOURCE] = str(self.gpus)
            allocatable[GPU_RESOURCE] = str(self.gpus)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE},
            },
            "spec": {"taints": [dict(taint) for taint in self.taints]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": self.internal_ip},
                    {"type": "Hostname", "address": self.name},
                ],
                "capacity": capacity,
                "allocatable": allocatable,
                "nodeInfo": {
                    "architecture": self.arch,
                    "operatingSystem": "linux",
                    "osImage": self.os_image,
                    "kernelVersion": self.kernel,
                    "kubeletVersion": self.kubelet_version,
                    "containerRuntimeVersion": "containerd://2.0.5",
                    "kubeProxyVersion": "",
                    "machineID": "",
                    "systemUUID": "",
                    "bootID": "",
                },
            },
        }


EDGE_TAINT = {"key": EDGE_TAINT_KEY, "value": EDGE_POOL, "effect": "NoSchedule"}


def jetson(
    name: str, model: str, cores: int, memory_gib: int, gpu_cores: int, internal_ip: str
) -> FakeNode:
    """A Jetson Orin module running k3s with JetPack 6.

    k3s reserves nothing by default, but the board's OS, display stack and the CUDA context
    share the same LPDDR5, so about 1.5 GiB of memory and half a core are kept back here.
    """
    return FakeNode(
        name=name,
        arch="arm64",
        cpu_cores=cores,
        memory_gib=memory_gib,
        allocatable_cpu=f"{cores * 1000 - 500}m",
        allocatable_memory=f"{memory_gib * 1024 - 1536}Mi",
        gpus=1,
        internal_ip=internal_ip,
        labels={
            "node.kubernetes.io/instance-type": "k3s",
            POOL_LABEL: EDGE_POOL,
            JETSON_MODEL_LABEL: model,
            "nvidia.com/gpu.family": "ampere",
            "nvidia.com/gpu.count": "1",
            "nvidia.com/gpu.cores": str(gpu_cores),
        },
        taints=(EDGE_TAINT,),
        os_image="Ubuntu 22.04.5 LTS (JetPack 6.2)",
        kernel="5.15.148-tegra",
        kubelet_version="v1.36.3+k3s1",
        ephemeral_storage_gib=64,
    )


def default_nodes() -> tuple[FakeNode, ...]:
    """Three Jetson Orin boards (AGX 32 GB, NX 16 GB, Nano 8 GB) and one x86 server."""
    return (
        jetson(
            "jetson-agx-orin-0", "agx-orin-32gb",
            cores=8, memory_gib=32, gpu_cores=1792, internal_ip="10.0.0.11",
        ),
        jetson(
            "jetson-orin-nx-0", "orin-nx-16gb",
            cores=8, memory_gib=16, gpu_cores=1024, internal_ip="10.0.0.12",
        ),
        jetson(
            "jetson-orin-nano-0", "orin-nano-8gb",
            cores=6, memory_gib=8, gpu_cores=1024, internal_ip="10.0.0.13",
        ),
        FakeNode(
            name="server-0",
            arch="amd64",
            cpu_cores=16,
            memory_gib=64,
            allocatable_cpu="15500m",
            allocatable_memory=f"{64 * 1024 - 2048}Mi",
            internal_ip="10.0.0.21",
            labels={
                "node.kubernetes.io/instance-type": "x86-server",
                POOL_LABEL: SERVER_POOL,
            },
        ),
    )
