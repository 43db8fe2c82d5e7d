"""The switch-latency analysis on hand-made timelines."""

from __future__ import annotations

import pytest

from elastiserve_serve.loadgen import (
    Result,
    Switch,
    percentile,
    piecewise_arrivals,
    planned_rate,
    switch_latencies,
)


def test_switch_latency_counts_only_stale_answers_inside_the_window() -> None:
    switches = [Switch(10.0, "a"), Switch(20.0, "b")]
    results = [
        Result(9.9, 10.2, 200, "old"),  # in flight at the change: not counted
        Result(10.1, 10.3, 200, "old"),  # stale: 0.3 s after the change
        Result(10.2, 10.4, 200, "a"),
        Result(19.9, 20.5, 200, "b"),  # answered after the next change: not counted
        Result(20.1, 20.2, 200, "b"),
        Result(20.2, 20.3, 500, "a"),  # failures are counted elsewhere
    ]
    assert switch_latencies(results, switches) == [pytest.approx(0.3), 0.0]


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == 95.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 50) == 3.0


def test_piecewise_arrivals_integrate_the_planned_rate() -> None:
    phases = [(2.0, 10.0, 10.0), (2.0, 10.0, 30.0), (1.0, 0.0, 0.0), (1.0, 5.0, 5.0)]
    due = piecewise_arrivals(phases)
    assert len(due) == 20 + 40 + 0 + 5
    assert due == sorted(due) and due[0] == pytest.approx(0.1)
    assert not [d for d in due if 4.001 < d < 5.0]  # the silent phase sends nothing
    in_ramp = [d for d in due if 2.0 <= d < 4.0]
    assert len([d for d in in_ramp if d >= 3.0]) > len([d for d in in_ramp if d < 3.0])
    assert planned_rate(phases, 3.0) == pytest.approx(20.0)
    assert planned_rate(phases, 99.0) == 0.0
    with pytest.raises(ValueError):
        piecewise_arrivals([(0.0, 1.0, 1.0)])
