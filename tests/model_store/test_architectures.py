"""Architectures: every model builds at any widths, tags every tensor, and nests by prefix."""

from __future__ import annotations

import pytest
import torch

from elastiserve_store import ARCHITECTURES, architectures
from elastiserve_store.slots import prefix, tensor_slots, widths_of

torch.set_num_threads(1)
ARGS = {"in_channels": 1, "num_classes": 5, "width_mult": 0.25}


def _half(widths: dict[str, int]) -> dict[str, int]:
    return {s: max(1, w // 2) for s, w in widths.items()}


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("size", [8, 28])
def test_forward_shape_at_full_and_reduced_widths(arch: str, size: int) -> None:
    full = architectures.full_widths(arch, ARGS)
    for widths in (full, _half(full)):
        model = architectures.build(arch, ARGS, widths).eval()
        assert model(torch.randn(2, 1, size, size)).shape == (2, 5)
        assert widths_of(model) == widths


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_tensor_is_tagged_and_structure_does_not_depend_on_widths(arch: str) -> None:
    full = architectures.build(arch, ARGS)
    small = architectures.build(arch, ARGS, _half(architectures.full_widths(arch, ARGS)))
    assert set(tensor_slots(full)) == set(full.state_dict()) == set(small.state_dict())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prefix_slice_of_full_model_is_a_working_level(arch: str) -> None:
    full = architectures.build(arch, ARGS).eval()
    widths = _half(widths_of(full))
    layout = tensor_slots(full)
    small = architectures.build(arch, ARGS, widths).eval()
    small.load_state_dict({n: prefix(t, layout[n].axes, widths)
                           for n, t in full.state_dict().items()})
    assert small(torch.randn(1, 1, 8, 8)).shape == (1, 5)


def test_unknown_architecture_and_bad_widths_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        architectures.build("resnet18", ARGS)
    widths = architectures.full_widths("resnet20", ARGS)
    with pytest.raises(ValueError, match="out of range"):
        architectures.build("resnet20", ARGS, {**widths, "s1": widths["s1"] + 1})
    with pytest.raises(ValueError, match="missing"):
        architectures.build("resnet20", ARGS, {"s1": 1})
