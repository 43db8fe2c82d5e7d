"""Structure discovery: parameters, the expected-complexity model, the gates, the search."""

from __future__ import annotations

import math

import pytest
import torch

from elastiserve_store import architectures
from elastiserve_store.profile import count_macs, count_params
from elastiserve_train.data import generated
from elastiserve_train.discovery.complexity import (
    ComplexityModel,
    normalised_cost,
    penalty,
    regularisation_weights,
)
from elastiserve_train.discovery.gates import Gate, project_and_remove, sample
from elastiserve_train.discovery.params import DiscoveryParameterError, DiscoveryParams
from elastiserve_train.discovery.pipeline import grown_kept, grown_skipped
from elastiserve_train.discovery.search import SearchConfig, discover

ARGS = {"in_channels": 1, "num_classes": 4, "width_mult": 0.25}
SHAPE = (1, 8, 8)


class TestParameters:
    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"nu": 0.0}, r"nu \(pruning strength\) must be > 0, got 0.0"),
        ({"nu": -1.0}, r"nu \(pruning strength\) must be > 0"),
        ({"alpha": 1.5}, r"alpha \(layer vs unit pruning\) must be in \[0, 1\], got 1.5"),
        ({"alpha": -0.1}, r"alpha .* must be in \[0, 1\]"),
        ({"beta": 2.0}, r"beta \(FLOPs vs parameters\) must be in \[0, 1\], got 2.0"),
        ({"beta": math.nan}, "beta must be a finite number"),
        ({"theta_tol": 0.0}, r"theta_tol .* must be in \(0, 1\)"),
    ])
    def test_invalid_parameters_are_refused(self, kwargs: dict[str, float], message: str
                                            ) -> None:
        with pytest.raises(DiscoveryParameterError, match=message):
            DiscoveryParams(**kwargs)

    def test_edges_are_valid(self) -> None:
        DiscoveryParams(nu=1e-6, alpha=0.0, beta=1.0)
        DiscoveryParams(alpha=1.0, beta=0.0)


