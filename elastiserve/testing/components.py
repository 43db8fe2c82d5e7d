"""Command lines of the control-plane components, kept apart from starting them.

Pure functions from a ``Layout`` (paths and ports) to argv lists, so that the flags can be read
and reviewed in one place, and tested without starting anything. The choices favour a fast,
single-member, loopback-only cluster that still behaves like a real one where our operator
looks: admission, RBAC, CRD validation, garbage collection, scheduling and node lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from elastiserve.testing.aggregation import FrontProxyPki, apiserver_flags
from elastiserve.testing.certs import Pki
from elastiserve.testing.ports import LOOPBACK

ETCD = "etcd"
APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
KWOK = "kwok"
KUBECTL = "kubectl"
HELM = "helm"

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR: the `kubernetes` Service
POD_CIDR = "10.244.0.0/16"

# Controllers that matter to an operator's tests, and nothing else (a 2-core CI machine pays
# for every informer). node-lifecycle-controller removes the not-ready taint the API server
# puts on new nodes and reacts to kwok's node leases; the others make Deployments, Services,
# ServiceAccounts, namespaces and owner-reference garbage collection behave as in a cluster.
CONTROLLERS = (
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "pod-garbage-collector-controller",
    "node-lifecycle-controller",
    "disruption-controller",
    "service-cidr-controller",
    # PersistentVolumeClaims bind to the PersistentVolumes the real-node tests create, and the
    # protection controllers remove the finalizers every claim and volume is created with
    # (without them, deleting a namespace that holds a claim never completes).
    "persistentvolume-binder-controller",
    "persistentvolumeclaim-protection-controller",
    "persistentvolume-protection-controller",
)

# With a real node only: the HPA controller, syncing every few seconds instead of 15 so that a
# test of an HPA takes tens of seconds. The kwok plane leaves it out: its tests write what an
# HPA would, and an HPA with no metrics there would still enforce its minReplicas.
AUTOSCALING_CONTROLLERS = ("horizontal-pod-autoscaler-controller",)
HPA_SYNC_PERIOD = "3s"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int


@dataclass(frozen=True)
class Layout:
    """Where one control plane keeps its files, and which ports it listens on."""

    run_dir: Path
    ports: Ports
    pki: Pki
    node_ip: str | None = None
    """The real node's address: set when a kubelet joins, so that pods reach the API server."""
    front_proxy: FrontProxyPki | None = None
    """The aggregation layer's certificates (:mod:`elastiserve.testing.aggregation`): set with
    a real node, where metrics-server serves the HPA through the API server."""

    @property
    def etcd_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.etcd_client}"

    @property
    def api_url(self) -> str:
        return f"https://{LOOPBACK}:{self.ports.apiserver}"

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "kubeconfig"

    @property
    def kwok_config(self) -> Path:
        return self.run_dir / "kwok.yaml"

    def log(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{name}.log"


def etcd_argv(binary: Path, lay: Layout) -> list[str]:
    peer = f"http://{LOOPBACK}:{lay.ports.etcd_peer}"
    return [
        str(binary),
        "--name=elastiserve",
        f"--data-dir={lay.run_dir / 'etcd'}",
        f"--listen-client-urls={lay.etcd_url}",
        f"--advertise-client-urls={lay.etcd_url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=elastiserve={peer}",
        "--initial-cluster-state=new",
        # A test cluster lives for minutes and is thrown away: fsync only costs time.
        "--unsafe-no-fsync=true",
        "--log-level=warn",
    ]


def apiserver_argv(binary: Path, lay: Layout) -> list[str]:
    """The API server's flags; with a real node it also listens on the node's address.

    That address exists only inside the test bed's own network namespace, so "all addresses"
    there is still nothing reachable from outside. The ``kubernetes`` Service's endpoint is
    the advertised address, which is how pods (the operator, the level agent) reach the API.
    The server talks to the kubelet (logs, exec, port-forward) with the admin certificate.
    """
    pki = lay.pki
    if lay.node_ip is None:
        network = [f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}"]
    else:
        network = [
            "--bind-address=0.0.0.0",
            f"--advertise-address={lay.node_ip}",
            f"--kubelet-client-certificate={pki.admin_cert}",
            f"--kubelet-client-key={pki.admin_key}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
    return [
        str(binary),
        f"--etcd-servers={lay.etcd_url}",
        *network,
        f"--secure-port={lay.ports.apiserver}",
        f"--cert-dir={lay.run_dir / 'apiserver'}",
        f"--tls-cert-file={pki.server_cert}",
        f"--tls-private-key-file={pki.server_key}",
        f"--client-ca-file={pki.ca_cert}",
        # Node: a kubelet's own certificate grants exactly what its pods need (upstream's set).
        "--authorization-mode=Node,RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allow-privileged=true",
        *(apiserver_flags(lay.front_proxy) if lay.front_proxy is not None else []),
        "--profiling=false",
        "--v=1",
    ]


def _client_component_args(lay: Layout, port: int, cert_dir: str) -> list[str]:
    """What kube-controller-manager and kube-scheduler share: one kubeconfig for the API and
    for authenticating/authorising their own (loopback) health endpoints."""
    kubeconfig = str(lay.kubeconfig)
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--bind-address={LOOPBACK}",
        f"--secure-port={port}",
        f"--cert-dir={lay.run_dir / cert_dir}",
    ]


def controller_manager_argv(binary: Path, lay: Layout) -> list[str]:
    autoscaling = lay.node_ip is not None
    controllers = (*CONTROLLERS, *AUTOSCALING_CONTROLLERS) if autoscaling else CONTROLLERS
    hpa = [f"--horizontal-pod-autoscaler-sync-period={HPA_SYNC_PERIOD}"] if autoscaling else []
    return [
        str(binary),
        *_client_component_args(lay, lay.ports.controller_manager, "kcm"),
        f"--controllers={','.join(controllers)}",
        *hpa,
        f"--service-account-private-key-file={lay.pki.sa_key}",
        f"--root-ca-file={lay.pki.ca_cert}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def scheduler_argv(binary: Path, lay: Layout) -> list[str]:
    return [
        str(binary),
        *_client_component_args(lay, lay.ports.scheduler, "scheduler"),
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def kwok_argv(binary: Path, lay: Layout, node_selector: str) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={lay.kubeconfig}",
        f"--config={lay.kwok_config}",
        f"--manage-nodes-with-annotation-selector={node_selector}",
        f"--server-address={LOOPBACK}:{lay.ports.kwok}",
        f"--cidr={POD_CIDR}",
        "--node-ip=10.0.0.1",
        "--node-lease-duration-seconds=40",
    ]
