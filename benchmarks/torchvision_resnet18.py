"""torchvision ResNet-18 at 4 nested levels against independently pruned models (issue 19, item 5).

What runs, all on this machine's CPU (2 shared cores: sized to finish in well under 20 minutes,
so the data is a stated subset and the training is short; the numbers compare the two methods
under the same budget, they are not ResNet-18's best accuracy):

* data: real Fashion-MNIST (Debian's ``dataset-fashion-mnist``), a seeded subset
  (``--train-subset``/``--test-subset``), resized bilinearly to ``--image-size`` and repeated on
  three channels (torchvision's ResNet-18 takes RGB);
* model: ``torchvision:resnet18`` (``num_classes=10``, random initialisation: nothing is fetched),
  made elastic by ``elastiserve_train.model_analysis`` (Torch-Pruning DependencyGraph groups);
* baseline: the full model trained ``--baseline-epochs``; every variant starts from it;
* nested: prune-and-grow to 25/50/75/100 % channels per group (core tuned ``--epochs``, each
  regrown level ``--epochs`` with the core frozen), exported as a schema-3 bundle;
* independent: the baseline pruned one-shot to each level's size and tuned ``--epochs`` (the
  100 % one: the baseline tuned ``--epochs`` more), the same budget per level as nested;
* ``end_to_end_rps``: the nested bundle archived with ``elastiserve archive``'s code and served
  by a real TorchServe (one worker, one torch thread, batch 4), each level pinned by header in
  turn; ``--clients`` closed-loop clients post one PNG of a test image for ``--rps-seconds``;
  the rate is answered requests / elapsed time, failed requests are counted beside it.

The machine is shared with other work: ``os.getloadavg()`` is recorded at start and end, and
the ratios (nested / independent accuracy, level / full rate) are the numbers to read.

    nice -n 10 .venv/bin/python benchmarks/torchvision_resnet18.py
    .venv/bin/python benchmarks/torchvision_resnet18.py --train-subset 200 --test-subset 100 \
        --baseline-epochs 0.2 --epochs 0.1 --rps-seconds 2 --output /tmp/tv-smoke.json  # smoke

Writes ``benchmarks/results/torchvision_resnet18.json`` (per level ``nested_acc``,
``independent_acc``, ``macs``, ``params``, ``end_to_end_rps``) and prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from elastiserve_store import load_bundle
from elastiserve_store.profile import count_macs, count_params
from elastiserve_train import loop
from elastiserve_train.data import FASHION_MNIST_DIR, Dataset, load_fashion_mnist
from elastiserve_train.importance import make_importance
from elastiserve_train.model_analysis import analyse
from elastiserve_train.pipeline import Pipeline, PipelineConfig
from elastiserve_train.pruning import ChainPruner
from elastiserve_train.schedules import nested_ratios, one_shot

RESULTS = Path(__file__).resolve().parent / "results"
MODEL = "torchvision:resnet18"
LEVEL_HEADER = "X-Elastiserve-Level"


def load_data(args: argparse.Namespace) -> Dataset:
    data = load_fashion_mnist(args.data_path).limit(args.train_subset, args.test_subset,
                                                     args.seed)
    return data.resized(args.image_size).rgb()


def independent(pipe: Pipeline, keep: float, epochs: float, importance: str, salt: int
                ) -> dict[str, float]:
    """The baseline pruned one-shot to ``keep`` (or, at 1.0, left whole) and tuned."""
    model = pipe._baseline_model()
    data = pipe.data
    if keep < 1.0:
        calib = list(loop.batches(data.train, pipe.mean, pipe.std, pipe.cfg.batch_size, 0,
                                  train=True, shard=False, augmentation=False))[:2]
        pruner = ChainPruner(model, torch.zeros(1, *data.input_shape),
                             make_importance(importance), one_shot(keep))
        pruner.step(calib)
    if epochs > 0:
        loop.train(model, data.train, pipe.mean, pipe.std, pipe.cfg.train_cfg(epochs, salt))
    return {"acc": loop.evaluate(model, data.test, pipe.mean, pipe.std),
            "macs": count_macs(model, data.input_shape), "params": count_params(model)}


def png_body(data: Dataset) -> bytes:
    """The first test image as an RGB PNG at the model's input size."""
    from PIL import Image

    pixels = data.test.images[0].permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def closed_loop(url: str, headers: dict[str, str], body: bytes, clients: int,
                seconds: float) -> dict[str, float]:
    """``clients`` threads posting back to back for ``seconds``: answered/s and failures."""
    import httpx

    ok = [0] * clients
    failed = [0] * clients
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(timeout=30) as session:
            while time.monotonic() < deadline:
                try:
                    status = session.post(url, content=body, headers=headers).status_code
                except httpx.HTTPError:
                    status = 0
                if status == 200:
                    ok[i] += 1
                else:
                    failed[i] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    return {"rps": round(sum(ok) / elapsed, 2), "ok": sum(ok), "failed": sum(failed),
            "seconds": round(elapsed, 2)}


