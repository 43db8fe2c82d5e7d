"""Regrowth against pruning under the measurement protocol (issue 20, items 1, 3 and 6).

``regrowth_trajectory.py`` compared a regrown point with the pruned point at the same sparsity,
but the regrown point had been fine-tuned for more epochs (it is reached *through* the extreme
point), and the baseline was under-trained. Here every regrown point gets a control: a pruned
network at the same sparsity that has been fine-tuned for the same total epochs, counted from
the baseline, so the only difference left is regrowth itself.

Per seed (seeds vary initialisation and batch order; the data split is fixed with seed 0):

* baseline: ResNet-20 trained ``--baseline-epochs`` (cosine), and the same network fine-tuned
  ``--check-epochs`` more, to show it has converged (its validation accuracy should not move);
* one-shot: the baseline magnitude-pruned to each of ``--sparsities`` and fine-tuned E epochs;
  from the most extreme point, Taylor regrowth (regrown weights restored to the baseline's
  values) back through ``--regrow-to``, E epochs after every step; control for a regrown
  point with T total epochs: the baseline pruned one-shot to its sparsity and fine-tuned T
  epochs in one cosine run;
* iterative: the sparsities reached one after the other (E epochs each), then the same
  regrowth; control: the iterative point at that sparsity fine-tuned further (one cosine run)
  until its total is the regrown point's.

Every fine-tuning run is SGD with a cosine schedule from ``--ft-lr`` to 0 over that run, with
the masks held (pruned weights stay exactly zero). Only the validation split is looked at while
running; the test set is read once per reported point, after its last fine-tuning.

Resumable: every finished (seed, point) is cached, with its weights and masks, in
``--work-dir``. Writes ``benchmarks/results/regrowth_protocol.json`` and ``.png``, prints a
table.

    python benchmarks/regrowth_protocol.py --threads 1          # the committed run (CPU)
    python benchmarks/regrowth_protocol.py --threads 1 --ft-epochs 3 \
        --work-dir runs/regrowth-protocol/e3 \
        --out benchmarks/results/regrowth_protocol-e3.json      # sensitivity: E = 3
    python benchmarks/regrowth_protocol.py --quick              # smoke size, < 1 min
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from regrowth_trajectory import Cache, _arch_args, _floats
from safetensors.torch import load_file, save_file
from torch import nn

from elastiserve_store import architectures
from elastiserve_train import loop
from elastiserve_train.data import Dataset, ImageSet
from elastiserve_train.protocol import protocol_split, seed_spread
from elastiserve_train.regrowth.sparse_run import SparseConfig, SparseTrajectory
from elastiserve_train.regrowth.unstructured import Masks, float_masks, sparsity_of

ROOT = Path(__file__).resolve().parent
ARCH = "resnet20"
BASELINE = "baseline"
CHECK = "baseline+check"

# --------------------------------------------------------------------------- the plan (pure)


@dataclass(frozen=True)
class Step:
    """One point of a trajectory: how it is made from its parent, and its epoch bookkeeping."""

    key: str
    trajectory: str
    phase: str
    """``pruned`` (the trajectory's own point), ``regrown``, or ``control`` (pruned, fine-tuned
    to the total epochs of the regrown point at the same sparsity)."""
    op: str
    """``prune`` (magnitude, from the parent's weights), ``regrow`` (Taylor, restore) or
    ``tune`` (masks unchanged)."""
    sparsity: float
    parent: str
    epochs: float
    """Fine-tuning of this step alone (one cosine run)."""
    total_epochs: float
    """Fine-tuning epochs from the baseline to this point."""


def _name(phase: str, sparsity: float) -> str:
    return f"{phase}-{sparsity * 100:g}"


def plan(schedule: str, prune_to: Sequence[float], regrow_to: Sequence[float],
         ft_epochs: float) -> list[Step]:
    """The points of one trajectory, parents first, each regrown point with its control.

    Raises ``ValueError`` for sparsities a fair comparison cannot be built from.
    """
    if schedule not in ("one-shot", "iterative"):
        raise ValueError(f"unknown schedule {schedule!r}; choose one-shot or iterative")
    if not prune_to or list(prune_to) != sorted(set(prune_to)):
        raise ValueError("pruning sparsities must be given once each, ascending")
    if list(regrow_to) != sorted(set(regrow_to), reverse=True) or (
            regrow_to and regrow_to[0] >= prune_to[-1]):
        raise ValueError("regrowth sparsities must descend from below the most extreme pruned "
                         "sparsity")
    if schedule == "iterative" and not set(regrow_to) <= set(prune_to):
        raise ValueError("iterative: every regrowth sparsity needs a pruned point at the same "
                         "sparsity to compare with")
    if ft_epochs <= 0:
        raise ValueError("fine-tuning epochs must be > 0")
    steps: list[Step] = []
    total = 0.0
    parent = BASELINE
    for s in prune_to:
        key = f"{schedule}/{_name('pruned', s)}"
        if schedule == "one-shot":
            steps.append(Step(key, schedule, "pruned", "prune", s, BASELINE, ft_epochs,
                              ft_epochs))
        else:
            total += ft_epochs
            steps.append(Step(key, schedule, "pruned", "prune", s, parent, ft_epochs, total))
            parent = key
    total = steps[-1].total_epochs
    parent = steps[-1].key
    by_key = {st.key: st for st in steps}
    for s in regrow_to:
        total += ft_epochs
        key = f"{schedule}/{_name('regrown', s)}"
        steps.append(Step(key, schedule, "regrown", "regrow", s, parent, ft_epochs, total))
        parent = key
        control = f"{schedule}/{_name('control', s)}"
        if schedule == "one-shot":
            steps.append(Step(control, schedule, "control", "prune", s, BASELINE, total, total))
        else:
            own = by_key[f"{schedule}/{_name('pruned', s)}"]
            steps.append(Step(control, schedule, "control", "tune", s, own.key,
                              total - own.total_epochs, total))
    return steps


def pairs(steps: Sequence[Step]) -> list[tuple[Step, Step]]:
    """(regrown, control) for every regrown point; checks that their budgets are equal."""
    by_key = {st.key: st for st in steps}
    out = []
    for st in steps:
        if st.phase == "regrown":
            ctl = by_key[f"{st.trajectory}/{_name('control', st.sparsity)}"]
            if (ctl.sparsity, ctl.total_epochs) != (st.sparsity, st.total_epochs):
                raise AssertionError(f"{ctl.key} is not at {st.key}'s sparsity and epochs")
            out.append((st, ctl))
    return out


def summarise(rows: Sequence[dict[str, Any]], steps: Sequence[Step]) -> dict[str, Any]:
    """Across seeds: every point's accuracies, and regrown minus its control per seed.

    ``rows`` carry ``seed``, ``key``, ``val_accuracy`` and ``test_accuracy``; a pair is
    compared only over the seeds that have both of its points.
    """
    by = {(r["seed"], r["key"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    points: dict[str, Any] = {}
    for key in [BASELINE, CHECK, *(st.key for st in steps)]:
        have = [by[(s, key)] for s in seeds if (s, key) in by]
        if have:
            points[key] = {"val": seed_spread([r["val_accuracy"] for r in have]),
                           "test": seed_spread([r["test_accuracy"] for r in have]),
                           "sparsity": have[0]["sparsity"],
                           "total_epochs": have[0]["total_epochs"]}
    comparisons = []
    for reg, ctl in pairs(steps):
        both = [s for s in seeds if (s, reg.key) in by and (s, ctl.key) in by]
        if not both:
            continue
        entry: dict[str, Any] = {"trajectory": reg.trajectory, "sparsity": reg.sparsity,
                                 "total_epochs": reg.total_epochs, "seeds": both}
        for split in ("val", "test"):
            r = [by[(s, reg.key)][f"{split}_accuracy"] for s in both]
            c = [by[(s, ctl.key)][f"{split}_accuracy"] for s in both]
            d = [a - b for a, b in zip(r, c, strict=True)]
            entry[split] = {"regrown": seed_spread(r), "pruned_equal_epochs": seed_spread(c),
                            "difference": {**seed_spread(d), "per_seed": d}}
        comparisons.append(entry)
    return {"points": points, "regrown_vs_pruned": comparisons}


# --------------------------------------------------------------------------- running


class Runner:
    """Makes each point of one seed from its parent's cached weights and masks."""

    def __init__(self, seed: int, data: Dataset, val: ImageSet, args: argparse.Namespace,
                 cache: Cache) -> None:
        self.seed, self.data, self.val, self.args, self.cache = seed, data, val, args, cache
        self.mean, self.std = torch.tensor(data.mean), torch.tensor(data.std)
        self.dir: Path = args.work_dir / f"seed{seed}"
        torch.manual_seed(seed)
        self.template = architectures.build(ARCH, _arch_args(data, args.width_mult))
        self.states: dict[str, tuple[dict[str, torch.Tensor], Masks]] = {}
        self.traj: SparseTrajectory | None = None

    def _path(self, key: str) -> Path:
        return self.dir / (key.replace("/", "_") + ".safetensors")

    def _save(self, key: str, model: nn.Module, masks: Masks) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        tensors = {**state, **{f"mask::{n}": m.to(torch.uint8) for n, m in masks.items()}}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self._path(key).with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(self._path(key))
        self.states[key] = (state, masks)

    def _load(self, key: str) -> tuple[nn.Module, Masks]:
        if key not in self.states:
            tensors = load_file(str(self._path(key)))
            masks = {k[6:]: v.bool() for k, v in tensors.items() if k.startswith("mask::")}
            self.states[key] = ({k: v for k, v in tensors.items()
                                 if not k.startswith("mask::")}, masks)
        state, masks = self.states[key]
        model = copy.deepcopy(self.template)
        model.load_state_dict(state)
        return model, dict(masks)

    def _train(self, model: nn.Module, epochs: float, lr: float, salt: int,
               masks: Masks | None) -> float:
        start = time.perf_counter()
        loop.train(model, self.data.train, self.mean, self.std,
                   loop.TrainConfig(epochs=epochs, lr=lr, batch_size=self.args.batch_size,
                                    seed=self.seed * 7919 + salt),
                   masks=float_masks(masks) if masks else None)
        return time.perf_counter() - start

    def _record(self, key: str, model: nn.Module, masks: Masks, extra: dict[str, Any],
                seconds: float) -> dict[str, Any]:
        """Validation accuracy, then the one read of the test set for this point."""
        n = len(self.data.train.labels)
        row = {"seed": self.seed, "key": key, **extra,
               "sparsity": sparsity_of(masks) if masks else 0.0,
               "examples_seen": round(extra["total_epochs"] * n),
               "val_accuracy": loop.evaluate(model, self.val, self.mean, self.std),
               "test_accuracy": loop.evaluate(model, self.data.test, self.mean, self.std),
               "train_seconds": seconds, "load_average": list(os.getloadavg())}
        self._save(key, model, masks)
        self.cache.put(f"{self.seed}/{key}", row)
        print(f"  [{time.strftime('%H:%M:%S')}] seed {self.seed} {key:26} sparsity "
              f"{row['sparsity']:.4f} epochs {extra['total_epochs']:g} val "
              f"{row['val_accuracy']:.4f} test {row['test_accuracy']:.4f} "
              f"({seconds:.0f} s)", file=sys.stderr, flush=True)
        return row

    def baseline(self) -> None:
        a = self.args
        if self.cache.get(f"{self.seed}/{BASELINE}") is None:
            model = copy.deepcopy(self.template)
            took = self._train(model, a.baseline_epochs, a.lr, 1, None)
            self._record(BASELINE, model, {}, {"phase": "dense", "trajectory": "-",
                                               "total_epochs": 0.0,
                                               "baseline_epochs": a.baseline_epochs}, took)
        if self.cache.get(f"{self.seed}/{CHECK}") is None:
            model, _ = self._load(BASELINE)
            took = self._train(model, a.check_epochs, a.ft_lr, 2, None)
            self._record(CHECK, model, {}, {"phase": "dense", "trajectory": "-",
                                            "total_epochs": a.check_epochs,
                                            "baseline_epochs": a.baseline_epochs}, took)

    def step(self, st: Step) -> None:
        if self.cache.get(f"{self.seed}/{st.key}") is not None:
            return
        a = self.args
        model, masks = self._load(st.parent)
        if self.traj is None:
            dense, _ = self._load(BASELINE)
            cfg = SparseConfig(importance="taylor", init="restore", prune_epochs=0.0,
                               core_epochs=0.0, grow_epochs=0.0, lr=a.ft_lr,
                               batch_size=a.batch_size, calib_batches=a.calib_batches,
                               seed=self.seed)
            self.traj = SparseTrajectory(dense, self.data, cfg, self.dir / "unused")
        if st.op == "prune":
            masks, _ = self.traj.prune(model, st.sparsity, 0.0)
        elif st.op == "regrow":
            masks, _ = self.traj.regrow(model, masks, st.sparsity)
        salt = 500 + zlib.crc32(st.key.encode()) % 100_000  # same on every resume
        took = self._train(model, st.epochs, a.ft_lr, salt, masks)
        extra = {k: v for k, v in asdict(st).items() if k not in ("key", "sparsity")}
        extra["target_sparsity"] = st.sparsity
        self._record(st.key, model, masks, extra, took)


# --------------------------------------------------------------------------- report


def protocol(args: argparse.Namespace, sizes: dict[str, int], argv: Sequence[str]
             ) -> dict[str, Any]:
    """What the numbers were measured under (issue 20, items 1 and 6)."""
    n = sizes["train"]
    return {
        "splits": {**sizes, "pool": sizes["train"] + sizes["validation"],
                   "pool_seed": 0,
                   "validation_carved_from": "training pool (Dataset.with_validation, seed 0)",
                   "test_note": "the full Fashion-MNIST test set" if sizes["test"] == 10000
                   else "a test subset (smoke run)"},
        "seeds": list(args.seeds),
        "seed_varies": "initialisation and batch order (the data split is fixed)",
        "budgets": {
            "baseline_epochs": args.baseline_epochs,
            "baseline_examples_seen": round(args.baseline_epochs * n),
            "convergence_check_epochs": args.check_epochs,
            "finetune_epochs_per_step": args.ft_epochs,
            "total_epochs": "counted from the baseline; equal for each regrown point and its "
                            "control (see each point's total_epochs and examples_seen)",
            "batch_size": args.batch_size, "lr_baseline": args.lr, "lr_finetune": args.ft_lr,
            "schedule": "SGD momentum 0.9, weight decay 5e-4, cosine to 0 within every "
                        "fine-tuning run (one run per step; a control's extra epochs are "
                        "one run)",
            "regrowth_calibration": f"{args.calib_batches} training batches of "
                                    f"{args.batch_size} (forward/backward, no update) per "
                                    "regrowth step",
        },
        "method": {"form": "unstructured (weight-level), global magnitude pruning of every "
                           "conv/linear weight",
                   "regrowth": "Taylor score |dL/dw * w_baseline|, regrown weights restored to "
                               "the baseline's values",
                   "sparsities": list(args.sparsities), "regrow_to": list(args.regrow_to)},
        "selection": "nothing was chosen on the test set: every point reports validation "
                     "accuracy; the test set is read once per reported point, after its last "
                     "fine-tuning",
        "reduction": f"{ARCH} at width_mult {args.width_mult}, Fashion-MNIST 28 px, "
                     f"{sizes['train']} training / {sizes['validation']} validation images "
                     f"from a {sizes['train'] + sizes['validation']}-image pool, "
                     f"{sizes['test']} test images, {args.baseline_epochs:g} baseline epochs, "
                     f"{args.ft_epochs:g} fine-tuning epoch(s) per step",
        "architecture": {"name": ARCH, "width_mult": args.width_mult,
                         "note": "reduced width (the paper-size network is width 1)"},
        "commands": ["python benchmarks/regrowth_protocol.py " + " ".join(argv)],
    }


def _plot(path: Path, doc: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def tx(x: float) -> float:
        return -math.log10(max(1e-4, 1.0 - x))

    points = doc["summary"]["points"]
    trajectories = [t for t in ("one-shot", "iterative")
                    if any(k.startswith(t + "/") for k in points)]
    fig, axes = plt.subplots(1, len(trajectories), figsize=(6 * len(trajectories), 4.5),
                             squeeze=False)
    for ax, traj in zip(axes[0], trajectories, strict=True):
        for phase, style, label in (("pruned", "o-", "pruned (trajectory, E epochs/step)"),
                                    ("control", "^-", "pruned, equal total epochs"),
                                    ("regrown", "s--", "regrown")):
            pts = sorted(((v["sparsity"], v) for k, v in points.items()
                          if k.startswith(f"{traj}/{phase}-")), key=lambda sv: sv[0])
            if phase == "regrown" and pts:  # drawn from the extreme point regrowth starts at
                start = max(((v["sparsity"], v) for k, v in points.items()
                             if k.startswith(f"{traj}/pruned-")), key=lambda sv: sv[0])
                pts.append(start)
            if pts:
                ax.errorbar([tx(s) for s, _ in pts], [v["test"]["mean"] * 100 for _, v in pts],
                            yerr=[v["test"]["std"] * 100 for _, v in pts], fmt=style,
                            capsize=3, label=label)
            if phase == "control":  # the equal budget each pair was compared at
                for sp, v in pts:
                    ax.annotate(f"{v['total_epochs']:g} ep", (tx(sp), v["test"]["mean"] * 100),
                                textcoords="offset points", xytext=(5, 5), fontsize=7)
        if BASELINE in points:
            base = points[BASELINE]["test"]
            ax.axhline(base["mean"] * 100, color="grey", linestyle=":", label="dense baseline")
            ax.axhspan((base["mean"] - base["std"]) * 100, (base["mean"] + base["std"]) * 100,
                       color="grey", alpha=0.15)
        ticks = sorted({*doc["protocol"]["method"]["sparsities"]})
        ax.set_xticks([tx(t) for t in ticks], [f"{t * 100:g}%" for t in ticks])
        ax.set_xlabel("weights pruned (zero)")
        ax.set_ylabel("test top-1 accuracy (%), mean ± std over seeds")
        ax.set_title(f"{ARCH} x{doc['protocol']['architecture']['width_mult']:g}, "
                     f"{doc['protocol']['budgets']['finetune_epochs_per_step']:g} epoch(s) "
                     f"per step: {traj}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(s: dict[str, Any]) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f}"


def print_table(doc: dict[str, Any]) -> None:
    pts = doc["summary"]["points"]
    print(f"{'point':28} {'sparsity':>8} {'epochs':>6} {'val acc':>17} {'test acc':>17}")
    for key, v in pts.items():
        print(f"{key:28} {v['sparsity']:8.4f} {v['total_epochs']:6g} {_fmt(v['val']):>17} "
              f"{_fmt(v['test']):>17}")
    print()
    print(f"{'trajectory':10} {'sparsity':>8} {'epochs':>6} {'regrown test':>17} "
          f"{'pruned (eq. ep.)':>17} {'regrown - pruned':>18} {'val diff':>18}")
    for c in doc["summary"]["regrown_vs_pruned"]:
        t = c["test"]
        print(f"{c['trajectory']:10} {c['sparsity']:8.4f} {c['total_epochs']:6g} "
              f"{_fmt(t['regrown']):>17} {_fmt(t['pruned_equal_epochs']):>17} "
              f"{t['difference']['mean']:+.4f} ± {t['difference']['std']:.4f} "
              f"{c['val']['difference']['mean']:+.4f} ± {c['val']['difference']['std']:.4f}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-path", type=Path, default=None)
    p.add_argument("--pool", type=int, default=7000, help="training images (seed 0)")
    p.add_argument("--validation", type=int, default=1500, help="of the pool, held out")
    p.add_argument("--test-subset", type=int, default=None, help="default: all 10,000")
    p.add_argument("--width-mult", type=float, default=0.5)
    p.add_argument("--baseline-epochs", type=float, default=12.0)
    p.add_argument("--check-epochs", type=float, default=2.0,
                   help="the baseline fine-tuned this much more, to show convergence")
    p.add_argument("--ft-epochs", type=float, default=1.0,
                   help="fine-tuning after every pruning and every regrowth step (E)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--sparsities", type=_floats, default=[0.9, 0.95, 0.98])
    p.add_argument("--regrow-to", type=_floats, default=[0.95, 0.9])
    p.add_argument("--schedules", default="one-shot,iterative")
    p.add_argument("--seeds", type=lambda t: [int(v) for v in t.split(",")], default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", type=Path, default=Path("runs/regrowth-protocol"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "regrowth_protocol.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke size: width 0.25, 700-image pool, 500 test, fractions of epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.width_mult, args.pool, args.validation, args.test_subset = 0.25, 700, 200, 500
        args.baseline_epochs, args.check_epochs, args.ft_epochs = 0.3, 0.1, 0.1
        args.seeds, args.calib_batches = [0, 1], 2
        if args.out == ROOT / "results" / "regrowth_protocol.json":
            args.out = Path("/tmp/regrowth_protocol-quick.json")
        args.work_dir = args.work_dir.with_name(args.work_dir.name + "-quick")
    schedules = [s for s in args.schedules.split(",") if s]
    try:
        steps = [st for s in schedules
                 for st in plan(s, args.sparsities, args.regrow_to, args.ft_epochs)]
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    data, val = protocol_split(args.data_path, args.pool, args.validation, args.test_subset)
    sizes = {"train": len(data.train.labels), "validation": len(val.labels),
             "test": len(data.test.labels)}
    proto = protocol(args, sizes, argv)
    # what a cached point depends on (not the list of seeds or sparsities, so a reduced rerun
    # keeps the finished points)
    config = {"splits": proto["splits"], "budgets": proto["budgets"],
              "reduction": proto["reduction"], "form": proto["method"]}
    config["form"] = {k: v for k, v in proto["method"].items()
                      if k not in ("sparsities", "regrow_to")}
    cache = Cache(args.work_dir / "points.json", json.loads(json.dumps(config)))
    start = time.perf_counter()
    for seed in args.seeds:
        runner = Runner(seed, data, val, args, cache)
        runner.baseline()
        for st in steps:
            runner.step(st)
    rows = [r for r in cache.data["results"].values() if r["seed"] in args.seeds]
    doc: dict[str, Any] = {
        "protocol": proto, "steps": [asdict(st) for st in steps],
        "summary": summarise(rows, steps),
        "rows": sorted(rows, key=lambda r: (r["seed"], r["key"])),
        "wall_seconds_this_invocation": time.perf_counter() - start,  # small when cached
        "train_seconds_total": sum(r["train_seconds"] for r in rows),
        "machine": {"platform": platform.platform(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "threads": args.threads,
                    "load_average_at_end": list(os.getloadavg()),
                    "note": "shared, loaded 2-core machine (other studies ran at the same "
                            "time): train_seconds are not comparable"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    _plot(args.out.with_suffix(".png"), doc)
    print_table(doc)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
