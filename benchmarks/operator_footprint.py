"""Operator footprint: 100 to 1,000 ElasticModels on the local control plane.

Starts the real control plane (etcd, kube-apiserver, controller manager, scheduler, kwok,
with enough fake x86 nodes for one pod per model) and a real Prometheus with no serving
targets (every evaluation runs its queries and holds), runs the operator as a subprocess
with its least-privilege token, creates ``--models`` ElasticModels with the default 5 s
evaluation interval and, by default, the joint replica policy on (``spec.policy.replicas``
enabled, min 1, max 3: every model keeps one replica, which kwok makes Ready), waits until
each is reconciled, evaluated and its replica Ready, then measures over ``--idle-seconds``:

* RSS of the operator process (MB; the larger of after the idle window and after the
  change phases),
* CPU % of one core while nothing changes but the policy loops, and the operator's own API
  requests per second by method,
* evaluation lag: how late each policy evaluation starts against its schedule (the
  operator's ``elastiserve_operator_evaluation_lag_seconds``; each model's loop runs on a
  fixed grid of its interval), over the idle window and the change phases, and the rounds
  skipped for being a whole interval behind,
* reconcile p50/p99 (ms), exact: each reconcile's duration as the operator logs it
  (``reconciled NS/NAME in X ms``), in steady state: one spec change at a time, all models
  live. (The operator's histogram gives the same quantiles only to a bucket bound; its
  bound is reported next to the exact value.) Two kinds of change, each to ``--changes``
  models spread over all of them (200 by default: all of them at 100): a policy-only change
  (``objective.p95Ms``: no child changes) and a child-changing one (``serving.batchSize``:
  ConfigMap and Deployment change). ``reconcile_p99_ms`` is the larger of the two. The
  patches go through the Python client, not one ``kubectl`` process per change (a Go binary
  start per patch competed for the same 2 cores);
* the create burst separately: all models applied at once (a different quantity:
  reconciles queued behind each other on one event loop);
* with py-spy installed (``PY_SPY`` or on PATH), where the operator spends its CPU over the
  idle window (``idle_profile``).

The load average (``os.getloadavg``) is recorded at the start and end of each phase: the
machine is shared, and the API server, etcd and the operator run on the same cores. The
operator runs at normal priority (no ``nice``).

Writes ``benchmarks/results/operator_footprint.json`` (100 models) or
``operator_footprint_<N>.json``; several sizes run one after the other, each on a fresh
control plane, and the last one's JSON holds the growth table. Usage::

    .venv/bin/python benchmarks/operator_footprint.py [--models 100[,300,1000]]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from elastiserve.testing.controlplane import ControlPlane  # noqa: E402
from elastiserve.testing.kwok_nodes import FakeNode, default_nodes  # noqa: E402
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
RECONCILE = "elastiserve_operator_reconcile_duration_seconds"
EVALUATION = "elastiserve_operator_evaluation_duration_seconds"
API = "elastiserve_operator_api_request_duration_seconds"
LAG = "elastiserve_operator_event_loop_lag_seconds"
LAG_EVAL = "elastiserve_operator_evaluation_lag_seconds"
SKIPPED = "elastiserve_operator_evaluations_skipped_total"
GC = "elastiserve_operator_gc_pause_seconds"


def buckets_of(text: str, name: str, match: str = "") -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name``, summed over the label sets whose
    line contains ``match`` (e.g. ``method="PATCH"``)."""
    found: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{") and match in line:
            le = line.split('le="')[1].split('"')[0]
            bound = float("inf") if le == "+Inf" else float(le)
            found[bound] = found.get(bound, 0.0) + float(line.split()[-1])
    return found


def histogram_p99(
    text: str, name: str, before: dict[float, float] | None = None, match: str = "",
    q: float = 0.99,
) -> tuple[float, int]:
    """Upper bound of the bucket holding the ``q`` quantile, and the sample count (only
    the samples added since ``before`` when given)."""
    now = buckets_of(text, name, match)
    buckets = sorted((le, c - (before or {}).get(le, 0.0)) for le, c in now.items())
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound, int(total)
    return float("nan"), int(total)


RECONCILED = re.compile(r"reconciled (\S+) in ([0-9.]+) ms")


def logged_reconciles(log: Path, skip_lines: int = 0) -> list[float]:
    """Exact reconcile durations (ms) the operator logged after line ``skip_lines``."""
    lines = log.read_text(errors="replace").splitlines()[skip_lines:]
    return [float(m.group(2)) for m in map(RECONCILED.search, lines) if m]


def line_count(log: Path) -> int:
    return len(log.read_text(errors="replace").splitlines())


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (an observed value, no interpolation); nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 1))  # ceil(n * q), at least 1
    return ordered[int(rank) - 1]


