"""Levels that differ in depth: skipped residual blocks in the architecture, manifest and bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from elastiserve_store import InputSpec, Normalisation, architectures, load_bundle, write_bundle
from elastiserve_store.architectures import BlockSkipError
from elastiserve_store.errors import ManifestError, ShapeMismatchError
from elastiserve_store.manifest import DEPTH_SCHEMA_VERSION, SCHEMA_VERSION, SkippedBlocksError
from elastiserve_store.profile import count_macs, count_params
from elastiserve_store.slots import prefix, tensor_slots

from .conftest import ARGS, make_bundle

SHAPE = (1, 8, 8)
# Level 0 skips two blocks, level 1 one of them, level 2 runs all: nested in depth.
SKIPS = (("s1.b1", "s2.b2"), ("s1.b1",), ())
RATIOS = (0.5, 0.75, 1.0)


def _depth_models(seed: int = 0, skips: tuple[tuple[str, ...], ...] = SKIPS
                  ) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    full = architectures.build("resnet20", ARGS)
    layout = tensor_slots(full)
    fw = architectures.full_widths("resnet20", ARGS)
    models = []
    for r, skip in zip(RATIOS, skips, strict=True):
        widths = {s: max(1, int(n * r)) for s, n in fw.items()}
        model = architectures.build("resnet20", ARGS, widths, skip)
        state = model.state_dict()
        for name in state:
            if not layout[name].per_level:
                state[name] = prefix(full.state_dict()[name], layout[name].axes, widths).clone()
            elif state[name].is_floating_point():
                state[name] = torch.randn_like(state[name]).abs() + 0.5
        model.load_state_dict(state)
        models.append(model.eval())
    return models


def _write(directory: Path, models: list[torch.nn.Module]) -> None:
    write_bundle(directory, architecture="resnet20", arch_args=ARGS, models=models,
                 channel_ratios=RATIOS, input_spec=InputSpec(*SHAPE),
                 normalisation=Normalisation((0.5,), (0.25,)), class_names=("a", "b", "c"))


def _edit_manifest(directory: Path, edit: object) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    assert callable(edit)
    edit(data)
    path.write_text(json.dumps(data))


class TestArchitecture:
    def test_skipped_block_is_gone_from_the_graph(self) -> None:
        full = architectures.build("resnet20", ARGS)
        short = architectures.build("resnet20", ARGS, skipped_blocks=("s1.b1",))
        assert not any(n.startswith("layers.1.") for n in short.state_dict())
        assert count_macs(short, SHAPE) < count_macs(full, SHAPE)
        assert count_params(short) < count_params(full)
        assert architectures.skipped_blocks_of(short) == ("s1.b1",)
        # The other blocks keep their names, so weights transfer between depths.
        assert set(short.state_dict()) < set(full.state_dict())

    def test_skipping_equals_a_block_whose_branch_is_zero(self) -> None:
        torch.manual_seed(1)
        full = architectures.build("resnet20", ARGS).eval()
        bn2 = full.get_submodule("layers.4.bn2")
        assert isinstance(bn2, torch.nn.BatchNorm2d)
        with torch.no_grad():
            bn2.weight.zero_()
            bn2.bias.zero_()
        short = architectures.build("resnet20", ARGS, skipped_blocks=("s2.b1",)).eval()
        short.load_state_dict({n: t for n, t in full.state_dict().items()
                               if not n.startswith("layers.4.")})
        x = torch.randn(2, *SHAPE)
        torch.testing.assert_close(short(x), full(x))

    def test_unknown_and_projection_blocks_are_refused(self) -> None:
        with pytest.raises(BlockSkipError, match=r"no residual block 's4\.b0'"):
            architectures.build("resnet20", ARGS, skipped_blocks=("s4.b0",))
        with pytest.raises(BlockSkipError, match=r"'s2\.b0'.*projection shortcut"):
            architectures.build("resnet20", ARGS, skipped_blocks=("s2.b0",))
        with pytest.raises(BlockSkipError, match="no skippable residual blocks"):
            architectures.build("vgg16_bn", ARGS, skipped_blocks=("s1.b1",))

    def test_resnet56_lists_its_blocks(self) -> None:
        blocks = architectures.blocks("resnet56")
        assert len(blocks) == 27
        assert [b.name for b in blocks if not b.skippable] == ["s2.b0", "s3.b0"]


class TestBundle:
    def test_levels_of_different_depth_round_trip(self, tmp_path: Path) -> None:
        models = _depth_models()
        _write(tmp_path / "b", models)
        raw = json.loads((tmp_path / "b" / "manifest.json").read_text())
        assert raw["schema_version"] == DEPTH_SCHEMA_VERSION
        assert [lv.get("skipped_blocks", []) for lv in raw["levels"]] == [
            ["s1.b1", "s2.b2"], ["s1.b1"], []]
        bundle = load_bundle(tmp_path / "b")
        x = torch.randn(3, *SHAPE)
        for k, model in enumerate(models):
            level = bundle.build_level(k)
            assert architectures.skipped_blocks_of(level) == SKIPS[k]
            with torch.no_grad():
                torch.testing.assert_close(level(x), model(x), atol=1e-6, rtol=1e-6)
        # Shared tensors are stored once; skipped blocks hold no per-level tensors.
        assert not any(n.startswith("levels.0.layers.1.") for n in bundle.tensors)
        assert any(n.startswith("levels.2.layers.1.") for n in bundle.tensors)
        shared = bundle.build_all(share_storage=True)
        assert len(shared) == 3

    def test_depth_uniform_bundles_keep_schema_1(self, tmp_path: Path) -> None:
        make_bundle(tmp_path / "b")
        raw = json.loads((tmp_path / "b" / "manifest.json").read_text())
        assert raw["schema_version"] == SCHEMA_VERSION
        assert all("skipped_blocks" not in lv for lv in raw["levels"])
        assert load_bundle(tmp_path / "b").manifest.levels[0].skipped_blocks == ()

    def test_a_level_that_runs_a_block_the_top_skips_is_not_written(self, tmp_path: Path
                                                                    ) -> None:
        models = _depth_models(skips=((), (), ("s2.b2",)))
        with pytest.raises(ValueError, match="not nested in depth"):
            _write(tmp_path / "b", models)

    @pytest.mark.parametrize(("levels", "message"), [
        ([["s9.b9"], [], []], "no residual block 's9.b9'"),
        ([["s3.b0"], [], []], "cannot be skipped"),
        ([["s1.b1"], [], ["s1.b2"]], "must run every block a smaller one runs"),
        ([[42], [], []], "must be a list of block names"),
    ])
    def test_bad_skipped_blocks_are_refused_before_the_weights(
            self, tmp_path: Path, levels: list[list[object]], message: str) -> None:
        _write(tmp_path / "b", _depth_models())

        def edit(data: dict[str, list[dict[str, object]]]) -> None:
            for lv, skip in zip(data["levels"], levels, strict=True):
                lv["skipped_blocks"] = skip

        _edit_manifest(tmp_path / "b", edit)
        # Corrupt the weights too: the manifest check must come first.
        (tmp_path / "b" / "weights.safetensors").write_bytes(b"\0" * 64)
        with pytest.raises(ManifestError, match=message) as info:
            load_bundle(tmp_path / "b")
        if "list of block names" not in message:
            assert isinstance(info.value, SkippedBlocksError)

    def test_skipped_blocks_need_schema_2(self, tmp_path: Path) -> None:
        _write(tmp_path / "b", _depth_models())

        def edit(data: dict[str, object]) -> None:
            data["schema_version"] = 1

        _edit_manifest(tmp_path / "b", edit)
        with pytest.raises(ManifestError, match="needs schema_version 2"):
            load_bundle(tmp_path / "b")

    def test_a_depth_the_weights_do_not_have_is_a_shape_error(self, tmp_path: Path) -> None:
        _write(tmp_path / "b", _depth_models())

        def edit(data: dict[str, list[dict[str, object]]]) -> None:
            data["levels"][0]["skipped_blocks"] = ["s1.b1", "s1.b2", "s2.b2"]

        _edit_manifest(tmp_path / "b", edit)
        with pytest.raises(ShapeMismatchError, match=r"levels\.0\.layers\.2"):
            load_bundle(tmp_path / "b")


def test_serving_builds_levels_of_different_depth(tmp_path: Path) -> None:
    """The serving runtime loads levels through the bundle: a depth-varying bundle serves."""
    from elastiserve_serve.bundle_levels import load_levels

    models = _depth_models()
    _write(tmp_path / "b", models)
    levels = load_levels(tmp_path / "b")
    x = torch.randn(2, *SHAPE)
    for module, model in zip(levels.modules, models, strict=True):
        with torch.no_grad():
            torch.testing.assert_close(module(x), model(x), atol=1e-6, rtol=1e-6)
