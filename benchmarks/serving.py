"""Serving benchmark through a real TorchServe: our handler against the stock image classifier.

What it measures, all with open-loop load (requests sent on a fixed schedule, latency counted
from the scheduled send time, so a stalled server shows as latency, not as less load):

* **Per level**: p50/p95/p99 at stepped arrival rates (x1.2 per step) until the p95 objective
  breaks (confirmed by one re-run, since this machine is shared); ``max_rps`` is the highest rate
  served within the objective with no failed request.
* **Our handler vs TorchServe's stock ``image_classifier``** on the *same* full model and the
  *same* request bytes, in the *same* TorchServe (one JVM, one configuration, one worker each,
  same batch size and delay): in the sweep (taking turns at each rate) and in *paired* runs,
  where both get the same rate at the same time so that the machine's noise hits both; the
  latency ratio comes from the paired runs. The stock handler needs a TorchScript file: the full
  level from ``load_bundle`` traced with ``torch.jit.trace``. That file exists only as this
  baseline; the product's load path stays safetensors with no pickle and no TorchScript file.
  Ours runs with ``trace_levels: true`` (levels traced in memory, see ``runtime/graph.py``); an
  eager copy of our handler is paired against the stock handler too.
* **Memory**: the TorchServe worker's RSS/USS with all levels (shared storage), with the full
  level alone (a one-level bundle of the same weights) and with one separate model per level,
  each worker warmed with the same requests; plus the exact tensor storage of each.
* **Switch time under load**: control-file writes during open-loop traffic; time from each write
  to the first answer carrying the new level.
* **In-process profile** of both handlers' steps (decode/preprocess, forward eager vs
  TorchScript, post-processing) to show where a latency difference comes from.

The model is a ResNet-20 (CIFAR-style, stride-1 stem) at 3x224x224 with ImageNet normalisation,
the geometry the stock handler's preprocessing (resize 256, centre crop 224) produces, with
random weights: accuracy is not measured here. Requests are one 256x256 JPEG.

The stock handler imports torchvision and captum, which the serving extra does not need; they
are installed beside the project once, outside the virtualenv, and put on the server's
``PYTHONPATH`` (both models see the same path)::

    .venv/bin/pip install --no-deps --target ~/.cache/elastiserve/stock-handler-deps \\
        torchvision captum
    nice -n 10 .venv/bin/python benchmarks/serving.py            # ~20 min on 2 shared cores
    nice -n 10 .venv/bin/python benchmarks/serving.py --quick    # smoke run, ~3 min

Writes ``benchmarks/results/serving.json`` (``--quick`` writes ``serving-quick.json``).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
STOCK_DEPS = Path.home() / ".cache" / "elastiserve" / "stock-handler-deps"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OURS, EAGER, STOCK = "elastic", "eager", "stock"
# Paired runs put both models under load at once, so they stay well below either's max rate
# (at 50 % each, both queued on a busy machine); each fraction runs twice, start order swapped.
PAIRED_FRACTIONS = (0.15, 0.25, 0.35)


# ----------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Step:
    """One offered rate held for a while against one target, and what the client saw."""

    target: str
    rate: float
    requests: int
    failed: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    achieved_rps: float  # answers (any status) per second of the sending window
    load_1m: float  # os.getloadavg()[0] when the step ended

    def sustained(self, objective_ms: float) -> bool:
        """Served within the objective: p95 under it and not one request failed."""
        return self.failed == 0 and self.p95_ms <= objective_ms


def rate_grid(start: float, factor: float, stop: float) -> list[float]:
    """Geometric arrival rates ``start, start*factor, ...`` up to ``stop``, rounded to 0.1."""
    if start <= 0 or factor <= 1 or stop < start:
        raise ValueError("need 0 < start <= stop and factor > 1")
    rates, rate = [], start
    while rate <= stop + 1e-9:
        rates.append(round(rate, 1))
        rate *= factor
    return rates


def max_sustained(steps: Sequence[Step], objective_ms: float, *,
                  strict: bool = False) -> Step | None:
    """The highest-rate step within the objective below the first confirmed breach.

    A rate counts as breached only when every run of it breached (a breach is re-run once:
    on a shared machine one other engineer's burst must not end a sweep). ``strict``: a rate
    counts as held only when every run of it held, and its worst run is reported (what
    :func:`sweep` with ``strict`` produces).
    """
    by_rate: dict[float, list[Step]] = {}
    for step in steps:
        by_rate.setdefault(step.rate, []).append(step)
    best: Step | None = None
    for rate in sorted(by_rate):
        good = [s for s in by_rate[rate] if s.sustained(objective_ms)]
        if not good or (strict and len(good) < len(by_rate[rate])):
            break
        best = (max if strict else min)(good, key=lambda s: s.p95_ms)
    return best


def overhead_ratios(ours: Sequence[Step], stock: Sequence[Step],
                    objective_ms: float) -> dict[str, Any]:
    """Our latency over the stock handler's at each rate both sustained (the same run).

    The headline is the median of the per-rate p50 ratios: p50 at a sustained rate is mostly
    service time, which is what a handler adds to; p95 ratios are reported beside it.
    """
    def good(steps: Sequence[Step]) -> dict[float, Step]:
        out: dict[float, Step] = {}
        for s in steps:
            if s.sustained(objective_ms) and (s.rate not in out or s.p95_ms < out[s.rate].p95_ms):
                out[s.rate] = s
        return out

    mine, theirs = good(ours), good(stock)
    common = sorted(set(mine) & set(theirs))
    per_rate = [{"rate": r,
                 "p50_ratio": round(mine[r].p50_ms / theirs[r].p50_ms, 3),
                 "p95_ratio": round(mine[r].p95_ms / theirs[r].p95_ms, 3)} for r in common]
    return {
        "p50_ratio_median": round(statistics.median(x["p50_ratio"] for x in per_rate), 3)
        if per_rate else None,
        "p95_ratio_median": round(statistics.median(x["p95_ratio"] for x in per_rate), 3)
        if per_rate else None,
        "per_rate": per_rate,
    }


def percentile(values: Sequence[float], q: float) -> float:
    from elastiserve_serve.loadgen import percentile as nearest_rank

    return float(nearest_rank(values, q))


# ----------------------------------------------------------------------------- inputs


def jpeg_body(size: int = 256) -> bytes:
    """A deterministic, photo-like (smooth) RGB JPEG: upsampled noise, quality 90."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    small.resize((size, size), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_bundles(root: Path, width_mult: float) -> dict[str, Path]:
    """The benchmark bundle (4 levels) and a one-level bundle of the same full weights."""
    sys.path.insert(0, str(REPO))
    from elastiserve_store.manifest import Normalisation
    from tests.serving.bundles import make_bundle

    common: dict[str, Any] = {"arch": "resnet20", "width_mult": width_mult, "size": 224,
                              "channels": 3, "normalisation": Normalisation(*IMAGENET)}
    return {
        "levels": make_bundle(root / "levels", ratios=(0.25, 0.5, 0.75, 1.0),
                              names=("L0", "L1", "L2", "L3"), **common),
        "full_only": make_bundle(root / "full", ratios=(1.0,), names=("L3",), **common),
    }


def build_stock_archive(bundle: Path, store: Path, name: str, workers: int, batch: int,
                        delay_ms: int) -> Path:
    """A ``.mar`` for TorchServe's built-in ``image_classifier`` holding the traced full level."""
    import torch
    import yaml
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    from elastiserve_store.bundle import load_bundle

    loaded = load_bundle(bundle)
    module = loaded.build_level(len(loaded.level_names) - 1).eval()
    spec = loaded.manifest.input
    with tempfile.TemporaryDirectory(prefix="elastiserve-stock-") as tmp:
        work = Path(tmp)
        example = torch.zeros(1, spec.channels, spec.height, spec.width)
        with torch.no_grad():
            traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                module, example, check_trace=False)
        traced.save(str(work / "model.pt"))
        labels = {str(i): name for i, name in enumerate(loaded.manifest.class_names)}
        (work / "index_to_name.json").write_text(json.dumps(labels))
        (work / "model-config.yaml").write_text(yaml.safe_dump({
            "minWorkers": workers, "maxWorkers": workers, "batchSize": batch,
            "maxBatchDelay": delay_ms, "responseTimeout": 30}))
        store.mkdir(parents=True, exist_ok=True)
        generate_model_archive(ModelArchiverConfig(
            model_name=name, handler="image_classifier", version="1.0",
            serialized_file=str(work / "model.pt"),
            extra_files=str(work / "index_to_name.json"),
            config_file=str(work / "model-config.yaml"), export_path=str(store), force=True))
    return store / f"{name}.mar"


# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    headers: dict[str, str]


def run_step(target: Target, body: bytes, rate: float, seconds: float) -> Step:
    from elastiserve_serve.loadgen import run_open_loop

    results = run_open_loop(target.url, body, target.headers, rate, seconds, max_in_flight=64,
                            timeout_s=15.0)
    ok = [r.latency_s * 1000 for r in results if r.status == 200]
    last = max((r.received for r in results), default=0.0)
    span = max(last - min((r.scheduled for r in results), default=last), 1e-9)
    step = Step(target.name, rate, len(results), sum(1 for r in results if r.status != 200),
                round(percentile(ok, 50), 2), round(percentile(ok, 95), 2),
                round(percentile(ok, 99), 2), round(len(results) / span, 2),
                round(os.getloadavg()[0], 2))
    print(f"  {step.target:>8} @ {rate:6.1f}/s: p50 {step.p50_ms:7.1f}  p95 {step.p95_ms:7.1f}"
          f"  p99 {step.p99_ms:7.1f} ms  failed {step.failed}  load {step.load_1m}", flush=True)
    return step


def sweep(targets: Sequence[Target], body: bytes, rates: Sequence[float], seconds: float,
          objective_ms: float, *, strict: bool = False) -> dict[str, list[Step]]:
    """Step every target up the same rates, taking turns (the order rotates per rate).

    A target leaves the sweep at its first breach that a re-run confirms. ``strict``: every
    rate runs twice per target (the second pass in reverse order) and a target leaves at its
    first breach: a batching configuration can hold a rate once by luck and collapse in the
    next run (a queue that forms once turns into full, slower batches).
    """
    steps: dict[str, list[Step]] = {t.name: [] for t in targets}
    active = list(targets)
    held = all if strict else any
    for i, rate in enumerate(rates):
        if not active:
            break
        turn = i % len(active)
        order = active[turn:] + active[:turn]
        for target in order + order[::-1] if strict else order:
            step = run_step(target, body, rate, seconds)
            steps[target.name].append(step)
            if not strict and not step.sustained(objective_ms):
                time.sleep(2.0)  # let the queue drain before the confirming run
                steps[target.name].append(run_step(target, body, rate, seconds))
            time.sleep(1.0)
        active = [t for t in active
                  if held(s.sustained(objective_ms) for s in steps[t.name] if s.rate == rate)]
    return steps


def warm(targets: Sequence[Target], body: bytes, count: int) -> None:
    """A few sequential requests so that lazy initialisation (TorchScript's profiling runs,
    allocator growth) is not measured."""
    import httpx

    with httpx.Client(timeout=60) as client:
        for target in targets:
            for _ in range(count):
                client.post(target.url, content=body, headers=target.headers).raise_for_status()


def switch_times(target: Target, control: Path, levels: Sequence[str], body: bytes,
                 switches: int, rate: float, gap_s: float) -> tuple[list[float], int, int]:
    """First-new-answer latency (ms) per control-file write under open-loop load."""
    from elastiserve_serve.level_agent import set_level
    from elastiserve_serve.loadgen import Switch, first_new_answers, run_open_loop

    plan: list[Switch] = []

    def controller() -> None:
        time.sleep(gap_s)
        for i in range(switches):
            level = levels[i % len(levels)]
            if plan and plan[-1].level == level:
                level = levels[(i + 1) % len(levels)]
            plan.append(Switch(time.monotonic(), level))
            set_level(control, level)
            time.sleep(gap_s)

    thread = threading.Thread(target=controller)
    thread.start()
    results = run_open_loop(target.url, body, target.headers, rate, gap_s * (switches + 1.5),
                            max_in_flight=64, timeout_s=15.0)
    thread.join()
    first = [x * 1000 for x in first_new_answers(results, plan) if not math.isnan(x)]
    return first, sum(1 for r in results if r.status != 200), len(plan) - len(first)


# ----------------------------------------------------------------------------- memory


