"""Composite slot axes: concatenated parts and grouped slots (pure tensor bookkeeping).

What each function must do is written out by hand here on ``arange`` tensors, so an offset or a
group taken wrongly shows as a wrong index, not as a model that happens to run.
"""

from __future__ import annotations

import pytest
import torch

from elastiserve_store import external
from elastiserve_store.errors import ManifestError
from elastiserve_store.slots import (
    Composite,
    Part,
    SlotTag,
    TensorSlots,
    axis_width,
    expected_shape,
    gather,
    make_tag,
    prefix,
    prefix_index,
    read_widths,
    scatter,
)

CAT = Composite((Part("a", 4), Part(None, 2), Part("b", 6)))
"""[a: 4 | 2 fixed | b: 6] (12 channels at full width)."""
GROUPED = Composite((Part("g", 8, 2),))
"""8 channels in 2 groups of 4."""
SHARE = Composite((Part("g", 8, 2),), one_group=True)
"""A grouped conv's input axis: one group's 4 channels."""


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.flatten()]


def test_concatenated_prefix_keeps_each_part_at_its_offset() -> None:
    full = torch.arange(12)
    assert _ints(prefix(full, (CAT,), {"a": 2, "b": 3})) == [0, 1, 4, 5, 6, 7, 8]
    # Stored at a narrower top level (a=3, b=5: 10 channels), the offsets move with it.
    top = prefix(full, (CAT,), {"a": 3, "b": 5})
    assert _ints(top) == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert _ints(prefix(top, (CAT,), {"a": 2, "b": 3}, {"a": 3, "b": 5})) == [0, 1, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="pass the widths the tensor is at"):
        prefix(top, (CAT,), {"a": 2, "b": 3})  # a composite axis never guesses the offsets
    assert axis_width(CAT, {"a": 2, "b": 3}) == 7


def test_grouped_prefix_is_taken_inside_every_group() -> None:
    full = torch.arange(8)
    assert _ints(prefix(full, (GROUPED,), {"g": 4})) == [0, 1, 4, 5]
    weight = torch.arange(8 * 4).view(8, 4)  # a grouped conv: out 8 in 2 groups, 4 in a group
    cut = prefix(weight, (GROUPED, SHARE), {"g": 4})
    assert cut.shape == (4, 2)
    assert _ints(cut) == [0, 1, 4, 5, 16, 17, 20, 21]
    assert expected_shape((8, 4, 3, 3), (GROUPED, SHARE, None, None), {"g": 6}) == (6, 3, 3, 3)
    assert _ints(prefix_index(8, 6, 2)) == [0, 1, 2, 4, 5, 6]
    with pytest.raises(ValueError, match="cannot cut 8 channels in 2 groups to 3"):
        prefix_index(8, 3, 2)


def test_gather_and_scatter_place_each_slots_channels() -> None:
    index = {"a": torch.tensor([3, 1]), "b": torch.tensor([0, 5])}
    full = torch.arange(12)
    picked = gather(full, (CAT,), index)
    assert _ints(picked) == [3, 1, 4, 5, 6, 11]
    back = scatter(torch.zeros(12, dtype=torch.long), (CAT,), index, picked)
    assert _ints(back) == [0, 1, 0, 3, 4, 5, 6, 0, 0, 0, 0, 11]
    # On a compact tensor (a at 3, b at 4 channels) positions count from its own parts.
    compact = torch.arange(9)
    local = {"a": torch.tensor([2]), "b": torch.tensor([1, 3])}
    assert _ints(gather(compact, (CAT,), local, {"a": 3, "b": 4})) == [2, 3, 4, 6, 8]
    # A grouped conv's input axis takes one group's positions, and refuses unlike groups.
    weight = torch.arange(8 * 4).view(8, 4)
    kept = {"g": torch.tensor([1, 3, 5, 7])}
    assert _ints(gather(weight, (GROUPED, SHARE), kept)) == [5, 7, 13, 15, 21, 23, 29, 31]
    with pytest.raises(ValueError, match="not kept alike in every group"):
        gather(weight, (GROUPED, SHARE), {"g": torch.tensor([1, 3, 4, 7])})


def test_widths_read_from_shapes_infer_a_slot_seen_only_in_a_concatenation() -> None:
    layout = {"conv.weight": TensorSlots(("a", CAT), False),
              "grouped.weight": TensorSlots((GROUPED, SHARE), False)}
    shapes = {"conv.weight": (3, 3 + 2 + 4), "grouped.weight": (6, 3)}
    assert read_widths(layout, shapes) == {"a": 3, "b": 4, "g": 6}
    with pytest.raises(ValueError, match="not a positive multiple of its 2 groups"):
        read_widths({"w": TensorSlots((GROUPED,), False)}, {"w": (5,)})


def test_slots_only_inside_concatenations_resolve_in_any_order() -> None:
    """A chain where each axis's one unknown slot is known only once the previous axis gave
    it; listed last-to-first, so a single pass in manifest order resolves one slot at a time."""
    n = 300
    width = [2] + [k % 3 + 1 for k in range(1, n + 1)]  # what each slot is cut to
    layout = {"w0": TensorSlots(("s0",), False)}
    shapes: dict[str, tuple[int, ...]] = {"w0": (width[0],)}
    for k in range(n, 0, -1):
        cat = Composite((Part(f"s{k - 1}", 4), Part(f"s{k}", 4)))
        layout[f"w{k}"] = TensorSlots((cat,), False)
        shapes[f"w{k}"] = (width[k - 1] + width[k],)
    assert read_widths(layout, shapes) == {f"s{k}": w for k, w in enumerate(width)}
    # An axis smaller than its known parts is refused where it is read, not later.
    bad = {"w0": TensorSlots(("a",), False),
           "w1": TensorSlots((Composite((Part("a", 4), Part("b", 4))),), False)}
    with pytest.raises(ValueError, match="other parts already hold 4"):
        read_widths(bad, {"w0": (4,), "w1": (3,)})


def test_layout_sides_round_trip_and_plain_layouts_read_as_before() -> None:
    plain = {"conv1": [None, "g0", False], "bn1": ["g0", "g0", True], "fc": ["g0", None, True]}
    assert external.layout_from_json(plain) == {
        "conv1": SlotTag(None, "g0", False), "bn1": SlotTag("g0", "g0", True),
        "fc": SlotTag("g0", None, True)}
    assert external.layout_to_json(external.layout_from_json(plain)) == plain
    composite = {"mix": [[["a", 4, 1], [None, 2, 1], ["b", 6, 1]], [["g", 8, 2]], False]}
    tags = external.layout_from_json(composite)
    assert tags["mix"] == make_tag(CAT, GROUPED)
    assert tags["mix"].in_slot is None and tags["mix"].out_slot == "g"
    assert external.layout_to_json(tags) == composite
    # A single ungrouped part is its plain slot: one form per side.
    assert external.layout_from_json({"c": [[["a", 4, 1]], None, False]})["c"] == \
        SlotTag("a", None, False)


@pytest.mark.parametrize("side", [
    [["a", 6, 4]],  # 6 channels do not make 4 groups
    [[None, 2, 2]],  # fixed channels in groups
    [["a", 0, 1]],
    [["a", 4]],
    [],
    [["a b", 4, 1]],
    [["a", True, 1]],
    {"a": 4},
])
def test_malformed_composite_sides_refused(side: object) -> None:
    with pytest.raises(ManifestError, match=r"list of 1\.\.4096 parts"):
        external.layout_from_json({"conv": [side, None, False]})
