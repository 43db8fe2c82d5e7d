"""The unstructured trajectory: prune to extreme sparsity (one-shot or iterative), regrow.

Every point of the trajectory (dense, each pruned sparsity, each regrowth step) is fine-tuned
with gradient masks (pruned weights stay exactly zero), evaluated, and written with
:func:`elastiserve_store.sparse.write_sparse`, so ``size_bytes`` is what that point really
takes on disk. The reference weights that *restore* regrowth brings back, and that Taylor
scores against, are the dense network's before any pruning.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from elastiserve_store.sparse import choose_encoding, payload_bytes, size_on_disk, write_sparse

from .. import loop
from ..data import Dataset
from .budget import Budget, least_sparsity_within
from .unstructured import (
    Masks,
    RegrowImportance,
    RegrowInit,
    active_count,
    apply_masks,
    check_sparsity,
    float_masks,
    grown_values,
    mac_factors,
    magnitude_masks,
    prunable_names,
    pruned_scores,
    regrow_masks,
    sparse_macs,
    sparsity_of,
)

MAX_SPARSITY = 0.999
"""The most extreme sparsity a budget may ask for: one weight in a thousand left."""


@dataclass(frozen=True)
class SparseConfig:
    """How each step is fine-tuned and how regrowth chooses and initialises weights."""

    importance: RegrowImportance = "taylor"
    init: RegrowInit = "restore"
    prune_epochs: float = 1.0
    """Fine-tuning after an intermediate step of the iterative schedule."""
    core_epochs: float = 1.0
    """Fine-tuning after reaching a pruned point from the dense network (one-shot) or the
    last step of the iterative schedule."""
    grow_epochs: float = 1.0
    lr: float = 0.05
    batch_size: int = 128
    calib_batches: int = 4
    seed: int = 0


@dataclass(frozen=True)
class Point:
    """One evaluated network of the trajectory."""

    name: str
    phase: str
    schedule: str
    sparsity: float
    accuracy: float
    size_bytes: int
    macs: int
    params: int
    train_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SparseTrajectory:
    """Prunes and regrows one trained dense network, recording a :class:`Point` per step."""

    def __init__(self, dense: nn.Module, data: Dataset, cfg: SparseConfig, store: Path,
                 on_point: Callable[[Point], None] | None = None,
                 metadata: dict[str, Any] | None = None) -> None:
        """``metadata`` (e.g. architecture and its arguments) goes into every artifact, so a
        reader can rebuild the network from the stored tensors."""
        self.metadata = dict(metadata or {})
        self.dense_state = {k: v.detach().clone() for k, v in dense.state_dict().items()}
        self.data = data
        self.cfg = cfg
        self.store = store
        self.on_point = on_point
        self.names = prunable_names(dense)
        params = dict(dense.named_parameters())
        self.reference = {n: params[n].detach().clone() for n in self.names}
        self.factors = mac_factors(dense, data.input_shape)
        self.mean = torch.tensor(data.mean)
        self.std = torch.tensor(data.std)
        self._salt = 0

    # ----------------------------------------------------------------- pieces

    def fresh_model(self, like: nn.Module) -> nn.Module:
        """A copy of ``like`` with the dense reference weights loaded."""
        model = copy.deepcopy(like)
        model.load_state_dict(self.dense_state)
        return model

    def _fine_tune(self, model: nn.Module, masks: Masks, epochs: float) -> float:
        if epochs <= 0:
            return 0.0
        self._salt += 1
        start = time.perf_counter()
        loop.train(model, self.data.train, self.mean, self.std,
                   loop.TrainConfig(epochs=epochs, lr=self.cfg.lr,
                                    batch_size=self.cfg.batch_size,
                                    seed=self.cfg.seed * 7919 + 500 + self._salt),
                   masks=float_masks(masks))
        return time.perf_counter() - start

    def _weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        return {n: params[n].detach() for n in self.names}

    def record(self, model: nn.Module, masks: Masks, name: str, phase: str, schedule: str,
               seconds: float) -> Point:
        """Evaluate ``model``, store it sparsely under ``store/name`` and report the point."""
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        size = write_sparse(self.store / name, state, {
            **self.metadata, "phase": phase, "schedule": schedule,
            "sparsity": sparsity_of(masks)})
        counts = {n: int(m.sum()) for n, m in masks.items()}
        dense_rest = sum(p.numel() for n, p in model.named_parameters() if n not in masks)
        point = Point(
            name=name, phase=phase, schedule=schedule, sparsity=sparsity_of(masks),
            accuracy=loop.evaluate(model, self.data.test, self.mean, self.std),
            size_bytes=size, macs=sparse_macs(counts, self.factors),
            params=active_count(masks) + dense_rest, train_seconds=seconds)
        if self.on_point is not None:
            self.on_point(point)
        return point

    def prune(self, model: nn.Module, sparsity: float, epochs: float) -> tuple[Masks, float]:
        """Magnitude-prune ``model`` (its current weights) to ``sparsity`` and fine-tune it."""
        masks = magnitude_masks(self._weights(model), check_sparsity(sparsity))
        apply_masks(model, masks)
        return masks, self._fine_tune(model, masks, epochs)

    def regrow(self, model: nn.Module, masks: Masks, sparsity: float) -> tuple[Masks, float]:
        """Regrow the best-scored pruned weights down to ``sparsity`` and fine-tune."""
        check_sparsity(sparsity)
        total = sum(m.numel() for m in masks.values())
        count = max(0, round((1.0 - sparsity) * total) - active_count(masks))
        calib = list(loop.batches(self.data.train, self.mean, self.std, self.cfg.batch_size,
                                  self.cfg.seed + 77, train=True, shard=False,
                                  augmentation=False))[:self.cfg.calib_batches]
        scores = pruned_scores(model, masks, self.reference, calib, self.cfg.importance)
        new_masks, grown = regrow_masks(masks, scores, count)
        values = grown_values(self._weights(model), grown, self.reference, self.cfg.init)
        with torch.no_grad():
            params = dict(model.named_parameters())
            for name, value in values.items():
                params[name].copy_(value)
        return new_masks, self._fine_tune(model, new_masks, self.cfg.grow_epochs)

    # ----------------------------------------------------------------- budgets

    def sparsity_for(self, budget: Budget, template: nn.Module) -> float:
        """Least sparsity (global magnitude on the dense weights) that meets ``budget``."""
        weights = {n: self.reference[n].cpu() for n in self.names}
        flat = torch.cat([w.abs().flatten().float() for w in weights.values()])
        order = torch.sort(flat, descending=True, stable=True).indices
        owner = torch.cat([torch.full((w.numel(),), i, dtype=torch.long)
                           for i, w in enumerate(weights.values())])[order]
        sizes = [w.numel() for w in weights.values()]
        itemsize = [w.element_size() for w in weights.values()]

        def counts(s: float) -> list[int]:
            keep = round((1.0 - s) * flat.numel())
            return torch.bincount(owner[:keep], minlength=len(sizes)).tolist()

        if budget.kind == "bytes":
            state = {k: v.cpu() for k, v in template.state_dict().items()}
            rest = sum(payload_bytes(choose_encoding(t.numel(), int((t != 0).sum()),
                                                     t.element_size()),
                                     t.numel(), int((t != 0).sum()), t.element_size())
                       for k, t in state.items() if k not in weights)
            dense_all = {k: v.cpu() for k, v in self.dense_state.items()}
            overhead = size_on_disk_of(dense_all, self.store / ".budget-probe") - int(sum(
                t.numel() * t.element_size() for t in dense_all.values()))
            margin = 160 * len(weights)

            def cost(s: float) -> float:
                payload: int = sum(payload_bytes(choose_encoding(n, c, b), n, c, b)
                              for n, c, b in zip(sizes, counts(s), itemsize, strict=True))
                return float(payload + rest + overhead + margin)
        else:
            dense_macs = sum(self.factors[n] * w.numel() for n, w in weights.items())
            scale = 1.0 / dense_macs if budget.kind == "macs_ratio" else 1.0
            factors = [self.factors[n] for n in weights]

            def cost(s: float) -> float:
                return scale * float(sum(f * c for f, c in
                                         zip(factors, counts(s), strict=True)))

        return least_sparsity_within(cost, budget, max_sparsity=MAX_SPARSITY)

    # ----------------------------------------------------------------- trajectories

    def run(self, template: nn.Module, prune_to: Sequence[float], regrow_to: Sequence[float],
            schedule: str) -> list[Point]:
        """Prune through ``prune_to`` (ascending), then regrow through ``regrow_to`` (descending).

        ``one-shot``: each pruned point is pruned from the dense network in one step;
        ``iterative``: each is pruned from the previous one. Regrowth starts from the last
        (most extreme) pruned point either way.
        """
        if list(prune_to) != sorted(prune_to) or not prune_to:
            raise ValueError("pruning sparsities must be given in ascending order")
        if list(regrow_to) != sorted(regrow_to, reverse=True) or (
                regrow_to and regrow_to[0] >= prune_to[-1]):
            raise ValueError("regrowth sparsities must descend from below the pruned sparsity")
        points: list[Point] = []
        model = self.fresh_model(template)
        masks: Masks = {}
        seconds = 0.0
        for i, s in enumerate(prune_to):
            if schedule == "one-shot":
                model = self.fresh_model(template)
                masks, took = self.prune(model, s, self.cfg.core_epochs)
                seconds = took
            elif schedule == "iterative":
                last = i == len(prune_to) - 1
                masks, took = self.prune(model, s, self.cfg.core_epochs if last
                                         else self.cfg.prune_epochs)
                seconds += took
            else:
                raise ValueError(f"unknown schedule {schedule!r}")
            points.append(self.record(model, masks, f"{schedule}-pruned-{s:.4f}", "pruned",
                                      schedule, seconds))
        for s in regrow_to:
            masks, took = self.regrow(model, masks, s)
            seconds += took
            points.append(self.record(model, masks, f"{schedule}-regrown-{s:.4f}", "regrown",
                                      schedule, seconds))
        return points


def size_on_disk_of(tensors: dict[str, torch.Tensor], directory: Path) -> int:
    """Bytes ``tensors`` take when written sparsely (written to ``directory``, then removed)."""
    write_sparse(directory, tensors)
    size = int(size_on_disk(directory))
    shutil.rmtree(directory, ignore_errors=True)
    return size
