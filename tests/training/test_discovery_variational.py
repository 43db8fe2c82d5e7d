"""Structure discovery's variational objective, pruning patience, settling, validation split."""

# ruff: noqa: RUF002  (Greek letters: the paper's notation for nu, alpha, beta)

from __future__ import annotations

import pytest
import torch

from elastiserve_store import architectures
from elastiserve_train.data import DatasetError, generated
from elastiserve_train.discovery.complexity import ComplexityModel, regularisation_weights
from elastiserve_train.discovery.gates import Gate, project_and_remove
from elastiserve_train.discovery.params import DiscoveryParams
from elastiserve_train.discovery.search import SearchConfig, discover
from elastiserve_train.discovery.variational import (
    entropy,
    flattened_kl,
    gate_objective,
    kl_bernoulli,
    prior_from_price,
)

ARGS = {"in_channels": 1, "num_classes": 4, "width_mult": 0.25}
SHAPE = (1, 8, 8)


class TestFlatteningHyperprior:
    def test_flattened_kl_is_the_kl_with_the_entropy_cancelled(self) -> None:
        theta = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
        gamma = torch.tensor([0.2, 0.5, 0.3, 0.01], dtype=torch.float64)
        expected = (kl_bernoulli(theta, gamma) + entropy(theta)).sum()
        assert float(flattened_kl(theta, gamma)) == pytest.approx(float(expected), rel=1e-9)

    def test_the_theta_gradient_is_the_price_wherever_theta_is(self) -> None:
        """Linear in θ: the same pull at θ = 0.05 and at 0.95 (the plain KL would pull θ
        towards 1/2 and keep the network stochastic)."""
        price = torch.tensor([0.3, 2.0])
        gamma = prior_from_price(price)
        for value in (0.05, 0.5, 0.95):
            theta = torch.full((2,), value, requires_grad=True)
            flattened_kl(theta, gamma).backward()  # type: ignore[no-untyped-call]
            assert theta.grad is not None
            assert theta.grad.tolist() == pytest.approx(price.tolist(), rel=1e-5)
        plain = torch.tensor([0.05, 0.95], requires_grad=True)
        kl_bernoulli(plain, torch.tensor([0.5, 0.5])).sum().backward()  # type: ignore[no-untyped-call]
        assert plain.grad is not None and plain.grad[0] < 0 < plain.grad[1]

    def test_the_prior_is_priced_by_the_expected_complexity(self) -> None:
        """Each gate's pull is its marginal expected cost through ν, α, β."""
        model = architectures.build("resnet20", ARGS)
        cm = ComplexityModel.of(model, SHAPE, architectures.blocks("resnet20"))
        full = cm.at_full()
        widths = architectures.full_widths("resnet20", ARGS)
        units = {s: torch.full((n,), 0.7, requires_grad=True) for s, n in widths.items()}
        layers = {b: torch.tensor(0.6, requires_grad=True) for b in cm.gated_blocks}
        params = DiscoveryParams(nu=3.0, alpha=0.4, beta=0.3)
        gate_objective(cm, full, units, layers, params).backward()  # type: ignore[no-untyped-call]
        pull = regularisation_weights(cm, full, units, layers, params)
        for slot, theta in units.items():
            assert theta.grad is not None
            assert float(theta.grad.mean()) == pytest.approx(pull[f"units:{slot}"], rel=1e-4)
        for block, theta in layers.items():
            assert theta.grad is not None
            assert float(theta.grad) == pytest.approx(pull[f"layer:{block}"], rel=1e-4)
        assert pull["layer:s3.b1"] > 0.0 and pull["units:s3.b1"] > 0.0


class TestPruningCondition:
    def test_a_variable_goes_only_after_patience_steps_under_the_tolerance(self) -> None:
        gate = Gate(torch.tensor([0.01, 0.5, 0.02]), torch.ones(3, dtype=torch.bool))
        assert not project_and_remove(gate, 0.05, keep_one=True, patience=3)
        assert not project_and_remove(gate, 0.05, keep_one=True, patience=3)
        with torch.no_grad():
            gate.theta[2] = 0.3  # climbed back: its count starts again
        assert project_and_remove(gate, 0.05, keep_one=True, patience=3)
        assert gate.alive.tolist() == [False, True, True]
        assert gate.theta[0] == 0.0
        assert gate.under.tolist()[1:] == [0, 0]


class TestSettling:
    def test_theta_ends_at_zero_or_one(self) -> None:
        """The settling phase takes every θ from the interior to a vertex of [0, 1]."""
        torch.manual_seed(0)
        data = generated(n_train=64, n_test=16, channels=1, size=8)
        found = discover("resnet20", ARGS, data, DiscoveryParams(nu=1.0, alpha=0.5),
                         SearchConfig(epochs=4, batch_size=16, theta_warmup=0.1,
                                      theta_settle=0.5, compact_every=8, seed=0))
        share = found.summary()["theta_interior"]
        assert share["before_settle"] > 0.5
        assert share["end"] == 0.0
        assert found.summary()["prediction_exact"]


class TestValidationSplit:
    def test_validation_is_carved_from_training_and_disjoint(self) -> None:
        data = generated(n_train=64, n_test=16, channels=1, size=8)
        rest, val = data.with_validation(16, seed=3)
        assert len(rest.train.labels) == 48 and len(val.labels) == 16
        assert rest.test is data.test
        flat = {tuple(x.flatten().tolist()) for x in rest.train.images}
        assert not any(tuple(x.flatten().tolist()) in flat for x in val.images)
        _, val_again = data.with_validation(16, seed=3)
        assert torch.equal(val.images, val_again.images)

    @pytest.mark.parametrize("n", [0, 64, 100])
    def test_a_split_that_leaves_nothing_is_refused(self, n: int) -> None:
        data = generated(n_train=64, n_test=16, channels=1, size=8)
        with pytest.raises(DatasetError, match="validation split"):
            data.with_validation(n)
