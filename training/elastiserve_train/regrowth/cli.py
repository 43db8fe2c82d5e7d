"""``elastiserve train --strategy regrowth``: bidirectional pruning-regrowth (seed 2).

Trains (or reuses) the dense baseline, prunes it to the extreme ratio that meets a hard budget
(``--budget-bytes``, ``--budget-macs``, ``--budget-macs-ratio``; or a ratio given directly),
one-shot or iterative (``--schedule``, ``--steps-per-level`` steps), then regrows in steps
(``--regrowth-steps`` up to ``--regrowth-final``, or the explicit ``--regrowth-levels``).

* ``--regrowth-form unstructured``: weight-level; each point is written sparsely under
  ``OUT/levels/<name>`` (``elastiserve_store.sparse``), its size on disk measured from there;
  MACs are the theoretical sparse MACs (a zero weight costs nothing).
* ``--regrowth-form structured``: channel-level through Torch-Pruning's DepGraph; the pruned
  and regrown networks are nested levels of an ordinary bundle in ``OUT/bundle``.

Writes ``OUT/report.json`` (the strategies' common contract plus the whole trajectory),
``OUT/report.md`` and ``OUT/trajectory.png``. The baseline is cached in
``OUT/baseline.safetensors`` (with its configuration) and reused by a rerun.

``--model`` (a torchvision model or a user's factory, analysed into a dependency-group layout
by the training CLI) works with both forms: the baseline is its constructor's model (trained,
or ``--weights``), the sparse artifacts record the constructor and layout as their
architecture, and the structured form cuts the constructed model along the layout as
prune-and-grow does, concatenated and grouped axes included (:mod:`.channels`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from elastiserve_store import architectures, load_bundle
from elastiserve_store.profile import count_macs, count_params
from elastiserve_store.sparse import dense_bytes

from .. import loop
from ..cli import resolve_architecture
from ..data import Dataset
from ..pipeline import _load_baseline
from ..schedules import iterative
from .budget import Budget, BudgetError, geometric_keeps
from .plot import plot_trajectory
from .sparse_run import MAX_SPARSITY, SparseConfig, SparseTrajectory
from .structured_run import StructuredConfig, StructuredTrajectory, keep_for_budget
from .unstructured import REGROW_IMPORTANCES, REGROW_INITS


def _fractions(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}"
                                         ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def add_arguments(group: Any) -> None:
    """Add this strategy's own options to an argparse argument group."""
    group.add_argument("--regrowth-form", choices=("unstructured", "structured"),
                       default="unstructured",
                       help="weights (sparse storage, default) or channels (nested bundle)")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--budget-bytes", type=int, default=None,
                        help="hard budget: bytes on disk of the pruned network")
    budget.add_argument("--budget-macs", type=int, default=None,
                        help="hard budget: MACs per image of the pruned network")
    budget.add_argument("--budget-macs-ratio", type=float, default=None,
                        help="hard budget: fraction of the unpruned network's MACs")
    group.add_argument("--regrowth-sparsity", type=float, default=0.99,
                       help="unstructured, without a budget: fraction of weights pruned "
                            "(default 0.99)")
    group.add_argument("--regrowth-keep", type=float, default=0.25,
                       help="structured, without a budget: fraction of channels kept "
                            "(default 0.25)")
    group.add_argument("--regrowth-steps", type=int, default=3, help="regrowth steps (3)")
    group.add_argument("--regrowth-final", type=float, default=None,
                       help="fraction kept after the last regrowth step (weights: 0.1, "
                            "channels: 1.0)")
    group.add_argument("--regrowth-levels", type=_fractions, default=None,
                       help="explicit kept fractions of the regrown levels, ascending "
                            "(unstructured: weights; structured: MACs ratio of each level)")
    group.add_argument("--regrowth-importance", choices=REGROW_IMPORTANCES, default="taylor",
                       help="score of a pruned weight/channel: |grad| or |grad x original|")
    group.add_argument("--regrowth-init", choices=REGROW_INITS, default="restore",
                       help="regrown weights: original values, or reinitialised")
    group.add_argument("--regrowth-calib-batches", type=int, default=4,
                       help="batches the regrowth scores are computed on (4)")
    group.add_argument("--regrowth-device", default="cpu",
                       help="torch device for training (cpu, cuda)")