def worker_memory(server: Any, model: str) -> dict[str, float]:
    """RSS/USS/PSS (MiB) of the model's one TorchServe worker process."""
    import psutil

    pid = int(server.describe_model(model)[0]["workers"][0]["pid"])
    info = psutil.Process(pid).memory_full_info()
    return {k: round(getattr(info, k) / 2**20, 1) for k in ("rss", "uss", "pss")}


def tensor_storage_mib(bundle: Path, mode: str) -> float:
    """Unique tensor storage (MiB) of the modules the handler would hold (exact, no noise)."""
    from elastiserve_store.bundle import load_bundle

    loaded = load_bundle(bundle)
    if mode == "full":
        modules = [loaded.build_level(len(loaded.level_names) - 1)]
    else:
        modules = loaded.build_all(share_storage=mode == "all_shared")
    storages: dict[int, int] = {}
    for module in modules:
        for tensor in module.state_dict().values():
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) / 2**20


# ----------------------------------------------------------------------------- in-process


def profile_in_process(bundle: Path, stock_mar_dir: Path, body: bytes, rounds: int,
                       repeats: int) -> dict[str, float]:
    """Per-step cost (ms, batch of 1, one thread) of both handler paths, taken in turns."""
    import torch
    from ts.torch_handler.image_classifier import ImageClassifier
    from ts.utils.util import map_class_to_label

    from elastiserve_serve.bundle_levels import load_levels
    from elastiserve_serve.runtime import ElasticRuntime, RawRequest, RuntimeSettings
    from elastiserve_serve.runtime.decode import decode

    torch.set_num_threads(1)
    levels = load_levels(bundle)
    runtime = ElasticRuntime(levels, RuntimeSettings(control_file=None, threads=1,
                                                     trace_levels=False))
    runtime.warm_up()
    traced_runtime = ElasticRuntime(levels, RuntimeSettings(control_file=None, threads=1,
                                                            trace_levels=True))
    traced_runtime.warm_up()
    eager = levels.modules[-1]
    ours_graph = traced_runtime.levels.modules[-1]
    scripted = torch.jit.load(str(stock_mar_dir / "model.pt"))  # type: ignore[no-untyped-call]
    mapping = {str(i): n for i, n in enumerate(levels.class_names)}
    from PIL import Image

    def stock_pre() -> torch.Tensor:
        image = ImageClassifier.image_processing(Image.open(io.BytesIO(body)))
        return torch.stack([image])

    def ours_pre() -> torch.Tensor:
        tensor: torch.Tensor = decode(body, levels.input_spec, levels.normalisation,
                                      runtime.settings.limits)
        return tensor

    def stock_post(logits: torch.Tensor) -> object:
        probs, classes = torch.topk(torch.softmax(logits, dim=1), 5, dim=1)
        return json.dumps(map_class_to_label(probs.tolist(), mapping, classes.tolist()))

    def stock_all() -> object:
        with torch.inference_mode():
            return stock_post(scripted(stock_pre()))

    def ours_all() -> object:
        return [json.dumps(o.to_json()) for o in runtime.handle([RawRequest(body)])]

    def ours_traced_all() -> object:
        return [json.dumps(o.to_json()) for o in traced_runtime.handle([RawRequest(body)])]

    x = ours_pre()
    with torch.inference_mode():
        logits = eager(x)
    steps: dict[str, Callable[[], object]] = {
        "ours_decode": ours_pre,
        "stock_preprocess": stock_pre,
        "forward_eager": lambda: eager(x),
        "forward_torchscript": lambda: scripted(x),
        "forward_ours_traced": lambda: ours_graph(x),
        "stock_postprocess": lambda: stock_post(logits),
        "ours_handle": ours_all,
        "ours_traced_handle": ours_traced_all,
        "stock_handle": stock_all,
    }
    out = interleaved_timings(steps, rounds, repeats)
    for pair in (("ours_handle", "stock_handle"), ("ours_traced_handle", "stock_handle"),
                 ("forward_eager", "forward_torchscript")):
        out[f"{pair[0]}_vs_{pair[1]}"] = round(out[f"{pair[0]}_ms_min"]
                                               / out[f"{pair[1]}_ms_min"], 3)
    return out


def interleaved_timings(steps: dict[str, Callable[[], object]], rounds: int,
                        repeats: int) -> dict[str, float]:
    """Per step: min and median over ``rounds`` of the mean of ``repeats`` calls (ms).

    The steps take turns within every round, in a shuffled order (what ran just before warms or
    evicts caches), so a burst of other work on this shared machine lands on all of them alike;
    the minimum is the least disturbed estimate.
    """
    import random

    import torch

    samples: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps.items())
    shuffle = random.Random(0).shuffle
    with torch.inference_mode():
        for _, fn in order:
            fn()
            fn()
        for _ in range(rounds):
            shuffle(order)
            for name, fn in order:
                start = time.perf_counter()
                for _ in range(repeats):
                    fn()
                samples[name].append((time.perf_counter() - start) / repeats * 1000)
    out: dict[str, float] = {}
    for name, values in samples.items():
        out[f"{name}_ms_min"] = round(min(values), 3)
        out[f"{name}_ms_median"] = round(statistics.median(values), 3)
    return out


# ----------------------------------------------------------------------------- where the time goes

BREAKDOWN_STAGES = ("frontend_response", "queue", "transport", "decode", "forward",
                    "postprocess")


def demo_bundle(root: Path) -> Path:
    """A bundle of the ``make demo`` model's geometry (``elastiserve.local.demo``'s training
    arguments: ResNet-20 at its width, Fashion-MNIST's 1x28x28), random weights: the time per
    request does not depend on what the weights learned."""
    sys.path.insert(0, str(REPO))
    from elastiserve.local.demo import DEMO_GEOMETRY
    from tests.serving.bundles import make_bundle

    return make_bundle(root / "demo", ratios=(0.25, 0.5, 0.75, 1.0),
                       names=("L0", "L1", "L2", "L3"), **DEMO_GEOMETRY)


def demo_body(bundle: Path, samples: int) -> bytes:
    """A request as the demo sends it: ``samples`` inputs as one ``.npy`` float32 tensor."""
    import io

    import numpy as np

    from elastiserve_store.bundle import load_bundle

    spec = load_bundle(bundle).manifest.input
    pixels = np.random.default_rng(0).random((samples, spec.channels, spec.height, spec.width),
                                             dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, pixels, allow_pickle=False)
    return buffer.getvalue()


