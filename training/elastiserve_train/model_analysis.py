"""Turn a model we did not write (torchvision, a user's factory) into a sliceable architecture.

The prune-and-grow machinery works on *slots*: coupled channel sets tagged on every layer
(:mod:`elastiserve_store.slots`). Our own architectures tag themselves; for any other model the
tags come from Torch-Pruning's DependencyGraph, which traces the forward pass and groups every
axis that must lose the same channels together (residual adds, depthwise convolutions,
squeeze-and-excitation products, flatten into a linear layer). One group becomes one slot.

Two structures need a side made of more than one plain slot (:class:`slots.Composite`):

* **concatenation** (``torch.cat`` along channels: DenseNet, Inception, GoogLeNet): the
  consumer of a ``cat`` sees several dependency groups side by side on one axis, each at the
  offset Torch-Pruning's ``_ConcatOp`` maps it to; its side becomes the ordered list of those
  groups' slots with their full sizes, and a level keeps each part's prefix at the part's
  offset;
* **grouped convolutions** (ResNeXt, RegNet; not depthwise): Torch-Pruning prunes the slots
  on both sides of such a convolution alike in every group (one ranking averaged over the
  groups), so each becomes a slot in ``groups`` groups and a level keeps the same prefix of
  every group.

What cannot become slots is refused here, before any training, with the reason:

* a layer type holding tensors other than ``Conv2d``, ``BatchNorm2d`` and ``Linear`` (e.g.
  ``LayerNorm``/``GroupNorm`` in ConvNeXt, per-channel ``PReLU``, ``Conv1d``, attention
  projections as raw parameters): the bundle cannot cut it;
* batch norms without affine parameters or running statistics;
* channels split apart (``torch.split``/``chunk``/``unbind``, a slice along channels:
  ShuffleNet): the layers after the split each read part of one group, at sizes fixed in the
  model's code (``chunk`` halves whatever width it gets), which per-slot prefixes cannot
  follow; a slot that two grouped convolutions group differently; a grouped convolution
  reading a concatenation; a ``torch.cat`` joining a tensor DependencyGraph does not trace
  (the image itself, a constant), whose parts it cannot place; a side only partly covered by
  dependency groups;
* a model whose output does not come straight from an ``nn.Linear`` head (the head every level
  keeps whole and owns), or whose head does not output one score per class;
* anything DependencyGraph itself cannot trace.

The derived layout is then checked by cutting the model to half width on the meta device and
running it, so a coupling the analysis missed is refused too, not discovered in a bundle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from elastiserve_store import constructors, external
from elastiserve_store.errors import ManifestError
from elastiserve_store.slots import Axis, Composite, Part, SlotTag, Widths, grouped, make_tag


class UnsupportedModelError(ValueError):
    """The model has a structure the nested bundle cannot express; the message says which."""


def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``--model-arg key=value`` (repeatable); a value is JSON when it parses, else a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--model-arg {pair!r}: expected NAME=VALUE")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    try:
        constructors.check_kwargs(out)
    except ManifestError as err:
        raise ValueError(f"--model-arg: {err}") from None
    return out


def _refuse(name: str, reason: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{name} cannot be made elastic: {reason}")


def _check_layers(name: str, model: nn.Module) -> None:
    for path, module in model.named_modules():
        own = [n for n, _ in module.named_parameters(recurse=False)]
        own += [n for n, b in module.named_buffers(recurse=False) if b is not None]
        if not own:
            continue
        where = path or "the model itself"
        if not isinstance(module, external.SUPPORTED):
            raise _refuse(name, f"{where} is a {type(module).__name__} holding tensors "
                                f"({', '.join(own[:3])}); only Conv2d, BatchNorm2d and Linear "
                                f"layers can be cut to a level's width")
        if isinstance(module, nn.BatchNorm2d) and not (module.affine
                                                       and module.track_running_stats):
            raise _refuse(name, f"{where} is a BatchNorm2d without affine parameters or "
                                f"running statistics")


def _head(name: str, model: nn.Module, example: torch.Tensor, num_classes: int
          ) -> tuple[nn.Linear, str]:
    """The Linear layer whose output *is* the model's output."""
    seen: list[tuple[str, nn.Linear, torch.Tensor]] = []
    names = {id(m): n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(
        lambda mod, _i, out: seen.append((names[id(mod)], mod, out)))  # type: ignore[arg-type]
        for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as err:
        raise _refuse(name, f"it does not run on a {tuple(example.shape[1:])} input: "
                            f"{type(err).__name__}: {str(err)[:200]}") from None
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise _refuse(name, f"its forward returns {type(out).__name__}, not one tensor of "
                            f"class scores")
    heads = [(n, m) for n, m, o in seen if o is out]
    if not heads:
        raise _refuse(name, "its output does not come straight from an nn.Linear head (the "
                            "classifier every level keeps whole)")
    path, head = heads[-1]
    if head.out_features != num_classes:
        raise _refuse(name, f"its head {path} outputs {head.out_features} scores for "
                            f"{num_classes} classes (pass num_classes=... to the constructor)")
    return head, path


def analyse(name: str, kwargs: Mapping[str, Any], input_shape: Sequence[int],
            num_classes: int) -> dict[str, Any]:
    """The architecture arguments (``{"kwargs", "layout"}``) for the bundle, or a refusal.

    ``name`` must already be allowed (:func:`constructors.check_allowed`; the training CLI
    trusts the factory its user named).
    """
    try:
        model = external.construct(name, kwargs).eval()
    except ManifestError as err:
        raise UnsupportedModelError(str(err)) from None
    _check_layers(name, model)
    example = torch.zeros(1, *input_shape)
    head, head_path = _head(name, model, example, num_classes)
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example,
                                                      verbose=False)
        groups = list(graph.get_all_groups(ignored_layers=[head],
                                           root_module_types=[nn.Conv2d, nn.Linear]))
    except Exception as err:  # whatever the tracer cannot follow
        raise _refuse(name, f"Torch-Pruning's DependencyGraph cannot trace it: "
                            f"{type(err).__name__}: {str(err)[:200]}") from None
    _refuse_splits(name, graph)
    names = {id(m): n for n, m in model.named_modules()}
    seen: dict[tuple[str, str], list[tuple[str, list[int]]]] = {}
    slot_groups: dict[str, int] = {}
    for i, group in enumerate(groups):
        slot = f"g{i}"
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, external.SUPPORTED):
                continue  # element-wise ops, reshapes: they hold no tensors
            path = names[id(module)]
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            idxs = sorted({int(getattr(j, "idx", j)) for j in item.idxs})
            both = isinstance(module, nn.BatchNorm2d) or _depthwise(module)
            for side in (("in", "out") if both else ("out",) if is_out else ("in",)):
                entries = seen.setdefault((path, side), [])
                if all(s != slot for s, _ in entries):
                    entries.append((slot, idxs))
            if _grouped(module):
                assert isinstance(module, nn.Conv2d)
                if slot_groups.setdefault(slot, module.groups) != module.groups:
                    raise _refuse(name, f"{path} (groups={module.groups}) groups the channels "
                                        f"of one dependency group that another grouped "
                                        f"convolution splits into {slot_groups[slot]} groups")
    layout: dict[str, SlotTag] = {}
    for path, m in model.named_modules():
        if isinstance(m, external.SUPPORTED):
            sides = [_side(name, path, m, side, seen.get((path, side), []), slot_groups)
                     for side in ("in", "out")]
            layout[path] = make_tag(sides[0], sides[1], per_level=isinstance(m, nn.BatchNorm2d)
                                    or path == head_path)
    args = {"kwargs": dict(kwargs), "layout": external.layout_to_json(layout)}
    _check_cut(name, args, input_shape)
    return args


