"""Pure schedule functions: which channel ratios to visit, and the learning rate per step.

Kept free of torch and state so they can be table-tested and swapped (Torch-Pruning passes its
iterative schedule in the same way).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

KeepSchedule = Callable[[float, int], list[float]]
"""(target keep ratio, steps) -> keep ratio after each pruning step, ending at the target."""


def nested_ratios(levels: int) -> list[float]:
    """Evenly spaced channel ratios, smallest first: 4 levels -> 0.25, 0.5, 0.75, 1.0."""
    if levels < 1:
        raise ValueError("need at least one level")
    return [(k + 1) / levels for k in range(levels)]


def one_shot(keep: float, steps: int = 1) -> list[float]:
    """Remove everything in a single step."""
    del steps
    return [keep]


def iterative(keep: float, steps: int) -> list[float]:
    """Remove the same number of channels at each of ``steps`` steps (linear in channels)."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    return [1.0 - (1.0 - keep) * (i + 1) / steps for i in range(steps)]


def chain(level_ratios: Sequence[float], schedule: KeepSchedule, steps_per_level: int
          ) -> list[tuple[float, int | None]]:
    """Pruning steps from full width down to the smallest level.

    Returns (keep ratio, level index reached or None) per step: the nested levels are visited
    largest to smallest, with ``schedule`` deciding the intermediate steps between two levels.
    """
    ratios = sorted(level_ratios)
    steps: list[tuple[float, int | None]] = []
    prev = 1.0
    for k in range(len(ratios) - 1, -1, -1):
        target = ratios[k]
        if target >= prev - 1e-12:
            continue
        sub = schedule(target / prev, steps_per_level)
        for j, r in enumerate(sub):
            steps.append((prev * r, k if j == len(sub) - 1 else None))
        prev = target
    return steps


def cosine_lr(base: float, step: int, total: int, warmup: int = 0) -> float:
    """Cosine decay to zero over ``total`` steps, after an optional linear warm-up."""
    if total <= 0:
        return base
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * base * (1.0 + math.cos(math.pi * t))
