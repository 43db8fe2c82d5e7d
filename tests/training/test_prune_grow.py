"""Prune-and-grow end to end on tiny generated data, for every architecture.

Checks the issue's properties: each level runs with the right output shape, channels nest (every
level a prefix of the next in the exported order), growing leaves the core bit-identical, and
the bundle reproduces each level-k model from the end of training (max abs diff <= 1e-5).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elastiserve_store import ARCHITECTURES, load_bundle
from elastiserve_store.bundle import split_nested
from elastiserve_store.slots import gather, prefix, tensor_slots
from elastiserve_train.data import generated
from elastiserve_train.nested import NestedState, check_nested
from elastiserve_train.pipeline import Pipeline, PipelineConfig

torch.set_num_threads(1)


def _config(arch: str, importance: str = "l1") -> PipelineConfig:
    return PipelineConfig(arch=arch, arch_args={"in_channels": 1, "num_classes": 4,
                                                "width_mult": 0.25},
                          importance=importance, baseline_epochs=0.5, prune_epochs=0.0,
                          core_epochs=0.5, grow_epochs=1.0, batch_size=16)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prune_and_grow(tmp_path: Path, arch: str) -> None:
    data = generated(n_train=32, n_test=16, channels=1, size=8)
    pipe = Pipeline(_config(arch), data, tmp_path)
    pipe.baseline()
    pipe.prune()
    pipe.core()
    check_nested(NestedState.load(tmp_path / "core").kept)
    for k in range(1, 4):
        before = NestedState.load(tmp_path / ("core" if k == 1 else f"grow{k - 1}"))
        pipe.grow(k)
        after = NestedState.load(tmp_path / f"grow{k}")
        layout = before.layout
        changed = False
        for name, tensor in before.master.items():
            if layout[name].per_level:
                continue
            core_before = gather(tensor, layout[name].axes, before.kept[k - 1])
            core_after = gather(after.master[name], layout[name].axes, after.kept[k - 1])
            assert torch.equal(core_before, core_after), f"core changed: {name} at grow{k}"
            level_before = gather(tensor, layout[name].axes, before.kept[k])
            level_after = gather(after.master[name], layout[name].axes, after.kept[k])
            changed |= not torch.equal(level_before, level_after)
        assert changed, "growth trained nothing"
        for j in range(k):  # earlier levels' own BN and head untouched
            for name, t in before.level_own[j].items():
                assert torch.equal(t, after.level_own[j][name])
    pipe.export()

    final = pipe.final_state()
    models = final.nested_models()
    split_nested(models)  # raises unless every level is a prefix of the largest
    layout = tensor_slots(models[-1])
    top = models[-1].state_dict()
    x = torch.randn(3, 1, 8, 8)
    bundle = load_bundle(tmp_path / "bundle")
    for k, model in enumerate(models):
        widths = final.widths(k)
        for name, t in model.state_dict().items():
            if not layout[name].per_level:
                assert torch.equal(t, prefix(top[name], layout[name].axes, widths))
        trained = final.level_model(k).eval()
        with torch.no_grad():
            out, ref = bundle.build_level(k)(x), trained(x)
            assert out.shape == (3, 4)
            assert float((out - ref).abs().max()) <= 1e-5
            assert float((model(x) - ref).abs().max()) <= 1e-5


@pytest.mark.parametrize("importance", ["taylor", "hessian"])
def test_gradient_importances_through_pipeline(tmp_path: Path, importance: str) -> None:
    data = generated(n_train=16, n_test=8, channels=1, size=8)
    cfg = _config("resnet20", importance)
    metrics = Pipeline(cfg, data, tmp_path).run()
    assert len(metrics["level_acc"]) == 4
    assert metrics["level_macs"] == sorted(metrics["level_macs"])
