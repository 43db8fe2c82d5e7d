"""The regrowth protocol gives every regrown point a pruned control with the same budget."""

from __future__ import annotations

from typing import Any

import pytest

from tests.benchmark_scripts import load_benchmark

rp = load_benchmark("regrowth_protocol")


def _by_key(steps: list[Any]) -> dict[str, Any]:
    return {st.key: st for st in steps}


def test_one_shot_controls_are_pruned_from_the_baseline_for_the_regrown_total() -> None:
    steps = _by_key(rp.plan("one-shot", [0.9, 0.95, 0.98], [0.95, 0.9], 1.0))
    assert [steps[f"one-shot/pruned-{s}"].total_epochs for s in (90, 95, 98)] == [1, 1, 1]
    assert steps["one-shot/regrown-95"].parent == "one-shot/pruned-98"
    assert steps["one-shot/regrown-95"].total_epochs == 2
    assert steps["one-shot/regrown-90"].total_epochs == 3
    ctl = steps["one-shot/control-90"]
    assert (ctl.op, ctl.parent, ctl.sparsity, ctl.epochs, ctl.total_epochs) == (
        "prune", "baseline", 0.9, 3, 3)


def test_iterative_controls_continue_the_trajectorys_own_point() -> None:
    steps = _by_key(rp.plan("iterative", [0.9, 0.95, 0.98], [0.95, 0.9], 1.0))
    assert [steps[f"iterative/pruned-{s}"].total_epochs for s in (90, 95, 98)] == [1, 2, 3]
    assert steps["iterative/pruned-95"].parent == "iterative/pruned-90"
    assert steps["iterative/regrown-90"].total_epochs == 5
    ctl = steps["iterative/control-90"]
    assert (ctl.op, ctl.parent, ctl.epochs, ctl.total_epochs) == (
        "tune", "iterative/pruned-90", 4, 5)
    ctl95 = steps["iterative/control-95"]
    assert (ctl95.parent, ctl95.epochs, ctl95.total_epochs) == ("iterative/pruned-95", 2, 4)


@pytest.mark.parametrize("schedule", ["one-shot", "iterative"])
def test_every_regrown_point_is_paired_with_an_equal_budget_control(schedule: str) -> None:
    steps = rp.plan(schedule, [0.8, 0.9, 0.95, 0.98], [0.95, 0.9, 0.8], 0.5)
    pairs = rp.pairs(steps)
    assert [r.sparsity for r, _ in pairs] == [0.95, 0.9, 0.8]
    for regrown, control in pairs:
        assert control.phase == "control"
        assert (control.sparsity, control.total_epochs) == (regrown.sparsity,
                                                             regrown.total_epochs)


@pytest.mark.parametrize(("schedule", "prune_to", "regrow_to", "words"), [
    ("iterative", [0.9, 0.98], [0.95], "needs a pruned point"),
    ("one-shot", [0.9, 0.98], [0.9, 0.95], "descend"),
    ("one-shot", [0.9, 0.98], [0.98], "descend"),
    ("one-shot", [0.98, 0.9], [], "ascending"),
    ("gradual", [0.9], [], "unknown schedule"),
])
def test_plans_without_a_fair_comparison_are_refused(schedule: str, prune_to: list[float],
                                                     regrow_to: list[float],
                                                     words: str) -> None:
    with pytest.raises(ValueError, match=words):
        rp.plan(schedule, prune_to, regrow_to, 1.0)


def test_bad_sparsities_on_the_command_line_exit_2_with_a_reason(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        rp.main(["--schedules", "iterative", "--regrow-to", "0.93"])
    assert exit_info.value.code == 2
    assert "needs a pruned point" in capsys.readouterr().err


def test_summary_differences_are_per_seed_over_seeds_with_both_points() -> None:
    steps = rp.plan("one-shot", [0.9, 0.98], [0.9], 1.0)

    def row(seed: int, key: str, test: float) -> dict[str, object]:
        return {"seed": seed, "key": key, "sparsity": 0.9, "total_epochs": 2.0,
                "val_accuracy": test - 0.01, "test_accuracy": test}

    rows = [row(0, "one-shot/regrown-90", 0.80), row(0, "one-shot/control-90", 0.84),
            row(1, "one-shot/regrown-90", 0.82), row(1, "one-shot/control-90", 0.83),
            row(2, "one-shot/regrown-90", 0.99)]  # seed 2 has no control yet
    (entry,) = rp.summarise(rows, steps)["regrown_vs_pruned"]
    assert entry["seeds"] == [0, 1]
    diff = entry["test"]["difference"]
    assert diff["per_seed"] == pytest.approx([-0.04, -0.01])
    assert diff["mean"] == pytest.approx(-0.025)
    assert diff["std"] == pytest.approx(0.0212132, abs=1e-6)
    assert entry["test"]["regrown"]["mean"] == pytest.approx(0.81)
