"""``elastiserve train --strategy regrowth --model``: bidirectional pruning-regrowth on models
this project did not write (a user's factory, a torchvision model), both forms, with what they
write loading and running on a serving side that allows the constructor. On layouts with
residual adds, depthwise and grouped convolutions and concatenations: the gated probe that
scores pruned channels computes exactly what the pruned level computes, regrowth leaves the
levels below bit-identical, grouped slots grow alike in every group, and every bundle level
equals the trained one. Discovery, which cannot take such a model, is refused up front (one
line, exit 2, nothing trained).
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
from elastiserve_train.data import generated
from elastiserve_train.model_analysis import analyse
from elastiserve_train.regrowth.channels import choose_channels, close_gates
from elastiserve_train.regrowth.structured_run import StructuredConfig, StructuredTrajectory

from .user_models import tiny_residual

torch.set_num_threads(1)

FACTORY = "tests.training.user_models"
FAST = ["--dataset", "generated", "--image-size", "16", "--epochs", "0.25",
        "--core-epochs", "0.25", "--grow-epochs", "0.25", "--batch-size", "16",
        "--threads", "1", "--no-progress"]


def _serving_side(monkeypatch: pytest.MonkeyPatch, allow: str) -> None:
    """A process of its own that trusts nothing the CLI trusted, only its allow-list."""
    monkeypatch.setattr(constructors, "_trusted", set())
    monkeypatch.setenv(constructors.ALLOW_ENV, allow)


def test_unstructured_regrowth_of_a_user_factory_with_its_weights(
        tmp_path: Path, trusted: None, monkeypatch: pytest.MonkeyPatch) -> None:
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
        tmp_path: Path, trusted: None, monkeypatch: pytest.MonkeyPatch) -> None:
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


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norms with the nonzero shifts and statistics training gives them (fresh ones shift
    by zero, which would hide a closed channel that a batch norm lets through)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize(("factory", "init"), [
    ("tiny_residual", "reinit"),      # residual add, depthwise conv
    ("with_concat", "reinit"),        # concatenation read by a conv
    ("dense_block", "restore"),       # concatenations read by batch norms and the head
    ("with_grouped_conv", "reinit"),  # a slot in two groups
])
def test_structured_regrowth_on_composite_layouts(
        tmp_path: Path, trusted: None, monkeypatch: pytest.MonkeyPatch, factory: str,
        init: str) -> None:
    name = f"{FACTORY}:{factory}"
    constructors.trust_factory(name)
    data = generated(n_train=32, n_test=16, channels=3, size=8, classes=4)
    args = analyse(name, {"num_classes": 4}, data.input_shape, 4)
    cfg = StructuredConfig(arch=name, arch_args=args, core_epochs=0.25, grow_epochs=0.5,
                           batch_size=16, init=init)  # type: ignore[arg-type]
    traj = StructuredTrajectory(cfg, data)
    torch.manual_seed(0)
    traj.prune(_trained_looking(architectures.build(name, args)), [0.5])
    state = traj.state
    assert state is not None
    x = torch.randn(4, 3, 8, 8)
    level0 = state.level_model(0).eval()
    state.kept.append({s: torch.arange(n) for s, n in traj.full.items()})
    probe = state.level_model(1, own_from=0).eval()
    state.kept.pop()
    close_gates(probe, state.kept[0])
    with torch.no_grad():  # the scores are gradients of exactly the pruned level's loss
        assert torch.allclose(probe(x), level0(x), atol=1e-6)
    core = {k: v.clone() for k, v in level0.state_dict().items()}
    traj.regrow(1.0)
    after = state.level_model(0).state_dict()
    assert all(torch.equal(core[n], after[n]) for n in core)  # the core untouched
    for slot, g in traj.groups.items():  # a grouped slot kept alike in every group
        for kept in state.kept:
            rows = kept[slot].view(g, -1)
            assert torch.equal(rows - rows[:, :1], (rows - rows[:, :1])[:1].expand_as(rows))
    traj.export(tmp_path / "bundle", ["core", "full"])
    monkeypatch.setenv(constructors.ALLOW_ENV, name)
    bundle = load_bundle(tmp_path / "bundle")
    with torch.no_grad():
        for k, trained in enumerate(state.nested_models()):
            assert torch.allclose(bundle.build_level(k).eval()(x), trained.eval()(x),
                                  atol=1e-5)


def test_a_grouped_slot_regrows_the_same_channels_in_every_group() -> None:
    kept = {"s": torch.tensor([1, 5])}  # offset 1 of two groups of 4
    scores = {"s": torch.tensor([0.1, 0.0, 0.9, 0.2, 0.1, 0.0, 0.1, 0.9])}
    out = choose_channels(kept, scores, {"s": 4}, {"s": 8}, {"s": 2})
    assert out["s"].tolist() == [1, 3, 5, 7]  # offset 3 averages 0.55, offset 2 (best once) 0.5
    with pytest.raises(ValueError, match="2 groups"):
        choose_channels(kept, scores, {"s": 3}, {"s": 8}, {"s": 2})


def test_discovery_with_a_model_is_refused_up_front(
        tmp_path: Path, trusted: None, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["train", "--strategy", "discovery", "--model", f"{FACTORY}:tiny_residual",
                 *FAST, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert ("removes whole residual blocks, which a DependencyGraph layout does not describe"
            in err and len(err.splitlines()) == 1), err
    assert not out.exists() or not any(out.iterdir())  # nothing trained
