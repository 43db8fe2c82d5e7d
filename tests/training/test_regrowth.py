"""Bidirectional pruning-regrowth on small generated data.

The properties the issue asks for: a regrowth step never regrows more than asked and never
touches the values of unpruned weights; pruned weights stay exactly zero through fine-tuning;
hard budgets are met (bytes on disk measured from the written artifact) or refused with a
clear message, as are parameters outside their range; the structured form's gated probe
computes exactly what the pruned level computes, and its regrown levels form a loadable
nested bundle whose smaller levels regrowth left untouched.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from elastiserve.cli import main
from elastiserve_store import architectures, load_bundle
from elastiserve_store.sparse import load_sparse
from elastiserve_train.data import Dataset, generated
from elastiserve_train.regrowth.budget import (
    Budget,
    BudgetError,
    geometric_keeps,
    largest_keep_within,
    least_sparsity_within,
)
from elastiserve_train.regrowth.channels import choose_channels, close_gates
from elastiserve_train.regrowth.sparse_run import SparseConfig, SparseTrajectory
from elastiserve_train.regrowth.structured_run import StructuredConfig, StructuredTrajectory
from elastiserve_train.regrowth.unstructured import (
    grown_values,
    magnitude_masks,
    prunable_names,
    regrow_masks,
    sparsity_of,
)

torch.set_num_threads(1)

ARGS = {"in_channels": 1, "num_classes": 4, "width_mult": 0.25}


def _random_masks(seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    masks = {"a": torch.rand(6, 5, generator=gen) < 0.2, "b": torch.rand(40, generator=gen) < 0.1}
    scores = {n: torch.rand(m.shape, generator=gen) for n, m in masks.items()}
    return masks, scores


# ---------------------------------------------------------------- pure regrowth step

@pytest.mark.parametrize("count", [0, 1, 7, 25, 10_000])
def test_regrow_never_grows_more_than_asked_nor_an_active_position(count: int) -> None:
    masks, scores = _random_masks()
    before = sum(int(m.sum()) for m in masks.values())
    pruned = sum(int((~m).sum()) for m in masks.values())
    new, grown = regrow_masks(masks, scores, count)
    after = sum(int(m.sum()) for m in new.values())
    assert after - before == min(count, pruned)
    for name in masks:
        assert bool((new[name] | ~masks[name]).all())             # nothing active was dropped
        assert not bool((grown[name] & masks[name]).any())         # nothing active "grew"
        assert torch.equal(new[name], masks[name] | grown[name])


def test_regrow_picks_the_best_scored_pruned_positions() -> None:
    masks = {"w": torch.tensor([True, False, False, False, True])}
    scores = {"w": torch.tensor([9.0, 0.1, 0.7, 0.3, 8.0])}
    new, _ = regrow_masks(masks, scores, 2)
    assert new["w"].tolist() == [True, False, True, True, True]


@pytest.mark.parametrize("init", ["restore", "reinit"])
def test_grown_values_touch_only_grown_positions(init: str) -> None:
    masks, scores = _random_masks(1)
    gen = torch.Generator().manual_seed(3)
    weights = {n: torch.randn(m.shape, generator=gen) * m for n, m in masks.items()}
    reference = {n: torch.randn(m.shape, generator=gen) for n, m in masks.items()}
    _, grown = regrow_masks(masks, scores, 9)
    out = grown_values(weights, grown, reference, init)  # type: ignore[arg-type]
    for name in weights:
        keep = ~grown[name]
        assert torch.equal(out[name][keep], weights[name][keep])
        expect = reference[name][grown[name]] if init == "restore" else torch.zeros(
            int(grown[name].sum()))
        assert torch.equal(out[name][grown[name]], expect)


def test_magnitude_masks_keep_the_largest_and_hit_the_sparsity() -> None:
    w = {"a": torch.tensor([[0.1, -5.0], [0.3, 0.0]]), "b": torch.tensor([2.0, -0.2, 0.05, 4.0])}
    masks = magnitude_masks(w, 0.5)
    assert sparsity_of(masks) == pytest.approx(0.5)
    assert masks["a"].tolist() == [[False, True], [True, False]]
    assert masks["b"].tolist() == [True, False, False, True]


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.01])
def test_sparsity_outside_unit_interval_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        magnitude_masks({"a": torch.ones(4)}, bad)


# ---------------------------------------------------------------- budgets (pure)

def test_budget_bisection_finds_the_least_pruning_that_fits() -> None:
    def cost(s: float) -> float:
        return 1000.0 * (1.0 - s) + 10.0

    s = least_sparsity_within(cost, Budget("bytes", 110), max_sparsity=0.999)
    assert cost(s) <= 110 and s == pytest.approx(0.9, abs=1e-6)
    keep = largest_keep_within(lambda k: 100.0 * k * k, Budget("macs", 25), min_keep=0.01)
    assert keep == pytest.approx(0.5, abs=1e-6)


def test_budget_no_network_can_meet_is_refused() -> None:
    with pytest.raises(BudgetError, match="cannot be met"):
        least_sparsity_within(lambda s: 1000.0 * (1 - s) + 10, Budget("bytes", 5),
                              max_sparsity=0.999)
    with pytest.raises(BudgetError, match="narrowest network"):
        largest_keep_within(lambda k: 100.0 * k, Budget("macs", 0.5), min_keep=0.01)
    with pytest.raises(BudgetError, match="positive"):
        Budget("bytes", 0)
    with pytest.raises(BudgetError, match=r"\(0, 1\]"):
        Budget("macs_ratio", 1.5)


def test_geometric_keeps_end_where_asked() -> None:
    keeps = geometric_keeps(0.01, 0.1, 3)
    assert keeps[-1] == 0.1 and keeps == sorted(keeps) and keeps[0] > 0.01
    with pytest.raises(ValueError):
        geometric_keeps(0.5, 0.1, 3)


# ---------------------------------------------------------------- unstructured trajectory

def _dense() -> tuple[torch.nn.Module, Dataset]:
    data = generated(n_train=32, n_test=16, channels=1, size=8, classes=4)
    torch.manual_seed(0)
    return architectures.build("resnet20", ARGS), data


def test_regrowth_step_keeps_unpruned_values_and_pruned_zeros(tmp_path: Path) -> None:
    model, data = _dense()
    cfg = SparseConfig(prune_epochs=0.5, core_epochs=0.5, grow_epochs=0.0, batch_size=16)
    traj = SparseTrajectory(model, data, cfg, tmp_path)
    masks, _ = traj.prune(model, 0.9, epochs=0.5)
    params = dict(model.named_parameters())
    for name, m in masks.items():                         # fine-tuning kept pruned at zero
        assert bool((params[name][~m] == 0).all())
    before = {n: params[n].detach().clone() for n in masks}
    total = sum(m.numel() for m in masks.values())
    new, _ = traj.regrow(model, masks, 0.8)
    assert sum(int(m.sum()) for m in new.values()) == round(0.2 * total)
    for name, m in masks.items():
        assert torch.equal(params[name].detach()[m], before[name][m])
        grown = new[name] & ~m                              # restored to the dense values
        assert torch.equal(params[name].detach()[grown], traj.reference[name][grown])


def test_trajectory_points_are_stored_sparsely_and_shrink(tmp_path: Path) -> None:
    model, data = _dense()
    cfg = SparseConfig(prune_epochs=0.25, core_epochs=0.25, grow_epochs=0.25, batch_size=16,
                       importance="gradient", init="reinit")
    traj = SparseTrajectory(model, data, cfg, tmp_path)
    points = traj.run(model, [0.5, 0.95], [0.8], "iterative")
    assert [p.phase for p in points] == ["pruned", "pruned", "regrown"]
    assert points[1].size_bytes < points[2].size_bytes < points[0].size_bytes
    art = load_sparse(tmp_path / points[1].name)
    names = prunable_names(model)
    nonzero = sum(int((art.tensors[n] != 0).sum()) for n in names)
    total = sum(art.tensors[n].numel() for n in names)
    assert nonzero <= round(0.05 * total)


# ---------------------------------------------------------------- CLI: budgets and refusals

CLI = ["train", "--strategy", "regrowth", "--dataset", "generated", "--arch", "resnet20",
       "--width-mult", "0.25", "--epochs", "0.25", "--core-epochs", "0.25",
       "--grow-epochs", "0.25", "--batch-size", "16", "--threads", "1", "--no-progress"]


def test_cli_bytes_budget_is_met_on_disk(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*CLI, "--out", str(out), "--budget-bytes", "32000",
                 "--regrowth-steps", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    extreme = report["levels"][0]
    assert extreme["size_bytes"] <= 32000
    art = load_sparse(out / extreme["artifact"])          # enough to rebuild the network
    model = architectures.build(art.metadata["architecture"], art.metadata["arch_args"])
    model.load_state_dict(art.tensors)
    on_disk = sum(f.stat().st_size for f in (out / extreme["artifact"]).iterdir())
    assert on_disk == extreme["size_bytes"]
    assert report["baseline"]["size_bytes"] > 2 * 32000
    for key in ("name", "macs", "macs_ratio", "params", "size_bytes", "accuracy"):
        assert all(key in lv for lv in report["levels"])
    assert (out / "trajectory.png").stat().st_size > 1000


@pytest.mark.parametrize(("extra", "message"), [
    (["--budget-bytes", "100"], "cannot be met"),
    (["--regrowth-form", "structured", "--budget-macs", "10"], "cannot be met"),
    (["--regrowth-sparsity", "1.0"], r"\[0, 1\)"),
    (["--regrowth-sparsity", "-0.2"], r"\[0, 1\)"),
    (["--regrowth-steps", "0"], "at least 1"),
    (["--budget-macs-ratio", "2"], r"\(0, 1\]"),
])
def test_cli_refuses_invalid_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        extra: list[str], message: str) -> None:
    assert main([*CLI, "--out", str(tmp_path / "run"), *extra]) == 2
    assert re.search(message, capsys.readouterr().err)


# ---------------------------------------------------------------- structured form

def test_gated_probe_computes_what_the_pruned_level_computes(tmp_path: Path) -> None:
    data = generated(n_train=32, n_test=16, channels=1, size=8, classes=4)
    cfg = StructuredConfig(arch="resnet20", arch_args=ARGS, core_epochs=0.25, batch_size=16)
    traj = StructuredTrajectory(cfg, data)
    torch.manual_seed(0)
    traj.prune(architectures.build("resnet20", ARGS), [0.5])
    state = traj.state
    assert state is not None
    level0 = state.level_model(0).eval()
    state.kept.append({s: torch.arange(n) for s, n in traj.full.items()})
    probe = state.level_model(1, own_from=0).eval()
    state.kept.pop()
    close_gates(probe, state.kept[0])
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(probe(x), level0(x), atol=1e-5)


def test_choose_channels_adds_exactly_the_width_asked() -> None:
    kept = {"s": torch.tensor([1, 4])}
    scores = {"s": torch.tensor([0.5, float("-inf"), 0.9, 0.1, float("-inf"), 0.7])}
    out = choose_channels(kept, scores, {"s": 4}, {"s": 6})
    assert out["s"].tolist() == [1, 2, 4, 5]
    with pytest.raises(ValueError, match="cannot regrow"):
        choose_channels(kept, scores, {"s": 1}, {"s": 6})


@pytest.mark.parametrize("init", ["restore", "reinit"])
def test_structured_regrowth_leaves_smaller_levels_untouched(tmp_path: Path, init: str) -> None:
    data = generated(n_train=32, n_test=16, channels=1, size=8, classes=4)
    cfg = StructuredConfig(arch="resnet20", arch_args=ARGS, core_epochs=0.25, grow_epochs=0.5,
                           batch_size=16, init=init)  # type: ignore[arg-type]
    traj = StructuredTrajectory(cfg, data)
    torch.manual_seed(0)
    traj.prune(architectures.build("resnet20", ARGS), [0.3])
    assert traj.state is not None
    core = copy.deepcopy(traj.state.level_model(0).state_dict())
    traj.regrow(0.6)
    traj.regrow(1.0)
    after = traj.state.level_model(0).state_dict()
    assert all(torch.equal(core[n], after[n]) for n in core)
    levels = traj.export(tmp_path / "bundle", ["a", "b", "c"])
    bundle = load_bundle(tmp_path / "bundle")
    assert [lv["channel_ratio"] for lv in levels] == [0.3, 0.6, 1.0]
    assert levels[0]["macs"] < levels[1]["macs"] < levels[2]["macs"]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(bundle.build_level(0)(x), traj.state.nested_models()[0](x),
                              atol=1e-5)


def test_structured_cli_writes_a_nested_bundle(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*CLI, "--out", str(out), "--regrowth-form", "structured",
                 "--budget-macs-ratio", "0.2", "--regrowth-levels", "0.5,1.0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["levels"][0]["macs_ratio"] <= 0.2
    assert len(report["levels"]) == 3 and report["levels"][-1]["macs_ratio"] == 1.0
    assert len(load_bundle(out / "bundle").build_all()) == 3
