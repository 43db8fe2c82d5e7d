"""The full-network loss (``--full-loss``): narrower levels trained inside the full network.

Real training on small generated data: the view must compute exactly the full network and send
gradients only to the level's own shared weights, the loss must make the core fit the original
channels it will be grown with, and growth must still leave the frozen core bit-identical.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from elastiserve.cli import main
from elastiserve_store import architectures
from elastiserve_store.slots import gather, scatter
from elastiserve_train import loop
from elastiserve_train.data import generated
from elastiserve_train.nested import NestedState, WiderView
from elastiserve_train.pipeline import Pipeline, PipelineConfig
from tests.training.core_checks import assert_core_unchanged

ARCH_ARGS = {"in_channels": 1, "num_classes": 4, "width_mult": 0.25}


def _config(full_loss: float, baseline_epochs: float = 1.0) -> PipelineConfig:
    return PipelineConfig(arch="resnet20", arch_args=ARCH_ARGS, baseline_epochs=baseline_epochs,
                          core_epochs=4.0, grow_epochs=1.0, batch_size=16, full_loss=full_loss)


def _pruned(tmp_path: Path, full_loss: float, baseline_epochs: float = 1.0,
            n_train: int = 96) -> Pipeline:
    """A pipeline on the same data and seed, run up to (not including) the core stage."""
    data = generated(n_train=n_train, n_test=32, channels=1, size=8)
    pipe = Pipeline(_config(full_loss, baseline_epochs), data, tmp_path)
    pipe.baseline()
    pipe.prune()
    return pipe


def _baseline(pipe: Pipeline) -> dict[str, torch.Tensor]:
    return load_file(str(pipe.out / "baseline.safetensors"))


def test_the_view_is_the_full_network_on_the_levels_live_weights(tmp_path: Path) -> None:
    pipe = _pruned(tmp_path, 0.0)
    state = NestedState.load(tmp_path / "prune")
    level = state.level_model(1)
    view = WiderView(state, 1, level, 3, per_level_from=_baseline(pipe))
    x = torch.randn(8, 1, 8, 8)
    torch.testing.assert_close(view(x), state.level_model(3).train()(x), rtol=0, atol=0)
    view(x).square().sum().backward()  # type: ignore[no-untyped-call]
    shared = {n for n, _ in level.named_parameters() if not state.layout[n].per_level}
    got_grad = {n for n, p in level.named_parameters() if p.grad is not None}
    assert got_grad == shared  # the level's batch norms and head are not the full network's
    assert all(p.grad is None for p in view.net.parameters())
    with torch.no_grad():  # tied, not copied: a step on the level moves the view
        before = view(x)
        next(iter(level.parameters())).add_(1.0)
        assert not torch.equal(view(x), before)
    assert pipe.cfg.full_loss == 0.0


def test_all_levels_puts_a_view_on_every_wider_level(tmp_path: Path) -> None:
    data = generated(n_train=32, n_test=16, channels=1, size=8)
    state_dir = tmp_path / "full"
    full = Pipeline(_config(1.0), data, state_dir)
    full.baseline()
    full.prune()
    state = NestedState.load(state_dir / "prune")
    every = Pipeline(replace(_config(1.0), full_loss_levels="all"), data, tmp_path / "all")
    every.out.mkdir()  # the same baseline, whose norms and heads the views take
    (every.out / "baseline.safetensors").write_bytes(
        (state_dir / "baseline.safetensors").read_bytes())
    level = state.level_model(0)
    assert [v.pos["s3"].numel() for v in full._wider_views(state, 0, level)] == [
        state.widths(0)["s3"]]
    views = every._wider_views(state, 0, level)
    assert [sum(p.numel() for p in v.net.parameters()) for v in views] == [
        sum(p.numel() for p in state.level_model(j).parameters()) for j in (1, 2, 3)]
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(views[1](x), state.level_model(2).train()(x), rtol=0, atol=0)
    assert every._wider_views(state, 3, state.level_model(3)) == []
    with pytest.raises(ValueError, match="level 1 is not wider than level 2"):
        WiderView(state, 2, state.level_model(2), 1, per_level_from=_baseline(full))


def _with_a_tuned_core(state: NestedState) -> NestedState:
    """``state`` with a core absorbed whose own norms and head moved off the baseline's, as
    the core stage leaves them (without spending a training run on it)."""
    core = state.level_model(0)
    with torch.no_grad():
        for name, p in core.named_parameters():
            if state.layout[name].per_level:
                p.mul_(1.5).add_(0.1)
    state.absorb(core, state.kept[0], level=0)
    return state


def test_after_a_level_is_absorbed_the_view_keeps_the_baselines_norms_and_head(
        tmp_path: Path) -> None:
    """Absorbing a level writes its own batch norms and head columns into the master; the
    full network cut from the master then mixes them with the baseline's. The view must not
    train the shared weights against that mix, but against the baseline's norms and head."""
    pipe = _pruned(tmp_path, 1.0)
    state = _with_a_tuned_core(NestedState.load(tmp_path / "prune"))
    baseline = _baseline(pipe)
    level = state.level_model(1, own_from=0)
    view = WiderView(state, 1, level, 3, per_level_from=baseline)
    expected = architectures.build("resnet20", ARCH_ARGS)
    expected.load_state_dict({n: t if state.layout[n].per_level else state.master[n]
                              for n, t in baseline.items()})
    x = torch.randn(8, 1, 8, 8)
    torch.testing.assert_close(view(x), expected.train()(x), rtol=0, atol=0)
    assert not torch.allclose(view(x), state.level_model(3).train()(x))  # the master's mix
    with pytest.raises(ValueError, match=r"per_level_from has no 'fc\.weight'"):
        WiderView(state, 1, level, 3, per_level_from={
            n: t for n, t in baseline.items() if n != "fc.weight"})


