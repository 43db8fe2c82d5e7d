"""Reaction to bursts: the per-batch worker loop, the operator's loop, both, and static levels.

What runs (issue 18, item 2; a reduced version, see *Reduced* below): one real TorchServe
(1 worker, 1 torch thread, batch 4, 5 ms batch delay) serving a four-level nested ResNet-20 at
64x64 (the geometry of ``benchmarks/elastic_vs_static.py``), two real Prometheus servers
scraping it, one every 15 s and one every second, and an open-loop client replaying each trace
once per configuration:

* ``static_full`` / ``static_narrowest``: one level in the control file, left there;
* ``operator_15s`` / ``operator_1s``: the operator's own ``decide`` (Predictive) run locally
  against the 15 s or the 1 s Prometheus, writing the level alone (``loops: Operator``);
  15 s: 30 s query windows, an evaluation every 5 s; 1 s: 2 s windows, every second;
* ``worker``: ceiling = the full level, floor = the narrowest, the objective: each worker picks
  per batch (``loops: Worker``, no operator decision moves);
* ``both``: the operator's loop on the 15 s Prometheus (a cluster's usual scrape interval) sets
  the ceiling, the workers choose under it (``loops: Both``, the default).

The client stamps each request's arrival (``x-elastiserve-arrival-ns``) at the time it is due,
which is what the pod's gateway does on receipt (the client never holds a request back: up to
``MAX_IN_FLIGHT`` in flight, well above what the server queues in these traces); latency is
measured from the due time (no coordinated omission).

Capacities: each level's SLO rate (highest open-loop rate whose client p95 meets the objective,
``elastic_vs_static.slo_rate``, a short bisection here) calibrates the operator's profile;
``C`` is the full level's. Traces, as multiples of ``C``:

* ``step``: 0.5C, a step to 2C within one second, held 10 s (a plateau), a fall to 0.5C;
* ``spike``: 0.5C, a 3 s spike at 2C, 0.5C again;

Per configuration and trace: ``slo_attainment`` (share of the requests due that were answered
200 within the objective), ``mean_accuracy`` (each answer credited with its level's accuracy),
``failed_requests``, ``recovery_s`` (worst over the trace's onsets: from the onset until the
client p95 of the requests due in each following second is back under the objective and stays
there until the next onset; 0 if it never broke) and ``peak_over_narrowest`` (the trace's peak
rate over the narrowest level's SLO rate).

Reduced, and why (say so wherever these numbers are quoted):

* the bundle's weights are random (no trained bundle is on this machine, and training one takes
  ~35 min of the shared cores): per-level accuracies are the ones the trained bundle of the same
  geometry reached (``benchmarks/results/elastic_vs_static.json``), so ``mean_accuracy`` is the
  accuracy the served mix *would* have with that bundle; latency depends on the geometry only;
* one run per configuration and trace, traces of 20-30 s, capacities from a 4-step bisection;
* the operator's loop is the local one (no API server, no level agent: the control file is
  written directly, as ``elastic_vs_static`` does);
* the machine is shared (2 cores, other sessions running): the 1-minute load average is
  recorded with every run; at load averages of 10-27 a 100 ms objective sat inside the
  machine's own scheduling noise (even the narrowest level at half load broke it in some
  seconds), so the objective defaults to 250 ms (``--objective-ms``).

    nice python benchmarks/reaction.py

Writes ``benchmarks/results/reaction.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reaction.json"
ACCURACY_SOURCE = ROOT / "benchmarks" / "results" / "elastic_vs_static.json"
NAMESPACE = "bench"
MODEL = "elastic"
MAX_IN_FLIGHT = 128
DEFAULT_OBJECTIVE_MS = 250
CONFIGS = ("static_full", "static_narrowest", "operator_15s", "operator_1s", "worker", "both")
# (seconds, from, to) as multiples of C; a 1 s ramp is the "step within one second".
TRACES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "step": ((6.0, 0.5, 0.5), (1.0, 0.5, 2.0), (10.0, 2.0, 2.0), (1.0, 2.0, 0.5),
             (10.0, 0.5, 0.5)),
    "spike": ((6.0, 0.5, 0.5), (3.0, 2.0, 2.0), (10.0, 0.5, 0.5)),
}
SLOW = {"scrape_s": 15.0, "window_s": 30, "evaluation_s": 5}
FAST = {"scrape_s": 1.0, "window_s": 2, "evaluation_s": 1}


def _evs() -> Any:
    """``benchmarks/elastic_vs_static.py``: its capacity probes, offered-rate counter and
    test image are reused as they are, so both benchmarks measure the same way."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    return importlib.import_module("elastic_vs_static")


