"""The gates' variational objective: posterior, cost-derived prior and flattening hyperprior.

Each gate variable ``z`` has the variational posterior ``q(z) = Bernoulli(θ)`` and the prior
``p(z) = Bernoulli(γ)``. The evidence lower bound charges ``KL(q‖p)`` per variable:

    KL(θ‖γ) = θ·log(θ/γ) + (1-θ)·log((1-θ)/(1-γ)) = -H(θ) + θ·λ - log(1-γ),
    λ = log((1-γ)/γ)

The ``-H(θ)`` part pulls every θ towards 1/2: left alone it keeps the network stochastic, the
opposite of what structure discovery needs. A hyperprior on γ whose log density contributes
``+H(θ)`` at γ's optimum (the *flattening* hyperprior: it flattens the entropy out of the
objective) leaves ``θ·λ`` plus a constant. The θ-part of the objective is then *linear* in
each θ, and the data term ``E_q[loss]`` is linear in each θ as well (an expectation over an
independent Bernoulli): a linear function on [0, 1] has its minimum at 0 or 1, which is why θ
can converge to a deterministic network at all.

The prior is where the complexity model enters. γ is set per variable so that its log-odds
price ``λ`` is the variable's *marginal expected cost*, ``λ_i = ∂ penalty/∂θ_i`` with the
penalty ``ν·[(1-α)·C(θ_units, θ̄_layers) + α·C(θ̄_units, θ_layers)]`` of :mod:`.complexity`
(``C`` the β-weighted FLOPs/params fraction): the per-layer regularisation derived from the
expected FLOPs and parameters through ν, α and β. It is recomputed at every step (a unit's
marginal cost falls as its neighbours go), and held constant within the step (the prior
depends on the structure, it is not differentiated through).

What this module does not take from the paper: the Gaussian scale-mixture prior on the
weights (plain weight decay stands in for it), and the closed-form hyperprior (its effect, the
cancelled entropy, is what is implemented and tested).
"""

# ruff: noqa: RUF002  (Greek letters: the paper's notation for nu, alpha, beta, gamma)

from __future__ import annotations

from collections.abc import Mapping

import torch

from .complexity import ComplexityModel, Cost, penalty
from .params import DiscoveryParams

EPS = 1e-12


def entropy(theta: torch.Tensor) -> torch.Tensor:
    """H(θ) of Bernoulli(θ), elementwise, 0 at θ ∈ {0, 1}."""
    t = theta.clamp(EPS, 1.0 - EPS)
    return -(t * t.log() + (1.0 - t) * (1.0 - t).log())


def kl_bernoulli(theta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(θ) ‖ Bernoulli(γ)), elementwise."""
    t = theta.clamp(EPS, 1.0 - EPS)
    g = gamma.clamp(EPS, 1.0 - EPS)
    return t * (t / g).log() + (1.0 - t) * ((1.0 - t) / (1.0 - g)).log()


def prior_from_price(price: torch.Tensor) -> torch.Tensor:
    """γ with log-odds price ``λ = log((1-γ)/γ)``: γ = sigmoid(-λ)."""
    return torch.sigmoid(-price)


def flattened_kl(theta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """KL(θ‖γ) plus the flattening hyperprior's ``H(θ)``: ``θ·λ - log(1-γ)``, summed.

    Written out rather than as ``kl + entropy`` so its gradient in θ is exactly ``λ``
    (no round-off from two logarithms cancelling near θ = 0 or 1).
    """
    g = gamma.clamp(EPS, 1.0 - EPS)
    price = (1.0 - g).log() - g.log()
    return (theta * price - (1.0 - g).log()).sum()


def prices(model: ComplexityModel, full: Cost, units: Mapping[str, torch.Tensor],
           layers: Mapping[str, torch.Tensor], params: DiscoveryParams
           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """λ per unit (one per channel of each slot) and per layer: the marginal expected cost."""
    u = {k: v.detach().clone().requires_grad_(True) for k, v in units.items()}
    g = {k: v.detach().clone().requires_grad_(True) for k, v in layers.items()}
    with torch.enable_grad():
        total = penalty(model, full, u, g, params)
        if total.requires_grad:  # not when every priced variable is gone
            total.backward()  # type: ignore[no-untyped-call]
    zero = torch.tensor(0.0)
    return ({k: (v.grad if v.grad is not None else torch.zeros_like(v)).float()
             for k, v in u.items()},
            {k: (v.grad if v.grad is not None else zero).float() for k, v in g.items()})


def gate_objective(model: ComplexityModel, full: Cost, units: Mapping[str, torch.Tensor],
                   layers: Mapping[str, torch.Tensor], params: DiscoveryParams
                   ) -> torch.Tensor:
    """Σ over gate variables of the flattened KL to the cost-derived prior (see above).

    Its gradient in each θ is that variable's price λ, so the loss ``cross-entropy +
    gate_objective`` moves θ down exactly when the data gradient is weaker than λ.
    """
    unit_price, layer_price = prices(model, full, units, layers, params)
    total = torch.tensor(0.0)
    for slot, theta in units.items():
        total = total + flattened_kl(theta.float(), prior_from_price(unit_price[slot]))
    for block, theta in layers.items():
        total = total + flattened_kl(theta.float(), prior_from_price(layer_price[block]))
    return total
