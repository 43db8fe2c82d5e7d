"""A small nested bundle with random weights, for loader and integrity tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elastiserve_store import InputSpec, Normalisation, architectures, write_bundle
from elastiserve_store.slots import prefix, tensor_slots

ARGS = {"in_channels": 1, "num_classes": 3, "width_mult": 0.25}
RATIOS = (0.25, 0.5, 0.75, 1.0)


def nested_models(arch: str, seed: int = 0) -> list[torch.nn.Module]:
    """Levels cut as prefixes of one random full model, each with its own random BN/head."""
    torch.manual_seed(seed)
    full = architectures.build(arch, ARGS)
    layout = tensor_slots(full)
    fw = architectures.full_widths(arch, ARGS)
    models = []
    for r in RATIOS:
        widths = {s: max(1, int(n * r)) for s, n in fw.items()}
        model = architectures.build(arch, ARGS, widths)
        state = model.state_dict()
        for name, t in full.state_dict().items():
            if not layout[name].per_level:
                state[name] = prefix(t, layout[name].axes, widths).clone()
            elif t.is_floating_point():
                state[name] = torch.randn_like(state[name]).abs() + 0.5
        model.load_state_dict(state)
        models.append(model.eval())
    return models


def make_bundle(directory: Path, arch: str = "resnet20") -> list[torch.nn.Module]:
    models = nested_models(arch)
    write_bundle(directory, architecture=arch, arch_args=ARGS, models=models,
                 channel_ratios=RATIOS, input_spec=InputSpec(1, 8, 8),
                 normalisation=Normalisation((0.5,), (0.25,)), class_names=("a", "b", "c"),
                 accuracies=[0.1, 0.2, 0.3, 0.4])
    return models


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    make_bundle(tmp_path / "bundle")
    return tmp_path / "bundle"
