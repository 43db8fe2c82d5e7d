"""``elastiserve train --model``: a torchvision model on ImageFolder data with the user's weights,
a user's own factory, and the structures refused up front (one line, exit 2, nothing trained)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from elastiserve.cli import main
from elastiserve_store import constructors, load_bundle

torch.set_num_threads(1)

FAST = ["--core-epochs", "1", "--grow-epochs", "1", "--batch-size", "8", "--levels", "2",
        "--threads", "1", "--no-progress"]
FACTORY = "tests.training.user_models"


def _image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_torchvision_model_on_image_folder_with_user_weights(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data")
    torch.manual_seed(1)
    mine = torchvision.models.mobilenet_v3_small(num_classes=2)
    torch.save(mine.state_dict(), tmp_path / "mine.pt")
    out = tmp_path / "run"
    assert main(["train", "--model", "torchvision:mobilenet_v3_small", "--dataset",
                 "imagefolder", "--data-path", str(data), "--image-size", "32", "--weights",
                 str(tmp_path / "mine.pt"), *FAST, "--out", str(out)]) == 0
    baseline = load_file(str(out / "baseline.safetensors"))  # the user's weights, untrained
    assert all(torch.equal(baseline[k], v) for k, v in mine.state_dict().items())
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["architecture"]["name"] == "torchvision:mobilenet_v3_small"
    assert manifest["architecture"]["args"]["kwargs"] == {"num_classes": 2}  # from the folders
    assert manifest["class_names"] == ["cat", "dog"]
    bundle = load_bundle(out / "bundle")
    assert bundle.build_level(0)(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def test_weights_that_need_unpickling_are_refused(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    data = _image_folder(tmp_path / "data")
    torch.save({"model": Path("x")}, tmp_path / "pickled.pt")  # not loadable weights_only
    code = main(["train", "--model", "torchvision:mobilenet_v3_small", "--dataset",
                 "imagefolder", "--data-path", str(data), "--weights",
                 str(tmp_path / "pickled.pt"), *FAST, "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "weights_only=True" in err and len(err.splitlines()) == 1


def test_user_factory_trains_and_serving_side_must_allow_it(
        tmp_path: Path, trusted: None, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    name = f"{FACTORY}:tiny_residual"
    assert main(["train", "--model", name, "--model-arg", "num_classes=4", "--dataset",
                 "generated", "--epochs", "1", *FAST, "--out", str(out)]) == 0
    monkeypatch.setattr(constructors, "_trusted", set())  # a serving process of its own
    with pytest.raises(constructors.ConstructorNotAllowedError):
        load_bundle(out / "bundle")
    monkeypatch.setenv(constructors.ALLOW_ENV, name)
    assert len(load_bundle(out / "bundle").build_all()) == 2


@pytest.mark.parametrize("factory", ["with_concat", "with_grouped_conv"])
def test_concatenation_and_grouped_convolutions_train_from_the_cli(
        tmp_path: Path, trusted: None, monkeypatch: pytest.MonkeyPatch, factory: str) -> None:
    """Once refused up front; now a composite axis (concatenation) or a slot kept alike per
    group (grouped convolution) carries them through the same command and bundle."""
    out = tmp_path / "run"
    name = f"{FACTORY}:{factory}"
    assert main(["train", "--model", name, "--dataset", "generated", "--image-size", "32",
                 "--epochs", "1", *FAST, "--out", str(out)]) == 0
    monkeypatch.setenv(constructors.ALLOW_ENV, name)
    levels = load_bundle(out / "bundle").build_all()
    assert len(levels) == 2
    outputs = [level(torch.zeros(2, 3, 32, 32)) for level in levels]
    assert all(o.shape == outputs[-1].shape for o in outputs)


@pytest.mark.parametrize("model, reason", [
    (f"{FACTORY}:with_layer_norm", "norm is a GroupNorm holding tensors"),
    (f"{FACTORY}:chunk_block", "split apart (torch.split/chunk along channels)"),
    (f"{FACTORY}:mixed_groups", "groups the channels of one dependency group"),
    (f"{FACTORY}:with_conv_head", "does not come straight from an nn.Linear head"),
    ("torchvision:squeezenet1_0", "does not come straight from an nn.Linear head"),
    ("torchvision:fcos_resnet50_fpn", "not a torchvision classification model"),
])
def test_unsupported_structures_refused_up_front(
        tmp_path: Path, trusted: None, capsys: pytest.CaptureFixture[str],
        model: str, reason: str) -> None:
    out = tmp_path / "run"
    code = main(["train", "--model", model, "--dataset", "generated", "--image-size", "32",
                 *FAST, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert reason in err and len(err.splitlines()) == 1, err
    assert not (out / "state.json").exists()  # refused before any stage ran


def test_model_args_must_be_plain_and_hub_weights_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--model", "torchvision:resnet18", "--model-arg",
                 "weights=IMAGENET1K_V1", "--dataset", "generated", *FAST,
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert "would fetch pretrained weights" in capsys.readouterr().err
