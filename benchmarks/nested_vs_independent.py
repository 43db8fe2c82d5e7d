"""Nested prune-and-grow levels vs independently pruned models, on real Fashion-MNIST.

Variants (ResNet-20, 4 levels at 25/50/75/100 % channels, each level gets the same number of
fine-tuning epochs ``E`` after pruning):

* baseline: the unpruned model trained ``--baseline-epochs``; every variant starts from it;
* nested: prune-and-grow (core fine-tuned E epochs, each regrown level E epochs, core frozen);
* independent: the baseline pruned one-shot to each level's size, fine-tuned E epochs
  (the 100 % "level" is the baseline fine-tuned E more epochs);
* no regrowth: levels rebuilt by reinserting the pruned channels with their original weights
  around the fine-tuned core, without the regrowth fine-tuning (each as growth would start it,
  ``Pipeline.grown_start``);
* one-shot vs iterative at 1/3 channels kept (~2/3 removed): one step then E epochs, or three
  steps with E/3 epochs after each.

``--distill W`` adds distillation from the baseline (weight W, temperature 4) to EVERY
variant's fine-tuning, nested and independent alike, so the comparison stays one of structure
(nested levels with a frozen core against free-standing pruned models), not of recipe.

``--anchor S`` holds the nested levels' shared weights near the baseline's while they are tuned
(L2-SP, strength S, in place of weight decay). It is part of the nested method, not of the
recipe: only nested levels keep a frozen core that wider levels must build on, so only they pay
for its drift; the independent models are free-standing and keep plain weight decay.
``--anchor-fisher`` weighs that pull by the baseline's diagonal Fisher. Each anchor setting
gets its own nested run in the work directory and the other variants are shared, so settings
compare on one baseline; the JSON lists every finished nested run (``other_nested_runs``).

``--full-loss W`` adds, while the core is tuned and each level but the last grown, a loss
(weight W) on the full network in which every channel not yet tuned keeps the original weight
it will be reinserted with: the shared weights learn to fit those channels.
``--full-loss-levels all`` puts that loss on every wider level, not only the full one. Nested
only, like the anchor, and a nested run of its own.

``--baseline-weights F`` starts every variant from a full model already trained (the
``baseline.safetensors`` of an earlier run with the same ``--baseline-epochs``, seed and data)
instead of training it again; the JSON records the file's SHA-256.

Resumable: every finished variant is cached in ``--work-dir``; rerun the same command to
continue. Writes ``benchmarks/results/nested_vs_independent.json`` and prints tables.

    python benchmarks/nested_vs_independent.py --epochs 5 --baseline-epochs 10
    python benchmarks/nested_vs_independent.py --epochs 0.05 --baseline-epochs 0.05 \
        --subset 2000 --test-subset 500 --out /tmp/tiny.json        # smoke size
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from elastiserve_store.integrity import sha256_file
from elastiserve_store.profile import count_macs
from elastiserve_train import loop
from elastiserve_train.cli import anchor_strengths
from elastiserve_train.data import FASHION_MNIST_DIR, Dataset, load_fashion_mnist
from elastiserve_train.importance import IMPORTANCES, make_importance
from elastiserve_train.pipeline import FULL_LOSS_LEVELS, Pipeline, PipelineConfig
from elastiserve_train.progress import Progress, stage_bar
from elastiserve_train.pruning import ChainPruner
from elastiserve_train.schedules import iterative, nested_ratios, one_shot

ROOT = Path(__file__).resolve().parent


class Cache:
    """JSON file of finished variant results: the benchmark's resume point."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"config": config, "results": {}}
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("config") == config:
                self.data = old
            else:
                print(f"{path}: configuration changed, starting over", file=sys.stderr)

    def get(self, key: str) -> Any:
        return self.data["results"].get(key)

    def put(self, key: str, value: Any) -> Any:
        self.data["results"][key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)
        return value


def _prune_and_tune(pipe: Pipeline, keeps: list[float], epochs_per_step: float, importance: str,
                    salt: int, stage: str) -> dict[str, float]:
    """Prune the baseline through ``keeps``, fine-tuning after each step; accuracy and MACs."""
    model = pipe._baseline_model()
    data = pipe.data
    calib = list(loop.batches(data.train, pipe.mean, pipe.std, pipe.cfg.batch_size, 0,
                              train=True, shard=False, augmentation=False))[:2]
    pruner = ChainPruner(model, torch.zeros(1, *data.input_shape), make_importance(importance),
                         keeps)
    for i in range(len(keeps)):
        pruner.step(calib)
        if epochs_per_step > 0:
            loop.train(model, data.train, pipe.mean, pipe.std,
                       pipe.cfg.train_cfg(epochs_per_step, salt + i, distill=True),
                       teacher=pipe._teacher(), on_step=pipe._on_step(f"{stage} step {i}"))
    return {"acc": loop.evaluate(model, data.test, pipe.mean, pipe.std),
            "macs": count_macs(model, data.input_shape)}


NESTED_ONLY = ("anchor", "anchor_fisher", "full_loss", "full_loss_levels")
"""Settings of the nested method alone: the other variants are cached across them."""


