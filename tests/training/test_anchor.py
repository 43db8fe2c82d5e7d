"""The L2-SP anchor (pull toward the baseline's weights) and starting from a user's baseline.

Real training on small generated data: the anchor must measurably hold weights near their
anchor, never move a frozen core, and a given baseline must be used exactly as written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from elastiserve_store import architectures
from elastiserve_store.slots import gather
from elastiserve_train import loop
from elastiserve_train.cli import anchor_strengths
from elastiserve_train.data import generated
from elastiserve_train.nested import NestedState
from elastiserve_train.pipeline import Pipeline, PipelineConfig
from tests.training.core_checks import assert_core_unchanged

ARCH_ARGS = {"in_channels": 1, "num_classes": 4, "width_mult": 0.25}


def _linear() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))


def _drift(model: nn.Module, start: dict[str, torch.Tensor]) -> float:
    return sum(float((p.detach() - start[n]).norm()) for n, p in model.named_parameters())


def test_the_anchor_holds_weights_near_their_anchor() -> None:
    data = generated(n_train=64, n_test=16, channels=1, size=8)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    drifts = []
    for strength in (0.0, 5.0):
        model = _linear()
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        loop.train(model, data.train, mean, std,
                   loop.TrainConfig(epochs=10, lr=0.05, batch_size=16, anchor=strength),
                   anchor_to=start if strength else None)
        drifts.append(_drift(model, start))
    free, anchored = drifts
    assert free > 0.0
    assert anchored < 0.5 * free


def test_the_loop_refuses_a_bad_anchor() -> None:
    data = generated(n_train=16, n_test=8, channels=1, size=8)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    model = _linear()
    weight = model.state_dict()["1.weight"]
    with pytest.raises(ValueError, match="must be >= 0"):
        loop.train(model, data.train, mean, std, loop.TrainConfig(epochs=1, anchor=-1.0),
                   anchor_to={"1.weight": weight})
    with pytest.raises(ValueError, match="needs the weights to anchor to"):
        loop.train(model, data.train, mean, std, loop.TrainConfig(epochs=1, anchor=0.1))
    with pytest.raises(ValueError, match="no such parameter"):
        loop.train(model, data.train, mean, std, loop.TrainConfig(epochs=1, anchor=0.1),
                   anchor_to={"2.weight": weight})
    with pytest.raises(ValueError, match=r"shape \(4, 32\)"):
        loop.train(model, data.train, mean, std, loop.TrainConfig(epochs=1, anchor=0.1),
                   anchor_to={"1.weight": weight[:, :32]})


def _config(anchor: float | tuple[float, ...], baseline_weights: str | None = None
            ) -> PipelineConfig:
    return PipelineConfig(arch="resnet20", arch_args=ARCH_ARGS, baseline_epochs=0.5,
                          core_epochs=2.0, grow_epochs=1.0, batch_size=16, anchor=anchor,
                          baseline_weights=baseline_weights)


def _core_drift(tmp_path: Path, anchor: float | tuple[float, ...], baseline: Path
                ) -> tuple[float, Pipeline]:
    data = generated(n_train=64, n_test=16, channels=1, size=8)
    pipe = Pipeline(_config(anchor, str(baseline)), data, tmp_path)
    pipe.baseline()
    pipe.prune()
    pipe.core()
    base = load_file(str(tmp_path / "baseline.safetensors"))
    core = NestedState.load(tmp_path / "core")
    drift = 0.0
    for name, tensor in core.master.items():
        info = core.layout[name]
        if info.per_level or not name.endswith("weight") or tensor.ndim < 2:
            continue
        drift += float((gather(tensor, info.axes, core.kept[0])
                        - gather(base[name], info.axes, core.kept[0])).norm())
    return drift, pipe


@pytest.fixture
def baseline_file(tmp_path: Path) -> Path:
    torch.manual_seed(5)
    model = architectures.build("resnet20", ARCH_ARGS)
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_an_anchored_core_drifts_less_and_growth_still_freezes_it(
        tmp_path: Path, baseline_file: Path) -> None:
    free, _ = _core_drift(tmp_path / "free", 0.0, baseline_file)
    held, pipe = _core_drift(tmp_path / "held", 10.0, baseline_file)
    assert held < 0.5 * free
    before = NestedState.load(tmp_path / "held" / "core")
    pipe.grow(1)  # the anchor must not move what the gradient masks freeze
    after = NestedState.load(tmp_path / "held" / "grow1")
    assert_core_unchanged(before, after)


def test_the_core_is_tuned_with_the_first_of_several_strengths(
        tmp_path: Path, baseline_file: Path) -> None:
    free, _ = _core_drift(tmp_path / "free", 0.0, baseline_file)
    first_free, _ = _core_drift(tmp_path / "ramp", (0.0, 10.0, 10.0, 10.0), baseline_file)
    first_held, _ = _core_drift(tmp_path / "held", (10.0, 0.0, 0.0, 0.0), baseline_file)
    assert first_free == free
    assert first_held < 0.5 * free


def test_a_given_baseline_is_used_exactly_and_not_retrained(
        tmp_path: Path, baseline_file: Path) -> None:
    data = generated(n_train=32, n_test=16, channels=1, size=8)
    pipe = Pipeline(_config(0.0, str(baseline_file)), data, tmp_path / "run")
    pipe.baseline()
    written = load_file(str(tmp_path / "run" / "baseline.safetensors"))
    given = load_file(str(baseline_file))
    assert written.keys() == given.keys()
    for name, tensor in given.items():
        assert torch.equal(written[name], tensor), name


def test_a_baseline_of_another_architecture_is_refused(tmp_path: Path) -> None:
    other = architectures.build("resnet20", {**ARCH_ARGS, "num_classes": 7})
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    data = generated(n_train=32, n_test=16, channels=1, size=8)
    pipe = Pipeline(_config(0.0, str(path)), data, tmp_path / "run")
    with pytest.raises(ValueError, match=r"fc\.bias has shape \(7,\), the architecture \(4,\)"):
        pipe.baseline()
    assert not (tmp_path / "run" / "baseline.safetensors").exists()
    # A PyTorch state dict is read with weights_only=True, then checked the same way.
    pickled = tmp_path / "model.pt"
    torch.save(other.state_dict(), pickled)
    pipe = Pipeline(_config(0.0, str(pickled)), data, tmp_path / "run2")
    with pytest.raises(ValueError, match=r"model\.pt: fc\.weight has shape \(7, 16\)"):
        pipe.baseline()
    # A pickle that is not a plain state dict is never unpickled.
    odd = tmp_path / "object.pt"
    torch.save({"model": Path("/x")}, odd)
    pipe = Pipeline(_config(0.0, str(odd)), data, tmp_path / "run3")
    with pytest.raises(ValueError, match=r"object\.pt: not a safetensors file nor a PyTorch "
                                         r"state dict loadable with weights_only=True"):
        pipe.baseline()


def test_one_strength_per_level() -> None:
    cfg = PipelineConfig(levels=4, anchor=(0.0, 0.05, 0.2, 0.3))
    assert [cfg.anchor_at(k) for k in range(4)] == [0.0, 0.05, 0.2, 0.3]
    assert cfg.train_cfg(1.0, 0, anchored_level=2).anchor == 0.2
    assert cfg.train_cfg(1.0, 0).anchor == 0.0  # the independent variants: never anchored
    assert PipelineConfig(anchor=0.1).anchor_at(3) == 0.1
    assert anchor_strengths("0.2") == 0.2
    assert anchor_strengths("0,0.05,0.2,0.3") == (0.0, 0.05, 0.2, 0.3)
    with pytest.raises(argparse.ArgumentTypeError, match="comma-separated numbers, got 'a,b'"):
        anchor_strengths("a,b")


def test_the_pipeline_refuses_a_bad_anchor_or_a_missing_baseline_up_front(
        tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--anchor must be >= 0"):
        _config(-0.5)
    with pytest.raises(ValueError, match="--anchor must be >= 0"):
        PipelineConfig(levels=2, anchor=(0.1, -0.1))
    with pytest.raises(ValueError, match="3 strengths for 4 levels"):
        PipelineConfig(levels=4, anchor=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="is not a file"):
        _config(0.0, str(tmp_path / "absent.safetensors"))
