"""Operator footprint: 100 ElasticModels on the local control plane.

Starts the real control plane (etcd, kube-apiserver, controller manager, scheduler, kwok)
and a real Prometheus with no serving targets (every evaluation runs both queries and
holds), runs the operator as a subprocess with its least-privilege token, creates
``--models`` ElasticModels with the default 5 s evaluation interval, waits until each is
reconciled and evaluated, then measures over ``--idle-seconds``:

* RSS of the operator process (MB),
* CPU % of one core while nothing changes but the policy loops,
* reconcile p99 (ms) from the operator's own histogram (bucket upper bound, so an upper
  estimate), and the evaluation p99 the same way.

Writes ``benchmarks/results/operator_footprint.json``. Usage::

    .venv/bin/python benchmarks/operator_footprint.py [--models 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elastiserve.testing.controlplane import ControlPlane  # noqa: E402
from elastiserve.testing.prometheus import run_prometheus  # noqa: E402
from tests.operator.cluster_harness import (  # noqa: E402
    OPERATOR_NS,
    OPERATOR_SA,
    OperatorProcess,
    install,
    token_kubeconfig,
    wait_for,
)

RESULT = ROOT / "benchmarks" / "results" / "operator_footprint.json"


def buckets_of(text: str, name: str) -> dict[float, float]:
    found: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="')[1].split('"')[0]
            found[float("inf") if le == "+Inf" else float(le)] = float(line.split()[-1])
    return found


def histogram_p99(
    text: str, name: str, before: dict[float, float] | None = None
) -> tuple[float, int]:
    """Upper bound of the bucket holding the 99th percentile, and the sample count
    (only the samples added since ``before`` when given)."""
    now = buckets_of(text, name)
    buckets = sorted((le, c - (before or {}).get(le, 0.0)) for le, c in now.items())
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= 0.99 * total:
            return bound, int(total)
    return float("nan"), int(total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    from kubernetes import config

    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp_name:
        tmp = Path(tmp_name)
        with ControlPlane.start(tmp / "cp") as plane, run_prometheus(tmp / "prom", []) as prom:
            install(plane)
            client = config.new_client_from_config(config_file=str(plane.kubeconfig_path))
            wait_for(lambda: OPERATOR_SA in plane.kubectl(
                "get", "sa", "-n", OPERATOR_NS, "-o", "name", check=False).stdout, "operator SA")
            kubeconfig = token_kubeconfig(plane, client, OPERATOR_NS, OPERATOR_SA, tmp / "kc")
            plane.kubectl("create", "namespace", "bench")
            operator = OperatorProcess(kubeconfig, tmp / "operator.log", prom.url).start()
            try:
                items = [{
                    "apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
                    "metadata": {"name": f"m{i:03d}", "namespace": "bench"},
                    "spec": {"model": {"levelCount": 4, "source": {"localPath": "/m/x.mar"}},
                             "objective": {"p95Ms": 100}, "replicas": 0},
                } for i in range(args.models)]
                created = time.monotonic()
                plane.kubectl("apply", "-f", "-", timeout_s=120,
                              input=yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                                                    "items": items}))

                def all_evaluated() -> bool:
                    out = plane.kubectl("get", "elasticmodels", "-n", "bench", "-o", "json")
                    objs = json.loads(out.stdout)["items"]
                    return len(objs) == args.models and all(
                        "observedGeneration" in (o.get("status") or {})
                        and "policyState" in (o.get("status") or {}) for o in objs)

                wait_for(all_evaluated, "all models reconciled", timeout_s=300, every_s=2.0)
                settled_in = time.monotonic() - created
                assert operator.process is not None
                proc = psutil.Process(operator.process.pid)
                time.sleep(5.0)
                cpu0, t0 = proc.cpu_times(), time.monotonic()
                time.sleep(args.idle_seconds)
                cpu1, t1 = proc.cpu_times(), time.monotonic()
                busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
                idle_cpu = 100.0 * busy / (t1 - t0)
                rss_mb = proc.memory_info().rss / 2**20
                url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=5) as response:
                    text = response.read().decode()
                burst_p99, burst_count = histogram_p99(
                    text, "elastiserve_operator_reconcile_duration_seconds")
                # Steady state: one spec change at a time (what a user or CI does).
                before = buckets_of(text, "elastiserve_operator_reconcile_duration_seconds")
                for i in range(args.models):
                    plane.kubectl("patch", "elasticmodels", f"m{i:03d}", "-n", "bench",
                                  "--type=merge", "-p", '{"spec":{"objective":{"p95Ms":120}}}')
                time.sleep(3.0)
                with urllib.request.urlopen(url, timeout=5) as response:
                    text = response.read().decode()
                reconcile_p99, reconciles = histogram_p99(
                    text, "elastiserve_operator_reconcile_duration_seconds", before)
                eval_p99, evaluations = histogram_p99(
                    text, "elastiserve_operator_evaluation_duration_seconds")
            finally:
                operator.stop()
    result = {
        "models": args.models,
        "rss_mb": round(rss_mb, 1),
        "idle_cpu_pct": round(idle_cpu, 2),
        "reconcile_p99_ms": round(reconcile_p99 * 1000.0, 1),
        "reconciles": reconciles,
        "create_burst_reconcile_p99_ms": round(burst_p99 * 1000.0, 1),
        "create_burst_reconciles": burst_count,
        "evaluation_p99_ms": round(eval_p99 * 1000.0, 1),
        "evaluations": evaluations,
        "all_reconciled_s": round(settled_in, 1),
        "idle_window_s": args.idle_seconds,
        "evaluation_interval_s": 5,
        "note": "p99 values are histogram bucket upper bounds (inf: over 10 s); "
        "reconcile_p99_ms is steady state (one spec change at a time, 100 models live); "
        "create_burst is all models applied in one kubectl call; 2 shared cores",
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'models':>8} {'rss MB':>8} {'idle CPU %':>11} {'reconcile p99 ms':>17} "
          f"{'eval p99 ms':>12}")
    print(f"{result['models']:>8} {result['rss_mb']:>8} {result['idle_cpu_pct']:>11} "
          f"{result['reconcile_p99_ms']:>17} {result['evaluation_p99_ms']:>12}")
    print(f"targets: RSS <= 150 MB, reconcile p99 <= 200 ms; wrote {RESULT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
