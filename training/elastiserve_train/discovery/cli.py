"""``elastiserve train --strategy discovery``: complexity-aware structure discovery (seed 3).

Trains a CIFAR ResNet from scratch with Bernoulli scale variables on units and residual layers
(:mod:`.search`), takes the discovered network as the smallest level and regrows the wider
levels from it with the discovered core frozen (:mod:`.pipeline`). Shares ``--arch``,
``--out``, ``--levels``, ``--core-epochs``, ``--grow-epochs``, ``--lr``, ``--batch-size``,
``--seed`` and the data options with the other strategies; ``--epochs`` is unused here (the
discovery run is the training from scratch: ``--discovery-epochs``).
"""

# ruff: noqa: RUF001, RUF002  (Greek letters: the paper's notation for nu, alpha, beta)

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..data import Dataset
from ..progress import stage_bar
from .params import DiscoveryParameterError, DiscoveryParams


def add_arguments(group: Any) -> None:
    """Add this strategy's own options to an argparse argument group."""
    group.add_argument("--nu", type=float, default=1.0,
                       help="pruning strength ν > 0: weight of the expected-cost penalty")
    group.add_argument("--alpha", type=float, default=0.5,
                       help="layer vs unit pruning α in [0, 1] (1: layers only)")
    group.add_argument("--beta", type=float, default=0.5,
                       help="FLOPs vs parameters β in [0, 1] (1: FLOPs only)")
    group.add_argument("--budget", type=float, default=None,
                       help="the discovered network's cost as a fraction of the full one's "
                            "(β-weighted: with --beta 1, its MACs ratio); ν then adapts to "
                            "meet it and the rest is removed at the end")
    group.add_argument("--level-macs", type=_ratios, default=(),
                       help="comma-separated MACs ratios of the levels between the discovered "
                            "and the full one (default: evenly spaced in pruned channels)")
    group.add_argument("--theta-tol", type=float, default=0.05,
                       help="remove a unit/layer when its θ falls below this")
    group.add_argument("--discovery-epochs", type=float, default=10.0,
                       help="epochs of training from scratch with the gates")
    group.add_argument("--theta-lr", type=float, default=2.0,
                       help="SGD step size of the unit (channel) θ")
    group.add_argument("--layer-theta-lr", type=float, default=0.2,
                       help="SGD step size of the residual-layer θ")
    group.add_argument("--theta-warmup", type=float, default=0.2,
                       help="fraction of the discovery steps before θ starts to move")
    group.add_argument("--theta-init", type=float, default=1.0, help="initial θ")
    group.add_argument("--gate-streams", action="store_true",
                       help="also gate the residual streams' channels (off: hidden channels "
                            "and layers only)")


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.25,0.56, got {text!r}") from None


def params_from(args: argparse.Namespace) -> DiscoveryParams:
    """The validated ν, α, β, θ_tol, budget (raises :class:`DiscoveryParameterError`)."""
    return DiscoveryParams(nu=args.nu, alpha=args.alpha, beta=args.beta,
                           theta_tol=args.theta_tol, budget=args.budget)


def run(args: argparse.Namespace, data: Dataset, rank: int) -> int:
    """Train with structure discovery and write ``bundle/`` and ``report.json`` under
    ``args.out``."""
    from .pipeline import DiscoveryConfig, DiscoveryPipeline
    from .search import SearchConfig

    try:
        params = params_from(args)
    except DiscoveryParameterError as err:
        print(f"elastiserve train: {err}", file=sys.stderr)
        return 2
    if rank != 0:
        print("elastiserve train: --strategy discovery runs in one process; start it without "
              "torchrun", file=sys.stderr)
        return 2
    cfg = DiscoveryConfig(
        arch=args.arch,
        arch_args={"in_channels": data.input_shape[0], "num_classes": len(data.class_names),
                   "width_mult": args.width_mult},
        params=params,
        search=SearchConfig(epochs=args.discovery_epochs, lr=args.lr, theta_lr=args.theta_lr,
                            layer_theta_lr=args.layer_theta_lr,
                            theta_warmup=args.theta_warmup, theta_init=args.theta_init,
                            batch_size=args.batch_size, seed=args.seed,
                            gate_streams=args.gate_streams),
        levels=args.levels, level_macs=args.level_macs, core_epochs=args.core_epochs,
        grow_epochs=args.grow_epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    with stage_bar(not args.no_progress) as progress:  # errors: ValueError, caught by the CLI
        pipeline = DiscoveryPipeline(cfg, data, args.out, progress)
        skipped = [s for s in pipeline.stages if pipeline.done(s)]
        if skipped:
            print(f"resuming: stages already done: {', '.join(skipped)}", file=sys.stderr)
        pipeline.run()
    report = pipeline.report()
    d = report["discovered"]
    print(f"discovered: {d['layers_removed']} layers and {d['units_removed']} units removed; "
          f"predicted MACs {report['predicted']['macs']:.0f} / params "
          f"{report['predicted']['params']:.0f}, measured {report['measured']['macs']} / "
          f"{report['measured']['params']}")
    for lv in report["levels"]:
        print(f"{lv['name']}: accuracy {lv['accuracy']:.4f}, MACs {lv['macs']} "
              f"({lv['macs_ratio']:.3f} of full), skips {lv['skipped_blocks'] or 'none'}")
    print(f"bundle: {args.out / 'bundle'}; report: {args.out / 'report.json'}")
    return 0
