"""Turn a model we did not write (torchvision, a user's factory) into a sliceable architecture.

The prune-and-grow machinery works on *slots*: coupled channel sets tagged on every layer
(:mod:`elastiserve_store.slots`). Our own architectures tag themselves; for any other model the
tags come from Torch-Pruning's DependencyGraph, which traces the forward pass and groups every
axis that must lose the same channels together (residual adds, depthwise convolutions,
squeeze-and-excitation products, flatten into a linear layer). One group becomes one slot.

What cannot become slots is refused here, before any training, with the reason:

* a layer type holding tensors other than ``Conv2d``, ``BatchNorm2d`` and ``Linear`` (e.g.
  ``LayerNorm``/``GroupNorm`` in ConvNeXt, per-channel ``PReLU``, ``Conv1d``, attention
  projections as raw parameters): the bundle cannot cut it;
* grouped convolutions other than depthwise (ResNeXt, RegNet): a level would have to keep
  channels uniformly per group (a prefix inside every group), which one prefix per slot cannot
  say, and the slot tensors refuse such a convolution;
* batch norms without affine parameters or running statistics;
* concatenation or splitting of channels (DenseNet, Inception, GoogLeNet, ShuffleNet): the
  consumer of ``torch.cat`` sees several dependency groups side by side on one axis (Torch-Pruning
  maps them through its ``_ConcatOp`` offsets), so a level would keep each part's prefix at the
  part's offset, not one prefix of the axis; the slot tensors (one slot per axis) cannot say
  that yet, and neither can they say which part of a ``torch.split``/``chunk`` a layer reads;
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
from elastiserve_store.slots import SlotTag, Widths


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
        if isinstance(module, nn.Conv2d) and module.groups != 1 and not (
                module.groups == module.in_channels == module.out_channels):
            raise _refuse(name, f"{where} is a grouped convolution (groups={module.groups}, "
                                f"{module.in_channels}->{module.out_channels}), as in ResNeXt: "
                                f"a level would keep channels uniformly in every group, which "
                                f"one prefix per slot cannot express; only plain and depthwise "
                                f"convolutions are supported")
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
    joins = _channel_joins(graph)
    names = {id(m): n for n, m in model.named_modules()}
    sides: dict[tuple[str, str], str] = {}
    for i, group in enumerate(groups):
        slot = f"g{i}"
        for item in group:
            module = item.dep.target.module
            if not isinstance(module, external.SUPPORTED):
                continue  # element-wise ops, reshapes: they hold no tensors
            path = names[id(module)]
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            size = _axis_size(module, is_out)
            if len(item.idxs) != size:
                raise _refuse(name, f"{path} sees only {len(item.idxs)} of its {size} "
                                    f"{'output' if is_out else 'input'} channels in one "
                                    f"dependency group: channels are concatenated or split "
                                    f"there ({joins}), and a level of such an axis keeps each "
                                    f"part's prefix at the part's offset, which one slot per "
                                    f"axis cannot express")
            both = isinstance(module, nn.BatchNorm2d) or _depthwise(module)
            for side in (("in", "out") if both else ("out",) if is_out else ("in",)):
                if sides.setdefault((path, side), slot) != slot:
                    raise _refuse(name, f"the {side}put channels of {path} belong to two "
                                        f"dependency groups")
    layout = {
        path: SlotTag(sides.get((path, "in")), sides.get((path, "out")),
                      per_level=isinstance(m, nn.BatchNorm2d) or path == head_path)
        for path, m in model.named_modules() if isinstance(m, external.SUPPORTED)}
    args = {"kwargs": dict(kwargs), "layout": external.layout_to_json(layout)}
    _check_cut(name, args, input_shape)
    return args


def _channel_joins(graph: tp.DependencyGraph) -> str:
    """Which channel-joining operations the traced graph holds, for the refusal's reason."""
    kinds = {type(m).__name__ for m in graph.module2node}
    found = [text for op, text in (("_ConcatOp", "torch.cat along channels"),
                                   ("_SplitOp", "torch.split/chunk along channels"),
                                   ("_UnbindOp", "torch.unbind along channels"))
             if op in kinds]
    return " and ".join(found) or "a reshape that mixes channel groups"


def _axis_size(module: nn.Module, is_out: bool) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels if is_out else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if is_out else module.in_features
    assert isinstance(module, nn.BatchNorm2d)
    return module.num_features


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1


def _check_cut(name: str, args: Mapping[str, Any], input_shape: Sequence[int]) -> None:
    """Cut every slot to half width and run the model on the meta device."""
    full = external.full_widths(name, args)
    half: Widths = {s: max(1, n // 2) for s, n in full.items()}
    try:
        external.check_runs(name, args, [half], input_shape)
    except ManifestError as err:
        raise _refuse(name, f"cut to half width along its dependency groups it no longer "
                            f"runs ({err}); some coupling is not expressed by the groups") from None
