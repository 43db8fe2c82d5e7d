"""metrics-server on the real-node test bed: the resource metrics API a Horizontal Pod
Autoscaler reads (``metrics.k8s.io``: CPU and memory per pod and container).

It runs as a process of the test bed (built by ``hack/build-k8s-assets.sh`` like the other
binaries), inside the test network, on the node's address: it scrapes the real kubelet's
``/metrics/resource`` and is served through the API server's aggregation layer
(:mod:`elastiserve.testing.aggregation`), registered as upstream registers it: an
``APIService`` ``v1beta1.metrics.k8s.io`` whose Service has no selector, with an
EndpointSlice naming the process's address (the API server dials it directly: aggregator
routing). Its identity is its own client certificate, ``system:metrics-server``, with
upstream's RBAC (read nodes and pods, ``nodes/metrics``; delegate authentication and
authorisation to the API server); the API server trusts its serving certificate through the
APIService's CA bundle (the run's CA signed it). It does not verify the kubelet's serving
certificate (``--kubelet-insecure-tls``, as upstream's test manifests do): the kubelet here
signs its own, naming only the node's name, while metrics-server dials the node's address
(there is no DNS for the name); both ends are inside the test bed's own network namespace.

``MetricsServer.start(cluster, run_dir)`` returns once the API answers with the node's usage
(the first two scrapes); ``stop`` unregisters the API first (an unavailable APIService breaks
API discovery, and so namespace deletion and ``kubectl``, for everything after it), then
stops the process. Pure pieces (:func:`metrics_server_argv`, :func:`manifests`) are apart
from starting anything.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from types import TracebackType
from typing import Any

from elastiserve.testing.certs import Pki, _signed_cert, make_client_cert
from elastiserve.testing.errors import ControlPlaneError
from elastiserve.testing.kubeconfig import write_kubeconfig
from elastiserve.testing.ports import free_port
from elastiserve.testing.processes import ManagedProcess, wait_until

BINARY = "metrics-server"
NAMESPACE = "kube-system"
SERVICE = "metrics-server"
USER = "system:metrics-server"
API_SERVICE = "v1beta1.metrics.k8s.io"
RESOLUTION = "10s"
"""metrics-server's scrape interval: its minimum (the HPA reads a usage over that window)."""
KUBELET_TIMEOUT = "5s"
"""Under 90 % of the resolution, as metrics-server requires."""
START_TIMEOUT_S = 90.0


def metrics_server_argv(
    binary: Path, *, node_ip: str, port: int, serving_cert: Path, serving_key: Path,
    kubeconfig: Path,
) -> list[str]:
    """The process's flags: the node's address only, its own certificates and identity."""
    return [
        str(binary),
        f"--bind-address={node_ip}",
        f"--secure-port={port}",
        f"--tls-cert-file={serving_cert}",
        f"--tls-private-key-file={serving_key}",
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--kubelet-preferred-address-types=InternalIP",
        "--kubelet-use-node-status-port",
        "--kubelet-insecure-tls",
        f"--metric-resolution={RESOLUTION}",
        f"--kubelet-request-timeout={KUBELET_TIMEOUT}",
        "--profiling=false",
        "--v=1",
    ]


def manifests(node_ip: str, port: int, ca_bundle: bytes) -> list[dict[str, Any]]:
    """RBAC (upstream's), the selector-less Service, its EndpointSlice and the APIService."""
    user = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": USER},
         "rules": [
             {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
             {"apiGroups": [""], "resources": ["pods", "nodes"],
              "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": USER},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": USER},
         "subjects": user},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding",
         "metadata": {"name": "metrics-server:system:auth-delegator"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:auth-delegator"},
         "subjects": user},
        {"apiVersion": rbac, "kind": "RoleBinding",
         "metadata": {"name": "metrics-server-auth-reader", "namespace": NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "extension-apiserver-authentication-reader"},
         "subjects": user},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": SERVICE, "namespace": NAMESPACE},
         "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP",
                             "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": SERVICE, "namespace": NAMESPACE,
                      "labels": {"kubernetes.io/service-name": SERVICE,
                                 "endpointslice.kubernetes.io/managed-by":
                                     "elastiserve-testbed"}},
         "addressType": "IPv4",
         "endpoints": [{"addresses": [node_ip], "conditions": {"ready": True}}],
         "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": API_SERVICE},
         "spec": {"group": "metrics.k8s.io", "version": "v1beta1",
                  "service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443},
                  "caBundle": base64.b64encode(ca_bundle).decode(),
                  "groupPriorityMinimum": 100, "versionPriority": 100}},
    ]


