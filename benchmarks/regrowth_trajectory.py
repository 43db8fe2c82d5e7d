"""Accuracy-vs-sparsity trajectories of bidirectional pruning-regrowth on real Fashion-MNIST.

For each architecture (default VGG-16-BN and ResNet-20) one dense baseline is trained, then:

* one-shot: the baseline is magnitude-pruned to each sparsity (default 90/95/98/99 % of the
  conv/linear weights zero) and fine-tuned; from the most extreme point the most important
  pruned weights are regrown (Taylor score, restored to their dense values) in steps back to
  98/95/90 %, fine-tuned after each step;
* iterative: the same sparsities reached one after the other (each fine-tuned), then the same
  regrowth steps.

Every point is written with the sparse storage and its size on disk measured from the files.
Fine-tuning is the same number of epochs after every pruning and every regrowth step. One
model (default ResNet-20) also runs the structured form: channels pruned to a keep ratio
(DepGraph), then regrown to wider nested levels.

``--ablation-arch resnet20`` adds, for that model, the one-shot extreme point regrown with
each scoring (gradient, Taylor) and initialisation (restore, reinit) pair.

Resumable: the baseline and each finished trajectory are cached in ``--work-dir``. Writes
``benchmarks/results/regrowth_trajectory.json`` and ``.png`` and prints a table.

    python benchmarks/regrowth_trajectory.py --device cuda        # the committed run (GPU)
    python benchmarks/regrowth_trajectory.py --quick              # smoke size on the CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from elastiserve_store import architectures
from elastiserve_store.profile import count_macs, count_params
from elastiserve_store.sparse import dense_bytes
from elastiserve_train import loop
from elastiserve_train.data import Dataset, load_dataset
from elastiserve_train.regrowth.sparse_run import SparseConfig, SparseTrajectory
from elastiserve_train.regrowth.structured_run import StructuredConfig, StructuredTrajectory

ROOT = Path(__file__).resolve().parent


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


class Cache:
    """JSON file of finished pieces keyed by name; dropped when the configuration changes."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"config": config, "results": {}}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("config") == config:
                self.data = old

    def get(self, key: str) -> Any:
        return self.data["results"].get(key)

    def put(self, key: str, value: Any) -> None:
        self.data["results"][key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data), encoding="utf-8")
        tmp.replace(self.path)


def _arch_args(data: Dataset, width_mult: float) -> dict[str, Any]:
    return {"in_channels": data.input_shape[0], "num_classes": len(data.class_names),
            "width_mult": width_mult}


def width_of(arch: str, args: argparse.Namespace) -> float:
    """``--widths vgg16_bn=0.25`` overrides ``--width-mult`` for one architecture."""
    return float(args.widths.get(arch, args.width_mult))


def _widths(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in text.split(","):
        if item.strip():
            name, _, value = item.partition("=")
            out[name.strip()] = float(value)
    return out


def baseline(arch: str, data: Dataset, args: argparse.Namespace, cache: Cache
             ) -> tuple[torch.nn.Module, dict[str, Any]]:
    arch_args = _arch_args(data, width_of(arch, args))
    path = args.work_dir / f"{arch}-baseline.safetensors"
    torch.manual_seed(args.seed)
    model = architectures.build(arch, arch_args)
    info = cache.get(f"{arch}/baseline")
    if info is not None and path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.to(args.device), dict(info)
    model.to(args.device)
    start = time.perf_counter()
    loop.train(model, data.train, torch.tensor(data.mean), torch.tensor(data.std),
               loop.TrainConfig(epochs=args.baseline_epochs, lr=args.lr,
                                batch_size=args.batch_size, seed=args.seed * 7919 + 1))
    seconds = time.perf_counter() - start
    args.work_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(path))
    info = {"accuracy": loop.evaluate(model, data.test, torch.tensor(data.mean),
                                      torch.tensor(data.std)),
            "size_bytes": dense_bytes(model.state_dict()),
            "macs": count_macs(model, data.input_shape), "params": count_params(model),
            "train_seconds": seconds}
    cache.put(f"{arch}/baseline", info)
    return model, info


