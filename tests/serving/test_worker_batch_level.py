"""Table tests of the per-batch level choice and the service-time table it reads (pure)."""

from __future__ import annotations

import math

import pytest

from elastiserve_serve.runtime.batch_level import ChoiceReason, choose_batch_level
from elastiserve_serve.runtime.service_times import (
    ServiceTimes,
    profile_levels,
    profile_sizes,
)

# Three levels, narrowest first: 2, 5 and 10 ms for this batch.
SERVICE = (0.002, 0.005, 0.010)
FITS, NONE_FITS, NO_SIGNAL = ChoiceReason.FITS, ChoiceReason.NONE_FITS, ChoiceReason.NO_SIGNAL


@pytest.mark.parametrize(
    ("case", "floor", "ceiling", "wait", "elapsed", "service", "budget", "level", "reason"),
    [
        ("idle: the widest allowed level", 0, 2, 0.0, 0.0, SERVICE, 0.1, 2, FITS),
        ("never above the ceiling", 0, 1, 0.0, 0.0, SERVICE, 0.1, 1, FITS),
        ("waited: the widest that still fits", 0, 2, 0.093, 0.0, SERVICE, 0.1, 1, FITS),
        ("decode time counts as well", 0, 2, 0.090, 0.006, SERVICE, 0.1, 0, FITS),
        ("exactly on the budget fits", 0, 2, 0.090, 0.0, SERVICE, 0.1, 2, FITS),
        ("late whatever runs: fastest allowed", 0, 2, 0.2, 0.0, SERVICE, 0.1, 0, NONE_FITS),
        ("never below the floor", 1, 2, 0.097, 0.0, SERVICE, 0.1, 1, NONE_FITS),
        ("floor above ceiling: the ceiling", 2, 1, 0.0, 0.0, SERVICE, 0.1, 1, FITS),
        ("floor = ceiling: no choice", 1, 1, 0.5, 0.0, SERVICE, 0.1, 1, NONE_FITS),
        ("ceiling past the last level", 0, 9, 0.0, 0.0, SERVICE, 0.1, 2, FITS),
        ("negative wait (clock skew) is 0", 0, 2, -5.0, 0.0, SERVICE, 0.012, 2, FITS),
        ("NaN wait is 0", 0, 2, math.nan, 0.0, SERVICE, 0.012, 2, FITS),
        ("infinite wait is 0", 0, 2, math.inf, 0.0, SERVICE, 0.012, 2, FITS),
        ("no budget: the ceiling", 0, 2, 0.5, 0.0, SERVICE, 0.0, 2, NO_SIGNAL),
        ("NaN budget: the ceiling", 0, 2, 0.5, 0.0, SERVICE, math.nan, 2, NO_SIGNAL),
        ("no service times: the ceiling", 0, 2, 0.5, 0.0, (), 0.1, 0, NO_SIGNAL),
        ("NaN service time: the ceiling", 0, 2, 0.5, 0.0, (0.002, math.nan, 0.01), 0.1, 2,
         NO_SIGNAL),
        ("a narrower level that is slower is not the fastest", 0, 2, 0.5, 0.0,
         (0.004, 0.003, 0.010), 0.1, 1, NONE_FITS),
        ("equal times on none fits: the narrowest", 0, 2, 0.5, 0.0, (0.003, 0.003, 0.003),
         0.1, 0, NONE_FITS),
    ],
)
def test_choose_batch_level(
    case: str, floor: int, ceiling: int, wait: float, elapsed: float,
    service: tuple[float, ...], budget: float, level: int, reason: ChoiceReason,
) -> None:
    choice = choose_batch_level(floor=floor, ceiling=ceiling, oldest_wait_s=wait,
                                elapsed_s=elapsed, service_s=service, budget_s=budget)
    assert (choice.level, choice.reason) == (level, reason), case


def test_predicted_completion_is_wait_plus_elapsed_plus_service() -> None:
    choice = choose_batch_level(floor=0, ceiling=2, oldest_wait_s=0.05, elapsed_s=0.001,
                                service_s=SERVICE, budget_s=0.1)
    assert (choice.level, choice.reason) == (2, FITS)
    assert choice.predicted_s == pytest.approx(0.061)


