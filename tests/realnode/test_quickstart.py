"""The cluster quick start (``docs/quickstart.md``), run on the test bed's real node.

What a new user does, with the images built here from ``docker/``: ``helm install`` the chart,
put an archive on a PersistentVolumeClaim through the page's loader pod and ``kubectl cp``,
``kubectl apply`` the page's ``ElasticModel`` with two replicas, read the one inference key
from its Secret and call the model through its Service. Both pods must become Ready through
their real probes and both must answer with that one key; a load step must narrow the level
and every replica must answer at the new level within 2 s of the status change; when the load
falls the model must widen again; no request may fail; ``helm uninstall`` and the namespace
deletions must complete. Each command comes from the page (checked: the test fails if the page
no longer says it), with the registry, image tags and Prometheus address put in.

Two things differ from the page, on purpose: the bundle is a small generated one (the page's
``elastiserve train`` takes minutes of CPU; archiving and everything after it run as written),
and the CR gets a latency query over 5 s windows and windows of seconds instead of minutes,
so the test takes minutes, not hours. The load step sends ``.npy`` bodies of 32 images (the
page's other requests one PNG each): with one torch thread sized from the page's 500m request,
the two pods served a 400 requests/s step of single images at a p95 of 15-17 ms on an idle
host, even with a 500m CPU limit, and of 8 images at 80 ms: nothing had to narrow. The numbers go to
``benchmarks/results/real_node.json``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from elastiserve.testing.helm import REPO_ROOT
from elastiserve.testing.node_config import NODE_NAME
from elastiserve.testing.pod_discovery import discover_pods
from elastiserve.testing.processes import wait_until
from elastiserve.testing.prometheus import PrometheusServer, file_sd_job, run_prometheus
from elastiserve_operator.signals.prometheus import (
    end_to_end_latency_query,
    render_query,
    request_rate_query,
)
from elastiserve_serve.loadgen import Result, Target, percentile, piecewise_arrivals, run_schedule
from tests.chart.test_quickstart_doc import DOC, blocks, yaml_documents
from tests.serving.bundles import make_bundle
from tests.serving.tiny import png_bytes

pytestmark = [
    pytest.mark.controlplane,
    pytest.mark.realnode,
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.timeout(900),
]

NS = "ml"
SYSTEM_NS = "elastiserve-system"
MODEL = "fmnist"
REPLICAS = 2
LEVELS = ("L0-25pct", "L1-50pct", "L2-75pct", "L3-100pct")
FULL = len(LEVELS) - 1
SWITCH_LIMIT_S = 2.0
WINDOW_S = 5
STEP_IMAGES = 32
"""Images in each request of the load step (see the docstring)."""
NPY_TYPE = "application/x-npy"
RESULTS = REPO_ROOT / "benchmarks" / "results" / "real_node.json"


# ----------------------------------------------------------------------- the page


def page_commands() -> list[str]:
    """Every command line of the page's ``sh`` blocks as written (continuations joined,
    comments dropped, quoting kept)."""
    lines: list[str] = []
    for body in blocks("sh"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                lines.append(shlex.join(words))
    return lines


def v2_lines() -> tuple[str, str]:
    """The page's two Open Inference Protocol lines (metadata, infer), as a shell runs them:
    raw, because the infer line's body is built by ``$(base64 ...)``."""
    found = [line for body in blocks("sh") for line in body.replace("\\\n", " ").splitlines()
             if line.startswith("curl ") and "127.0.0.1:8080/v2/models/fmnist" in line]
    assert len(found) == 2 and found[1].split()[2].endswith("/infer"), found
    return found[0], found[1]


def run_shell(line: str, key: str, cwd: Path) -> str:
    """One page line through bash, with ``$TOKEN`` set as the page sets it."""
    done = subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "TOKEN": key})
    assert done.returncode == 0, done.stderr
    return done.stdout


def page_command(*start: str) -> list[str]:
    """The page's command beginning with ``start`` as argv; fails if the page lacks it."""
    for line in page_commands():
        words = shlex.split(line)
        if words[: len(start)] == list(start):
            return words
    raise AssertionError(f"docs/quickstart.md no longer shows `{' '.join(start)} ...`")


def set_values(argv: list[str], values: dict[str, str]) -> list[str]:
    """``argv`` with each ``--set key=...`` of ``values`` replaced (and missing ones added)."""
    out: list[str] = []
    seen: set[str] = set()
    words = iter(argv)
    for word in words:
        if word == "--set":
            key, _, value = next(words).partition("=")
            seen.add(key)
            out += ["--set", f"{key}={values.get(key, value)}"]
        else:
            out.append(word)
    for key, value in values.items():
        if key not in seen:
            out += ["--set", f"{key}={value}"]
    return out


