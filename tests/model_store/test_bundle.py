"""Bundle round trip: every level comes back exactly, as a prefix of one shared tensor set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from elastiserve_store import ARCHITECTURES, SCHEMA_VERSION, load_bundle, write_bundle
from elastiserve_store.bundle import SHARED
from elastiserve_store.manifest import InputSpec, Normalisation

from .conftest import ARGS, RATIOS, make_bundle, nested_models

torch.set_num_threads(1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_round_trip_is_exact_for_every_level(tmp_path: Path, arch: str) -> None:
    models = make_bundle(tmp_path, arch)
    bundle = load_bundle(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    assert len(bundle.level_names) == 4
    for k, (model, built) in enumerate(zip(models, bundle.build_all(), strict=True)):
        assert not built.training
        for name, t in model.state_dict().items():
            assert torch.equal(t, built.state_dict()[name]), (k, name)
        out = built(x)
        assert out.shape == (3, 3)
        assert torch.equal(out, model(x))


def test_manifest_fields(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["architecture"] == {"name": "resnet20", "args": ARGS}
    assert [lv["channel_ratio"] for lv in data["levels"]] == list(RATIOS)
    macs = [lv["macs"] for lv in data["levels"]]
    assert macs == sorted(macs) and macs[0] < macs[-1]
    assert {"name", "widths", "params", "accuracy", "latency_ms_b1", "latency_ms_b32"} <= set(
        data["levels"][0])
    assert data["input"] == {"channels": 1, "height": 8, "width": 8, "dtype": "float32"}
    assert data["normalisation"] == {"mean": [0.5], "std": [0.25]}
    assert data["class_names"] == ["a", "b", "c"]
    assert len(data["weights"]["sha256"]) == 64


def test_shared_tensors_stored_once(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    shared = [n for n in bundle.tensors if n.startswith(SHARED)]
    assert shared and all(bundle.tensors[n].ndim == 4 for n in shared)  # resnet: convs only
    full = bundle.build_level(3)
    shared_numel = sum(bundle.tensors[n].numel() for n in shared)
    conv_numel = sum(p.numel() for p in full.parameters() if p.ndim == 4)
    assert shared_numel == conv_numel


def test_share_storage_levels_are_views(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    small, big = bundle.build_level(0, share_storage=True), bundle.build_level(3)
    w = dict(small.named_parameters())["conv1.weight"]
    assert w.untyped_storage().data_ptr() == \
        bundle.tensors[SHARED + "conv1.weight"].untyped_storage().data_ptr()
    assert bundle.build_level("L0")(torch.randn(1, 1, 8, 8)).shape == (1, 3)
    assert big(torch.randn(1, 1, 8, 8)).shape == (1, 3)


def test_writer_refuses_levels_that_are_not_prefixes(tmp_path: Path) -> None:
    models = nested_models("resnet20")
    with torch.no_grad():
        models[0].get_parameter("conv1.weight").add_(1.0)
    with pytest.raises(ValueError, match="not a prefix"):
        write_bundle(tmp_path, architecture="resnet20", arch_args=ARGS, models=models,
                     channel_ratios=RATIOS, input_spec=InputSpec(1, 8, 8),
                     normalisation=Normalisation((0.5,), (0.25,)), class_names=("a", "b", "c"))
