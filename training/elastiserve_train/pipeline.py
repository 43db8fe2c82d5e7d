"""The prune-and-grow pipeline as resumable stages.

baseline -> prune -> core -> grow1 .. growN-1 -> export -> report

Each stage writes its result to the output directory (tensors as safetensors, everything else as
JSON) and records itself in ``state.json``; a rerun skips finished stages and resumes from the
last checkpoint, so an interrupted run loses at most one stage. Under ``torchrun`` every rank runs
every stage (DDP keeps them in step) and rank 0 alone writes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from elastiserve_store import InputSpec, Normalisation, architectures, write_bundle
from elastiserve_store.profile import count_macs, latency_ms
from elastiserve_store.slots import gather

from . import loop
from .data import Dataset
from .fisher import diagonal_fisher, normalised
from .importance import make_importance
from .nested import NestedState, WiderView, check_nested, core_masks
from .progress import Progress
from .pruning import ChainPruner
from .schedules import chain, iterative, nested_ratios, one_shot

SCHEDULES = {"iterative": iterative, "one-shot": one_shot}
FULL_LOSS_LEVELS = ("full", "all")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything that determines the result; a resumed run must use the same values."""

    arch: str = "resnet20"
    arch_args: dict[str, Any] = field(default_factory=dict)
    levels: int = 4
    importance: str = "l2"
    schedule: str = "iterative"
    steps_per_level: int = 1
    baseline_epochs: float = 1.0
    prune_epochs: float = 0.0
    core_epochs: float = 1.0
    grow_epochs: float = 1.0
    lr: float = 0.05
    batch_size: int = 128
    calib_batches: int = 2
    seed: int = 0
    distill: float = 0.0
    """Distillation weight from the unpruned baseline while tuning the core and growing."""
    anchor: float | tuple[float, ...] = 0.0
    """L2-SP pull of each level's shared weights toward the baseline's while tuning the core
    and growing: the wider levels keep those weights frozen, so drift costs them accuracy.
    One strength for every level, or one per level (core first). Measured on ResNet-20
    (docs/architecture.md): a pull weaker below than above (0.05, 0.1, 0.2, 0.2) was worse at
    the wide levels than none at all, since a level pulled back toward the baseline no longer
    fits the drifted block under it; keep it at least as strong below as above."""
    anchor_fisher: bool = False
    """Weight the anchor's pull on each weight by the baseline's diagonal Fisher information
    (normalised to mean 1), so weights the full model barely uses are free to move."""
    baseline_weights: str | None = None
    """A trained full model (safetensors) to start from instead of training the baseline."""
    full_loss: float = 0.0
    """Weight of a second loss, on the full network, while the core is tuned and each level
    but the last is grown: channels not yet tuned sit at the original weights they will be
    reinserted with, so the shared weights learn to fit them (:class:`nested.WiderView`).
    The view has the baseline's batch norms and head, and each grown level starts from them."""
    full_loss_levels: str = "full"
    """``full``: that loss on the full network only; ``all``: on every wider level (one loss
    each, weight ``full_loss``), so a level also fits the very next one grown from it."""
    level_ratios: tuple[float, ...] | None = None
    """Channel ratio of each level, smallest first, ending at 1.0 (None: evenly spaced,
    :func:`schedules.nested_ratios`). The protocol study prunes 30/50/70 % this way."""

    def __post_init__(self) -> None:
        # Refuse here, before hours of baseline training, not when the core stage starts.
        if not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"--distill must be in [0, 1], got {self.distill}")
        strengths = self.anchor if isinstance(self.anchor, tuple) else (self.anchor,)
        if isinstance(self.anchor, tuple) and len(self.anchor) != self.levels:
            raise ValueError(f"--anchor: {len(self.anchor)} strengths for {self.levels} levels; "
                             f"give one, or one per level")
        if any(a < 0.0 for a in strengths):
            raise ValueError(f"--anchor must be >= 0, got {self.anchor}")
        if self.full_loss < 0.0:
            raise ValueError(f"--full-loss must be >= 0, got {self.full_loss}")
        if self.full_loss_levels not in FULL_LOSS_LEVELS:
            raise ValueError(f"--full-loss-levels must be one of {', '.join(FULL_LOSS_LEVELS)}, "
                             f"got {self.full_loss_levels!r}")
        if self.level_ratios is not None:
            check_level_ratios(self.level_ratios, self.levels)
        if self.baseline_weights is not None and not Path(self.baseline_weights).is_file():
            raise ValueError(f"--baseline-weights: {self.baseline_weights} is not a file")

    @property
    def ratios(self) -> list[float]:
        """Each level's channel ratio, smallest first."""
        if self.level_ratios is None:
            return nested_ratios(self.levels)
        return list(self.level_ratios)

    def anchor_at(self, level: int) -> float:
        """The anchor strength while level ``level`` is tuned (0: the core)."""
        return self.anchor[level] if isinstance(self.anchor, tuple) else self.anchor

    def train_cfg(self, epochs: float, salt: int, *, distill: bool = False,
                  anchored_level: int | None = None) -> loop.TrainConfig:
        """Settings for one training run; ``distill``: a pruned model learning from the
        baseline; ``anchored_level``: the nested level being tuned, whose shared weights the
        anchor holds near the baseline's and the full-network loss fits to the wider levels
        (the independent variants pass none: neither applies to them)."""
        return loop.TrainConfig(epochs=epochs, lr=self.lr, batch_size=self.batch_size,
                                seed=self.seed * 7919 + salt,
                                distill=self.distill if distill else 0.0,
                                anchor=0.0 if anchored_level is None
                                else self.anchor_at(anchored_level),
                                full_loss=0.0 if anchored_level is None
                                or anchored_level >= self.levels - 1 else self.full_loss)