def page_objects(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml_documents() if doc.get("kind") == kind]


# ----------------------------------------------------------------------- helpers


@dataclass
class Timeline:
    """Status changes of the CR's active level, seen by a watch (monotonic times)."""

    changes: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def level(self) -> int | None:
        return self.changes[-1][1] if self.changes else None


def watch_level(cluster: Any, timeline: Timeline) -> threading.Thread:
    """Follow ``status.activeLevel`` with ``kubectl get -w`` (the API's watch) in a thread."""
    kubectl = cluster.plane.assets.binary("kubectl")

    def run() -> None:
        argv = [str(kubectl), f"--kubeconfig={cluster.plane.kubeconfig_path}", "-n", NS, "get",
                "elasticmodel", MODEL, "-w", "-o",
                "jsonpath={.status.activeLevel}{\"\\n\"}"]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout is not None
            def stop_when_told() -> None:
                timeline.stop.wait()
                proc.terminate()

            threading.Thread(target=stop_when_told, daemon=True).start()
            for line in proc.stdout:
                text = line.strip()
                if text.isdigit() and int(text) != timeline.level():
                    timeline.changes.append((time.monotonic(), int(text)))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def kubectl_json(cluster: Any, *args: str) -> Any:
    return json.loads(cluster.plane.kubectl(*args, "-o", "json").stdout)


def ready_serving_pods(cluster: Any) -> list[dict[str, Any]]:
    pods = kubectl_json(cluster, "-n", NS, "get", "pods", "-l",
                        f"elastiserve.io/model={MODEL}")["items"]
    return [
        pod for pod in pods
        if pod["metadata"].get("deletionTimestamp") is None and any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions") or [])
    ]


def all_answer_at_current_level(
    results: list[tuple[str, Result]], timeline: Timeline, pods: dict[str, str]
) -> bool:
    """Whether every replica has answered at the level of the last status change, since it."""
    changed_at, level = timeline.changes[-1]
    answered = {pod for pod, r in list(results)
                if r.level == LEVELS[level] and r.received >= changed_at}
    return answered >= set(pods.values())


def switch_times(results: list[tuple[str, Result]], timeline: Timeline) -> list[float]:
    """Per status change and replica: seconds until that replica first answered at it.

    A level the operator left again within :data:`SWITCH_LIMIT_S` (a Step policy can pass
    through one level on its way to the next) may be skipped by a replica that was still
    switching: such a level is measured where a replica answered at it and not required. Every
    level that lasted longer must have been answered at by every replica."""
    times: list[float] = []
    pods = sorted({pod for pod, _ in results})
    for index, (changed_at, level) in enumerate(timeline.changes[1:], start=1):
        until = (timeline.changes[index + 1][0] if index + 1 < len(timeline.changes)
                 else float("inf"))
        for pod in pods:
            answered = [r.received for p, r in results
                        if p == pod and r.level == LEVELS[level] and changed_at <= r.received
                        and r.scheduled < until]
            if not answered and until - changed_at <= SWITCH_LIMIT_S:
                continue
            assert answered, (f"replica {pod} never answered at {LEVELS[level]} after the "
                              f"status changed to it (levels {timeline.changes})")
            times.append(min(answered) - changed_at)
    return times


# ----------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prometheus(real_cluster: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the annotated pods the API lists, as in a cluster."""
    work = tmp_path_factory.mktemp("prometheus")

    def list_pods() -> list[dict[str, Any]]:
        listed = real_cluster.plane.kubectl("get", "pods", "-A", "-o", "json", timeout_s=20)
        items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
        return items

    with discover_pods(list_pods, work / "targets" / "pods.json") as targets, \
            run_prometheus(work / "server", [], extra_jobs=[file_sd_job(targets)],
                           listen_host="0.0.0.0") as server:
        yield server


