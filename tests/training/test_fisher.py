"""The Fisher-weighted anchor: an importance estimate that is zero where the loss cannot see a
weight, normalised without ever pulling hard enough to destabilise SGD, and a pull that lets
weights the full model does not use move freely while it holds the others."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from elastiserve_train import loop
from elastiserve_train.data import generated
from elastiserve_train.fisher import diagonal_fisher, normalised
from elastiserve_train.pipeline import Pipeline, PipelineConfig


class HalfDead(nn.Module):
    """Linear(64, 8) whose last 4 outputs are multiplied by zero: their weights never matter."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 8)
        self.out = nn.Linear(8, 4)
        self.alive: torch.Tensor
        self.register_buffer("alive", torch.tensor([1.0] * 4 + [0.0] * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.hidden(x.flatten(1))) * self.alive)
        return out


def test_the_fisher_is_zero_exactly_where_the_loss_cannot_see_a_weight() -> None:
    data = generated(n_train=64, n_test=8, channels=1, size=8)
    torch.manual_seed(0)
    model = HalfDead().train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = diagonal_fisher(model, data.train, torch.tensor(data.mean), torch.tensor(data.std),
                             batches=4, batch_size=16)
    assert torch.all(fisher["hidden.weight"][4:] == 0)
    assert torch.all(fisher["hidden.weight"][:4].sum(1) > 0)
    assert model.training  # the caller's mode is back
    for name, p in model.named_parameters():  # estimating moves nothing
        assert torch.equal(p, before[name]) and p.grad is None


def test_normalised_has_mean_one_and_is_capped() -> None:
    fisher = {"a": torch.tensor([0.0, 1.0, 2.0, 1.0]), "b": torch.tensor([1000.0]),
              "c": torch.ones(100), "head": torch.tensor([5.0])}
    out = normalised(fisher, ["a"])
    assert set(out) == {"a"}
    assert torch.allclose(out["a"], torch.tensor([0.0, 1.0, 2.0, 1.0]))
    capped = normalised(fisher, ["b", "c"], cap=10.0)  # mean 1100 / 101: b is 92x that
    assert float(capped["b"].max()) == 10.0
    assert torch.allclose(capped["c"], torch.full((100,), 101 / 1100))
    with pytest.raises(ValueError, match="zero everywhere"):
        normalised({"a": torch.zeros(3)}, ["a"])
    with pytest.raises(ValueError, match="at least one batch"):
        diagonal_fisher(HalfDead(), generated().train, torch.zeros(1), torch.ones(1), batches=0)


def test_a_weight_with_no_precision_moves_freely_one_with_much_is_held() -> None:
    data = generated(n_train=64, n_test=8, channels=1, size=8)
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    precision = {"1.weight": torch.zeros(4, 64)}
    precision["1.weight"][:, :32] = 10.0  # the left half held, the right half free
    loop.train(model, data.train, mean, std,
               loop.TrainConfig(epochs=10, lr=0.05, batch_size=16, anchor=1.0),
               anchor_to={"1.weight": start["1.weight"]}, anchor_precision=precision)
    moved = (model.state_dict()["1.weight"] - start["1.weight"]).abs()
    assert float(moved[:, :32].mean()) < 0.25 * float(moved[:, 32:].mean())


def test_the_pipeline_estimates_the_fisher_once_and_reuses_it(tmp_path: Path) -> None:
    data = generated(n_train=64, n_test=16, channels=1, size=8)
    cfg = PipelineConfig(arch="resnet20", arch_args={"in_channels": 1, "num_classes": 4,
                                                     "width_mult": 0.25},
                         baseline_epochs=0.5, core_epochs=0.5, grow_epochs=0.5, batch_size=16,
                         anchor=0.2, anchor_fisher=True)
    pipe = Pipeline(cfg, data, tmp_path)
    pipe.baseline()
    pipe.prune()
    pipe.core()
    first = load_file(str(tmp_path / "fisher.safetensors"))
    values = torch.cat([t.flatten() for t in first.values()])
    assert float(values.max()) <= 10.0 and float(values.mean()) > 0
    assert not any(n.startswith("fc.") or ".bn" in n for n in first)  # per-level tensors
    pipe.grow(1)
    again = load_file(str(tmp_path / "fisher.safetensors"))
    assert all(torch.equal(first[n], again[n]) for n in first)
