"""A real Horizontal Pod Autoscaler aimed at an ElasticModel, on the real node (issue 21 item 4).

Everything here is the real thing: the HPA controller of kube-controller-manager, metrics-server
(the resource metrics API, through the API server's aggregation layer) reading the real
kubelet, the operator (as a process, with its least-privilege account) reading a real
Prometheus that scrapes the serving pods, and TorchServe in the product's serving image. The
HPA targets the model's ``scale`` subresource on the serving container's CPU (what
metrics-server serves; a request-rate metric would need a metrics adapter the test bed does
not run).

What it shows, from watches on the API (wall-clock times of this process):

* no fight: the model's ``spec.replicas`` is written only by the HPA (field manager
  ``kube-controller-manager``, subresource ``scale``) and never by the operator; the serving
  Deployment's ``spec.replicas`` takes exactly the values the HPA set, in order, with no
  value in between or back (no flapping); the operator reports ``status.replicasOwner:
  autoscaler:kube-controller-manager`` (an HPA aimed at the *model* writes the spec through
  its scale subresource, and the model's managedFields name it: ``docs/autoscaling.md``);
* a load step through the model's Service is met by narrowing first (``status.activeLevel``
  drops within seconds, from the operator's p95) and by replicas after (the HPA's
  ``SuccessfulRescale`` 1 -> 2, tens of seconds later, once metrics-server has a CPU window
  of the loaded pod), and the new replica becomes Ready.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from elastiserve.testing.metrics_server import MetricsServer
from elastiserve.testing.pod_discovery import discover_pods
from elastiserve.testing.processes import wait_until
from elastiserve.testing.prometheus import PrometheusServer, file_sd_job, run_prometheus
from elastiserve_operator.signals.prometheus import end_to_end_latency_query
from elastiserve_serve.loadgen import Result, Target
from tests.operator.cluster_harness import CLUSTER_ROLE, CRD, PEERING_CRD, OperatorProcess
from tests.serving.bundles import make_bundle
from tests.serving.tiny import png_bytes

pytestmark = [
    pytest.mark.controlplane,
    pytest.mark.realnode,
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

NS = "hpa"
OPERATOR_NS = "hpa-operator"
ACCOUNT = "elastiserve-operator-hpa"
MODEL = "hpamodel"
LEVELS = ("L0-25pct", "L1-50pct", "L2-75pct", "L3-100pct")
FULL = len(LEVELS) - 1
WINDOW_S = 5
CPU_REQUEST_M = 250
"""The serving container's CPU request: the HPA's utilisation is usage over it."""
TARGET_UTILISATION = 100
"""An idle TorchServe uses a few per cent of the request; the load step uses several times it."""
LOAD_RPS = 400.0


# ----------------------------------------------------------------------- watches


@dataclass
class Series:
    """Values of one field of one object, each with the wall-clock time a watch saw it."""

    values: list[tuple[float, str]] = field(default_factory=list)

    def last(self) -> str | None:
        return self.values[-1][1] if self.values else None

    def first_time(self, predicate: Any) -> float | None:
        return next((at for at, value in self.values if predicate(value)), None)

    def distinct(self) -> list[str]:
        return [value for _, value in self.values]


def watch_field(cluster: Any, stop: threading.Event, kind: str, name: str, path: str) -> Series:
    """Follow one field with ``kubectl get -w`` (the API's watch) in a thread; a value is
    recorded when it differs from the last one. The watch is restarted when it ends (the
    object does not exist yet, or the server closed it)."""
    series = Series()
    kubectl = cluster.plane.assets.binary("kubectl")
    argv = [str(kubectl), f"--kubeconfig={cluster.plane.kubeconfig_path}", "-n", NS, "get",
            kind, name, "-w", "-o", f"jsonpath={{{path}}}{{\"\\n\"}}"]

    current: list[subprocess.Popen[str]] = []

    def run() -> None:
        while not stop.is_set():
            with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True) as proc:
                current[:] = [proc]
                if stop.is_set():  # told while this one was starting
                    proc.terminate()
                assert proc.stdout is not None
                for line in proc.stdout:
                    text = line.strip()
                    if text and text != series.last():
                        series.values.append((time.time(), text))
            stop.wait(0.5)

    def stop_when_told() -> None:
        stop.wait()
        for proc in current:
            proc.terminate()

    threading.Thread(target=run, daemon=True).start()
    threading.Thread(target=stop_when_told, daemon=True).start()
    return series


def open_loop(target: Target, body: bytes, rate_rps: float, stop: threading.Event,
              results: list[Result], max_in_flight: int = 48) -> None:
    """Arrivals at ``rate_rps`` until ``stop``; an arrival that finds ``max_in_flight``
    requests outstanding is shed (status -1) instead of queued, so that stopping waits for at
    most ``max_in_flight`` answers, not for a backlog the overload has built."""
    slots = threading.BoundedSemaphore(max_in_flight)
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    with httpx.Client(timeout=30.0, limits=limits) as client, \
            ThreadPoolExecutor(max_in_flight) as pool:

        def send(due: float) -> None:
            try:
                reply = client.post(target.url, content=body, headers=dict(target.headers))
                status, level = reply.status_code, reply.headers.get("x-elastiserve-level")
            except httpx.HTTPError:
                status, level = 0, None
            finally:
                slots.release()
            results.append(Result(due, time.monotonic(), status, level))

        start = time.monotonic()
        arrival = 0
        while not stop.is_set():
            due = start + arrival / rate_rps
            arrival += 1
            stop.wait(max(0.0, due - time.monotonic()))
            if slots.acquire(blocking=False):
                pool.submit(send, due)
            else:
                results.append(Result(due, due, -1, None))


def kubectl_json(cluster: Any, *args: str) -> Any:
    return json.loads(cluster.plane.kubectl(*args, "-o", "json").stdout)


def replica_managers(obj: dict[str, Any]) -> set[tuple[str, str]]:
    """(manager, subresource) of every managedFields entry that owns ``spec.replicas``."""
    return {(e["manager"], e.get("subresource") or "")
            for e in obj["metadata"].get("managedFields") or []
            if "f:replicas" in ((e.get("fieldsV1") or {}).get("f:spec") or {})}


def ready_pods(cluster: Any) -> list[str]:
    pods = kubectl_json(cluster, "-n", NS, "get", "pods", "-l",
                        f"elastiserve.io/model={MODEL}")["items"]
    return [pod["metadata"]["name"] for pod in pods
            if pod["metadata"].get("deletionTimestamp") is None and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions") or [])]


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def metrics_server(real_cluster: Any, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[MetricsServer]:
    with MetricsServer.start(real_cluster, tmp_path_factory.mktemp("metrics-server")) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(real_cluster: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the annotated pods the API lists."""
    work = tmp_path_factory.mktemp("hpa-prometheus")

    def list_pods() -> list[dict[str, Any]]:
        listed = real_cluster.plane.kubectl("get", "pods", "-n", NS, "-o", "json",
                                            timeout_s=20, check=False)
        if listed.returncode != 0:
            return []
        items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
        return items

    with discover_pods(list_pods, work / "targets" / "pods.json") as targets, \
            run_prometheus(work / "server", [], extra_jobs=[file_sd_job(targets)]) as server:
        yield server


@pytest.fixture(scope="module")
def mar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated 4-level bundle, archived as ``elastiserve archive`` does; readable by
    the serving pod's user (it is mounted as a single file: hostPath)."""
    work = tmp_path_factory.mktemp("hpa-model")
    bundle = make_bundle(work / "bundle", ratios=(0.25, 0.5, 0.75, 1.0), names=LEVELS, size=28)
    done = subprocess.run([sys.executable, "-m", "elastiserve.cli", "archive", str(bundle),
                           "--name", MODEL, "--export-path", str(work / "mar")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    path = work / "mar" / f"{MODEL}.mar"
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def operator(real_cluster: Any, product_images_on_node: Any, mar: Path,
             prometheus: PrometheusServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    """The operator as a process with its least-privilege account (a ClusterRole of its own
    name, so that nothing here collides with the chart the quick-start test installs), for
    namespace ``hpa`` only; removed with everything it made afterwards."""
    plane = real_cluster.plane
    work = tmp_path_factory.mktemp("hpa-operator")
    role = yaml.safe_load(CLUSTER_ROLE.read_text(encoding="utf-8"))
    role["metadata"]["name"] = ACCOUNT
    account = [
        role,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": ACCOUNT, "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": ACCOUNT},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": ACCOUNT},
         "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": OPERATOR_NS}]},
    ]
    process: OperatorProcess | None = None
    try:
        plane.kubectl("apply", "--server-side", "-f", str(CRD), "-f", str(PEERING_CRD))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                      "crd/elasticmodels.elastiserve.io")
        plane.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(account))
        wait_until(lambda: plane.kubectl("-n", OPERATOR_NS, "get", "sa", ACCOUNT, check=False)
                   .returncode == 0, what="the operator's ServiceAccount", timeout_s=30.0)
        token = plane.kubectl("-n", OPERATOR_NS, "create", "token", ACCOUNT,
                              "--duration=2h").stdout.strip()
        admin = yaml.safe_load(plane.kubeconfig_path.read_text(encoding="utf-8"))
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": ACCOUNT, "user": {"token": token}}],
            "contexts": [{"name": "ctx", "context": {"cluster": admin["clusters"][0]["name"],
                                                     "user": ACCOUNT}}],
            "current-context": "ctx",
        }), encoding="utf-8")
        kubeconfig.chmod(0o600)
        settings = {
            "ELASTISERVE_SERVING_IMAGE": product_images_on_node["serving"].ref,
            "ELASTISERVE_SERVING_IMAGE_PULL_POLICY": "Never",
            "ELASTISERVE_ALLOWED_HOST_PATHS": json.dumps([str(mar.parent)]),
        }
        process = OperatorProcess(kubeconfig, work / "operator.log", prometheus.url,
                                  namespaces=(NS,), extra_env=settings).start()
        yield process
    finally:
        plane.kubectl("-n", NS, "delete", "hpa,elasticmodel", "--all", "--wait=true",
                      "--timeout=120s", check=False, timeout_s=130)
        if process is not None:
            process.stop()
            print("operator log tail:\n" + process.log_tail())
        plane.kubectl("delete", "namespace", NS, OPERATOR_NS, "--ignore-not-found",
                      "--timeout=120s", check=False, timeout_s=130)
        plane.kubectl("delete", "clusterrolebinding,clusterrole", ACCOUNT,
                      "--ignore-not-found", check=False)
        # The quick-start test that follows on this cluster installs them with the chart.
        plane.kubectl("delete", "-f", str(CRD), "-f", str(PEERING_CRD), "--ignore-not-found",
                      "--timeout=60s", check=False, timeout_s=70)