@pytest.fixture(scope="module")
def mar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page's ``elastiserve archive`` line, run on a small generated 4-level bundle."""
    work = tmp_path_factory.mktemp("model")
    bundle = make_bundle(work / "bundle", ratios=(0.25, 0.5, 0.75, 1.0), names=LEVELS, size=28)
    argv = page_command(".venv/bin/elastiserve", "archive")
    assert argv[2] == "runs/fmnist/bundle" and "--export-path" in argv
    argv[2] = str(bundle)
    argv[argv.index("--export-path") + 1] = str(work / "mar")
    done = subprocess.run([sys.executable, "-m", "elastiserve.cli", *argv[1:]],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return work / "mar" / f"{MODEL}.mar"


# ----------------------------------------------------------------------- the test


def test_quickstart_on_the_real_node(
    real_cluster: Any,
    product_images_on_node: Any,
    prometheus: PrometheusServer,
    mar: Path,
    tmp_path: Path,
) -> None:
    plane = real_cluster.plane
    operator_image = product_images_on_node["operator"]
    serving_image = product_images_on_node["serving"]
    numbers: dict[str, Any] = {"replicas": REPLICAS, "node": NODE_NAME}

    # 2. Install the operator and the CRD: the page's helm line, our images and Prometheus.
    install = page_command("helm", "install")
    operator_repo, operator_tag = operator_image.ref.rsplit(":", 1)
    serving_repo, serving_tag = serving_image.ref.rsplit(":", 1)
    install = set_values(install, {
        "operator.image.repository": operator_repo,
        "operator.image.tag": operator_tag,
        "serving.image.repository": serving_repo,
        "serving.image.tag": serving_tag,
        "prometheus.url": f"http://{real_cluster.node.ip}:{prometheus.port}",
        # No Prometheus Operator here: the test's Prometheus discovers the pods itself.
        "monitoring.podMonitor.enabled": "false",
    })
    assert install[3] == "charts/elastiserve"
    install[3] = str(REPO_ROOT / "charts" / "elastiserve")
    installed_at = time.monotonic()
    plane.helm(*install[1:], timeout_s=180)
    plane.kubectl(*page_command("kubectl", "-n", SYSTEM_NS, "rollout", "status")[1:],
                  "--timeout=180s", timeout_s=200)

    # 3. The archive onto a PersistentVolumeClaim through the page's loader pod. The test
    # bed has no provisioner: a hostPath PersistentVolume stands in for the storage class.
    volume_dir = tmp_path / "volume"
    volume_dir.mkdir()
    volume_dir.chmod(0o777)
    plane.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "models-pv"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "storageClassName": "", "hostPath": {"path": str(volume_dir)},
                 "claimRef": {"namespace": NS, "name": "models"}},
    }))
    plane.kubectl(*page_command("kubectl", "create", "namespace", NS)[1:])
    loader_objects = [*page_objects("PersistentVolumeClaim"), *page_objects("Pod")]
    for obj in loader_objects:
        for container in obj.get("spec", {}).get("containers", []):
            assert container["image"].endswith("/serving:0.1.0"), container["image"]
            container["image"] = serving_image.ref
    page_command("kubectl", "-n", NS, "apply", "-f", "models.yaml")
    wait_until(lambda: plane.kubectl("-n", NS, "get", "sa", "default", check=False)
               .returncode == 0, what="the ServiceAccount of namespace ml", timeout_s=30.0)
    plane.kubectl("-n", NS, "apply", "-f", "-",
                  input=json.dumps({"apiVersion": "v1", "kind": "List",
                                    "items": loader_objects}))
    plane.kubectl(*page_command("kubectl", "-n", NS, "wait")[1:], "--timeout=120s",
                  timeout_s=130)
    copy = page_command("kubectl", "-n", NS, "cp")
    assert copy[4] == "runs/mar/fmnist.mar"
    copy[4] = str(mar)
    plane.kubectl(*copy[1:], timeout_s=120)
    plane.kubectl(*page_command("kubectl", "-n", NS, "delete", "pod", "mar-loader")[1:],
                  timeout_s=120)

    # 4. The page's ElasticModel, two replicas, with windows of seconds (see the docstring).
    (model,) = page_objects("ElasticModel")
    assert model["spec"]["replicas"] == REPLICAS
    assert model["spec"]["model"]["source"]["pvc"] == {"claimName": "models",
                                                       "path": "fmnist.mar"}
    model["spec"]["objective"].update({
        "latencyQuery": end_to_end_latency_query(f"{WINDOW_S}s"),
        "requestRateQuery": request_rate_query(f"{WINDOW_S}s"),
    })
    page_policy = model["spec"]["policy"]
    # The page's choice of loops stays (the windows below are shortened, the loops are not).
    assert page_policy["loops"] == "Operator", page_policy
    model["spec"]["policy"] = {
        "loops": page_policy["loops"],
        "mode": "Step", "evaluationIntervalSeconds": 1, "stableWindowSeconds": 6,
        "panicWindowSeconds": 2, "panicThreshold": 2.0, "tolerance": 0.1, "headroom": 0.2,
        "widenStabilizationSeconds": 8, "settleSeconds": WINDOW_S + 1,
        "staleAfterSeconds": 10,
    }
    model["spec"]["nodePressure"] = {"enabled": False}  # no metrics-server in the test bed
    page_command("kubectl", "-n", NS, "apply", "-f", "fmnist-elasticmodel.yaml")
    applied_at = time.monotonic()
    plane.kubectl("-n", NS, "apply", "-f", "-", input=yaml.safe_dump(model))
    wait_until(lambda: len(ready_serving_pods(real_cluster)) == REPLICAS,
               what=f"{REPLICAS} serving pods Ready through their readiness probes",
               timeout_s=300.0, interval_s=0.5,
               detail=lambda: diagnostics(real_cluster))
    numbers["apply_to_ready_s"] = round(time.monotonic() - applied_at, 2)
    # Each worker sized its torch threads from the pod's 500m CPU request (one thread), not
    # from the node's cores (runtime.cpu_threads); every pod says so in its metrics.
    threads_query = f'elastiserve_torch_threads{{ModelName="{MODEL}"}}'
    wait_until(lambda: len(prometheus.query(threads_query)) == REPLICAS,
               what="every serving pod's torch thread count in Prometheus", timeout_s=60.0,
               interval_s=1.0, detail=lambda: str(prometheus.query(threads_query)))
    assert {s.value for s in prometheus.query(threads_query)} == {1.0}
    pods = {pod["status"]["podIP"]: pod["metadata"]["name"]
            for pod in ready_serving_pods(real_cluster)}

    # One key for the model, from its Secret, as the page reads it; the page's curl lines
    # through the page's port-forward.
    assert ("kubectl -n ml get secret fmnist-inference-key -o jsonpath='{.data.key}' | base64 -d"
            in DOC.read_text(encoding="utf-8"))
    key = base64.b64decode(kubectl_json(real_cluster, "-n", NS, "get", "secret",
                                        f"{MODEL}-inference-key")["data"]["key"]).decode()
    body = png_bytes(28, 28)
    (tmp_path / "image.png").write_bytes(body)
    forward = page_command("kubectl", "-n", NS, "port-forward")
    forward = [word for word in forward if word != "&"]
    curls = [shlex.split(line) for line in page_commands() if line.startswith("curl ")
             and "127.0.0.1:8080/predictions/fmnist" in line]
    assert len(curls) >= 2
    first_answer: float | None = None
    with port_forward(real_cluster, forward[1:]):
        for argv in curls:
            argv = [word.replace("$TOKEN", key) for word in argv]
            done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True,
                                  timeout=60, check=False)
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith("HTTP/1.1 200"), done.stdout[:500]
            assert "x-elastiserve-level:" in done.stdout.lower()
            first_answer = first_answer or time.monotonic()
        metadata, infer = v2_lines()
        described = json.loads(run_shell(metadata, key, tmp_path))
        assert described["name"] == MODEL and described["inputs"][0]["name"] == "input-0"
        answered = run_shell(infer, key, tmp_path)
        assert answered.startswith("HTTP/1.1 200"), answered[:500]
        # text=True reads \r\n as \n: the body follows the first empty line.
        v2_body = json.loads(answered.replace("\r\n", "\n").split("\n\n", 1)[1])
        assert v2_body["model_name"] == MODEL and v2_body["id"] == "1"
        # Named, not necessarily the full level: the operator may already have moved.
        assert v2_body["parameters"]["level"] in LEVELS
    service = kubectl_json(real_cluster, "-n", NS, "get", "service", MODEL)
    service_url = f"http://{service['spec']['clusterIP']}:8080/predictions/{MODEL}"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "image/png"}

    # Through the Service, with the one key, until both replicas have answered. kube-proxy
    # picks a backend per connection, so each request opens its own.
    answered_by: set[str] = set()
    with httpx.Client(timeout=30) as client:
        deadline = time.monotonic() + 60
        while answered_by != set(pods.values()) and time.monotonic() < deadline:
            reply = client.post(service_url, content=body,
                                headers={**headers, "Connection": "close"})
            assert reply.status_code == 200, reply.text
            answered_by.add(reply.headers["x-elastiserve-replica"])
        assert answered_by == set(pods.values())
        assert reply.headers["x-elastiserve-level"] == LEVELS[FULL], (
            reply.headers, diagnostics(real_cluster))
        wrong = client.post(service_url, content=body,
                            headers={**headers, "Authorization": "Bearer wrong"})
        assert wrong.status_code == 401
    assert first_answer is not None
    numbers["install_to_first_answer_s"] = round(first_answer - installed_at, 2)

    # A load step through the Service; each replica is also asked directly (same key) so
    # that its own switch time is seen. Then the load falls.
    timeline = Timeline()
    watcher = watch_level(real_cluster, timeline)
    wait_until(lambda: timeline.level() == FULL, what="the watch to see the full level",
               timeout_s=30.0)
    per_pod = [Target(f"http://{ip}:8080/predictions/{MODEL}", headers) for ip in pods]
    results_by_pod: list[tuple[str, Result]] = []
    service_results: list[Result] = []
    stop = threading.Event()
    stop_high, low_stop = threading.Event(), threading.Event()  # set in `finally` too

    def probe(ip: str) -> None:
        name = pods[ip]
        while not stop.is_set():
            mine: list[Result] = []
            run_schedule([t for t in per_pod if ip in t.url], body,
                         piecewise_arrivals([(1.0, 10.0, 10.0)]), mine, max_in_flight=4)
            results_by_pod.extend((name, r) for r in mine)

    probes = [threading.Thread(target=probe, args=(ip,), daemon=True) for ip in pods]
    for thread in probes:
        thread.start()
    service = Target(service_url, headers)
    try:
        run_schedule([service], body, piecewise_arrivals([(5.0, 5.0, 5.0)]), service_results)
        high: list[Result] = []
        loader = threading.Thread(target=run_schedule, kwargs={
            "targets": [Target(service_url, {**headers, "Content-Type": NPY_TYPE})],
            "body": step_body(), "results": high, "stop": stop_high,
            "due_offsets": piecewise_arrivals([(60.0, 400.0, 400.0)]), "max_in_flight": 48,
        }, daemon=True)
        loader.start()
        wait_until(lambda: (timeline.level() or FULL) < FULL, what="the load step to narrow",
                   timeout_s=60.0, interval_s=0.2,
                   detail=lambda: f" (prometheus p95 s: {p95_now(prometheus)}; the step's "
                   f"client: {load_summary(high)})")
        narrowed_to = timeline.level()
        wait_until(lambda: all_answer_at_current_level(results_by_pod, timeline, pods),
                   what="every replica to answer at the narrowed level", timeout_s=30.0,
                   interval_s=0.1)
        stop_high.set()
        loader.join(timeout=120)
        service_results += high
        low: list[Result] = []
        low_loader = threading.Thread(target=run_schedule, kwargs={
            "targets": [service], "body": body, "results": low, "stop": low_stop,
            "due_offsets": piecewise_arrivals([(240.0, 5.0, 5.0)]),
        }, daemon=True)
        low_loader.start()
        wait_until(lambda: timeline.level() == FULL, what="the model to widen when load fell",
                   timeout_s=180.0, interval_s=0.5,
                   detail=lambda: (f" (levels {timeline.changes}, p95 s {p95_now(prometheus)}"
                                   f", client latency in the last 10 s "
                                   f"{recent_latency(results_by_pod, low)}, load "
                                   f"{os.getloadavg()})"))
        wait_until(lambda: all_answer_at_current_level(results_by_pod, timeline, pods),
                   what="every replica to answer at the full level again", timeout_s=30.0,
                   interval_s=0.1)
        low_stop.set()
        low_loader.join(timeout=60)
        service_results += low
    finally:
        for event in (stop, stop_high, low_stop, timeline.stop):
            event.set()
        for thread in probes:
            thread.join(timeout=30)
        watcher.join(timeout=10)

    every = service_results + [r for _, r in results_by_pod]
    failed = [r for r in every if r.status != 200]
    numbers["failed_requests"] = len(failed)
    numbers["requests"] = len(every)
    numbers["levels_seen"] = [level for _, level in timeline.changes]
    switches = switch_times(results_by_pod, timeline)
    numbers["switches_measured"] = len(switches)
    numbers["switch_p99_ms"] = round(percentile(switches, 99) * 1000, 1)
    numbers["switch_max_ms"] = round(max(switches) * 1000, 1)
    assert narrowed_to is not None and narrowed_to < FULL
    statuses = sorted({r.status for r in failed})
    assert not failed, f"{len(failed)} failed requests, statuses {statuses}"
    assert max(switches) <= SWITCH_LIMIT_S, switches

    numbers["images"] = {
        name: {
            "ref": image.ref,
            # What building it took when it was last built from scratch of its own layers
            # (the cache keeps that), and what this run spent (about 0 when it was cached).
            "build_s": round(image.cold_build_s or image.build_s, 1),
            "build_s_this_run": round(image.build_s, 1),
            "size_mb": image.size_mb,
        }
        for name, image in product_images_on_node.items()
    }
    write_results(numbers)

    # Clean-up as the page says: the model, the release, the namespaces; each must finish.
    cleanup_started = time.monotonic()
    plane.kubectl(*page_command("kubectl", "-n", NS, "delete", "elasticmodel")[1:],
                  "--timeout=120s", timeout_s=130)
    plane.helm(*page_command("helm", "uninstall")[1:], "--wait", "--timeout=120s",
               timeout_s=150)
    plane.kubectl("delete", "namespace", NS, SYSTEM_NS, "--timeout=180s", timeout_s=190)
    plane.kubectl("delete", "persistentvolume", "models-pv", "--timeout=60s", timeout_s=70)
    numbers["cleanup_s"] = round(time.monotonic() - cleanup_started, 2)
    write_results(numbers)


