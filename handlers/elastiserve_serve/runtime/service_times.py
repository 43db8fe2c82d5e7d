"""Per-level, per-batch-size service times: profiled at load, corrected while serving.

The per-batch choice (:mod:`.batch_level`) needs, for the batch in hand, how long each level
would take. The bundle's manifest has CPU latencies at batch 1 and 32, but from the machine that
trained it; what matters is this worker, with its threads, on this node. So each level is timed
here at load at batch sizes 1, 2, 4, ... up to the largest batch the worker can get (median of
a few runs after a warm-up) and a batch of ``n`` samples is predicted by linear interpolation
between the profiled sizes (linear extrapolation past the largest).

A node's speed changes after load (a neighbour starts, the CPU throttles): every forward pass
the engine runs is fed back through :meth:`ServiceTimes.observe`, which keeps one multiplicative
correction per level (an exponentially weighted mean of observed / profiled, bounded), so a
slower node makes every prediction of that level slower within a few batches.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

CORRECTION_WEIGHT = 0.2
"""Weight of the newest observation in a level's correction (about the last 5 batches)."""
CORRECTION_BOUNDS = (0.25, 8.0)
"""A correction outside these bounds is an outlier (a page fault, a descheduled thread)."""


def profile_sizes(max_samples: int) -> tuple[int, ...]:
    """Batch sizes to profile: powers of two up to ``max_samples``, and ``max_samples``."""
    if max_samples < 1:
        raise ValueError("max_samples must be at least 1")
    sizes = [1]
    while sizes[-1] * 2 < max_samples:
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != max_samples:
        sizes.append(max_samples)
    return tuple(sizes)


@dataclass
class ServiceTimes:
    """Seconds per level (narrowest first) at each profiled batch size, with corrections."""

    sizes: tuple[int, ...]
    seconds: tuple[tuple[float, ...], ...]  # [level][size index]
    corrections: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sizes or list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] < 1:
            raise ValueError("sizes must be distinct positive integers in increasing order")
        if any(len(row) != len(self.sizes) for row in self.seconds):
            raise ValueError("one time per profiled size and level is required")
        if any(not (math.isfinite(t) and t >= 0) for row in self.seconds for t in row):
            raise ValueError("service times must be finite and non-negative")
        if not self.corrections:
            self.corrections = [1.0] * len(self.seconds)

    def profiled(self, level: int, samples: int) -> float:
        """The profiled time of ``level`` for ``samples`` samples (interpolated)."""
        row = self.seconds[level]
        n = max(1, samples)
        sizes = self.sizes
        if len(sizes) == 1:
            return row[0] * n / sizes[0]
        upper = next((i for i, s in enumerate(sizes) if s >= n), len(sizes) - 1)
        lower = max(0, upper - 1)
        if upper == lower:
            upper = lower + 1
        s0, s1, t0, t1 = sizes[lower], sizes[upper], row[lower], row[upper]
        slope = (t1 - t0) / (s1 - s0)
        return max(0.0, t0 + slope * (n - s0))

    def predict(self, level: int, samples: int) -> float:
        """Predicted seconds for ``level`` to serve ``samples`` samples now."""
        return self.profiled(level, samples) * self.corrections[level]

    def predict_all(self, samples: int) -> list[float]:
        return [self.predict(level, samples) for level in range(len(self.seconds))]

    def observe(self, level: int, samples: int, seconds: float) -> None:
        """Fold one measured forward pass into ``level``'s correction."""
        expected = self.profiled(level, samples)
        if expected <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        lo, hi = CORRECTION_BOUNDS
        ratio = min(hi, max(lo, seconds / expected))
        old = self.corrections[level]
        self.corrections[level] = (1 - CORRECTION_WEIGHT) * old + CORRECTION_WEIGHT * ratio


SLOW_RUN_S = 0.25
"""A warm-up run slower than this is timed once more, not ``repeats`` times: a large model at
a large batch must not hold a worker's start for minutes (its noise matters less, too)."""


def profile_levels(
    run: Callable[[int, int], None],
    levels: int,
    sizes: Sequence[int],
    *,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
) -> ServiceTimes:
    """Time ``run(level, samples)`` (one warm-up, then the median of ``repeats``, or a single
    run after a warm-up slower than :data:`SLOW_RUN_S`) for every level and size. ``run`` does
    what serving does per group: forward pass and softmax."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    table: list[tuple[float, ...]] = []
    for level in range(levels):
        row = []
        for size in sizes:
            began = clock()
            run(level, size)
            slow = clock() - began > SLOW_RUN_S
            times = []
            for _ in range(1 if slow else repeats):
                start = clock()
                run(level, size)
                times.append(clock() - start)
            row.append(statistics.median(times))
        table.append(tuple(row))
    return ServiceTimes(tuple(sizes), tuple(table))
