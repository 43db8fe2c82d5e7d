"""The policy loop's schedule: a fixed grid of the interval; a loop that fell a whole
interval behind skips to the present and counts what it skipped."""

from __future__ import annotations

import pytest

from elastiserve_operator.schedule import Slot, next_slot


@pytest.mark.parametrize(
    ("due", "interval", "now", "expected"),
    [
        # On time: one interval after the due time, not after the evaluation's end.
        (100.0, 5.0, 100.3, Slot(105.0)),
        # A long evaluation (4.9 s): still the grid; the next round starts at once, late.
        (100.0, 5.0, 104.9, Slot(105.0)),
        # Ended after the next due time but less than an interval past it: no skip.
        (100.0, 5.0, 109.9, Slot(105.0)),
        # A whole interval behind: the latest grid point that passed, one round skipped.
        (100.0, 5.0, 110.0, Slot(110.0, 1)),
        (100.0, 5.0, 112.5, Slot(110.0, 1)),
        # Several rounds behind (the event loop was blocked): never a burst of catch-ups.
        (100.0, 5.0, 131.0, Slot(130.0, 5)),
        # The interval changed with the spec: the new one applies from this round.
        (100.0, 30.0, 101.0, Slot(130.0)),
    ],
)
def test_next_slot(due: float, interval: float, now: float, expected: Slot) -> None:
    assert next_slot(due, interval, now) == expected


def test_the_next_round_is_never_more_than_an_interval_late() -> None:
    for tenths in range(0, 1000, 7):
        now = 100.0 + tenths / 10
        slot = next_slot(100.0, 5.0, now)
        assert slot.due > 100.0
        assert now - slot.due < 5.0
        assert (slot.due - 100.0) % 5.0 == pytest.approx(0.0)


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
def test_a_non_positive_interval_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match="interval must be > 0"):
        next_slot(0.0, interval, 1.0)
