"""``elastiserve train``: build a nested bundle, resumably, by one of three strategies.

``--strategy prune-grow`` (default) is seed 1 and lives in ``pipeline.py``; ``regrowth``
(bidirectional pruning-regrowth, seed 2) and ``discovery`` (complexity-aware structure discovery,
seed 3) live in their own subpackages, each exposing ``add_arguments(group)`` and
``run(args, data, rank) -> int``. All of them share the data and output arguments below and write
the same bundle format.

``--model torchvision:<name>`` or ``--model package.module:factory`` takes a model this project
did not write: :mod:`.model_analysis` derives its dependency groups with Torch-Pruning's
DependencyGraph, or refuses it with the reason, before any training. Prune-and-grow and
regrowth (both forms) work on that layout; discovery does not, since it removes whole residual
blocks, which a dependency-group layout does not describe.

Runs plain (one process) or under ``torchrun --nproc_per_node N`` (DDP, gloo on CPU, NCCL on
GPU is not used here). Interrupt it at any time: rerunning the same command in the same
``--out`` directory skips the stages already finished.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from elastiserve_store import ARCHITECTURES, constructors, load_bundle
from elastiserve_store.errors import ManifestError

from .data import DatasetError, load_dataset
from .importance import IMPORTANCES
from .model_analysis import analyse, parse_model_args
from .pipeline import FULL_LOSS_LEVELS, SCHEDULES, Pipeline, PipelineConfig
from .progress import stage_bar
from .report import write_report

STRATEGY_MODULES: dict[str, str] = {
    "regrowth": "elastiserve_train.regrowth.cli",
    "discovery": "elastiserve_train.discovery.cli",
}
"""Strategies other than prune-and-grow: name -> module with add_arguments/run."""

MODEL_STRATEGIES = ("prune-grow", "regrowth")
"""Strategies that take ``--model`` (a dependency-group layout); discovery needs the in-project
architectures' residual blocks."""