# ----------------------------------------------------------------------- the test


def model_manifest(mar: Path) -> dict[str, Any]:
    return {
        "apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
        "metadata": {"name": MODEL, "namespace": NS},
        "spec": {
            "model": {"levelCount": len(LEVELS), "source": {"localPath": str(mar)}},
            "objective": {
                "p95Ms": 150,
                "latencyQuery": end_to_end_latency_query(f"{WINDOW_S}s"),
                "requestRateQuery": (
                    'sum(rate(ts_inference_requests_total{namespace="$namespace",'
                    f'model_name="$model"}}[{WINDOW_S}s]))'),
            },
            "replicas": 1,
            "serving": {"workers": 1, "batchSize": 4, "maxBatchDelayMs": 5,
                        "resources": {"requests": {"cpu": f"{CPU_REQUEST_M}m",
                                                   "memory": "512Mi"},
                                      "limits": {"memory": "2Gi"}}},
            # Windows of seconds, as the quick-start test uses (minutes in production).
            "policy": {"mode": "Step", "evaluationIntervalSeconds": 1, "stableWindowSeconds": 6,
                       "panicWindowSeconds": 2, "panicThreshold": 2.0, "tolerance": 0.1,
                       "headroom": 0.2, "widenStabilizationSeconds": 8,
                       "settleSeconds": WINDOW_S + 1, "staleAfterSeconds": 10},
            "nodePressure": {"enabled": False},
        },
    }


