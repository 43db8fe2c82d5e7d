"""Does the measured plan (``--batch-size auto --threads auto``) serve more than fixed settings?

For each model (the ``make demo`` geometry, 1x28x28, and the serving benchmark's ResNet-20 at
3x224x224, random weights: time per request does not depend on what the weights learned), the
plan is made exactly as ``elastiserve serve`` makes it (:func:`elastiserve_serve.serve_profile.
profile_mar` on the archive, on this host), then three archives of the same bundle run in one
TorchServe, one worker each:

* ``auto``: the plan's batch size and threads (the archive's 5 ms batch delay);
* ``operator_default``: what an ``ElasticModel`` gets without ``serving`` settings: batch 1,
  10 ms delay, one thread (the chart's default 500m CPU request, :mod:`runtime.cpu_threads`);
* ``serve_default``: what ``elastiserve serve --bundle`` archives: batch 8, 5 ms delay,
  torch's default threads.

Each is swept with open-loop load (requests on a fixed schedule, latency from the scheduled
time) at the widest level, the configurations taking turns at each rate (x1.2 per step by
default), each rate run twice per configuration, until a run breaks the p95 objective;
``max_sustained_rps`` is the highest rate at which both runs held the objective with no failed
request (a batching configuration can hold a rate once by luck and collapse the next time).
Requests are one sample each (a ``.npy`` of the input), as a REST client sends one image. The
headline is ``auto`` over the best fixed configuration, a ratio in the same run.

    .venv/bin/python benchmarks/serving_plan.py            # ~12 min on 2 cores
    .venv/bin/python benchmarks/serving_plan.py --quick    # smoke run

Writes ``benchmarks/results/serving_plan.json`` (``--quick``: ``serving_plan-quick.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from serving import (
    REPO,
    RESULTS,
    Target,
    demo_bundle,
    max_sustained,
    rate_grid,
    sweep,
    warm,
    write_bundles,
)

CONFIGS = ("auto", "operator_default", "serve_default")
FIXED = {"operator_default": {"batch": 1, "delay_ms": 10, "threads": 1},
         "serve_default": {"batch": 8, "delay_ms": 5, "threads": 0}}
AUTO_DELAY_MS = 5


def one_sample_body(bundle: Path) -> bytes:
    """One input as a ``uint8`` ``.npy`` (what a REST client sends for one image)."""
    import numpy as np

    from elastiserve_store.bundle import load_bundle

    spec = load_bundle(bundle).manifest.input
    pixels = np.random.default_rng(0).integers(0, 256, (1, spec.channels, spec.height,
                                                        spec.width), dtype=np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, pixels, allow_pickle=False)
    return buffer.getvalue()


def process_cpu(pid: int) -> dict[str, float]:
    """CPU seconds so far of TorchServe's frontend (the JVM) and of its Python workers."""
    import psutil

    out = {"frontend": 0.0, "workers": 0.0}
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            times = proc.cpu_times()
            kind = "frontend" if proc.name() == "java" else "workers"
            out[kind] += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return out


def make_plan(bundle: Path, store: Path, name: str, objective_ms: float) -> dict[str, Any]:
    """The plan ``elastiserve serve --batch-size auto --threads auto`` would make here."""
    from elastiserve_serve.archive import ArchiveSpec, build_archive
    from elastiserve_serve.runtime.batch_plan import thread_candidates
    from elastiserve_serve.serve_profile import host_threads, profile_mar, worker_cores

    probe = store / "probe"
    build_archive(bundle, probe, name, ArchiveSpec(workers=1, max_batch_delay_ms=AUTO_DELAY_MS,
                                                   handler={"control_file": ""}))
    result = profile_mar(probe / f"{name}.mar", objective_ms=objective_ms,
                         max_batch_delay_ms=AUTO_DELAY_MS,
                         thread_counts=thread_candidates(host_threads(1)), cores=worker_cores(1))
    return result.to_json()


def build_configs(bundle: Path, store: Path, model: str, plan: dict[str, Any]) -> dict[str, str]:
    """One archive per configuration in ``store``; returns configuration -> model name."""
    from elastiserve_serve.archive import ArchiveSpec, build_archive

    settings = {"auto": {"batch": plan["plan"]["batch_size"], "delay_ms": AUTO_DELAY_MS,
                         "threads": plan["plan"]["threads"]}, **FIXED}
    names = {}
    for config in CONFIGS:
        s = settings[config]
        name = f"{model}-{config.replace('_', '-')}"
        build_archive(bundle, store, name, ArchiveSpec(
            workers=1, batch_size=s["batch"], max_batch_delay_ms=s["delay_ms"],
            handler={"control_file": "", "threads": s["threads"], "worker_choice": False}))
        names[config] = name
    return names


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="serving-plan-") as tmp:
        return measure_all(args, Path(tmp))