def check_level_ratios(ratios: tuple[float, ...], levels: int) -> None:
    """Refuse level ratios that cannot nest: one per level, rising strictly, in (0, 1],
    the last the full network (1.0)."""
    if len(ratios) != levels:
        raise ValueError(f"{len(ratios)} level ratios for {levels} levels")
    if any(not 0.0 < r <= 1.0 for r in ratios):
        raise ValueError(f"level ratios must be in (0, 1], got {list(ratios)}")
    if any(b <= a for a, b in itertools.pairwise(ratios)):
        raise ValueError(f"level ratios must rise strictly, got {list(ratios)}")
    if ratios[-1] != 1.0:
        raise ValueError(f"the last level ratio must be 1.0 (the full network), got {ratios[-1]}")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A user's trained weights: safetensors, or a PyTorch state dict read with
    ``torch.load(weights_only=True)`` (never a pickle that may run code)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except SafetensorError as err:  # a pickle, a truncated or a foreign file
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # not a state dict, or one that needs arbitrary unpickling
        raise ValueError(f"{path}: not a safetensors file nor a PyTorch state dict loadable "
                         f"with weights_only=True ({type(err).__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise ValueError(f"{path}: holds no state dict (a mapping of names to tensors)")
    return dict(data)


def _load_baseline(model: nn.Module, path: Path) -> None:
    """Load a user's trained full model, refusing one that is not this architecture's."""
    tensors = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise ValueError(f"{path}: not this architecture's weights (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    for name, tensor in tensors.items():
        if tensor.shape != own[name].shape:
            raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, the "
                             f"architecture {tuple(own[name].shape)}")
    model.load_state_dict(tensors, strict=True)


def _is_writer() -> bool:
    return loop.world()[0] == 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class Pipeline:
    """Runs the stages of one training job in ``out_dir``."""

    def __init__(self, cfg: PipelineConfig, data: Dataset, out_dir: Path,
                 progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.data = data
        self.out = out_dir
        self.progress = progress
        self.mean = torch.tensor(data.mean)
        self.std = torch.tensor(data.std)
        self.ratios = cfg.ratios
        self.state_path = out_dir / "state.json"
        self.state = self._load_state()
        self._stage_start: float | None = None

    # --------------------------------------------------------------- bookkeeping

    def _load_state(self) -> dict[str, Any]:
        config = json.loads(json.dumps(asdict(self.cfg)))
        if self.state_path.is_file():
            state: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
            # A setting added after a run was written is absent from its state; its default
            # is what that run did, so fill it in rather than refuse to resume.
            defaults = json.loads(json.dumps(asdict(PipelineConfig())))
            stored = {**defaults, **state.get("config", {})}
            if stored != config:
                raise ValueError(f"{self.state_path}: existing run used a different "
                                 f"configuration; use a new --out directory")
            return state
        return {"config": config, "done": [], "metrics": {}}

    def _finish(self, stage: str, **metrics: Any) -> None:
        self.state["metrics"].update(metrics)
        if self._stage_start is not None:
            seconds = self.state["metrics"].setdefault("seconds", {})
            seconds[stage] = round(time.perf_counter() - self._stage_start, 1)
            self._stage_start = None
        self.state["done"].append(stage)
        if _is_writer():
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state, indent=2), encoding="utf-8")
            tmp.replace(self.state_path)
        _barrier()

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    @property
    def stages(self) -> list[str]:
        grow = [f"grow{k}" for k in range(1, self.cfg.levels)]
        return ["baseline", "prune", "core", *grow, "export"]

    def _save_nested(self, state: NestedState, stem: str) -> None:
        if _is_writer():
            state.save(self.out / stem)

    def _on_step(self, stage: str) -> Callable[[int, int, float], None] | None:
        if self.progress is None:
            return None
        report = self.progress
        return lambda step, total, _loss: report(stage, step, total)

    def _input_shape(self) -> tuple[int, int, int]:
        return self.data.input_shape

    def _acc(self, model: nn.Module) -> float:
        return loop.evaluate(model, self.data.test, self.mean, self.std)

    # --------------------------------------------------------------- stages

    def run(self) -> dict[str, Any]:
        """Run every unfinished stage; returns the metrics gathered so far.

        Each stage's wall time lands in the metrics as ``seconds`` (stage -> s), so a report
        written after a resumed run still says what every stage cost.
        """
        for stage in self.stages:
            if self.done(stage):
                continue
            self._stage_start = time.perf_counter()
            if stage == "baseline":
                self.baseline()
            elif stage == "prune":
                self.prune()
            elif stage == "core":
                self.core()
            elif stage.startswith("grow"):
                self.grow(int(stage[4:]))
            elif stage == "export":
                self.export()
        return dict(self.state["metrics"])

    def baseline(self) -> None:
        torch.manual_seed(self.cfg.seed)
        model: nn.Module = architectures.build(self.cfg.arch, self.cfg.arch_args)
        if self.cfg.baseline_weights is not None:
            _load_baseline(model, Path(self.cfg.baseline_weights))
        elif self.cfg.baseline_epochs > 0:
            loop.train(model, self.data.train, self.mean, self.std,
                       self.cfg.train_cfg(self.cfg.baseline_epochs, 1),
                       on_step=self._on_step("baseline"))
        acc = self._acc(model)
        if _is_writer():
            self.out.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      str(self.out / "baseline.safetensors"))
        _barrier()
        self._finish("baseline", baseline_acc=acc,
                     baseline_macs=count_macs(model, self._input_shape()))

    def _baseline_tensors(self) -> dict[str, torch.Tensor]:
        """The unpruned baseline's state, as the baseline stage saved it."""
        return load_file(str(self.out / "baseline.safetensors"))

    def _baseline_model(self) -> nn.Module:
        model: nn.Module = architectures.build(self.cfg.arch, self.cfg.arch_args)
        model.load_state_dict(self._baseline_tensors())
        return model

    def prune(self) -> None:
        cfg = self.cfg
        model = self._baseline_model()
        state = NestedState.from_model(cfg.arch, cfg.arch_args, model)
        steps = chain(self.ratios, SCHEDULES[cfg.schedule], cfg.steps_per_level)
        example = torch.zeros(1, *self._input_shape())
        pruner = ChainPruner(model, example, make_importance(cfg.importance),
                             [keep for keep, _ in steps])
        kept: dict[int, Any] = {len(self.ratios) - 1: {s: torch.arange(n)
                                                       for s, n in pruner.full.items()}}
        calib = list(loop.batches(self.data.train, self.mean, self.std, cfg.batch_size,
                                  cfg.seed, train=True, shard=False, augmentation=False))
        calib = calib[:cfg.calib_batches]
        for i, (_keep, level) in enumerate(steps):
            now = pruner.step(calib)
            if cfg.prune_epochs > 0:
                loop.train(model, self.data.train, self.mean, self.std,
                           cfg.train_cfg(cfg.prune_epochs, 100 + i, distill=True),
                           teacher=self._teacher(),
                           on_step=self._on_step(f"prune{i}"))
                state.absorb(model, now)
            if level is not None:
                kept[level] = now
        state.kept = [kept[k] for k in range(len(self.ratios))]
        check_nested(state.kept)
        self._save_nested(state, "prune")
        _barrier()
        self._finish("prune", widths=[state.widths(k) for k in range(len(self.ratios))])

    def _teacher(self) -> nn.Module | None:
        """The unpruned baseline, when distillation is on."""
        return self._baseline_model() if self.cfg.distill > 0 else None

    def _resume_state(self, stage: str) -> NestedState:
        return NestedState.load(self.out / stage)

    def _anchor_to(self, state: NestedState, k: int) -> dict[str, torch.Tensor] | None:
        """The baseline's weights on level ``k``'s channels, for every shared parameter."""
        if self.cfg.anchor_at(k) <= 0.0:
            return None
        return self._on_level(self._baseline_tensors(), state, k)

    def _on_level(self, full: dict[str, torch.Tensor], state: NestedState, k: int
                  ) -> dict[str, torch.Tensor]:
        """Full-width tensors cut to level ``k``'s channels, for its shared parameters."""
        layout = state.layout
        model = state.build_level(k, state.widths(k))
        return {name: gather(full[name], layout[name].axes, state.kept[k])
                for name, _ in model.named_parameters() if not layout[name].per_level}

    def _anchor_precision(self, state: NestedState, k: int) -> dict[str, torch.Tensor] | None:
        """The baseline's normalised Fisher diagonal on level ``k``'s shared parameters.

        Computed once from the baseline and kept as ``fisher.safetensors`` (a resumed run reads
        it back rather than estimate it again on other batches).
        """
        if not self.cfg.anchor_fisher or self.cfg.anchor_at(k) <= 0.0:
            return None
        path = self.out / "fisher.safetensors"
        if path.is_file():
            fisher = load_file(str(path))
        else:
            model = self._baseline_model()
            layout = state.layout
            raw = diagonal_fisher(model, self.data.train, self.mean, self.std,
                                  seed=self.cfg.seed)
            fisher = normalised(raw, [n for n, _ in model.named_parameters()
                                      if not layout[n].per_level])
            if _is_writer():
                save_file({n: t.contiguous() for n, t in fisher.items()}, str(path))
            _barrier()
        return self._on_level(fisher, state, k)

    def _wider_views(self, state: NestedState, k: int, model: nn.Module) -> list[WiderView]:
        """The wider levels on level ``k``'s live weights with the baseline's batch norms and
        head, for ``--full-loss`` (none at the last level, which is the full network)."""
        last = self.cfg.levels - 1
        if self.cfg.full_loss <= 0.0 or k >= last:
            return []
        wider = range(k + 1, last + 1) if self.cfg.full_loss_levels == "all" else [last]
        baseline = self._baseline_tensors()
        return [WiderView(state, k, model, j, per_level_from=baseline) for j in wider]

    def core(self) -> None:
        state = self._resume_state("prune")
        model = state.level_model(0)
        loop.train(model, self.data.train, self.mean, self.std,
                   self.cfg.train_cfg(self.cfg.core_epochs, 200, distill=True, anchored_level=0),
                   teacher=self._teacher(), anchor_to=self._anchor_to(state, 0),
                   anchor_precision=self._anchor_precision(state, 0),
                   wider_views=self._wider_views(state, 0, model),
                   on_step=self._on_step("core"))
        state.absorb(model, state.kept[0], level=0)
        self._save_nested(state, "core")
        _barrier()
        self._finish("core", core_acc=self._acc(model))

    def grown_start(self, state: NestedState, k: int) -> nn.Module:
        """Level ``k`` before its growth: the tuned levels' weights, the reinserted channels'
        original ones.

        Its batch norms and head are the widest tuned level's on the channels they share (the
        master's elsewhere), or, with ``--full-loss``, the baseline's: the shared weights were
        then trained to work under the baseline's norms and head, and a tuned level's would
        undo that. On the benchmark (ResNet-20, Fashion-MNIST, after grow2 of a run that still
        grew from the tuned level's) the full network scored 0.9336 with the baseline's norms
        and head, the baseline itself, and 0.68 with level 2's (batch statistics recalibrated
        in both); grown from level 2's it ended at 0.894, from the baseline's at 0.934.
        """
        if k == 0:
            return state.level_model(0)
        if self.cfg.full_loss > 0.0:
            return state.level_model(k, per_level_from=self._baseline_tensors())
        below = max((j for j in state.level_own if j < k), default=None)
        return state.level_model(k, own_from=below)

    def grow(self, k: int) -> None:
        """Tune level ``k``'s reinserted channels with the level below frozen."""
        state = self._resume_state("core" if k == 1 else f"grow{k - 1}")
        model = self.grown_start(state, k)
        masks = core_masks(model, state.kept[k - 1], state.kept[k])
        loop.train(model, self.data.train, self.mean, self.std,
                   self.cfg.train_cfg(self.cfg.grow_epochs, 300 + k, distill=True,
                                      anchored_level=k),
                   masks=masks, teacher=self._teacher(), anchor_to=self._anchor_to(state, k),
                   anchor_precision=self._anchor_precision(state, k),
                   wider_views=self._wider_views(state, k, model),
                   on_step=self._on_step(f"grow{k}"))
        state.absorb(model, state.kept[k], level=k)
        self._save_nested(state, f"grow{k}")
        _barrier()
        self._finish(f"grow{k}", **{f"grow{k}_acc": self._acc(model)})

    def final_state(self) -> NestedState:
        last = "core" if self.cfg.levels == 1 else f"grow{self.cfg.levels - 1}"
        return self._resume_state(last)

    def export(self) -> None:
        state = self.final_state()
        models = state.nested_models()
        shape = self._input_shape()
        accs = [self._acc(m) for m in models]
        lat = [(latency_ms(m, shape, 1), latency_ms(m, shape, 32, repeats=3)) for m in models]
        if _is_writer():
            write_bundle(
                self.out / "bundle",
                architecture=self.cfg.arch,
                arch_args=self.cfg.arch_args,
                models=models,
                names=[f"L{k}-{round(r * 100)}pct" for k, r in enumerate(self.ratios)],
                channel_ratios=self.ratios,
                input_spec=InputSpec(*shape),
                normalisation=Normalisation(self.data.mean, self.data.std),
                class_names=self.data.class_names,
                accuracies=accs,
                latencies_ms=lat,
                training={**asdict(self.cfg), "dataset": self.data.name},
            )
        _barrier()
        macs = [count_macs(m, shape) for m in models]
        self._finish("export", level_acc=accs, level_macs=macs,
                     level_latency_ms=[list(x) for x in lat])