def onsets(trace: Sequence[tuple[float, float, float]]) -> list[float]:
    """Seconds into the trace where the rate starts rising (each burst's onset)."""
    found, at, previous_end = [], 0.0, None
    for duration, start, end in trace:
        rising = end > start or (previous_end is not None and start > previous_end)
        if rising:
            found.append(at)
        at += duration
        previous_end = end
    return found


def recovery_s(p95_per_second: Sequence[float | None], objective_s: float,
               burst_onsets: Sequence[float]) -> float:
    """Worst time from an onset until every later second (up to the next onset) is back
    under the objective; a second with no request due counts as met."""
    worst = 0.0
    edges = [*burst_onsets, float(len(p95_per_second))]
    for onset, stop in itertools.pairwise(edges):
        late = [s for s in range(int(onset), min(len(p95_per_second), math.ceil(stop)))
                if (value := p95_per_second[s]) is not None and value > objective_s]
        if late:
            worst = max(worst, late[-1] + 1 - onset)
    return round(worst, 1)


def policy_spec(levels: int, capacities: Sequence[float], names: Sequence[str],
                accuracies: Sequence[float], signals: dict[str, float], loops: str,
                offered_metric: str, objective_ms: int) -> dict[str, Any]:
    """The CR the local loop plays, its windows scaled to the scrape interval."""
    from elastiserve_operator.signals.prometheus import end_to_end_latency_query

    window = int(signals["window_s"])
    evaluation = int(signals["evaluation_s"])
    return {
        "model": {
            "levelCount": levels,
            "source": {"localPath": f"/models/{MODEL}.mar"},
            "profile": [{"name": n, "capacityRps": round(c, 2), "accuracy": a}
                        for n, c, a in zip(names, capacities, accuracies, strict=True)],
        },
        "objective": {
            "p95Ms": objective_ms,
            "latencyQuery": end_to_end_latency_query(f"{window}s"),
            "requestRateQuery": (f'sum(rate({offered_metric}{{namespace="$namespace",'
                                 f'model_name="$model"}}[{window}s]))'),
        },
        "serving": {"workers": 1, "batchSize": 4, "maxBatchDelayMs": 5},
        "policy": {
            "loops": loops,
            "mode": "Predictive",
            "evaluationIntervalSeconds": evaluation,
            "stableWindowSeconds": max(6, 3 * evaluation),
            "panicWindowSeconds": 2 * evaluation,
            "panicThreshold": 2.0,
            "tolerance": 0.1,
            "headroom": 0.2,
            "widenStabilizationSeconds": max(6, 3 * evaluation, window + 1),
            "settleSeconds": window + 1,
            "staleAfterSeconds": max(10, 4 * int(signals["scrape_s"])),
        },
        "nodePressure": {"enabled": False},
    }


class OperatorLoop:
    """The operator's evaluation run locally; writes the level, and with ``loops: Both`` the
    workers' bounds beside it, as the level agent does with ``status.workerBounds``."""

    def __init__(self, spec_dict: dict[str, Any], prom_url: str, control: Path) -> None:
        from elastiserve_operator.policy_state import PolicyState
        from elastiserve_operator.profile import profile_from_spec
        from elastiserve_operator.signals.prometheus import render_query
        from elastiserve_operator.spec import parse_spec
        from elastiserve_operator.status import worker_bounds

        self.spec = parse_spec(spec_dict)
        self.profile = profile_from_spec(self.spec.model.profile)
        fill = {"namespace": NAMESPACE, "name": MODEL, "model": MODEL}
        assert self.spec.objective.latency_query and self.spec.objective.request_rate_query
        self.latency_q = render_query(self.spec.objective.latency_query, **fill)
        self.rate_q = render_query(self.spec.objective.request_rate_query, **fill)
        self.bounds = worker_bounds(self.spec)
        self.prom_url = prom_url
        self.control = control
        self.state = PolicyState.initial(self.spec.model.level_count - 1, time.time())
        self.moves: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), daemon=True)

    def start(self) -> None:
        self.write(self.state.level)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)

    def write(self, level: int) -> None:
        write_state(self.control, level, self.bounds)

    async def _loop(self) -> None:
        from elastiserve_operator.policy import decide
        from elastiserve_operator.signals.prometheus import PrometheusClient, gather_observation

        async with PrometheusClient(self.prom_url) as client:
            started = time.monotonic()
            while not self._stop.is_set():
                gathered = await gather_observation(client, self.latency_q, self.rate_q)
                decision = decide(gathered.observation, self.spec, self.profile, self.state,
                                  time.time())
                self.state = decision.state
                if decision.changed:
                    self.write(decision.level)
                    self.moves.append({"t": round(time.monotonic() - started, 1),
                                       "level": decision.level, "cause": decision.cause.value})
                await asyncio.sleep(self.spec.policy.evaluation_interval_s)