def _budget(args: argparse.Namespace) -> Budget | None:
    if args.budget_bytes is not None:
        return Budget("bytes", args.budget_bytes)
    if args.budget_macs is not None:
        return Budget("macs", args.budget_macs)
    if args.budget_macs_ratio is not None:
        return Budget("macs_ratio", args.budget_macs_ratio)
    return None


def _architecture(args: argparse.Namespace, data: Dataset) -> tuple[str, dict[str, Any]]:
    """``--arch`` with its width, or ``--model`` analysed into a layout (as prune-and-grow)."""
    return resolve_architecture(args, data.input_shape, len(data.class_names))


def _baseline(args: argparse.Namespace, data: Dataset, arch: str, arch_args: dict[str, Any]
              ) -> tuple[nn.Module, float]:
    """Train the dense network (or load ``--weights``), or reuse the one a previous run with
    the same settings left."""
    weights: Path | None = getattr(args, "weights", None)
    if weights is not None and not weights.is_file():
        raise ValueError(f"--weights {weights}: no such file")
    key = {"arch": arch, "arch_args": arch_args, "epochs": args.epochs, "lr": args.lr,
           "batch_size": args.batch_size, "seed": args.seed, "dataset": data.name,
           "train": len(data.train.labels),
           "weights": None if weights is None else [str(weights), weights.stat().st_mtime_ns]}
    path, meta = args.out / "baseline.safetensors", args.out / "baseline.json"
    torch.manual_seed(args.seed)
    model = architectures.build(arch, arch_args)
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        model.load_state_dict(load_file(str(path)))
        return model.to(args.regrowth_device), float(json.loads(meta.read_text())["seconds"])
    if weights is not None:
        _load_baseline(model, weights)
    model.to(args.regrowth_device)
    start = time.perf_counter()
    if args.epochs > 0 and weights is None:
        loop.train(model, data.train, torch.tensor(data.mean), torch.tensor(data.std),
                   loop.TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                    seed=args.seed * 7919 + 1))
    seconds = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(path))
    meta.write_text(json.dumps({"key": key, "seconds": seconds}), encoding="utf-8")
    return model, seconds


def _check(args: argparse.Namespace) -> None:
    """Refuse parameters that cannot work, before any training."""
    for name in ("regrowth_sparsity",):
        v = getattr(args, name)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"--regrowth-sparsity must be in [0, 1), got {v}")
    if not 0.0 < args.regrowth_keep <= 1.0:
        raise ValueError(f"--regrowth-keep must be in (0, 1], got {args.regrowth_keep}")
    if args.regrowth_steps < 1:
        raise ValueError(f"--regrowth-steps must be at least 1, got {args.regrowth_steps}")
    if args.regrowth_final is not None and not 0.0 < args.regrowth_final <= 1.0:
        raise ValueError(f"--regrowth-final must be in (0, 1], got {args.regrowth_final}")
    levels = args.regrowth_levels
    if levels is not None and (levels != sorted(levels) or not all(0 < v <= 1 for v in levels)):
        raise ValueError("--regrowth-levels must be ascending fractions in (0, 1]")
    if args.regrowth_calib_batches < 1:
        raise ValueError("--regrowth-calib-batches must be at least 1")


def run(args: argparse.Namespace, data: Dataset, rank: int) -> int:
    """Train with this strategy and write the report (and bundle) under ``args.out``."""
    if rank != 0 or loop.world()[1] > 1:
        print("elastiserve train: --strategy regrowth runs in one process (not under "
              "torchrun)", file=sys.stderr)
        return 2
    try:
        _check(args)
        budget = _budget(args)
        if args.regrowth_form == "structured":
            report = _structured(args, data, budget)
        else:
            report = _unstructured(args, data, budget)
    except BudgetError as err:
        print(f"elastiserve train: {err}", file=sys.stderr)
        return 2
    write_outputs(args.out, report)
    for lv in report["levels"]:
        print(f"{lv['name']}: accuracy {lv['accuracy']:.4f}, MACs ratio {lv['macs_ratio']:.4f}, "
              f"{lv['size_bytes']} bytes")
    print(f"report: {args.out / 'report.json'}")
    return 0


