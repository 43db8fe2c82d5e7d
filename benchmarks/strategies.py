"""One comparison of the training strategies at the same budgets, on real Fashion-MNIST.

Runs ``elastiserve train --strategy S`` for each strategy that is built (a placeholder that
answers "not built yet" is recorded as missing), all with the same data subset, baseline epochs,
fine-tuning epochs, batch size and seed, and reads each run's ``report.json``:

* ``prune-grow`` (seed 1) runs first; its levels' MACs ratios become the budgets of the others;
* ``regrowth`` (seed 2, structured): pruned to prune-grow's smallest MACs ratio
  (``--budget-macs-ratio``), then regrown to each of prune-grow's larger ratios
  (``--regrowth-levels``), so level k of both has (at most) the same MACs;
* ``regrowth-unstructured`` (seed 2, weights): the same MACs-ratio budget for its most pruned
  point (theoretical sparse MACs), regrown to the same fractions of weights;
* ``discovery`` (seed 3): trains from scratch with its gates for ``--epochs`` (as
  ``--discovery-epochs``: the others' baseline budget), then the same core/grow epochs. With
  prune-grow in the run, the discovered network gets prune-grow's smallest MACs ratio as its
  budget (``--budget`` with ``--beta 1``) and the grown levels its other ratios
  (``--level-macs``); ``--discovery-at-own-budget`` lets nu alone place them instead.

Each run is cached in ``--work-dir/<strategy>`` with the command that made it: rerunning the
script skips finished runs. Writes ``benchmarks/results/strategies.json`` (``strategies``: list
of ``{name, levels: [{name, macs_ratio, size_bytes, acc}]}`` plus what was run and how long it
took) and ``strategies.png``, and prints a table.

    python benchmarks/strategies.py                       # the committed run (CPU)
    python benchmarks/strategies.py --quick               # smoke size, a minute or two
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
STRATEGIES = ("prune-grow", "regrowth", "regrowth-unstructured", "discovery")


def _shared(args: argparse.Namespace) -> list[str]:
    return ["--arch", args.arch, "--width-mult", str(args.width_mult),
            "--dataset", args.dataset, "--train-subset", str(args.train_subset),
            "--test-subset", str(args.test_subset), "--epochs", str(args.epochs),
            "--core-epochs", str(args.core_epochs), "--grow-epochs", str(args.grow_epochs),
            "--prune-epochs", "0", "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--seed", str(args.seed), "--schedule", "one-shot",
            "--threads", str(args.threads), "--no-progress"]


def _ratio(r: float) -> str:
    """A MACs ratio as an option value, nudged up by 1e-6 so printing never rounds it below
    the level it came from (which would make the very same network miss the budget)."""
    return f"{r * (1 + 1e-6):.9f}"


def _command(name: str, args: argparse.Namespace, ratios: list[float] | None) -> list[str]:
    strategy = "regrowth" if name.startswith("regrowth") else name
    cmd = ["train", "--strategy", strategy, *_shared(args)]
    if name == "regrowth":
        if ratios is None:
            raise RuntimeError("regrowth needs prune-grow's level MACs ratios")
        cmd += ["--regrowth-form", "structured", "--budget-macs-ratio", _ratio(ratios[0]),
                "--regrowth-levels", ",".join(_ratio(min(r, 1.0 - 1e-6)) for r in ratios[1:])]
    elif name == "regrowth-unstructured":
        if ratios is None:
            raise RuntimeError("regrowth needs prune-grow's level MACs ratios")
        cmd += ["--regrowth-form", "unstructured", "--budget-macs-ratio", _ratio(ratios[0]),
                "--regrowth-levels", ",".join(f"{r:.6f}" for r in ratios[1:] if r < 0.999)]
    elif name == "discovery":  # its training from scratch replaces the baseline epochs
        cmd += ["--discovery-epochs", str(args.epochs), *shlex.split(args.discovery_args)]
        if ratios is not None and not args.discovery_at_own_budget:
            inner = [r for r in ratios[1:] if r < 0.999]
            cmd += ["--beta", "1", "--budget", _ratio(ratios[0])]
            if len(inner) == len(ratios) - 2:
                cmd += ["--level-macs", ",".join(f"{r:.6f}" for r in inner)]
    return cmd


def _run(name: str, cmd: list[str], work: Path) -> dict[str, Any] | None:
    """Run one strategy (or reuse its cached run); None when the strategy is not built."""
    out = work / name
    stamp = out / "bench_command.json"
    full = [*cmd, "--out", str(out)]
    if (out / "report.json").is_file() and stamp.is_file() and \
            json.loads(stamp.read_text()).get("command") == full:
        cached: dict[str, Any] = json.loads(stamp.read_text())
        print(f"{name}: cached run in {out}", file=sys.stderr)
        return cached
    started = out / "bench_started.json"
    resumable = started.is_file() and json.loads(started.read_text()).get("command") == full
    if (out / "state.json").is_file() and not resumable:
        # A run with other settings: training would refuse to resume it. This folder is the
        # benchmark's own (--work-dir/<strategy>), so it starts over. The same command
        # interrupted resumes: training skips the stages it finished.
        print(f"{name}: {out} holds a run with other settings; starting over", file=sys.stderr)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps({"command": full}), encoding="utf-8")
    print(f"{name}: elastiserve {' '.join(full)}", file=sys.stderr)
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, "-m", "elastiserve.cli", *full], env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    (out / "bench.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        if "not built yet" in proc.stderr:
            print(f"{name}: not built yet, skipped", file=sys.stderr)
            return None
        raise RuntimeError(f"{name} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    record = {"command": full, "wall_seconds": wall}
    stamp.write_text(json.dumps(record), encoding="utf-8")
    return record


def _summary(name: str, out: Path, record: dict[str, Any]) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    levels = sorted(report["levels"], key=lambda lv: lv["macs"])
    train_seconds = report.get("train_seconds")
    return {
        "name": name,
        "wall_seconds": record["wall_seconds"],
        "train_seconds": train_seconds if train_seconds is not None else record["wall_seconds"],
        "train_seconds_source": "report" if train_seconds is not None else "wall clock of the "
                                                                          "CLI run",
        "baseline_acc": (report.get("baseline_acc") if "baseline_acc" in report
                         else (report.get("baseline") or {}).get("accuracy")),
        "command": "elastiserve " + " ".join(record["command"]),
        "levels": [{"name": lv["name"], "macs": lv["macs"], "macs_ratio": lv["macs_ratio"],
                    "params": lv["params"], "size_bytes": lv.get("size_bytes"),
                    "acc": lv["accuracy"]} for lv in levels],
    }


def _plot(path: Path, strategies: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for s in strategies:
        pts = [lv for lv in s["levels"] if lv["acc"] is not None]
        ax1.plot([lv["macs_ratio"] for lv in pts], [lv["acc"] * 100 for lv in pts],
                 marker="o", label=s["name"])
        sized = [lv for lv in pts if lv["size_bytes"]]
        ax2.plot([lv["size_bytes"] / 1e3 for lv in sized], [lv["acc"] * 100 for lv in sized],
                 marker="o", label=s["name"])
    ax1.set_xlabel("MACs ratio (of the unpruned network)")
    ax2.set_xlabel("kB on disk (level stored alone)")
    ax2.set_xscale("log")
    for ax in (ax1, ax2):
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--width-mult", type=float, default=0.5)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--train-subset", type=int, default=4000)
    p.add_argument("--test-subset", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=2.0, help="baseline epochs")
    p.add_argument("--core-epochs", type=float, default=1.0)
    p.add_argument("--grow-epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--discovery-args", default="",
                   help="extra options for discovery, e.g. '--nu 3 --alpha 0.5' (its starting "
                        "strength and layer/unit split; the budget comes from prune-grow)")
    p.add_argument("--discovery-at-own-budget", action="store_true",
                   help="no --budget/--level-macs for discovery: nu alone places its levels")
    p.add_argument("--work-dir", type=Path, default=Path("runs/strategies"))
    p.add_argument("--out", type=Path, default=ROOT / "results" / "strategies.json")
    p.add_argument("--quick", action="store_true",
                   help="smoke size: 1000/500 images, width 0.25, 0.3 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.train_subset, args.test_subset, args.width_mult = 1000, 500, 0.25
        args.epochs = args.core_epochs = args.grow_epochs = 0.3
        if args.out == ROOT / "results" / "strategies.json":
            args.out = Path("/tmp/strategies-quick.json")
        args.work_dir = args.work_dir.with_name(args.work_dir.name + "-quick")
    wanted = [s for s in args.strategies.split(",") if s]
    unknown = set(wanted) - set(STRATEGIES)
    if unknown:
        p.error(f"unknown strategies {sorted(unknown)}; choose from {', '.join(STRATEGIES)}")
    if "prune-grow" not in wanted and any(s.startswith("regrowth") for s in wanted):
        p.error("regrowth takes its budgets from prune-grow: include prune-grow")
    ratios: list[float] | None = None
    results: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in [s for s in STRATEGIES if s in wanted]:
        record = _run(name, _command(name, args, ratios), args.work_dir)
        if record is None:
            missing.append(name)
            continue
        summary = _summary(name, args.work_dir / name, record)
        results.append(summary)
        if name == "prune-grow":
            ratios = [lv["macs_ratio"] for lv in summary["levels"]]
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False, cwd=ROOT).stdout.strip()
    doc = {"benchmark": "strategies", "config": config, "git_head": head,
           "note": "each run used the working tree at the time it ran (see each run's "
                   "command); cached runs are reused. Times are wall seconds on a shared CPU "
                   "(other jobs running; see load_average), comparable only roughly",
           "load_average": os.getloadavg(), "cpus": os.cpu_count(), "same_budget": {
        "data": f"{args.dataset}: {args.train_subset} training / {args.test_subset} test images",
        "epochs": f"baseline {args.epochs}, core/pruned {args.core_epochs}, each grown "
                  f"level {args.grow_epochs}",
        "levels": "regrowth levels at prune-grow's MACs ratios (budget-macs-ratio / "
                  "regrowth-levels); discovery " + (
                      "at its own (nu alone)" if args.discovery_at_own_budget else
                      "at the same ratios (--budget with --beta 1, --level-macs)")},
        "missing": missing, "strategies": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    _plot(args.out.with_suffix(".png"), results,
          f"{args.arch} x{args.width_mult} on {args.dataset} ({args.train_subset} images)")
    print(f"{'strategy':24} {'level':22} {'MACs ratio':>10} {'kB':>9} {'acc':>7}")
    for s in results:
        for lv in s["levels"]:
            kb = "-" if lv["size_bytes"] is None else f"{lv['size_bytes'] / 1e3:.1f}"
            print(f"{s['name']:24} {lv['name']:22} {lv['macs_ratio']:10.4f} {kb:>9} "
                  f"{lv['acc']:7.4f}")
        print(f"{s['name']:24} train {s['train_seconds']:.0f} s ({s['train_seconds_source']})")
    if missing:
        print(f"not built (skipped): {', '.join(missing)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
