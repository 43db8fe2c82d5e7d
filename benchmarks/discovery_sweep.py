"""Complexity-aware structure discovery on real Fashion-MNIST: how α and β shape the result.

For one ν, runs structure discovery from scratch on ResNet-20 (``--arch resnet56`` as well if
time allows) for an α sweep (layer vs unit pruning: 0, 0.5, 1 at β = 0.5) and a β sweep (FLOPs
vs parameters: 0, 1 at α = 0.5). For every discovered network it records units and layers
removed, the MACs and parameter reduction, where the pruning landed (channels kept per stage),
test accuracy (straight after discovery and after ``--finetune-epochs`` of plain training), and
the complexity model's prediction of MACs/params against what the built network measures.

What to expect from the seed paper's findings: α moves pruning from units (α = 0) to layers
(α = 1); β = 1 (price FLOPs) spreads the pruning over the stages, which cost about the same
MACs, while β = 0 (price parameters) concentrates it on stage 3, which holds most parameters.

``--nu-sweep NU [NU ...]`` is the second study (issue 20, item 4): combined (α = 0.5),
layer-only (α = 1) and unit-only (α = 0) over a ν grid, ``--seeds`` seeds each, on a reduced
model and data set (``--width-mult``, ``--image-size``, ``--train-subset``), with a validation
split carved from the training set (``--val-subset``): every run reports validation accuracy,
the test set is read once per run for the reported number. It writes one JSON row per finished
run (resumable) with the ``protocol`` object, the share of gates strictly between 0 and 1 at the
end, and a comparison of the α curves at matched MACs (linear interpolation of the seed means
where the curves' MACs ranges overlap), and a plot of accuracy against MACs with the spread.

    nice -n 10 python benchmarks/discovery_sweep.py --nu-sweep 0.1 0.3 1 \
        --out benchmarks/results/discovery_nu_sweep.json

Resumable: each finished run is stored in the output JSON at once; rerun the same command to
continue. ``--quick`` is a smoke-sized run (minutes).

    nice -n 10 python benchmarks/discovery_sweep.py                   # the committed result
    python benchmarks/discovery_sweep.py --quick --out /tmp/q.json    # smoke size
"""

# ruff: noqa: RUF001, RUF002  (Greek letters: the paper's notation for nu, alpha, beta)

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from elastiserve_train import loop
from elastiserve_train.data import FASHION_MNIST_DIR, Dataset, ImageSet, load_fashion_mnist
from elastiserve_train.discovery.params import DiscoveryParams
from elastiserve_train.discovery.search import SearchConfig, discover
from elastiserve_train.protocol import seed_spread

ROOT = Path(__file__).resolve().parent
SWEEP = (("alpha", 0.0, 0.5), ("alpha", 0.5, 0.5), ("alpha", 1.0, 0.5),
         ("beta", 0.5, 0.0), ("beta", 0.5, 1.0))
"""(sweep, α, β); the α = β = 0.5 point is shared by both sweeps."""


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke size: 1000 images, 1 epoch")
    p.add_argument("--arch", nargs="+", default=["resnet20"], choices=("resnet20", "resnet56"))
    p.add_argument("--nu", type=float, default=1.0)
    p.add_argument("--theta-lr", type=float, default=2.0)
    p.add_argument("--layer-theta-lr", type=float, default=0.2)
    p.add_argument("--theta-warmup", type=float, default=0.2)
    p.add_argument("--gate-streams", action="store_true",
                   help="also gate the residual streams' channels")
    p.add_argument("--theta-tol", type=float, default=0.05)
    p.add_argument("--epochs", type=float, default=3.0, help="discovery epochs")
    p.add_argument("--finetune-epochs", type=float, default=0.5,
                   help="plain training of the discovered network afterwards")
    p.add_argument("--train-subset", type=int, default=8000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-path", type=Path, default=FASHION_MNIST_DIR)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "discovery_sweep.json")
    p.add_argument("--part", default=None,
                   help="i/n: run only every n-th configuration starting at i (for parallel "
                        "processes, each with its own --out); merge with --merge")
    p.add_argument("--baseline", action="store_true",
                   help="also train the unpruned network (no gates) for epochs + "
                        "finetune-epochs, as the accuracy reference")
    p.add_argument("--nu-sweep", type=float, nargs="+", default=None,
                   help="the ν sweep over alpha 0 / 0.5 / 1 (see the module docstring)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per configuration (ν sweep)")
    p.add_argument("--val-subset", type=int, default=500,
                   help="validation images carved from the training subset (ν sweep)")
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=None, help="resize (bilinear)")
    p.add_argument("--prune-patience", type=int, default=3)
    p.add_argument("--theta-settle", type=float, default=0.25)
    p.add_argument("--merge", type=Path, nargs="*", default=[],
                   help="result files of --part runs (same settings) to merge into --out")
    args = p.parse_args(argv)
    if args.quick:
        args.train_subset, args.test_subset, args.epochs = 1000, 300, 1.0
        args.finetune_epochs = 0.5
        if args.out == ROOT / "results" / "discovery_sweep.json":
            args.out = ROOT / "results" / "discovery_sweep-quick.json"
    return args


