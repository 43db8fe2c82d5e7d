"""The strategies benchmark gives every strategy the same budget (pure command building)."""

from __future__ import annotations

import argparse

from tests.benchmark_scripts import load_benchmark

ARGS = argparse.Namespace(arch="resnet20", width_mult=0.5, dataset="fashion-mnist",
                          train_subset=4000, test_subset=2000, epochs=2.0, core_epochs=1.0,
                          grow_epochs=1.0, batch_size=128, lr=0.05, seed=0, threads=1,
                          discovery_args="--nu 3 --alpha 1", discovery_at_own_budget=False)


def _option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_every_strategy_gets_the_same_shared_settings() -> None:
    strategies = load_benchmark("strategies")
    ratios = [0.0638675, 0.2518, 0.5639, 1.0]
    cmds = {n: strategies._command(n, ARGS, ratios) for n in strategies.STRATEGIES}
    shared = strategies._shared(ARGS)
    for name, cmd in cmds.items():
        assert cmd[cmd.index("--arch"):cmd.index("--arch") + len(shared)] == shared, name
    assert _option(cmds["discovery"], "--discovery-epochs") == "2.0"
    assert _option(cmds["discovery"], "--nu") == "3"
    assert _option(cmds["discovery"], "--alpha") == "1"


def test_regrowth_budgets_are_prune_grow_level_macs_never_rounded_below() -> None:
    strategies = load_benchmark("strategies")
    ratios = [0.0638675079, 0.25182350, 0.5638680, 1.0]
    cmd = strategies._command("regrowth", ARGS, ratios)
    assert float(_option(cmd, "--budget-macs-ratio")) >= ratios[0]
    levels = [float(v) for v in _option(cmd, "--regrowth-levels").split(",")]
    assert len(levels) == 3 and all(v >= r for v, r in zip(levels, ratios[1:], strict=True))
    assert all(v <= 1.0 for v in levels)


def test_discovery_gets_prune_grow_budgets_unless_told_to_find_its_own() -> None:
    strategies = load_benchmark("strategies")
    ratios = [0.0638675079, 0.25182350, 0.5638680, 1.0]
    cmd = strategies._command("discovery", ARGS, ratios)
    assert _option(cmd, "--beta") == "1"  # the budget is then a MACs ratio
    assert float(_option(cmd, "--budget")) >= ratios[0]
    inner = [float(v) for v in _option(cmd, "--level-macs").split(",")]
    assert inner == [round(r, 6) for r in ratios[1:3]]
    own = strategies._command("discovery", argparse.Namespace(
        **{**vars(ARGS), "discovery_at_own_budget": True}), ratios)
    assert "--budget" not in own and "--level-macs" not in own
