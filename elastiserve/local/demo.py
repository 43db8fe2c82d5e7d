"""``elastiserve demo`` (``make demo``): the whole loop on one machine, no cluster.

Steps, each reusing the component the product ships:

1. build (or reuse) a small nested model on Fashion-MNIST with ``elastiserve train``;
2. archive it and start TorchServe with the safe configuration and our handler;
3. start a real Prometheus scraping TorchServe's metrics endpoint;
4. measure every level's capacity through TorchServe (pinned requests), so that the objective
   and the load ramp are relative to what *this* machine serves, not to a number that held on
   someone else's;
5. drive an open-loop ramp from half the full level's capacity to past it and back, while the
   operator's policy (:mod:`.loop`) reads Prometheus and switches the level;
6. print a line per second, write ``timeline.json`` and ``timeline.png``, stop everything.

The policy windows are shortened (seconds instead of minutes) so that a narrowing and the
widening after it fit in about three minutes; :class:`DemoPolicy` lists them. Everything else
(PromQL shapes, the decision rules, the control file) is what runs in a cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from elastiserve.testing.prometheus import ScrapeTarget, run_prometheus
from elastiserve_operator.policy import predict_p95_s
from elastiserve_operator.profile import LevelProfile
from elastiserve_operator.signals.prometheus import PrometheusClient
from elastiserve_operator.spec import ElasticModelSpec, parse_spec
from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.loadgen import percentile
from elastiserve_serve.runtime.settings import PIN_HEADER
from elastiserve_serve.ts_server import TorchServe, run_torchserve
from elastiserve_store.manifest import Manifest

from .cli_demo import IMAGES_PER_REQUEST
from .loop import LoopEvent, LoopThread, PolicyLoop, end_to_end_p95_query, rate_query
from .ramp import LoadPlan, Outcome, Phase, RampLoad, Request

MODEL = "demo"
MAX_IN_FLIGHT = 160
"""More than TorchServe's ``job_queue_size`` (100) plus a batch per worker: under overload the
backlog must wait in TorchServe's queue, where the metrics see it (and past 100, be refused with
503), not in the load generator's own thread pool, where only the client would notice."""

DEFAULT_TRAIN_ARGS: tuple[str, ...] = (
    "--dataset", "fashion-mnist", "--arch", "resnet20", "--width-mult", "0.5", "--levels", "4",
    "--train-subset", "5000", "--test-subset", "1000", "--epochs", "1", "--core-epochs", "2",
    "--grow-epochs", "0.5", "--threads", "2", "--batch-size", "64",
)
"""Under a CPU-minute (40 s wall on two idle cores, 4-5 min when other jobs load them), giving
0.62 / 0.63 / 0.69 / 0.71 test accuracy from the narrowest to the full level. Batch 64 rather
than 128 doubles the optimiser steps of so short a run for the same compute, and the second core
epoch lifts the narrowest level from 0.33: a demo model, not a benchmark."""

DEMO_GEOMETRY: dict[str, Any] = {"arch": "resnet20", "width_mult": 0.5, "size": 28,
                                 "channels": 1}
"""The model ``DEFAULT_TRAIN_ARGS`` trains, as the serving benchmark rebuilds it (random
weights) to time every level of the demo's model (benchmarks/serving.py ``demo_bundle``)."""


