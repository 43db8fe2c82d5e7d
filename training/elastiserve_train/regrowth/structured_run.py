"""The structured trajectory: prune channels to a budget, regrow them as nested levels.

Pruning is prune-and-grow's (Torch-Pruning DepGraph through :class:`ChainPruner`, one-shot or
iterative, fine-tuned), down to the widest channel ratio that meets the budget: that network
is level 0. Each regrowth step then adds, per slot, the pruned channels with the best gradient
or Taylor score (:mod:`.channels`), restored to their original weights or reinitialised, and
fine-tunes only what was added (the levels below frozen by prune-and-grow's gradient masks).
So every regrown network is an ordinary nested level and the result is an ordinary bundle.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from elastiserve_store import InputSpec, Normalisation, architectures, write_bundle
from elastiserve_store.profile import count_macs, latency_ms
from elastiserve_store.slots import Widths, slot_groups, tensor_slots

from .. import loop
from ..data import Dataset
from ..importance import make_importance
from ..nested import NestedState, check_nested, core_masks
from ..pruning import ChainPruner, Kept, target_widths
from .budget import Budget, largest_keep_within
from .channels import channel_scores, choose_channels, close_gates, gate_parameters, touching
from .unstructured import RegrowImportance, RegrowInit


@dataclass(frozen=True)
class StructuredConfig:
    """Pruning and regrowth settings of the structured form."""

    arch: str
    arch_args: dict[str, Any]
    prune_importance: str = "l2"
    regrow_importance: RegrowImportance = "taylor"
    init: RegrowInit = "restore"
    prune_epochs: float = 0.0
    core_epochs: float = 1.0
    grow_epochs: float = 1.0
    lr: float = 0.05
    batch_size: int = 128
    calib_batches: int = 4
    seed: int = 0
    device: str = "cpu"

    def train_cfg(self, epochs: float, salt: int) -> loop.TrainConfig:
        return loop.TrainConfig(epochs=epochs, lr=self.lr, batch_size=self.batch_size,
                                seed=self.seed * 7919 + salt)


def min_keep(full: Widths, groups: Mapping[str, int] | None = None) -> float:
    """The smallest keep ratio that leaves at least one channel in every slot (in every group
    of a grouped slot)."""
    g = dict(groups or {})
    return max(g.get(s, 1) / n for s, n in full.items()) + 1e-9


def slot_groups_of(arch: str, arch_args: dict[str, Any]) -> dict[str, int]:
    """Group count per slot (1 but for the grouped slots of a constructor-built model)."""
    return slot_groups(tensor_slots(architectures.build(arch, arch_args)))


def level_macs(arch: str, arch_args: dict[str, Any], widths: Widths,
               input_shape: tuple[int, int, int]) -> int:
    return count_macs(architectures.build(arch, arch_args, widths), input_shape)


def keep_for_budget(cfg: StructuredConfig, budget: Budget, input_shape: tuple[int, int, int]
                    ) -> float:
    """Widest channel keep ratio whose level meets ``budget`` (MACs, MACs ratio or bytes)."""
    full = architectures.full_widths(cfg.arch, cfg.arch_args)
    groups = slot_groups_of(cfg.arch, cfg.arch_args)
    full_macs = level_macs(cfg.arch, cfg.arch_args, full, input_shape)

    def cost(keep: float) -> float:
        widths = target_widths(full, keep, groups)
        if budget.kind == "bytes":
            model = architectures.build(cfg.arch, cfg.arch_args, widths)
            return float(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
        macs = level_macs(cfg.arch, cfg.arch_args, widths, input_shape)
        return macs / full_macs if budget.kind == "macs_ratio" else float(macs)

    return largest_keep_within(cost, budget, min_keep=min_keep(full, groups), iterations=20)


class StructuredTrajectory:
    """Runs prune -> core -> regrow steps on one baseline model; ``state`` holds the levels."""

    def __init__(self, cfg: StructuredConfig, data: Dataset) -> None:
        self.cfg = cfg
        self.data = data
        self.mean = torch.tensor(data.mean)
        self.std = torch.tensor(data.std)
        self.full = architectures.full_widths(cfg.arch, cfg.arch_args)
        self.groups = slot_groups_of(cfg.arch, cfg.arch_args)
        self.keeps: list[float] = []
        self.accuracies: list[float] = []
        self.seconds: list[float] = []
        self.state: NestedState | None = None

    def _acc(self, model: nn.Module) -> float:
        return loop.evaluate(model, self.data.test, self.mean, self.std)

    def _train(self, model: nn.Module, epochs: float, salt: int,
               masks: dict[str, torch.Tensor] | None = None) -> float:
        if epochs <= 0:
            return 0.0
        start = time.perf_counter()
        model.to(self.cfg.device)
        if masks is not None:
            masks = {k: v.to(self.cfg.device) for k, v in masks.items()}
        loop.train(model, self.data.train, self.mean, self.std,
                   self.cfg.train_cfg(epochs, salt), masks=masks)
        model.cpu()
        return time.perf_counter() - start

    def _calib(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(loop.batches(self.data.train, self.mean, self.std, self.cfg.batch_size,
                                 self.cfg.seed + 77, train=True, shard=False,
                                 augmentation=False))[:self.cfg.calib_batches]

    def prune(self, baseline: nn.Module, keeps: Sequence[float]) -> None:
        """Prune ``baseline`` (a copy) through ``keeps`` (descending); level 0 is the last."""
        cfg = self.cfg
        model = architectures.build(cfg.arch, cfg.arch_args)
        model.load_state_dict(baseline.state_dict())
        model.cpu()
        state = NestedState.from_model(cfg.arch, cfg.arch_args, model)
        example = torch.zeros(1, *self.data.input_shape)
        pruner = ChainPruner(model, example, make_importance(cfg.prune_importance), keeps)
        took = 0.0
        kept: Kept = {}
        for i, _keep in enumerate(keeps):
            kept = pruner.step(self._calib())
            if i < len(keeps) - 1 and cfg.prune_epochs > 0:
                took += self._train(model, cfg.prune_epochs, 100 + i)
                state.absorb(model, kept)
        state.kept = [kept]
        core = state.level_model(0)
        took += self._train(core, cfg.core_epochs, 200)
        state.absorb(core, kept, level=0)
        self.state = state
        self.keeps = [keeps[-1]]
        self.accuracies = [self._acc(core)]
        self.seconds = [took]

    def regrow(self, keep: float) -> None:
        """Add the best pruned channels up to ``keep`` of each slot; fine-tune what was added."""
        cfg = self.cfg
        state = self.state
        if state is None:
            raise RuntimeError("prune before regrowing")
        if keep <= self.keeps[-1]:
            raise ValueError(f"regrowth keep ratio {keep} must exceed the last level's "
                             f"{self.keeps[-1]}")
        k = len(state.kept)
        prev = state.kept[-1]
        widths = {s: max(w, len(prev[s]))
                  for s, w in target_widths(self.full, keep, self.groups).items()}
        everything = {s: torch.arange(n) for s, n in self.full.items()}
        state.kept.append(everything)
        probe = state.level_model(k, own_from=k - 1)
        state.kept.pop()
        reference = self._gate_reference(probe)
        close_gates(probe, prev)
        probe.to(cfg.device)
        scores = channel_scores(probe, prev, reference, self._calib(), cfg.regrow_importance)
        new_kept = choose_channels(prev, scores, widths, self.full, self.groups)
        if cfg.init == "reinit":
            self._reinit(state, prev, new_kept, salt=k)
        state.kept.append(new_kept)
        check_nested(state.kept)
        model = state.level_model(k, own_from=k - 1)
        masks = core_masks(model, prev, new_kept)
        took = self._train(model, cfg.grow_epochs, 300 + k, masks)
        state.absorb(model, new_kept, level=k)
        self.keeps.append(keep)
        self.accuracies.append(self._acc(model))
        self.seconds.append(took)

    def _gate_reference(self, probe: nn.Module) -> dict[str, torch.Tensor]:
        """Gate parameters' values before gating: the master's (pre-pruning where pruned)."""
        names = [n for gates in gate_parameters(probe).values() for n, _ in gates]
        params = dict(probe.named_parameters())
        return {n: params[n].detach().clone() for n in names}

    def _reinit(self, state: NestedState, prev: Kept, new_kept: Kept, salt: int) -> None:
        """Overwrite every master entry that involves a newly added channel with fresh values."""
        torch.manual_seed(self.cfg.seed * 7919 + 900 + salt)
        fresh = architectures.build(self.cfg.arch, self.cfg.arch_args).state_dict()
        layout = tensor_slots(architectures.build(self.cfg.arch, self.cfg.arch_args))
        new = {s: v[~torch.isin(v, prev[s])] for s, v in new_kept.items()}
        for name, tensor in state.master.items():
            info = layout[name]
            if not any(a is not None for a in info.axes):
                continue
            where = touching(info.axes, tuple(tensor.shape), new_kept, new)
            state.master[name] = torch.where(where, fresh[name].to(tensor.dtype), tensor)

    def export(self, out: Path, names: Sequence[str]) -> list[dict[str, Any]]:
        """Write the nested bundle to ``out``; returns per-level facts for the report."""
        state = self.state
        if state is None:
            raise RuntimeError("nothing to export")
        models = state.nested_models()
        shape = self.data.input_shape
        accs = [self._acc(m) for m in models]
        lat = [(latency_ms(m, shape, 1), latency_ms(m, shape, 32, repeats=3)) for m in models]
        manifest = write_bundle(
            out, architecture=self.cfg.arch, arch_args=self.cfg.arch_args, models=models,
            names=list(names), channel_ratios=self.keeps, input_spec=InputSpec(*shape),
            normalisation=Normalisation(self.data.mean, self.data.std),
            class_names=self.data.class_names, accuracies=accs, latencies_ms=lat,
            training={"strategy": "regrowth", "form": "structured",
                      "dataset": self.data.name})
        return [{"name": lv.name, "channel_ratio": lv.channel_ratio, "macs": lv.macs,
                 "params": lv.params, "accuracy": lv.accuracy,
                 "latency_ms_b1": lv.latency_ms_b1, "latency_ms_b32": lv.latency_ms_b32}
                for lv in manifest.levels]
