"""Pure schedule functions, table-tested."""

from __future__ import annotations

import pytest

from elastiserve_train.schedules import (
    KeepSchedule,
    chain,
    cosine_lr,
    iterative,
    nested_ratios,
    one_shot,
)


def test_nested_ratios() -> None:
    assert nested_ratios(4) == [0.25, 0.5, 0.75, 1.0]
    assert nested_ratios(1) == [1.0]
    with pytest.raises(ValueError):
        nested_ratios(0)


@pytest.mark.parametrize(("schedule", "keep", "steps", "expected"), [
    (one_shot, 1 / 3, 3, [1 / 3]),
    (iterative, 1 / 3, 1, [1 / 3]),
    (iterative, 0.4, 3, [0.8, 0.6, 0.4]),
])
def test_keep_schedules(schedule: KeepSchedule, keep: float, steps: int,
                        expected: list[float]) -> None:
    assert schedule(keep, steps) == pytest.approx(expected)


def test_chain_visits_levels_largest_to_smallest() -> None:
    steps = chain([0.25, 0.5, 0.75, 1.0], iterative, 1)
    assert steps == [(0.75, 2), (0.5, 1), (0.25, 0)]
    two = chain([0.25, 0.5, 1.0], iterative, 2)
    assert [k for _, k in two] == [None, 1, None, 0]
    assert [r for r, _ in two] == pytest.approx([0.75, 0.5, 0.375, 0.25])


def test_cosine_lr() -> None:
    assert cosine_lr(1.0, 0, 10) == 1.0
    assert cosine_lr(1.0, 10, 10) == pytest.approx(0.0)
    assert cosine_lr(1.0, 0, 10, warmup=2) == 0.5


@pytest.mark.parametrize(("ratios", "reason"), [
    ((0.3, 0.5, 1.0), "3 level ratios for 4 levels"),
    ((0.0, 0.5, 0.7, 1.0), "in \\(0, 1\\]"),
    ((0.3, 0.7, 0.5, 1.0), "rise strictly"),
    ((0.3, 0.5, 0.7, 0.9), "must be 1.0"),
])
def test_level_ratios_that_cannot_nest_are_refused(ratios: tuple[float, ...],
                                                   reason: str) -> None:
    from elastiserve_train.pipeline import PipelineConfig
    with pytest.raises(ValueError, match=reason):
        PipelineConfig(levels=4, level_ratios=ratios)


def test_level_ratios_replace_the_even_spacing() -> None:
    from elastiserve_train.pipeline import PipelineConfig
    assert PipelineConfig(levels=4).ratios == [0.25, 0.5, 0.75, 1.0]
    assert PipelineConfig(levels=4, level_ratios=(0.3, 0.5, 0.7, 1.0)).ratios == [0.3, 0.5, 0.7,
                                                                                  1.0]