def measure_all(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Everything :func:`run` does, under ``root`` (removed afterwards)."""
    from elastiserve_serve.ts_server import run_torchserve

    makers = {"demo": lambda: demo_bundle(root),
              "serving": lambda: write_bundles(root, 1.0)["levels"]}
    bundles = {model: makers[model]() for model in args.models}
    objectives = {"demo": args.demo_objective_ms, "serving": args.serving_objective_ms}
    store = root / "store"
    out: dict[str, Any] = {"models": {}, "load_average_1m": {"start": os.getloadavg()[0]}}
    for model, bundle in bundles.items():
        plan = make_plan(bundle, root / "plans", model, objectives[model])
        print(f"{model}: plan {plan['plan']}", flush=True)
        names = build_configs(bundle, store, model, plan)
        out["models"][model] = {"objective_ms": objectives[model], "plan": plan,
                                "names": names}
    models = [f"{n}={n}.mar" for m in out["models"].values() for n in m["names"].values()]
    with run_torchserve(root / "run", store, models) as server:
        auth = {"Authorization": f"Bearer {server.keys.inference}"}
        for model, entry in out["models"].items():
            body = one_sample_body(bundles[model])
            targets = [Target(config, f"{server.inference_url}/predictions/{name}", auth)
                       for config, name in entry["names"].items()]
            warm(targets, body, 20)
            grid = rate_grid(args.start[model], args.factor, args.stop)
            print(f"{model}: sweep (objective p95 {entry['objective_ms']} ms, "
                  f"{args.seconds} s a step):", flush=True)
            before = process_cpu(server.process.pid)
            steps = sweep(targets, body, grid, args.seconds, entry["objective_ms"], strict=True)
            after = process_cpu(server.process.pid)
            sent = sum(s.requests for rows in steps.values() for s in rows)
            # What batch_plan.REQUEST_OVERHEAD_CPU_S stands for: the frontend's CPU per request
            # (all configurations together), beside the workers' (timed path included).
            entry["cpu_ms_per_request"] = {
                kind: round((after[kind] - before[kind]) / sent * 1000, 3) for kind in after}
            entry["configs"] = {}
            for config in CONFIGS:
                best = max_sustained(steps[config], entry["objective_ms"], strict=True)
                settings = (FIXED.get(config) or
                            {"batch": entry["plan"]["plan"]["batch_size"],
                             "delay_ms": AUTO_DELAY_MS,
                             "threads": entry["plan"]["plan"]["threads"]})
                entry["configs"][config] = {
                    **settings,
                    "max_sustained_rps": best.rate if best else 0.0,
                    "p95_ms_at_max": best.p95_ms if best else None,
                    "steps": [asdict(s) for s in steps[config]],
                }
            fixed_best = max(entry["configs"][c]["max_sustained_rps"] for c in FIXED)
            entry["auto_over_best_fixed"] = (
                round(entry["configs"]["auto"]["max_sustained_rps"] / fixed_best, 3)
                if fixed_best else None)
    out["load_average_1m"]["end"] = os.getloadavg()[0]
    out["method"] = ("open-loop sweep at the widest level, configurations taking turns at "
                     f"each rate (x{args.factor}) twice, {args.seconds} s a step, a rate held "
                     "only if both runs held; one TorchServe, one worker per configuration; "
                     "one-sample .npy requests")
    return out


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{'model':>8} {'config':>17} {'batch':>5} {'threads':>7} {'delay':>5} "
          f"{'max rps':>8} {'p95 ms':>7}")
    for model, entry in result["models"].items():
        for config, c in entry["configs"].items():
            threads = c["threads"] or "torch"
            p95 = f"{c['p95_ms_at_max']:.1f}" if c["p95_ms_at_max"] is not None else "-"
            print(f"{model:>8} {config:>17} {c['batch']:>5} {threads!s:>7} {c['delay_ms']:>5} "
                  f"{c['max_sustained_rps']:>8.1f} {p95:>7}")
        print(f"{model:>8} auto over the best fixed configuration: "
              f"{entry['auto_over_best_fixed']}x; CPU ms per request "
              f"{entry['cpu_ms_per_request']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short steps (a smoke run)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per step")
    parser.add_argument("--demo-objective-ms", type=float, default=100.0)
    parser.add_argument("--serving-objective-ms", type=float, default=500.0)
    parser.add_argument("--stop", type=float, default=3000.0, help="highest rate tried")
    parser.add_argument("--factor", type=float, default=1.2, help="rate step (x per step)")
    parser.add_argument("--models", default="demo,serving",
                        help="comma-separated: demo, serving")
    parser.add_argument("--start-demo", type=float, default=200.0, help="first rate, demo")
    parser.add_argument("--start-serving", type=float, default=12.0, help="first rate, serving")
    parser.add_argument("--output", type=Path, default=None, help="JSON path")
    args = parser.parse_args()
    args.models = [m for m in args.models.split(",") if m]
    if not args.models or set(args.models) - {"demo", "serving"}:
        parser.error("--models takes demo and/or serving")
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.start = {"demo": args.start_demo, "serving": args.start_serving}
    result = run(args)
    print_table(result)
    RESULTS.mkdir(exist_ok=True)
    path = args.output or RESULTS / ("serving_plan-quick.json" if args.quick
                                     else "serving_plan.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
