"""Structured pruning through Torch-Pruning's DependencyGraph, with channel bookkeeping.

Torch-Pruning removes coupled channels (a residual stream, a depthwise block) together and
records what it removed in ``pruning_history()``: (root layer, out/in side, indices *relative to
the layer at that moment*). Replaying that history against a list of original indices per slot
tells us, after every step, exactly which of the full model's channels survive: the metadata
that prune-and-grow needs to reinsert pruned channels at their original positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch_pruning as tp
from torch import nn

from elastiserve_store.slots import (
    Axis,
    Composite,
    Widths,
    slot_groups,
    slot_tag,
    tensor_slots,
    widths_of,
)

from .importance import Batch, ImportanceStrategy

Kept = dict[str, torch.Tensor]
"""Per slot, the sorted original indices of the channels still present."""

_EPS = 1e-6


def classifier_heads(model: nn.Module) -> list[nn.Module]:
    """The per-level linear heads: kept whole (their output is the class dimension)."""
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) and (t := slot_tag(m)) is not None and t.per_level]


def target_widths(full: Widths, keep: float, groups: Mapping[str, int] | None = None) -> Widths:
    """Channels per slot at ``keep`` (floor, as Torch-Pruning's local pruning computes it); a
    slot in ``groups[slot]`` groups keeps the same count in every group, the floor of each
    group's share (Torch-Pruning ranks one group's worth, averaged over the groups)."""
    g = dict(groups or {})
    widths = {s: g.get(s, 1) * math.floor(n // g.get(s, 1) * keep + _EPS * (n // g.get(s, 1)))
              for s, n in full.items()}
    empty = sorted(s for s, w in widths.items() if w < 1)
    if empty:
        raise ValueError(f"keep ratio {keep} leaves no channel in slots {empty}; "
                         f"use a wider model or a larger ratio")
    return widths


class ChainPruner:
    """Prune one model in place through a decreasing list of keep ratios (of the original).

    Local (per-group) pruning with the same ratio for every slot keeps each level's shape
    predictable (``target_widths``) and makes consecutive steps nest: what step t keeps is a
    subset of what step t-1 kept.
    """

    def __init__(self, model: nn.Module, example_inputs: torch.Tensor,
                 strategy: ImportanceStrategy, keep_ratios: Sequence[float]) -> None:
        self.model = model
        self.strategy = strategy
        self.full = widths_of(model)
        self.groups = slot_groups(tensor_slots(model))
        self.targets = [target_widths(self.full, k, self.groups) for k in keep_ratios]
        self.kept: Kept = {s: torch.arange(n) for s, n in self.full.items()}
        ratios = [0.0] + [max(0.0, 1.0 - k - _EPS) for k in keep_ratios]
        self.pruner = tp.pruner.BasePruner(
            model,
            example_inputs,
            importance=strategy.importance,
            pruning_ratio=ratios[-1],
            iterative_steps=len(keep_ratios),
            iterative_pruning_ratio_scheduler=lambda _ratio, _steps: ratios,
            ignored_layers=classifier_heads(model),
            global_pruning=False,
        )
        self._seen = 0
        self.step_index = 0

    def step(self, batches: Iterable[Batch] = ()) -> Kept:
        """Run one pruning step; returns the original indices kept per slot afterwards."""
        self.strategy.prepare(self.model, batches)
        self.pruner.step()
        self.model.zero_grad(set_to_none=True)
        history = self.pruner.pruning_history()
        for name, is_out, idxs in history[self._seen:]:
            info = slot_tag(self.model.get_submodule(name))
            side = None if info is None else (info.out_side if is_out else info.in_side)
            for slot, local in self._by_slot(name, side, idxs).items():
                drop = torch.zeros(len(self.kept[slot]), dtype=torch.bool)
                drop[local] = True
                self.kept[slot] = self.kept[slot][~drop]
        self._seen = len(history)
        got = widths_of(self.model)
        want = self.targets[self.step_index]
        if got != want or any(len(self.kept[s]) != w for s, w in got.items()):
            raise RuntimeError(f"pruning step {self.step_index} reached {got}, expected {want}")
        self.step_index += 1
        return {s: v.clone() for s, v in self.kept.items()}

    def _by_slot(self, name: str, side: Axis, idxs: Iterable[int]) -> dict[str, torch.Tensor]:
        """Pruned positions on one side of layer ``name`` (as it is now), per slot: on a
        concatenated side each part starts where the parts before it end at their current
        widths; a grouped slot's positions are its own (every group's)."""
        pos = torch.as_tensor(list(idxs), dtype=torch.long)
        if isinstance(side, str):
            return {side: pos}
        if not isinstance(side, Composite) or side.one_group:
            raise RuntimeError(f"pruned layer {name} has no slot for that side")
        out: dict[str, torch.Tensor] = {}
        start = 0
        for part in side.parts:
            size = part.size if part.slot is None else len(self.kept[part.slot])
            inside = (pos >= start) & (pos < start + size)
            if part.slot is not None:
                out[part.slot] = pos[inside] - start
            elif bool(inside.any()):
                raise RuntimeError(f"pruning removed channels of {name} that no slot holds")
            start += size
        return out