def _unstructured(args: argparse.Namespace, data: Dataset, budget: Budget | None
                  ) -> dict[str, Any]:
    start = time.perf_counter()
    arch, arch_args = _architecture(args, data)
    dense, base_seconds = _baseline(args, data, arch, arch_args)
    cfg = SparseConfig(importance=args.regrowth_importance, init=args.regrowth_init,
                       prune_epochs=args.prune_epochs, core_epochs=args.core_epochs,
                       grow_epochs=args.grow_epochs, lr=args.lr, batch_size=args.batch_size,
                       calib_batches=args.regrowth_calib_batches, seed=args.seed)
    traj = SparseTrajectory(dense, data, cfg, args.out / "levels", metadata={
        "architecture": arch, "arch_args": arch_args,
        "input_shape": list(data.input_shape), "class_names": list(data.class_names),
        "normalisation": {"mean": list(data.mean), "std": list(data.std)}})
    extreme = args.regrowth_sparsity if budget is None else traj.sparsity_for(budget, dense)
    keep = 1.0 - extreme
    steps = args.steps_per_level if args.schedule == "iterative" else 1
    prune_to = [1.0 - keep ** ((i + 1) / steps) for i in range(steps)]  # geometric
    prune_to = [min(s, MAX_SPARSITY) for s in prune_to]
    if args.regrowth_levels is not None:
        keeps = [k for k in args.regrowth_levels if k > keep]
    else:
        final = args.regrowth_final if args.regrowth_final is not None else 0.1
        keeps = geometric_keeps(keep, max(final, keep * 1.0001), args.regrowth_steps)
    regrow_to = [1.0 - k for k in keeps]
    schedule = "iterative" if steps > 1 else "one-shot"
    points = traj.run(dense, prune_to, regrow_to, schedule)
    if budget is not None and budget.kind == "bytes":
        extreme_point = [p for p in points if p.phase == "pruned"][-1]
        if extreme_point.size_bytes > budget.value:
            raise BudgetError(f"the pruned network takes {extreme_point.size_bytes} bytes on "
                              f"disk, over the budget of {int(budget.value)} (estimate off)")
    shape = data.input_shape
    full_macs = count_macs(dense, shape)
    dense_point = {"name": "dense", "phase": "dense", "sparsity": 0.0,
                   "accuracy": loop.evaluate(dense, data.test, torch.tensor(data.mean),
                                             torch.tensor(data.std)),
                   "size_bytes": dense_bytes(dense.state_dict()), "macs": full_macs,
                   "params": count_params(dense), "train_seconds": base_seconds}
    pruned = [p for p in points if p.phase == "pruned"]
    levels = [pruned[-1]] + [p for p in points if p.phase == "regrown"]
    return {
        "strategy": "regrowth", "form": "unstructured", "architecture": arch,
        "arch_args": arch_args, "schedule": schedule,
        "budget": None if budget is None else {"kind": budget.kind, "value": budget.value},
        "importance": args.regrowth_importance, "init": args.regrowth_init,
        "train_seconds": time.perf_counter() - start,
        "data": {"dataset": data.name, "train": len(data.train.labels),
                 "test": len(data.test.labels), "input_shape": list(shape)},
        "epochs": {"baseline": args.epochs, "prune": args.prune_epochs,
                   "core": args.core_epochs, "grow": args.grow_epochs},
        "baseline": dense_point,
        "levels": [{"name": f"S{k}-{p.sparsity * 100:.1f}pct-sparse", "macs": p.macs,
                    "macs_ratio": p.macs / full_macs, "params": p.params,
                    "size_bytes": p.size_bytes, "accuracy": p.accuracy,
                    "sparsity": p.sparsity, "artifact": f"levels/{p.name}"}
                   for k, p in enumerate(levels)],
        "trajectory": [dense_point] + [p.as_dict() for p in points],
    }