def served_levels(bundle: Path, threads: int) -> Any:
    """The bundle's levels as the runtime serves them (traced where verified equal)."""
    import torch

    from elastiserve_serve.bundle_levels import load_levels
    from elastiserve_serve.runtime import ElasticRuntime, RuntimeSettings

    torch.set_num_threads(threads)
    return ElasticRuntime(load_levels(bundle), RuntimeSettings(
        control_file=None, threads=threads, worker_choice=False)).levels


def forward_only_rps(levels: Any, level: int, batch: int, seconds: float) -> float:
    """Samples per second of the level's forward pass + softmax alone, at ``batch`` (threads
    as set by :func:`served_levels`): the ceiling end to end is held to."""
    import torch

    module = levels.modules[level]
    x = torch.zeros((batch, *levels.input_spec.shape))
    times: list[float] = []
    with torch.inference_mode():
        module(x)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline or len(times) < 5:
            began = time.perf_counter()
            torch.softmax(module(x).float(), dim=1)
            times.append(time.perf_counter() - began)
    return batch / statistics.median(times)


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on TorchServe's metrics endpoint, keyed by name and sorted labels."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://{address}/metrics", timeout=10).text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def metric_sum(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
               **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    # prometheus_client's parser names every counter's sample ``..._total``.
    names = {name, name if name.endswith("_total") else f"{name}_total"}
    return sum(value for (n, lab), value in samples.items()
               if n in names and all(dict(lab).get(k) == v for k, v in labels.items()))


def closed_loop(target: Target, body: bytes, clients: int, seconds: float
                ) -> tuple[int, int, float, float]:
    """``clients`` back-to-back senders for ``seconds``: (answered, failed, elapsed s, mean
    client latency ms). Enough clients to keep every batch full measures capacity."""
    import httpx

    answered, failed, latencies = [0], [0], []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def sender() -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < deadline:
                began = time.perf_counter()
                try:
                    ok = client.post(target.url, content=body,
                                     headers=target.headers).status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = time.perf_counter() - began
                with lock:
                    if ok:
                        answered[0] += 1
                        latencies.append(took)
                    else:
                        failed[0] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=sender) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    mean_ms = statistics.fmean(latencies) * 1000 if latencies else float("nan")
    return answered[0], failed[0], time.monotonic() - started, mean_ms


def stage_table(scrapes: Sequence[tuple[dict[Any, float], dict[Any, float]]], model: str,
                client_ms: float) -> dict[str, float]:
    """Per request, in ms, where the time went between pairs of scrapes of one model's traffic.

    TorchServe's frontend counts each request's queue wait and its whole inference time
    (frontend receipt to response); the handler counts decode, forward and postprocess per
    batch. Transport (frontend to worker and back, TorchServe's Python batching) is the
    inference time less queue and handler; frontend_response is what the client saw less
    TorchServe's inference time (HTTP, the frontend's parsing, the response write).
    """
    def delta(name: str, **labels: str) -> float:
        return sum(metric_sum(after, name, **labels) - metric_sum(before, name, **labels)
                   for before, after in scrapes)

    requests = max(delta("ts_inference_requests_total", model_name=model), 1.0)
    batches = max(delta("elastiserve_batches_total", ModelName=model), 1.0)
    per_batch = {stage: delta("elastiserve_stage_seconds_total", ModelName=model, Stage=stage)
                 / batches * 1000 for stage in ("decode", "forward", "postprocess")}
    queue = delta("ts_queue_latency_microseconds", model_name=model) / requests / 1000
    inference = delta("ts_inference_latency_microseconds", model_name=model) / requests / 1000
    handler = sum(per_batch.values())
    return {
        "frontend_response": round(client_ms - inference, 3),
        "queue": round(queue, 3),
        "transport": round(inference - queue - handler, 3),
        **{k: round(v, 3) for k, v in per_batch.items()},
        "client_ms": round(client_ms, 3),
        "ts_inference_ms": round(inference, 3),
        "mean_batch": round(requests / batches, 2),
    }