def series_total(text: str, series: str, match: str = "") -> float:
    """The sum over every label set of ``series`` (e.g. a histogram's ``_sum`` or ``_count``)
    whose line contains ``match``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(series) and match in line:
            total += float(line.split()[-1])
    return total


def histogram_sum(text: str, name: str, match: str = "") -> float:
    return series_total(text, f"{name}_sum", match)


def histogram_count(text: str, name: str, match: str = "") -> float:
    return series_total(text, f"{name}_count", match)


SERVER = "apiserver_request_duration_seconds"
SERVER_APPLIES = {
    "deployment": 'resource="deployments",scope="resource",subresource="",verb="APPLY"',
    "configmap": 'resource="configmaps",scope="resource",subresource="",verb="APPLY"',
    "status": 'resource="elasticmodels",scope="resource",subresource="status",verb="APPLY"',
}
"""Label fragments (the API server writes labels sorted) of the applies a reconcile sends."""


def server_side(before: str, after: str) -> dict[str, float | None]:
    """The API server's own time for the operator's applies in a phase (its histogram's
    bucket bounds, p50/p99): what the server spends, as against the round trip the
    operator sees (the difference is the client, TLS, the loop and the shared CPUs)."""
    out: dict[str, float | None] = {}
    for what, match in SERVER_APPLIES.items():
        earlier = buckets_of(before, SERVER, match)
        for q in (0.5, 0.99):
            bound, count = histogram_p99(after, SERVER, earlier, match, q=q)
            key = f"server_apply_{what}_p{round(q * 100)}_bound_ms"
            out[key] = round(bound * 1000.0, 1) if count else None  # none sent in the phase
        out[f"server_apply_{what}_count"] = count
    return out


def gc_marks(text: str) -> dict[str, tuple[dict[float, float], float]]:
    """Per generation: the operator's GC pause buckets and their sum now (for :func:`gc_since`)."""
    return {g: (buckets_of(text, GC, f'generation="{g}"'),
                histogram_sum(text, GC, f'generation="{g}"')) for g in "012"}


def gc_since(text: str, marks: dict[str, tuple[dict[float, float], float]]
             ) -> dict[str, dict[str, Any]]:
    """Per generation since ``marks``: collections, seconds paused, longest (bucket bound)."""
    pauses: dict[str, dict[str, Any]] = {}
    for g, (buckets, total) in marks.items():
        bound, count = histogram_p99(text, GC, buckets, f'generation="{g}"', q=1.0)
        pauses[g] = {
            "collections": count,
            "seconds": round(histogram_sum(text, GC, f'generation="{g}"') - total, 3),
            "longest_bound_ms": round(bound * 1000.0, 1) if count else None}
    return pauses


