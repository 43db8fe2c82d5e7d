"""Per-node caps end to end: kwok Jetson boards, their exporters, Prometheus, the operator.

Two replicas land on two different Jetson boards (each asks for 4 of a board's 5.5-7.5
allocatable cores, so no board fits two). Each board has its own exporter serving the
jetson-stats names; Prometheus labels each with its node, as a Kubernetes scrape config
would. One board overheats: the operator must cap that node only (``status.nodeCaps``),
keep the model-wide level, post an Event and export the cap; when the board cools below
the release line for the stabilisation window, the cap goes.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastiserve.testing.controlplane import ControlPlane
from elastiserve.testing.kwok_nodes import EDGE_TAINT, POOL_LABEL
from elastiserve.testing.prometheus import ScrapeTarget, run_prometheus

from .cluster_harness import (
    GROUP,
    OPERATOR_NS,
    OPERATOR_SA,
    PLURAL,
    VERSION,
    LatencyExporter,
    OperatorProcess,
    install,
    token_kubeconfig,
    wait_for,
)
from .test_nodes_jetson_prometheus import Board, board

pytestmark = [pytest.mark.controlplane, pytest.mark.prometheus, pytest.mark.slow]

JETSONS = ("jetson-agx-orin-0", "jetson-orin-nx-0", "jetson-orin-nano-0")
FAST_QUERY = (
    "histogram_quantile(0.95, sum by (le) (rate(elastiserve_request_latency_seconds_bucket"
    '{namespace="$namespace",ModelName="$model"}[4s])))'
)
FAST_RATE = 'sum(rate(ts_inference_requests_total{namespace="$namespace",model_name="$model"}[4s]))'


def spec() -> dict[str, Any]:
    return {
        "model": {"levelCount": 3, "source": {"localPath": "/models/m.mar"}},
        "replicas": 2,
        "objective": {"p95Ms": 100, "latencyQuery": FAST_QUERY, "requestRateQuery": FAST_RATE},
        "policy": {
            "mode": "Step", "evaluationIntervalSeconds": 1, "stableWindowSeconds": 6,
            "panicWindowSeconds": 2, "panicThreshold": 2.0, "tolerance": 0.1, "headroom": 0.2,
            "widenStabilizationSeconds": 4, "settleSeconds": 2, "staleAfterSeconds": 10,
        },
        "nodePressure": {"enabled": True, "temperatureCelsius": 85, "gpuLoadPercent": 95},
        "serving": {
            "nodeSelector": {POOL_LABEL: EDGE_TAINT["value"]},
            "tolerations": [{**EDGE_TAINT, "operator": "Equal"}],
            "resources": {"requests": {"cpu": "4"}},
        },
    }


@pytest.fixture
def world(
    control_plane: ControlPlane, kube_client: Any, kube_namespace: str, tmp_path: Path
) -> Iterator[tuple[dict[str, Board], OperatorProcess]]:
    install(control_plane)
    kubeconfig = token_kubeconfig(control_plane, kube_client, OPERATOR_NS, OPERATOR_SA,
                                  tmp_path / "kubeconfig")
    latency = LatencyExporter(kube_namespace, "m1").start()
    latency.latency_s = 0.02
    boards = {name: board() for name in JETSONS}
    for b in boards.values():
        b.set(20.0, cpu=48.0, gpu=50.0)
    targets = [ScrapeTarget("latency", f"127.0.0.1:{latency.port}")]
    targets += [ScrapeTarget("jetson", f"127.0.0.1:{b.port}", labels=(("node", name),))
                for name, b in boards.items()]
    operator: OperatorProcess | None = None
    try:
        with run_prometheus(tmp_path / "prom", targets, scrape_interval_s=0.5) as prom:
            # The Jetson profile's allow-lists (values-jetson-k3s.yaml): the models here ask
            # for the edge pool, which the operator's default settings refuse.
            edge = {"ELASTISERVE_ALLOWED_TOLERATIONS": json.dumps([EDGE_TAINT]),
                    "ELASTISERVE_ALLOWED_NODE_SELECTORS": json.dumps(
                        {POOL_LABEL: [EDGE_TAINT["value"]]})}
            operator = OperatorProcess(kubeconfig=kubeconfig, log_path=tmp_path / "op.log",
                                       prometheus_url=prom.url,
                                       namespaces=(kube_namespace,), extra_env=edge).start()
            yield boards, operator
    finally:
        if operator is not None:
            operator.stop()
            print("operator log tail:\n" + operator.log_tail())
        latency.stop()
        for b in boards.values():
            b.stop()


def test_overheating_board_caps_only_its_replicas(
    world: tuple[dict[str, Board], OperatorProcess], kube_client: Any, kube_namespace: str
) -> None:
    from kubernetes import client as k8s

    boards, operator = world
    ns = kube_namespace
    crs = k8s.CustomObjectsApi(kube_client)
    core = k8s.CoreV1Api(kube_client)
    crs.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ElasticModel",
        "metadata": {"name": "m1"}, "spec": spec()})

    def status() -> dict[str, Any]:
        obj: Any = crs.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "m1")
        return dict(obj.get("status") or {})

    def pod_places() -> list[tuple[str, str, str]]:
        pods: Any = core.list_namespaced_pod(ns).items
        return [(p.metadata.name, p.spec.node_name, p.status.phase) for p in pods]

    wait_for(lambda: status().get("readyReplicas") == 2 and status().get("activeLevel") == 2,
             "two ready replicas at level 2", timeout_s=60,
             show=lambda: (status(), pod_places()))
    pods: Any = core.list_namespaced_pod(ns).items
    hosts: list[str] = sorted({str(p.spec.node_name) for p in pods})
    assert len(hosts) == 2 and set(hosts) <= set(JETSONS), hosts
    hot, cool = hosts
    assert "nodeCaps" not in status()  # 50 C, 20 % GPU: nothing to cap

    boards[hot].set(40.0, gpu=93.0, cpu=80.0)  # the GPU zone overheats
    capped = wait_for(lambda: (s := status()).get("nodeCaps") and s, f"a cap on {hot}",
                      timeout_s=30)
    assert capped["nodeCaps"] == {hot: 1}
    assert capped["activeLevel"] == 2  # the cool board keeps the model at its level
    assert capped["nodeCapState"][hot]["level"] == 1

    def cap_events() -> list[Any]:
        items = core.list_namespaced_event(
            ns, field_selector="involvedObject.name=m1,involvedObject.kind=ElasticModel"
        ).items
        return [e for e in items if e.reason and e.reason.startswith("NodeCap")]

    (event,) = wait_for(cap_events, "a NodeCapped Event", timeout_s=10)
    assert event.reason == "NodeCapped" and hot in event.message and "93 C" in event.message
    exposition = urllib.request.urlopen(
        f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5
    ).read().decode()
    assert (f'elastiserve_operator_node_cap_level{{name="m1",namespace="{ns}",node="{hot}"}} 1.0'
            in exposition)

    # 82 C is under 85 C but over the 80 C release line: the cap holds (no flapping).
    boards[hot].set(40.0, gpu=82.0)
    time.sleep(7)  # node cache 5 s + more than the 4 s stabilisation window
    assert status()["nodeCaps"] == {hot: 1}
    # Cool for the window: the cap goes, with an Event; the other board never had one.
    boards[hot].set(30.0, gpu=55.0, cpu=50.0)
    wait_for(lambda: "nodeCaps" not in status(), "the cap lifted", timeout_s=30)
    reasons = [e.reason for e in cap_events()]
    assert sorted(reasons) == ["NodeCapLifted", "NodeCapped"], reasons
    assert all(cool not in (e.message or "") for e in cap_events())
    assert status()["activeLevel"] == 2