@dataclass(frozen=True)
class DemoPolicy:
    """Policy windows for the demo: the CRD's shapes, with seconds where a cluster has minutes.

    A 1 s evaluation interval and 1 s scrapes; a 3 s panic window (KPA: 6 s); a 10 s stable
    window (KPA: 60 s); widening only after 20 s of headroom (HPA: 300 s); 5 s of settling after
    a narrowing, the length of the query window, so readings of the slower level are not acted
    on twice.
    """

    evaluation_interval_s: int = 1
    stable_window_s: int = 10
    panic_window_s: int = 3
    panic_threshold: float = 2.0
    tolerance: float = 0.1
    headroom: float = 0.2
    widen_stabilization_s: int = 20
    settle_s: int = 5
    stale_after_s: int = 10

    def spec(self) -> dict[str, Any]:
        return {
            "mode": "Predictive",
            "evaluationIntervalSeconds": self.evaluation_interval_s,
            "stableWindowSeconds": self.stable_window_s,
            "panicWindowSeconds": self.panic_window_s,
            "panicThreshold": self.panic_threshold,
            "tolerance": self.tolerance,
            "headroom": self.headroom,
            "widenStabilizationSeconds": self.widen_stabilization_s,
            "settleSeconds": self.settle_s,
            "staleAfterSeconds": self.stale_after_s,
        }


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo varies; the defaults are ``make demo``'s."""

    run_dir: Path = Path("runs/demo")
    bundle: Path | None = None  # serve this bundle instead of training one
    train_args: tuple[str, ...] = DEFAULT_TRAIN_ARGS
    images_per_request: int = IMAGES_PER_REQUEST  # model work per request (see there)
    distinct_requests: int = 64
    workers: int = 1
    worker_threads: int = 1
    batch_size: int = 4
    max_batch_delay_ms: int = 5
    probe_s: float = 4.0
    objective_ms: int | None = None  # None: derived from the measured full level
    low_factor: float = 0.5  # of the full level's capacity
    peak_factor: float = 2.0
    cap_peak: bool = True  # keep the peak within the narrowest level's capacity
    phase_s: tuple[float, float, float, float, float] = (20.0, 30.0, 40.0, 20.0, 50.0)
    query_window_s: int = 5
    scrape_interval_s: float = 1.0
    policy: DemoPolicy = field(default_factory=DemoPolicy)
    live: bool = True

    @property
    def phase_names(self) -> tuple[str, ...]:
        return ("low", "ramp-up", "peak", "ramp-down", "low-again")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LevelMeasure:
    """One level measured through TorchServe with pinned requests."""

    name: str
    service_time_s: float  # median latency of sequential requests
    capacity_rps: float  # completed requests/s with the queue kept full
    accuracy: float | None

    def profile(self) -> LevelProfile:
        return LevelProfile(self.name, self.service_time_s, self.capacity_rps, self.accuracy)


@dataclass(frozen=True)
class Second:
    """One second of the run, as the live view prints it and the timeline stores it."""

    t: float  # end of the second, seconds since the ramp started
    offered_rps: float
    served_rps: float
    failed: int
    client_p95_s: float | None  # responses received over the last query window
    loop_p95_s: float | None  # the p95 the policy acted on at that time
    loop_rate_rps: float | None
    level: int  # level decided (written to the control file)
    served_level: str | None  # the level most responses in this second came from
    accuracy: float | None
    served_by_level: dict[str, int] = field(default_factory=dict)
    """Answers per level this second, from each response's level header: what the workers'
    per-batch choice served under the operator's level (the ceiling)."""


@dataclass
class DemoResult:
    """What the run produced, for the summary and the test."""

    measures: list[LevelMeasure]
    objective_s: float
    plan: LoadPlan
    seconds: list[Second]
    switches: list[dict[str, Any]]
    outcomes: list[Outcome]
    timeline_json: Path
    timeline_png: Path | None
    torchserve_pid: int
    prometheus_pid: int
    notes: list[str]

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok)

    @property
    def over_objective(self) -> float:
        ok = [o for o in self.outcomes if o.ok]
        if not ok:
            return math.nan
        return sum(1 for o in ok if o.latency_s > self.objective_s) / len(ok)


# --------------------------------------------------------------------------- steps


def ensure_model(config: DemoConfig, say: Callable[[str], None]) -> Path:
    """The bundle to serve: ``config.bundle``, or ``run_dir/model/bundle`` trained (resumably)."""
    if config.bundle is not None:
        return config.bundle
    out = config.run_dir / "model"
    bundle = out / "bundle"
    if (bundle / "manifest.json").is_file() and (out / "report.md").is_file():
        say(f"model: reusing {bundle}")
        return bundle
    say(f"model: training {' '.join(config.train_args)} -> {out} (resumes if interrupted)")
    started = time.monotonic()
    command = [sys.executable, "-m", "elastiserve.cli", "train", *config.train_args, "--out",
               str(out)]
    subprocess.run(command, check=True)
    say(f"model: trained in {time.monotonic() - started:.0f} s")
    return bundle


NPY_CONTENT_TYPE = "application/x-npy"


