"""Structured regrowth: score the pruned *channels* of each slot and choose which come back.

To score a pruned channel by the gradient we need a network in which the channel exists but
does not yet change the output. We build the full-width network from the master weights and
close each pruned channel's *gate*: the batch-norm scale and shift that produce it (or, for a
slot without batch norm such as a hidden fully connected layer, the producing layer's rows and
bias) are set to zero, so the channel outputs exactly zero and the network computes what the
pruned level computes. The gradient of the loss with respect to those gate parameters then
says how much opening the channel would help:

* ``gradient``: sum of |dL/dg| over the channel's gate parameters;
* ``taylor``: |sum of dL/dg * g_ref|, the first-order change of the loss when the gate gets its
  reference (pre-pruning) value back, which is what *restore* regrowth does.

Per slot, the requested number of best-scored pruned channels is added; the widths themselves
come from the keep ratio (as pruning's), so every level has a predictable shape.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from elastiserve_store.slots import Axes, Widths, slot_tag

from ..pruning import Kept
from .unstructured import RegrowImportance, loss_gradients


def gate_parameters(model: nn.Module) -> dict[str, list[str]]:
    """Slot -> names of the parameters whose dim 0 produces that slot's channels.

    Batch norms where a slot has them (their scale and shift), else the weight and bias of the
    layers that output the slot.
    """
    bn: dict[str, list[str]] = {}
    layers: dict[str, list[str]] = {}
    for prefix, module in model.named_modules():
        info = slot_tag(module)
        if info is None or info.out_slot is None:
            continue
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, nn.BatchNorm2d):
            bn.setdefault(info.out_slot, []).extend([dot + "weight", dot + "bias"])
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not info.per_level:
            names = [dot + "weight"] + ([dot + "bias"] if module.bias is not None else [])
            layers.setdefault(info.out_slot, []).extend(names)
    return {slot: bn.get(slot, layers.get(slot, [])) for slot in {*bn, *layers}}


def _pruned_mask(n: int, kept: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[kept] = False
    return mask


@torch.no_grad()
def close_gates(model: nn.Module, kept: Kept) -> None:
    """Zero the gate of every channel not in ``kept`` (full-width ``model``, in place)."""
    params = dict(model.named_parameters())
    for slot, names in gate_parameters(model).items():
        for name in names:
            p = params[name]
            pruned = _pruned_mask(p.shape[0], kept[slot]).to(p.device)
            p[pruned] = 0


def channel_scores(model: nn.Module, kept: Kept, reference: Mapping[str, torch.Tensor],
                   batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   importance: RegrowImportance) -> dict[str, torch.Tensor]:
    """Per slot, a score for every channel (``-inf`` for those already kept).

    ``model`` is the full-width network with the pruned gates closed (:func:`close_gates`);
    ``reference`` holds the gate parameters' pre-pruning values (for ``taylor``).
    """
    params = loss_gradients(model, batches, importance)
    scores: dict[str, torch.Tensor] = {}
    for slot, names in gate_parameters(model).items():
        n = params[names[0]].shape[0]
        total = torch.zeros(n)
        for name in names:
            grad = params[name].grad
            g = torch.zeros_like(params[name]) if grad is None else grad.detach()
            g = g.float().cpu().reshape(n, -1)
            if importance == "gradient":
                total += g.abs().sum(1)
            else:
                total += (g * reference[name].float().cpu().reshape(n, -1)).sum(1)
        if importance == "taylor":
            total = total.abs()
        total[kept[slot]] = float("-inf")
        scores[slot] = total
    model.zero_grad(set_to_none=True)
    return scores


def choose_channels(kept: Kept, scores: Mapping[str, torch.Tensor], widths: Widths,
                    full: Widths) -> Kept:
    """``kept`` plus, per slot, the best-scored pruned channels up to ``widths[slot]``.

    Slots without a score (no gate found) grow in index order. Never drops a kept channel and
    never exceeds the width asked for.
    """
    out: Kept = {}
    for slot, have in kept.items():
        want = widths[slot]
        if not len(have) <= want <= full[slot]:
            raise ValueError(f"slot {slot}: cannot regrow {len(have)} channels to {want} "
                             f"(full width {full[slot]})")
        score = scores[slot].clone() if slot in scores else torch.zeros(full[slot])
        score[have] = float("-inf")
        order = torch.sort(score, descending=True, stable=True).indices
        out[slot] = torch.sort(torch.cat([have, order[:want - len(have)]])).values
    return out


def touching(axes: Axes, shape: tuple[int, ...], inside: Kept, new: Mapping[str, torch.Tensor]
             ) -> torch.Tensor:
    """Boolean mask of a full-width tensor: entries inside ``inside`` on every slotted axis
    that involve at least one ``new`` channel (what reinitialising new channels overwrites)."""
    within = torch.ones(shape, dtype=torch.bool)
    involves = torch.zeros(shape, dtype=torch.bool)
    for dim, slot in enumerate(axes):
        if slot is None:
            continue
        if not isinstance(slot, str):  # concatenated/grouped axes: constructor-built models only
            raise ValueError(f"regrowth takes the in-project architectures only, not {slot}")
        view = [1] * len(shape)
        view[dim] = shape[dim]
        member = torch.zeros(shape[dim], dtype=torch.bool)
        member[inside[slot]] = True
        fresh = torch.zeros(shape[dim], dtype=torch.bool)
        fresh[new[slot]] = True
        within &= member.reshape(view)
        involves |= fresh.reshape(view)
    return within & involves