def stage_kept(summary: dict[str, Any], full: dict[str, int]) -> dict[str, float]:
    """Fraction of the channels kept per stage (stream + hidden slots of running blocks)."""
    skipped = set(summary["skipped_blocks"])
    out = {}
    for stage in ("s1", "s2", "s3"):
        slots = [s for s in full if (s == stage or s.startswith(stage + "."))
                 and s not in skipped]
        out[stage] = sum(summary["widths"][s] for s in slots) / sum(full[s] for s in slots)
    return out


def run_one(arch: str, alpha: float, beta: float, data: Dataset, args: argparse.Namespace
            ) -> dict[str, Any]:
    from elastiserve_store import architectures

    arch_args = {"in_channels": 1, "num_classes": len(data.class_names)}
    params = DiscoveryParams(nu=args.nu, alpha=alpha, beta=beta, theta_tol=args.theta_tol)
    cfg = SearchConfig(epochs=args.epochs, lr=args.lr, theta_lr=args.theta_lr,
                       layer_theta_lr=args.layer_theta_lr, theta_warmup=args.theta_warmup,
                       batch_size=args.batch_size, seed=args.seed,
                       gate_streams=args.gate_streams)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    start = time.perf_counter()
    found = discover(arch, arch_args, data, params, cfg)
    seconds = time.perf_counter() - start
    acc = loop.evaluate(found.model, data.test, mean, std)
    tuned = None
    if args.finetune_epochs > 0:
        model = found.model
        loop.train(model, data.train, mean, std,
                   loop.TrainConfig(epochs=args.finetune_epochs, lr=args.lr,
                                    batch_size=args.batch_size, seed=args.seed + 1))
        tuned = loop.evaluate(model, data.test, mean, std)
    summary = found.summary()
    full = architectures.full_widths(arch, arch_args)
    return {
        "arch": arch, "nu": args.nu, "alpha": alpha, "beta": beta,
        **{k: summary[k] for k in ("layers_removed", "skipped_blocks", "layers_starved",
                                   "units_removed",
                                   "units_total", "macs_ratio", "params_ratio", "predicted",
                                   "expected", "measured", "prediction_exact", "widths")},
        "stage_channels_kept": stage_kept(summary, full),
        "full": found.full,
        "accuracy_discovered": acc, "accuracy_finetuned": tuned,
        "discovery_seconds": seconds, "history": found.history,
    }


