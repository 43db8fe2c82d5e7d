"""The reaction benchmark's pure helpers: burst onsets and recovery time."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reaction() -> Any:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("reaction")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        (((6.0, 0.5, 0.5), (1.0, 0.5, 2.0), (10.0, 2.0, 2.0), (1.0, 2.0, 0.5)), [6.0]),
        (((6.0, 0.5, 0.5), (3.0, 2.0, 2.0), (10.0, 0.5, 0.5)), [6.0]),  # a jump
        (((2.0, 1.0, 1.0), (2.0, 2.0, 2.0), (2.0, 1.0, 1.0), (2.0, 3.0, 3.0)), [2.0, 6.0]),
        (((5.0, 1.0, 1.0), (5.0, 1.0, 0.5)), []),  # only falls
    ],
)
def test_onsets(reaction: Any, trace: tuple[tuple[float, float, float], ...],
                expected: list[float]) -> None:
    assert reaction.onsets(trace) == expected


@pytest.mark.parametrize(
    ("p95", "onsets", "expected"),
    [
        ([0.05, 0.05, 0.05, 0.05], [1.0], 0.0),  # never broke
        ([0.05, 0.3, 0.2, 0.05, 0.05], [1.0], 2.0),
        ([0.05, 0.3, 0.05, 0.2, 0.05], [1.0], 3.0),  # broke again: recovered only after
        ([0.05, 0.3, None, 0.05], [1.0], 1.0),  # a second without requests is met
        ([0.3, 0.05, 0.05, 0.3, 0.3, 0.05], [0.0, 3.0], 2.0),  # the worst onset
        ([0.05, 0.05, 0.3], [1.0], 2.0),  # still late at the end
    ],
)
def test_recovery(reaction: Any, p95: list[float | None], onsets: list[float],
                  expected: float) -> None:
    assert reaction.recovery_s(p95, 0.1, onsets) == expected