def hpa_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": MODEL, "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
                               "name": MODEL},
            "minReplicas": 1, "maxReplicas": 2,
            "metrics": [{"type": "ContainerResource", "containerResource": {
                "name": "cpu", "container": "torchserve",
                "target": {"type": "Utilization", "averageUtilization": TARGET_UTILISATION}}}],
        },
    }


def hpa_status(cluster: Any) -> dict[str, Any]:
    return dict(kubectl_json(cluster, "-n", NS, "get", "hpa", MODEL).get("status") or {})


def hpa_condition(cluster: Any, kind: str) -> dict[str, Any]:
    found = {c["type"]: c for c in hpa_status(cluster).get("conditions") or []}
    return dict(found.get(kind) or {})


def test_an_hpa_on_the_model_and_the_operator_meet_a_load_step_without_fighting(
    real_cluster: Any, metrics_server: MetricsServer, operator: OperatorProcess, mar: Path,
) -> None:
    cluster, plane = real_cluster, real_cluster.plane
    started = time.monotonic()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.monotonic() - started, 1)

    stop = threading.Event()
    level = watch_field(cluster, stop, "elasticmodel", MODEL, ".status.activeLevel")
    spec_replicas = watch_field(cluster, stop, "elasticmodel", MODEL, ".spec.replicas")
    deployment = watch_field(cluster, stop, "deployment", f"{MODEL}-serving", ".spec.replicas")
    loader_stop = threading.Event()
    results: list[Result] = []
    loader: threading.Thread | None = None

    def state() -> str:
        return (f" (level {level.values}, model replicas {spec_replicas.values}, deployment "
                f"{deployment.values}, hpa {hpa_status(cluster)}, usage "
                f"{metrics_server.pod_usage(NS)})")

    try:
        plane.kubectl("apply", "-f", "-", input=json.dumps(model_manifest(mar)))
        wait_until(lambda: len(ready_pods(cluster)) == 1,
                   what="the serving pod Ready through its probes", timeout_s=180.0,
                   interval_s=0.5, detail=lambda: f"\n{operator.log_tail()}")
        mark("first replica Ready")
        wait_until(lambda: level.last() == str(FULL), what="the full level in status",
                   timeout_s=60.0)
        # The HPA once metrics-server has a window of the pod, Ready: it must hold the count.
        wait_until(lambda: "torchserve" in next(iter(metrics_server.pod_usage(NS).values()), {}),
                   what="metrics-server to report the serving container", timeout_s=60.0)
        plane.kubectl("apply", "-f", "-", input=json.dumps(hpa_manifest()))
        wait_until(lambda: hpa_condition(cluster, "ScalingActive").get("status") == "True"
                   and bool(hpa_status(cluster).get("currentMetrics")),
                   what="the HPA to read the container's CPU", timeout_s=60.0, interval_s=0.5,
                   detail=state)
        mark("HPA reading CPU")
        idle = hpa_status(cluster)
        assert idle.get("desiredReplicas") == 1, idle

        # The load step, through the model's Service (kube-proxy), with the model's one key.
        key = base64.b64decode(kubectl_json(cluster, "-n", NS, "get", "secret",
                                            f"{MODEL}-inference-key")["data"]["key"]).decode()
        service = kubectl_json(cluster, "-n", NS, "get", "service", MODEL)
        target = Target(f"http://{service['spec']['clusterIP']}:8080/predictions/{MODEL}",
                        {"Authorization": f"Bearer {key}", "Content-Type": "image/png"})
        load_started = time.time()
        mark("load step")
        loader = threading.Thread(target=open_loop, args=(
            target, png_bytes(28, 28), LOAD_RPS, loader_stop, results), daemon=True)
        loader.start()
        wait_until(lambda: spec_replicas.last() == "2", what="the HPA to scale the model to 2",
                   timeout_s=150.0, interval_s=0.5, detail=state)
        narrowed_at = level.first_time(lambda v: int(v) < FULL)
        scaled_at = spec_replicas.first_time(lambda v: v == "2")
        assert narrowed_at is not None, f"the model never narrowed{state()}"
        assert scaled_at is not None
        # Narrowing first, replicas after.
        assert narrowed_at < scaled_at, state()
        loader_stop.set()
        loader.join(timeout=60)
        mark("HPA wrote 2, load stopped")
        wait_until(lambda: len(ready_pods(cluster)) == 2, what="the second replica Ready",
                   timeout_s=180.0, interval_s=0.5, detail=state)
        wait_until(lambda: (kubectl_json(cluster, "-n", NS, "get", "elasticmodel", MODEL)
                            .get("status") or {}).get("replicas") == 2,
                   what="the model's scale status to count both replicas", timeout_s=60.0,
                   detail=state)
        mark("second replica Ready")
    finally:
        loader_stop.set()
        if loader is not None:
            loader.join(timeout=60)
        stop.set()

    # No fight: the HPA alone wrote the model's count, the Deployment took exactly its values.
    model = kubectl_json(cluster, "-n", NS, "get", "elasticmodel", MODEL,
                         "--show-managed-fields")
    writers = replica_managers(model)
    assert ("kube-controller-manager", "scale") in writers, writers
    assert not {m for m, _ in writers} & {"elastiserve-operator", "elastiserve-policy"}, writers
    assert spec_replicas.distinct() == ["1", "2"], spec_replicas.values
    assert deployment.distinct() == ["1", "2"], deployment.values
    served = kubectl_json(cluster, "-n", NS, "get", "deployment", f"{MODEL}-serving",
                          "--show-managed-fields")
    assert served["spec"]["replicas"] == 2
    assert {m for m, _ in replica_managers(served)} == {"elastiserve-operator"}
    assert model["status"]["replicasOwner"] == "autoscaler:kube-controller-manager"
    events = kubectl_json(cluster, "-n", NS, "get", "events", "--field-selector",
                          f"involvedObject.kind=HorizontalPodAutoscaler,"
                          f"involvedObject.name={MODEL}")["items"]
    rescales = [e["message"] for e in events if e["reason"] == "SuccessfulRescale"]
    assert len(rescales) == 1 and rescales[0].startswith("New size: 2"), rescales
    answered = [r for r in results if r.status == 200]
    failed = [r for r in results if r.status not in (200, -1)]
    assert answered, "the load step got no answer"
    assert not failed, f"{len(failed)} requests failed: {sorted({r.status for r in failed})}"
    print(f"load started at +0 s; narrowed to {level.distinct()} at "
          f"+{narrowed_at - load_started:.1f} s; HPA wrote 2 at +{scaled_at - load_started:.1f} s"
          f" ({rescales[0]}); {len(answered)} requests answered, "
          f"{len(results) - len(answered)} shed at the client's in-flight cap; "
          f"test body {time.monotonic() - started:.1f} s; phases at s: {phases}")