def serve_rates(bundle: Path, work: Path, body: bytes, args: argparse.Namespace
                ) -> dict[str, dict[str, float]]:
    """Each level's closed-loop rate through one real TorchServe, pinned by header."""
    from elastiserve_serve.archive import ArchiveSpec, build_archive
    from elastiserve_serve.ts_server import run_torchserve

    levels = load_bundle(bundle).manifest.level_names
    store = work / "store"
    build_archive(bundle, store, "resnet18", ArchiveSpec(
        workers=1, batch_size=4, max_batch_delay_ms=5,
        handler={"threads": 1, "allow_pin": True, "control_file": ""}), force=True)
    out: dict[str, dict[str, float]] = {}
    with run_torchserve(work / "ts", store, ["resnet18=resnet18.mar"]) as server:
        url = f"{server.inference_url}/predictions/resnet18"
        auth = {"Authorization": f"Bearer {server.keys.inference}"}
        for level in levels:
            headers = {**auth, LEVEL_HEADER: level}
            closed_loop(url, headers, body, 1, 1.0)  # warm: first batches allocate
            out[level] = closed_loop(url, headers, body, args.clients, args.rps_seconds)
            print(f"  {level}: {out[level]['rps']} answers/s, {out[level]['failed']} failed",
                  flush=True)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = time.perf_counter()
    data = load_data(args)
    shape = data.input_shape
    arch_args = analyse(MODEL, {"num_classes": 10}, shape, 10)
    cfg = PipelineConfig(arch=MODEL, arch_args=arch_args, levels=4, importance=args.importance,
                         schedule="iterative", baseline_epochs=args.baseline_epochs,
                         core_epochs=args.epochs, grow_epochs=args.epochs, lr=args.lr,
                         batch_size=args.batch_size, seed=args.seed)
    pipe = Pipeline(cfg, data, args.work_dir / "nested")
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    metrics = pipe.run()  # resumable: reruns skip finished stages
    seconds["nested"] = round(time.perf_counter() - t, 1)
    bundle = args.work_dir / "nested" / "bundle"
    manifest = load_bundle(bundle).manifest
    ratios = nested_ratios(4)
    indep = []
    t = time.perf_counter()
    for k, r in enumerate(ratios):
        indep.append(independent(pipe, r, args.epochs, args.importance, 500 + 10 * k))
        print(f"independent {r:.2f}: acc {indep[-1]['acc']:.4f}", flush=True)
    seconds["independent"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    rates = serve_rates(bundle, args.work_dir, png_body(data), args)
    seconds["serving"] = round(time.perf_counter() - t, 1)
    full = manifest.levels[-1]
    levels = []
    for k, lv in enumerate(manifest.levels):
        levels.append({
            "name": lv.name, "channel_ratio": lv.channel_ratio,
            "nested_acc": round(metrics["level_acc"][k], 4),
            "independent_acc": round(indep[k]["acc"], 4),
            "acc_ratio_nested_vs_independent": round(metrics["level_acc"][k] / indep[k]["acc"],
                                                     3) if indep[k]["acc"] else None,
            "macs": lv.macs, "params": lv.params,
            "macs_ratio": round(lv.macs / full.macs, 3),
            "independent_macs": indep[k]["macs"], "independent_params": indep[k]["params"],
            "end_to_end_rps": rates[lv.name]["rps"],
            "rps_ratio_vs_full": round(rates[lv.name]["rps"] / rates[full.name]["rps"], 2)
            if rates[full.name]["rps"] else None,
            "failed_requests": rates[lv.name]["failed"],
        })
    return {
        "model": MODEL, "dataset": "fashion-mnist", "data_path": str(args.data_path),
        "train_subset": args.train_subset, "test_subset": args.test_subset,
        "image_size": args.image_size, "channels": "grey repeated on 3 (RGB)",
        "baseline_epochs": args.baseline_epochs, "epochs_per_stage": args.epochs,
        "importance": args.importance, "lr": args.lr, "batch_size": args.batch_size,
        "seed": args.seed, "baseline_acc": round(metrics["baseline_acc"], 4),
        "levels": levels,
        "serving": {"server": "TorchServe 0.12, 1 worker, batch 4, delay 5 ms, 1 torch thread",
                    "load": f"{args.clients} closed-loop clients x {args.rps_seconds} s per "
                            f"level, pinned by {LEVEL_HEADER}, one RGB PNG at the input size",
                    "per_level": rates},
        "independent_basis": "baseline pruned one-shot (same importance, same per-group keep "
                             "ratio) and tuned epochs_per_stage; the 100 % one is the baseline "
                             "tuned epochs_per_stage more",
        "loadavg_start": [round(v, 2) for v in load_start],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "machine_note": "2 CPU cores shared with other work while this ran: compare the "
                        "ratios, not absolute rates",
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 1),
                    "nested_stages": metrics.get("seconds", {})},
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['model']} on Fashion-MNIST {result['image_size']}px, "
          f"{result['train_subset']} train / {result['test_subset']} test images, "
          f"baseline acc {result['baseline_acc']:.4f}")
    print(f"{'level':<10} {'nested':>7} {'indep':>7} {'ratio':>6} {'MACs':>12} {'params':>10} "
          f"{'rps':>7} {'failed':>6}")
    for lv in result["levels"]:
        print(f"{lv['name']:<10} {lv['nested_acc']:7.4f} {lv['independent_acc']:7.4f} "
              f"{lv['acc_ratio_nested_vs_independent'] or 0:6.3f} {lv['macs']:12d} "
              f"{lv['params']:10d} {lv['end_to_end_rps']:7.2f} {lv['failed_requests']:6d}")
    print(f"load average start {result['loadavg_start']}, end {result['loadavg_end']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", type=Path, default=FASHION_MNIST_DIR)
    parser.add_argument("--train-subset", type=int, default=2000)
    parser.add_argument("--test-subset", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--baseline-epochs", type=float, default=2.0)
    parser.add_argument("--epochs", type=float, default=1.0,
                        help="tuning epochs per nested stage and per independent model")
    parser.add_argument("--importance", default="l2")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rps-seconds", type=float, default=10.0)
    parser.add_argument("--work-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "elastiserve-tv-resnet18")
    parser.add_argument("--output", type=Path, default=RESULTS / "torchvision_resnet18.json")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stops TorchServe too
    result = run(args)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