def _refuse_splits(name: str, graph: tp.DependencyGraph) -> None:
    """Refuse channels split apart (after a split each consumer reads part of one group) and a
    concatenation whose parts DependencyGraph could not place."""
    texts = {"_SplitOp": "torch.split/chunk along channels",
             "_UnbindOp": "torch.unbind along channels", "_SliceOp": "a slice along channels"}
    found = []
    for module, node in graph.module2node.items():
        kind = type(module).__name__
        dim = getattr(node.grad_fn, "_saved_dim", None)
        # Along the batch or a spatial axis channels pass through whole; a negative or unknown
        # axis may be the channels.
        if kind in texts and dim not in (0, 2, 3) and texts[kind] not in found:
            found.append(texts[kind])
    if found:
        raise _refuse(name, f"its channels are split apart ({' and '.join(found)}): each layer "
                            f"after the split reads part of one dependency group, at sizes the "
                            f"model's code fixes (chunk halves whatever width it gets), which "
                            f"a level's prefix per part cannot follow; concatenation (torch.cat) "
                            f"alone is supported")
    for module, node in graph.module2node.items():
        if type(module).__name__ != "_ConcatOp" or getattr(module, "offsets", None) is not None:
            continue
        joined = len(getattr(node.grad_fn, "next_functions", ()))
        if getattr(node.grad_fn, "_saved_dim", 1) == 1 or joined != len(node.inputs):
            raise _refuse(name, "a torch.cat along channels joins a tensor DependencyGraph does "
                                "not trace (the input image, a constant or a buffer), so it "
                                "cannot place each part at its offset")


