"""Small real bundles for serving tests, written with the model store's own writer.

Weights are random (accuracy is not what these tests check); each smaller level is the prefix of
the full model on every slot, which is exactly the nesting the bundle format requires.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from elastiserve_store import architectures
from elastiserve_store.bundle import write_bundle
from elastiserve_store.manifest import InputSpec, Normalisation
from elastiserve_store.slots import prefix, tensor_slots

LEVELS = ("L0", "L1", "L2")


def make_bundle(
    directory: Path,
    *,
    arch: str = "resnet20",
    width_mult: float = 0.25,
    ratios: tuple[float, ...] = (0.5, 0.75, 1.0),
    size: int = 16,
    names: tuple[str, ...] | None = None,
    channels: int = 1,
    normalisation: Normalisation | None = None,
) -> Path:
    """Write a 10-class bundle of ``len(ratios)`` nested levels to ``directory``.

    One channel by default (the tests' size); the serving benchmark asks for 3 channels at
    224x224 with ImageNet normalisation, the geometry TorchServe's stock image classifier fixes.
    """
    torch.manual_seed(0)
    args = {"in_channels": channels, "num_classes": 10, "width_mult": width_mult}
    full = architectures.build(arch, args).eval()
    full_state = full.state_dict()
    full_widths = architectures.full_widths(arch, args)
    models = []
    for ratio in ratios:
        widths = {s: max(1, math.ceil(w * ratio)) for s, w in full_widths.items()}
        model = architectures.build(arch, args, widths)
        state = {
            name: prefix(full_state[name], info.axes, widths).clone()
            for name, info in tensor_slots(model).items()
        }
        model.load_state_dict(state)
        models.append(model.eval())
    write_bundle(
        directory,
        architecture=arch,
        arch_args=args,
        models=models,
        names=list(names) if names is not None
        else list(LEVELS[: len(ratios)]) if len(ratios) <= len(LEVELS) else None,
        channel_ratios=ratios,
        input_spec=InputSpec(channels, size, size),
        normalisation=normalisation or Normalisation((0.5,) * channels, (0.25,) * channels),
        class_names=[f"item{i}" for i in range(10)],
    )
    return directory
