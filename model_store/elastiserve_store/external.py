"""Models built by a named constructor (torchvision or a user's factory) at any level's widths.

The in-project architectures tag their layers with channel slots in their own code. A model we
did not write is tagged from the outside instead: training derives, once, from Torch-Pruning's
DependencyGraph which axis of which layer belongs to which dependency group (a *slot*), and the
bundle stores that as ``architecture.args.layout`` beside the constructor's own keyword
arguments (``architecture.args.kwargs``)::

    {"kwargs": {"num_classes": 10},
     "layout": {"conv1": [null, "g0", false], "bn1": ["g0", "g0", true], ...,
                "fc": ["g11", null, true]}}

Each entry is ``[in_slot, out_slot, per_level]`` for one ``Conv2d``, ``BatchNorm2d`` or
``Linear``. A side that is not one plain slot (schema 3 layouts written since concatenations
and grouped convolutions are supported; older ones have none) is a list of parts
``[[slot or null, full size, groups], ...]``: a ``torch.cat`` consumer's input, slots side by
side, or a slot in ``groups`` groups, kept alike per group (:class:`slots.Composite`)::

    "features.denseblock1.denselayer2.norm1": [[["g0", 64, 1], ["g2", 32, 1]],
                                               [["g0", 64, 1], ["g2", 32, 1]], true],
    "layer1.0.conv2": [[["g3", 128, 32]], [["g4", 128, 32]], false]

A level is then the full model with every slotted axis cut to the level's width (its prefix,
per part and per group: channels are stored in nested order), which needs torch alone: the
serving side never imports Torch-Pruning. The layout comes from the bundle, so nothing here
trusts it: every entry must name a supported layer of the constructed model, every tensor must
be covered, a slot must have one size (and one group count) everywhere, each part must record
its slot's full size, and the loader runs each level once on the meta device
(:func:`check_runs`) so a layout that cuts coupled axes apart is refused before a tensor is read.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import constructors
from .errors import ManifestError
from .slots import (
    Axis,
    Composite,
    Part,
    SlotTag,
    Widths,
    axis_width,
    check_full_parts,
    make_tag,
    prefix,
    slot_groups,
    slot_tag,
    tag,
    tensor_slots,
    widths_of,
)

Layout = dict[str, SlotTag]
"""Module name -> the slots on its two sides (and whether each level owns its tensors)."""

MAX_LAYOUT = 10_000
MAX_PARTS = 4_096
MAX_CHANNELS = 1 << 20
_SLOT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MODULE = re.compile(r"[A-Za-z0-9_.-]{1,200}")  # torchvision RegNet: "block1-0"
SUPPORTED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def _side_to_json(side: Axis) -> Any:
    if isinstance(side, Composite):
        return [[p.slot, p.size, p.groups] for p in side.parts]
    return side


def layout_to_json(layout: Mapping[str, SlotTag]) -> dict[str, list[Any]]:
    """The manifest form of a layout."""
    return {name: [_side_to_json(t.in_side), _side_to_json(t.out_side), t.per_level]
            for name, t in layout.items()}


def _is_slot(value: Any) -> bool:
    return isinstance(value, str) and _SLOT.fullmatch(value) is not None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_CHANNELS


def _side_from_json(raw: Any) -> Axis | bool:
    """A side of a layout entry, or ``False`` when it is malformed."""
    if raw is None or _is_slot(raw):
        return raw  # type: ignore[no-any-return]
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_PARTS:
        return False
    parts = []
    for item in raw:
        if (not isinstance(item, list) or len(item) != 3
                or not (item[0] is None or _is_slot(item[0]))
                or not _count(item[1]) or not _count(item[2]) or item[1] % item[2]
                or (item[0] is None and item[2] != 1)):
            return False
        parts.append(Part(item[0], item[1], item[2]))
    return Composite(tuple(parts))


def layout_from_json(raw: Any) -> Layout:
    """Parse and bound ``architecture.args.layout``; raises :class:`ManifestError`."""
    if not isinstance(raw, dict) or not raw or len(raw) > MAX_LAYOUT:
        raise ManifestError(f"manifest field 'architecture.args.layout' must map 1..{MAX_LAYOUT} "
                            f"layer names to [in_slot, out_slot, per_level]")
    out: Layout = {}
    for name, entry in raw.items():
        if not isinstance(name, str) or not _MODULE.fullmatch(name):
            raise ManifestError(f"manifest field 'architecture.args.layout' names a layer "
                                f"{str(name)[:80]!r} that is not a module path")
        sides = ([_side_from_json(s) for s in entry[:2]]
                 if isinstance(entry, list) and len(entry) == 3 else [False])
        if any(s is False for s in sides) or not isinstance(entry[2], bool):
            raise ManifestError(f"manifest field 'architecture.args.layout.{name}' must be "
                                f"[in_side, out_side, per_level], each side a slot, null, or "
                                f"a list of 1..{MAX_PARTS} parts [slot or null, size, groups]")
        in_side, out_side = sides
        assert not isinstance(in_side, bool) and not isinstance(out_side, bool)
        out[name] = make_tag(in_side, out_side, per_level=entry[2])
    return out


def split_args(arch_args: Mapping[str, Any]) -> tuple[dict[str, Any], Layout]:
    """``(kwargs, layout)`` of an external architecture's arguments, validated."""
    if set(arch_args) != {"kwargs", "layout"}:
        raise ManifestError("manifest field 'architecture.args' of a constructor must hold "
                            "exactly 'kwargs' and 'layout'")
    kwargs = arch_args["kwargs"]
    if not isinstance(kwargs, dict):
        raise ManifestError("manifest field 'architecture.args.kwargs' must be an object")
    constructors.check_kwargs(kwargs)
    return dict(kwargs), layout_from_json(arch_args["layout"])


