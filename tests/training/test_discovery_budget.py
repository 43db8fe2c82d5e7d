"""Structure discovery with a budget: nu steered to it, the result never over it.

The seed's discovery has only a strength nu; comparing strategies "at the same budgets" needs
discovery to land on a stated cost. These tests train on tiny generated data and check the
contract: the discovered network's measured MACs (beta = 1) are at most the budget, nu moved, a
budget under the cheapest reachable network is refused before training, and the grown levels
sit on the requested MACs ratios.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elastiserve.cli import main
from elastiserve_train.data import generated
from elastiserve_train.discovery.params import DiscoveryParameterError, DiscoveryParams
from elastiserve_train.discovery.pipeline import check_level_macs
from elastiserve_train.discovery.search import Search, SearchConfig, discover

ARGS = {"in_channels": 1, "num_classes": 4, "width_mult": 0.25}


@pytest.mark.parametrize("budget", [0.0, -0.2, 1.5, float("nan")])
def test_budget_outside_its_range_is_refused(budget: float) -> None:
    with pytest.raises(DiscoveryParameterError, match=r"budget .* must be in \(0, 1\]"):
        DiscoveryParams(budget=budget)


def test_a_budget_no_network_can_meet_is_refused_before_training() -> None:
    data = generated(n_train=16, n_test=8, channels=1, size=8)
    cheapest = Search("resnet20", ARGS, data, DiscoveryParams(beta=1.0),
                      SearchConfig(epochs=0.1)).cheapest_cost()
    assert 0.0 < cheapest < 0.5
    with pytest.raises(DiscoveryParameterError, match="below the cheapest network"):
        Search("resnet20", ARGS, data, DiscoveryParams(beta=1.0, budget=cheapest * 0.9),
               SearchConfig(epochs=0.1))
    Search("resnet20", ARGS, data, DiscoveryParams(beta=1.0, budget=cheapest),
           SearchConfig(epochs=0.1))  # exactly reachable: accepted


@pytest.mark.parametrize("budget", [0.3, 0.6])
def test_discovered_network_meets_its_macs_budget(budget: float) -> None:
    data = generated(n_train=128, n_test=16, channels=1, size=8)
    found = discover("resnet20", ARGS, data,
                     DiscoveryParams(nu=0.5, alpha=0.5, beta=1.0, budget=budget),
                     SearchConfig(epochs=2, batch_size=16, theta_warmup=0.1))
    ratio = found.measured["macs"] / found.full["macs"]
    assert ratio <= budget + 1e-9
    assert found.predicted["macs"] == pytest.approx(found.measured["macs"])
    assert found.nu_final != 0.5  # the controller moved nu
    assert any("nu" in h for h in found.history)


def test_without_budget_nu_is_left_alone() -> None:
    data = generated(n_train=64, n_test=16, channels=1, size=8)
    found = discover("resnet20", ARGS, data, DiscoveryParams(nu=0.5, beta=1.0),
                     SearchConfig(epochs=1, batch_size=16))
    assert found.nu_final == 0.5
    assert found.budget_removed == ()


@pytest.mark.parametrize(("targets", "levels", "message"), [
    ((0.3,), 4, "needs one ratio per level"),
    ((0.5, 0.3), 4, "increasing and in"),
    ((0.3, 1.0), 4, "increasing and in"),
])
def test_level_macs_that_cannot_describe_the_levels_are_refused(
        targets: tuple[float, ...], levels: int, message: str) -> None:
    with pytest.raises(DiscoveryParameterError, match=message):
        check_level_macs(targets, levels)


CLI = ["train", "--strategy", "discovery", "--dataset", "generated", "--arch", "resnet20",
       "--width-mult", "0.25", "--levels", "4", "--core-epochs", "0.3", "--grow-epochs", "0.3",
       "--batch-size", "16", "--threads", "1", "--no-progress", "--discovery-epochs", "1",
       "--beta", "1", "--theta-warmup", "0.1"]


def test_cli_places_every_level_on_its_budget(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*CLI, "--budget", "0.2", "--level-macs", "0.4,0.7", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    ratios = [lv["macs_ratio"] for lv in report["levels"]]
    assert ratios[0] <= 0.2 + 1e-9
    assert 0.4 <= ratios[1] < 0.55  # the smallest growth that reaches the target
    assert 0.7 <= ratios[2] < 0.85
    assert ratios[3] == pytest.approx(1.0)


def test_cli_refuses_an_unreachable_budget_with_a_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CLI, "--budget", "0.001", "--out", str(tmp_path / "run")]) == 2
    assert "below the cheapest network" in capsys.readouterr().err