def _full_network_loss(pipe: Pipeline, core: NestedState) -> float:
    """Training loss of the unpruned network with the tuned core's shared weights in place of
    the original ones: what the reinserted channels will have to work beside."""
    full = core.level_model(len(core.kept) - 1)
    weights = load_file(str(pipe.out / "baseline.safetensors"))
    for name, tensor in core.master.items():
        info = core.layout[name]
        if not info.per_level:
            block = gather(tensor, info.axes, core.kept[0])
            weights[name] = scatter(weights[name], info.axes, core.kept[0], block)
    full.load_state_dict(weights)
    x, y = next(loop.batches(pipe.data.train, pipe.mean, pipe.std, 512, 0, train=True,
                             augmentation=False))
    with torch.no_grad():
        return float(F.cross_entropy(full.train()(x), y))


def test_the_full_loss_makes_the_core_fit_the_channels_it_is_grown_with(
        tmp_path: Path) -> None:
    """Full-batch steps without augmentation, so the trend is the gradient's, not a batch's
    (with batches of 16 and augmentation the effect at weight 1 drowns in noise on data this
    small): with the full-network loss, the network the core will be grown into ends with a
    lower loss than the core's own training leaves it, and lower than before tuning; the
    larger the weight, the lower. Measured on the network rebuilt from the absorbed core and
    the baseline, as growth will rebuild it, not through the view that was trained."""
    pipe = _pruned(tmp_path, 0.0, baseline_epochs=20.0, n_train=256)
    untuned = _full_network_loss(pipe, NestedState.load(tmp_path / "prune"))
    losses = []
    for weight in (0.0, 1.0, 4.0):
        state = NestedState.load(tmp_path / "prune")
        model = state.level_model(0)
        views = [WiderView(state, 0, model, 3, per_level_from=_baseline(pipe))] if weight else []
        cfg = loop.TrainConfig(epochs=20.0, lr=0.05, batch_size=256, augment=False,
                               full_loss=weight)
        loop.train(model, pipe.data.train, pipe.mean, pipe.std, cfg, wider_views=views)
        state.absorb(model, state.kept[0], level=0)
        losses.append(_full_network_loss(pipe, state))
    free, joint, strong = losses
    assert strong < joint < free
    assert joint < untuned