def breakdown(root: Path, bundles: dict[str, tuple[Path, bytes, int]], *, batch: int,
              delay_ms: int, threads: int, seconds: float, rounds: int, env: dict[str, str],
              stock: Path | None) -> dict[str, Any]:
    """Every level of every bundle: forward-only capacity in process, end-to-end
    capacity through one TorchServe (closed loop, pinned level), and the per-request stage
    table from TorchServe's counters and the handler's stage timers."""
    from elastiserve_serve.archive import ArchiveSpec, build_archive
    from elastiserve_serve.ts_server import run_torchserve
    from elastiserve_store.bundle import load_bundle

    store = root / "store-breakdown"
    handler = {"control_file": "", "allow_pin": True, "threads": threads,
               "worker_choice": False}
    for name, (bundle, _, _) in bundles.items():
        build_archive(bundle, store, name, ArchiveSpec(
            workers=1, batch_size=batch, max_batch_delay_ms=delay_ms, handler=handler))
    models = [f"{m}={m}.mar" for m in bundles]
    if stock is not None:
        models.append(f"{STOCK}={STOCK}.mar")
    clients = 2 * batch
    with run_torchserve(root / "run-breakdown", store, models, extra_env=env) as server:
        auth = {"Authorization": f"Bearer {server.keys.inference}"}
        url = f"{server.inference_url}/predictions/"
        # (model, level index or None for the stock handler) in a fixed order; each round
        # runs them all, the order reversed every other round, so drift of this shared
        # machine's load (and the JVM's own warm-up) lands on every target alike.
        targets: list[tuple[str, int | None]] = []
        names: dict[str, tuple[str, ...]] = {}
        in_process: dict[str, Any] = {}
        for name, (bundle, _, _) in bundles.items():
            names[name] = tuple(load_bundle(bundle).manifest.level_names)
            in_process[name] = served_levels(bundle, threads)
            targets += [(name, i) for i in range(len(names[name]))]
        if stock is not None:
            targets.append((STOCK, None))

        def target_of(model: str, index: int | None) -> tuple[Target, bytes]:
            if index is None:
                return Target(STOCK, url + STOCK, auth), bundles["serving"][1]
            level = names[model][index]
            return Target(level, url + model, {**auth, PIN: level}), bundles[model][1]


        for model, index in targets:  # warm: JIT of the frontend, allocator, lazy init
            target, body = target_of(model, index)
            closed_loop(target, body, clients, 1.0)
        acc: dict[tuple[str, int | None], dict[str, Any]] = {
            t: {"answered": 0, "failed": 0, "elapsed": 0.0, "client": [], "scrapes": [],
                "forward": []} for t in targets}
        for r in range(rounds):
            for model, index in (targets if r % 2 == 0 else targets[::-1]):
                target, body = target_of(model, index)
                before = scrape(server.metrics_address)
                answered, failed, elapsed, client_ms = closed_loop(target, body, clients,
                                                                   seconds / rounds)
                after = scrape(server.metrics_address)
                a = acc[(model, index)]
                a["answered"] += answered
                a["failed"] += failed
                a["elapsed"] += elapsed
                a["client"].append(client_ms)
                a["scrapes"].append((before, after))
                if index is not None:  # requests/s: a batch of requests, each of its samples
                    per = bundles[model][2]
                    a["forward"].append(forward_only_rps(
                        in_process[model], index, batch * per, min(seconds / rounds, 3.0)) / per)
        out: dict[str, Any] = {}
        for name in bundles:
            rows = []
            for index, level in enumerate(names[name]):
                a = acc[(name, index)]
                forward = statistics.median(a["forward"])
                e2e = a["answered"] / a["elapsed"]
                rows.append({"name": level, "forward_only_rps": round(forward, 1),
                             "end_to_end_rps": round(e2e, 1),
                             "efficiency": round(e2e / forward, 3), "failed": a["failed"],
                             "stages_ms": stage_table(a["scrapes"], name,
                                                      statistics.fmean(a["client"])),
                             "load_1m": round(os.getloadavg()[0], 2)})
                print_stage_row(name, rows[-1])
            out[name] = {"levels": rows, "narrowest_vs_full_end_to_end": round(
                rows[0]["end_to_end_rps"] / rows[-1]["end_to_end_rps"], 2),
                "narrowest_vs_full_forward_only": round(
                rows[0]["forward_only_rps"] / rows[-1]["forward_only_rps"], 2)}
        if stock is not None:
            a = acc[(STOCK, None)]
            out["stock_full"] = {"end_to_end_rps": round(a["answered"] / a["elapsed"], 1),
                                 "failed": a["failed"],
                                 "client_ms": round(statistics.fmean(a["client"]), 3)}
            ours = out["serving"]["levels"][-1]["end_to_end_rps"]
            out["stock_full"]["ours_full_over_stock"] = round(
                ours / out["stock_full"]["end_to_end_rps"], 3)
            print(f"  stock image_classifier, full: {out['stock_full']}", flush=True)
    return out


PIN = "X-Elastiserve-Level"


def print_stage_row(model: str, row: dict[str, Any]) -> None:
    stages = row["stages_ms"]
    cells = "  ".join(f"{k} {stages[k]:7.2f}" for k in BREAKDOWN_STAGES)
    print(f"  {model:>8} {row['name']:>3}: forward-only {row['forward_only_rps']:7.1f}/s  "
          f"end-to-end {row['end_to_end_rps']:7.1f}/s  efficiency {row['efficiency']:.2f}  "
          f"batch {stages['mean_batch']:.1f} | ms/request: {cells}  "
          f"client {stages['client_ms']:.2f}"
          f"  load {row['load_1m']}", flush=True)


def run_breakdown(args: argparse.Namespace, width_mult: float, env: dict[str, str] | None,
                  root: Path) -> dict[str, Any]:
    """The stage table for the serving benchmark's model and the demo bundle's geometry."""
    bundles_dir = root / "bundles-breakdown"
    serving = write_bundles(bundles_dir, width_mult)["levels"]
    demo = demo_bundle(bundles_dir)
    stock = None
    if env is not None:
        stock = build_stock_archive(serving, root / "store-breakdown", STOCK, 1,
                                    args.batch_size, args.max_batch_delay_ms)
    seconds = args.breakdown_seconds
    print(f"where the time goes (closed loop, {2 * args.batch_size} clients, {seconds} s per "
          f"level, batch {args.batch_size}, 1 thread):", flush=True)
    from elastiserve.local.demo import DemoConfig

    per = DemoConfig(run_dir=root).images_per_request
    return breakdown(root, {"serving": (serving, jpeg_body(), 1),
                            "demo": (demo, demo_body(demo, per), per)},
                     batch=args.batch_size, delay_ms=args.max_batch_delay_ms, threads=1,
                     seconds=seconds, rounds=args.breakdown_rounds,
                     env=env or {"OMP_NUM_THREADS": "1"}, stock=stock)



def breakdown_basis(args: argparse.Namespace, stage_result: dict[str, Any]) -> dict[str, Any]:
    """What the stage table's numbers mean, with the ratio targets of issue 18 item 3."""
    serving = stage_result["serving"]["levels"]
    stock = stage_result.get("stock_full")
    return {
        "targets": {
            "min_efficiency_serving": min(r["efficiency"] for r in serving),
            "efficiency_target": 0.5,
            "narrowest_vs_full_end_to_end": stage_result["serving"][
                "narrowest_vs_full_end_to_end"],
            "narrowest_vs_full_target": 5.0,
            "ours_full_over_stock_end_to_end": stock["ours_full_over_stock"] if stock else None,
            "ours_full_over_stock_target": ">= 1.0 (ours at or above stock's capacity)",
        },
        "stock_full": stock,
        "method": (f"end_to_end_rps: answers/s through one TorchServe, {2 * args.batch_size} "
                   f"closed-loop clients pinning the level for {args.breakdown_seconds} s "
                   f"in {args.breakdown_rounds} rounds (every target in each round, the order "
                   "reversed every other round, after a 1 s warm-up of each; batches kept "
                   "full), "
                   f"batch {args.batch_size}, delay "
                   f"{args.max_batch_delay_ms} ms, 1 worker, 1 thread, per-batch choice off; "
                   "forward_only_rps: the same level's forward pass + softmax in process, as "
                   "the runtime runs it (traced where verified equal), same batch and threads, "
                   "median; efficiency = end_to_end / forward_only. stages_ms per request: "
                   "frontend_response = client - ts_inference_latency, queue = "
                   "ts_queue_latency, transport = ts_inference - queue - handler; decode, "
                   "forward, postprocess are per batch (each request of a batch waits for the "
                   "whole batch) from elastiserve_stage_seconds_total / elastiserve_batches_total"),
    }