def _structured(args: argparse.Namespace, data: Dataset, budget: Budget | None
                ) -> dict[str, Any]:
    start = time.perf_counter()
    arch, arch_args = _architecture(args, data)
    shape = data.input_shape
    cfg = StructuredConfig(
        arch=arch, arch_args=arch_args, prune_importance=args.importance,
        regrow_importance=args.regrowth_importance, init=args.regrowth_init,
        prune_epochs=args.prune_epochs, core_epochs=args.core_epochs,
        grow_epochs=args.grow_epochs, lr=args.lr, batch_size=args.batch_size,
        calib_batches=args.regrowth_calib_batches, seed=args.seed, device=args.regrowth_device)
    keep = args.regrowth_keep if budget is None else keep_for_budget(cfg, budget, shape)
    if args.regrowth_levels is not None:
        keeps = [keep_for_budget(cfg, Budget("macs_ratio", r), shape)
                 for r in args.regrowth_levels]
        keeps = [k for k in keeps if k > keep + 1e-9]
    else:
        final = args.regrowth_final if args.regrowth_final is not None else 1.0
        if final <= keep:
            raise ValueError(f"--regrowth-final {final} must exceed the pruned keep ratio "
                             f"{keep:.4f}")
        keeps = geometric_keeps(keep, final, args.regrowth_steps)
    if not keeps:
        raise ValueError("no regrowth level is wider than the pruned network")
    dense, base_seconds = _baseline(args, data, arch, arch_args)
    dense.cpu()
    steps = args.steps_per_level if args.schedule == "iterative" else 1
    traj = StructuredTrajectory(cfg, data)
    traj.prune(dense, iterative(keep, steps) if steps > 1 else [keep])
    for k in keeps:
        traj.regrow(k)
    names = [f"R{i}-{round(r * 100)}pct" for i, r in enumerate(traj.keeps)]
    levels = traj.export(args.out / "bundle", names)
    full_macs = count_macs(dense, shape)
    bundle = load_bundle(args.out / "bundle")
    for i, lv in enumerate(levels):
        lv["macs_ratio"] = lv["macs"] / full_macs
        lv["size_bytes"] = dense_bytes(bundle.state_dict(i))
        lv["train_seconds"] = traj.seconds[i]
        lv["phase"] = "pruned" if i == 0 else "regrown"
    dense_point = {"name": "dense", "phase": "dense", "channel_ratio": 1.0,
                   "accuracy": loop.evaluate(dense, data.test, torch.tensor(data.mean),
                                             torch.tensor(data.std)),
                   "size_bytes": dense_bytes(dense.state_dict()), "macs": full_macs,
                   "macs_ratio": 1.0, "params": count_params(dense),
                   "train_seconds": base_seconds}
    return {
        "strategy": "regrowth", "form": "structured", "architecture": arch,
        "arch_args": arch_args, "schedule": "iterative" if steps > 1 else "one-shot",
        "budget": None if budget is None else {"kind": budget.kind, "value": budget.value},
        "importance": args.regrowth_importance, "init": args.regrowth_init,
        "prune_importance": args.importance,
        "train_seconds": time.perf_counter() - start,
        "data": {"dataset": data.name, "train": len(data.train.labels),
                 "test": len(data.test.labels), "input_shape": list(shape)},
        "epochs": {"baseline": args.epochs, "prune": args.prune_epochs,
                   "core": args.core_epochs, "grow": args.grow_epochs},
        "baseline": dense_point,
        "levels": levels,
        "trajectory": [dense_point, *levels],
    }


def write_outputs(out: Path, report: dict[str, Any]) -> None:
    """``report.json``, ``report.md`` and ``trajectory.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [f"# Regrowth ({report['form']}, {report['schedule']}): {report['architecture']}",
             "", f"Dense baseline accuracy {report['baseline']['accuracy']:.4f}, "
             f"{report['baseline']['size_bytes']} bytes.", "",
             "| point | phase | MACs ratio | bytes on disk | accuracy |", "|---|---|---|---|---|"]
    for p in report["trajectory"]:
        ratio = p["macs"] / report["baseline"]["macs"]
        lines.append(f"| {p['name']} | {p['phase']} | {ratio:.4f} | {p['size_bytes']} | "
                     f"{p['accuracy']:.4f} |")
    lines += ["", "![trajectory](trajectory.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    series: dict[str, list[tuple[float, float]]] = {}
    for p in report["trajectory"][1:]:
        x = p["sparsity"] if "sparsity" in p else 1.0 - p["macs"] / report["baseline"]["macs"]
        series.setdefault(p["phase"], []).append((x, p["accuracy"]))
    xlabel = ("fraction of weights pruned" if report["form"] == "unstructured"
              else "fraction of MACs removed")
    plot_trajectory(out / "trajectory.png", series, report["baseline"]["accuracy"],
                    f"{report['architecture']}: {report['form']} pruning-regrowth", xlabel)
