"""Concatenation and grouped convolutions in a model we did not write (issue 19, item 1).

A ``torch.cat`` consumer's input axis is several slots side by side: a level keeps each part's
prefix at the part's offset. A grouped convolution's slots sit in groups: a level keeps the
same prefix of every group. Both become :class:`slots.Composite` sides in the layout, and the
whole prune-and-grow pipeline runs on them: tiny hand-written blocks (DenseNet-like,
Inception-like, ResNeXt-like, a grouped conv on a residual stream) and torchvision's own
``DenseNet`` and ResNeXt ``ResNet`` classes at small sizes, at 3x16x16. Channels split apart
(``chunk``, ShuffleNet) stay refused, with the reason, and so do the cases in between that no
cut can express (a slot grouped two ways, a grouped conv reading a concatenation, a ``cat``
of the untraced image).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from elastiserve_store import constructors, external
from elastiserve_store.slots import Composite, Part
from elastiserve_train.model_analysis import UnsupportedModelError, analyse

from .external_pipeline import CLASSES, FACTORY, SHAPE, prune_grow_and_check

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_trust(trusted: None) -> None:
    """Every test here starts with no factory trusted (``conftest.trusted``)."""


def _trust(factory: str) -> str:
    name = f"{FACTORY}:{factory}"
    constructors.trust_factory(name)
    return name


def _layout(factory: str) -> dict[str, Any]:
    args = analyse(_trust(factory), {"num_classes": CLASSES}, SHAPE, CLASSES)
    return {n: (t.in_side, t.out_side, t.per_level)
            for n, t in external.layout_from_json(args["layout"]).items()}


def _refusal(factory: str) -> str:
    name = _trust(factory)
    with pytest.raises(UnsupportedModelError) as err:
        analyse(name, {"num_classes": CLASSES}, SHAPE, CLASSES)
    message = str(err.value)
    assert message.startswith(f"{name} cannot be made elastic: "), message
    assert "\n" not in message  # the CLI prints it as its one line
    return message


def test_dense_block_concatenation_is_parts_in_order() -> None:
    layout = _layout("dense_block")
    stream = layout["stem.0"][1]
    first = layout["layers.0.5"][1]  # the first dense layer's new channels
    second = layout["layers.1.5"][1]
    assert isinstance(stream, str) and isinstance(first, str) and isinstance(second, str)
    joined = Composite((Part(stream, 8), Part(first, 4)))
    # The second layer's batch norm and 1x1 conv read [block input | first layer's output].
    assert layout["layers.1.0"] == (joined, joined, True)
    assert layout["layers.1.2"][0] == joined
    assert layout["fc"] == (Composite((Part(stream, 8), Part(first, 4), Part(second, 4))),
                            None, True)
    assert len({stream, first, second}) == 3


def test_inception_branches_are_parts_at_their_offsets() -> None:
    layout = _layout("inception_block")
    b1, b3 = layout["b1.0"][1], layout["b3.1.0"][1]
    assert isinstance(b1, str) and isinstance(b3, str) and b1 != b3
    assert layout["mix.0"][0] == Composite((Part(b1, 4), Part(b3, 6)))


def test_grouped_conv_sides_are_slots_in_its_groups() -> None:
    layout = _layout("resnext_block")
    inside, outside = layout["grouped.0"][:2]
    assert isinstance(inside, Composite) and isinstance(outside, Composite)
    (a,), (b,) = inside.parts, outside.parts
    assert (a.size, a.groups, b.size, b.groups) == (16, 4, 16, 4) and a.slot != b.slot
    # Every axis of those slots carries the groups: the 1x1 convs and batch norms around it.
    assert layout["reduce.0"][1] == inside and layout["reduce.1"][:2] == (inside, inside)
    assert layout["expand.0"][0] == outside and layout["grouped.1"][:2] == (outside, outside)
    assert layout["stem.0"][1] == layout["expand.0"][1]  # the residual stream stays plain
    assert isinstance(layout["stem.0"][1], str)


@pytest.mark.parametrize("factory", [
    "dense_block", "inception_block", "resnext_block", "with_concat", "with_grouped_conv",
    "small_densenet", "small_resnext",
])
def test_prune_and_grow_end_to_end(tmp_path: Path, factory: str) -> None:
    prune_grow_and_check(tmp_path, _trust(factory), SHAPE, CLASSES)


@pytest.mark.parametrize("factory", ["dense_block", "resnext_block"])
def test_full_network_loss_anchor_and_one_shot_on_composite_axes(tmp_path: Path,
                                                                  factory: str) -> None:
    """The paths that scatter into a compact wider level (the full-network loss on every
    wider level), cut the baseline to a level (anchor, Fisher) and prune in one shot."""
    prune_grow_and_check(tmp_path, _trust(factory), SHAPE, CLASSES, importance="taylor",
                         settings={"full_loss": 0.5, "full_loss_levels": "all",
                                   "anchor": 0.1, "anchor_fisher": True, "distill": 0.5,
                                   "schedule": "one-shot"})


def test_split_refused_with_the_operation() -> None:
    message = _refusal("chunk_block")
    assert "split apart (torch.split/chunk along channels)" in message, message
    assert "concatenation (torch.cat) alone is supported" in message, message


@pytest.mark.parametrize("factory, reason", [
    ("mixed_groups", "groups the channels of one dependency group that another grouped "
                     "convolution splits into"),
    ("grouped_after_concat", "grouped.0 is a grouped convolution (groups=2) whose input "
                             "channels are concatenated"),
    ("image_concat", "joins a tensor DependencyGraph does not trace"),
])
def test_structures_no_cut_can_express_are_refused(factory: str, reason: str) -> None:
    assert reason in _refusal(factory)
