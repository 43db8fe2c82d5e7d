"""``elastiserve train --strategy regrowth --model``: bidirectional pruning-regrowth on models
this project did not write (a user's factory, a torchvision model), both forms, with what they
write loading and running on a serving side that allows the constructor; the layouts and the
strategy that cannot take such a model are refused up front (one line, exit 2, nothing trained).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from elastiserve.cli import main
from elastiserve_store import architectures, constructors, load_bundle
from elastiserve_store.slots import tensor_slots
from elastiserve_store.sparse import load_sparse

from .user_models import tiny_residual

torch.set_num_threads(1)

FACTORY = "tests.training.user_models"
FAST = ["--dataset", "generated", "--image-size", "16", "--epochs", "0.25",
        "--core-epochs", "0.25", "--grow-epochs", "0.25", "--batch-size", "16",
        "--threads", "1", "--no-progress"]


@pytest.fixture
def fresh_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """Factories trusted by one CLI run must not leak into the next test."""
    monkeypatch.setattr(constructors, "_trusted", set())
    monkeypatch.delenv(constructors.ALLOW_ENV, raising=False)


def _serving_side(monkeypatch: pytest.MonkeyPatch, allow: str) -> None:
    """A process of its own that trusts nothing the CLI trusted, only its allow-list."""
    monkeypatch.setattr(constructors, "_trusted", set())
    monkeypatch.setenv(constructors.ALLOW_ENV, allow)


def test_unstructured_regrowth_of_a_user_factory_with_its_weights(
        tmp_path: Path, fresh_trust: None, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{FACTORY}:tiny_residual"
    torch.manual_seed(3)
    mine = tiny_residual(num_classes=4)
    save_file({k: v.contiguous() for k, v in mine.state_dict().items()},
              str(tmp_path / "mine.safetensors"))
    out = tmp_path / "run"
    assert main(["train", "--strategy", "regrowth", "--model", name, "--model-arg",
                 "num_classes=4", "--weights", str(tmp_path / "mine.safetensors"),
                 "--regrowth-steps", "2", *FAST, "--out", str(out)]) == 0
    baseline = load_file(str(out / "baseline.safetensors"))  # the user's weights, untrained
    assert all(torch.equal(baseline[k], v) for k, v in mine.state_dict().items())
    report = json.loads((out / "report.json").read_text())
    assert report["architecture"] == name and report["form"] == "unstructured"
    assert len(report["levels"]) == 3
    sparsities = [lv["sparsity"] for lv in report["levels"]]
    assert sparsities == sorted(sparsities, reverse=True) and sparsities[0] > 0.9
    _serving_side(monkeypatch, name)
    for lv in report["levels"]:
        art = load_sparse(out / lv["artifact"])  # enough to rebuild the network
        assert art.metadata["architecture"] == name
        model = architectures.build(art.metadata["architecture"], art.metadata["arch_args"])
        model.load_state_dict(art.tensors)
        zeros = sum(int((p == 0).sum()) for n, p in art.tensors.items()
                    if n.endswith("weight") and p.dim() > 1)
        total = sum(p.numel() for n, p in art.tensors.items()
                    if n.endswith("weight") and p.dim() > 1)
        assert zeros / total == pytest.approx(lv["sparsity"], abs=0.01)
        assert model.eval()(torch.zeros(2, 3, 16, 16)).shape == (2, 4)


def test_structured_regrowth_of_a_user_factory_makes_a_nested_bundle(
        tmp_path: Path, fresh_trust: None, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"{FACTORY}:tiny_residual"
    out = tmp_path / "run"
    assert main(["train", "--strategy", "regrowth", "--regrowth-form", "structured",
                 "--regrowth-init", "reinit", "--model", name, "--regrowth-keep", "0.3",
                 "--regrowth-steps", "2", *FAST, "--out", str(out)]) == 0
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    assert manifest["architecture"]["name"] == name
    _serving_side(monkeypatch, name)
    bundle = load_bundle(out / "bundle")
    levels = [m.eval() for m in bundle.build_all()]
    assert len(levels) == 3
    ratios = [lv.channel_ratio for lv in bundle.manifest.levels]
    assert ratios == sorted(ratios) and ratios[-1] == 1.0
    for small, wide in itertools.pairwise(levels):  # levels are prefixes
        layout = tensor_slots(wide)
        big = wide.state_dict()
        for key, t in small.state_dict().items():
            if not layout[key].per_level:
                assert torch.equal(t, big[key][tuple(slice(0, n) for n in t.shape)]), key
    assert all(m(torch.zeros(2, 3, 16, 16)).shape == (2, 4) for m in levels)


def test_unstructured_regrowth_of_torchvision_resnet18(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--strategy", "regrowth", "--model", "torchvision:resnet18",
                 "--regrowth-steps", "1", "--train-subset", "32", "--test-subset", "16",
                 *FAST, "--epochs", "0", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    extreme = report["levels"][0]
    assert extreme["size_bytes"] < report["baseline"]["size_bytes"] / 10
    art = load_sparse(out / extreme["artifact"])
    model = architectures.build(art.metadata["architecture"], art.metadata["arch_args"])
    model.load_state_dict(art.tensors)
    assert model.eval()(torch.zeros(1, 3, 16, 16)).shape == (1, 4)


@pytest.mark.parametrize(("extra", "reason"), [
    (["--strategy", "discovery"], "removes whole residual blocks, which a DependencyGraph "
                                  "layout does not describe"),
    (["--strategy", "regrowth", "--regrowth-form", "structured", "--model-arg",
      "num_classes=4"], "has a concatenated or grouped channel axis"),
])
def test_what_cannot_take_a_layout_is_refused_up_front(
        tmp_path: Path, fresh_trust: None, capsys: pytest.CaptureFixture[str],
        extra: list[str], reason: str) -> None:
    out = tmp_path / "run"
    code = main(["train", "--model", f"{FACTORY}:with_concat", *extra, *FAST,
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert reason in err and len(err.splitlines()) == 1, err
    assert not (out / "baseline.safetensors").exists()  # nothing trained
