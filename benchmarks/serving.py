"""Serving benchmark: per-level latency vs arrival rate, runtime overhead, memory, switch time.

Everything runs against a real TorchServe started with the same configuration as ``elastiserve
serve``. Open-loop load (fixed arrival rate, latency from the scheduled send time) per level,
pinned with ``X-Elastiserve-Level``; ``max_rps`` is the highest offered rate whose p95 stays
within ``--p95-objective-ms`` with no failed request. Writes ``benchmarks/results/serving.json``.

    nice python benchmarks/serving.py --bundle DIR            # a trained bundle
    nice python benchmarks/serving.py --rates 20,40 --seconds 3  # generated test bundle

Caveats written into the result: ``handler_overhead_ratio`` is measured in-process (runtime
``handle`` per request vs the bare forward of the same level on an already-decoded tensor), not
against TorchServe's stock ``image_classifier`` handler, whose fixed ImageNet preprocessing does
not fit these models.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "serving.json"


def _png(size: int, channels: int) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (size, size) if channels == 1 else (size, size, 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _generated_bundle(directory: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.serving.bundles import make_bundle

    return make_bundle(directory)


def rss_child(bundle: str, mode: str) -> None:
    """Print this process's RSS (MiB) after building levels the way ``mode`` says."""
    import gc

    import psutil
    import torch

    from elastiserve_store.bundle import load_bundle

    torch.set_num_threads(1)
    before = psutil.Process().memory_info().rss
    loaded = load_bundle(bundle)
    if mode == "full":
        kept: Any = loaded.build_level(len(loaded.level_names) - 1)
    elif mode == "all_shared":
        kept = loaded.build_all(share_storage=True)
    else:  # separate models per level: independent copies
        kept = loaded.build_all(share_storage=False)
    del loaded
    gc.collect()
    modules = kept if isinstance(kept, list) else [kept]
    storages = {}
    for module in modules:
        for tensor in module.state_dict().values():
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    # RSS is allocator noise for small models; unique tensor storage is exact.
    rss = (psutil.Process().memory_info().rss - before) / 2**20
    print(rss, sum(storages.values()) / 2**20)


def memory(bundle: Path) -> dict[str, float]:
    """MiB of unique tensor storage (and RSS growth) for full / all levels shared / separate."""
    out = {}
    for mode in ("full", "all_shared", "separate"):
        text = subprocess.run(
            [sys.executable, __file__, "--rss-child", mode, "--bundle", str(bundle)],
            check=True, capture_output=True, text=True,
        ).stdout
        rss, tensors = text.strip().splitlines()[-1].split()
        out[f"{mode}_rss"] = float(rss)
        out[mode] = float(tensors)
    return out


def overhead(bundle: Path, body: bytes, repeats: int) -> float:
    """Runtime handle() time per request / bare forward time, widest level, batch of 1."""
    import torch

    from elastiserve_serve.bundle_levels import load_levels
    from elastiserve_serve.runtime import ElasticRuntime, RawRequest, RuntimeSettings
    from elastiserve_serve.runtime.decode import decode

    torch.set_num_threads(1)
    levels = load_levels(bundle)
    runtime = ElasticRuntime(levels, RuntimeSettings(control_file=None, threads=1))
    runtime.warm_up()
    tensor = decode(body, levels.input_spec, levels.normalisation, runtime.settings.limits)
    module = levels.modules[-1]

    def timed(fn: Any) -> float:
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            best = min(best, (time.perf_counter() - start) / repeats)
        return best

    with torch.inference_mode():
        bare = timed(lambda: module(tensor))
    full = timed(lambda: runtime.handle([RawRequest(body)]))
    return full / bare


def level_sweep(served: Any, levels: tuple[str, ...], body: bytes, rates: list[float],
                seconds: float, objective_ms: float) -> tuple[list[dict[str, Any]], int]:
    from elastiserve_serve.loadgen import percentile, run_open_loop

    rows, failed_total = [], 0
    for level in levels:
        per_rate = []
        max_rps = 0.0
        for rate in rates:
            results = run_open_loop(served["url"], body,
                                    {**served["auth"], "X-Elastiserve-Level": level},
                                    rate, seconds, max_in_flight=32)
            lat = [r.latency_s * 1000 for r in results if r.status == 200]
            failed = sum(1 for r in results if r.status != 200)
            failed_total += failed
            p95 = percentile(lat, 95)
            per_rate.append({"rate": rate, "p50_ms": round(percentile(lat, 50), 2),
                             "p95_ms": round(p95, 2), "p99_ms": round(percentile(lat, 99), 2),
                             "failed": failed, "requests": len(results)})
            print(f"  {level} @ {rate:g}/s: p50 {percentile(lat, 50):.1f} ms, p95 {p95:.1f} ms,"
                  f" p99 {percentile(lat, 99):.1f} ms, failed {failed}", flush=True)
            if failed == 0 and p95 <= objective_ms:
                max_rps = rate
        at_max = next((r for r in per_rate if r["rate"] == max_rps), per_rate[0])
        rows.append({"name": level, "max_rps": max_rps, "p95_ms": at_max["p95_ms"],
                     "rates": per_rate})
    return rows, failed_total


