"""Importance strategies: Torch-Pruning importance objects plus whatever they need first.

Magnitude needs only the weights; Taylor needs the gradient of the loss on a few batches;
Hessian (Optimal Brain Damage) needs squared per-sample gradients accumulated. Each strategy
exposes ``prepare`` so the pruning code treats them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

Batch = tuple[torch.Tensor, torch.Tensor]

IMPORTANCES = ("l1", "l2", "taylor", "hessian")


@dataclass
class ImportanceStrategy:
    """A Torch-Pruning importance and the preparation it needs before each pruning step."""

    name: str
    importance: Any
    prepare: Callable[[nn.Module, Iterable[Batch]], None]


def _no_prep(model: nn.Module, batches: Iterable[Batch]) -> None:
    del model, batches


def _taylor_prep(model: nn.Module, batches: Iterable[Batch]) -> None:
    model.zero_grad()
    model.eval()  # fixed BN statistics: the gradient should not depend on batch composition
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]


def _hessian_prep(imp: Any) -> Callable[[nn.Module, Iterable[Batch]], None]:
    def prep(model: nn.Module, batches: Iterable[Batch]) -> None:
        imp.zero_grad()
        model.eval()
        # One forward pass per sample: a backward pass from one element of a batched loss
        # still runs through the whole batch's graph, which made this cost a full batch
        # backward per sample (batch size times the work of a one-sample pass).
        # In eval mode the batch norms use their running statistics, so a sample's loss is
        # the same alone as in its batch.
        for x, y in batches:
            for i in range(len(y)):
                model.zero_grad()
                F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()  # type: ignore[no-untyped-call]
                imp.accumulate_grad(model)
    return prep


def make_importance(name: str) -> ImportanceStrategy:
    """``l1``/``l2`` magnitude, ``taylor`` (first order) or ``hessian`` (OBD diagonal)."""
    if name == "l1":
        return ImportanceStrategy(name, tp.importance.MagnitudeImportance(p=1), _no_prep)
    if name == "l2":
        return ImportanceStrategy(name, tp.importance.MagnitudeImportance(p=2), _no_prep)
    if name == "taylor":
        return ImportanceStrategy(name, tp.importance.TaylorImportance(), _taylor_prep)
    if name == "hessian":
        imp = tp.importance.HessianImportance()
        return ImportanceStrategy(name, imp, _hessian_prep(imp))
    raise ValueError(f"unknown importance {name!r}; choose from {', '.join(IMPORTANCES)}")
