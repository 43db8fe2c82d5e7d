"""Prune-and-grow under the measurement protocol (issue 20, item 2), on real Fashion-MNIST.

For each architecture and seed, every variant starts from ONE baseline trained on the training
split (the validation split carved from the training pool never trains anything):

* ``pruned``: the baseline pruned to 70 / 50 / 30 % of its channels (30 / 50 / 70 % pruning)
  with each importance (magnitude ``l2``, ``taylor``, ``hessian``) and each schedule
  (``one-shot``: one step; ``iterative``: ``--iterative-steps`` steps, the budget split evenly
  after them), then fine-tuned;
* ``rebuilt``: the nested levels of prune-and-grow at the same channel ratios (core at 30 %,
  grown to 50 %, 70 %, 100 % with everything below frozen), magnitude importance, in five
  settings: ``paper`` (the method alone: labels only), ``recipe`` (this project's additions:
  distillation 0.5, Fisher-weighted anchor 0.1, full-network loss 1) and the recipe without each
  addition (``no_distill``, ``no_anchor``, ``no_full_loss``), which say which additions matter;
* ``baseline_tuned``: the baseline trained the full level's budget more, the unpruned reference
  at equal budget and the check that the baseline had converged (it should not move beyond the
  seeds' spread).

Equal budgets: a nested level at index ``k`` has been trained ``(k + 1) * E`` epochs after the
baseline (the core ``E``, each grown level ``E`` more), so the pruned model at the same ratio gets
``(k + 1) * E`` epochs too, and the unpruned reference ``4 E``. Every number reported is read once
from the test set at the end of its run; the validation accuracy of the same model sits beside it.

Resumable: each (architecture, seed) keeps its baseline and a JSON of finished variants in
``--work-dir/<arch>/seed<k>/``; rerunning skips what is done, so the two architectures can run as
two processes and ``--report-only`` writes the JSON, plot and tables from whatever is finished.

    python benchmarks/prune_grow_protocol.py --archs resnet20=0.5     # one process per arch
    python benchmarks/prune_grow_protocol.py --archs vgg16_bn=0.125
    python benchmarks/prune_grow_protocol.py --report-only             # JSON, plot, tables
    python benchmarks/prune_grow_protocol.py --quick --out /tmp/q.json # smoke size
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from regrowth_trajectory import Cache
from safetensors.torch import load_file, save_file

from elastiserve_store import architectures
from elastiserve_store.profile import count_macs
from elastiserve_train import loop
from elastiserve_train.data import Dataset, ImageSet
from elastiserve_train.importance import IMPORTANCES, make_importance
from elastiserve_train.pipeline import Pipeline, PipelineConfig
from elastiserve_train.protocol import protocol_split, seed_spread
from elastiserve_train.pruning import ChainPruner
from elastiserve_train.schedules import iterative, one_shot

ROOT = Path(__file__).resolve().parent
RATIOS = (0.3, 0.5, 0.7, 1.0)
"""Channel ratio of each nested level (30 / 50 / 70 % pruning, then the full network)."""
SCHEDULE_NAMES = ("one-shot", "iterative")


@dataclass(frozen=True)
class NestedSetting:
    """One setting of prune-and-grow: the paper's method plus some of the project's additions."""

    distill: float
    anchor: float
    anchor_fisher: bool
    full_loss: float


NESTED: dict[str, NestedSetting] = {
    "paper": NestedSetting(0.0, 0.0, False, 0.0),
    "recipe": NestedSetting(0.5, 0.1, True, 1.0),
    "no_distill": NestedSetting(0.0, 0.1, True, 1.0),
    "no_anchor": NestedSetting(0.5, 0.0, False, 1.0),
    "no_full_loss": NestedSetting(0.5, 0.1, True, 0.0),
}
"""``paper`` is the method as published (no distillation, anchor or full-network loss);
``recipe`` the project's default additions; the ``no_*`` rows drop one addition each."""


def level_budget(ratio: float, epochs: float) -> float:
    """Epochs a nested level at ``ratio`` has been trained after the baseline: the core's and
    one grow stage per level above it; the pruned model at that ratio gets the same."""
    return (RATIOS.index(ratio) + 1) * epochs


def pruning_steps(schedule: str, keep: float, steps: int) -> list[float]:
    """Keep ratio after each pruning step from the full network down to ``keep``."""
    if schedule == "one-shot":
        return one_shot(keep)
    if schedule == "iterative":
        return iterative(keep, steps)
    raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULE_NAMES)}")


