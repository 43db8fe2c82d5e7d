"""Concatenation and grouped convolutions in a model we did not write (issue 19, item 1).

The nested bundle holds one prefix per channel slot. A ``torch.cat`` consumer's input axis is
several slots side by side (a level keeps each part's prefix at its offset), a ``split``/
``chunk`` reader sees part of one slot, and a grouped convolution needs a prefix inside every
group: none of these is expressible yet, so each must be refused by the analysis, before any
training, with a reason that names the structure. Tiny hand-written blocks (DenseNet-like,
Inception-like, ShuffleNet-like split, ResNeXt-like grouped bottleneck) at 3x16x16, plus
torchvision's DenseNet-121 at 3x32x32 (its smallest input).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from elastiserve_store import constructors
from elastiserve_train.model_analysis import UnsupportedModelError, analyse

torch.set_num_threads(1)

FACTORY = "tests.training.user_models"
SHAPE = (3, 16, 16)
CLASSES = 4


@pytest.fixture(autouse=True)
def trusted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The factories are trusted for this test only (as the training CLI trusts its own)."""
    monkeypatch.setattr(constructors, "_trusted", set())
    monkeypatch.delenv(constructors.ALLOW_ENV, raising=False)
    yield


def _refusal(name: str, shape: tuple[int, ...] = SHAPE) -> str:
    if constructors.is_external(name) and not name.startswith("torchvision:"):
        constructors.trust_factory(name)
    with pytest.raises(UnsupportedModelError) as err:
        analyse(name, {"num_classes": CLASSES}, shape, CLASSES)
    message = str(err.value)
    assert message.startswith(f"{name} cannot be made elastic: "), message
    assert "\n" not in message  # the CLI prints it as its one line
    return message


@pytest.mark.parametrize("factory, joins", [
    ("dense_block", "torch.cat along channels"),
    ("inception_block", "torch.cat along channels"),
    ("chunk_block", "torch.split/chunk along channels"),
])
def test_concatenation_and_split_refused_with_the_operation(factory: str, joins: str) -> None:
    message = _refusal(f"{FACTORY}:{factory}")
    assert "concatenated or split" in message, message
    assert joins in message, message
    assert "each part's prefix at the part's offset" in message, message


def test_grouped_convolution_refused_naming_the_layer_and_groups() -> None:
    message = _refusal(f"{FACTORY}:resnext_block")
    assert "grouped.0 is a grouped convolution (groups=4, 8->8)" in message, message
    assert "uniformly in every group" in message, message


def test_torchvision_densenet_refused_at_its_first_concatenation() -> None:
    message = _refusal("torchvision:densenet121", (3, 32, 32))
    assert "concatenated or split there (torch.cat along channels)" in message, message