def diagnostics(cluster: Any) -> str:
    """What a person would look at when the model does not come up (for failure messages)."""
    plane = cluster.plane
    parts = []
    for args in (("get", "pods", "-A", "-o", "wide"),
                 ("-n", NS, "get", "elasticmodel", MODEL, "-o", "yaml"),
                 ("get", "events", "-A", "--sort-by=.lastTimestamp"),
                 ("-n", SYSTEM_NS, "logs", "deploy/elastiserve-operator", "--tail=60"),
                 ("-n", NS, "logs", f"deploy/{MODEL}-serving", "-c", "torchserve", "--tail=40")):
        done = plane.kubectl(*args, check=False)
        parts.append(f"--- kubectl {' '.join(args)}\n{done.stdout[-4000:]}{done.stderr[-1000:]}")
    return "\n" + "\n".join(parts)


def write_results(numbers: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(numbers, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def port_forward(cluster: Any, args: list[str]) -> Iterator[None]:
    """``kubectl port-forward`` (through the API server to the real kubelet) while in use."""
    kubectl = cluster.plane.assets.binary("kubectl")
    with subprocess.Popen(
        [str(kubectl), f"--kubeconfig={cluster.plane.kubeconfig_path}", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("Forwarding from"), line
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def recent_latency(by_pod: list[tuple[str, Result]], service: list[Result],
                   seconds: float = 10.0) -> dict[str, str]:
    """p50/p95 ms of what the clients saw lately, per pod (direct) and through the Service:
    tells a slow node (both high) from a slow path in front of the pods (failure detail)."""
    since = time.monotonic() - seconds
    groups: dict[str, list[float]] = {}
    for name, r in [*list(by_pod), *(("service", r) for r in list(service))]:
        if r.received >= since and r.status == 200:
            groups.setdefault(name, []).append(r.latency_s * 1000)
    return {name: f"{percentile(v, 50):.0f}/{percentile(v, 95):.0f} ms ({len(v)})"
            for name, v in sorted(groups.items())}


def step_body(images: int = STEP_IMAGES) -> bytes:
    """A ``.npy`` body of ``images`` 8-bit 28x28 images: the load step's work per request."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (images, 1, 28, 28), dtype=np.uint8)
    np.save(buffer, pixels, allow_pickle=False)
    return buffer.getvalue()


def load_summary(results: list[Result]) -> str:
    """What the load step's client got so far: answers, failures by status, client-side shed."""
    statuses: dict[int, int] = {}
    for r in list(results):
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return f"{len(results)} sent, by status {dict(sorted(statuses.items()))}"


def p95_now(prometheus: PrometheusServer) -> str:
    """The model's p95 (s) and request rate (requests/s) as the operator's queries read them."""
    def ours(template: str) -> str:
        return render_query(template, namespace=NS, name=MODEL, model=MODEL)

    rate = ours(request_rate_query(f"{WINDOW_S}s"))
    query = ours(end_to_end_latency_query(f"{WINDOW_S}s"))
    try:
        return (f"{[round(s.value, 3) for s in prometheus.query(query)]} at "
                f"{[round(s.value, 1) for s in prometheus.query(rate)]} requests/s")
    except Exception as exc:  # diagnostics only
        return f"<{exc}>"