def switch_times(served: Any, levels: tuple[str, ...], body: bytes, switches: int,
                 rate: float) -> tuple[list[float], list[float], int]:
    from elastiserve_serve.level_agent import set_level
    from elastiserve_serve.loadgen import (
        Switch,
        first_new_answers,
        run_open_loop,
        switch_latencies,
    )

    control: Path = served["control"]
    plan: list[Switch] = []
    gap = 0.6

    def controller() -> None:
        time.sleep(gap)
        for i in range(switches):
            level = levels[i % len(levels)] if levels[i % len(levels)] != (
                plan[-1].level if plan else None) else levels[(i + 1) % len(levels)]
            plan.append(Switch(time.monotonic(), level))
            set_level(control, level)
            time.sleep(gap)

    thread = threading.Thread(target=controller)
    thread.start()
    results = run_open_loop(served["url"], body, served["auth"], rate, gap * (switches + 1.5))
    thread.join()
    failed = sum(1 for r in results if r.status != 200)
    return switch_latencies(results, plan), first_new_answers(results, plan), failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--rates", default="20,40,80")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--p95-objective-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--switches", type=int, default=10)
    parser.add_argument("--rss-child")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(str(args.bundle), args.rss_child)
        return 0

    from elastiserve_serve.archive import ArchiveSpec, build_archive
    from elastiserve_serve.loadgen import percentile
    from elastiserve_serve.ts_server import run_torchserve
    from elastiserve_store.bundle import load_bundle

    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="elastiserve-bench-") as tmp:
        root = Path(tmp)
        bundle = args.bundle or _generated_bundle(root / "bundle")
        manifest = load_bundle(bundle).manifest
        spec_in = manifest.input
        body = _png(max(spec_in.height, spec_in.width), spec_in.channels)
        print("memory (MiB):", mem := memory(bundle), flush=True)
        ratio = overhead(bundle, body, repeats=50)
        print(f"runtime overhead vs bare forward: {ratio:.2f}x", flush=True)
        control = root / "shm" / "level.json"
        archive = ArchiveSpec(workers=args.workers, batch_size=4, max_batch_delay_ms=5,
                              handler={"control_file": str(control), "allow_pin": True,
                                       "threads": 1})
        build_archive(bundle, root / "store", "bench", archive)
        with run_torchserve(root / "run", root / "store", ["bench=bench.mar"],
                            min_ready_workers=args.workers) as server:
            served = {"url": f"{server.inference_url}/predictions/bench",
                      "auth": {"Authorization": f"Bearer {server.keys.inference}"},
                      "control": control}
            levels = tuple(manifest.level_names)
            rows, failed = level_sweep(served, levels, body, rates, args.seconds,
                                       args.p95_objective_ms)
            stale, first, switch_failed = switch_times(served, levels, body, args.switches,
                                                       rate=rates[0])
    first_ms = [x * 1000 for x in first if not math.isnan(x)]
    result = {
        "levels": [{"name": r["name"], "max_rps": r["max_rps"], "p95_ms": r["p95_ms"]}
                   for r in rows],
        "level_details": rows,
        "p95_objective_ms": args.p95_objective_ms,
        "handler_overhead_ratio": round(ratio, 3),
        "handler_overhead_basis": "in-process runtime.handle per request / bare forward",
        "memory_mib": mem,
        "memory_ratio_all_vs_full": round(mem["all_shared"] / mem["full"], 3),
        "memory_ratio_separate_vs_full": round(mem["separate"] / mem["full"], 3),
        "switch_p99_ms": round(percentile(first_ms, 99), 2) if first_ms else None,
        "switch_stale_answer_max_ms": round(max(stale, default=0.0) * 1000, 2),
        "switch_first_new_answer_ms": [round(x, 2) for x in first_ms],
        "failed_requests": failed + switch_failed,
        "config": {"rates": rates, "seconds": args.seconds, "workers": args.workers,
                   "bundle": str(args.bundle) if args.bundle else "generated resnet20 x0.25",
                   "cpu_note": "shared CPU; numbers are indicative"},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "level_details"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