def load() -> float:
    return round(os.getloadavg()[0], 2)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def labelled(text: str, name: str) -> dict[str, float]:
    """Each label set's value of counter ``name`` (``{writer="policy"}`` -> ``policy``)."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = line[len(name) + 1:line.index("}")]
            key = ",".join(part.split("=", 1)[1].strip('"') for part in labels.split(","))
            found[key] = found.get(key, 0.0) + float(line.split()[-1])
    return found


def counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def bench_nodes(models: int) -> tuple[FakeNode, ...]:
    """The default fake nodes plus enough x86 servers for one pod per model (110 pods a
    node): with the joint policy on every model keeps at least one replica, and pods left
    Pending would keep the scheduler retrying on the same cores."""
    servers = tuple(
        FakeNode(name=f"bench-server-{i}", arch="amd64", cpu_cores=16, memory_gib=64,
                 allocatable_cpu="15500m", allocatable_memory=f"{64 * 1024 - 2048}Mi",
                 internal_ip=f"10.0.1.{i + 1}")
        for i in range(-(-models // 100)))
    return (*default_nodes(), *servers)


def model_items(models: int, joint: bool) -> list[dict[str, Any]]:
    spec: dict[str, Any] = {
        "model": {"levelCount": 4, "source": {"localPath": "/m/x.mar"}},
        "objective": {"p95Ms": 100}, "replicas": 1 if joint else 0,
    }
    if joint:
        spec["policy"] = {"replicas": {"enabled": True, "min": 1, "max": 3}}
    return [{"apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel",
             "metadata": {"name": f"m{i:04d}", "namespace": "bench"}, "spec": spec}
            for i in range(models)]


def spread(models: int, changes: int) -> list[int]:
    """``changes`` model indices spread evenly over all ``models`` (each at most once)."""
    count = min(models, changes)
    return sorted({i * models // count for i in range(count)})


LINE_NUMBER = re.compile(r":\d+\)$")
"""py-spy names a frame ``func (file:line)``: summed per function, not per line."""


def profile_summary(collapsed: Path, top: int = 12) -> dict[str, Any]:
    """What py-spy's samples (collapsed stacks, ``frame;frame;... count``) say: the
    operator's own functions with the most samples on the stack (inclusive), the leaves
    (own time), the share of samples waiting in ``select`` (nothing to do), and the share
    per package, by the innermost frame from a package we name."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    named = ("elastiserve_operator", "kopf", "aiohttp", "asyncio", "json", "yaml",
             "prometheus_client", "ssl", "gc", "copy", "logging", "promql_parser")
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        where = "other"
        for frame in reversed(frames):
            hit = next((p for p in named if f"/{p}/" in frame or f"{p}.py" in frame
                        or f"({p}" in frame), None)
            if hit is not None:
                where = hit
                break
        packages[where] = packages.get(where, 0) + count

    def share(table: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [(name, round(100.0 * n / total, 1)) for name, n in ranked] if total else []

    ours = {name: n for name, n in inclusive.items()
            if "elastiserve_operator/" in name and "cli.py" not in name
            and "__main__" not in name}
    idle = sum(n for name, n in own.items() if "select (selectors.py" in name)
    return {"samples": total,
            "idle_in_select_pct": round(100.0 * idle / total, 1) if total else None,
            "operator_functions_inclusive_pct": share(ours), "own_pct": share(own),
            "innermost_package_pct": share(packages)}


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy on the operator for ``seconds`` (collapsed stacks to ``out``), or None when
    py-spy is not installed (``PY_SPY`` or on PATH)."""
    binary = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if binary is None:
        return None
    return subprocess.Popen(
        [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "50",
         "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def lag_summary(text: str, before: dict[float, float]) -> dict[str, float | int]:
    p50, _ = histogram_p99(text, LAG_EVAL, before, q=0.5)
    p99, count = histogram_p99(text, LAG_EVAL, before)
    return {"evaluation_lag_p50_bound_ms": round(p50 * 1000.0, 1),
            "evaluation_lag_p99_bound_ms": round(p99 * 1000.0, 1),
            "evaluation_lag_samples": count}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) each named process has used; gone ones left out."""
    used: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        used[name] = times.user + times.system
    return used


def run_once(models: int, args: argparse.Namespace) -> dict[str, Any]:
    """One fresh control plane, Prometheus and operator; ``models`` models; the numbers."""
    from kubernetes import client as k8s
    from kubernetes import config

    loads: dict[str, float] = {"start": load()}
    changes = spread(models, args.changes)
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp_name:
        tmp = Path(tmp_name)
        with ControlPlane.start(tmp / "cp", nodes=bench_nodes(models)) as plane, \
                run_prometheus(tmp / "prom", []) as prom:
            install(plane)
            client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(plane.kubeconfig_path))
            wait_for(lambda: OPERATOR_SA in plane.kubectl(
                "get", "sa", "-n", OPERATOR_NS, "-o", "name", check=False).stdout, "operator SA")
            kubeconfig = token_kubeconfig(plane, client, OPERATOR_NS, OPERATOR_SA, tmp / "kc")
            plane.kubectl("create", "namespace", "bench")
            log_path = tmp / "operator.log"
            operator = OperatorProcess(kubeconfig, log_path, prom.url).start()
            crs = k8s.CustomObjectsApi(client)
            try:
                items = model_items(models, args.joint)
                loads["burst_start"] = load()
                created = time.monotonic()
                for first in range(0, models, 250):  # one kubectl per 250: its own timeout
                    chunk = {"apiVersion": "v1", "kind": "List", "items": items[first:first + 250]}
                    plane.kubectl("apply", "-f", "-", timeout_s=args.settle_timeout,
                                  input=yaml.safe_dump(chunk))

                def listed() -> list[dict[str, Any]]:
                    found = crs.list_namespaced_custom_object(
                        "elastiserve.io", "v1alpha1", "bench", "elasticmodels")
                    return list(cast(dict[str, Any], found)["items"])

                def all_evaluated() -> bool:
                    objs = listed()
                    return len(objs) == models and all(
                        "observedGeneration" in (o.get("status") or {})
                        and "policyState" in (o.get("status") or {}) for o in objs)

                wait_for(all_evaluated, "all models evaluated", timeout_s=args.settle_timeout,
                         every_s=3.0)
                # The status (observedGeneration) is written while the children are still
                # being applied: the reconciles end when the operator logs them.
                wait_for(lambda: len(logged_reconciles(log_path)) >= models,
                         "all models reconciled", timeout_s=args.settle_timeout, every_s=2.0)
                settled_in = time.monotonic() - created
                burst = logged_reconciles(log_path)
                ready_in = None
                if args.joint:  # every model's replica Ready (kwok) and in its status
                    wait_for(lambda: all((o.get("status") or {}).get("readyReplicas") == 1
                                         for o in listed()),
                             "every model's replica ready", timeout_s=args.settle_timeout,
                             every_s=3.0)
                    ready_in = time.monotonic() - created
                assert operator.process is not None
                proc = psutil.Process(operator.process.pid)
                rss_settled_mb = proc.memory_info().rss / 2**20
                time.sleep(args.calm_seconds)
                url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
                text = fetch(url)
                eval_before = buckets_of(text, EVALUATION)
                lag_before = buckets_of(text, LAG_EVAL)
                skipped_before = counter(text, SKIPPED)
                requests_before = {m: histogram_count(text, API, f'method="{m}"')
                                   for m in METHODS}
                gc_before = gc_marks(text)
                loads["idle_start"] = load()
                profile = tmp / "idle.txt"
                profiler = (start_profile(proc.pid, args.idle_seconds, profile)
                            if args.profile else None)
                components = {p.name: p.popen.pid for p in plane.processes}
                components["prometheus"] = prom.process.pid
                others0 = cpu_seconds(components)
                cpu0, t0 = proc.cpu_times(), time.monotonic()
                time.sleep(args.idle_seconds)
                cpu1, t1 = proc.cpu_times(), time.monotonic()
                others1 = cpu_seconds(components)
                component_cpu = {name: round(100.0 * (others1[name] - others0[name])
                                             / (t1 - t0), 1)
                                 for name in others0 if name in others1}
                loads["idle_end"] = load()
                busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
                idle_cpu = 100.0 * busy / (t1 - t0)
                rss_mb = proc.memory_info().rss / 2**20
                text = fetch(url)
                eval_p99, evaluations = histogram_p99(text, EVALUATION, eval_before)
                idle_lag = lag_summary(text, lag_before)
                gc_pauses = gc_since(text, gc_before)
                idle_requests = {
                    m: round((histogram_count(text, API, f'method="{m}"') - requests_before[m])
                             / args.idle_seconds, 2) for m in METHODS}
                profiled: dict[str, Any] | None = None
                if profiler is not None:
                    profiler.wait(args.idle_seconds + 30)
                    if profile.exists():
                        profiled = profile_summary(profile)
                        if args.keep_profile is not None:
                            shutil.copyfile(profile, args.keep_profile)
                phases: dict[str, dict[str, Any]] = {}
                exact: dict[str, list[float]] = {}
                for what, patch in (
                    ("policy_only", {"spec": {"objective": {"p95Ms": 120}}}),
                    ("child_changing", {"spec": {"serving": {"batchSize": 2}}}),
                ):
                    text = fetch(url)
                    before = buckets_of(text, RECONCILE)
                    patch_before = buckets_of(text, API, 'method="PATCH"')
                    patches_before = histogram_count(text, API, 'method="PATCH"')
                    lag_loop_before = buckets_of(text, LAG)
                    phase_lag_before = buckets_of(text, LAG_EVAL)
                    server_before = plane.kubectl("get", "--raw", "/metrics").stdout
                    phase_gc_before = gc_marks(text)
                    skip = line_count(log_path)
                    loads[f"{what}_start"] = load()
                    phase_profile = tmp / f"{what}.txt"
                    phase_profiler = (start_profile(
                        proc.pid, len(changes) * args.change_gap + 3.0, phase_profile)
                        if args.profile else None)
                    for i in changes:
                        crs.patch_namespaced_custom_object(
                            "elastiserve.io", "v1alpha1", "bench", "elasticmodels",
                            f"m{i:04d}", patch)
                        time.sleep(args.change_gap)
                    time.sleep(3.0)
                    loads[f"{what}_end"] = load()
                    text = fetch(url)
                    server = plane.kubectl("get", "--raw", "/metrics").stdout
                    exact[what] = logged_reconciles(log_path, skip)
                    ms = exact[what]
                    phases[what] = {
                        "reconciles": len(ms),
                        "reconcile_p50_ms": round(quantile(ms, 0.5), 1),
                        "reconcile_p99_ms": round(quantile(ms, 0.99), 1),
                        "reconcile_max_ms": round(max(ms), 1) if ms else float("nan"),
                        "reconciles_within_200ms_pct": round(
                            100.0 * sum(v <= 200.0 for v in ms) / len(ms), 1) if ms else 0.0,
                        "reconcile_p99_histogram_bound_ms": round(
                            histogram_p99(text, RECONCILE, before)[0] * 1000.0, 1),
                        "api_patches_per_change": round((histogram_count(
                            text, API, 'method="PATCH"') - patches_before) / len(changes), 2),
                        "api_patch_p50_bound_ms": round(histogram_p99(
                            text, API, patch_before, 'method="PATCH"', q=0.5)[0] * 1000.0, 1),
                        "api_patch_p99_bound_ms": round(histogram_p99(
                            text, API, patch_before, 'method="PATCH"')[0] * 1000.0, 1),
                        "event_loop_lag_p99_bound_ms": round(
                            histogram_p99(text, LAG, lag_loop_before)[0] * 1000.0, 1),
                        **lag_summary(text, phase_lag_before),
                        **server_side(server_before, server),
                        "gc_pauses": gc_since(text, phase_gc_before),
                    }
                    if phase_profiler is not None:
                        phase_profiler.wait(len(changes) * args.change_gap + 60)
                        if phase_profile.exists():
                            phases[what]["profile"] = profile_summary(phase_profile)
                text = fetch(url)
                steady_lag = lag_summary(text, lag_before)
                skipped = counter(text, SKIPPED) - skipped_before
                counters = {name: counter(text, name) for name in (
                    "elastiserve_operator_child_applies_total",
                    "elastiserve_operator_child_applies_skipped_total")}
                status_writes = {name: labelled(text, f"elastiserve_operator_{name}_total")
                                 for name in ("status_writes", "status_writes_skipped")}
                rss_end_mb = proc.memory_info().rss / 2**20
            finally:
                operator.stop()
                if args.keep_log is not None:
                    shutil.copyfile(log_path, args.keep_log.with_suffix(f".{models}.log"))
    steady = exact["policy_only"] + exact["child_changing"]
    return {
        "models": models,
        "joint_policy": args.joint,
        "rss_mb": round(max(rss_mb, rss_end_mb), 1),
        "rss_after_idle_mb": round(rss_mb, 1),
        "rss_after_changes_mb": round(rss_end_mb, 1),
        "rss_when_settled_mb": round(rss_settled_mb, 1),
        "idle_cpu_pct": round(idle_cpu, 2),
        "reconcile_p99_ms": round(max(quantile(ms, 0.99) for ms in exact.values()), 1),
        "reconcile_p50_ms": round(quantile(steady, 0.5), 1),
        "reconciles": len(steady),
        "changed_models_per_phase": len(changes),
        "steady": phases,
        "evaluation_lag_p99_bound_ms": steady_lag["evaluation_lag_p99_bound_ms"],
        "evaluation_lag_p50_bound_ms": steady_lag["evaluation_lag_p50_bound_ms"],
        "evaluation_lag_samples": steady_lag["evaluation_lag_samples"],
        "evaluations_skipped": int(skipped),
        "idle": {**idle_lag, "api_requests_per_s": idle_requests, "gc_pauses": gc_pauses,
                 "component_cpu_pct": component_cpu},
        "create_burst_reconcile_p50_ms": round(quantile(burst, 0.5), 1),
        "create_burst_reconcile_p99_ms": round(quantile(burst, 0.99), 1),
        "create_burst_reconciles": len(burst),
        "create_burst_all_reconciled_s": round(settled_in, 1),
        "create_burst_all_ready_s": round(ready_in, 1) if ready_in is not None else None,
        "evaluation_p99_bound_ms": round(eval_p99 * 1000.0, 1),
        "evaluations": evaluations,
        "evaluations_per_s": round(evaluations / args.idle_seconds, 1),
        "idle_api_patches_per_s": idle_requests["PATCH"],
        "child_applies": int(counters["elastiserve_operator_child_applies_total"]),
        "child_applies_skipped": int(
            counters["elastiserve_operator_child_applies_skipped_total"]),
        "status_writes_whole_run": status_writes,
        "idle_window_s": args.idle_seconds,
        "evaluation_interval_s": 5,
        "idle_profile": profiled,
        "load_avg_1m": loads,
        "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_cores": os.cpu_count(),
        "note": NOTE,
    }


