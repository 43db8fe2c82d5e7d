"""Prune-and-grow on torchvision models, end to end to a loaded bundle (issue 19, item 4).

Tiny inputs (3x16x16, 8 generated images, one optimiser step per stage) on the real
torchvision builders: DependencyGraph derives the slots, the pipeline prunes, tunes the core,
grows each level with the core frozen and exports; the bundle (schema 3: constructor + layout)
must rebuild every level to the trained level's output within 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from elastiserve_store import load_bundle
from elastiserve_store.bundle import split_nested
from elastiserve_store.manifest import CONSTRUCTOR_SCHEMA_VERSION
from elastiserve_store.slots import gather, prefix, tensor_slots
from elastiserve_train.data import generated
from elastiserve_train.model_analysis import analyse
from elastiserve_train.nested import NestedState, check_nested
from elastiserve_train.pipeline import Pipeline, PipelineConfig

from .core_checks import assert_core_unchanged

torch.set_num_threads(1)

MODELS = ("torchvision:resnet18", "torchvision:mobilenet_v3_small",
          "torchvision:efficientnet_b0")
SHAPE = (3, 16, 16)
CLASSES = 4


@pytest.mark.parametrize("name", MODELS)
def test_torchvision_prune_and_grow(tmp_path: Path, name: str) -> None:
    data = generated(n_train=8, n_test=4, channels=3, size=16, classes=CLASSES)
    args = analyse(name, {"num_classes": CLASSES}, SHAPE, CLASSES)
    cfg = PipelineConfig(arch=name, arch_args=args, importance="l1", baseline_epochs=1.0,
                         core_epochs=1.0, grow_epochs=1.0, batch_size=8, lr=0.001)
    pipe = Pipeline(cfg, data, tmp_path)
    pipe.baseline()
    pipe.prune()
    pipe.core()
    check_nested(NestedState.load(tmp_path / "core").kept)
    for k in range(1, cfg.levels):
        before = NestedState.load(tmp_path / ("core" if k == 1 else f"grow{k - 1}"))
        pipe.grow(k)
        after = NestedState.load(tmp_path / f"grow{k}")
        assert_core_unchanged(before, after)
        layout = before.layout
        for name_, tensor in before.master.items():  # the level below, not only level 0
            if not layout[name_].per_level:
                assert torch.equal(gather(tensor, layout[name_].axes, before.kept[k - 1]),
                                   gather(after.master[name_], layout[name_].axes,
                                          after.kept[k - 1])), f"{name_} changed at grow{k}"
    pipe.export()

    final = pipe.final_state()
    models = final.nested_models()
    split_nested(models)  # raises unless every level is a prefix of the largest
    top_layout = tensor_slots(models[-1])
    top = models[-1].state_dict()
    bundle = load_bundle(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["schema_version"] == CONSTRUCTOR_SCHEMA_VERSION
    assert manifest["architecture"]["name"] == name
    widths = [lv.widths for lv in bundle.manifest.levels]
    assert all(widths[k][s] <= widths[k + 1][s]
               for k in range(len(widths) - 1) for s in widths[k])
    assert any(widths[0][s] < widths[-1][s] for s in widths[0])
    x = torch.randn(2, *SHAPE)
    for k, model in enumerate(models):
        for t_name, t in model.state_dict().items():
            if not top_layout[t_name].per_level:
                assert torch.equal(t, prefix(top[t_name], top_layout[t_name].axes,
                                             final.widths(k))), t_name
        trained = final.level_model(k).eval()
        with torch.no_grad():
            out, ref = bundle.build_level(k)(x), trained(x)
        assert out.shape == (2, CLASSES)
        assert float((out - ref).abs().max()) <= 1e-5, f"level {k}"
