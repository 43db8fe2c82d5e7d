"""Prune-and-grow state: a full-width master copy plus the nested channel subsets.

Every tensor of the network lives once, at full width and in the *original* channel order, in
``master``. Level k is the sub-network on ``kept[k]`` (sorted original indices per slot). Any
compact level model can be cut out of the master (:meth:`NestedState.level_model`) and written
back into it (:meth:`NestedState.absorb`), which is how pruned channels are "reinserted at
their original positions with their original weights": they were never deleted from the master.

Growing level k into k+1 trains the level-(k+1) model with the gradient of every *shared* tensor
masked to zero on the block that level k uses (:func:`core_masks`), so level k's function is
untouched. Each level owns its batch norms and head (``level_own``), trained at its own width.
:meth:`NestedState.nested_models` finally permutes channels so each level is a prefix.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from elastiserve_store import architectures
from elastiserve_store.slots import (
    TensorSlots,
    Widths,
    expected_shape,
    gather,
    prefix_index,
    read_widths,
    scatter,
    slot_groups,
    tensor_slots,
)

from .pruning import Kept


def _layout(arch: str, arch_args: Mapping[str, Any]) -> dict[str, TensorSlots]:
    """The slot layout of ``arch``: read-only, cached, since a constructor-built model
    (torchvision's EfficientNet) takes a noticeable time to build even on the meta device and
    the layout is consulted once per tensor in the loops below."""
    return _layout_cached(arch, json.dumps(arch_args, sort_keys=True))


@functools.lru_cache(maxsize=16)
def _layout_cached(arch: str, args_json: str) -> dict[str, TensorSlots]:
    with torch.device("meta"):
        return tensor_slots(architectures.build(arch, json.loads(args_json)))


def positions(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """Where each (sorted or not) index of ``small`` sits inside sorted ``big``."""
    pos = torch.searchsorted(big, small)
    if not torch.equal(big[pos.clamp(max=len(big) - 1)], small):
        raise ValueError("channel subsets are not nested")
    return pos


@dataclass
class NestedState:
    """Everything prune-and-grow needs to resume: master weights, subsets, per-level tensors."""

    arch: str
    arch_args: dict[str, Any]
    master: dict[str, torch.Tensor]
    kept: list[Kept] = field(default_factory=list)
    level_own: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    skipped: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Residual blocks each level skips (structure discovery); absent: the level runs all."""

    def build_level(self, k: int, widths: Widths) -> nn.Module:
        """Level ``k``'s architecture at ``widths``, without the blocks it skips."""
        return architectures.build(self.arch, self.arch_args, widths, self.skipped.get(k, ()))

    @classmethod
    def from_model(cls, arch: str, arch_args: Mapping[str, Any], model: nn.Module
                   ) -> NestedState:
        master = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(arch, dict(arch_args), master)

    @property
    def layout(self) -> dict[str, TensorSlots]:
        return _layout(self.arch, self.arch_args)

    def widths(self, k: int) -> Widths:
        return {s: len(v) for s, v in self.kept[k].items()}

    def level_model(self, k: int, *, own_from: int | None = None,
                    per_level_from: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        """Compact level-k model (original channel order) cut from the master.

        Its batch norms and head are level k's own if trained, else taken from the master with
        the positions level ``own_from`` (the core) covers overwritten by that level's own, or,
        with ``per_level_from`` (full-width tensors, e.g. the unpruned baseline's), cut from
        those instead of the master: once a level is absorbed, the master's per-level tensors
        are that level's own on its channels beside the baseline's elsewhere.
        """
        if per_level_from is not None and own_from is not None:
            raise ValueError("own_from and per_level_from are two sources for the same tensors")
        layout = self.layout
        state = {n: gather(t, layout[n].axes, self.kept[k]) for n, t in self.master.items()}
        if k in self.level_own:
            state.update(self.level_own[k])
        elif per_level_from is not None:
            for name, info in layout.items():
                if info.per_level and name in state:
                    if name not in per_level_from:
                        raise ValueError(f"per_level_from has no {name!r}")
                    state[name] = gather(per_level_from[name], info.axes, self.kept[k])
        elif own_from is not None and own_from in self.level_own:
            pos = {s: positions(self.kept[own_from][s], self.kept[k][s]) for s in self.kept[k]}
            for name, value in self.level_own[own_from].items():
                state[name] = scatter(state[name], layout[name].axes, pos, value, self.widths(k))
        model = self.build_level(k, self.widths(k))
        wanted = model.state_dict().keys()
        model.load_state_dict({n: state[n] for n in wanted}, strict=True)
        return model

    def absorb(self, model: nn.Module, kept: Kept, *, level: int | None = None) -> None:
        """Write a compact model's tensors back into the master at ``kept``.

        With ``level`` set, its per-level tensors are also recorded as that level's own.
        """
        layout = self.layout
        state = {n: t.detach().cpu() for n, t in model.state_dict().items()}
        for name, value in state.items():  # a skipped block has no tensors: master keeps it
            self.master[name] = scatter(self.master[name], layout[name].axes, kept, value)
        if level is not None:
            self.level_own[level] = {n: v.clone() for n, v in state.items()
                                     if layout[n].per_level}

    def slot_sizes(self) -> Widths:
        """Full channel count per slot, read from the master tensors."""
        layout = self.layout
        return read_widths(layout, {n: tuple(self.master[n].shape) for n in layout})

    def nested_order(self) -> dict[str, torch.Tensor]:
        """Per slot: level 0's channels, then those level 1 adds, ... then any never kept.

        A grouped slot is ordered so inside each of its groups (the groups stay where they
        are): a level keeps the same prefix of every group, as a grouped convolution needs.
        """
        order: dict[str, torch.Tensor] = {}
        groups = slot_groups(self.layout)
        for slot, full in self.slot_sizes().items():
            share = full // groups.get(slot, 1)
            segments = []
            for start in range(0, full, share):
                seen = torch.zeros(full, dtype=torch.bool)
                seen[:start] = True
                seen[start + share:] = True
                for kept in self.kept:
                    new = kept[slot][~seen[kept[slot]]]
                    segments.append(new)
                    seen[new] = True
                segments.append(torch.nonzero(~seen).flatten())
            order[slot] = torch.cat(segments)
        return order

    def nested_index(self, k: int, order: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Level ``k``'s channels (original indices) in nested ``order``: its prefix of every
        slot, of every group in a grouped slot."""
        groups = slot_groups(self.layout)
        return {s: o[prefix_index(len(o), len(self.kept[k][s]), groups.get(s, 1))]
                for s, o in order.items()}

    def nested_models(self) -> list[nn.Module]:
        """Each level (smallest first) with channels permuted so it is a prefix of the next.

        Functionally identical to :meth:`level_model`: a consistent permutation of every
        coupled axis does not change what a network computes.
        """
        order = self.nested_order()
        layout = self.layout
        models = []
        for k in range(len(self.kept)):
            w = self.widths(k)
            idx = self.nested_index(k, order)
            pos = {s: positions(idx[s], self.kept[k][s]) for s in idx}
            own = self.level_own[k]
            state = {}
            model = self.build_level(k, w)
            for name in model.state_dict():
                if layout[name].per_level:
                    state[name] = gather(own[name], layout[name].axes, pos, w)
                else:
                    state[name] = gather(self.master[name], layout[name].axes, idx)
            model.load_state_dict(state, strict=True)
            models.append(model.eval())
        return models

    # ------------------------------------------------------------------ persistence

    def save(self, path_stem: Path) -> None:
        """``<stem>.safetensors`` (tensors) + ``<stem>.json`` (subsets): no pickle."""
        tensors = {f"master.{n}": t.contiguous() for n, t in self.master.items()}
        for k, own in self.level_own.items():
            tensors.update({f"own.{k}.{n}": t.contiguous() for n, t in own.items()})
        tmp = path_stem.with_suffix(".safetensors.tmp")
        save_file(tensors, str(tmp))
        tmp.replace(path_stem.with_suffix(".safetensors"))
        meta = {"arch": self.arch, "arch_args": self.arch_args,
                "kept": [{s: v.tolist() for s, v in kept.items()} for kept in self.kept],
                "skipped": {str(k): list(v) for k, v in self.skipped.items()}}
        tmp_json = path_stem.with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(meta), encoding="utf-8")
        tmp_json.replace(path_stem.with_suffix(".json"))

    @classmethod
    def load(cls, path_stem: Path) -> NestedState:
        meta = json.loads(path_stem.with_suffix(".json").read_text(encoding="utf-8"))
        tensors = load_file(str(path_stem.with_suffix(".safetensors")))
        master = {n[len("master."):]: t for n, t in tensors.items() if n.startswith("master.")}
        own: dict[int, dict[str, torch.Tensor]] = {}
        for n, t in tensors.items():
            if n.startswith("own."):
                _, k, rest = n.split(".", 2)
                own.setdefault(int(k), {})[rest] = t
        kept = [{s: torch.tensor(v, dtype=torch.long) for s, v in level.items()}
                for level in meta["kept"]]
        skipped = {int(k): tuple(v) for k, v in meta.get("skipped", {}).items()}
        return cls(meta["arch"], meta["arch_args"], master, kept, own, skipped)


class WiderView:
    """A wider level as it stands while level ``k`` is tuned, sharing that level's weights.

    Every channel level ``k`` does not use keeps its master value, which for channels no level
    has tuned yet is the *original* weight they will be reinserted with. A loss on this view's
    output therefore trains the level's shared weights to also work beside those original
    channels: the wider levels later freeze them, and a core that drifted where the reinserted
    channels do not fit costs the wider levels accuracy no growth stage can win back.

    Batch norms and head come from ``per_level_from`` (full-width tensors, the unpruned
    baseline's in the pipeline) and stay fixed; only ``level``'s parameters get gradients. Not
    the master's: once a level is absorbed, the master's per-level tensors hold that level's own
    on its channels (its head's columns, its batch norms) beside the baseline's elsewhere, a
    network no level ever was. On the ResNet-20 benchmark the full network cut from the master
    after the core stage scores 0.45 with recalibrated batch statistics, the baseline's batch
    norms and head on the same shared weights 0.93; a loss on the first pulled every growth
    stage's weights toward repairing that mix.
    """

    def __init__(self, state: NestedState, k: int, level: nn.Module, wider: int, *,
                 per_level_from: Mapping[str, torch.Tensor]) -> None:
        if state.skipped:
            raise ValueError("a full-network loss needs every level to run every block")
        if not k < wider < len(state.kept):
            raise ValueError(f"level {wider} is not wider than level {k}")
        layout = state.layout
        self.net = state.level_model(wider, per_level_from=per_level_from)
        self.net.requires_grad_(False)
        self.axes = {name: layout[name].axes for name, _ in level.named_parameters()
                     if not layout[name].per_level}
        self.live = dict(level.named_parameters())
        self.pos = {s: positions(state.kept[k][s], state.kept[wider][s]) for s in state.kept[k]}
        self.sizes = state.widths(wider)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The wider level's logits (batch statistics in its batch norms: training mode)."""
        self.net.train()
        frozen = dict(self.net.named_parameters())
        params = {name: scatter(frozen[name], axes, self.pos, self.live[name], self.sizes)
                  for name, axes in self.axes.items()}
        out: torch.Tensor = functional_call(self.net, params, (x,))
        return out


def core_masks(model: nn.Module, core: Kept, kept: Kept) -> dict[str, torch.Tensor]:
    """Gradient masks for growing: 0 on the block of each shared tensor that ``core`` uses.

    ``model`` is the compact model on ``kept``; per-level tensors (BN, head) get no mask.
    """
    layout = tensor_slots(model)
    pos = {s: positions(core[s], kept[s]) for s in kept}
    sizes = {s: len(v) for s, v in kept.items()}
    core_widths = {s: len(v) for s, v in core.items()}
    masks: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        info = layout[name]
        if info.per_level:
            continue
        core_shape = expected_shape(tuple(param.shape), info.axes, core_widths)
        masks[name] = scatter(torch.ones_like(param, device="cpu"), info.axes, pos,
                              torch.zeros(core_shape), sizes).to(param.device)
    return masks


def check_nested(kept: Sequence[Kept]) -> None:
    """Raise unless every level's channels are a subset of the next level's, in every slot."""
    for k in range(1, len(kept)):
        for slot, small in kept[k - 1].items():
            if not bool(torch.isin(small, kept[k][slot]).all()):
                raise ValueError(f"level {k - 1} is not nested in level {k} at slot {slot}")