NOTE = (
    "reconcile_*_ms: exact durations of the operator's reconcile handler from its log "
    "(nearest-rank quantiles), steady state: one spec change at a time with all models live "
    "(changed_models_per_phase of them, spread evenly over all); reconcile_p99_ms is the "
    "larger of a policy-only change (no child changes) and a child-changing one (ConfigMap + "
    "Deployment); the 200 ms target applies to this. evaluation_lag_*: how late each policy "
    "evaluation started against its schedule (the operator's "
    "elastiserve_operator_evaluation_lag_seconds, bucket upper bounds), over the idle window "
    "and both change phases; the 1 s target applies to its p99. evaluations_skipped: rounds a "
    "model's loop skipped for being a whole interval behind. *_bound_ms: histogram bucket "
    "upper bounds. create_burst: all models applied at once, a different quantity (reconciles "
    "queue behind each other). joint_policy: spec.policy.replicas enabled (min 1, max 3) on "
    "every model, each with one replica on kwok fake nodes; Prometheus has no serving "
    "targets, so every evaluation runs its queries and holds both knobs. api_requests_per_s: "
    "the operator's own requests by method with nothing changing (policy loops only); "
    "component_cpu_pct: CPU % of one core of each control-plane process and Prometheus over "
    "the idle window (the operator's is idle_cpu_pct). "
    "rss_when_settled_mb: right after every model was reconciled and Ready (the create "
    "burst's high-water mark, before the operator hands free heap back); "
    "idle.gc_pauses: the operator's garbage collections over the idle window by "
    "generation (count, seconds in all, the longest's bucket bound); "
    "status_writes_whole_run: status applies by writer and evaluations that sent none "
    "(holds: kopf's copy said it; stale_copy: only the answer to the operator's own last "
    "write did). "
    "idle_profile: py-spy samples of the operator over the idle window (50 Hz). The API "
    "server, etcd, the controller manager, kwok, Prometheus and the operator share the "
    "machine's cores, and other work ran on it: see load_avg_1m."
)
METHODS = ("GET", "LIST", "PATCH", "POST", "PUT")