def nested_dir(anchor: float | tuple[float, ...], fisher: bool = False,
               full_loss: float = 0.0, full_loss_levels: str = "full") -> str:
    """The nested pipeline's directory: one per setting of the nested method, so several can be
    compared."""
    name = "nested"
    if anchor != 0.0:
        values = anchor if isinstance(anchor, tuple) else (anchor,)
        name += "-anchor-" + "-".join(f"{a:g}" for a in values) + ("-fisher" if fisher else "")
    if full_loss > 0.0:
        name += f"-full{full_loss:g}" + ("-all" if full_loss_levels == "all" else "")
    return name


def run(args: argparse.Namespace, progress: Progress | None = None) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    data: Dataset = load_fashion_mnist(args.data_path).limit(args.subset, args.test_subset)
    ratios = nested_ratios(4)
    cfg = PipelineConfig(
        arch="resnet20", arch_args={"in_channels": 1, "num_classes": 10, "width_mult": 1.0},
        levels=4, importance=args.importance, schedule="iterative", steps_per_level=1,
        baseline_epochs=args.baseline_epochs, prune_epochs=0.0, core_epochs=args.epochs,
        grow_epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        distill=args.distill, anchor=args.anchor, anchor_fisher=args.anchor_fisher,
        full_loss=args.full_loss, full_loss_levels=args.full_loss_levels,
        baseline_weights=None if args.baseline_weights is None else str(args.baseline_weights))
    # The other variants do not depend on the nested method's own settings: trying another
    # one reuses them.
    shared = {k: v for k, v in json.loads(json.dumps(cfg.__dict__)).items()
              if k not in NESTED_ONLY}
    config = {"pipeline": shared, "subset": args.subset, "test_subset": args.test_subset}
    cache = Cache(args.work_dir / "variants.json", config)
    timings: dict[str, float] = cache.get("timings") or {}

    def timed(key: str, fn: Any) -> Any:
        if (hit := cache.get(key)) is not None:
            return hit
        start = time.perf_counter()
        value = fn()
        timings[key] = round(time.perf_counter() - start, 1)
        cache.put("timings", timings)
        print(f"[{key}] done in {timings[key]} s", file=sys.stderr)
        return cache.put(key, value)

    pipe = Pipeline(cfg, data, args.work_dir / nested_dir(
        cfg.anchor, cfg.anchor_fisher, cfg.full_loss, cfg.full_loss_levels), progress=progress)
    metrics = pipe.run()  # baseline + nested levels, resumable by itself; times every stage
    full_macs = metrics["level_macs"][-1]

    def no_regrow() -> list[float]:
        state = pipe._resume_state("core")
        return [loop.evaluate(pipe.grown_start(state, k), data.test, pipe.mean, pipe.std)
                for k in range(len(ratios))]

    # The one variant built on the nested core: cached per nested run, unlike the others.
    no_regrow_acc = timed(f"no_regrow:{pipe.out.name}", no_regrow)
    independent = []
    for k, r in enumerate(ratios):
        if r >= 1.0:
            independent.append(timed(f"independent_{k}", lambda k=k: {
                "acc": _tuned_baseline(pipe, args, f"independent_{k}"),
                "macs": full_macs}))
        else:
            independent.append(timed(f"independent_{k}", lambda r=r, k=k: _prune_and_tune(
                pipe, one_shot(r), args.epochs, args.importance, 500 + 10 * k,
                f"independent_{k}")))
    keep = 1.0 / 3.0
    oneshot = timed("oneshot_third", lambda: _prune_and_tune(
        pipe, one_shot(keep), args.epochs, args.importance, 700, "one-shot"))
    iter3 = timed("iterative_third", lambda: _prune_and_tune(
        pipe, iterative(keep, 3), args.epochs / 3, args.importance, 800, "iterative"))

    result = {
        "dataset": "fashion-mnist",
        "architecture": "resnet20",
        "importance": args.importance,
        "epochs": args.epochs,
        "baseline_epochs": args.baseline_epochs,
        "seed": args.seed,
        "distill": args.distill,
        "anchor": args.anchor,
        "anchor_fisher": args.anchor_fisher,
        "full_loss": args.full_loss,
        "full_loss_levels": args.full_loss_levels,
        "baseline_weights_sha256": None if args.baseline_weights is None
        else sha256_file(args.baseline_weights),
        "train_subset": args.subset,
        "test_subset": args.test_subset,
        "baseline_acc": metrics["baseline_acc"],
        "levels": [{
            "name": f"L{k}-{round(r * 100)}pct",
            "channel_ratio": r,
            "macs": metrics["level_macs"][k],
            "macs_ratio": metrics["level_macs"][k] / full_macs,
            "nested_acc": metrics["level_acc"][k],
            "independent_acc": independent[k]["acc"],
            "no_regrow_acc": no_regrow_acc[k],
        } for k, r in enumerate(ratios)],
        "one_shot_vs_iterative": {
            "channels_kept": keep,
            "epochs": args.epochs,
            "one_shot_acc": oneshot["acc"],
            "iterative_acc": iter3["acc"],
            "iterative_steps": 3,
            "macs_ratio": oneshot["macs"] / full_macs,
        },
        "nested_stage_seconds": metrics.get("seconds", {}),
        "other_nested_runs": other_nested_runs(args.work_dir, pipe.out),
        "seconds": timings,
    }
    return result