def baseline(arch: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """The unpruned network trained as long as a discovery run plus its fine-tuning."""
    from elastiserve_store import architectures

    torch.manual_seed(args.seed)
    model = architectures.build(arch, {"in_channels": 1, "num_classes": len(data.class_names)})
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    epochs = args.epochs + args.finetune_epochs
    start = time.perf_counter()
    loop.train(model, data.train, mean, std,
               loop.TrainConfig(epochs=epochs, lr=args.lr, batch_size=args.batch_size,
                                seed=args.seed))
    return {"epochs": epochs, "accuracy": loop.evaluate(model, data.test, mean, std),
            "seconds": time.perf_counter() - start}


def starved_layers(run: dict[str, Any]) -> list[str]:
    """Removed blocks whose hidden units had all been pruned (``layers_starved``; results
    written before that field existed: the blocks whose hidden width at removal was 1, the
    survivor a slot always keeps)."""
    if "layers_starved" in run:
        return list(run["layers_starved"])
    return [b for b in run["skipped_blocks"] if run["widths"][b] == 1]


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in ("arch", "alpha", "beta"))


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'arch':9} {'a':>4} {'b':>4} {'layers-(starved)':>16} {'units-':>7} {'MACs':>6} "
            f"{'params':>6} {'kept s1/s2/s3':>15} {'acc':>6} {'acc+ft':>6} {'pred=meas':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        k = r["stage_channels_kept"]
        kept = f"{k['s1']:.2f}/{k['s2']:.2f}/{k['s3']:.2f}"
        ft = "-" if r["accuracy_finetuned"] is None else f"{r['accuracy_finetuned']:.4f}"
        lines.append(
            f"{r['arch']:9} {r['alpha']:4.1f} {r['beta']:4.1f} "
            f"{r['layers_removed']:11d} ({len(starved_layers(r))}) "
            f"{r['units_removed']:7d} {r['macs_ratio']:6.3f} {r['params_ratio']:6.3f} "
            f"{kept:>15} {r['accuracy_discovered']:6.4f} {ft:>6} "
            f"{r['prediction_exact']!s:>9}")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        if r["beta"] == 0.5:
            x = f"{r['arch']}\nα={r['alpha']}"
            starved = len(starved_layers(r))
            ax1.bar([x], [r["layers_removed"] - starved], color="tab:blue")
            ax1.bar([x], [starved], bottom=[r["layers_removed"] - starved], color="white",
                    edgecolor="tab:blue", hatch="//")
        label = f"{r['arch']} α={r['alpha']} β={r['beta']}"
        ax2.scatter(r["params_ratio"], r["macs_ratio"], label=label)
    ax1.set_ylabel("residual layers removed (hatched: all hidden units pruned first)")
    ax1.set_title("α moves pruning to layers (β = 0.5)")
    ax1b = ax1.twinx()
    xs = [f"{r['arch']}\nα={r['alpha']}" for r in results if r["beta"] == 0.5]
    ys = [r["units_removed"] / r["units_total"] for r in results if r["beta"] == 0.5]
    ax1b.plot(xs, ys, "o-", color="tab:orange")
    ax1b.set_ylabel("fraction of channels removed (running blocks)", color="tab:orange")
    ax2.plot([0, 1], [0, 1], ":", color="grey")
    ax2.set_xlabel("params kept (fraction)")
    ax2.set_ylabel("MACs kept (fraction)")
    ax2.set_title("β: FLOPs vs parameters")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.nu_sweep is not None:
        return nu_sweep(args, sys.argv[1:] if argv is None else argv)
    data = load_fashion_mnist(args.data_path).limit(args.train_subset, args.test_subset,
                                                    args.seed)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("out", "threads", "data_path", "arch", "part", "merge",
                           "baseline")}
    config["dataset"] = f"fashion-mnist ({args.train_subset} train / {args.test_subset} test)"
    done: dict[str, Any] = {"config": config, "runs": []}
    if args.out.is_file():
        old = json.loads(args.out.read_text())
        if old.get("config") == config:
            done = old
        else:
            print(f"{args.out}: configuration changed, starting over", file=sys.stderr)
    for path in args.merge:
        part = json.loads(path.read_text())
        if part.get("config") != config:
            raise SystemExit(f"{path}: ran with other settings; not merged")
        for run in part["runs"]:
            if not any(_same(r, run) for r in done["runs"]):
                done["runs"].append(run)
        done.setdefault("baselines", {}).update(part.get("baselines", {}))
    done["runs"].sort(key=lambda r: (r["arch"], SWEEP.index(
        next(p for p in SWEEP if p[1:] == (r["alpha"], r["beta"])))))
    index, count = (int(x) for x in args.part.split("/")) if args.part else (0, 1)
    for arch in args.arch if args.baseline else ():
        if arch not in done.get("baselines", {}):
            print(f"{arch} unpruned baseline ...", file=sys.stderr, flush=True)
            done.setdefault("baselines", {})[arch] = baseline(arch, data, args)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(done, indent=2) + "\n")
    for arch in args.arch:
        for i, (_sweep, alpha, beta) in enumerate(SWEEP):
            if i % count != index:
                continue
            if any(r["arch"] == arch and r["alpha"] == alpha and r["beta"] == beta
                   for r in done["runs"]):
                continue
            print(f"{arch} alpha={alpha} beta={beta} ...", file=sys.stderr, flush=True)
            done["runs"].append(run_one(arch, alpha, beta, data, args))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(done, indent=2) + "\n")
            print(table(done["runs"][-1:]), file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(done, indent=2) + "\n")
    print(table(done["runs"]))
    for arch, base in done.get("baselines", {}).items():
        print(f"{arch} unpruned, same data and {base['epochs']} epochs: accuracy "
              f"{base['accuracy']:.4f} ({base['seconds']:.0f} s)")
    plot(done["runs"], args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


# --------------------------------------------------------------------------- the nu sweep

ALPHAS = ((0.0, "unit-only"), (0.5, "combined"), (1.0, "layer-only"))


def nu_protocol(args: argparse.Namespace, sizes: dict[str, int]) -> dict[str, Any]:
    """What the numbers were measured under (issue 20, item 1)."""
    epochs = args.epochs + args.finetune_epochs
    return {
        "splits": {**sizes, "validation_carved_from": "training subset (seeded, disjoint)"},
        "seeds": list(range(args.seed, args.seed + args.seeds)),
        "budgets": {
            "discovery_epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
            "baseline_epochs": epochs,
            "examples_seen_per_run": round(epochs * sizes["train"]),
            "batch_size": args.batch_size,
        },
        "selection": "no setting was chosen on the test set: runs report validation accuracy; "
                     "test accuracy is read once per run, after fine-tuning, for the table",
        "reduction": f"resnet20 at width_mult {args.width_mult}, Fashion-MNIST resized to "
                     f"{args.image_size or 28} px, {sizes['train']} training / "
                     f"{sizes['validation']} validation / {sizes['test']} test images, "
                     f"{args.epochs} discovery + {args.finetune_epochs} fine-tuning epochs",
        "beta": 0.5,
        "theta_tol": args.theta_tol,
        "prune_patience": args.prune_patience,
        "theta_settle": args.theta_settle,
    }


def nu_run(alpha: float, nu: float, seed: int, data: Dataset, val: ImageSet,
           args: argparse.Namespace) -> dict[str, Any]:
    """One discovery run (+ fine-tuning), validation and test accuracy."""
    arch_args = {"in_channels": 1, "num_classes": len(data.class_names),
                 "width_mult": args.width_mult}
    params = DiscoveryParams(nu=nu, alpha=alpha, beta=0.5, theta_tol=args.theta_tol)
    cfg = SearchConfig(epochs=args.epochs, lr=args.lr, theta_lr=args.theta_lr,
                       layer_theta_lr=args.layer_theta_lr, theta_warmup=args.theta_warmup,
                       batch_size=args.batch_size, seed=seed,
                       prune_patience=args.prune_patience, theta_settle=args.theta_settle)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    start = time.perf_counter()
    found = discover("resnet20", arch_args, data, params, cfg)
    seconds = time.perf_counter() - start
    val_discovered = loop.evaluate(found.model, val, mean, std)
    model = found.model
    if args.finetune_epochs > 0:
        loop.train(model, data.train, mean, std,
                   loop.TrainConfig(epochs=args.finetune_epochs, lr=args.lr,
                                    batch_size=args.batch_size, seed=seed + 1))
    summary = found.summary()
    return {
        "alpha": alpha, "nu": nu, "seed": seed,
        "macs_ratio": summary["macs_ratio"], "params_ratio": summary["params_ratio"],
        "layers_removed": summary["layers_removed"], "units_removed": summary["units_removed"],
        "units_total": summary["units_total"], "prediction_exact": summary["prediction_exact"],
        "theta_interior": summary["theta_interior"],
        "val_accuracy_discovered": val_discovered,
        "val_accuracy": loop.evaluate(model, val, mean, std),
        "test_accuracy": loop.evaluate(model, data.test, mean, std),
        "seconds": seconds,
    }


def nu_baseline(seed: int, data: Dataset, val: ImageSet, args: argparse.Namespace
                ) -> dict[str, Any]:
    """The unpruned network on the same data and the same epochs (discovery + fine-tuning)."""
    from elastiserve_store import architectures

    torch.manual_seed(seed)
    model = architectures.build("resnet20", {"in_channels": 1, "num_classes": 10,
                                             "width_mult": args.width_mult})
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    loop.train(model, data.train, mean, std,
               loop.TrainConfig(epochs=args.epochs + args.finetune_epochs, lr=args.lr,
                                batch_size=args.batch_size, seed=seed))
    return {"seed": seed, "val_accuracy": loop.evaluate(model, val, mean, std),
            "test_accuracy": loop.evaluate(model, data.test, mean, std)}


def nu_aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and spread over seeds per (α, ν)."""
    out = []
    for alpha, name in ALPHAS:
        for nu in sorted({r["nu"] for r in rows if r["alpha"] == alpha}):
            group = [r for r in rows if r["alpha"] == alpha and r["nu"] == nu]
            out.append({"alpha": alpha, "method": name, "nu": nu, **{
                key: seed_spread([float(r[key]) for r in group])
                for key in ("macs_ratio", "params_ratio", "val_accuracy", "test_accuracy",
                            "layers_removed", "units_removed")},
                "theta_interior_end": seed_spread(
                    [float(r["theta_interior"]["end"]) for r in group])})
    return out


def matched_macs(agg: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Each method's mean ``key`` accuracy interpolated at MACs where all curves overlap."""
    curves = {}
    for _alpha, name in ALPHAS:
        pts = sorted((a["macs_ratio"]["mean"], a[key]["mean"]) for a in agg
                     if a["method"] == name)
        if pts:
            curves[name] = pts
    if len(curves) < len(ALPHAS):
        return []
    low = max(p[0][0] for p in curves.values())
    high = min(p[-1][0] for p in curves.values())
    if low > high:
        return [{"note": "the methods' MACs ranges do not overlap; no matched comparison"}]
    grid = [low + (high - low) * i / 2 for i in range(3)] if high > low else [low]
    result = []
    for macs in grid:
        row: dict[str, Any] = {"macs_ratio": macs}
        for name, pts in curves.items():
            xs = [x for x, _ in pts]
            ys = [y for _, y in pts]
            row[name] = float(np.interp(macs, xs, ys))
        result.append(row)
    return result


def nu_table(agg: list[dict[str, Any]]) -> str:
    head = (f"{'method':11} {'nu':>5} {'MACs':>13} {'val acc':>15} {'test acc':>15} "
            f"{'layers-':>7} {'θ in (0,1)':>10}")
    lines = [head, "-" * len(head)]
    def ms(a: dict[str, Any], k: str) -> str:
        return f"{a[k]['mean']:.3f}±{a[k]['std']:.3f}"

    for a in agg:
        lines.append(f"{a['method']:11} {a['nu']:5.2f} {ms(a, 'macs_ratio'):>13} "
                     f"{ms(a, 'val_accuracy'):>15} {ms(a, 'test_accuracy'):>15} "
                     f"{a['layers_removed']['mean']:7.1f} "
                     f"{a['theta_interior_end']['mean']:10.3f}")
    return "\n".join(lines)


def nu_plot(agg: list[dict[str, Any]], baselines: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for _alpha, name in ALPHAS:
        pts = sorted((a["macs_ratio"]["mean"], a["test_accuracy"]["mean"],
                      a["macs_ratio"]["std"], a["test_accuracy"]["std"])
                     for a in agg if a["method"] == name)
        if pts:
            x, y, xe, ye = zip(*pts, strict=True)
            ax.errorbar(x, y, xerr=xe, yerr=ye, marker="o", capsize=3, label=name)
    if baselines:
        accs = [float(b["test_accuracy"]) for b in baselines.values()]
        ms = seed_spread(accs)
        ax.errorbar([1.0], [ms["mean"]], yerr=[ms["std"]], marker="s", color="black",
                    capsize=3, label="unpruned")
    ax.set_xlabel("MACs kept (fraction of the unpruned network)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("structure discovery: ν sweep, α = 0 / 0.5 / 1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def nu_sweep(args: argparse.Namespace, argv: list[str]) -> int:
    """The ν sweep (see the module docstring); resumable, one row per finished run."""
    data = load_fashion_mnist(args.data_path).limit(
        args.train_subset + args.val_subset, args.test_subset, args.seed)
    if args.image_size:
        data = data.resized(args.image_size)
    data, val = data.with_validation(args.val_subset, args.seed)
    sizes = {"train": len(data.train.labels), "validation": len(val.labels),
             "test": len(data.test.labels)}
    protocol = nu_protocol(args, sizes)
    settings = {"theta_lr": args.theta_lr,
                "layer_theta_lr": args.layer_theta_lr, "theta_warmup": args.theta_warmup,
                "lr": args.lr}
    doc: dict[str, Any] = {"protocol": protocol, "settings": settings, "runs": [],
                           "baselines": {}}
    if args.out.is_file():
        old = json.loads(args.out.read_text())
        if old.get("protocol") == protocol and old.get("settings") == settings:
            doc = old
        else:
            print(f"{args.out}: settings changed, starting over", file=sys.stderr)
    for path in args.merge:
        part = json.loads(path.read_text())
        if part.get("protocol") != protocol or part.get("settings") != settings:
            raise SystemExit(f"{path}: ran with other settings; not merged")
        for run in part["runs"]:
            if not any(all(r[k] == run[k] for k in ("alpha", "nu", "seed"))
                       for r in doc["runs"]):
                doc["runs"].append(run)
        doc["baselines"].update(part.get("baselines", {}))
    doc["command"] = "nice -n 10 python benchmarks/discovery_sweep.py " + " ".join(argv)
    doc.setdefault("commands", [])
    if doc["command"] not in doc["commands"]:
        doc["commands"].append(doc["command"])
    doc["nu_grid"] = sorted({*args.nu_sweep, *(r["nu"] for r in doc["runs"])})
    index, count = (int(x) for x in args.part.split("/")) if args.part else (0, 1)

    def save() -> None:
        doc["load_average"] = list(os.getloadavg())
        doc["load_note"] = "shared, loaded 2-core machine: seconds are not comparable"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")

    jobs = [(a, nu, s) for s in protocol["seeds"] for nu in args.nu_sweep for a, _ in ALPHAS]
    jobs += [(-1.0, 0.0, s) for s in protocol["seeds"]]
    for i, (alpha, nu, seed) in enumerate(jobs):
        if i % count != index:
            continue
        if alpha < 0:
            if str(seed) not in doc["baselines"]:
                print(f"baseline seed={seed} ...", file=sys.stderr, flush=True)
                doc["baselines"][str(seed)] = nu_baseline(seed, data, val, args)
                save()
            continue
        if any(r["alpha"] == alpha and r["nu"] == nu and r["seed"] == seed
               for r in doc["runs"]):
            continue
        print(f"alpha={alpha} nu={nu} seed={seed} ...", file=sys.stderr, flush=True)
        doc["runs"].append(nu_run(alpha, nu, seed, data, val, args))
        save()
    agg = nu_aggregate(doc["runs"])
    doc["aggregate"] = agg
    doc["matched_macs"] = {"val_accuracy": matched_macs(agg, "val_accuracy"),
                           "test_accuracy": matched_macs(agg, "test_accuracy")}
    interior = [float(r["theta_interior"]["end"]) for r in doc["runs"]]
    doc["theta_interior_end"] = seed_spread(interior) if interior else None
    save()
    print(nu_table(agg))
    for key, rows in doc["matched_macs"].items():
        print(f"matched MACs ({key}): {json.dumps(rows)}")
    if doc["baselines"]:
        print(f"unpruned: {seed_spread([b['test_accuracy'] for b in doc['baselines'].values()])}")
    nu_plot(agg, doc["baselines"], args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
