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
``Linear``. A level is then the full model with every slotted axis cut to the level's width
(its prefix: channels are stored in nested order), which needs torch alone: the serving side
never imports Torch-Pruning. The layout comes from the bundle, so nothing here trusts it: every
entry must name a supported layer of the constructed model, every tensor must be covered, a
slot must have one size everywhere, and the loader runs each level once on the meta device
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
from .slots import SlotTag, Widths, prefix, slot_tag, tag, tensor_slots, widths_of

Layout = dict[str, SlotTag]
"""Module name -> the slots on its two sides (and whether each level owns its tensors)."""

MAX_LAYOUT = 10_000
_SLOT = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MODULE = re.compile(r"[A-Za-z0-9_.]{1,200}")
SUPPORTED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def layout_to_json(layout: Mapping[str, SlotTag]) -> dict[str, list[Any]]:
    """The manifest form of a layout."""
    return {name: [t.in_slot, t.out_slot, t.per_level] for name, t in layout.items()}


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
        if (not isinstance(entry, list) or len(entry) != 3
                or not all(s is None or (isinstance(s, str) and _SLOT.fullmatch(s))
                           for s in entry[:2])
                or not isinstance(entry[2], bool)):
            raise ManifestError(f"manifest field 'architecture.args.layout.{name}' must be "
                                f"[in_slot or null, out_slot or null, per_level]")
        out[name] = SlotTag(entry[0], entry[1], entry[2])
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
        model = ctor(**kwargs)
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
        tag(module, info.in_slot, info.out_slot, per_level=info.per_level)
    try:
        tensor_slots(model)
        widths_of(model)
    except ValueError as err:
        raise ManifestError(f"layout does not fit the model: {str(err)[:300]}") from None
    return model


def full_widths(name: str, arch_args: Mapping[str, Any]) -> Widths:
    """Every slot's full channel count (the model is built on the meta device)."""
    kwargs, layout = split_args(arch_args)
    with torch.device("meta"):
        model = apply_layout(construct(name, kwargs), layout)
    return widths_of(model)


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
    def size(slot: str | None, current: int) -> int:
        return current if slot is None else int(widths[slot])

    if isinstance(module, nn.Conv2d):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        module.in_channels = size(info.in_slot, module.in_channels)
        module.out_channels = size(info.out_slot, module.out_channels)
        if depthwise:
            module.groups = module.out_channels
    elif isinstance(module, nn.BatchNorm2d):
        module.num_features = size(info.out_slot, module.num_features)
    elif isinstance(module, nn.Linear):
        module.in_features = size(info.in_slot, module.in_features)
        module.out_features = size(info.out_slot, module.out_features)


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