class Cell(Cache):
    """One (architecture, seed)'s finished variants (``variants.json`` beside its baseline and
    nested runs), resumable. Unlike :class:`Cache` it refuses a file made with other settings
    instead of starting over: the weights beside it were made with those settings too."""

    def __init__(self, work: Path, config: dict[str, Any]) -> None:
        path = work / "variants.json"
        if path.is_file() and json.loads(path.read_text()).get("config") != config:
            raise SystemExit(f"{path}: made with other settings; use another --work-dir")
        super().__init__(path, config)
        self.dir = work


class Study:
    """The variants of one (architecture, seed) on one split of the data."""

    def __init__(self, arch: str, width: float, seed: int, data: Dataset, validation: ImageSet,
                 args: argparse.Namespace) -> None:
        self.arch, self.width, self.seed, self.args = arch, width, seed, args
        self.data, self.validation = data, validation
        self.mean, self.std = torch.tensor(data.mean), torch.tensor(data.std)
        self.arch_args = {"in_channels": data.input_shape[0],
                          "num_classes": len(data.class_names), "width_mult": width}
        config = {"arch": arch, "width": width, "seed": seed, "train": len(data.train.labels),
                  "validation": len(validation.labels), "test": len(data.test.labels),
                  "baseline_epochs": args.baseline_epochs, "epochs": args.epochs,
                  "iterative_steps": args.iterative_steps, "lr": args.lr,
                  "batch_size": args.batch_size}
        self.cell = Cell(args.work_dir / arch / f"seed{seed}", config)
        self.baseline_path = self.cell.dir / "baseline.safetensors"

    # ------------------------------------------------------------------ helpers

    def _scores(self, model: torch.nn.Module, epochs: float, seconds: float) -> dict[str, Any]:
        """Validation and (once) test accuracy of a finished model, with its budget."""
        return {"val_acc": loop.evaluate(model, self.validation, self.mean, self.std),
                "test_acc": loop.evaluate(model, self.data.test, self.mean, self.std),
                "macs": count_macs(model, self.data.input_shape), "epochs": epochs,
                "examples_seen": round(epochs * len(self.data.train.labels)),
                "seconds": round(seconds, 1)}

    def _train_cfg(self, epochs: float, salt: int) -> loop.TrainConfig:
        return loop.TrainConfig(epochs=epochs, lr=self.args.lr, batch_size=self.args.batch_size,
                                seed=self.seed * 7919 + salt)

    def _timed(self, key: str, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        hit: dict[str, Any] | None = self.cell.get(key)
        if hit is not None:
            return hit
        value = make()
        _log(f"{self.arch} seed {self.seed} {key}: val {value['val_acc']:.4f} "
             f"test {value['test_acc']:.4f} ({value['seconds']:.0f} s)")
        self.cell.put(key, value)
        return value

    def _baseline_model(self) -> torch.nn.Module:
        model: torch.nn.Module = architectures.build(self.arch, self.arch_args)
        model.load_state_dict(load_file(str(self.baseline_path)))
        return model

    # ------------------------------------------------------------------ variants

    def baseline(self) -> dict[str, Any]:
        if self.cell.get("baseline") is not None and not self.baseline_path.is_file():
            self.cell.data["results"].pop("baseline")  # weights lost: train again
        def make() -> dict[str, Any]:
            torch.manual_seed(self.seed)
            model = architectures.build(self.arch, self.arch_args)
            start = time.perf_counter()
            loop.train(model, self.data.train, self.mean, self.std,
                       self._train_cfg(self.args.baseline_epochs, 1))
            self.cell.dir.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      str(self.baseline_path))
            return self._scores(model, self.args.baseline_epochs, time.perf_counter() - start)
        return self._timed("baseline", make)

    def baseline_tuned(self) -> dict[str, Any]:
        epochs = level_budget(1.0, self.args.epochs)
        def make() -> dict[str, Any]:
            model = self._baseline_model()
            start = time.perf_counter()
            loop.train(model, self.data.train, self.mean, self.std, self._train_cfg(epochs, 900))
            return self._scores(model, epochs, time.perf_counter() - start)
        return self._timed("baseline_tuned", make)

    def pruned(self, importance: str, schedule: str, keep: float) -> dict[str, Any]:
        budget = level_budget(keep, self.args.epochs)
        keeps = pruning_steps(schedule, keep, self.args.iterative_steps)
        def make() -> dict[str, Any]:
            model = self._baseline_model()
            calib = list(loop.batches(self.data.train, self.mean, self.std,
                                      self.args.batch_size, self.seed, train=True, shard=False,
                                      augmentation=False))[:2]
            pruner = ChainPruner(model, torch.zeros(1, *self.data.input_shape),
                                 make_importance(importance), keeps)
            start = time.perf_counter()
            for i in range(len(keeps)):
                pruner.step(calib)
                loop.train(model, self.data.train, self.mean, self.std,
                           self._train_cfg(budget / len(keeps), 500 + 10 * i))
            return self._scores(model, budget, time.perf_counter() - start)
        return self._timed(f"pruned/{importance}/{schedule}/{keep}", make)

    def rebuilt(self, name: str) -> dict[str, Any]:
        """A nested run: the pipeline sees the validation split as its "test" split, so what
        it reports along the way is validation accuracy; the test set is read at the end."""
        setting = NESTED[name]
        cfg = PipelineConfig(
            arch=self.arch, arch_args=self.arch_args, levels=len(RATIOS), level_ratios=RATIOS,
            importance="l2", schedule="iterative", steps_per_level=1, baseline_epochs=0.0,
            prune_epochs=0.0, core_epochs=self.args.epochs, grow_epochs=self.args.epochs,
            lr=self.args.lr, batch_size=self.args.batch_size, seed=self.seed,
            distill=setting.distill, anchor=setting.anchor, anchor_fisher=setting.anchor_fisher,
            full_loss=setting.full_loss, baseline_weights=str(self.baseline_path))
        on_validation = Dataset(self.data.name, self.data.train, self.validation,
                                self.data.class_names, self.data.mean, self.data.std)
        def make() -> dict[str, Any]:
            pipe = Pipeline(cfg, on_validation, self.cell.dir / f"nested-{name}")
            start = time.perf_counter()
            pipe.run()
            seconds = time.perf_counter() - start
            models = pipe.final_state().nested_models()
            levels = [self._scores(m, level_budget(r, self.args.epochs), 0.0)
                      for m, r in zip(models, RATIOS, strict=True)]
            return {"levels": levels, "val_acc": levels[0]["val_acc"],
                    "test_acc": levels[0]["test_acc"], "seconds": round(seconds, 1)}
        return self._timed(f"rebuilt/{name}", make)

    def run(self) -> None:
        self.baseline()
        for name in self.args.nested:
            self.rebuilt(name)
        self.baseline_tuned()
        for keep in RATIOS[:-1]:
            for importance in self.args.importances:
                for schedule in self.args.schedules:
                    self.pruned(importance, schedule, keep)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- report