class TestComplexityModel:
    @pytest.mark.parametrize("skip", [(), ("s1.b1", "s3.b2")])
    def test_full_cost_equals_measured_cost(self, skip: tuple[str, ...]) -> None:
        model = architectures.build("resnet20", ARGS, skipped_blocks=skip)
        cost = ComplexityModel.of(model, SHAPE, architectures.blocks("resnet20")).at_full()
        assert float(cost.macs) == count_macs(model, SHAPE)
        assert float(cost.params) == count_params(model)

    def test_binary_theta_predicts_the_pruned_network(self) -> None:
        full = architectures.build("resnet20", ARGS)
        cm = ComplexityModel.of(full, SHAPE, architectures.blocks("resnet20"))
        widths = architectures.full_widths("resnet20", ARGS)
        keep = {s: max(1, n // 2) for s, n in widths.items()}
        units = {s: torch.tensor([1.0] * keep[s] + [0.0] * (n - keep[s]))
                 for s, n in widths.items()}
        layers = {"s1.b1": torch.tensor(0.0), **{b.name: torch.tensor(1.0)
                  for b in architectures.blocks("resnet20") if b.skippable and b.name != "s1.b1"}}
        small = architectures.build("resnet20", ARGS, keep, ("s1.b1",))
        cost = cm.expected(units, layers)
        assert float(cost.macs) == count_macs(small, SHAPE)
        assert float(cost.params) == count_params(small)

    def test_beta_moves_the_price_between_macs_and_params(self) -> None:
        """Stage 3 holds most parameters, stages cost about the same MACs: pricing parameters
        (β = 0) must pull harder on stage-3 units than pricing MACs (β = 1)."""
        full = architectures.build("resnet20", {**ARGS, "width_mult": 1.0})
        cm = ComplexityModel.of(full, (1, 28, 28), architectures.blocks("resnet20"))
        base = cm.at_full()
        widths = architectures.full_widths("resnet20", {**ARGS, "width_mult": 1.0})
        units = {s: torch.ones(n) for s, n in widths.items()}
        layers = {b: torch.tensor(1.0) for b in cm.gated_blocks}

        def pull(beta: float) -> dict[str, float]:
            return regularisation_weights(cm, base, units, layers,
                                          DiscoveryParams(alpha=0.5, beta=beta))

        flops, params = pull(1.0), pull(0.0)
        ratio_flops = flops["units:s3.b1"] / flops["units:s1.b1"]
        ratio_params = params["units:s3.b1"] / params["units:s1.b1"]
        assert ratio_params > 3 * ratio_flops
        assert normalised_cost(base, base, 0.3) == pytest.approx(1.0)

    def test_alpha_splits_the_pull_between_layers_and_units(self) -> None:
        full = architectures.build("resnet20", ARGS)
        cm = ComplexityModel.of(full, SHAPE, architectures.blocks("resnet20"))
        base = cm.at_full()
        units = {s: torch.ones(n) for s, n in architectures.full_widths("resnet20", ARGS).items()}
        layers = {b: torch.tensor(1.0) for b in cm.gated_blocks}
        only_units = regularisation_weights(cm, base, units, layers, DiscoveryParams(alpha=0.0))
        only_layers = regularisation_weights(cm, base, units, layers, DiscoveryParams(alpha=1.0))
        assert only_units["layer:s1.b1"] == 0.0 < only_units["units:s1.b1"]
        assert only_layers["units:s1.b1"] == 0.0 < only_layers["layer:s1.b1"]
        p = penalty(cm, base, units, layers, DiscoveryParams(nu=2.0, alpha=0.5))
        assert float(p) == pytest.approx(2.0)  # nu times the full network's normalised cost


class TestGates:
    def test_gates_converge_to_zero_and_one_on_a_known_toy_problem(self) -> None:
        """y depends on inputs 0-2 only; with a per-input price the gates of 0-2 must end at
        1 and the other five must be removed (θ at exactly 0)."""
        torch.manual_seed(0)
        true_w = torch.tensor([2.0, -1.5, 1.0, 0, 0, 0, 0, 0])
        w = torch.zeros(8, requires_grad=True)
        gate = Gate.new(8, 1.0)
        opt_w = torch.optim.SGD([w], lr=0.05)
        opt_t = torch.optim.SGD([gate.theta], lr=0.5)
        for _ in range(600):
            x = torch.randn(64, 8)
            y = x @ true_w
            z = sample(gate.theta, gate.alive, (64, 8), training=True)
            loss = ((x * z) @ w - y).pow(2).mean() + 0.05 * gate.effective().sum()
            opt_w.zero_grad()
            opt_t.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt_w.step()
            opt_t.step()
            project_and_remove(gate, 0.05, keep_one=True)
        assert gate.alive.tolist() == [True] * 3 + [False] * 5
        assert gate.theta[:3].min() > 0.95
        assert gate.theta[3:].abs().max() == 0.0
        # Evaluation is deterministic: exactly the kept inputs.
        assert sample(gate.theta, gate.alive, (2, 8), training=False).flatten().tolist() == \
            [1.0] * 3 + [0.0] * 5

    def test_last_unit_of_a_slot_survives(self) -> None:
        gate = Gate(torch.tensor([0.01, 0.02, 0.03]), torch.ones(3, dtype=torch.bool))
        project_and_remove(gate, 0.05, keep_one=True)
        assert gate.alive.tolist() == [False, False, True]


class TestSearch:
    def test_discovery_removes_layers_and_the_prediction_matches_the_measurement(self) -> None:
        torch.manual_seed(0)
        data = generated(n_train=128, n_test=32, channels=1, size=8)
        found = discover("resnet20", ARGS, data, DiscoveryParams(nu=4.0, alpha=1.0, beta=1.0),
                         SearchConfig(epochs=3, batch_size=16, layer_theta_lr=1.0,
                                      theta_warmup=0.1, seed=0))
        summary = found.summary()
        assert summary["layers_removed"] >= 1
        skipped = found.skipped
        names = {b.name: b for b in architectures.blocks("resnet20")}
        for name in skipped:
            assert names[name].skippable
            assert not any(n.startswith(names[name].prefix) for n in found.model.state_dict())
        full = architectures.build("resnet20", ARGS)
        assert found.measured["macs"] < count_macs(full, SHAPE)
        assert found.measured["macs"] == count_macs(found.model, SHAPE)
        assert summary["prediction_exact"]
        assert found.predicted == {"macs": float(found.measured["macs"]),
                                   "params": float(found.measured["params"])}

    def test_units_only_when_alpha_is_zero(self) -> None:
        torch.manual_seed(0)
        data = generated(n_train=128, n_test=32, channels=1, size=8)
        found = discover("resnet20", ARGS, data, DiscoveryParams(nu=1.0, alpha=0.0, beta=0.0),
                         SearchConfig(epochs=3, batch_size=16, theta_lr=3.0, theta_warmup=0.1,
                                      seed=0))
        summary = found.summary()
        assert summary["units_removed"] > 0
        # alpha = 0: layers carry no price; a block goes only when its hidden units all went.
        for block in found.skipped:
            assert max(found.theta[block]) < 0.05
        assert summary["layers_starved"] == list(found.skipped)
        assert summary["prediction_exact"]
        widths = architectures.full_widths("resnet20", ARGS)
        assert all(n >= 1 for n in summary["widths"].values())
        assert sum(summary["widths"].values()) < sum(widths.values())

    def test_architectures_without_residual_layers_are_refused(self) -> None:
        data = generated(n_train=8, n_test=8, channels=1, size=8)
        with pytest.raises(ValueError, match="needs residual layers"):
            discover("vgg16_bn", ARGS, data, DiscoveryParams(), SearchConfig(epochs=0.1))


def test_grown_levels_add_pruned_channels_by_theta() -> None:
    core = {"a": torch.tensor([1, 3])}
    theta = {"a": [0.2, 0.0, math.nan, 0.9, 0.04, 0.03]}
    assert grown_kept(core, theta, {"a": 6}, 0.5)["a"].tolist() == [0, 1, 3, 4]
    assert grown_kept(core, theta, {"a": 6}, 1.0)["a"].tolist() == list(range(6))


def test_grown_levels_run_removed_blocks_back_by_theta() -> None:
    skipped = ("s1.b1", "s2.b2", "s3.b1", "s3.b2")
    theta = {"s1.b1": 0.0, "s2.b2": 0.04, "s3.b1": 0.0, "s3.b2": 0.01}
    assert grown_skipped(skipped, theta, 0.5) == ("s1.b1", "s3.b1")
    assert grown_skipped(skipped, theta, 0.25) == ("s1.b1", "s3.b1", "s3.b2")
    assert grown_skipped(skipped, theta, 1.0) == ()
