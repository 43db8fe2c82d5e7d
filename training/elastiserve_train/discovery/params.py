"""The three user parameters of structure discovery, validated once at the edge.

* ``nu`` (ν > 0): pruning strength, the weight of the complexity penalty against the data loss.
  The penalty is ν times the network's *expected* cost as a fraction of the unpruned network's
  (see :mod:`.complexity`), so ν is in loss units per whole network: at ν = 1 removing 1 % of
  the cost is worth 0.01 of cross-entropy.
* ``alpha`` (α ∈ [0, 1]): layer vs unit pruning. The penalty's pull on the residual-layer
  variables is scaled by α and on the unit (channel) variables by 1 - α: α = 0 prunes only
  units, α = 1 only layers.
* ``beta`` (β ∈ [0, 1]): FLOPs vs parameters. The cost is β·MACs/MACs_full +
  (1 - β)·params/params_full: β = 1 prices computation, β = 0 storage.

``budget`` (optional, in (0, 1]): the discovered network's cost as a fraction of the full
network's, in the same β-weighted units. With a budget, ν is only the starting strength: the
search raises or lowers it as the expected cost sits above or below the budget (see
:mod:`.search`), and whatever θ leaves over the budget at the end is removed, lowest θ first.

``theta_tol`` is the removal threshold: a unit or layer whose θ falls below it is removed for
good (the paper's "pruning when θ converges to 0"; a small positive tolerance instead of exact
zero because θ moves in finite steps).
"""

# ruff: noqa: RUF002  (Greek letters: the paper's notation for nu, alpha, beta)

from __future__ import annotations

import math
from dataclasses import dataclass


class DiscoveryParameterError(ValueError):
    """ν, α, β or θ_tol outside their domain; the message names the parameter and the range."""


@dataclass(frozen=True)
class DiscoveryParams:
    """ν (pruning strength), α (layer vs unit), β (FLOPs vs params), θ_tol (removal)."""

    nu: float = 1.0
    alpha: float = 0.5
    beta: float = 0.5
    theta_tol: float = 0.05
    budget: float | None = None

    def __post_init__(self) -> None:
        if self.budget is not None and (
                isinstance(self.budget, bool) or not isinstance(self.budget, (int, float))
                or not math.isfinite(self.budget) or not 0.0 < self.budget <= 1.0):
            raise DiscoveryParameterError(
                f"budget (cost as a fraction of the full network's) must be in (0, 1], "
                f"got {self.budget!r}")
        for name, value in (("nu", self.nu), ("alpha", self.alpha), ("beta", self.beta),
                            ("theta_tol", self.theta_tol)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value):
                raise DiscoveryParameterError(f"{name} must be a finite number, got {value!r}")
        if self.nu <= 0:
            raise DiscoveryParameterError(
                f"nu (pruning strength) must be > 0, got {self.nu}")
        if not 0.0 <= self.alpha <= 1.0:
            raise DiscoveryParameterError(
                f"alpha (layer vs unit pruning) must be in [0, 1], got {self.alpha}")
        if not 0.0 <= self.beta <= 1.0:
            raise DiscoveryParameterError(
                f"beta (FLOPs vs parameters) must be in [0, 1], got {self.beta}")
        if not 0.0 < self.theta_tol < 1.0:
            raise DiscoveryParameterError(
                f"theta_tol (removal threshold) must be in (0, 1), got {self.theta_tol}")
