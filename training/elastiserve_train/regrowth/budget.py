"""Hard budgets (bytes on disk or MACs) turned into a pruning ratio, by bisection.

Both forms prune "to an extreme ratio that meets a stated hard budget". The cost of a ratio is
measured by a caller-supplied function (a sparse artifact's size, a level's MACs), assumed
monotone in the ratio; these helpers find the least-pruned ratio that fits, and refuse, with the
smallest cost any allowed ratio reaches, a budget that no network of that architecture can meet.
Pure: no tensors, no files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BudgetKind = Literal["bytes", "macs", "macs_ratio"]
BUDGET_UNITS = {"bytes": "bytes on disk", "macs": "MACs per image",
                "macs_ratio": "of the unpruned MACs"}


class BudgetError(ValueError):
    """The budget cannot be met (or is not a budget at all); the message says by how much."""


@dataclass(frozen=True)
class Budget:
    """A hard ceiling on one cost of the pruned network."""

    kind: BudgetKind
    value: float

    def __post_init__(self) -> None:
        if self.kind not in BUDGET_UNITS:
            raise BudgetError(f"unknown budget kind {self.kind!r}")
        if not self.value > 0:
            raise BudgetError(f"a {self.kind} budget must be positive, got {self.value}")
        if self.kind == "macs_ratio" and self.value > 1:
            raise BudgetError(f"a MACs-ratio budget must be in (0, 1], got {self.value}")

    def describe(self) -> str:
        if self.kind == "macs_ratio":
            return f"{self.value:.4g} {BUDGET_UNITS[self.kind]}"
        return f"{int(self.value)} {BUDGET_UNITS[self.kind]}"


def least_sparsity_within(cost: Callable[[float], float], budget: Budget, *,
                          max_sparsity: float, iterations: int = 30) -> float:
    """Smallest sparsity in [0, max_sparsity] whose ``cost`` fits (cost falls as sparsity rises).

    Raises :class:`BudgetError` when even ``max_sparsity`` is over budget.
    """
    if cost(0.0) <= budget.value:
        return 0.0
    floor = cost(max_sparsity)
    if floor > budget.value:
        raise BudgetError(
            f"budget {budget.describe()} cannot be met: even at {max_sparsity:.2%} sparsity the "
            f"network needs {floor:.6g} (the unprunable part and the sparse index cost this "
            f"much)")
    return _bracket(lambda s: cost(s) <= budget.value, 0.0, max_sparsity, iterations)[1]


def largest_keep_within(cost: Callable[[float], float], budget: Budget, *,
                        min_keep: float, iterations: int = 30) -> float:
    """Largest channel keep ratio in [min_keep, 1] whose ``cost`` fits (cost grows with keep).

    Raises :class:`BudgetError` when even ``min_keep`` is over budget.
    """
    if cost(1.0) <= budget.value:
        return 1.0
    floor = cost(min_keep)
    if floor > budget.value:
        raise BudgetError(
            f"budget {budget.describe()} cannot be met: the narrowest network this architecture "
            f"allows (keep ratio {min_keep:.4g}) needs {floor:.6g}")
    return _bracket(lambda k: cost(k) > budget.value, min_keep, 1.0, iterations)[0]


def _bracket(turned: Callable[[float], bool], lo: float, hi: float, iterations: int
             ) -> tuple[float, float]:
    """Bisect ``[lo, hi]`` (``turned`` false at ``lo``, true at ``hi``) down to the two
    values either side of where it turns; the caller keeps the side that meets its budget."""
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if turned(mid):
            hi = mid
        else:
            lo = mid
    return lo, hi


def geometric_keeps(start: float, end: float, steps: int) -> list[float]:
    """``steps`` keep fractions from just above ``start`` to ``end``, evenly spaced in log.

    Regrowth from an extreme ratio needs its steps in proportion (1 % -> 2 % -> 5 % -> 10 %),
    not in absolute terms, or the first step would jump most of the way.
    """
    if steps < 1:
        raise ValueError(f"need at least one regrowth step, got {steps}")
    if not 0 < start < end <= 1:
        raise ValueError(f"regrowth must go from a smaller to a larger kept fraction in (0, 1], "
                         f"got {start} -> {end}")
    ratio = (end / start) ** (1.0 / steps)
    keeps = [start * ratio ** (i + 1) for i in range(steps)]
    keeps[-1] = end
    return keeps
