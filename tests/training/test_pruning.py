"""DepGraph pruning: the replayed history names exactly the channels that survive."""

from __future__ import annotations

import pytest
import torch

from elastiserve_store import ARCHITECTURES, architectures
from elastiserve_store.slots import gather, tensor_slots
from elastiserve_train.importance import IMPORTANCES, make_importance
from elastiserve_train.pruning import ChainPruner, classifier_heads, target_widths

torch.set_num_threads(1)
ARGS = {"in_channels": 1, "num_classes": 4, "width_mult": 0.25}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 4, (4,), generator=gen))]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_kept_indices_reproduce_the_pruned_model(arch: str) -> None:
    torch.manual_seed(0)
    model = architectures.build(arch, ARGS)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    layout = tensor_slots(model)
    pruner = ChainPruner(model, torch.zeros(1, 1, 8, 8), make_importance("l2"), [0.75, 0.5])
    previous = None
    for target in pruner.targets:
        kept = pruner.step()
        assert {s: len(v) for s, v in kept.items()} == target
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                assert torch.equal(tensor, gather(original[name], layout[name].axes, kept)), name
        if previous is not None:  # nested: each step keeps a subset of the last
            assert all(bool(torch.isin(kept[s], previous[s]).all()) for s in kept)
        previous = kept
    head = classifier_heads(model)[0]
    assert isinstance(head, torch.nn.Linear) and head.out_features == 4  # classifier kept whole


@pytest.mark.parametrize("importance", IMPORTANCES)
def test_every_importance_prunes(importance: str) -> None:
    torch.manual_seed(0)
    model = architectures.build("resnet20", ARGS)
    pruner = ChainPruner(model, torch.zeros(1, 1, 8, 8), make_importance(importance), [0.5])
    kept = pruner.step(_batches())
    assert {s: len(v) for s, v in kept.items()} == pruner.targets[0]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 4)


def test_target_widths_refuses_empty_slots() -> None:
    assert target_widths({"a": 16, "b": 3}, 0.34) == {"a": 5, "b": 1}
    with pytest.raises(ValueError, match="no channel"):
        target_widths({"a": 2}, 0.25)


def test_hessian_scores_equal_the_batched_reference() -> None:
    """The per-sample passes give the same OBD scores as per-sample backward passes through
    one batched graph (the slow form they replaced): eval-mode batch norms make a sample's
    loss independent of its batch."""
    import torch_pruning as tp
    from torch.nn import functional as F

    torch.manual_seed(0)
    model = architectures.build("resnet20", ARGS).eval()
    batches = _batches()
    strategy = make_importance("hessian")
    strategy.prepare(model, batches)
    reference = tp.importance.HessianImportance()
    for x, y in batches:
        losses = F.cross_entropy(model(x), y, reduction="none")
        for i, loss in enumerate(losses):
            model.zero_grad()
            loss.backward(retain_graph=i + 1 < len(losses))
            reference.accumulate_grad(model)
    graph = tp.DependencyGraph().build_dependency(model, torch.zeros(1, 1, 8, 8))
    groups = list(graph.get_all_groups(root_module_types=[torch.nn.Conv2d]))
    assert groups
    for group in groups[:4]:
        assert torch.allclose(strategy.importance(group), reference(group), rtol=1e-4,
                              atol=1e-8)
