"""A level cut along a concatenated or grouped layout is the full model minus the cut channels.

No training: the full model with random weights and batch-norm statistics, cut by the layout
the analysis derived (:func:`external.cut`), must compute exactly what the full model computes
once every weight that reads a cut channel is zeroed (a consumer of a ``torch.cat`` reading
each part at the wrong offset, or a grouped convolution reading the wrong channels of a group,
would differ). Then a bundle written from such cuts loads, rebuilds its levels, and refuses a
manifest whose widths break a slot's groups or whose layout misstates a part's size.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from elastiserve_store import (
    InputSpec,
    Normalisation,
    constructors,
    external,
    load_bundle,
    write_bundle,
)
from elastiserve_store.errors import ManifestError
from elastiserve_store.slots import Widths, prefix, slot_groups, tensor_slots, widths_of
from elastiserve_train.model_analysis import analyse

from .external_pipeline import CLASSES, FACTORY, SHAPE

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_trust(trusted: None) -> None:
    """Every test here starts with no factory trusted (``conftest.trusted``)."""


def _full(factory: str) -> tuple[str, dict[str, Any], nn.Module]:
    name = f"{FACTORY}:{factory}"
    constructors.trust_factory(name)
    args = analyse(name, {"num_classes": CLASSES}, SHAPE, CLASSES)
    torch.manual_seed(0)
    model = external.build(name, args).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # statistics that do not hide a wrong channel
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return name, args, model


def _widths(model: nn.Module, seed: int) -> Widths:
    """Per slot a random width (a multiple of its groups), different from slot to slot."""
    gen = torch.Generator().manual_seed(seed)
    groups = slot_groups(tensor_slots(model))
    out = {}
    for slot, n in widths_of(model).items():
        share = n // groups[slot]
        out[slot] = groups[slot] * int(torch.randint(1, share + 1, (1,), generator=gen))
    return out


def _without(model: nn.Module, widths: Widths) -> nn.Module:
    """The full model with every weight that reads a channel a cut to ``widths`` drops zeroed."""
    zeroed = copy.deepcopy(model)
    layout = tensor_slots(zeroed)
    with torch.no_grad():
        for name, param in zeroed.named_parameters():
            axes = layout[name].axes
            if len(axes) < 2 or axes[1] is None:
                continue
            keep = torch.zeros(param.shape[1], dtype=torch.bool)
            keep[prefix(torch.arange(param.shape[1]), (axes[1],), widths)] = True
            param[:, ~keep] = 0.0
    return zeroed


@pytest.mark.parametrize("factory", [
    "dense_block", "inception_block", "resnext_block", "with_grouped_conv", "small_densenet",
    "small_resnext",
])
def test_cut_level_equals_full_model_without_the_cut_channels(factory: str) -> None:
    _name, _args, full = _full(factory)
    x = torch.randn(2, *SHAPE)
    for seed in range(3):
        widths = _widths(full, seed)
        cut = copy.deepcopy(full)
        external.cut(cut, widths)
        assert widths_of(cut) == widths
        with torch.no_grad():
            got, want, whole = cut(x), _without(full, widths)(x), full(x)
        assert float((got - want).abs().max()) <= 1e-5, f"{factory} at {widths}"
        assert float((got - whole).abs().max()) > 1e-3  # the cut did change something


@pytest.fixture(scope="module")
def resnext_bundle(tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[tuple[Path, list[nn.Module]]]:
    patch = pytest.MonkeyPatch()
    patch.setattr(constructors, "_trusted", set())
    name, args, full = _full("resnext_block")
    fw = widths_of(full)
    groups = slot_groups(tensor_slots(full))
    models = []
    for r in (0.25, 0.5, 1.0):
        widths = {s: groups[s] * max(1, int(n // groups[s] * r)) for s, n in fw.items()}
        model = copy.deepcopy(full)
        external.cut(model, widths)
        models.append(model)
    directory = tmp_path_factory.mktemp("resnext") / "bundle"
    write_bundle(directory, architecture=name, arch_args=args, models=models,
                 channel_ratios=(0.25, 0.5, 1.0), input_spec=InputSpec(*SHAPE),
                 normalisation=Normalisation((0.5,) * 3, (0.25,) * 3),
                 class_names=("a", "b", "c", "d"))
    yield directory, models
    patch.undo()


def _copy_with(src: Path, dst: Path, edit: Any) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def test_grouped_bundle_rebuilds_its_levels(resnext_bundle: tuple[Path, list[nn.Module]]
                                            ) -> None:
    constructors.trust_factory(f"{FACTORY}:resnext_block")
    directory, models = resnext_bundle
    bundle = load_bundle(directory)
    x = torch.randn(2, *SHAPE)
    for k, model in enumerate(models):
        with torch.no_grad():
            assert float((bundle.build_level(k)(x) - model(x)).abs().max()) <= 1e-5


def test_widths_that_break_a_slots_groups_are_refused(
        tmp_path: Path, resnext_bundle: tuple[Path, list[nn.Module]]) -> None:
    constructors.trust_factory(f"{FACTORY}:resnext_block")
    layout = json.loads((resnext_bundle[0] / "manifest.json").read_text())
    grouped = next(side[0][0] for entry in layout["architecture"]["args"]["layout"].values()
                   for side in entry[:2] if isinstance(side, list))

    def edit(m: dict[str, Any]) -> None:
        m["levels"][1]["widths"][grouped] += 1

    with pytest.raises(ManifestError, match="not a multiple of their groups"):
        load_bundle(_copy_with(resnext_bundle[0], tmp_path / "b", edit))


def test_a_part_that_misstates_its_slots_size_is_refused(
        tmp_path: Path, resnext_bundle: tuple[Path, list[nn.Module]]) -> None:
    constructors.trust_factory(f"{FACTORY}:resnext_block")

    def edit(m: dict[str, Any]) -> None:
        entry = m["architecture"]["args"]["layout"]["grouped.0"]
        entry[0] = [[entry[0][0][0], 12, 4]]  # the slot has 16 channels

    with pytest.raises(ManifestError, match="records 12 channels, the slot has 16"):
        load_bundle(_copy_with(resnext_bundle[0], tmp_path / "b", edit))