def make_requests(manifest: Manifest, config: DemoConfig) -> list[Request]:
    """``.npy`` tensor bodies of real test images (Fashion-MNIST) when the bundle was trained
    on them, random pixels otherwise; each carries the true labels so accuracy can be scored.

    Binary, not a JSON tensor: parsing 16 images of JSON text cost more than the narrowest
    level's forward pass (``serving-breakdown.json``), which hid the levels' difference."""
    import io

    import numpy as np

    shape = (manifest.input.channels, manifest.input.height, manifest.input.width)
    per = config.images_per_request
    count = config.distinct_requests * per
    images, labels = _test_images(manifest, shape, count)
    requests = []
    for i in range(config.distinct_requests):
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(images[i * per:(i + 1) * per]), allow_pickle=False)
        requests.append(Request(buffer.getvalue(), tuple(labels[i * per:(i + 1) * per]),
                                NPY_CONTENT_TYPE))
    return requests


def _test_images(
    manifest: Manifest, shape: tuple[int, int, int], count: int
) -> tuple[Any, list[str]]:
    """float32 pixels in [0, 1], ``[count, C, H, W]``, and their labels (empty when random)."""
    import numpy as np

    dataset = str(manifest.training.get("dataset", "")) if manifest.training else ""
    if "fashion" in dataset.lower() or manifest.class_names[:1] == ("T-shirt/top",):
        from elastiserve_train.data import load_fashion_mnist

        test = load_fashion_mnist().test
        pixels = test.images[:count].numpy().astype(np.float32) / 255.0
        if pixels.shape[1:] != shape:
            raise ValueError(f"test images {pixels.shape[1:]} do not match the model {shape}")
        names = [manifest.class_names[int(k)] for k in test.labels[:count]]
        return pixels, names
    rng = np.random.default_rng(0)
    return rng.random((count, *shape), dtype=np.float32), []


def measure_levels(
    server: TorchServe, names: Sequence[str], requests: Sequence[Request], manifest: Manifest,
    config: DemoConfig, say: Callable[[str], None],
) -> list[LevelMeasure]:
    """Per level: batch-1 service time (sequential requests) and capacity (queue kept full).

    Pinned requests (``X-Elastiserve-Level``) measure a level without switching the deployment.
    The capacity is what the predictor needs; a bundle's archive-time numbers were taken on
    another machine with another load, which is exactly what this demo must not assume.
    """
    url = f"{server.inference_url}/predictions/{MODEL}"
    auth = {"Authorization": f"Bearer {server.keys.inference}"}
    concurrency = max(2, 2 * config.workers * config.batch_size)
    accuracies = {lv.name: lv.accuracy for lv in manifest.levels}
    measures = []
    with httpx.Client(timeout=30.0, limits=httpx.Limits(max_connections=concurrency)) as client:
        for name in names:
            service, capacity = _probe_level(
                client, url, {**auth, PIN_HEADER: name}, requests, concurrency, config.probe_s
            )
            acc = accuracies.get(name)
            measures.append(LevelMeasure(name, service, capacity, acc))
            say(f"  {name:>8}: service {service * 1000:6.1f} ms, capacity {capacity:6.1f} req/s"
                f" ({capacity * config.images_per_request:6.0f} images/s)"
                + (f", test accuracy {acc:.3f}" if acc is not None else ""))
    return measures


def _probe_level(
    client: httpx.Client, url: str, headers: dict[str, str], requests: Sequence[Request],
    concurrency: int, probe_s: float,
) -> tuple[float, float]:
    """(median sequential latency, completed requests/s with ``concurrency`` kept in flight)."""

    def post(i: int) -> None:
        request = requests[i % len(requests)]
        client.post(url, content=request.body,
                    headers={**headers, "Content-Type": request.content_type}).raise_for_status()

    for i in range(3):  # warm the connection and the level's kernels
        post(i)
    latencies: list[float] = []
    until = time.monotonic() + max(0.5, probe_s / 3)
    while time.monotonic() < until or len(latencies) < 5:
        begin = time.monotonic()
        post(len(latencies))
        latencies.append(time.monotonic() - begin)
    done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + probe_s

    def worker(offset: int) -> None:
        j = offset
        while time.monotonic() < stop_at:
            post(j)
            j += concurrency
            with lock:
                done[0] += 1

    begin = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statistics.median(latencies), done[0] / (time.monotonic() - begin)


