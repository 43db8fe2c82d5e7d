"""Elastic vs static: one load trace through static-full, static-narrowest and elastiserve.

What runs: one real TorchServe (1 worker, 1 torch thread, batching on) serving a nested bundle,
a real Prometheus scraping it, and an open-loop client replaying the same trace three times.
Static runs write one level into the control file and leave it. The elastic run is the
operator's policy run locally (the cluster-less mode): every ``evaluationIntervalSeconds`` the
operator's own ``gather_observation`` asks Prometheus the operator's end-to-end latency query
and rate query, the operator's pure ``decide`` picks the level (Predictive mode, with the
profile measured here), and the decision is written to the control file, which is what the
level agent does with the CR status in a cluster. The API server is skipped because it only
relays the index; ``tests/e2e`` covers that path.

Trace: steps and bursts relative to ``C``, what the full level sustains (measured first,
closed-loop): 0.5C, a step to 1.2C, 0.6C, a 2C burst, 0.5C, 1.5C, a 2C burst, 0.5C.

Bundle: the trained Fashion-MNIST bundle (``runs/bench-nested``, ResNet-20, 4 levels at
25/50/75/100 % channels) is what ``--bundle`` serves when ``--serve trained``. On this 2-core
machine its 28x28 levels are overhead-bound (closed-loop, 1 worker: L0 178, L1 333, L2 198,
L3 360 rps, noise larger than the differences), and 2x its capacity (~720 rps) is more than
the Python client can offer, so by default (``--serve compute-bound``) the runs serve a
generated bundle of the same architecture and level ratios at 64x64 input, where compute
dominates and the levels differ in capacity; each answer is then credited with the accuracy
the *trained* bundle's manifest records for the level of the same index. Both facts are in the
result file.

Per run: ``violation_pct`` (share of the trace's seconds whose client p95, over requests due in
that second, breaks the objective), ``p95_ms`` over all requests, ``mean_acc`` (each answered
request credited with the test accuracy the bundle manifest records for the level that
answered), ``failed`` (non-200 or transport errors).

    nice python benchmarks/elastic_vs_static.py                  # compute-bound stand-in
    nice python benchmarks/elastic_vs_static.py --serve trained  # the trained bundle itself

Writes ``benchmarks/results/elastic_vs_static.json``; the bundle used is recorded in it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "elastic_vs_static.json"
DEFAULT_BUNDLE = ROOT / "runs" / "bench-nested" / "nested" / "bundle"
NAMESPACE = "bench"  # the label the operator's query templates select on
MODEL = "elastic"
WINDOW_S = 5
# (seconds, from, to) as multiples of the full level's capacity.
TRACE: tuple[tuple[float, float, float], ...] = (
    (15.0, 0.5, 0.5),
    (20.0, 1.2, 1.2),
    (12.0, 0.6, 0.6),
    (6.0, 2.0, 2.0),
    (15.0, 0.5, 0.5),
    (15.0, 1.5, 1.5),
    (6.0, 2.0, 2.0),
    (15.0, 0.5, 0.5),
)


def _png(size: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), "L").save(buffer, "PNG")
    return buffer.getvalue()


def _capacity(url: str, headers: dict[str, str], body: bytes, seconds: float) -> float:
    """Closed-loop requests/s with 16 clients (enough to keep the batcher full)."""
    import httpx

    done = 0
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal done
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < deadline:
                if http.post(url, content=body, headers=headers).status_code == 200:
                    with lock:
                        done += 1

    threads = [threading.Thread(target=client) for _ in range(16)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done / (time.monotonic() - start)


def policy_spec(levels: int, objective_ms: int, capacities: Sequence[float],
                names: Sequence[str]) -> dict[str, Any]:
    """The CR the local loop plays: short windows so a 2-minute trace shows several moves."""
    from elastiserve_operator.signals.prometheus import end_to_end_latency_query

    return {
        "model": {
            "levelCount": levels,
            "source": {"localPath": f"/models/{MODEL}.mar"},
            "profile": [{"name": n, "capacityRps": round(c, 2)}
                        for n, c in zip(names, capacities, strict=True)],
        },
        "objective": {
            "p95Ms": objective_ms,
            "latencyQuery": end_to_end_latency_query(f"{WINDOW_S}s"),
            "requestRateQuery": (
                'sum(rate(ts_inference_requests_total{namespace="$namespace",'
                f'model_name="$model"}}[{WINDOW_S}s]))'
            ),
        },
        "serving": {"workers": 1, "batchSize": 4, "maxBatchDelayMs": 5},
        "policy": {
            "mode": "Predictive",
            "evaluationIntervalSeconds": 1,
            "stableWindowSeconds": 6,
            "panicWindowSeconds": 2,
            "panicThreshold": 2.0,
            "tolerance": 0.1,
            "headroom": 0.2,
            "widenStabilizationSeconds": 6,
            "settleSeconds": WINDOW_S + 1,
            "staleAfterSeconds": 10,
        },
        "nodePressure": {"enabled": False},
    }


class LocalPolicy:
    """The operator's evaluation, with the control file in place of the CR status."""

    def __init__(self, spec_dict: dict[str, Any], prom_url: str, control: Path) -> None:
        from elastiserve_operator.policy_state import PolicyState
        from elastiserve_operator.profile import profile_from_spec
        from elastiserve_operator.signals.prometheus import render_query
        from elastiserve_operator.spec import parse_spec

        self.spec = parse_spec(spec_dict)
        self.profile = profile_from_spec(self.spec.model.profile)
        fill = {"namespace": NAMESPACE, "name": MODEL, "model": MODEL}
        assert self.spec.objective.latency_query and self.spec.objective.request_rate_query
        self.latency_q = render_query(self.spec.objective.latency_query, **fill)
        self.rate_q = render_query(self.spec.objective.request_rate_query, **fill)
        self.prom_url = prom_url
        self.control = control
        top = self.spec.model.level_count - 1
        self.state = PolicyState.initial(top, time.time())
        self.moves: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _loop(self) -> None:
        from elastiserve_operator.policy import decide
        from elastiserve_operator.signals.prometheus import PrometheusClient, gather_observation
        from elastiserve_serve.level_agent import set_level

        async with PrometheusClient(self.prom_url) as client:
            started = time.monotonic()
            while not self._stop.is_set():
                gathered = await gather_observation(client, self.latency_q, self.rate_q)
                decision = decide(gathered.observation, self.spec, self.profile, self.state,
                                  time.time())
                self.state = decision.state
                if decision.changed:
                    set_level(self.control, decision.level)
                    self.moves.append({"t": round(time.monotonic() - started, 1),
                                       "level": decision.level, "cause": decision.cause.value})
                await asyncio.sleep(self.spec.policy.evaluation_interval_s)