def _side(name: str, path: str, module: nn.Module, side: str,
          entries: Sequence[tuple[str, Sequence[int]]], groups: Mapping[str, int]) -> Axis:
    """One side of a layer: nothing, one slot (grouped or not), or slots side by side."""
    if not entries:
        return None
    size = _axis_size(module, side == "out")
    if len(entries) == 1 and list(entries[0][1]) == list(range(size)):
        slot = entries[0][0]
        return grouped(slot, size, groups.get(slot, 1))
    parts: list[Part] = []
    at = 0
    for slot, idxs in sorted(entries, key=lambda e: e[1][0]):
        first, count = idxs[0], len(idxs)
        if list(idxs) != list(range(first, first + count)) or first < at:
            raise _refuse(name, f"the {side}put channels of {path} mix dependency groups in "
                                f"an order a concatenation does not make (a reshape or "
                                f"shuffle across channels)")
        if first > at:
            parts.append(Part(None, first - at))
        parts.append(Part(slot, count, groups.get(slot, 1)))
        at = first + count
    if at < size:
        parts.append(Part(None, size - at))
    if any(p.slot is None for p in parts):
        raise _refuse(name, f"the {side}put channels of {path} are only partly in dependency "
                            f"groups ({sum(p.size for p in parts if p.slot)} of {size}): "
                            f"DependencyGraph does not map all of them")
    if _grouped(module):
        raise _refuse(name, f"{path} is a grouped convolution (groups="
                            f"{getattr(module, 'groups', 1)}) whose {side}put channels are "
                            f"concatenated from several dependency groups: a level keeps one "
                            f"prefix per group of one slot, not of several")
    return Composite(tuple(parts))


def _axis_size(module: nn.Module, is_out: bool) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels if is_out else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if is_out else module.in_features
    assert isinstance(module, nn.BatchNorm2d)
    return module.num_features


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and 1 < module.groups == module.out_channels


def _grouped(module: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (ResNeXt's): its sides stay separate
    slots, each in ``groups`` groups."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not _depthwise(module)


def _check_cut(name: str, args: Mapping[str, Any], input_shape: Sequence[int]) -> None:
    """Cut every slot to half width and run the model on the meta device."""
    full = external.full_widths(name, args)
    groups = external.groups_of(name, args)
    half: Widths = {s: groups.get(s, 1) * max(1, n // groups.get(s, 1) // 2)
                    for s, n in full.items()}
    try:
        external.check_runs(name, args, [half], input_shape)
    except ManifestError as err:
        raise _refuse(name, f"cut to half width along its dependency groups it no longer "
                            f"runs ({err}); some coupling is not expressed by the groups") from None