def unstructured(arch: str, schedule: str, data: Dataset, args: argparse.Namespace,
                 cache: Cache) -> list[dict[str, Any]]:
    key = f"{arch}/{schedule}"
    cached: list[dict[str, Any]] | None = cache.get(key)
    if cached is not None:
        return cached
    dense, _ = baseline(arch, data, args, cache)
    cfg = SparseConfig(importance=args.importance, init=args.init, prune_epochs=args.ft_epochs,
                       core_epochs=args.ft_epochs, grow_epochs=args.ft_epochs, lr=args.ft_lr,
                       batch_size=args.batch_size, calib_batches=args.calib_batches,
                       seed=args.seed)

    def show(p: Any) -> None:
        print(f"  [{time.strftime('%H:%M:%S')}] {arch} {schedule} {p.phase:8} sparsity "
              f"{p.sparsity:.4f} acc {p.accuracy:.4f} {p.size_bytes} B", file=sys.stderr,
              flush=True)

    traj = SparseTrajectory(dense, data, cfg, args.work_dir / "levels" / arch, on_point=show)
    points = [p.as_dict() for p in traj.run(dense, args.sparsities, args.regrow_to, schedule)]
    cache.put(key, points)
    return points


def ablation(arch: str, importance: str, init: str, data: Dataset, args: argparse.Namespace,
             cache: Cache) -> list[dict[str, Any]]:
    """One-shot prune to the most extreme sparsity, then regrow with one scoring/init pair."""
    key = f"{arch}/ablation/{importance}-{init}"
    cached: list[dict[str, Any]] | None = cache.get(key)
    if cached is not None:
        return cached
    dense, _ = baseline(arch, data, args, cache)
    cfg = SparseConfig(importance=importance, init=init,  # type: ignore[arg-type]
                       prune_epochs=args.ft_epochs, core_epochs=args.ft_epochs,
                       grow_epochs=args.ft_epochs, lr=args.ft_lr, batch_size=args.batch_size,
                       calib_batches=args.calib_batches, seed=args.seed)
    traj = SparseTrajectory(dense, data, cfg, args.work_dir / "levels" / f"{arch}-ablation")
    points = [p.as_dict() for p in traj.run(dense, args.sparsities[-1:], args.regrow_to,
                                            "one-shot")]
    cache.put(key, points)
    return points


def structured(arch: str, data: Dataset, args: argparse.Namespace, cache: Cache
               ) -> list[dict[str, Any]]:
    key = f"{arch}/structured"
    cached: list[dict[str, Any]] | None = cache.get(key)
    if cached is not None:
        return cached
    dense, info = baseline(arch, data, args, cache)
    cfg = StructuredConfig(arch=arch, arch_args=_arch_args(data, width_of(arch, args)),
                           regrow_importance=args.importance, init=args.init,
                           core_epochs=args.ft_epochs, grow_epochs=args.ft_epochs,
                           lr=args.ft_lr, batch_size=args.batch_size,
                           calib_batches=args.calib_batches, seed=args.seed,
                           device=args.device)
    traj = StructuredTrajectory(cfg, data)
    traj.prune(dense.cpu(), [args.structured_keep])
    for keep in args.structured_levels:
        traj.regrow(keep)
    names = [f"R{i}-{round(k * 100)}pct" for i, k in enumerate(traj.keeps)]
    levels: list[dict[str, Any]] = traj.export(args.work_dir / f"{arch}-structured-bundle",
                                               names)
    from elastiserve_store import load_bundle

    bundle = load_bundle(args.work_dir / f"{arch}-structured-bundle")
    for i, lv in enumerate(levels):
        lv["phase"] = "pruned" if i == 0 else "regrown"
        lv["macs_ratio"] = lv["macs"] / info["macs"]
        lv["size_bytes"] = dense_bytes(bundle.state_dict(i))
        lv["train_seconds"] = traj.seconds[i]
    cache.put(key, levels)
    return levels


