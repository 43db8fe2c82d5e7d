"""Diagonal Fisher information of a trained model: how much each weight matters to its loss.

Prune-and-grow's anchor (``--anchor``) holds shared weights near the unpruned model's so that
the wider levels, which keep them frozen, lose little. A uniform pull spends the same
constraint on every weight, though most of them barely matter to the full model. Weighting the
pull by the full model's diagonal Fisher (elastic weight consolidation, Kirkpatrick et al.
2017) frees the core to move where the full model does not care and holds it where it does:
to second order, the full model's loss grows by ``1/2 * sum F_i * dw_i^2``, which is what the
weighted pull keeps small.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import loop
from .data import ImageSet


def diagonal_fisher(model: nn.Module, data: ImageSet, mean: torch.Tensor, std: torch.Tensor,
                    *, batches: int = 200, batch_size: int = 32, seed: int = 0
                    ) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the loss per parameter, over ``batches`` training batches.

    Gradients of mini-batches (not of single images) keep this cheap; the pull uses the
    values only relative to each other (:func:`normalised`), which that scale does not change.
    The model's training-mode state is restored and its weights are untouched.
    """
    if batches < 1:
        raise ValueError(f"need at least one batch for the Fisher estimate, got {batches}")
    was_training = model.training
    model.eval()  # the statistics of the trained model, not of these batches
    params = dict(model.named_parameters())
    fisher = {name: torch.zeros_like(p) for name, p in params.items()}
    seen = 0
    for x, y in loop.batches(data, mean, std, batch_size, seed, train=True, shard=False,
                             augmentation=False):
        if seen >= batches:
            break
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach() ** 2
        seen += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {name: f / seen for name, f in fisher.items()}


def normalised(fisher: dict[str, torch.Tensor], names: list[str], cap: float = 10.0
               ) -> dict[str, torch.Tensor]:
    """``fisher`` on ``names`` divided by its mean over them, at most ``cap``.

    Dividing by the mean makes a pull of strength S weigh, on average, what a uniform pull of
    strength S would. The Fisher diagonal is heavy-tailed (a few weights hundreds of times the
    mean); uncapped, those would get a pull so stiff that SGD oscillates on them (the update is
    stable only while learning rate x pull stays well under 2), and a weight held ``cap`` times
    harder than average is as good as frozen already.
    """
    total = sum(float(fisher[n].sum()) for n in names)
    count = sum(fisher[n].numel() for n in names)
    if total <= 0.0:
        raise ValueError("the Fisher estimate is zero everywhere: the model has no gradient")
    scale = count / total
    return {n: (fisher[n] * scale).clamp(max=cap) for n in names}
