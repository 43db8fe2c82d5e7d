"""``serving.batchSize: Auto`` on the real node: the pod plans its batch size and threads.

The operator runs the serving container with ``--batch-size auto --threads auto
--objective-ms <p95>``; before TorchServe starts, the pod times the model's widest level on its
own CPU grant (the downward API's CPU request) and registers the model with the planned batch
size. What must hold on a real kubelet: the pod becomes Ready through its probes with the
profile in its start-up; its log names the plan; every worker reports the planned batch size
and threads in Prometheus (``elastiserve_batch_size``, ``elastiserve_torch_threads``); requests
through the Service are answered; ``status.effectivePolicy`` says ``Auto``.
"""

from __future__ import annotations

import json
import re
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from elastiserve.testing.processes import wait_until
from elastiserve.testing.prometheus import PrometheusServer
from tests.operator.cluster_harness import OperatorProcess
from tests.realnode.conftest import LEVELS
from tests.realnode.model_bed import ModelBed, kubectl_json, model_target, ready_pods
from tests.serving.tiny import png_bytes

pytestmark = [
    pytest.mark.controlplane,
    pytest.mark.realnode,
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

BED = ModelBed(ns="autobatch", operator_ns="autobatch-operator",
               account="elastiserve-operator-autobatch", model="automodel")
CPU_REQUEST_M = 1000
"""One core: the plan's thread candidates are 1 (whole cores of the request), its CPU bound
is one core's."""
PLAN_LINE = re.compile(r"profile:\s+batch size (\d+), threads (\d+) ")


@pytest.fixture(scope="module")
def bed() -> ModelBed:
    """This module's names (the shared fixtures in ``conftest.py`` read them)."""
    return BED


def model_manifest(mar: Path) -> dict[str, Any]:
    return {
        "apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
        "metadata": {"name": BED.model, "namespace": BED.ns},
        "spec": {
            "model": {"levelCount": len(LEVELS), "source": {"localPath": str(mar)}},
            "objective": {"p95Ms": 150},
            "replicas": 1,
            "serving": {"workers": 1, "batchSize": "Auto", "maxBatchDelayMs": 5,
                        "resources": {"requests": {"cpu": f"{CPU_REQUEST_M}m",
                                                   "memory": "512Mi"},
                                      "limits": {"memory": "2Gi"}}},
            "nodePressure": {"enabled": False},
        },
    }


def test_an_auto_batch_size_is_planned_in_the_pod_and_served(
    real_cluster: Any, bed_operator: OperatorProcess, bed_mar: Path,
    bed_prometheus: PrometheusServer,
) -> None:
    plane = real_cluster.plane
    applied = time.monotonic()
    plane.kubectl("apply", "-f", "-", input=json.dumps(model_manifest(bed_mar)))
    wait_until(lambda: len(ready_pods(real_cluster, BED)) == 1,
               what="the serving pod Ready through its probes", timeout_s=240.0,
               interval_s=0.5, detail=lambda: f"\n{bed_operator.log_tail()}")
    ready_s = time.monotonic() - applied
    deployment = kubectl_json(real_cluster, "-n", BED.ns, "get", "deployment",
                              f"{BED.model}-serving")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--batch-size") + 1] == "auto"
    assert args[args.index("--objective-ms") + 1] == "150"

    pod = ready_pods(real_cluster, BED)[0]
    log = plane.kubectl("-n", BED.ns, "logs", pod, "-c", "torchserve").stdout
    found = PLAN_LINE.search(log)
    assert found, f"no plan in the pod's log:\n{log[-3000:]}"
    batch, threads = int(found.group(1)), int(found.group(2))
    assert 1 <= batch <= 64
    assert threads == 1  # one core requested: one thread is the only candidate

    # Every worker runs what was planned, and says so where the operator's Prometheus looks.
    def reported(metric: str) -> list[float]:
        return [s.value for s in bed_prometheus.query(f'{metric}{{ModelName="{BED.model}"}}')]

    for metric, expected in (("elastiserve_batch_size", batch),
                             ("elastiserve_torch_threads", threads)):
        wait_until(partial(lambda m: len(reported(m)) == 1, metric),
                   what=f"{metric} in Prometheus", timeout_s=60.0, interval_s=1.0,
                   detail=partial(lambda m: str(reported(m)), metric))
        assert reported(metric) == [float(expected)]

    status = kubectl_json(real_cluster, "-n", BED.ns, "get", "elasticmodel", BED.model)
    assert status["status"]["effectivePolicy"]["serving"]["batchSize"] == "Auto"

    target = model_target(real_cluster, BED)
    with httpx.Client(timeout=30) as client:
        answers = [client.post(target.url, content=png_bytes(28, 28), headers=target.headers)
                   for _ in range(20)]
    assert [a.status_code for a in answers] == [200] * 20, answers[-1].text
    print(f"auto batch: plan batch {batch}, threads {threads}; apply to Ready "
          f"{ready_s:.1f} s")