def _serving_cert(pki: Pki, node_ip: str) -> tuple[Path, Path]:
    """A serving certificate signed by the run's CA, for the names the API server checks."""
    directory = pki.ca_cert.parent
    names = f"DNS:{SERVICE}.{NAMESPACE}.svc,DNS:{SERVICE}.{NAMESPACE}.svc.cluster.local"
    _signed_cert(
        directory, "metrics-server-serving", "/CN=metrics-server",
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName=IP:{node_ip},{names}\n",
    )
    return directory / "metrics-server-serving.crt", directory / "metrics-server-serving.key"


class MetricsServer:
    """A running metrics-server registered with the API server; ``start`` to get one."""

    def __init__(self, cluster: Any, objects: list[dict[str, Any]]) -> None:
        self.cluster = cluster
        self.objects = objects
        self.process: ManagedProcess | None = None
        self._stopped = False

    @classmethod
    def start(cls, cluster: Any, run_dir: Path, *, timeout_s: float = START_TIMEOUT_S
              ) -> MetricsServer:
        """Start it for ``cluster`` (a :class:`~elastiserve.testing.testbed.RealCluster`),
        register the API, and wait until it reports the node's usage."""
        plane, node = cluster.plane, cluster.node
        pki: Pki = plane.layout.pki
        if plane.layout.front_proxy is None:
            raise ControlPlaneError("metrics-server needs the API server's aggregation layer: "
                                    "start the control plane with node_ip (a real node)")
        binary = plane.assets.binary(BINARY)
        run_dir.mkdir(parents=True, exist_ok=True)
        serving_cert, serving_key = _serving_cert(pki, node.ip)
        cert, key = make_client_cert(pki, "metrics-server", USER)
        kubeconfig = write_kubeconfig(run_dir / "kubeconfig", plane.api_url, pki,
                                      cert=cert, key=key)
        port = free_port()
        server = cls(cluster, manifests(node.ip, port, pki.ca_cert.read_bytes()))
        try:
            # Its RBAC first: it reads the request-header CA from a ConfigMap as it starts.
            plane.kubectl("apply", "-f", "-",
                          input=json.dumps({"apiVersion": "v1", "kind": "List",
                                            "items": server.objects}))
            wait_until(lambda: plane.kubectl(
                "auth", "can-i", "get", "configmaps/extension-apiserver-authentication",
                "-n", NAMESPACE, f"--as={USER}", check=False).stdout.strip() == "yes",
                what="the RBAC of metrics-server to take effect", timeout_s=30.0)
            server.process = ManagedProcess.spawn(
                BINARY,
                metrics_server_argv(binary, node_ip=node.ip, port=port,
                                    serving_cert=serving_cert, serving_key=serving_key,
                                    kubeconfig=kubeconfig),
                run_dir / "logs" / f"{BINARY}.log", cwd=run_dir)
            wait_until(server.node_usage_known, what="metrics-server to report the node's usage",
                       timeout_s=timeout_s, watch=[server.process], interval_s=0.5,
                       detail=lambda: f" (APIService: {server._api_condition()})")
        except BaseException:
            server.stop()
            raise
        return server

    def _api_condition(self) -> str:
        done = self.cluster.plane.kubectl(
            "get", "apiservice", API_SERVICE, "-o",
            "jsonpath={.status.conditions[0].reason}: {.status.conditions[0].message}",
            check=False)
        return str(done.stdout.strip() or done.stderr.strip())

    def node_usage_known(self) -> bool:
        """Whether the resource metrics API answers with the node's CPU usage."""
        done = self.cluster.plane.kubectl(
            "get", "--raw", f"/apis/metrics.k8s.io/v1beta1/nodes/{self.cluster.node.name}",
            check=False, timeout_s=10.0)
        if done.returncode != 0:
            return False
        return "cpu" in (json.loads(done.stdout).get("usage") or {})

    def pod_usage(self, namespace: str) -> dict[str, dict[str, str]]:
        """Pod name -> container name -> CPU usage as the API reports it (``12345n``)."""
        done = self.cluster.plane.kubectl(
            "get", "--raw", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
            check=False, timeout_s=10.0)
        if done.returncode != 0:
            return {}
        return {
            item["metadata"]["name"]: {c["name"]: c["usage"]["cpu"]
                                       for c in item.get("containers") or []}
            for item in json.loads(done.stdout).get("items") or []
        }

    def log_tail(self) -> str:
        return self.process.log_tail() if self.process is not None else "(not started)"

    def stop(self) -> None:
        """Unregister (APIService first), remove the objects, stop the process; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        plane = self.cluster.plane
        try:
            for obj in reversed(self.objects):
                meta = obj["metadata"]
                where = ["-n", meta["namespace"]] if "namespace" in meta else []
                plane.kubectl("delete", obj["kind"].lower(), meta["name"], *where,
                              "--ignore-not-found", "--wait=true", "--timeout=30s",
                              check=False, timeout_s=40.0)
        finally:
            if self.process is not None:
                self.process.stop(grace_s=5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