def choose_objective_and_plan(
    measures: Sequence[LevelMeasure], config: DemoConfig
) -> tuple[float, LoadPlan, list[str]]:
    """An objective the full level meets at the low load, and a ramp past its capacity.

    The peak is ``peak_factor`` x the full level's capacity, but at most 85 % of the narrowest
    level's, so that narrowing can actually hold the objective (else the demo would only show
    that no level is fast enough).
    """
    notes = []
    full, narrow = measures[-1], measures[0]
    low = config.low_factor * full.capacity_rps
    peak = config.peak_factor * full.capacity_rps
    if config.cap_peak and peak > 0.85 * narrow.capacity_rps:
        capped = max(0.85 * narrow.capacity_rps, 1.1 * full.capacity_rps)
        notes.append(f"peak capped at {capped:.1f} req/s (narrowest level serves "
                     f"{narrow.capacity_rps:.1f}); asked for {peak:.1f}")
        peak = capped
    if config.objective_ms is not None:
        objective = config.objective_ms / 1000.0
    else:
        profile = [m.profile() for m in measures]
        at_low = predict_p95_s(profile, low, config.workers)[-1]
        line = (1.0 - config.policy.headroom) * 0.8
        objective = max(at_low / line, 4.0 * full.service_time_s, 0.02)
        objective = math.ceil(objective * 200.0) / 200.0  # round up to 5 ms
    w, up, hold, down, rest = config.phase_s
    names = config.phase_names
    plan = LoadPlan((
        Phase(names[0], w, low, low),
        Phase(names[1], up, low, peak),
        Phase(names[2], hold, peak, peak),
        Phase(names[3], down, peak, low),
        Phase(names[4], rest, low, low),
    ))
    return objective, plan, notes


def demo_spec(config: DemoConfig, mar: Path, levels: int, objective_s: float) -> ElasticModelSpec:
    """The ``ElasticModel`` spec the local loop runs, validated by the operator's parser."""
    return parse_spec({
        "model": {"source": {"localPath": str(mar.resolve())}, "levelCount": levels,
                  "name": MODEL},
        "objective": {"p95Ms": max(1, round(objective_s * 1000))},
        "policy": config.policy.spec(),
        # No node exporter runs locally; the CPU is shared with the load generator anyway.
        "nodePressure": {"enabled": False},
        "serving": {"workers": config.workers, "batchSize": config.batch_size,
                    "maxBatchDelayMs": config.max_batch_delay_ms},
    })


# --------------------------------------------------------------------------- timeline


class Timeline:
    """Turns outcomes and loop events into per-second rows (live and at the end)."""

    def __init__(self, load: RampLoad, loop: PolicyLoop, window_s: float) -> None:
        self.load = load
        self.loop = loop
        self.window_s = window_s
        # Loop events carry epoch seconds, outcomes monotonic ones: one offset maps them.
        self.epoch_offset = time.time() - time.monotonic()

    def ramp_offset(self, epoch: float) -> float:
        start = self.load.started or time.monotonic()
        return epoch - self.epoch_offset - start

    def second(self, t: float, scheduled: Sequence[float], outcomes: Sequence[Outcome]) -> Second:
        start = self.load.started or time.monotonic()
        t0, t1 = start + t - 1.0, start + t
        offered = sum(1 for s in scheduled if t0 <= s < t1)
        this = [o for o in outcomes if t0 <= o.received < t1]
        recent = [o.latency_s for o in outcomes if o.ok and t1 - self.window_s <= o.received < t1]
        ok = [o for o in this if o.ok]
        samples = sum(o.samples for o in ok)
        levels = Counter(o.level for o in ok if o.level)
        event = self.event_at(t)
        return Second(
            t=round(t, 3),
            offered_rps=float(offered),
            served_rps=float(len(ok)),
            failed=len(this) - len(ok),
            client_p95_s=percentile(recent, 95) if recent else None,
            loop_p95_s=event.p95_s if event else None,
            loop_rate_rps=event.rate_rps if event else None,
            level=event.level if event else self.loop.spec.levels.initial_level,
            served_level=levels.most_common(1)[0][0] if levels else None,
            accuracy=sum(o.correct for o in ok) / samples if samples else None,
            served_by_level=dict(sorted(levels.items())),
        )

    def event_at(self, t: float) -> LoopEvent | None:
        last = None
        for event in list(self.loop.events):
            if self.ramp_offset(event.at) <= t:
                last = event
        return last

    def rows(self) -> list[Second]:
        scheduled, outcomes = self.load.snapshot()
        if self.load.started is None or not outcomes:
            return []
        end = max(o.received for o in outcomes) - self.load.started
        return [self.second(float(t), scheduled, outcomes) for t in range(1, math.ceil(end) + 1)]

    def switches(self) -> list[dict[str, Any]]:
        return [
            {"t": round(self.ramp_offset(e.at), 2), "from": e.previous_level, "to": e.level,
             "level": e.level_name, "cause": e.cause, "reason": e.reason,
             "generation": e.generation}
            for e in list(self.loop.events) if e.changed
        ]