def aggregate(args: argparse.Namespace) -> dict[str, Any]:
    """Every finished cell under ``--work-dir``, as seeds' mean ± std per variant and ratio."""
    archs: dict[str, Any] = {}
    for path in sorted(args.work_dir.glob("*/seed*/variants.json")):
        cell = json.loads(path.read_text())
        arch = cell["config"]["arch"]
        entry = archs.setdefault(arch, {"config": {k: v for k, v in cell["config"].items()
                                                   if k != "seed"},
                                        "seeds": [], "runs": {}})
        entry["seeds"].append(cell["config"]["seed"])
        for key, value in cell["results"].items():
            entry["runs"].setdefault(key, {})[str(cell["config"]["seed"])] = value
    return {arch: summarise(entry) for arch, entry in archs.items()}


def summarise(entry: dict[str, Any]) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = entry["runs"]
    seeds = sorted(entry["seeds"])
    full_macs = [r["macs"] for r in runs.get("baseline", {}).values()]

    def stats(per_seed: dict[str, Any], field: str) -> dict[str, Any]:
        return seed_spread([float(v[field]) for v in per_seed.values()])

    def point(per_seed: dict[str, Any]) -> dict[str, Any]:
        return {"test_acc": stats(per_seed, "test_acc"), "val_acc": stats(per_seed, "val_acc"),
                "macs_ratio": statistics.fmean(v["macs"] for v in per_seed.values())
                / statistics.fmean(full_macs) if full_macs else None,
                "epochs": next(iter(per_seed.values()))["epochs"],
                "examples_seen": next(iter(per_seed.values()))["examples_seen"],
                "seeds": sorted(int(s) for s in per_seed)}

    out: dict[str, Any] = {"config": entry["config"], "seeds": seeds}
    for key in ("baseline", "baseline_tuned"):
        if key in runs:
            out[key] = point(runs[key])
    pruned: dict[str, Any] = {}
    for key, per_seed in runs.items():
        if key.startswith("pruned/"):
            _, importance, schedule, keep = key.split("/")
            pruned.setdefault(f"{importance}/{schedule}", {})[keep] = point(per_seed)
    out["pruned"] = pruned
    rebuilt: dict[str, Any] = {}
    for key, per_seed in runs.items():
        if key.startswith("rebuilt/"):
            name = key.split("/", 1)[1]
            rebuilt[name] = {str(r): point({s: v["levels"][k] for s, v in per_seed.items()})
                             for k, r in enumerate(RATIOS)}
    out["rebuilt"] = rebuilt
    out["ablation"] = ablation(runs)
    return out


