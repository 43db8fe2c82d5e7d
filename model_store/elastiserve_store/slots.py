"""Channel slots: which tensor axes carry which prunable channel dimension.

A *slot* is one coupled set of channels (a DepGraph group): a residual stream, the hidden width
of one block, the output of one plain conv. Every architecture in :mod:`.architectures` tags its
conv, batch-norm and linear layers with the slots on their input and output side, so that the
same code can (a) slice a full-width tensor down to a level (a prefix per slot), (b) gather or
scatter arbitrary channel subsets while pruning and regrowing, and (c) tell which tensors are
shared between levels and which each level keeps for itself (batch norms and the head).

Keeping this explicit, instead of re-deriving it from a traced graph, means the loader needs
nothing but torch: the serving side never imports Torch-Pruning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

Axes = tuple[str | None, ...]
"""For each dimension of a tensor, the slot it belongs to, or ``None`` if it is not prunable."""

Widths = dict[str, int]
"""Channel count per slot: the width configuration of one level."""

_ATTR = "elastic_slots"


@dataclass(frozen=True)
class SlotTag:
    """The slots on either side of one layer; ``per_level`` marks tensors each level owns."""

    in_slot: str | None
    out_slot: str | None
    per_level: bool = False


def tag(module: nn.Module, in_slot: str | None, out_slot: str | None, *, per_level: bool = False
        ) -> nn.Module:
    """Attach a :class:`SlotTag` to ``module`` (it survives pruning, copying and ``to()``)."""
    object.__setattr__(module, _ATTR, SlotTag(in_slot, out_slot, per_level))
    return module


def slot_tag(module: nn.Module) -> SlotTag | None:
    """The tag attached by :func:`tag`, if any."""
    value = module.__dict__.get(_ATTR)
    return value if isinstance(value, SlotTag) else None


@dataclass(frozen=True)
class TensorSlots:
    """Slot layout of one state-dict entry."""

    axes: Axes
    per_level: bool


def tensor_slots(model: nn.Module) -> dict[str, TensorSlots]:
    """Map every state-dict entry of ``model`` to its slot axes.

    Raises ``ValueError`` when a tensor is not covered by a tag, so an architecture that forgets
    to tag a layer fails at once instead of producing a bundle with unsliced tensors.
    """
    out: dict[str, TensorSlots] = {}
    for prefix, module in model.named_modules():
        info = slot_tag(module)
        if info is None:
            continue
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, nn.BatchNorm2d):
            slot = info.out_slot
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[dot + name] = TensorSlots((slot,), True)
            out[dot + "num_batches_tracked"] = TensorSlots((), True)
        elif isinstance(module, nn.Conv2d):
            if module.groups == 1:
                w_axes: Axes = (info.out_slot, info.in_slot, None, None)
            elif module.groups == module.in_channels == module.out_channels:
                if info.in_slot != info.out_slot:
                    raise ValueError(f"depthwise conv {prefix} must keep one slot")
                w_axes = (info.out_slot, None, None, None)
            else:
                raise ValueError(f"grouped conv {prefix} is not supported")
            out[dot + "weight"] = TensorSlots(w_axes, info.per_level)
            if module.bias is not None:
                out[dot + "bias"] = TensorSlots((info.out_slot,), info.per_level)
        elif isinstance(module, nn.Linear):
            out[dot + "weight"] = TensorSlots((info.out_slot, info.in_slot), info.per_level)
            if module.bias is not None:
                out[dot + "bias"] = TensorSlots((info.out_slot,), info.per_level)
        else:
            raise ValueError(f"cannot tag {type(module).__name__} at {prefix}")
    missing = set(model.state_dict()) - set(out)
    if missing:
        raise ValueError(f"untagged tensors: {sorted(missing)}")
    return out


def widths_of(model: nn.Module) -> Widths:
    """Read the width configuration back from a (possibly pruned) model's layer shapes."""
    widths: Widths = {}
    state = model.state_dict()
    for name, info in tensor_slots(model).items():
        tensor = state[name]
        for dim, slot in enumerate(info.axes):
            if slot is None:
                continue
            size = int(tensor.shape[dim])
            if widths.setdefault(slot, size) != size:
                raise ValueError(f"slot {slot} has inconsistent widths at {name}")
    return widths


def expected_shape(full_shape: tuple[int, ...], axes: Axes, widths: Mapping[str, int]
                   ) -> tuple[int, ...]:
    """Shape of a tensor once each slotted axis is cut to ``widths``."""
    return tuple(full_shape[d] if s is None else widths[s] for d, s in enumerate(axes))


def prefix(tensor: torch.Tensor, axes: Axes, widths: Mapping[str, int]) -> torch.Tensor:
    """The level's slice of a full-width tensor stored in nested order (a view, no copy)."""
    for dim, slot in enumerate(axes):
        if slot is not None:
            tensor = tensor.narrow(dim, 0, widths[slot])
    return tensor


def gather(tensor: torch.Tensor, axes: Axes, index: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Select channels ``index[slot]`` (in that order) on every slotted axis."""
    for dim, slot in enumerate(axes):
        if slot is not None:
            tensor = tensor.index_select(dim, index[slot])
    return tensor


def scatter(target: torch.Tensor, axes: Axes, index: Mapping[str, torch.Tensor],
            values: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`gather`: a copy of ``target`` with ``values`` written at ``index``."""
    dims = [(d, index[s]) for d, s in enumerate(axes) if s is not None]

    def put(t: torch.Tensor, rest: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        if not rest:
            return values.to(t.dtype).clone()
        dim, idx = rest[0]
        return t.index_copy(dim, idx, put(t.index_select(dim, idx), rest[1:]))

    return put(target, dims)