def _ms(value: float | None) -> str:
    return "   -  " if value is None else f"{value * 1000:5.0f}"


def live_line(row: Second, names: Sequence[str], objective_s: float, phase: str,
              events: Sequence[dict[str, Any]]) -> str:
    acc = "  -  " if row.accuracy is None else f"{row.accuracy:.2f}"
    line = (f"{row.t:5.0f}s {phase:>9} | offered {row.offered_rps:5.0f}/s served "
            f"{row.served_rps:5.0f}/s failed {row.failed:3d} | p95 loop {_ms(row.loop_p95_s)} ms"
            f" client {_ms(row.client_p95_s)} ms (objective {objective_s * 1000:.0f}) | level "
            f"{row.level} {names[row.level]:<6} acc {acc}")
    if row.served_by_level:
        line += " | workers served " + " ".join(
            f"{name} {row.served_by_level[name]}" for name in names if name in row.served_by_level)
    for event in events:
        arrow = "v" if event["to"] < event["from"] else "^"
        line += f"\n      {arrow} SWITCH {event['from']} -> {event['to']} ({event['cause']}): " \
                f"{event['reason']}"
    return line


def write_timeline(path: Path, result: DemoResult, config: DemoConfig,
                   names: Sequence[str]) -> None:
    document = {
        "objective_ms": result.objective_s * 1000.0,
        "levels": [asdict(m) for m in result.measures],
        "level_names": list(names),
        "plan": [asdict(p) for p in result.plan.phases],
        "policy": config.policy.spec(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()
                   if k not in ("policy",)},
        "switches": result.switches,
        "seconds": [asdict(s) for s in result.seconds],
        "summary": summary_dict(result),
        "notes": result.notes,
    }
    path.write_text(json.dumps(document, indent=1, default=str) + "\n")


def summary_dict(result: DemoResult) -> dict[str, Any]:
    ok = [o for o in result.outcomes if o.ok]
    latencies = [o.latency_s for o in ok]
    traffic = [s for s in result.seconds if s.client_p95_s is not None]
    breached = [s for s in traffic if s.client_p95_s is not None
                and s.client_p95_s > result.objective_s]
    pairs = [(s.loop_p95_s, s.client_p95_s) for s in traffic
             if s.loop_p95_s is not None and s.client_p95_s]
    by_level: dict[str, list[Outcome]] = {}
    for o in ok:
        by_level.setdefault(o.level or "?", []).append(o)
    return {
        "requests": len(result.outcomes),
        "failed_requests": result.failed,
        "requests_over_objective": round(result.over_objective, 4) if ok else None,
        "seconds_with_p95_over_objective": round(len(breached) / len(traffic), 4)
        if traffic else None,
        "client_p95_ms": round(percentile(latencies, 95) * 1000, 1) if latencies else None,
        "loop_vs_client_p95_ratio_median": round(statistics.median(a / b for a, b in pairs), 3)
        if pairs else None,
        "served_by_level": {k: len(v) for k, v in sorted(by_level.items())},
        "accuracy_by_level": {
            k: round(sum(o.correct for o in v) / max(1, sum(o.samples for o in v)), 4)
            for k, v in sorted(by_level.items()) if sum(o.samples for o in v)
        },
        "switches": len(result.switches),
    }