def ablation(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each variant's test accuracy minus the recipe's, per level, paired by seed: what each
    addition is worth (positive: better without it / than the recipe)."""
    recipe = runs.get("rebuilt/recipe", {})
    table: dict[str, Any] = {}
    for name in NESTED:
        if name == "recipe" or f"rebuilt/{name}" not in runs:
            continue
        other = runs[f"rebuilt/{name}"]
        common = sorted(set(recipe) & set(other))
        if not common:
            continue
        table[name] = {str(r): seed_spread([other[s]["levels"][k]["test_acc"]
                                         - recipe[s]["levels"][k]["test_acc"] for s in common])
                       for k, r in enumerate(RATIOS)}
    return table


def _pm(stat: dict[str, Any] | None) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.4f}±{stat['std']:.4f}"


def print_tables(result: dict[str, Any]) -> None:
    for arch, res in result["architectures"].items():
        cfg = res["config"]
        print(f"\n{arch} (width {cfg['width']}), seeds {res['seeds']}: test accuracy, mean ± std "
              f"over seeds; baseline {_pm(res.get('baseline', {}).get('test_acc'))}, "
              f"+{cfg['epochs'] * len(RATIOS):g} epochs "
              f"{_pm(res.get('baseline_tuned', {}).get('test_acc'))}")
        rows = [(f"pruned {k}", v) for k, v in sorted(res["pruned"].items())]
        rows += [(f"rebuilt {k}", v) for k, v in res["rebuilt"].items()]
        print(f"{'variant':<28}" + "".join(f"{f'{round((1 - r) * 100)}% pruned':>17}"
                                           for r in RATIOS))
        for name, levels in rows:
            print(f"{name:<28}" + "".join(
                f"{_pm(levels.get(str(r), {}).get('test_acc')):>17}" for r in RATIOS))
        if res["ablation"]:
            print("ablation: variant - recipe (test accuracy, paired by seed)")
            for name, levels in res["ablation"].items():
                print(f"{name:<28}" + "".join(
                    f"{levels[str(r)]['mean']:>+10.4f}±{levels[str(r)]['std']:.4f}"
                    for r in RATIOS))


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy against MACs per architecture, every variant with its seeds' spread."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = result["architectures"]
    fig, axes = plt.subplots(1, max(1, len(archs)), figsize=(6.5 * max(1, len(archs)), 4.8),
                             squeeze=False)
    for ax, (arch, res) in zip(axes[0], archs.items(), strict=False):
        for name, levels in sorted(res["pruned"].items()):
            _series(ax, levels, f"pruned {name}", linestyle=":", alpha=0.7)
        for name, levels in res["rebuilt"].items():
            bold = name in ("paper", "recipe")
            _series(ax, levels, f"rebuilt {name}", linestyle="-", linewidth=2 if bold else 1,
                    alpha=1.0 if bold else 0.6)
        if "baseline_tuned" in res:
            b = res["baseline_tuned"]["test_acc"]
            ax.axhline(b["mean"], color="grey", linewidth=0.8, label="unpruned, same budget")
        ax.set_title(f"{arch} width {res['config']['width']} ({len(res['seeds'])} seeds)")
        ax.set_xlabel("MACs / unpruned MACs")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(ax: Any, levels: dict[str, Any], label: str, **style: Any) -> None:
    points = sorted((v["macs_ratio"], v["test_acc"]["mean"], v["test_acc"]["std"])
                    for v in levels.values() if v["macs_ratio"] is not None)
    if points:
        xs, ys, es = zip(*points, strict=True)
        ax.errorbar(xs, ys, yerr=es, capsize=2, label=label, **style)


def report(args: argparse.Namespace, started: float) -> dict[str, Any]:
    result = {
        "benchmark": "prune_grow_protocol",
        "protocol": {
            "dataset": "fashion-mnist (28 px, grey)",
            "split": {"pool": args.pool, "validation": args.validation,
                      "train": args.pool - args.validation,
                      "test": args.test_subset or 10_000, "split_seed": 0,
                      "note": "the same pool and validation split for every seed; seeds vary "
                              "initialisation, batch order and calibration batches"},
            "seeds": args.seeds,
            "budgets": {"baseline_epochs": args.baseline_epochs,
                        "fine_tuning_epochs_per_level": args.epochs,
                        "level_budget_epochs": {str(r): level_budget(r, args.epochs)
                                                for r in RATIOS},
                        "examples_per_epoch": args.pool - args.validation,
                        "rule": "a pruned model at a ratio gets the epochs the nested level at "
                                "that ratio has had since the baseline ((k + 1) x E); the "
                                "unpruned reference gets the full level's"},
            "test_reads": "once per reported number, at the end of its run",
            "reductions": "widths reduced (see each architecture's config), a 7,000-image "
                          "training pool, 1 fine-tuning epoch per level; nothing was tuned "
                          "for this study (the recipe's values are the README's)",
        },
        "nested_settings": {k: vars(v) for k, v in NESTED.items()},
        "architectures": aggregate(args),
        "commands": [shlex.join([sys.executable, *sys.argv])],
        "load_average": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
    }
    return result


def _archs(text: str) -> list[tuple[str, float]]:
    out = []
    for item in text.split(","):
        name, _, width = item.strip().partition("=")
        if name not in architectures.ARCHITECTURES:
            raise argparse.ArgumentTypeError(f"unknown architecture {name!r}")
        try:
            out.append((name, float(width) if width else 1.0))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad width in {item!r}") from None
    return out


def _names(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [p.strip() for p in text.split(",") if p.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return names
    return parse


def _ints(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", type=_archs, default=_archs("resnet20=0.5,vgg16_bn=0.125"),
                        help="NAME=WIDTH,... (default resnet20=0.5,vgg16_bn=0.125)")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    parser.add_argument("--pool", type=int, default=7000, help="training images drawn")
    parser.add_argument("--validation", type=int, default=1500,
                        help="of the pool, held out for validation")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="test images (default: all 10,000)")
    parser.add_argument("--baseline-epochs", type=float, default=12.0)
    parser.add_argument("--epochs", type=float, default=1.0,
                        help="E: fine-tuning epochs per nested stage")
    parser.add_argument("--iterative-steps", type=int, default=3)
    parser.add_argument("--importances", type=_names(IMPORTANCES),
                        default=["l2", "taylor", "hessian"])
    parser.add_argument("--schedules", type=_names(SCHEDULE_NAMES),
                        default=list(SCHEDULE_NAMES))
    parser.add_argument("--nested", type=_names(tuple(NESTED)), default=list(NESTED))
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-path", type=Path, default=None)
    parser.add_argument("--work-dir", type=Path, default=ROOT.parent / "runs" / "pg-protocol")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "prune_grow_protocol.json")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the JSON, plot and tables from the work dir")
    parser.add_argument("--quick", action="store_true", help="smoke size (a minute or two)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pool, args.validation, args.test_subset = 600, 200, 300
        args.baseline_epochs, args.epochs, args.seeds = 0.5, 0.1, args.seeds[:2]
        args.archs = [(name, min(width, 0.25)) for name, width in args.archs]
        if args.work_dir == ROOT.parent / "runs" / "pg-protocol":
            args.work_dir = ROOT.parent / "runs" / "pg-protocol-quick"
    if not 0 < args.validation < args.pool:
        parser.error("--validation must be between 0 and --pool")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    if not args.report_only:
        data, validation = protocol_split(args.data_path, args.pool, args.validation,
                                          args.test_subset)
        for arch, width in args.archs:
            for seed in args.seeds:
                Study(arch, width, seed, data, validation, args).run()
    result = report(args, started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print_tables(result)
    print(f"\nwrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
