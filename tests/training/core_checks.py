"""Shared assertion for growth tests: what level 0 uses must not change when a level grows."""

from __future__ import annotations

import torch

from elastiserve_store.slots import gather
from elastiserve_train.nested import NestedState


def assert_core_unchanged(before: NestedState, after: NestedState) -> None:
    """Every shared tensor's block on level 0's channels is bit-identical in ``after``."""
    for name, tensor in before.master.items():
        info = before.layout[name]
        if info.per_level:
            continue
        assert torch.equal(gather(tensor, info.axes, before.kept[0]),
                           gather(after.master[name], info.axes, after.kept[0])), name
