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

Models we did not write may have composite axes (:class:`slots.Composite`). A gate is then
the slot's positions on a layer's output axis: after a concatenation, each part's channels at
its offset (a batch norm reading a ``torch.cat``, DenseNet's, is a gate of every part, or its
bias would let a closed channel through); in a grouped slot, its own positions, and a channel
comes back in every group alike (scores averaged over the groups, as Torch-Pruning ranks them).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from elastiserve_store.slots import Axes, Axis, Composite, Widths, slot_tag

from ..pruning import Kept
from .unstructured import RegrowImportance, loss_gradients

Gate = tuple[str, torch.Tensor]
"""A parameter's name and, for channel ``i`` of a slot, the position on its dim 0."""


def slot_positions(axis: Axis, length: int) -> dict[str, torch.Tensor]:
    """Per slot on a full-width output ``axis`` of ``length``, the positions of its channels
    0..n-1 (a grouped slot's own positions are every group's)."""
    if axis is None:
        return {}
    if isinstance(axis, str):
        return {axis: torch.arange(length)}
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for part in axis.parts:
        if part.slot is not None:
            out[part.slot] = torch.arange(part.size) + offset
        offset += part.size
    return out


def gate_parameters(model: nn.Module) -> dict[str, list[Gate]]:
    """Slot -> the parameters whose dim 0 produces (or, after a concatenation, normalises)
    that slot's channels, each with the slot's positions on it.

    The batch norms of the slot's own (their scale and shift), else the weight and bias of the
    layers that output the slot; and, in either case, the batch norms that read it among the
    parts of a concatenation (they would pass their shift on for a closed channel). Without
    concatenations this is the own batch norms or the producing layers, as before.
    """
    bn: dict[str, list[Gate]] = {}
    joined: dict[str, list[Gate]] = {}
    layers: dict[str, list[Gate]] = {}
    params = dict(model.named_parameters())
    for prefix, module in model.named_modules():
        info = slot_tag(module)
        if info is None or info.out_side is None:
            continue
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, nn.BatchNorm2d):
            target = bn if info.out_slot is not None else joined
            names = [dot + "weight", dot + "bias"]
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and not info.per_level:
            target = layers
            names = [dot + "weight"] + ([dot + "bias"] if module.bias is not None else [])
        else:
            continue
        length = params[names[0]].shape[0]
        for slot, pos in slot_positions(info.out_side, length).items():
            target.setdefault(slot, []).extend((name, pos) for name in names)
    return {slot: bn.get(slot, layers.get(slot, [])) + joined.get(slot, [])
            for slot in {*bn, *joined, *layers}}


def _pruned_mask(n: int, kept: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    mask[kept] = False
    return mask


@torch.no_grad()
def close_gates(model: nn.Module, kept: Kept) -> None:
    """Zero the gate of every channel not in ``kept`` (full-width ``model``, in place)."""
    params = dict(model.named_parameters())
    for slot, gates in gate_parameters(model).items():
        for name, pos in gates:
            p = params[name]
            pruned = pos[_pruned_mask(len(pos), kept[slot])].to(p.device)
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
    for slot, gates in gate_parameters(model).items():
        n = len(gates[0][1])
        total = torch.zeros(n)
        for name, pos in gates:
            grad = params[name].grad
            g = torch.zeros_like(params[name]) if grad is None else grad.detach()
            g = g.float().cpu()[pos].reshape(n, -1)
            if importance == "gradient":
                total += g.abs().sum(1)
            else:
                total += (g * reference[name].float().cpu()[pos].reshape(n, -1)).sum(1)
        if importance == "taylor":
            total = total.abs()
        total[kept[slot]] = float("-inf")
        scores[slot] = total
    model.zero_grad(set_to_none=True)
    return scores


def choose_channels(kept: Kept, scores: Mapping[str, torch.Tensor], widths: Widths,
                    full: Widths, groups: Mapping[str, int] | None = None) -> Kept:
    """``kept`` plus, per slot, the best-scored pruned channels up to ``widths[slot]``.

    Slots without a score (no gate found) grow in index order. A slot in ``groups[slot]``
    groups grows alike in every group, by its scores averaged over the groups. Never drops a
    kept channel and never exceeds the width asked for.
    """
    out: Kept = {}
    for slot, have in kept.items():
        want, g = widths[slot], (groups or {}).get(slot, 1)
        if not len(have) <= want <= full[slot] or want % g or len(have) % g:
            raise ValueError(f"slot {slot}: cannot regrow {len(have)} channels to {want} "
                             f"(full width {full[slot]}, {g} groups)")
        score = scores[slot].clone() if slot in scores else torch.zeros(full[slot])
        score[have] = float("-inf")
        share = full[slot] // g
        score = score.view(g, share).mean(0)  # -inf where kept: kept alike in every group
        order = torch.sort(score, descending=True, stable=True).indices
        offsets = order[:(want - len(have)) // g]
        added = (torch.arange(g).view(-1, 1) * share + offsets.view(1, -1)).reshape(-1)
        out[slot] = torch.sort(torch.cat([have, added])).values
    return out


def touching(axes: Axes, shape: tuple[int, ...], inside: Kept, new: Mapping[str, torch.Tensor]
             ) -> torch.Tensor:
    """Boolean mask of a full-width tensor: entries inside ``inside`` on every slotted axis
    that involve at least one ``new`` channel (what reinitialising new channels overwrites)."""
    within = torch.ones(shape, dtype=torch.bool)
    involves = torch.zeros(shape, dtype=torch.bool)
    for dim, axis in enumerate(axes):
        if axis is None:
            continue
        view = [1] * len(shape)
        view[dim] = shape[dim]
        member = _on_axis(axis, inside, shape[dim], unslotted=True)
        fresh = _on_axis(axis, new, shape[dim], unslotted=False)
        within &= member.reshape(view)
        involves |= fresh.reshape(view)
    return within & involves


def _on_axis(axis: Axis, channels: Mapping[str, torch.Tensor], length: int, *,
             unslotted: bool) -> torch.Tensor:
    """Boolean mask of a full-width axis: the positions of ``channels`` (per slot); an
    unslotted part of a concatenation counts as ``unslotted``. On a grouped convolution's
    input axis (one group's share) a position is in when its offset is, in any group."""
    mask = torch.zeros(length, dtype=torch.bool)
    if isinstance(axis, str):
        mask[channels[axis]] = True
        return mask
    if not isinstance(axis, Composite):
        return mask
    if axis.one_group:
        part = axis.parts[0]
        if part.slot is not None:
            mask[channels[part.slot] % (part.size // part.groups)] = True
        return mask
    offset = 0
    for part in axis.parts:
        if part.slot is None:
            mask[offset:offset + part.size] = unslotted
        else:
            mask[channels[part.slot] + offset] = True
        offset += part.size
    return mask