def train_seconds_total(doc: dict[str, Any]) -> float:
    """Seconds spent training, summed over baselines, trajectories and structured levels.

    A point's ``train_seconds`` counts from the dense network: one-shot pruned points each
    start there, everything else continues from the point before.
    """
    total = sum(float(b["train_seconds"]) for b in doc["baselines"].values())
    for by_schedule in doc["unstructured"].values():
        for schedule, points in by_schedule.items():
            pruned = [p for p in points if p["phase"] == "pruned"]
            total += points[-1]["train_seconds"]
            if schedule == "one-shot":
                total += sum(p["train_seconds"] for p in pruned[:-1])
    for levels in doc["structured"].values():
        total += sum(lv["train_seconds"] for lv in levels)
    for by_variant in doc.get("ablation", {}).values():
        total += sum(points[-1]["train_seconds"] for points in by_variant.values())
    return total


def _plot(path: Path, doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(doc["unstructured"])
    fig, axes = plt.subplots(1, len(archs) + 1, figsize=(5.2 * (len(archs) + 1), 4.3))

    def tx(x: float) -> float:
        return -math.log10(max(1e-4, 1.0 - x))

    ticks = [0.9, 0.95, 0.98, 0.99, 0.995]
    for ax, arch in zip(axes, archs, strict=False):
        for schedule, points in doc["unstructured"][arch].items():
            for phase, style in (("pruned", "o-"), ("regrown", "s--")):
                pts = [p for p in points if p["phase"] == phase]
                if phase == "regrown":  # draw regrowth from the extreme point it starts at
                    pts = [p for p in points if p["phase"] == "pruned"][-1:] + pts
                ax.plot([tx(p["sparsity"]) for p in pts], [p["accuracy"] * 100 for p in pts],
                        style, label=f"{schedule} {phase}")
        ax.axhline(doc["baselines"][arch]["accuracy"] * 100, color="grey", linestyle=":",
                   label="dense")
        ax.set_xticks([tx(t) for t in ticks], [f"{t * 100:g}%" for t in ticks])
        ax.set_xlabel("weights pruned (zero)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{arch}: unstructured")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for arch, levels in doc["structured"].items():
        ax.plot([lv["macs_ratio"] for lv in levels], [lv["accuracy"] * 100 for lv in levels],
                "o-", label=f"{arch} regrown levels")
        ax.axhline(doc["baselines"][arch]["accuracy"] * 100, color="grey", linestyle=":",
                   label=f"{arch} dense")
    ax.set_xlabel("MACs ratio")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("structured (channels): pruned + regrown levels")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="vgg16_bn,resnet20")
    p.add_argument("--structured-arch", default="resnet20")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--widths", type=_widths, default={},
                   help="per-architecture width multipliers, e.g. vgg16_bn=0.25,resnet20=0.5")
    p.add_argument("--data-path", type=Path, default=None)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--baseline-epochs", type=float, default=6.0)
    p.add_argument("--ft-epochs", type=float, default=1.0,
                   help="fine-tuning after every pruning and every regrowth step")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--sparsities", type=_floats, default=[0.9, 0.95, 0.98, 0.99])
    p.add_argument("--regrow-to", type=_floats, default=[0.98, 0.95, 0.9])
    p.add_argument("--schedules", default="one-shot,iterative")
    p.add_argument("--importance", default="taylor", choices=("gradient", "taylor"))
    p.add_argument("--init", default="restore", choices=("restore", "reinit"))
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--structured-keep", type=float, default=0.25)
    p.add_argument("--structured-levels", type=_floats, default=[0.5, 0.75, 1.0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ablation-arch", default="",
                   help="also regrow this model's one-shot extreme point with every "
                        "importance x init pair (gradient/taylor x restore/reinit)")
    p.add_argument("--only", default=None,
                   help="run only these pieces, e.g. 'resnet20/one-shot,structured'")
    p.add_argument("--work-dir", type=Path, default=Path("runs/regrowth_trajectory"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "regrowth_trajectory.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke size: resnet20 x0.25, 1000/500 images, 0.2 epochs")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.archs, args.structured_arch, args.width_mult = "resnet20", "resnet20", 0.25
        args.train_subset, args.test_subset = 1000, 500
        args.baseline_epochs = args.ft_epochs = 0.2
        if args.out == ROOT / "results" / "regrowth_trajectory.json":
            args.out = Path("/tmp/regrowth_trajectory-quick.json")
        args.work_dir = args.work_dir.with_name(args.work_dir.name + "-quick")
    start = time.perf_counter()
    data = load_dataset("fashion-mnist", args.data_path).limit(args.train_subset,
                                                               args.test_subset, args.seed)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("out", "work_dir", "only", "threads", "ablation_arch")}
    cache = Cache(args.work_dir / "cache.json", config)
    only = None if args.only is None else set(args.only.split(","))
    archs = [a for a in args.archs.split(",") if a]
    schedules = [s for s in args.schedules.split(",") if s]
    doc: dict[str, Any] = {"benchmark": "regrowth_trajectory", "config": config,
                           "data": {"dataset": data.name, "train": len(data.train.labels),
                                    "test": len(data.test.labels),
                                    "input_shape": list(data.input_shape)},
                           "baselines": {}, "unstructured": {}, "structured": {},
                           "ablation": {}}
    for arch in archs:
        for schedule in schedules:
            if only is None or f"{arch}/{schedule}" in only:
                doc["unstructured"].setdefault(arch, {})[schedule] = unstructured(
                    arch, schedule, data, args, cache)
    if args.structured_arch and (only is None or "structured" in only):
        doc["structured"][args.structured_arch] = structured(args.structured_arch, data, args,
                                                             cache)
    if args.ablation_arch and (only is None or "ablation" in only):
        for importance in ("taylor", "gradient"):
            for init in ("restore", "reinit"):
                doc["ablation"].setdefault(args.ablation_arch, {})[f"{importance}/{init}"] = \
                    ablation(args.ablation_arch, importance, init, data, args, cache)
    for arch in {*archs, args.structured_arch, args.ablation_arch} - {""}:
        if cache.get(f"{arch}/baseline") is not None:
            doc["baselines"][arch] = cache.get(f"{arch}/baseline")
    doc["wall_seconds_this_invocation"] = time.perf_counter() - start  # small when cached
    doc["train_seconds_total"] = train_seconds_total(doc)
    doc["machine"] = {"device": args.device, "platform": platform.platform(),
                      "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                      else None, "torch": torch.__version__, "cpus": os.cpu_count(),
                      "load_average_at_end": os.getloadavg(),
                      "note": "train_seconds are wall seconds on a shared machine"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if doc["unstructured"] or doc["structured"]:
        _plot(args.out.with_suffix(".png"), doc)
    print(f"{'model':10} {'schedule':10} {'phase':8} {'sparsity':>9} {'accuracy':>9} "
          f"{'bytes':>10} {'MACs ratio':>10}")
    for arch, base in doc["baselines"].items():
        print(f"{arch:10} {'-':10} {'dense':8} {0:9.4f} {base['accuracy']:9.4f} "
              f"{base['size_bytes']:10d} {1:10.4f}")
    for arch, by_schedule in doc["unstructured"].items():
        for schedule, points in by_schedule.items():
            for pt in points:
                print(f"{arch:10} {schedule:10} {pt['phase']:8} {pt['sparsity']:9.4f} "
                      f"{pt['accuracy']:9.4f} {pt['size_bytes']:10d} "
                      f"{pt['macs'] / doc['baselines'][arch]['macs']:10.4f}")
    for arch, levels in doc["structured"].items():
        for lv in levels:
            print(f"{arch:10} {'struct':10} {lv['phase']:8} {1 - lv['channel_ratio']:9.4f} "
                  f"{lv['accuracy']:9.4f} {lv['size_bytes']:10d} {lv['macs_ratio']:10.4f}")
    for arch, by_variant in doc["ablation"].items():
        for variant, points in by_variant.items():
            for pt in points:
                print(f"{arch:10} {variant:16} {pt['phase']:8} {pt['sparsity']:9.4f} "
                      f"{pt['accuracy']:9.4f} {pt['size_bytes']:10d}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