def trained_ratios(manifest: Any) -> list[float]:
    """Each level's channel ratio, as the trained manifest records it."""
    return [float(level.channel_ratio) for level in manifest.levels]


def summarise(results: Sequence[Any], objective_s: float, accuracy: dict[str, float],
              start: float, duration: float) -> dict[str, Any]:
    from elastiserve_serve.loadgen import percentile

    ok = [r for r in results if r.status == 200]
    seconds = max(1, math.ceil(duration))
    over = 0
    for second in range(seconds):
        due = [r.latency_s for r in results
               if start + second <= r.scheduled < start + second + 1]
        if due and percentile(due, 95) > objective_s:
            over += 1
    answered = [accuracy[r.level] for r in ok if r.level in accuracy]
    share: dict[str, int] = {}
    for r in ok:
        share[str(r.level)] = share.get(str(r.level), 0) + 1
    return {
        "violation_pct": round(100.0 * over / seconds, 1),
        "p95_ms": round(percentile([r.latency_s for r in results], 95) * 1000, 1),
        "mean_acc": round(100.0 * sum(answered) / len(answered), 2) if answered else None,
        "failed": len(results) - len(ok),
        "requests": len(results),
        "answers_per_level": share,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--scale", type=float, default=1.0, help="stretch the trace in time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--serve", choices=["compute-bound", "trained"], default="compute-bound")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))

    from elastiserve.testing.prometheus import ScrapeTarget, run_prometheus
    from elastiserve_serve.archive import ArchiveSpec, build_archive
    from elastiserve_serve.level_agent import set_level
    from elastiserve_serve.loadgen import Result, Target, piecewise_arrivals, run_schedule
    from elastiserve_serve.ts_server import free_port, run_torchserve
    from elastiserve_store.bundle import load_bundle
    from tests.serving.bundles import make_bundle

    trained = load_bundle(args.bundle).manifest if (args.bundle / "manifest.json").exists() \
        else None
    if args.serve == "trained" and trained is not None:
        bundle_dir = args.bundle
        source = f"{args.bundle} (trained Fashion-MNIST, served as is)"
    else:
        ratios = tuple(trained_ratios(trained)) if trained is not None else (0.25, 0.5, 1.0)
        names_for_levels = tuple(trained.level_names) if trained is not None else None
        bundle_dir = make_bundle(Path(tempfile.mkdtemp()) / "bundle", width_mult=1.0,
                                 ratios=ratios, size=64, names=names_for_levels)
        source = ("generated ResNet-20, 64x64, random weights, level ratios of the trained "
                  f"bundle; accuracy per level from {args.bundle}" if trained is not None
                  else "generated (no trained bundle found: no accuracy)")
    manifest = load_bundle(bundle_dir).manifest
    names = list(manifest.level_names)
    credit = trained if trained is not None else manifest
    accuracy = {name: lv.accuracy for name, lv in zip(names, credit.levels, strict=True)
                if lv.accuracy is not None}
    body = _png(manifest.input.height)
    from elastiserve_operator.spec import parse_spec

    parse_spec(policy_spec(len(names), 100, [1.0] * len(names), names))  # fail before serving
    trace = [(d * args.scale, a, b) for d, a, b in TRACE]
    duration = sum(d for d, _, _ in trace)

    with tempfile.TemporaryDirectory(prefix="elastic-vs-static-") as tmp_name:
        tmp = Path(tmp_name)
        control = tmp / "shm" / "level.json"
        set_level(control, len(names) - 1)
        spec = ArchiveSpec(workers=1, batch_size=4, max_batch_delay_ms=5, response_timeout_s=60,
                           handler={"control_file": str(control), "threads": 1})
        build_archive(bundle_dir, tmp / "store", MODEL, spec)
        metrics_port = free_port()
        scrape = ScrapeTarget("torchserve", f"127.0.0.1:{metrics_port}",
                              labels=(("namespace", NAMESPACE),))
        with run_torchserve(tmp / "ts", tmp / "store", [f"{MODEL}={MODEL}.mar"],
                            metrics_port=metrics_port) as server, \
                run_prometheus(tmp / "prom", [scrape], scrape_interval_s=1) as prom:
            url = f"{server.inference_url}/predictions/{MODEL}"
            headers = {"Authorization": f"Bearer {server.keys.inference}"}
            capacities = []
            for k in range(len(names)):
                set_level(control, k)
                _capacity(url, headers, body, 2.0)  # warm-up at this level
                capacities.append(_capacity(url, headers, body, 6.0))
                print(f"{names[k]}: {capacities[-1]:.1f} rps closed-loop", flush=True)
            full = capacities[-1]
            objective_ms = max(100, round(8 / full * 1000))
            print(f"objective p95 {objective_ms} ms; trace peaks at {2 * full:.0f} rps")
            arrivals = piecewise_arrivals([(d, a * full, b * full) for d, a, b in trace])
            runs: dict[str, Any] = {}
            for run in ("static_full", "static_narrowest", "elastic"):
                policy = None
                if run == "elastic":
                    set_level(control, len(names) - 1)
                    policy = LocalPolicy(policy_spec(len(names), objective_ms, capacities, names),
                                         prom.url, control)
                else:
                    set_level(control, len(names) - 1 if run == "static_full" else 0)
                time.sleep(WINDOW_S + 2)  # the previous run leaves the rate window
                if policy is not None:
                    policy.start()
                results: list[Result] = []
                start = time.monotonic()
                run_schedule([Target(url, headers)], body, arrivals, results,
                             max_in_flight=128, timeout_s=60)
                if policy is not None:
                    policy.stop()
                runs[run] = summarise(results, objective_ms / 1000, accuracy, start, duration)
                if policy is not None:
                    runs[run]["moves"] = policy.moves
                print(f"{run}: {json.dumps({k: v for k, v in runs[run].items() if k != 'moves'})}",
                      flush=True)

    full_run, elastic = runs["static_full"], runs["elastic"]
    out = {
        "bundle": source,
        "levels": names,
        "accuracy": accuracy,
        "capacity_rps": [round(c, 1) for c in capacities],
        "objective_ms": objective_ms,
        "trace": {"phases_x_capacity": [list(p) for p in trace], "seconds": duration,
                  "requests": len(arrivals)},
        "policy": "operator decide() in Predictive mode, local loop (no API server)",
        "runs": runs,
        "target_met": {
            "violation_le_fifth_of_static_full":
                elastic["violation_pct"] <= full_run["violation_pct"] / 5,
            "acc_within_1_5_points_of_full": elastic["mean_acc"] is not None
                and full_run["mean_acc"] is not None
                and elastic["mean_acc"] >= full_run["mean_acc"] - 1.5,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'run':<18}{'violation %':>12}{'p95 ms':>10}{'mean acc':>10}{'failed':>8}")
    for run, r in runs.items():
        acc = "-" if r["mean_acc"] is None else f"{r['mean_acc']:.2f}"
        print(f"{run:<18}{r['violation_pct']:>12.1f}{r['p95_ms']:>10.0f}{acc:>10}"
              f"{r['failed']:>8}")
    print(f"bundle: {source}; objective {objective_ms} ms; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
