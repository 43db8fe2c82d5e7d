"""Channel slots: which tensor axes carry which prunable channel dimension.

A *slot* is one coupled set of channels (a DepGraph group): a residual stream, the hidden width
of one block, the output of one plain conv. Every architecture in :mod:`.architectures` tags its
conv, batch-norm and linear layers with the slots on their input and output side, so that the
same code can (a) slice a full-width tensor down to a level (a prefix per slot), (b) gather or
scatter arbitrary channel subsets while pruning and regrowing, and (c) tell which tensors are
shared between levels and which each level keeps for itself (batch norms and the head).

Most axes are one slot (a plain name). Two structures of models we did not write need more,
a :class:`Composite` axis, an ordered list of :class:`Part` s, each a slot with its full size:

* a **concatenation** (``torch.cat`` in DenseNet and Inception): the consumer's input axis is
  several slots side by side; a level keeps each part's prefix at the part's offset, and the
  offsets move with the widths of the parts before it;
* a **grouped convolution** (ResNeXt, RegNet): its channels sit in ``groups`` contiguous
  groups, and a level keeps the same number in every group, a prefix *inside each group*
  (Torch-Pruning prunes such a slot the same way: one ranking averaged over the groups, the
  same channels dropped in every group). Every axis of such a slot carries the group count;
  the convolution's own input-channel axis holds one group's share (``one_group``).

Nesting holds for both: each part, and each group, keeps a prefix in nested order, so a
narrower level's channels are a subset of a wider level's and its weights a slice of them
(a copy, not a view, where the slice is not one range).

Keeping this explicit, instead of re-deriving it from a traced graph, means the loader needs
nothing but torch: the serving side never imports Torch-Pruning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass(frozen=True)
class Part:
    """One slot's channels on a :class:`Composite` axis (``slot=None``: channels no level
    cuts, e.g. the image itself concatenated in); ``size`` is the full channel count."""

    slot: str | None
    size: int
    groups: int = 1


@dataclass(frozen=True)
class Composite:
    """An axis made of ``parts`` in order; ``one_group``: the axis holds one group's share of
    its single part (the input-channel axis of a grouped convolution's weight)."""

    parts: tuple[Part, ...]
    one_group: bool = False


Axis = str | Composite | None
"""One dimension of a tensor: a slot, a composite of slots, or ``None`` (not prunable)."""

Axes = tuple[Axis, ...]
"""For each dimension of a tensor, what it holds (see :data:`Axis`)."""

Widths = dict[str, int]
"""Channel count per slot: the width configuration of one level."""

_ATTR = "elastic_slots"
_CPU = torch.device("cpu")  # index arithmetic, also while models are built on "meta"


def grouped(slot: str, size: int, groups: int) -> Axis:
    """The axis of a slot whose ``size`` channels sit in ``groups`` groups (plain if 1)."""
    return slot if groups == 1 else Composite((Part(slot, size, groups),))


def single_slot(axis: Axis) -> str | None:
    """The one slot an axis is made of (a plain or grouped slot), else ``None``."""
    if isinstance(axis, Composite):
        parts = axis.parts
        return parts[0].slot if len(parts) == 1 else None
    return axis


def axis_slots(axis: Axis) -> list[str]:
    """Every slot on ``axis``, in order."""
    if axis is None:
        return []
    if isinstance(axis, str):
        return [axis]
    return [p.slot for p in axis.parts if p.slot is not None]


def _normalise(axis: Axis) -> Axis:
    """One canonical form: a single ungrouped part is its plain slot name (or ``None``)."""
    if isinstance(axis, Composite) and len(axis.parts) == 1 and not axis.one_group:
        part = axis.parts[0]
        if part.slot is None or part.groups == 1:
            return part.slot
    return axis


@dataclass(frozen=True)
class SlotTag:
    """The slots on either side of one layer; ``per_level`` marks tensors each level owns.

    ``in_slot``/``out_slot`` name the side's slot when it is one slot (plain or grouped);
    ``in_axis``/``out_axis`` hold a side that is a :class:`Composite` (grouped or concatenated),
    read through :attr:`in_side`/:attr:`out_side`.
    """

    in_slot: str | None
    out_slot: str | None
    per_level: bool = False
    in_axis: Composite | None = None
    out_axis: Composite | None = None
    grouped_conv: bool = False
    """A grouped, not depthwise, convolution (as the full model has it: a level may cut it to
    one channel per group, where it looks depthwise)."""

    @property
    def in_side(self) -> Axis:
        return self.in_axis if self.in_axis is not None else self.in_slot

    @property
    def out_side(self) -> Axis:
        return self.out_axis if self.out_axis is not None else self.out_slot


def make_tag(in_side: Axis, out_side: Axis, *, per_level: bool = False) -> SlotTag:
    """The :class:`SlotTag` for two sides (each a slot, a composite or ``None``)."""
    a, b = _normalise(in_side), _normalise(out_side)
    return SlotTag(single_slot(a), single_slot(b), per_level,
                   a if isinstance(a, Composite) else None,
                   b if isinstance(b, Composite) else None)


def tag(module: nn.Module, in_slot: Axis, out_slot: Axis, *, per_level: bool = False
        ) -> nn.Module:
    """Attach a :class:`SlotTag` to ``module`` (it survives pruning, copying and ``to()``);
    tag a model at its full width, where a grouped convolution shows it is one."""
    value = make_tag(in_slot, out_slot, per_level=per_level)
    if isinstance(module, nn.Conv2d) and module.groups > 1 and not (
            module.groups == module.in_channels == module.out_channels):
        value = replace(value, grouped_conv=True)
    object.__setattr__(module, _ATTR, value)
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


def _one_group(axis: Axis, groups: int, where: str) -> Axis:
    """A grouped convolution's input-channel axis: one group's share of ``axis``."""
    if axis is None:
        return None
    part = axis.parts[0] if isinstance(axis, Composite) and len(axis.parts) == 1 else None
    if part is None or part.groups != groups:
        raise ValueError(f"grouped conv {where} (groups={groups}) must have one slot in "
                         f"{groups} groups on each side")
    return Composite((part,), one_group=True)


def _conv_axes(module: nn.Conv2d, info: SlotTag, where: str) -> Axes:
    if module.groups == 1:
        return (info.out_side, info.in_side, None, None)
    # Cut to one channel per group, a grouped conv looks depthwise: its tag says which it is.
    if not info.grouped_conv and module.groups == module.in_channels == module.out_channels:
        if info.in_side != info.out_side:
            raise ValueError(f"depthwise conv {where} must keep one slot")
        return (info.out_side, None, None, None)
    if info.out_side is not None:
        _one_group(info.out_side, module.groups, where)  # the output is grouped the same way
    return (info.out_side, _one_group(info.in_side, module.groups, where), None, None)


def tensor_slots(model: nn.Module) -> dict[str, TensorSlots]:
    """Map every state-dict entry of ``model`` to its slot axes.

    Raises ``ValueError`` when a tensor is not covered by a tag, so an architecture that forgets
    to tag a layer fails at once instead of producing a bundle with unsliced tensors; also
    when one slot is grouped differently on two axes (a level could not cut both).
    """
    out: dict[str, TensorSlots] = {}
    for prefix_, module in model.named_modules():
        info = slot_tag(module)
        if info is None:
            continue
        dot = f"{prefix_}." if prefix_ else ""
        if isinstance(module, nn.BatchNorm2d):
            axis = info.out_side
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[dot + name] = TensorSlots((axis,), True)
            out[dot + "num_batches_tracked"] = TensorSlots((), True)
        elif isinstance(module, nn.Conv2d):
            out[dot + "weight"] = TensorSlots(_conv_axes(module, info, prefix_), info.per_level)
            if module.bias is not None:
                out[dot + "bias"] = TensorSlots((info.out_side,), info.per_level)
        elif isinstance(module, nn.Linear):
            out[dot + "weight"] = TensorSlots((info.out_side, info.in_side), info.per_level)
            if module.bias is not None:
                out[dot + "bias"] = TensorSlots((info.out_side,), info.per_level)
        else:
            raise ValueError(f"cannot tag {type(module).__name__} at {prefix_}")
    missing = set(model.state_dict()) - set(out)
    if missing:
        raise ValueError(f"untagged tensors: {sorted(missing)}")
    slot_groups(out)
    return out


def slot_groups(layout: Mapping[str, TensorSlots]) -> dict[str, int]:
    """Per slot, the number of groups its channels sit in (1: ungrouped); raises
    ``ValueError`` when two axes disagree."""
    groups: dict[str, int] = {}
    for name, info in layout.items():
        for axis in info.axes:
            if axis is None:
                continue
            pairs = ([(axis, 1)] if isinstance(axis, str)
                     else [(p.slot, p.groups) for p in axis.parts if p.slot is not None])
            for slot, g in pairs:
                if groups.setdefault(slot, g) != g:
                    raise ValueError(f"slot {slot} is in {groups[slot]} groups on one axis and "
                                     f"{g} at {name}")
    return groups


def _resolve_joined(joined: list[tuple[str, Composite, int]], widths: Widths,
                    put: Callable[[str, int, str], None]) -> None:
    """Widths of slots seen only inside concatenations: an axis with one unknown part gives it
    (the axis's size less its known parts), which may leave another axis with one unknown.

    A worklist keyed by slot, so the time is linear in the parts however the manifest orders
    them (a layout is untrusted input: rescanning every axis per resolved slot was quadratic).
    """
    unknown = [{s for p in axis.parts if (s := p.slot) is not None and s not in widths}
               for _, axis, _ in joined]
    waiting: dict[str, list[int]] = {}
    for index, slots in enumerate(unknown):
        for slot in slots:
            waiting.setdefault(slot, []).append(index)
    ready = [i for i, slots in enumerate(unknown) if len(slots) <= 1]
    done: set[int] = set()
    while ready:
        index = ready.pop()
        if index in done:
            continue
        done.add(index)
        name, axis, size = joined[index]
        missing = {s for p in axis.parts if (s := p.slot) is not None and s not in widths}
        known = sum(p.size if p.slot is None else widths[p.slot]
                    for p in axis.parts if p.slot not in missing)
        if not missing:
            if known != size:
                raise ValueError(f"{name} holds {size} channels on a concatenated axis whose "
                                 f"parts hold {known}")
            continue
        slot = missing.pop()
        if size - known < 1:
            raise ValueError(f"{name} holds {size} channels on a concatenated axis whose "
                             f"other parts already hold {known}")
        put(slot, size - known, name)
        for other in waiting.pop(slot, []):
            unknown[other].discard(slot)
            if len(unknown[other]) <= 1 and other not in done:
                ready.append(other)
    if len(done) < len(joined):
        stuck = next(axis for i, (_, axis, _) in enumerate(joined) if i not in done)
        raise ValueError(f"the widths of slots {sorted(axis_slots(stuck))[:5]} "
                         f"cannot be read: they appear only inside concatenations")


def read_widths(layout: Mapping[str, TensorSlots], shapes: Mapping[str, tuple[int, ...]]
                ) -> Widths:
    """Every slot's width from tensor shapes: where a slot is an axis of its own, or, when it
    only appears inside concatenations, as what the axis holds beside its other parts."""
    widths: Widths = {}

    def put(slot: str, size: int, name: str) -> None:
        if widths.setdefault(slot, size) != size:
            raise ValueError(f"slot {slot} has inconsistent widths at {name}")

    joined: list[tuple[str, Composite, int]] = []
    for name, info in layout.items():
        for dim, axis in enumerate(info.axes):
            size = int(shapes[name][dim])
            if axis is None:
                continue
            if isinstance(axis, str):
                put(axis, size, name)
            elif len(axis.parts) == 1 and (one := axis.parts[0]).slot is not None:
                put(one.slot, size * one.groups if axis.one_group else size, name)
            else:
                joined.append((name, axis, size))
    _resolve_joined(joined, widths, put)
    for slot, g in slot_groups(layout).items():
        if slot in widths and (widths[slot] < 1 or widths[slot] % g):
            raise ValueError(f"slot {slot} has width {widths[slot]}, not a positive multiple "
                             f"of its {g} groups")
    return widths


def widths_of(model: nn.Module) -> Widths:
    """Read the width configuration back from a (possibly pruned) model's layer shapes."""
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    return read_widths(tensor_slots(model), shapes)


def check_full_parts(layout: Mapping[str, TensorSlots], full: Mapping[str, int]) -> None:
    """Raise ``ValueError`` unless every composite part records its slot's full width."""
    for name, info in layout.items():
        for axis in info.axes:
            if isinstance(axis, Composite):
                for part in axis.parts:
                    if part.slot is not None and part.size != full.get(part.slot):
                        raise ValueError(f"{name}: part {part.slot} records {part.size} "
                                         f"channels, the slot has {full.get(part.slot)}")


def axis_width(axis: Axis, widths: Mapping[str, int]) -> int:
    """How many channels a (not ``None``) axis holds at ``widths``."""
    if axis is None:
        raise ValueError("an unslotted axis has no width of its own")
    if isinstance(axis, str):
        return int(widths[axis])
    total = sum(p.size if p.slot is None else int(widths[p.slot]) for p in axis.parts)
    if axis.one_group:
        groups = axis.parts[0].groups
        if total % groups:
            raise ValueError(f"width {total} of slot {axis.parts[0].slot} is not a multiple of "
                             f"its {groups} groups")
        return total // groups
    return total


def prefix_index(size: int, width: int, groups: int = 1) -> torch.Tensor:
    """Positions of a level's channels on an axis of ``size`` in nested order: the first
    ``width`` ones, or, in ``groups`` groups, the first ``width / groups`` of each group."""
    if size % groups or width % groups or not 0 <= width <= size:
        raise ValueError(f"cannot cut {size} channels in {groups} groups to {width}")
    return torch.arange(size, device=_CPU).view(groups, -1)[:, :width // groups].reshape(-1)


def axis_index(axis: Composite, index: Mapping[str, torch.Tensor],
               sizes: Mapping[str, int] | None, length: int) -> torch.Tensor:
    """Positions on a composite axis of ``length`` channels of the channels ``index`` names
    (per slot, positions on that slot's own axis); ``sizes``: the widths the axis is at
    (default: every part at its full size)."""
    out = []
    offset = 0
    for part in axis.parts:
        if part.slot is None:
            out.append(torch.arange(part.size, device=_CPU) + offset)
            offset += part.size
            continue
        source = part.size if sizes is None else int(sizes[part.slot])
        idx = index[part.slot].to(_CPU)
        if axis.one_group:
            rows = idx.view(part.groups, -1)
            local = rows[0]
            share = source // part.groups
            steps = torch.arange(part.groups, device=_CPU).view(-1, 1) * share
            if not torch.equal(rows, local.view(1, -1) + steps):
                raise ValueError(f"slot {part.slot}: channels are not kept alike in every group")
            idx, source = local, share
        out.append(idx + offset)
        offset += source
    if offset != length:
        raise ValueError(f"a composite axis holds {length} channels, its parts {offset} at the "
                         f"widths given: pass the widths the tensor is at")
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=_CPU)


def _positions(axis: Axis, index: Mapping[str, torch.Tensor], sizes: Mapping[str, int] | None,
               length: int, device: torch.device) -> torch.Tensor | None:
    if axis is None:
        return None
    if isinstance(axis, str):
        return index[axis]
    return axis_index(axis, index, sizes, length).to(device)


def expected_shape(full_shape: tuple[int, ...], axes: Axes, widths: Mapping[str, int]
                   ) -> tuple[int, ...]:
    """Shape of a tensor once each slotted axis is cut to ``widths``."""
    return tuple(full_shape[d] if a is None else axis_width(a, widths) for d, a in enumerate(axes))


def prefix(tensor: torch.Tensor, axes: Axes, widths: Mapping[str, int],
           sizes: Mapping[str, int] | None = None) -> torch.Tensor:
    """The level's slice of a tensor stored in nested order: a prefix per slot (a view, no
    copy, on plain axes); on a composite axis each part's (or each group's) prefix.

    ``sizes``: the widths ``tensor`` is at, needed on a composite axis when that is not the
    full model (a bundle stores the largest level); a composite axis refuses to guess.
    """
    for dim, axis in enumerate(axes):
        if axis is None:
            continue
        if isinstance(axis, str):
            tensor = tensor.narrow(dim, 0, widths[axis])
            continue
        index = {p.slot: prefix_index(p.size if sizes is None else int(sizes[p.slot]),
                                      int(widths[p.slot]), p.groups)
                 for p in axis.parts if p.slot is not None}
        pos = axis_index(axis, index, sizes, tensor.shape[dim])
        tensor = tensor.index_select(dim, pos.to(tensor.device))
    return tensor


def gather(tensor: torch.Tensor, axes: Axes, index: Mapping[str, torch.Tensor],
           sizes: Mapping[str, int] | None = None) -> torch.Tensor:
    """Select channels ``index[slot]`` (in that order) on every slotted axis; ``sizes``: the
    widths ``tensor`` is at, when not full (composite axes need it to place their parts)."""
    for dim, axis in enumerate(axes):
        pos = _positions(axis, index, sizes, tensor.shape[dim], tensor.device)
        if pos is not None:
            tensor = tensor.index_select(dim, pos)
    return tensor


def scatter(target: torch.Tensor, axes: Axes, index: Mapping[str, torch.Tensor],
            values: torch.Tensor, sizes: Mapping[str, int] | None = None) -> torch.Tensor:
    """Inverse of :func:`gather`: a copy of ``target`` with ``values`` written at ``index``."""
    dims = [(d, p) for d, a in enumerate(axes)
            if (p := _positions(a, index, sizes, target.shape[d], target.device)) is not None]

    def put(t: torch.Tensor, rest: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
        if not rest:
            return values.to(t.dtype).clone()
        dim, idx = rest[0]
        return t.index_copy(dim, idx, put(t.index_select(dim, idx), rest[1:]))

    return put(target, dims)