def other_nested_runs(work_dir: Path, this: Path) -> dict[str, Any]:
    """Finished nested runs with other anchor settings in ``work_dir``: the same baseline and
    the same other variants, so their levels compare directly with this run's."""
    runs: dict[str, Any] = {}
    for state_path in sorted(work_dir.glob("nested*/state.json")):
        if state_path.parent == this:
            continue
        state = json.loads(state_path.read_text())
        if "export" in state["done"]:
            runs[state_path.parent.name] = {
                "anchor": state["config"].get("anchor", 0.0),
                "anchor_fisher": state["config"].get("anchor_fisher", False),
                "full_loss": state["config"].get("full_loss", 0.0),
                "full_loss_levels": state["config"].get("full_loss_levels", "full"),
                "level_acc": state["metrics"]["level_acc"]}
    return runs


def _tuned_baseline(pipe: Pipeline, args: argparse.Namespace, stage: str) -> float:
    model = pipe._baseline_model()
    if args.epochs > 0:
        loop.train(model, pipe.data.train, pipe.mean, pipe.std,
                   pipe.cfg.train_cfg(args.epochs, 900, distill=True), teacher=pipe._teacher(),
                   on_step=pipe._on_step(stage))
    acc: float = loop.evaluate(model, pipe.data.test, pipe.mean, pipe.std)
    return acc


def print_tables(result: dict[str, Any]) -> None:
    stages = result.get("nested_stage_seconds", {})
    if stages:
        print("\nwall time per stage (s): " + ", ".join(
            f"{name} {sec:.0f}" for name, sec in {**stages, **result["seconds"]}.items()))
    print(f"\nResNet-20 on Fashion-MNIST, {result['epochs']} fine-tuning epochs per level "
          f"(baseline {result['baseline_epochs']} epochs: acc {result['baseline_acc']:.4f}; "
          f"seed {result.get('seed', 0)})")
    print(f"{'level':<12}{'channels':>9}{'MACs':>8}{'nested':>9}{'independent':>13}"
          f"{'no regrow':>11}")
    for lv in result["levels"]:
        print(f"{lv['name']:<12}{lv['channel_ratio']:>9.2f}{lv['macs_ratio']:>8.3f}"
              f"{lv['nested_acc']:>9.4f}{lv['independent_acc']:>13.4f}{lv['no_regrow_acc']:>11.4f}")
    for name, other in result.get("other_nested_runs", {}).items():
        print(f"{name:<34}" + "".join(f"{acc:>9.4f}" for acc in other["level_acc"]))
    o = result["one_shot_vs_iterative"]
    print(f"\n~2/3 channels removed (keep {o['channels_kept']:.3f}, MACs {o['macs_ratio']:.3f}), "
          f"{o['epochs']} epochs in total")
    print(f"{'schedule':<12}{'accuracy':>9}")
    print(f"{'one-shot':<12}{o['one_shot_acc']:>9.4f}")
    print(f"{'iterative':<12}{o['iterative_acc']:>9.4f}  ({o['iterative_steps']} steps)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=5.0,
                        help="fine-tuning epochs per level, the same for every variant")
    parser.add_argument("--baseline-epochs", type=float, default=10.0)
    parser.add_argument("--subset", type=int, default=None, help="train on N images")
    parser.add_argument("--test-subset", type=int, default=None, help="test on N images")
    parser.add_argument("--importance", choices=IMPORTANCES, default="l2")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--distill", type=float, default=0.0,
                        help="distillation weight from the baseline, for EVERY variant's "
                             "fine-tuning (nested and independent alike)")
    parser.add_argument("--anchor", type=anchor_strengths, default=0.0,
                        help="L2-SP strength holding the nested levels' shared weights near "
                             "the baseline's, one or one per level (nested only: see the "
                             "module docstring)")
    parser.add_argument("--anchor-fisher", action="store_true",
                        help="weigh the anchor by the baseline's diagonal Fisher information")
    parser.add_argument("--full-loss", type=float, default=0.0,
                        help="weight of a full-network loss while the narrower levels are "
                             "tuned (nested only: see the module docstring)")
    parser.add_argument("--full-loss-levels", choices=FULL_LOSS_LEVELS, default="full",
                        help="the full-network loss on the full level only, or on every "
                             "wider level")
    parser.add_argument("--baseline-weights", type=Path, default=None,
                        help="a trained baseline.safetensors to start from instead of "
                             "training the baseline again")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-path", type=Path, default=FASHION_MNIST_DIR)
    parser.add_argument("--work-dir", type=Path,
                        default=ROOT.parent / "runs" / "bench-nested-vs-independent")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (one bar, reset per stage and variant)")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "results" / "nested_vs_independent.json")
    args = parser.parse_args(argv)
    with stage_bar(not args.no_progress) as progress:
        result = run(args, progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