def test_choice_narrows_monotonically_as_the_wait_grows() -> None:
    """A longer wait never yields a wider level (the property the burst test relies on)."""
    levels = [
        choose_batch_level(floor=0, ceiling=2, oldest_wait_s=wait / 1000, elapsed_s=0.0,
                           service_s=SERVICE, budget_s=0.1).level
        for wait in range(0, 150)
    ]
    assert levels == sorted(levels, reverse=True)
    assert levels[0] == 2 and levels[-1] == 0


@pytest.mark.parametrize(
    ("max_samples", "sizes"),
    [(1, (1,)), (2, (1, 2)), (4, (1, 2, 4)), (6, (1, 2, 4, 6)), (16, (1, 2, 4, 8, 16))],
)
def test_profile_sizes(max_samples: int, sizes: tuple[int, ...]) -> None:
    assert profile_sizes(max_samples) == sizes


def test_profile_sizes_refuses_zero() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        profile_sizes(0)


TABLE = ServiceTimes((1, 2, 4), ((0.001, 0.002, 0.004), (0.010, 0.012, 0.020)))


@pytest.mark.parametrize(
    ("level", "samples", "seconds"),
    [
        (0, 1, 0.001),
        (0, 3, 0.003),  # between 2 and 4
        (1, 3, 0.016),
        (1, 8, 0.036),  # past the largest: the last segment's slope
        (1, 0, 0.010),  # no samples costs what one does
    ],
)
def test_service_times_interpolate(level: int, samples: int, seconds: float) -> None:
    assert TABLE.profiled(level, samples) == pytest.approx(seconds)


def test_single_size_profile_scales_per_sample() -> None:
    table = ServiceTimes((2,), ((0.004,),))
    assert table.profiled(0, 5) == pytest.approx(0.010)


def test_observations_correct_one_level_within_bounds() -> None:
    table = ServiceTimes((1, 2), ((0.001, 0.002), (0.010, 0.020)))
    for _ in range(30):
        table.observe(1, 2, 0.040)  # this level now runs twice as slow
    assert table.predict(1, 2) == pytest.approx(0.040, rel=0.01)
    assert table.predict(0, 2) == pytest.approx(0.002)  # other levels untouched
    for _ in range(60):
        table.observe(0, 1, 10.0)  # an absurd outlier is bounded
    assert table.corrections[0] <= 8.0
    table.observe(1, 2, math.nan)
    table.observe(1, 2, -1.0)
    assert math.isfinite(table.corrections[1])


@pytest.mark.parametrize(
    ("sizes", "seconds", "message"),
    [
        ((), (), "increasing"),
        ((2, 1), ((0.1, 0.1),), "increasing"),
        ((0, 1), ((0.1, 0.1),), "increasing"),
        ((1, 2), ((0.1,),), "one time per"),
        ((1,), ((math.nan,),), "finite"),
        ((1,), ((-0.1,),), "finite"),
    ],
)
def test_service_times_refuse_bad_tables(
    sizes: tuple[int, ...], seconds: tuple[tuple[float, ...], ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ServiceTimes(sizes, seconds)


def test_profile_levels_takes_the_median_after_a_warm_up() -> None:
    """The clock advances by what each call 'costs'; the first (warm-up) call is slow."""
    now = [0.0]
    calls: list[tuple[int, int]] = []
    costs = iter([0.2, 0.003, 0.001, 0.002] * 4)

    def run(level: int, samples: int) -> None:
        calls.append((level, samples))
        now[0] += next(costs)

    table = profile_levels(run, 2, (1, 2), repeats=3, clock=lambda: now[0])
    assert len(calls) == 2 * 2 * 4
    assert [list(row) for row in table.seconds] == [[pytest.approx(0.002)] * 2] * 2


def test_profile_levels_times_a_slow_size_once() -> None:
    """A warm-up over SLOW_RUN_S is followed by one timed run, not ``repeats``."""
    now = [0.0]
    calls: list[tuple[int, int]] = []
    costs = {1: 0.01, 8: 2.0}

    def run(level: int, samples: int) -> None:
        calls.append((level, samples))
        now[0] += costs[samples]

    table = profile_levels(run, 1, (1, 8), repeats=3, clock=lambda: now[0])
    assert calls == [(0, 1)] * 4 + [(0, 8)] * 2
    assert list(table.seconds[0]) == pytest.approx([0.01, 2.0])