def plot_timeline(path: Path, result: DemoResult, names: Sequence[str]) -> Path:
    """Draw ``timeline.png`` from a finished run."""
    return draw_timeline(path, result.seconds, result.measures, result.objective_s,
                         result.switches, result.failed, names)


def replot(timeline_json: Path, png: Path) -> Path:
    """Draw the PNG again from a ``timeline.json`` (no server needed)."""
    doc = json.loads(timeline_json.read_text())
    return draw_timeline(
        png, [Second(**row) for row in doc["seconds"]],
        [LevelMeasure(**m) for m in doc["levels"]], doc["objective_ms"] / 1000.0,
        doc["switches"], int(doc["summary"]["failed_requests"]), doc["level_names"],
    )


def draw_timeline(
    path: Path, rows: Sequence[Second], measures: Sequence[LevelMeasure], objective_s: float,
    switches: Sequence[dict[str, Any]], failed_requests: int, names: Sequence[str],
) -> Path:
    """Three panels sharing time: load, p95 against the objective, level and accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in rows]
    fig, (ax_load, ax_lat, ax_lvl) = plt.subplots(
        3, 1, figsize=(10, 7.5), sharex=True, gridspec_kw={"height_ratios": [1.1, 1.2, 0.9]}
    )
    ax_load.plot(t, [s.offered_rps for s in rows], color="tab:blue", label="offered")
    ax_load.plot(t, [s.served_rps for s in rows], color="tab:green", label="served (200)")
    failed = [(s.t, s.failed) for s in rows if s.failed]
    if failed:
        ax_load.bar([f[0] for f in failed], [f[1] for f in failed], color="tab:red", width=0.8,
                    label="failed")
    for k, m in enumerate(measures):
        if k in (0, len(measures) - 1):
            ax_load.axhline(m.capacity_rps, color="grey", ls=":", lw=1)
            ax_load.annotate(f"{m.name} capacity", (0, m.capacity_rps), fontsize=7,
                             color="grey", va="bottom")
    top = max([m.capacity_rps for m in measures] + [s.offered_rps for s in rows]
              + [s.served_rps for s in rows])
    ax_load.set_ylim(0, top * 1.12)
    ax_load.set_ylabel("requests/s")
    ax_load.legend(loc="upper right", fontsize=8)

    def series(values: list[float | None]) -> list[float]:
        return [math.nan if v is None else v * 1000.0 for v in values]

    ax_lat.plot(t, series([s.loop_p95_s for s in rows]), color="tab:purple",
                label="p95 the policy acts on (Prometheus: handler p95 + mean queue wait)")
    ax_lat.plot(t, series([s.client_p95_s for s in rows]), color="tab:orange", alpha=0.8,
                label="p95 the load generator observes")
    ax_lat.axhline(objective_s * 1000, color="tab:red", ls="--", label="objective")
    # Linear up to 4x the objective: the overload spikes are clipped, the objective stays legible.
    peaks = [v for s in rows for v in (s.loop_p95_s, s.client_p95_s) if v is not None]
    ax_lat.set_ylim(0, min(max(peaks, default=objective_s), 4 * objective_s) * 1000 * 1.05)
    ax_lat.set_ylabel("p95 latency (ms)")
    ax_lat.legend(loc="upper left", fontsize=8)

    ax_lvl.step(t, [s.level for s in rows], where="post", color="black",
                label="operator's level (ceiling)")
    # The workers' per-batch choice: every level that answered in a second, the marker's area
    # its share of that second's answers, and the answers' mean level.
    points = [(s.t, names.index(name), count / max(1, sum(s.served_by_level.values())))
              for s in rows for name, count in s.served_by_level.items() if name in names]
    ax_lvl.scatter([p[0] for p in points], [p[1] for p in points],
                   s=[4 + 30 * p[2] for p in points], color="tab:green", alpha=0.7,
                   label="workers served (area: share)")
    mean_level = [sum(names.index(n) * c for n, c in s.served_by_level.items() if n in names)
                  / max(1, sum(s.served_by_level.values())) if s.served_by_level else math.nan
                  for s in rows]
    ax_lvl.plot(t, mean_level, color="tab:green", lw=1, alpha=0.8)
    ax_lvl.set_yticks(range(len(names)), [f"{k} {n}" for k, n in enumerate(names)])
    ax_lvl.set_ylim(-0.5, len(names) - 0.5)
    ax_lvl.set_ylabel("level")
    ax_lvl.set_xlabel("seconds since the ramp started")
    ax_acc = ax_lvl.twinx()
    ax_acc.plot(t, [math.nan if s.accuracy is None else s.accuracy for s in rows],
                color="tab:cyan", alpha=0.6, lw=1)
    ax_acc.set_ylabel("served accuracy", color="tab:cyan", fontsize=8)
    ax_acc.set_ylim(0, 1)
    ax_lvl.legend(loc="lower left", fontsize=8)
    for switch in switches:
        color = "tab:red" if switch["to"] < switch["from"] else "tab:green"
        for ax in (ax_load, ax_lat, ax_lvl):
            ax.axvline(switch["t"], color=color, alpha=0.35, lw=1)
        ax_lvl.annotate(switch["cause"], (switch["t"], switch["to"]), fontsize=6, rotation=90,
                        va="bottom", ha="right", color=color)
    ax_load.set_title(f"elastiserve demo: objective p95 {objective_s * 1000:.0f} ms, "
                      f"{len(switches)} switches, {failed_requests} failed requests",
                      fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- run


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM takes the Ctrl-C path, so every server is stopped on either."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(config: DemoConfig, say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo end to end; TorchServe and Prometheus are stopped however it ends."""
    run_dir = config.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = replace(config, run_dir=run_dir)
    with _terminate_as_interrupt():
        bundle = ensure_model(config, say)
        manifest = Manifest.read(bundle)
        names = manifest.level_names
        requests = make_requests(manifest, config)
        control = run_dir / "control" / "level.json"
        store = run_dir / "model-store"
        archive = ArchiveSpec(
            workers=config.workers, batch_size=config.batch_size,
            max_batch_delay_ms=config.max_batch_delay_ms,
            handler={"control_file": str(control), "allow_pin": True, "top_k": 1,
                     "threads": config.worker_threads, "max_samples": 64},
        )
        mar = build_archive(bundle, store, MODEL, archive, force=True)
        say(f"serving: {mar.name} ({len(names)} levels: {', '.join(names)}), "
            f"{config.workers} worker(s) x {config.worker_threads} thread(s), "
            f"batch {config.batch_size}")
        with run_torchserve(run_dir / "torchserve", store, [f"{MODEL}={mar.name}"],
                            min_ready_workers=config.workers) as server:
            target = ScrapeTarget("torchserve", server.metrics_address)
            with run_prometheus(run_dir / "prometheus", [target],
                                scrape_interval_s=config.scrape_interval_s) as prom:
                say(f"prometheus: {prom.url} scraping {server.metrics_address} every "
                    f"{config.scrape_interval_s:g} s")
                say(f"measuring each level ({config.images_per_request} images per request):")
                measures = measure_levels(server, names, requests, manifest, config, say)
                objective, plan, notes = choose_objective_and_plan(measures, config)
                for note in notes:
                    say(f"note: {note}")
                spec = demo_spec(config, mar, len(names), objective)
                say(f"objective: p95 <= {objective * 1000:.0f} ms; ramp "
                    + ", ".join(f"{p.name} {p.duration_s:.0f}s {p.start_rps:.0f}->"
                                f"{p.end_rps:.0f}/s" for p in plan.phases))
                say(f"policy (demo windows): {config.policy.spec()}")
                # The probe's queueing must leave the query window before the loop reads it.
                time.sleep(config.query_window_s + 2 * config.scrape_interval_s)
                result = _drive(config, server, prom.url, spec, measures, plan, requests,
                                control, names, objective, say)
                result.notes.extend(notes)
                result.torchserve_pid = server.process.pid
                result.prometheus_pid = prom.process.pid
    write_timeline(result.timeline_json, result, config, names)
    try:
        result.timeline_png = plot_timeline(run_dir / "timeline.png", result, names)
    except ImportError as err:  # matplotlib comes with the train extra
        result.notes.append(f"no PNG: {err}")
    return result