def construct(name: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """Call the (allow-listed) constructor; any failure becomes a :class:`ManifestError`."""
    ctor = constructors.resolve(name)
    try:
        try:
            model = ctor(**kwargs)
        except NotImplementedError:
            # A constructor that reads a tensor's value (RegNet computes its block widths
            # with torch) cannot run on the meta device: build it on the CPU, then move it.
            if torch.empty(0).device.type != "meta":
                raise
            with torch.device("cpu"):
                model = ctor(**kwargs)
            if isinstance(model, nn.Module):
                model = model.to("meta")
    except Exception as err:  # the constructor refuses its arguments
        raise ManifestError(f"constructor {name!r} refuses its arguments: "
                            f"{type(err).__name__}: {str(err)[:200]}") from None
    if not isinstance(model, nn.Module):
        raise ManifestError(f"constructor {name!r} did not return an nn.Module")
    return model


def apply_layout(model: nn.Module, layout: Mapping[str, SlotTag]) -> nn.Module:
    """Tag ``model``'s layers from ``layout``; refuses entries that name no supported layer
    and layers the layout leaves out (through :func:`slots.tensor_slots`)."""
    modules = dict(model.named_modules())
    for name, info in layout.items():
        module = modules.get(name)
        if not isinstance(module, SUPPORTED):
            kind = "nothing" if module is None else type(module).__name__
            raise ManifestError(f"layout entry {name!r} names {kind}, not a Conv2d, "
                                f"BatchNorm2d or Linear of the model")
        tag(module, info.in_side, info.out_side, per_level=info.per_level)
    try:
        check_full_parts(tensor_slots(model), widths_of(model))
    except ValueError as err:
        raise ManifestError(f"layout does not fit the model: {str(err)[:300]}") from None
    return model


def full_widths(name: str, arch_args: Mapping[str, Any]) -> Widths:
    """Every slot's full channel count (the model is built on the meta device)."""
    kwargs, layout = split_args(arch_args)
    with torch.device("meta"):
        model = apply_layout(construct(name, kwargs), layout)
    return widths_of(model)


def groups_of(name: str, arch_args: Mapping[str, Any]) -> dict[str, int]:
    """Per slot, how many groups its channels sit in (a level's width is a multiple)."""
    kwargs, layout = split_args(arch_args)
    with torch.device("meta"):
        model = apply_layout(construct(name, kwargs), layout)
    return slot_groups(tensor_slots(model))


def build(name: str, arch_args: Mapping[str, Any], widths: Mapping[str, int] | None = None,
          skipped_blocks: Collection[str] = ()) -> nn.Module:
    """The model at ``widths`` (default: full), every slotted axis cut to its prefix.

    Built on the current default device; the cut tensors are the prefix of the constructor's
    own initialisation (callers load a state dict over them).
    """
    if skipped_blocks:
        raise ManifestError(f"{name} has no skippable blocks: levels of a constructor-built "
                            f"model differ in width only")
    kwargs, layout = split_args(arch_args)
    model = apply_layout(construct(name, kwargs), layout)
    if widths is None:
        return model
    full = widths_of(model)
    chosen = dict(widths)
    if set(chosen) != set(full):
        raise ValueError(f"widths for {name} do not match its slots: missing "
                         f"{sorted(set(full) - set(chosen))[:5]}, unknown "
                         f"{sorted(set(chosen) - set(full))[:5]}")
    bad = {k: v for k, v in chosen.items() if not 1 <= v <= full[k]}
    if bad:
        raise ValueError(f"widths out of range (1..full) for {name}: {dict(list(bad.items())[:5])}")
    groups = slot_groups(tensor_slots(model))
    uneven = {k: v for k, v in chosen.items() if v % groups.get(k, 1)}
    if uneven:
        raise ValueError(f"widths of grouped slots must be a multiple of their groups for "
                         f"{name}: {dict(list(uneven.items())[:5])} (groups "
                         f"{ {k: groups[k] for k in list(uneven)[:5]} })")
    cut(model, chosen)
    return model


def cut(model: nn.Module, widths: Mapping[str, int]) -> None:
    """Narrow every tagged layer of ``model`` in place to ``widths`` (a prefix per slot)."""
    layout = tensor_slots(model)
    for mod_name, module in model.named_modules():
        info = slot_tag(module)
        if info is None:
            continue
        dot = f"{mod_name}." if mod_name else ""
        for attr, tensor in list(module.named_parameters(recurse=False)):
            small = prefix(tensor.detach(), layout[dot + attr].axes, widths).clone()
            setattr(module, attr, nn.Parameter(small, requires_grad=tensor.requires_grad))
        for attr, buf in list(module.named_buffers(recurse=False)):
            if buf is not None:
                module.register_buffer(attr, prefix(buf, layout[dot + attr].axes, widths).clone())
        _resize_attributes(module, info, widths)


def _resize_attributes(module: nn.Module, info: SlotTag, widths: Mapping[str, int]) -> None:
    def size(side: Axis, current: int) -> int:
        return current if side is None else axis_width(side, widths)

    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.in_channels = size(info.in_side, module.in_channels)
        module.out_channels = size(info.out_side, module.out_channels)
        if depthwise:  # a grouped conv keeps its groups, each narrower
            module.groups = module.out_channels
    elif isinstance(module, nn.BatchNorm2d):
        module.num_features = size(info.out_side, module.num_features)
    elif isinstance(module, nn.Linear):
        module.in_features = size(info.in_side, module.in_features)
        module.out_features = size(info.out_side, module.out_features)


def check_runs(name: str, arch_args: Mapping[str, Any], level_widths: Sequence[Widths],
               input_shape: Sequence[int]) -> None:
    """Run every level once on the meta device (no data, no memory): a layout that splits
    coupled channels (a residual add, a depthwise conv, a squeeze-excitation product) fails
    here with the layer's shape error, before the loader reads a tensor."""
    for k, widths in enumerate(level_widths):
        with torch.device("meta"):
            model = build(name, arch_args, widths)
            try:
                with torch.no_grad():
                    model.eval()(torch.empty(1, *input_shape))
            except Exception as err:  # a shape error anywhere in the user's forward
                raise ManifestError(f"level {k} of {name} does not run at its widths: "
                                    f"{type(err).__name__}: {str(err)[:200]}") from None
