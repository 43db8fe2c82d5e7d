"""Unstructured (weight-level) pruning and regrowth as pure tensor functions.

Masks are boolean tensors, one per prunable weight (every conv and linear weight; batch norms
and biases stay dense, they are a rounding error in size). Pruning keeps the globally largest
magnitudes; regrowth scores the *pruned* positions and re-activates the best ones:

* ``gradient``: |dL/dw| at the pruned position (the loss falls fastest if that weight moves:
  RigL's criterion);
* ``taylor``: |dL/dw * w_ref|, the first-order change of the loss if the weight got its
  reference (pre-pruning) value back.

A regrown weight is either *restored* to that reference value or *reinitialised* at zero (as
RigL grows connections, so the network's function is unchanged until fine-tuning moves it).
The regrowth step only ever writes grown positions: every other value is returned as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from elastiserve_store.profile import probe_forward

Masks = dict[str, torch.Tensor]
"""Prunable weight name -> boolean tensor, True where the weight is active."""

RegrowImportance = Literal["gradient", "taylor"]
RegrowInit = Literal["restore", "reinit"]
REGROW_IMPORTANCES: tuple[RegrowImportance, ...] = ("gradient", "taylor")
REGROW_INITS: tuple[RegrowInit, ...] = ("restore", "reinit")


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the weights that pruning may zero: every conv and linear weight."""
    return [f"{prefix}.weight" if prefix else "weight"
            for prefix, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def check_sparsity(sparsity: float) -> float:
    """Refuse a sparsity outside [0, 1): at 1 nothing would be left to compute with."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return sparsity


def magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> Masks:
    """Keep the ``round((1 - sparsity) * N)`` largest magnitudes over all weights together.

    Ties are broken by position (stable), so the same weights always give the same masks.
    Weights that are already zero rank last, so raising the sparsity of a pruned network
    never re-activates a weight.
    """
    check_sparsity(sparsity)
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights.values()])
    keep = round((1.0 - sparsity) * flat.numel())
    active = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        active[order[:keep]] = True
    return _split(active, weights)


def _split(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    start = 0
    for name, w in like.items():
        n = w.numel()
        out[name] = flat[start:start + n].reshape(w.shape).to(w.device)
        start += n
    return out


def sparsity_of(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of prunable weights that are inactive."""
    total = sum(m.numel() for m in masks.values())
    active = sum(int(m.sum()) for m in masks.values())
    return 1.0 - active / max(1, total)


def active_count(masks: Mapping[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every inactive weight of ``model`` in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].device, params[name].dtype))


def float_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Gradient masks for :func:`elastiserve_train.loop.train`: inactive weights stay zero."""
    return {n: m.float() for n, m in masks.items()}


def pruned_scores(model: nn.Module, masks: Mapping[str, torch.Tensor],
                  reference: Mapping[str, torch.Tensor],
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  importance: RegrowImportance) -> dict[str, torch.Tensor]:
    """Importance of every pruned position (``-inf`` at active ones), from a few batches.

    The gradient is taken in eval mode (fixed batch-norm statistics), summed over batches,
    at the masked network's current point: the pruned weights are zero there.
    """
    params = loss_gradients(model, batches, importance)
    scores: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        grad = params[name].grad
        g = torch.zeros_like(params[name]) if grad is None else grad.detach()
        score = g.abs() if importance == "gradient" else (g * reference[name].to(g.device)).abs()
        scores[name] = score.float().cpu().masked_fill(mask.cpu(), float("-inf"))
    model.zero_grad(set_to_none=True)
    return scores


def regrow_masks(masks: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
                 count: int) -> tuple[Masks, Masks]:
    """Activate the ``count`` best-scored pruned positions; returns (new masks, grown).

    Never grows more than ``count`` nor any position that was active; if fewer than ``count``
    positions are pruned, all of them grow. Ties are broken by position.
    """
    if count < 0:
        raise ValueError(f"cannot regrow a negative number of weights ({count})")
    names = list(masks)
    was = torch.cat([masks[n].flatten().cpu() for n in names])
    flat = torch.cat([scores[n].flatten().float().cpu() for n in names])
    flat = flat.masked_fill(was, float("-inf"))
    n = min(count, int((~was).sum()))
    grown = torch.zeros_like(was)
    if n > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        grown[order[:n]] = True
    grown &= ~was
    grown_masks = _split(grown, masks)
    new = {name: masks[name] | grown_masks[name].to(masks[name].device) for name in names}
    return new, grown_masks


def grown_values(weights: Mapping[str, torch.Tensor], grown: Mapping[str, torch.Tensor],
                 reference: Mapping[str, torch.Tensor], init: RegrowInit
                 ) -> dict[str, torch.Tensor]:
    """New weight tensors: grown positions restored (or zeroed), every other value kept."""
    if init not in REGROW_INITS:
        raise ValueError(f"unknown regrowth init {init!r}; choose from {', '.join(REGROW_INITS)}")
    out: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        g = grown[name].to(w.device)
        fill = reference[name].to(w.device, w.dtype) if init == "restore" else torch.zeros_like(w)
        out[name] = torch.where(g, fill, w.detach())
    return out


@torch.no_grad()
def mac_factors(model: nn.Module, input_shape: tuple[int, int, int]) -> dict[str, int]:
    """MACs each element of a prunable weight costs per image (its output positions).

    A conv's MACs are (output height x width) x weight elements / groups-adjusted, a linear
    layer's its weight elements; with a sparse kernel a zero weight costs nothing, so the
    theoretical sparse MACs are the sum of factor x nonzeros.
    """
    factors: dict[str, int] = {}
    handles = []
    names: dict[nn.Module, str] = {m: f"{p}.weight" if p else "weight"
                                   for p, m in model.named_modules()
                                   if isinstance(m, (nn.Conv2d, nn.Linear))}

    def hook(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        factors[names[mod]] = int(out[0][0].numel()) if isinstance(mod, nn.Conv2d) else 1

    for mod in names:
        handles.append(mod.register_forward_hook(hook))
    probe_forward(model, input_shape, handles)
    return factors


def sparse_macs(counts: Mapping[str, int], factors: Mapping[str, int]) -> int:
    """Theoretical MACs with ``counts[name]`` active elements in each prunable weight."""
    return sum(factors[name] * n for name, n in counts.items())


def loss_gradients(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   importance: str) -> dict[str, nn.Parameter]:
    """Accumulate the loss gradient over ``batches`` into ``.grad``; the parameters by name.

    Eval mode, so batch-norm statistics stay fixed while scoring. Shared by the weight and
    the channel regrowth scores, which differ only in what they read from the gradients.
    """
    if importance not in REGROW_IMPORTANCES:
        raise ValueError(f"unknown regrowth importance {importance!r}; choose from "
                         f"{', '.join(REGROW_IMPORTANCES)}")
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        F.cross_entropy(model(x.to(device)), y.to(device)).backward()  # type: ignore[no-untyped-call]
    return params