def write_state(control: Path, level: int, bounds: dict[str, Any] | None) -> None:
    """The next generation of the control file: the level, and the workers' bounds if any."""
    from elastiserve_serve.runtime.control import (
        ControlState,
        read_control_file,
        write_control_file,
    )

    last = read_control_file(control)
    generation = (last.generation + 1) if last else 1
    if bounds is None:
        write_control_file(control, ControlState(level, generation))
    else:
        write_control_file(control, ControlState(level, generation, None, bounds["floor"],
                                                 float(bounds["objectiveMs"])))


@dataclass(frozen=True)
class Answer:
    due: float
    latency_s: float
    status: int
    level: str | None


def run_trace(url: str, headers: dict[str, str], body: bytes, offsets: Sequence[float],
              start: float) -> list[Answer]:
    """Open loop from ``start``: each request stamped with its due time (gateway-style)."""
    import httpx

    from elastiserve_serve.runtime.control import ARRIVAL_HEADER

    answers: list[Answer] = []
    lock = threading.Lock()
    wall_offset_ns = time.time_ns() - int(time.monotonic() * 1e9)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT,
                          max_keepalive_connections=MAX_IN_FLIGHT)
    with httpx.Client(timeout=60.0, limits=limits) as client, \
            ThreadPoolExecutor(MAX_IN_FLIGHT) as pool:

        def send(due: float) -> None:
            stamped = {**headers, ARRIVAL_HEADER: str(int(due * 1e9) + wall_offset_ns)}
            try:
                response = client.post(url, content=body, headers=stamped)
                status, level = response.status_code, response.headers.get("x-elastiserve-level")
            except httpx.HTTPError:
                status, level = 0, None
            with lock:
                answers.append(Answer(due, time.monotonic() - due, status, level))

        for offset in offsets:
            due = start + offset
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, due)
    return sorted(answers, key=lambda a: a.due)


def summarise(answers: Sequence[Answer], start: float, duration: float,
              accuracy: dict[str, float], trace: Sequence[tuple[float, float, float]],
              peak_over_narrowest: float, objective_s: float) -> dict[str, Any]:
    from elastiserve_serve.loadgen import percentile

    ok = [a for a in answers if a.status == 200]
    within = sum(1 for a in ok if a.latency_s <= objective_s)
    credited = [accuracy[a.level] for a in ok if a.level in accuracy]
    per_second: list[float | None] = []
    for second in range(max(1, math.ceil(duration))):
        due = [a.latency_s for a in answers if start + second <= a.due < start + second + 1]
        per_second.append(percentile(due, 95) if due else None)
    levels: dict[str, int] = {}
    for a in ok:
        levels[str(a.level)] = levels.get(str(a.level), 0) + 1
    return {
        "slo_attainment": round(within / len(answers), 4) if answers else None,
        "mean_accuracy": round(sum(credited) / len(credited), 4) if credited else None,
        "failed_requests": len(answers) - len(ok),
        "recovery_s": recovery_s(per_second, objective_s, onsets(trace)),
        "peak_over_narrowest": round(peak_over_narrowest, 3),
        "requests": len(answers),
        "p95_ms": round(percentile([a.latency_s for a in answers], 95) * 1000, 1),
        "answers_per_level": levels,
        "p95_ms_per_second": [None if v is None else round(v * 1000, 1) for v in per_second],
    }