def _drive(
    config: DemoConfig, server: TorchServe, prometheus_url: str, spec: ElasticModelSpec,
    measures: Sequence[LevelMeasure], plan: LoadPlan, requests: Sequence[Request],
    control: Path, names: Sequence[str], objective: float, say: Callable[[str], None],
) -> DemoResult:
    url = f"{server.inference_url}/predictions/{MODEL}"
    auth = {"Authorization": f"Bearer {server.keys.inference}"}
    load = RampLoad(url, auth, requests, plan, max_in_flight=MAX_IN_FLIGHT, timeout_s=10.0)
    loop = PolicyLoop(
        spec=spec,
        profile=[m.profile() for m in measures],
        control_file=control,
        source=PrometheusClient(prometheus_url, timeout_s=2.0),
        latency_query=end_to_end_p95_query(MODEL, config.query_window_s),
        request_rate_query=rate_query(MODEL, config.query_window_s),
    )
    loop.start()
    stop = threading.Event()
    runner = LoopThread(loop, stop)
    load_thread = threading.Thread(target=load.run, args=(stop,), name="ramp", daemon=True)
    timeline = Timeline(load, loop, config.query_window_s)
    shown = 0
    runner.start()
    load_thread.start()
    try:
        while load_thread.is_alive():
            load_thread.join(0.25)
            if load.started is None:
                continue
            elapsed = time.monotonic() - load.started
            while config.live and shown + 1 <= elapsed - 0.05:
                shown += 1
                scheduled, outcomes = load.snapshot()
                row = timeline.second(float(shown), scheduled, outcomes)
                new = [s for s in timeline.switches() if shown - 1 < s["t"] <= shown]
                say(live_line(row, names, objective, plan.phase_at(shown - 0.5), new))
            if runner.error is not None:
                raise RuntimeError(f"policy loop failed: {runner.error!r}") from runner.error
    finally:
        stop.set()
        load_thread.join(30)
        runner.join(10)
    _, outcomes = load.snapshot()
    return DemoResult(
        measures=list(measures), objective_s=objective, plan=plan, seconds=timeline.rows(),
        switches=timeline.switches(), outcomes=outcomes,
        timeline_json=config.run_dir / "timeline.json", timeline_png=None,
        torchserve_pid=server.process.pid, prometheus_pid=0, notes=[],
    )


