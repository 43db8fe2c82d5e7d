"""What the real-node tests of one ``ElasticModel`` under load share (``test_hpa.py``,
``test_joint_policy.py``): the names of their namespaces, watches on single fields, an
open-loop loader through the model's Service, and small readers of the API's answers.

The fixtures that use these (Prometheus, the archive, the operator as a process) are in
``conftest.py`` beside this file; each test module says which names it uses with a
module-scoped ``bed`` fixture, so that two modules never share a namespace (one module's
teardown deletes what the next would create).
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from elastiserve_serve.loadgen import Result, Target

__all__ = [
    "ModelBed",
    "Series",
    "kubectl_json",
    "model_target",
    "open_loop",
    "ready_pods",
    "replica_managers",
    "watch_field",
]


@dataclass(frozen=True)
class ModelBed:
    """The names one test module's model lives under."""

    ns: str
    operator_ns: str
    account: str
    """The operator's ServiceAccount and ClusterRole(Binding) name (not the chart's)."""
    model: str


@dataclass
class Series:
    """Values of one field of one object, each with the wall-clock time a watch saw it."""

    values: list[tuple[float, str]] = field(default_factory=list)

    def last(self) -> str | None:
        return self.values[-1][1] if self.values else None

    def first_time(self, predicate: Callable[[str], bool], after: float = 0.0) -> float | None:
        """When a value matching ``predicate`` was first seen at or after ``after``."""
        return next((at for at, value in self.values if at >= after and predicate(value)),
                    None)

    def distinct(self) -> list[str]:
        return [value for _, value in self.values]


def watch_field(cluster: Any, stop: threading.Event, ns: str, kind: str, name: str,
                path: str) -> Series:
    """Follow one field with ``kubectl get -w`` (the API's watch) in a thread; a value is
    recorded when it differs from the last one. The watch is restarted when it ends (the
    object does not exist yet, or the server closed it)."""
    series = Series()
    kubectl = cluster.plane.assets.binary("kubectl")
    argv = [str(kubectl), f"--kubeconfig={cluster.plane.kubeconfig_path}", "-n", ns, "get",
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
              results: list[Result], max_in_flight: int = 48,
              keep_alive: bool = True) -> None:
    """Arrivals at ``rate_rps`` until ``stop``; an arrival that finds ``max_in_flight``
    requests outstanding is shed (status -1) instead of queued, so that stopping waits for at
    most ``max_in_flight`` answers, not for a backlog the overload has built.

    ``keep_alive=False`` opens a connection per request, so that kube-proxy spreads the
    requests over every Ready pod of the Service (a kept-alive connection stays on the pod
    it was opened to, and a pod that becomes Ready later would get nothing)."""
    slots = threading.BoundedSemaphore(max_in_flight)
    limits = httpx.Limits(max_connections=max_in_flight,
                          max_keepalive_connections=max_in_flight if keep_alive else 0)
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


def ready_pods(cluster: Any, bed: ModelBed) -> list[str]:
    """Names of the model's pods that are Ready and not being deleted."""
    pods = kubectl_json(cluster, "-n", bed.ns, "get", "pods", "-l",
                        f"elastiserve.io/model={bed.model}")["items"]
    return [pod["metadata"]["name"] for pod in pods
            if pod["metadata"].get("deletionTimestamp") is None and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in pod.get("status", {}).get("conditions") or [])]


def model_target(cluster: Any, bed: ModelBed) -> Target:
    """The model's predictions endpoint through its Service (kube-proxy), with its one
    inference key."""
    key = base64.b64decode(kubectl_json(cluster, "-n", bed.ns, "get", "secret",
                                        f"{bed.model}-inference-key")["data"]["key"]).decode()
    service = kubectl_json(cluster, "-n", bed.ns, "get", "service", bed.model)
    return Target(f"http://{service['spec']['clusterIP']}:8080/predictions/{bed.model}",
                  {"Authorization": f"Bearer {key}", "Content-Type": "image/png"})