def closed_loop(url: str, headers: dict[str, str], body: bytes,
                seconds: float, clients: int = 8) -> tuple[float, dict[str, int]]:
    """Answers/s (200s only) with ``clients`` closed-loop clients, and every status seen."""
    import httpx

    statuses: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < deadline:
                try:
                    status = str(http.post(url, content=body, headers=headers).status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses.get("200", 0) / (time.monotonic() - start), statuses


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write")
    parser.add_argument("--objective-ms", type=int, default=DEFAULT_OBJECTIVE_MS,
                        help="p95 objective (above this shared machine's scheduling noise)")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help=f"comma-separated subset of {', '.join(CONFIGS)}")
    parser.add_argument("--traces", default=",".join(TRACES),
                        help=f"comma-separated subset of {', '.join(TRACES)}")
    args = parser.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    traces = [t for t in args.traces.split(",") if t]
    bad = [c for c in configs if c not in CONFIGS] + [t for t in traces if t not in TRACES]
    if bad or not configs or not traces:
        parser.error(f"unknown or no configuration/trace: {bad}")
    if args.objective_ms <= 0:
        parser.error(f"--objective-ms must be > 0 (got {args.objective_ms})")
    objective_ms = args.objective_ms
    sys.path.insert(0, str(ROOT))
    evs = _evs()

    from elastiserve.testing.prometheus import ScrapeTarget, run_prometheus
    from elastiserve_serve.archive import ArchiveSpec, build_archive
    from elastiserve_serve.loadgen import piecewise_arrivals
    from elastiserve_serve.ts_server import free_port, run_torchserve
    from elastiserve_store.bundle import load_bundle
    from tests.serving.bundles import make_bundle

    borrowed = json.loads(ACCURACY_SOURCE.read_text())["accuracy"]
    load_average: dict[str, Any] = {"start": _load()}
    counter = evs.OfferedCounter()
    with tempfile.TemporaryDirectory(prefix="reaction-") as tmp_name, \
            evs.serve_offered(counter) as offered_address:
        tmp = Path(tmp_name)
        names = tuple(borrowed)
        bundle = make_bundle(tmp / "bundle", width_mult=1.0, ratios=(0.25, 0.5, 0.75, 1.0),
                             size=64, names=names)
        manifest = load_bundle(bundle).manifest
        accuracy = {name: float(borrowed[name]) for name in names}
        levels = len(names)
        control = tmp / "shm" / "level.json"
        write_state(control, levels - 1, None)
        spec = ArchiveSpec(workers=1, batch_size=4, max_batch_delay_ms=5, response_timeout_s=60,
                           handler={"control_file": str(control), "threads": 1})
        build_archive(bundle, tmp / "store", MODEL, spec)
        metrics_port = free_port()
        labels = (("namespace", NAMESPACE),)
        scrapes = [ScrapeTarget("torchserve", f"127.0.0.1:{metrics_port}", labels=labels),
                   ScrapeTarget("gateway", offered_address, labels=labels)]
        with run_torchserve(tmp / "ts", tmp / "store", [f"{MODEL}={MODEL}.mar"],
                            metrics_port=metrics_port) as server, \
                run_prometheus(tmp / "prom15", scrapes,
                               scrape_interval_s=SLOW["scrape_s"]) as prom_slow, \
                run_prometheus(tmp / "prom1", scrapes,
                               scrape_interval_s=FAST["scrape_s"]) as prom_fast:
            url = f"{server.inference_url}/predictions/{MODEL}"
            headers = {"Authorization": f"Bearer {server.keys.inference}"}
            body, label = evs.test_image_png(manifest.input.height, manifest.input.width)
            slo_rates: list[float] = []
            closed: list[dict[str, Any]] = []
            for k in range(levels):
                write_state(control, k, None)
                closed_loop(url, headers, body, 2.0)  # this level's first batches
                ceiling, statuses = closed_loop(url, headers, body, 4.0)
                if ceiling <= 0:
                    raise SystemExit(f"level {names[k]} answered nothing in 4 s closed loop: "
                                     f"statuses {statuses}")
                rate, probes = evs.slo_rate(url, headers, body, objective_ms / 1000,
                                            0.3 * ceiling, 1.5 * ceiling, steps=4, seconds=3.0)
                slo_rates.append(rate)
                closed.append({"closed_loop_rps": round(ceiling, 1), "statuses": statuses,
                               "probes_rps_p95ms_failed": probes})
                print(f"level {names[k]}: SLO rate {rate:.1f} rps (closed loop {ceiling:.1f}, "
                      f"statuses {statuses})", flush=True)
            full, narrowest = slo_rates[-1], slo_rates[0]
            profile_caps = [evs.model_capacity(r, objective_ms / 1000) for r in slo_rates]
            bounds = {"floor": 0, "objectiveMs": objective_ms}
            results: dict[str, dict[str, Any]] = {}
            moves: dict[str, dict[str, Any]] = {}
            for trace_name in traces:
                trace = [(d, a * full, b * full) for d, a, b in TRACES[trace_name]]
                duration = sum(d for d, _, _ in trace)
                offsets = piecewise_arrivals(trace)
                peak = max(max(a, b) for _, a, b in trace) / narrowest
                for config in configs:
                    loop = None
                    if config in ("operator_15s", "operator_1s", "both"):
                        signals = FAST if config == "operator_1s" else SLOW
                        prom = prom_fast if config == "operator_1s" else prom_slow
                        loop = OperatorLoop(
                            policy_spec(levels, profile_caps, names, list(accuracy.values()),
                                        signals, "Both" if config == "both" else "Operator",
                                        evs.OFFERED_METRIC, objective_ms),
                            prom.url, control)
                    elif config == "worker":
                        write_state(control, levels - 1, bounds)
                    else:
                        write_state(control, levels - 1 if config == "static_full" else 0, None)
                    # The previous run's requests leave the slow query windows first.
                    time.sleep(SLOW["window_s"] + SLOW["scrape_s"] if loop is not None else 3)
                    before = _load()
                    start = time.monotonic() + 0.5
                    counter.begin(offsets, start)
                    if loop is not None:
                        loop.start()
                    answers = run_trace(url, headers, body, offsets, start)
                    counter.end()
                    if loop is not None:
                        loop.stop()
                    row = summarise(answers, start, duration, accuracy, TRACES[trace_name],
                                    peak, objective_ms / 1000)
                    row["load_average_1m"] = [before, _load()]
                    results.setdefault(trace_name, {})[config] = row
                    if loop is not None:
                        moves.setdefault(trace_name, {})[config] = loop.moves
                    print(f"{trace_name:>6} {config:<17} attainment {row['slo_attainment']}"
                          f" acc {row['mean_accuracy']} failed {row['failed_requests']}"
                          f" recovery {row['recovery_s']} s p95 {row['p95_ms']} ms"
                          f" levels {row['answers_per_level']}", flush=True)
            write_state(control, levels - 1, None)
    load_average["end"] = _load()

    pairs: dict[str, Any] = {}
    for trace_name, rows in results.items():
        if "both" in rows and "static_full" in rows:
            b, f = rows["both"], rows["static_full"]
            pairs[trace_name] = {
                "attainment_both_over_static_full":
                    round(b["slo_attainment"] / f["slo_attainment"], 3)
                    if f["slo_attainment"] else None,
                "accuracy_both": b["mean_accuracy"], "accuracy_static_full": f["mean_accuracy"],
            }
    out = {
        "reduced": ("random-weight bundle of the trained bundle's geometry (ResNet-20, 4 levels, "
                    "1x64x64) with that bundle's per-level accuracies borrowed from "
                    "elastic_vs_static.json; one run per configuration and trace; 20-30 s "
                    "traces; 4-step capacity bisection; operator loop run locally (no API "
                    "server); shared 2-core machine"),
        "objective_ms": objective_ms,
        "levels": list(names),
        "accuracy": accuracy,
        "slo_rate_rps": [round(r, 1) for r in slo_rates],
        "capacity_readings": closed,
        "profile_capacity_rps": [round(c, 1) for c in profile_caps],
        "request": f"one Fashion-MNIST test image (class {label}) as PNG at 64x64",
        "signals": {"operator_15s": SLOW, "operator_1s": FAST, "both": SLOW},
        "client": {"max_in_flight": MAX_IN_FLIGHT,
                   "arrival_stamp": "due time (as the gateway stamps on receipt)"},
        "traces_x_full_capacity": {t: [list(p) for p in TRACES[t]] for t in traces},
        "load_average_1m": load_average,
        "traces": results,
        "operator_moves": moves,
        "superserve_pair": pairs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'trace':<7}{'config':<18}{'attain':>8}{'acc':>8}{'failed':>8}{'recov s':>9}"
          f"{'peak/narrow':>12}")
    for trace_name, rows in results.items():
        for config, r in rows.items():
            acc = "-" if r["mean_accuracy"] is None else f"{r['mean_accuracy']:.4f}"
            print(f"{trace_name:<7}{config:<18}{r['slo_attainment']:>8.4f}{acc:>8}"
                  f"{r['failed_requests']:>8}{r['recovery_s']:>9.1f}"
                  f"{r['peak_over_narrowest']:>12.3f}")
    print(f"SuperServe-style pair: {json.dumps(pairs)}; written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
