"""Bundles of constructor-built models (schema 3): the allow-list, the layout checks, migration.

The bundle here is written from a torchvision ResNet-18 cut to four nested widths along the
dependency-group layout (no training: random weights, random per-level batch norms and heads),
so each test is about the loader, not about pruning.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from elastiserve_store import (
    InputSpec,
    Normalisation,
    constructors,
    external,
    load_bundle,
    write_bundle,
)
from elastiserve_store.errors import ManifestError, UnknownSchemaVersionError
from elastiserve_store.manifest import CONSTRUCTOR_SCHEMA_VERSION, Manifest
from elastiserve_store.slots import prefix, tensor_slots, widths_of
from elastiserve_train.model_analysis import analyse

from .conftest import make_bundle

torch.set_num_threads(1)

NAME = "torchvision:resnet18"
Written = tuple[Path, list[torch.nn.Module]]
SHAPE = (3, 16, 16)


@pytest.fixture(scope="module")
def resnet_args() -> dict[str, object]:
    return analyse(NAME, {"num_classes": 3}, SHAPE, 3)


def _levels(args: dict[str, object]) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    full = external.build(NAME, args)
    layout = tensor_slots(full)
    fw = widths_of(full)
    models = []
    for r in (0.25, 0.5, 1.0):
        widths = {s: max(1, int(n * r)) for s, n in fw.items()}
        model = external.build(NAME, args, widths)
        state = model.state_dict()
        for name, t in full.state_dict().items():
            if not layout[name].per_level:
                state[name] = prefix(t, layout[name].axes, widths).clone()
            elif t.is_floating_point():
                state[name] = torch.randn_like(state[name]).abs() + 0.5
        model.load_state_dict(state)
        models.append(model.eval())
    return models


def _write(directory: Path, args: dict[str, object]) -> list[torch.nn.Module]:
    models = _levels(args)
    write_bundle(directory, architecture=NAME, arch_args=args, models=models,
                 channel_ratios=(0.25, 0.5, 1.0), input_spec=InputSpec(*SHAPE),
                 normalisation=Normalisation((0.5,) * 3, (0.25,) * 3),
                 class_names=("a", "b", "c"))
    return models


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, resnet_args: dict[str, object]
            ) -> Written:
    """One bundle written for the module; each test edits its own copy (see :func:`copy`)."""
    directory = tmp_path_factory.mktemp("resnet18") / "bundle"
    return directory, _write(directory, resnet_args)


def _copy(written: Written, directory: Path) -> Path:
    shutil.copytree(written[0], directory)
    return directory


def _edit(directory: Path, change: dict[str, object]) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["architecture"].update(change)
    path.write_text(json.dumps(data))


def test_levels_rebuild_exactly(written: Written) -> None:
    models = written[1]
    bundle = load_bundle(written[0])
    assert bundle.manifest.schema_version == CONSTRUCTOR_SCHEMA_VERSION
    x = torch.randn(2, *SHAPE)
    for k, model in enumerate(models):
        with torch.no_grad():
            assert float((bundle.build_level(k)(x) - model(x)).abs().max()) <= 1e-5


def test_factory_outside_allow_list_is_refused_before_import(
        tmp_path: Path, written: Written, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle names a module whose import would leave a mark: it is never imported."""
    _copy(written, tmp_path / "b")
    mark = tmp_path / "imported"
    (tmp_path / "evil_factory_mod.py").write_text(
        f"open({str(mark)!r}, 'w').close()\n"
        "def make(**kw):\n    import torchvision\n    return torchvision.models.resnet18(**kw)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(constructors.ALLOW_ENV, raising=False)
    _edit(tmp_path / "b", {"name": "evil_factory_mod:make"})
    with pytest.raises(constructors.ConstructorNotAllowedError, match=constructors.ALLOW_ENV):
        load_bundle(tmp_path / "b")
    assert not mark.exists()
    assert "evil_factory_mod" not in sys.modules

    monkeypatch.setenv(constructors.ALLOW_ENV, "other.mod:f, evil_factory_mod:make")
    bundle = load_bundle(tmp_path / "b")  # allowed by the serving side: same model, loads
    assert mark.exists()
    assert bundle.build_level(0)(torch.randn(1, *SHAPE)).shape == (1, 3)


@pytest.mark.parametrize("name", [
    "torchvision:fasterrcnn_resnet50_fpn",  # a torchvision builder, not a classifier
    "torchvision:load_state_dict_from_url",  # a torchvision function, not a builder
    "os:system",
])
def test_names_outside_allow_list_refused(tmp_path: Path, written: Written, name: str) -> None:
    tmp_path = _copy(written, tmp_path / "b")
    _edit(tmp_path, {"name": name})
    with pytest.raises(constructors.ConstructorNotAllowedError):
        load_bundle(tmp_path)


@pytest.mark.parametrize("name", ["resnet18:", "a b:c", "torchvision:x;y", "../x:y"])
def test_malformed_constructor_names_refused(tmp_path: Path, written: Written, name: str) -> None:
    tmp_path = _copy(written, tmp_path / "b")
    _edit(tmp_path, {"name": name})
    with pytest.raises(ManifestError, match="must be 'torchvision:<model>'"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("kwargs, reason", [
    ({"num_classes": 3, "weights": "IMAGENET1K_V1"}, "fetch pretrained weights"),
    ({"num_classes": {"nested": 1}}, "plain JSON value"),
])
def test_constructor_arguments_bounded(tmp_path: Path, written: Written,
                                       resnet_args: dict[str, object],
                                       kwargs: dict[str, object], reason: str) -> None:
    tmp_path = _copy(written, tmp_path / "b")
    _edit(tmp_path, {"args": {"kwargs": kwargs, "layout": resnet_args["layout"]}})
    with pytest.raises(ManifestError, match=reason):
        load_bundle(tmp_path)


def test_constructor_needs_schema_3(tmp_path: Path, written: Written) -> None:
    tmp_path = _copy(written, tmp_path / "b")
    path = tmp_path / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="needs schema_version 3"):
        load_bundle(tmp_path)
    data["schema_version"] = 4
    path.write_text(json.dumps(data))
    with pytest.raises(UnknownSchemaVersionError):
        load_bundle(tmp_path)


def test_layout_naming_no_layer_refused(tmp_path: Path, written: Written,
                                        resnet_args: dict[str, object]) -> None:
    tmp_path = _copy(written, tmp_path / "b")
    layout = dict(resnet_args["layout"])  # type: ignore[call-overload]
    layout["layer9.conv"] = [None, "g0", False]
    _edit(tmp_path, {"args": {"kwargs": resnet_args["kwargs"], "layout": layout}})
    with pytest.raises(ManifestError, match=r"layer9\.conv"):
        load_bundle(tmp_path)


def test_layout_splitting_a_residual_add_is_refused_on_meta(
        resnet_args: dict[str, object]) -> None:
    """Give one residual branch's output its own slot: shapes alone look consistent, the
    meta-device run of the level refuses it."""
    layout = {k: list(v) for k, v in resnet_args["layout"].items()}  # type: ignore[attr-defined]
    for name in ("layer1.0.conv2", "layer1.0.bn2"):
        layout[name] = [layout[name][0] if name.endswith("conv2") else "gsplit", "gsplit",
                        layout[name][2]]
    args = {"kwargs": resnet_args["kwargs"], "layout": layout}
    full = external.full_widths(NAME, args)
    half = {s: max(1, n // 2) for s, n in full.items()}
    half["gsplit"] = full["gsplit"]
    with pytest.raises(ManifestError, match="does not run at its widths"):
        external.check_runs(NAME, args, [half], SHAPE)


def test_in_project_bundles_still_load(tmp_path: Path) -> None:
    """Schema 1 bundles need no migration: read as before."""
    make_bundle(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["schema_version"] == 1
    assert load_bundle(tmp_path).manifest.architecture == "resnet20"
    assert Manifest.from_dict(data).schema_version == 1
