"""A small nested bundle of a torchvision model, written the way ``elastiserve train`` exports.

The library calls of the export (``analyse`` -> the DependencyGraph's channel layout,
``write_bundle`` -> manifest schema 3 naming the constructor) with seeded random weights in
place of training: serving tests check that the levels are rebuilt and served as written, not
their accuracy, and a training run would cost minutes. Each level is the prefix of one full
model on every dependency group, the nesting the bundle format requires.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from elastiserve_store import external
from elastiserve_store.bundle import write_bundle
from elastiserve_store.manifest import InputSpec, Normalisation
from elastiserve_store.slots import prefix, tensor_slots
from elastiserve_train.model_analysis import analyse

CONSTRUCTOR = "torchvision:resnet18"
SHAPE = (3, 16, 16)
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CLASSES = tuple(f"class{i}" for i in range(4))
RATIOS = (0.25, 0.5, 0.75, 1.0)
# The names `elastiserve train` gives its levels.
LEVELS = tuple(f"L{k}-{round(r * 100)}pct" for k, r in enumerate(RATIOS))


def nested_levels(arch_args: dict[str, Any], constructor: str = CONSTRUCTOR) -> list[nn.Module]:
    """Every level: the full model's prefix on each slot, at ``RATIOS`` of its widths."""
    torch.manual_seed(0)
    full = external.build(constructor, arch_args).eval()
    state = full.state_dict()
    full_widths = external.full_widths(constructor, arch_args)
    levels = []
    for ratio in RATIOS:
        widths = {slot: max(1, math.ceil(w * ratio)) for slot, w in full_widths.items()}
        model = external.build(constructor, arch_args, widths)
        model.load_state_dict({name: prefix(state[name], info.axes, widths).clone()
                               for name, info in tensor_slots(model).items()})
        levels.append(model.eval())
    return levels


def make_torchvision_bundle(directory: Path,
                            constructor: str = CONSTRUCTOR) -> tuple[nn.Module, ...]:
    """Write the bundle to ``directory``; returns the levels as written (narrowest first)."""
    arch_args = analyse(constructor, {"num_classes": len(CLASSES)}, SHAPE, len(CLASSES))
    models = nested_levels(arch_args, constructor)
    write_bundle(
        directory, architecture=constructor, arch_args=arch_args, models=models,
        names=list(LEVELS), channel_ratios=RATIOS, input_spec=InputSpec(*SHAPE),
        normalisation=Normalisation(MEAN, STD), class_names=list(CLASSES),
    )
    return tuple(models)
