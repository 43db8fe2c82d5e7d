"""Prune-and-grow a constructor-built model end to end, checking what issue 19 asks of it.

Shared by the torchvision and the model-structure tests: tiny generated data and one
optimiser step per stage, so a test costs seconds; what is checked is exact.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

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

FACTORY = "tests.training.user_models"
"""The module of the toy factories (``user_models.py``), as a user would name theirs."""
SHAPE = (3, 16, 16)
CLASSES = 4



def prune_grow_and_check(tmp_path: Path, name: str, shape: tuple[int, int, int],
                         classes: int, kwargs: dict[str, Any] | None = None,
                         n_train: int = 8, importance: str = "l1",
                         settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every stage on ``name`` and assert: the core (and each level below the one
    growing) bit-identical after every growth; levels nested and, in the bundle, prefixes of
    the largest; every level rebuilt from the bundle equal to the trained level within 1e-5;
    MACs rising with the level. ``settings``: more :class:`PipelineConfig` fields (the
    full-network loss, the anchor...). Returns the architecture arguments (with the layout)."""
    data = generated(n_train=n_train, n_test=4, channels=shape[0], size=shape[1],
                     classes=classes)
    args = analyse(name, {"num_classes": classes, **(kwargs or {})}, shape, classes)
    cfg = PipelineConfig(arch=name, arch_args=args, importance=importance, baseline_epochs=1.0,
                         core_epochs=1.0, grow_epochs=1.0, batch_size=8, lr=0.001,
                         **(settings or {}))
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
    check_nested(final.kept)
    models = final.nested_models()
    split_nested(models)  # raises unless every level is a prefix of the largest
    top_layout = tensor_slots(models[-1])
    top = models[-1].state_dict()
    top_widths = final.widths(len(models) - 1)
    bundle = load_bundle(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["schema_version"] == CONSTRUCTOR_SCHEMA_VERSION
    assert manifest["architecture"]["name"] == name
    assert manifest["architecture"]["args"]["layout"] == args["layout"]
    widths = [lv.widths for lv in bundle.manifest.levels]
    assert all(widths[k][s] <= widths[k + 1][s]
               for k in range(len(widths) - 1) for s in widths[k])
    assert any(widths[0][s] < widths[-1][s] for s in widths[0])
    x = torch.randn(2, *shape)
    for k, model in enumerate(models):
        for t_name, t in model.state_dict().items():
            if not top_layout[t_name].per_level:
                assert torch.equal(t, prefix(top[t_name], top_layout[t_name].axes,
                                             final.widths(k), top_widths)), t_name
        trained = final.level_model(k).eval()
        with torch.no_grad():
            out, ref = bundle.build_level(k)(x), trained(x)
        assert out.shape == (2, classes)
        assert float((out - ref).abs().max()) <= 1e-5, f"level {k}"
    macs = json.loads((tmp_path / "state.json").read_text())["metrics"]["level_macs"]
    assert all(a < b for a, b in itertools.pairwise(macs)), macs
    return args
