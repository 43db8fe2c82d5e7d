"""The prune-and-grow protocol study's bookkeeping: equal budgets, schedules, paired ablation
(pure parts of benchmarks/prune_grow_protocol.py)."""

from __future__ import annotations

import pytest

from tests.benchmark_scripts import load_benchmark

PGP = load_benchmark("prune_grow_protocol")


@pytest.mark.parametrize(("ratio", "epochs", "budget"), [
    (0.3, 1.0, 1.0), (0.5, 1.0, 2.0), (0.7, 1.0, 3.0), (1.0, 1.0, 4.0), (0.5, 2.5, 5.0)])
def test_a_pruned_model_gets_the_nested_levels_epochs(ratio: float, epochs: float,
                                                      budget: float) -> None:
    assert PGP.level_budget(ratio, epochs) == budget


def test_schedules_end_at_the_kept_share() -> None:
    assert PGP.pruning_steps("one-shot", 0.3, 3) == [0.3]
    steps = PGP.pruning_steps("iterative", 0.3, 3)
    assert len(steps) == 3 and steps[-1] == pytest.approx(0.3)
    assert steps == sorted(steps, reverse=True)
    with pytest.raises(ValueError, match="unknown schedule"):
        PGP.pruning_steps("gradual", 0.3, 3)


def _levels(*accs: float) -> dict[str, object]:
    return {"levels": [{"test_acc": a} for a in accs]}


def test_the_ablation_pairs_seeds_and_skips_unpaired_ones() -> None:
    runs = {
        "rebuilt/recipe": {"0": _levels(0.5, 0.6, 0.7, 0.8), "1": _levels(0.4, 0.6, 0.7, 0.9)},
        "rebuilt/paper": {"0": _levels(0.6, 0.6, 0.6, 0.7), "1": _levels(0.6, 0.6, 0.6, 0.8),
                          "2": _levels(0.0, 0.0, 0.0, 0.0)},
    }
    table = PGP.ablation(runs)
    assert set(table) == {"paper"}
    core = table["paper"]["0.3"]
    assert core["n"] == 2  # seed 2 has no recipe run to pair with
    assert core["mean"] == pytest.approx(0.15)
    assert core["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert table["paper"]["1.0"]["mean"] == pytest.approx(-0.1)


@pytest.mark.parametrize("argv", [["--archs", "lenet=1"], ["--seeds", "a,b"],
                                  ["--importances", "random"], ["--validation", "9000"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        PGP.parse_args(argv)
    assert stop.value.code == 2
    assert "error:" in capsys.readouterr().err