def write_breakdown_only(args: argparse.Namespace, width_mult: float, env: dict[str, str] | None,
                         output: Path) -> int:
    load_start = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="elastiserve-breakdown-") as tmp:
        stage_result = run_breakdown(args, width_mult, env, Path(tmp))
    result = {
        "levels": stage_result["serving"]["levels"],
        "narrowest_vs_full_end_to_end": stage_result["serving"]["narrowest_vs_full_end_to_end"],
        "demo_bundle": stage_result["demo"],
        "breakdown": breakdown_basis(args, stage_result),
        "model": {"architecture": "resnet20", "width_mult": width_mult,
                  "input": "3x224x224, ImageNet mean/std, one 256x256 JPEG per request"},
        "demo_model": "the make demo bundle's geometry (elastiserve.local.demo.DEMO_GEOMETRY), "
                      "random weights, one .npy float32 tensor of the demo's "
                      "images_per_request (32) "
                      "samples per request; forward_only_rps in requests/s (batch x 16 "
                      "samples per forward pass)",
        "machine": {"cpus": os.cpu_count(), "load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "2 cores shared with other engineers' jobs; compare ratios only"},
        "duration_s": round(time.monotonic() - started, 1),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["breakdown"]["targets"], indent=2))
    print(f"wrote {output}")
    return 0


# ----------------------------------------------------------------------------- main