def test_growth_with_the_full_loss_leaves_the_core_bit_identical(tmp_path: Path) -> None:
    pipe = _pruned(tmp_path, 1.0)
    pipe.core()
    before = NestedState.load(tmp_path / "core")
    pipe.grow(1)  # the view sends gradient to the core's block too: the masks must win
    assert_core_unchanged(before, NestedState.load(tmp_path / "grow1"))


def test_the_last_level_trains_without_a_view() -> None:
    cfg = _config(0.5)
    assert [cfg.train_cfg(1.0, 0, anchored_level=k).full_loss for k in range(4)] == [
        0.5, 0.5, 0.5, 0.0]
    assert cfg.train_cfg(1.0, 0).full_loss == 0.0  # the independent variants: never


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="--full-loss must be >= 0"):
        _config(-1.0)
    data = generated(n_train=16, n_test=8, channels=1, size=8)
    model = architectures.build("resnet20", ARCH_ARGS)
    with pytest.raises(ValueError, match="needs the wider networks' views"):
        loop.train(model, data.train, torch.tensor(data.mean), torch.tensor(data.std),
                   loop.TrainConfig(epochs=1, full_loss=0.5))
    with pytest.raises(ValueError, match="--full-loss-levels must be one of full, all"):
        PipelineConfig(full_loss=1.0, full_loss_levels="next")
    with pytest.raises(ValueError, match="must be >= 0"):
        loop.train(model, data.train, torch.tensor(data.mean), torch.tensor(data.std),
                   loop.TrainConfig(epochs=1, full_loss=-0.5), wider_views=[model])
    state = NestedState.from_model("resnet20", ARCH_ARGS, model)
    state.kept = [{s: torch.arange(n) for s, n in state.slot_sizes().items()}] * 2
    state.skipped = {0: ("s1.b1",)}
    with pytest.raises(ValueError, match="every level to run every block"):
        WiderView(state, 0, model, 1, per_level_from=model.state_dict())


CLI = ["train", "--dataset", "generated", "--arch", "resnet20", "--width-mult", "0.25",
       "--epochs", "0.5", "--core-epochs", "0.5", "--grow-epochs", "0.5", "--batch-size", "16",
       "--threads", "1", "--no-progress"]


def test_the_cli_runs_with_the_weight_and_refuses_a_negative_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*CLI, "--out", str(tmp_path / "bad"), "--full-loss", "-1"]) == 2
    assert "--full-loss must be >= 0, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main([*CLI, "--out", str(tmp_path / "run"), "--full-loss", "0.7"]) == 0
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["config"]["full_loss"] == 0.7
    assert state["done"][-1] == "export"


@pytest.mark.parametrize("full_loss", [0.0, 1.0])
def test_a_grown_level_starts_from_the_baselines_norms_and_head_with_the_full_loss(
        tmp_path: Path, full_loss: float) -> None:
    """With the full-network loss the shared weights were fitted under the baseline's batch
    norms and head, so growth starts from those; without it, from the level below's own on
    the channels it shares. A zero learning rate leaves the start visible after growth."""
    cfg = replace(_config(full_loss), lr=0.0)
    data = generated(n_train=32, n_test=16, channels=1, size=8)
    pipe = Pipeline(cfg, data, tmp_path)
    pipe.baseline()
    pipe.prune()
    state = _with_a_tuned_core(NestedState.load(tmp_path / "prune"))
    pipe._save_nested(state, "core")
    pipe._finish("core")
    below = state.level_model(1, own_from=0)
    baseline = state.level_model(1, per_level_from=_baseline(pipe))
    pipe.grow(1)
    grown = NestedState.load(tmp_path / "grow1").level_own[1]
    start = dict((baseline if full_loss else below).named_parameters())
    other = dict((below if full_loss else baseline).named_parameters())
    per_level = [n for n in start if state.layout[n].per_level]
    assert per_level
    for name in per_level:
        torch.testing.assert_close(grown[name], start[name], rtol=0, atol=0)
    assert any(not torch.equal(grown[n], other[n]) for n in per_level)
    with pytest.raises(ValueError, match="two sources for the same tensors"):
        state.level_model(1, own_from=0, per_level_from=_baseline(pipe))