def test_only_the_real_node_plane_runs_the_hpa_controller_and_the_aggregation_layer(
    tmp_path: Path,
) -> None:
    """The kwok plane's tests write what an HPA would, and an HPA controller there (no
    metrics) would still enforce minReplicas: it must stay off there."""
    from elastiserve.testing import components as comp
    from elastiserve.testing.aggregation import FrontProxyPki
    from elastiserve.testing.certs import Pki

    pki = Pki(*(tmp_path / name for name in "abcdefgh"))
    ports = comp.Ports(1, 2, 3, 4, 5, 6)
    front = FrontProxyPki(tmp_path / "fp-ca", tmp_path / "fp-crt", tmp_path / "fp-key")
    kwok = comp.Layout(run_dir=tmp_path, ports=ports, pki=pki)
    real = comp.Layout(run_dir=tmp_path, ports=ports, pki=pki, node_ip="10.213.0.2",
                       front_proxy=front)
    binary = tmp_path / "bin"

    def controllers(lay: comp.Layout) -> list[str]:
        argv = comp.controller_manager_argv(binary, lay)
        flag = next(a for a in argv if a.startswith("--controllers="))
        return flag.split("=", 1)[1].split(",")

    assert "horizontal-pod-autoscaler-controller" not in controllers(kwok)
    assert "horizontal-pod-autoscaler-controller" in controllers(real)
    assert not any("horizontal-pod-autoscaler" in a
                   for a in comp.controller_manager_argv(binary, kwok))
    assert not any(a.startswith("--requestheader") or a.startswith("--proxy-client")
                   for a in comp.apiserver_argv(binary, kwok))
    real_api = comp.apiserver_argv(binary, real)
    assert f"--requestheader-client-ca-file={front.ca_cert}" in real_api
    assert f"--proxy-client-cert-file={front.client_cert}" in real_api
    assert "--requestheader-allowed-names=front-proxy-client" in real_api