def growth_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per size, and per model what each size adds over the smallest."""
    base = runs[0]
    rows = []
    for run in runs:
        extra = run["models"] - base["models"]
        rows.append({
            "models": run["models"],
            "rss_mb": run["rss_mb"],
            "rss_mb_per_extra_model": (round((run["rss_mb"] - base["rss_mb"]) / extra, 3)
                                       if extra else None),
            "idle_cpu_pct": run["idle_cpu_pct"],
            "idle_cpu_pct_per_100_models": round(100.0 * run["idle_cpu_pct"] / run["models"], 2),
            "evaluations_per_s": run["evaluations_per_s"],
            "evaluation_p99_bound_ms": run["evaluation_p99_bound_ms"],
            "evaluation_lag_p99_bound_ms": run["evaluation_lag_p99_bound_ms"],
            "reconcile_p50_ms": run["reconcile_p50_ms"],
            "reconcile_p99_ms": run["reconcile_p99_ms"],
            "create_burst_all_reconciled_s": run["create_burst_all_reconciled_s"],
            "idle_api_requests_per_s": run["idle"]["api_requests_per_s"],
            "idle_component_cpu_pct": run["idle"].get("component_cpu_pct"),
            "load_avg_1m_idle_start": run["load_avg_1m"].get("idle_start"),
        })
    return rows


def default_out(models: int) -> Path:
    return RESULT if models == 100 else RESULT.with_name(f"operator_footprint_{models}.json")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default="100",
                        help="model count, or several comma-separated (each on a fresh "
                        "control plane, in order; the last file gets the growth table)")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--calm-seconds", type=float, default=10.0,
                        help="wait after everything settled, before the idle window")
    parser.add_argument("--change-gap", type=float, default=0.3,
                        help="seconds between two steady-state spec changes")
    parser.add_argument("--changes", type=int, default=200,
                        help="models changed per steady phase (spread over all of them)")
    parser.add_argument("--settle-timeout", type=float, default=900.0)
    parser.add_argument("--joint", action=argparse.BooleanOptionalAction, default=True,
                        help="spec.policy.replicas enabled on every model (default on)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="py-spy the operator over the idle window (when installed)")
    parser.add_argument("--keep-profile", type=Path, default=None)
    parser.add_argument("--keep-log", type=Path, default=None,
                        help="copy the operator's log here (.N.log per size)")
    parser.add_argument("--growth-with", type=Path, nargs="*", default=[],
                        help="earlier results of this script (other sizes, run the same "
                        "way) to put in the growth table beside this run's")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing: write the growth table of the --growth-with "
                        "files into the largest one's")
    parser.add_argument("--out", type=Path, default=None,
                        help="result JSON (one size only; default by size)")
    args = parser.parse_args()
    try:
        sizes = [int(part) for part in str(args.models).split(",")]
    except ValueError:
        print(f"operator_footprint: --models must be integers, got {args.models!r}",
              file=sys.stderr)
        return 2
    if any(n < 1 for n in sizes) or (args.out is not None and len(sizes) > 1):
        print("operator_footprint: --models must be >= 1, and --out takes one size",
              file=sys.stderr)
        return 2
    try:
        runs: list[dict[str, Any]] = [json.loads(path.read_text())
                                      for path in args.growth_with]
    except (OSError, ValueError) as error:
        print(f"operator_footprint: --growth-with: {error}", file=sys.stderr)
        return 2
    if args.table_only:  # the growth table of earlier results, into the largest one's file
        if len(runs) < 2:
            print("operator_footprint: --table-only needs two or more --growth-with files",
                  file=sys.stderr)
            return 2
        largest = max(range(len(runs)), key=lambda i: int(runs[i]["models"]))
        rows = growth_rows(sorted(runs, key=lambda run: int(run["models"])))
        runs[largest]["growth"] = rows
        args.growth_with[largest].write_text(json.dumps(runs[largest], indent=2) + "\n")
        print_growth(rows)
        return 0
    for models in sizes:
        result = run_once(models, args)
        runs.append(result)
        if len(runs) > 1 and models == sizes[-1]:
            runs.sort(key=lambda run: int(run["models"]))
            result["growth"] = growth_rows(runs)
        out = args.out or default_out(models)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print_run(result, out)
    if len(runs) > 1:
        print_growth(growth_rows(runs))
    return 0


def print_run(result: dict[str, Any], out: Path) -> None:
    print(f"{'models':>8} {'rss MB':>8} {'idle CPU %':>11} {'reconcile p50 ms':>17} "
          f"{'reconcile p99 ms':>17} {'eval lag p99 ms':>16}")
    print(f"{result['models']:>8} {result['rss_mb']:>8} {result['idle_cpu_pct']:>11} "
          f"{result['reconcile_p50_ms']:>17} {result['reconcile_p99_ms']:>17} "
          f"{result['evaluation_lag_p99_bound_ms']:>16}")
    for what, phase in result["steady"].items():
        print(f"{what}: p50 {phase['reconcile_p50_ms']} ms, p99 {phase['reconcile_p99_ms']} ms, "
              f"{phase['reconciles_within_200ms_pct']} % within 200 ms, "
              f"{phase['api_patches_per_change']} PATCH/change, eval lag p99 <= "
              f"{phase['evaluation_lag_p99_bound_ms']} ms, GC s/collections per generation "
              f"{[(p['seconds'], p['collections']) for p in phase['gc_pauses'].values()]}")
        if phase.get("profile"):
            print(f"  {what} profile: packages {phase['profile']['innermost_package_pct']}; "
                  f"ours {phase['profile']['operator_functions_inclusive_pct'][:6]}")
    print(f"create burst: p99 {result['create_burst_reconcile_p99_ms']} ms, all in "
          f"{result['create_burst_all_reconciled_s']} s; load {result['load_avg_1m']}")
    if result["idle_profile"]:
        print(f"idle profile (innermost package, % of samples): "
              f"{result['idle_profile']['innermost_package_pct']}")
    print(f"targets: RSS <= 300 MB, reconcile p99 <= 200 ms, evaluation lag p99 <= 1 s; "
          f"wrote {out}")


def print_growth(rows: list[dict[str, Any]]) -> None:
    print(f"{'models':>7} {'rss MB':>7} {'MB/model':>9} {'idle CPU %':>11} {'eval/s':>7} "
          f"{'eval p99':>9} {'lag p99':>8} {'rec p99':>8} {'burst s':>8}")
    for row in rows:
        per = row["rss_mb_per_extra_model"]
        print(f"{row['models']:>7} {row['rss_mb']:>7} {per if per is not None else '-':>9} "
              f"{row['idle_cpu_pct']:>11} {row['evaluations_per_s']:>7} "
              f"{row['evaluation_p99_bound_ms']:>9} {row['evaluation_lag_p99_bound_ms']:>8} "
              f"{row['reconcile_p99_ms']:>8} {row['create_burst_all_reconciled_s']:>8}")


if __name__ == "__main__":
    raise SystemExit(main())