def print_summary(result: DemoResult, say: Callable[[str], None] = print) -> None:
    summary = summary_dict(result)
    say("")
    say("summary")
    say(f"  objective p95 {result.objective_s * 1000:.0f} ms; {summary['requests']} requests, "
        f"{summary['failed_requests']} failed")
    for s in result.switches:
        say(f"  {s['t']:6.1f}s  {s['from']} -> {s['to']} ({s['level']}) {s['cause']}: "
            f"{s['reason']}")
    if not result.switches:
        say("  no level switch happened")
    over = summary["requests_over_objective"]
    secs = summary["seconds_with_p95_over_objective"]
    say(f"  requests slower than the objective: {over:.1%}" if over is not None else
        "  no request answered")
    if secs is not None:
        say(f"  seconds whose client p95 broke the objective: {secs:.1%}")
    say(f"  p95 the loop acted on / p95 the client saw (median per second): "
        f"{summary['loop_vs_client_p95_ratio_median']}")
    say(f"  answered by level: {summary['served_by_level']}")
    if summary["accuracy_by_level"]:
        say(f"  served accuracy by level: {summary['accuracy_by_level']}")
    for note in result.notes:
        say(f"  note: {note}")
    say(f"  timeline: {result.timeline_json}" + (
        f", {result.timeline_png}" if result.timeline_png else ""))


# --------------------------------------------------------------------------- CLI


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(run_dir=args.run_dir, bundle=args.bundle,
                        objective_ms=args.objective_ms, peak_factor=args.peak_factor,
                        images_per_request=args.images_per_request, live=not args.quiet)
    started = time.monotonic()
    try:
        result = run_demo(config, lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("interrupted: TorchServe and Prometheus stopped", file=sys.stderr)
        return 130
    print_summary(result, lambda line: print(line, flush=True))
    print(f"  wall time {time.monotonic() - started:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .cli_demo import add_arguments

    parser = argparse.ArgumentParser(prog="python -m elastiserve.local.demo",
                                     description=__doc__.split("\n")[0] if __doc__ else None)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