def anchor_strengths(text: str) -> float | tuple[float, ...]:
    """``--anchor``: ``0.2`` (every level) or ``0,0.05,0.2,0.2`` (one per level)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or comma-separated numbers, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", choices=("prune-grow", *STRATEGY_MODULES),
                        default="prune-grow",
                        help="prune-grow (seed 1, default), regrowth (seed 2), discovery (seed 3)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default="resnet20")
    parser.add_argument("--model", default=None, metavar="torchvision:NAME|PKG.MOD:FACTORY",
                        help="prune-grow, regrowth: instead of --arch, a torchvision "
                             "classification model or your own factory returning an nn.Module "
                             "(the serving side must "
                             f"list it in {constructors.ALLOW_ENV}); refused up front with the "
                             "reason when its structure cannot be nested")
    parser.add_argument("--model-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="keyword argument for --model's constructor (JSON value or string; "
                             "repeatable); torchvision's num_classes defaults to the data's")
    parser.add_argument("--weights", type=Path, default=None, metavar="FILE",
                        help="with --model: your trained full model, safetensors or "
                             "a PyTorch state dict (read with weights_only=True); --epochs is "
                             "then unused")
    parser.add_argument("--width-mult", type=float, default=1.0,
                        help="scale every layer's full width (default 1.0)")
    parser.add_argument("--dataset", default="fashion-mnist",
                        choices=("fashion-mnist", "cifar10", "imagefolder", "generated"))
    parser.add_argument("--data-path", type=Path, default=None,
                        help="dataset location (Fashion-MNIST default: the Debian package's)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize: ImageFolder (default 32), Fashion-MNIST (default 28)")
    parser.add_argument("--train-subset", type=int, default=None, help="use N train images")
    parser.add_argument("--test-subset", type=int, default=None, help="use N test images")
    parser.add_argument("--out", type=Path, required=True, help="output / resume directory")
    parser.add_argument("--levels", type=int, default=4, help="nested levels (default 4)")
    parser.add_argument("--importance", choices=IMPORTANCES, default="l2")
    parser.add_argument("--schedule", choices=tuple(SCHEDULES), default="iterative")
    parser.add_argument("--steps-per-level", type=int, default=1,
                        help="pruning steps between two levels (iterative schedule)")
    parser.add_argument("--epochs", type=float, default=10.0, help="baseline training epochs")
    parser.add_argument("--prune-epochs", type=float, default=0.0,
                        help="fine-tuning epochs after each pruning step")
    parser.add_argument("--core-epochs", type=float, default=5.0)
    parser.add_argument("--grow-epochs", type=float, default=3.0)
    parser.add_argument("--distill", type=float, default=0.0, metavar="WEIGHT",
                        help="prune-grow: learn the core and the regrown levels from the "
                             "unpruned model's outputs too, with this weight in [0, 1] "
                             "(0: labels only; costs one teacher forward pass per batch)")
    parser.add_argument("--anchor", type=anchor_strengths, default=0.0, metavar="S[,S...]",
                        help="prune-grow: hold each level's shared weights near the unpruned "
                             "model's while tuning (L2-SP, in place of weight decay; 0: off), "
                             "so the wider levels, which keep them frozen, lose less; one "
                             "strength, or one per level, core first (no weaker below "
                             "than above: see docs/architecture.md)")
    parser.add_argument("--anchor-fisher", action="store_true",
                        help="prune-grow: weigh --anchor's pull on each weight by the unpruned "
                             "model's Fisher information, freeing weights it barely uses")
    parser.add_argument("--full-loss", type=float, default=0.0, metavar="WEIGHT",
                        help="prune-grow: while the core and each narrower level are tuned, "
                             "also train them inside the full network whose untuned channels "
                             "keep the original weights they will be reinserted with, under "
                             "the baseline's batch norms and head, which every grown level "
                             "then starts from (0: off; costs one full-network pass per batch)")
    parser.add_argument("--full-loss-levels", choices=FULL_LOSS_LEVELS, default="full",
                        help="prune-grow: --full-loss on the full network only, or on every "
                             "wider level (one pass each per batch)")
    parser.add_argument("--baseline-weights", type=Path, default=None, metavar="SAFETENSORS",
                        help="prune-grow: start from this trained full model (same --arch, "
                             "--width-mult, channels and classes) instead of training one; "
                             "--epochs is then unused")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to train: auto takes CUDA where torch sees a device; "
                             "cuda without one is refused (default auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, module in STRATEGY_MODULES.items():
        group = parser.add_argument_group(f"--strategy {name}")
        importlib.import_module(module).add_arguments(group)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    if device is None:
        print("elastiserve train: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if device == "cuda":  # tensors and modules the pipeline creates are made on the GPU
        torch.set_default_device(device)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    try:
        return _run(args, rank)
    except (DatasetError, ValueError, ManifestError) as err:
        print(f"elastiserve train: {err}", file=sys.stderr)
        return 2
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _device(setting: str) -> str | None:
    """``--device`` on this host: ``auto`` is CUDA where torch sees a device, else the CPU;
    ``None`` for ``cuda`` without a device (refused rather than trained on the CPU)."""
    if setting == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    return None if setting == "cuda" else "cpu"


def resolve_architecture(args: argparse.Namespace, input_shape: tuple[int, int, int],
                         num_classes: int) -> tuple[str, dict[str, Any]]:
    """``--arch`` with its width, or ``--model`` analysed into a dependency-group layout."""
    if args.model is None:
        return args.arch, {"in_channels": input_shape[0], "num_classes": num_classes,
                           "width_mult": args.width_mult}
    name = str(args.model)
    constructors.check_name(name)
    if not name.startswith(f"{constructors.TORCHVISION}:"):
        constructors.trust_factory(name)  # named by this CLI's own user
    constructors.check_allowed(name)
    kwargs = parse_model_args(args.model_arg)
    if name.startswith(f"{constructors.TORCHVISION}:"):
        kwargs.setdefault("num_classes", num_classes)
    return name, analyse(name, kwargs, input_shape, num_classes)


def _run(args: argparse.Namespace, rank: int) -> int:
    data = load_dataset(args.dataset, args.data_path, image_size=args.image_size,
                        channels=3).limit(args.train_subset, args.test_subset, args.seed)
    if args.model is not None:
        data = data.rgb()  # a constructor's model takes three channels
    if args.model is not None and args.strategy not in MODEL_STRATEGIES:
        raise ValueError(f"--model does not work with --strategy {args.strategy}: it removes "
                         f"whole residual blocks, which a DependencyGraph layout does not "
                         f"describe (use --arch, or --strategy prune-grow or regrowth)")
    if args.weights is not None and args.model is None:
        raise ValueError("--weights goes with --model (use --baseline-weights with --arch)")
    if args.strategy in STRATEGY_MODULES:
        strategy_run = importlib.import_module(STRATEGY_MODULES[args.strategy]).run
        return int(strategy_run(args, data, rank))
    arch, arch_args = resolve_architecture(args, data.input_shape, len(data.class_names))
    weights = args.weights if args.weights is not None else args.baseline_weights
    cfg = PipelineConfig(
        arch=arch,
        arch_args=arch_args,
        levels=args.levels, importance=args.importance, schedule=args.schedule,
        steps_per_level=args.steps_per_level, baseline_epochs=args.epochs,
        prune_epochs=args.prune_epochs, core_epochs=args.core_epochs,
        grow_epochs=args.grow_epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        distill=args.distill, anchor=args.anchor, anchor_fisher=args.anchor_fisher,
        full_loss=args.full_loss, full_loss_levels=args.full_loss_levels,
        baseline_weights=None if weights is None else str(weights))
    with stage_bar(rank == 0 and not args.no_progress) as progress:
        pipeline = Pipeline(cfg, data, args.out, progress)
        skipped = [s for s in pipeline.stages if pipeline.done(s)]
        if skipped and rank == 0:
            print(f"resuming: stages already done: {', '.join(skipped)}", file=sys.stderr)
        metrics = pipeline.run()
    if rank == 0:
        bundle = load_bundle(args.out / "bundle")
        report = write_report(args.out, bundle.manifest, metrics)
        for lv in report["levels"]:
            print(f"{lv['name']}: accuracy {lv['accuracy']:.4f}, MACs {lv['macs']} "
                  f"({lv['macs_ratio']:.3f} of full)")
        print(f"bundle: {args.out / 'bundle'}; report: {args.out / 'report.md'}")
    return 0