def stock_env(deps: Path) -> dict[str, str]:
    """Environment for the TorchServe that serves both models: the stock handler's imports on
    ``PYTHONPATH`` and one intra-op thread per worker (our handler sets the same itself)."""
    import importlib.util

    has_torchvision = (deps / "torchvision").is_dir() or importlib.util.find_spec("torchvision")
    if not has_torchvision or not (deps / "captum").is_dir():
        raise SystemExit(
            f"the stock handler needs torchvision and captum in {deps}:\n"
            f"  {sys.executable} -m pip install --no-deps --target {deps} torchvision captum")
    path = os.pathsep.join(p for p in (str(deps), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def paired_step(a: Target, b: Target, body: bytes, rate: float, seconds: float) -> list[Step]:
    """Both targets at ``rate`` over the same seconds (two open-loop schedules, half a period
    apart): whatever else runs on the machine then hits both alike."""
    out: dict[str, Step] = {}

    def one(target: Target, delay: float) -> None:
        time.sleep(delay)
        out[target.name] = run_step(target, body, rate, seconds)

    threads = [threading.Thread(target=one, args=(a, 0.0)),
               threading.Thread(target=one, args=(b, 0.5 / rate))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [out[a.name], out[b.name]]


def paired_ratios(pairs: Sequence[tuple[Step, Step]]) -> dict[str, Any]:
    """Ours over stock per paired run; the headline is the median p50 ratio."""
    rows = [{"rate": o.rate, "ours_p50_ms": o.p50_ms, "stock_p50_ms": t.p50_ms,
             "ours_p95_ms": o.p95_ms, "stock_p95_ms": t.p95_ms,
             "p50_ratio": round(o.p50_ms / t.p50_ms, 3), "p95_ratio": round(o.p95_ms / t.p95_ms, 3),
             "failed": o.failed + t.failed} for o, t in pairs]
    return {
        "p50_ratio_median": round(statistics.median(r["p50_ratio"] for r in rows), 3)
        if rows else None,
        "p95_ratio_median": round(statistics.median(r["p95_ratio"] for r in rows), 3)
        if rows else None,
        "runs": rows,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    """p50/p95 against offered rate for every level and the stock handler (from the JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objective = result["p95_objective_ms"]
    series = [(row["name"], row["steps"]) for row in result["level_details"]]
    series.append(("stock (full)", result["stock_handler"]["steps"]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key in zip(axes, ("p50_ms", "p95_ms"), strict=True):
        for name, steps in series:
            best: dict[float, float] = {}
            for s in steps:  # a re-run rate keeps its better run, as max_rps does
                best[s["rate"]] = min(best.get(s["rate"], math.inf), s[key])
            rates = sorted(best)
            style = "k--" if name.startswith("stock") else "-"
            ax.plot(rates, [best[r] for r in rates], style, marker="o", ms=3, label=name)
        ax.axhline(objective, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(matplotlib.ticker.FixedLocator(
                [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]))
            axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("offered rate (req/s, open loop)")
        ax.set_title(key.replace("_ms", "") + " latency (ms)")
    axes[0].legend(fontsize=8)
    model = result["model"]
    fig.suptitle(f"{model['architecture']} x{model['width_mult']} {model['input']}, "
                 "one TorchServe worker per model, "
                 f"batch {result['batching']['batch_size']}; objective p95 {objective:g} ms",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: narrow model, short steps")
    parser.add_argument("--seconds", type=float, help="seconds per rate step (default 10; quick 3)")
    parser.add_argument("--p95-objective-ms", type=float, default=500.0)
    parser.add_argument("--start-rate", type=float, default=2.0)
    parser.add_argument("--rate-factor", type=float, default=1.25)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-batch-delay-ms", type=int, default=10)
    parser.add_argument("--switches", type=int, default=12)
    parser.add_argument("--stock-deps", type=Path, default=STOCK_DEPS)
    parser.add_argument("--profile-only", action="store_true",
                        help="only the in-process profile of both handlers, printed")
    parser.add_argument("--output", type=Path)
    parser.add_argument("--breakdown-seconds", type=float, default=24.0,
                        help="closed-loop seconds per level in the stage table (default 24)")
    parser.add_argument("--breakdown-rounds", type=int, default=6,
                        help="rounds the stage table's time is split into, every target in "
                        "each (more rounds spread this shared machine's drift over all "
                        "targets alike; default 6)")
    parser.add_argument("--breakdown-only", action="store_true",
                        help="only the stage table (forward-only vs end-to-end per level, "
                             "serving model and demo bundle); writes serving-breakdown.json")
    parser.add_argument("--plot-only", type=Path, metavar="JSON",
                        help="redraw the PNG beside a result JSON and exit")
    args = parser.parse_args()
    if args.breakdown_rounds < 1 or args.breakdown_seconds <= 0:
        print("serving: --breakdown-rounds must be >= 1 and --breakdown-seconds > 0",
              file=sys.stderr)
        return 2
    if args.plot_only:
        plot(json.loads(args.plot_only.read_text()), args.plot_only.with_suffix(".png"))
        return 0
    # SIGTERM unwinds like Ctrl-C, so the TorchServes (own process groups) are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    width_mult = 0.25 if args.quick else 1.0
    output = args.output or (Path(tempfile.gettempdir()) / "elastiserve-serving-quick.json"
                             if args.quick else RESULTS / "serving.json")
    env = stock_env(args.stock_deps)
    sys.path.insert(0, str(args.stock_deps))  # the in-process profile imports ts' handler
    if args.breakdown_only:
        return write_breakdown_only(args, width_mult, env, args.output
                                    or RESULTS / "serving-breakdown.json")

    from elastiserve_serve.archive import ArchiveSpec, build_archive
    from elastiserve_serve.ts_server import run_torchserve
    from elastiserve_store.bundle import load_bundle

    load_start = os.getloadavg()
    started = time.monotonic()
    body = jpeg_body()
    objective = args.p95_objective_ms
    batching = {"workers_per_model": 1, "batch_size": args.batch_size,
                "max_batch_delay_ms": args.max_batch_delay_ms, "torch_threads_per_worker": 1}

    def spec(**handler: Any) -> ArchiveSpec:
        return ArchiveSpec(workers=1, batch_size=args.batch_size,
                           max_batch_delay_ms=args.max_batch_delay_ms,
                           handler={"threads": 1, **handler})

    with tempfile.TemporaryDirectory(prefix="elastiserve-bench-") as tmp:
        root = Path(tmp)
        bundles = write_bundles(root / "bundles", width_mult)
        manifest = load_bundle(bundles["levels"]).manifest
        levels = tuple(manifest.level_names)
        full = levels[-1]
        control = root / "shm" / "level.json"
        store = root / "store"
        build_stock_archive(bundles["levels"], store, STOCK, 1, args.batch_size,
                            args.max_batch_delay_ms)
        import zipfile

        with zipfile.ZipFile(store / f"{STOCK}.mar") as mar:  # the traced file, for the profile
            mar.extract("model.pt", root / "stock")
        stage_result = run_breakdown(args, width_mult, env, root)
        print("in-process profile (ms):", flush=True)
        profile = profile_in_process(bundles["levels"], root / "stock", body,
                                     rounds=5 if args.quick else 15, repeats=3)
        print(json.dumps(profile, indent=2), flush=True)
        if args.profile_only:
            return 0
        # Ours as benchmarked: levels traced in memory (trace_levels); the eager runtime runs
        # beside it for the paired comparison only.
        build_archive(bundles["levels"], store, OURS,
                      spec(control_file=str(control), allow_pin=True, trace_levels=True))
        build_archive(bundles["levels"], store, EAGER, spec(control_file="", trace_levels=False))
        build_archive(bundles["levels"], store, "separate",
                      spec(control_file="", allow_pin=True, share_storage=False,
                           trace_levels=True))
        build_archive(bundles["levels"], store, "shared",
                      spec(control_file="", allow_pin=True, trace_levels=True))
        build_archive(bundles["full_only"], store, "fullonly",
                      spec(control_file="", trace_levels=True))

        # ---- memory: three workers holding the same weights three ways, same warm traffic
        print("memory ...", flush=True)
        with run_torchserve(root / "run-mem", store,
                            ["shared=shared.mar", "separate=separate.mar",
                             "fullonly=fullonly.mar"], extra_env=env) as server:
            auth = {"Authorization": f"Bearer {server.keys.inference}"}
            url = f"{server.inference_url}/predictions/"
            for level in levels:
                warm([Target(m, url + m, {**auth, "X-Elastiserve-Level": level})
                      for m in ("shared", "separate")], body, 5)
            warm([Target("fullonly", url + "fullonly", auth)], body, 5 * len(levels))
            mem_workers = {m: worker_memory(server, m) for m in ("shared", "separate", "fullonly")}
        tensors = {mode: round(tensor_storage_mib(bundles["levels"], mode), 3)
                   for mode in ("full", "all_shared", "separate")}
        print(json.dumps({"workers": mem_workers, "tensors": tensors}, indent=2), flush=True)

        # ---- latency: our handler (every level) and the stock handler in one TorchServe
        with run_torchserve(root / "run", store,
                            [f"{m}={m}.mar" for m in (OURS, EAGER, STOCK)],
                            extra_env=env) as server:
            auth = {"Authorization": f"Bearer {server.keys.inference}"}
            ours = Target(full, f"{server.inference_url}/predictions/{OURS}", auth)
            stock = Target(STOCK, f"{server.inference_url}/predictions/{STOCK}", auth)
            eager = Target(EAGER, f"{server.inference_url}/predictions/{EAGER}", auth)
            pinned = [Target(lv, ours.url, {**auth, "X-Elastiserve-Level": lv})
                      for lv in levels[:-1]]
            warm([ours, eager, stock, *pinned], body, 10)
            grid = rate_grid(args.start_rate, args.rate_factor, 400.0)
            print(f"sweep, every level + stock interleaved (objective p95 {objective} ms):",
                  flush=True)
            steps = sweep([ours, stock, *reversed(pinned)], body, grid, seconds, objective)
            ours_max = max_sustained(steps[full], objective)
            stock_max = max_sustained(steps[STOCK], objective)
            both = min(ours_max.rate if ours_max else 0.0, stock_max.rate if stock_max else 0.0)
            pairs: dict[str, list[tuple[Step, Step]]] = {OURS: [], EAGER: []}
            for fraction in PAIRED_FRACTIONS * 2:
                rate = round(max(both * fraction, 1.0), 1)
                for name, mine in ((OURS, ours), (EAGER, eager)):
                    print(f"paired, {name} and stock together at {rate}/s each:", flush=True)
                    first = len(pairs[name]) % 2 == 0
                    o, t = (paired_step(mine, stock, body, rate, 2 * seconds) if first
                            else paired_step(stock, mine, body, rate, 2 * seconds)[::-1])
                    pairs[name].append((o, t))
            switch_rate = round(max(0.5 * (ours_max.rate if ours_max else 2.0), 1.0), 1)
            print(f"switching under load at {switch_rate}/s ...", flush=True)
            first_ms, switch_failed, unseen = switch_times(
                ours, control, levels, body, 6 if args.quick else args.switches,
                switch_rate, gap_s=2.0)
            main_workers = {m: worker_memory(server, m) for m in (OURS, EAGER, STOCK)}

    def summary(target_steps: Sequence[Step]) -> dict[str, Any]:
        best = max_sustained(target_steps, objective)
        return {"max_rps": best.rate if best else 0.0, "p95_ms": best.p95_ms if best else None,
                "p50_ms": best.p50_ms if best else None, "p99_ms": best.p99_ms if best else None,
                "steps": [asdict(s) for s in target_steps]}

    rows = [{"name": lv, **summary(steps[lv])} for lv in levels]
    capacity = {r["name"]: r for r in stage_result["serving"]["levels"]}
    stock_row = summary(steps[STOCK])
    paired = paired_ratios(pairs[OURS])
    paired_eager = paired_ratios(pairs[EAGER])
    sweep_ratios = overhead_ratios(steps[full], steps[STOCK], objective)
    ours_steps = [s for lv in levels for s in steps[lv]]
    failed_in_range = sum(s.failed for row in rows for s in steps[row["name"]]
                          if s.rate <= row["max_rps"])
    paired_failed = sum(r["failed"] for r in paired["runs"] + paired_eager["runs"])
    result: dict[str, Any] = {
        "levels": [{"name": r["name"], "max_rps": r["max_rps"], "p95_ms": r["p95_ms"],
                    **{k: capacity[r["name"]][k] for k in
                       ("forward_only_rps", "end_to_end_rps", "efficiency", "stages_ms")}}
                   for r in rows],
        "demo_bundle": stage_result["demo"],
        "breakdown": breakdown_basis(args, stage_result),
        "narrowest_vs_full_rps": round(rows[0]["max_rps"] / rows[-1]["max_rps"], 2)
        if rows[-1]["max_rps"] else None,
        "handler_overhead_ratio": paired["p50_ratio_median"],
        "handler_overhead_ratio_eager": paired_eager["p50_ratio_median"],
        "handler_overhead_basis": (
            "median over 6 paired runs (15/25/35 % of the lower max_rps, twice; ours and stock "
            "image_classifier at the same rate at the same time, same TorchServe) of our p50 / "
            "stock p50, full level, ours with trace_levels on (as in every other number here); "
            "_eager: the same with our levels run eagerly; p95 ratios and the sequential "
            "sweep's ratios in stock_handler"),
        "memory_ratio_all_vs_full": round(mem_workers["shared"]["rss"]
                                          / mem_workers["fullonly"]["rss"], 3),
        "memory_ratio_basis": "TorchServe worker RSS, all levels (shared storage) / full level "
                              "alone (one-level bundle, same weights), same warm traffic; the "
                              "weights-only ratios are in memory.tensor_*",
        "switch_p99_ms": round(percentile(first_ms, 99), 1) if first_ms else None,
        "failed_requests": failed_in_range + switch_failed + paired_failed,
        "failed_requests_basis": "our handler at every rate up to each level's max_rps, the "
                                 "paired runs and the switching run; failures past max_rps "
                                 "(overload) are in failed_requests_overload",
        "failed_requests_overload": sum(s.failed for s in ours_steps) - failed_in_range,
        "p95_objective_ms": objective,
        "stock_handler": {
            "handler": "image_classifier (TorchServe 0.12 built-in: resize 256, centre crop "
                       "224, ImageNet normalisation, softmax top-5, index_to_name.json)",
            "model_file": "the full level from load_bundle, torch.jit.trace'd to model.pt; a "
                          "benchmark baseline only (the product loads safetensors, no pickle)",
            "max_rps": stock_row["max_rps"], "p95_ms_at_max": stock_row["p95_ms"],
            "ours_full_max_rps": rows[-1]["max_rps"],
            "paired": paired,
            "paired_eager": paired_eager,
            "sweep_ratios": sweep_ratios,
            "steps": stock_row["steps"],
            "same_server": "one TorchServe (one JVM, same config.properties), one worker per "
                           "model, same batch size/delay, OMP_NUM_THREADS=1 for both",
        },
        "level_details": rows,
        "memory": {"worker_mib": mem_workers, "worker_mib_after_sweep": main_workers,
                   "tensor_storage_mib": tensors,
                   "worker_ratio_separate_vs_full": round(
                       mem_workers["separate"]["rss"] / mem_workers["fullonly"]["rss"], 3),
                   "tensor_ratio_all_vs_full": round(tensors["all_shared"] / tensors["full"], 3),
                   "tensor_ratio_separate_vs_full": round(tensors["separate"] / tensors["full"],
                                                          3)},
        "switch": {"first_new_answer_ms": [round(x, 1) for x in first_ms],
                   "rate_rps": switch_rate, "failed": switch_failed,
                   "switches_without_new_answer": unseen},
        "in_process_profile_ms": profile,
        "model": {"architecture": "resnet20", "width_mult": width_mult,
                  "input": "3x224x224, ImageNet mean/std", "levels": list(levels),
                  "channel_ratios": [lv.channel_ratio for lv in manifest.levels],
                  "macs": [lv.macs for lv in manifest.levels],
                  "params": [lv.params for lv in manifest.levels],
                  "weights": "random (generated with the bundle writer; accuracy not measured)"},
        "request": f"one 256x256 RGB JPEG, {len(body)} bytes, POSTed raw",
        "batching": batching,
        "ours": "ElastiserveHandler (the .mar from build_archive), handler settings threads: 1, "
                "trace_levels: true (every level run as a graph traced in memory from the "
                "verified safetensors weights); 'eager' in the paired runs is the same without "
                "trace_levels",
        "load_generator": "open loop, fixed rate, latency from the scheduled send time; rates "
                          f"x{args.rate_factor} per step from {args.start_rate}/s, {seconds} s "
                          "per step, every level and the stock handler take turns at each rate "
                          "(order rotating); a breach is re-run once before a target leaves",
        "machine": {"cpus": os.cpu_count(), "load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in os.getloadavg()],
                    "note": "2 cores shared with other engineers' training; each step's "
                            "load_1m is in its row; compare ratios taken in the same run"},
        "duration_s": round(time.monotonic() - started, 1),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, output.with_suffix(".png"))
    brief = {k: v for k, v in result.items()
             if k not in ("level_details", "stock_handler", "memory", "in_process_profile_ms")}
    print(json.dumps(brief, indent=2))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
