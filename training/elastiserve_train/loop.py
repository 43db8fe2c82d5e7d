"""Training and evaluation loops, single-process or DDP (``torchrun``, gloo on CPU).

Batches come from in-memory uint8 tensors: a seeded permutation per epoch, sharded by rank,
augmented on the batch. Growing a level passes gradient masks: they are applied *after* the
backward pass (so after DDP's all-reduce) and weight decay is added to the gradient by hand
before masking, so masked weights receive exactly zero update (optimiser weight decay would
otherwise still shrink the frozen core).

A pruned or regrown level can learn from the unpruned model as well as from the labels
(knowledge distillation, ``TrainConfig.distill``): the teacher's softened outputs say how the
classes relate, which a small fine-tuning budget cannot learn from hard labels alone.

Fine-tuning can also be held near given weights (``TrainConfig.anchor``, the L2-SP penalty
``anchor / 2 * ||w - w_anchor||^2``, added to the gradient by hand in place of weight decay and
before the masks). Prune-and-grow anchors a level's shared weights to the unpruned model's:
every wider level keeps them frozen around weights it was trained with, so the less they drift,
the less the wider levels have to compensate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from .data import ImageSet, augment, normalise
from .schedules import cosine_lr


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for one fine-tuning run."""

    epochs: float
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    seed: int = 0
    augment: bool = True
    distill: float = 0.0
    """Weight of the distillation term (0: labels only, 1: teacher only); needs a teacher."""
    temperature: float = 4.0
    anchor: float = 0.0
    """Strength of the pull toward ``train(anchor_to=...)``'s weights (0: none)."""
    full_loss: float = 0.0
    """Weight of the loss on each of ``train(wider_views=...)``'s outputs, added to the
    model's own."""


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      weight: float, temperature: float) -> torch.Tensor:
    """``(1 - weight) * CE + weight * T^2 * KL(teacher_T || student_T)`` (Hinton et al.).

    The ``T^2`` keeps the soft term's gradient on the same scale as the hard term's whatever
    the temperature, so ``weight`` means the same thing at every ``T``.
    """
    hard = F.cross_entropy(student, labels)
    if weight == 0.0:
        return hard
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1),
                    F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1.0 - weight) * hard + weight * temperature ** 2 * soft


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batches(data: ImageSet, mean: torch.Tensor, std: torch.Tensor, batch_size: int, seed: int,
            *, train: bool, shard: bool = True, augmentation: bool = True
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches; training batches are shuffled, sharded and augmented."""
    n = len(data.labels)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen) if train else torch.arange(n)
    if shard:
        rank, size = world()
        usable = (n // size) * size if train else n
        order = order[:usable][rank::size]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = data.images[idx]
        if train and augmentation:
            x = augment(x, gen)
        yield normalise(x, mean, std), data.labels[idx]


def train(model: nn.Module, data: ImageSet, mean: torch.Tensor, std: torch.Tensor,
          cfg: TrainConfig, *, masks: Mapping[str, torch.Tensor] | None = None,
          teacher: nn.Module | None = None,
          anchor_to: Mapping[str, torch.Tensor] | None = None,
          anchor_precision: Mapping[str, torch.Tensor] | None = None,
          wider_views: Sequence[Callable[[torch.Tensor], torch.Tensor]] = (),
          on_step: Callable[[int, int, float], None] | None = None) -> None:
    """Fine-tune ``model`` in place for ``cfg.epochs`` (fractions allowed) with SGD + cosine.

    With ``cfg.distill > 0`` the ``teacher`` (kept in eval mode, never updated) sees the same
    augmented batch and its outputs join the loss. With ``cfg.anchor > 0`` every parameter named
    in ``anchor_to`` is pulled toward that tensor (same shape) instead of toward zero, each
    element in proportion to ``anchor_precision`` where given (e.g. a Fisher diagonal).
    With ``cfg.full_loss > 0`` the same loss on each ``view(x)`` of ``wider_views`` (wider
    networks built on this model's parameters) joins it with that weight.
    """
    if not 0.0 <= cfg.distill <= 1.0:
        raise ValueError(f"distillation weight must be in [0, 1], got {cfg.distill}")
    if cfg.distill > 0.0 and teacher is None:
        raise ValueError("distillation weight > 0 needs a teacher model")
    if cfg.temperature <= 0.0:
        raise ValueError(f"distillation temperature must be > 0, got {cfg.temperature}")
    if cfg.anchor < 0.0:
        raise ValueError(f"anchor strength must be >= 0, got {cfg.anchor}")
    if cfg.anchor > 0.0 and not anchor_to:
        raise ValueError("anchor strength > 0 needs the weights to anchor to")
    if cfg.full_loss < 0.0:
        raise ValueError(f"full-network loss weight must be >= 0, got {cfg.full_loss}")
    if cfg.full_loss > 0.0 and not wider_views:
        raise ValueError("full-network loss weight > 0 needs the wider networks' views")
    _rank, size = world()
    net: nn.Module = model
    if size > 1:
        net = DistributedDataParallel(model)
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device
    anchors = _anchors(params, anchor_to, device) if cfg.anchor > 0.0 else {}
    precision = _anchors(params, anchor_precision, device) if anchors else {}
    opt = torch.optim.SGD(params.values(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if teacher is not None:
        teacher.to(device).eval()
    per_epoch = -(-(len(data.labels) // size) // cfg.batch_size)
    total = max(1, int(per_epoch * cfg.epochs))
    step = 0
    epoch = 0
    model.train()
    while step < total:
        for x, y in batches(data, mean, std, cfg.batch_size, cfg.seed + 1000 * epoch,
                            train=True, augmentation=cfg.augment):
            if step >= total:
                break
            for group in opt.param_groups:
                group["lr"] = cosine_lr(cfg.lr, step, total)
            opt.zero_grad(set_to_none=True)
            x, y = x.to(device), y.to(device)  # batches are built on the CPU
            target = None
            if teacher is not None and cfg.distill > 0.0:
                with torch.no_grad():
                    target = teacher(x)
            loss = _loss(net(x), target, y, cfg)
            if cfg.full_loss > 0.0:
                for view in wider_views:
                    loss = loss + cfg.full_loss * _loss(view(x), target, y, cfg)
            loss.backward()  # type: ignore[no-untyped-call]
            with torch.no_grad():
                for name, p in params.items():
                    if p.grad is None:
                        continue
                    if name in anchors:  # L2-SP replaces weight decay on anchored weights
                        drift = p - anchors[name]
                        if name in precision:
                            drift = drift * precision[name]
                        p.grad.add_(drift, alpha=cfg.anchor)
                    elif cfg.weight_decay and p.ndim > 1:
                        p.grad.add_(p, alpha=cfg.weight_decay)
                    if masks is not None and name in masks:
                        p.grad.mul_(masks[name])
            opt.step()
            step += 1
            if on_step is not None:
                on_step(step, total, float(loss.detach()))
        epoch += 1
    model.eval()


def _loss(logits: torch.Tensor, target: torch.Tensor | None, labels: torch.Tensor,
          cfg: TrainConfig) -> torch.Tensor:
    """Cross-entropy, or its blend with the teacher's soft targets when there is one."""
    if target is None:
        return F.cross_entropy(logits, labels)
    return distillation_loss(logits, target, labels, cfg.distill, cfg.temperature)


def _anchors(params: Mapping[str, nn.Parameter], anchor_to: Mapping[str, torch.Tensor] | None,
             device: torch.device) -> dict[str, torch.Tensor]:
    """The anchor tensors on ``device``; a name or shape that matches no parameter is refused."""
    out: dict[str, torch.Tensor] = {}
    for name, target in (anchor_to or {}).items():
        if name not in params:
            raise ValueError(f"anchor for {name!r}: the model has no such parameter")
        if target.shape != params[name].shape:
            raise ValueError(f"anchor for {name!r} has shape {tuple(target.shape)}, the "
                             f"parameter {tuple(params[name].shape)}")
        out[name] = target.detach().to(device=device, dtype=params[name].dtype)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSet, mean: torch.Tensor, std: torch.Tensor,
             batch_size: int = 256) -> float:
    """Top-1 accuracy on the whole set (every rank computes the same number)."""
    model.eval()
    correct = 0
    for x, y in batches(data, mean, std, batch_size, 0, train=False, shard=False):
        pred = model(x.to(next(model.parameters()).device)).argmax(1).cpu()
        correct += int((pred == y).sum())
    return correct / max(1, len(data.labels))
