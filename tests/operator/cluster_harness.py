"""Helpers for operator tests against the real control plane: CRDs, a least-privilege
operator account, the operator as a subprocess, a latency exporter the test controls."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

import elastiserve_operator
from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.ports import free_port

PKG = Path(elastiserve_operator.__file__).parent
CRD = PKG / "crd" / "elasticmodels.yaml"
PEERING_CRD = PKG / "crd" / "kopf-peering.yaml"
CLUSTER_ROLE = PKG / "rbac" / "operator-clusterrole.yaml"
OPERATOR_NS = "elastiserve-system"
OPERATOR_SA = "elastiserve-operator"
GROUP, VERSION, PLURAL = "elastiserve.io", "v1alpha1", "elasticmodels"


def wait_for(
    check: Callable[[], Any], what: str, timeout_s: float = 30.0, every_s: float = 0.2,
    show: Callable[[], Any] | None = None,
) -> Any:
    """Poll ``check`` until truthy; on timeout, say what ``show`` returns (the state that
    a bare ``False`` from ``check`` would hide)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    seen = f"; state: {show()!r}" if show is not None else ""
    raise AssertionError(
        f"timed out after {timeout_s:.0f}s waiting for {what}; last: {last!r}{seen}"
    )


def install(plane: ControlPlane) -> None:
    """CRDs, the operator's ClusterRole, its ServiceAccount and binding (idempotent)."""
    plane.kubectl("apply", "-f", str(CRD), "-f", str(PEERING_CRD), "-f", str(CLUSTER_ROLE))
    plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                  "crd/elasticmodels.elastiserve.io", "crd/clusterkopfpeerings.kopf.dev",
                  "crd/kopfpeerings.kopf.dev")
    extra = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NS}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "elastiserve-operator"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                         "name": "elastiserve-operator"},
             "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA,
                           "namespace": OPERATOR_NS}]},
        ],
    }
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(extra))


def token_kubeconfig(
    plane: ControlPlane, kube_client: Any, namespace: str, account: str, path: Path
) -> Path:
    """A kubeconfig that authenticates as ``namespace/account`` with a TokenRequest token."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(kube_client)
    request = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
    )
    token = core.create_namespaced_service_account_token(account, namespace, request)
    admin = yaml.safe_load(plane.kubeconfig_path.read_text())
    cluster = dict(admin["clusters"][0]["cluster"])
    if "certificate-authority" in cluster:
        ca = Path(cluster.pop("certificate-authority")).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token.status.token}}],  # type: ignore[union-attr]
        "contexts": [{"name": "ctx", "context": {"cluster": "local", "user": account}}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


HARNESS_TENANCY = {
    "ELASTISERVE_HOST_PATH_ENABLED": "true",
    "ELASTISERVE_ALLOWED_HOST_PATHS": '["/models", "/m"]',
}
"""The operator's default refuses every ``localPath``; the cluster tests, the e2e test and
the footprint benchmark name archives under these two directories (kwok never mounts them).
A test of the refusal passes its own settings in ``extra_env``."""


@dataclass
class OperatorProcess:
    """``python -m elastiserve_operator`` with the least-privilege kubeconfig."""

    kubeconfig: Path
    log_path: Path
    prometheus_url: str
    namespaces: tuple[str, ...] = ()
    peering: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ELASTISERVE_")}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            ELASTISERVE_PROMETHEUS_URL=self.prometheus_url,
            ELASTISERVE_METRICS_PORT=str(self.metrics_port),
            ELASTISERVE_LIVENESS_ENDPOINT=f"http://127.0.0.1:{self.liveness_port}/healthz",
            ELASTISERVE_NAMESPACES=",".join(self.namespaces),
            ELASTISERVE_PEERING=self.peering,
            ELASTISERVE_PROMETHEUS_TIMEOUT_SECONDS="2",
        )
        env.update({**HARNESS_TENANCY, **self.extra_env})
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "elastiserve_operator"],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class LatencyExporter:
    """Serves the metrics the operator's default queries read, at a latency the test sets.

    A background thread records ``rate_rps`` requests per second, each taking
    ``latency_s``, into the same names and labels the serving side exports.
    """

    def __init__(self, namespace: str, model: str, rate_rps: float = 20.0) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "elastiserve_request_latency_seconds", "request latency",
            ["namespace", "ModelName"], registry=self.registry,
        )
        self.requests = Counter(
            "ts_inference_requests", "requests received",
            ["namespace", "model_name"], registry=self.registry,
        )
        self.labels = (namespace, model)
        self.latency_s = 0.01
        self.rate_rps = rate_rps
        self.port = free_port()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LatencyExporter:
        start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            step = 0.1
            for _ in range(max(1, round(self.rate_rps * step))):
                self.latency.labels(*self.labels).observe(self.latency_s)
                self.requests.labels(*self.labels).inc()
            self._stop.wait(step)

    def stop(self) -> None:
        self._stop.set()
