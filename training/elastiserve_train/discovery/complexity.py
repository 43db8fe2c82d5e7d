"""The expected-complexity model: a network's expected MACs and parameters as a function of θ.

Each unit (channel of a slot) and each skippable residual layer carries a Bernoulli scale
variable ``z ~ Bernoulli(θ)``, all independent. Every layer's cost is a product of counts:

* conv: ``MACs = H_out·W_out·k_h·k_w·n_in·n_out·g``, ``params = k_h·k_w·n_in·n_out·g``
* batch norm: ``params = 2·n·g`` (affine weight and bias; running statistics are buffers)
* linear: ``MACs = n_in·n_out·g``, ``params = n_in·n_out·g + n_out·g`` (bias)

where ``n`` is the number of active units of the slot on that side (a fixed count for the input
image and the classes), and ``g`` the layer variable of the residual block the layer lives in
(1 outside skippable blocks). Because the input and output slots of a layer are different slots
and the variables are independent, the expectation of each product is the product of the
expectations: ``E[n] = Σ θ`` over the slot's units and ``E[g] = θ_layer``. The expected cost is
therefore exact and multilinear in θ, and at θ ∈ {0, 1} it *is* the cost of the network that
keeps the units and layers with θ = 1: that is what lets the discovered network's measured
MACs/params be checked against the prediction (they must agree exactly).

Regularisation weights. The normalised cost is ``C(θ) = β·MACs/MACs_full + (1-β)·params/
params_full`` and the penalty added to the loss is ``ν·[(1-α)·C(θ_units, θ̄_layers) +
α·C(θ̄_units, θ_layers)]`` (θ̄: held constant, i.e. no gradient through that argument). The
weight that pulls on one unit's θ is its *marginal expected cost* ``ν(1-α)·∂C/∂θ_unit``: the
layer-wise regularisation weight of the paper, here derived from the expected-complexity model
(and recomputed every step, since a unit's marginal cost shrinks as its neighbours are pruned).
"""

# ruff: noqa: RUF002  (Greek letters: the paper's notation for nu, alpha, beta)

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from elastiserve_store.architectures import Block
from elastiserve_store.slots import slot_tag

from .params import DiscoveryParams


@dataclass(frozen=True)
class Term:
    """One costed layer: which slots size it, its fixed sizes, kernel, resolution and block."""

    name: str
    kind: str  # "conv", "bn" or "linear"
    in_slot: str | None
    out_slot: str | None
    in_fixed: int
    out_fixed: int
    kernel: int
    spatial: int
    bias: bool
    block: str | None


@dataclass(frozen=True)
class Cost:
    """Expected MACs and parameters (tensors, so the penalty can be differentiated)."""

    macs: torch.Tensor
    params: torch.Tensor


DTYPE = torch.float64
"""Costs are summed in double precision: MAC counts pass float32's exact-integer range (2^24)."""


def _count(slot: str | None, fixed: int, units: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if slot is None:
        return torch.tensor(float(fixed), dtype=DTYPE)
    return units[slot].to(DTYPE).sum()


@dataclass(frozen=True)
class ComplexityModel:
    """The costed layers of one network structure (see the module docstring)."""

    terms: tuple[Term, ...]

    @classmethod
    def of(cls, model: nn.Module, input_shape: Sequence[int], blocks: Sequence[Block] = ()
           ) -> ComplexityModel:
        """Read the terms off a model built by ``architectures.build`` (one meta forward pass
        for the resolutions)."""
        spatial: dict[str, int] = {}
        handles = []
        names = {id(m): n for n, m in model.named_modules()}

        def hook(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
            spatial[names[id(mod)]] = int(out.shape[-1] * out.shape[-2])

        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(hook))
        param = next(model.parameters())
        was_training = model.training
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, *input_shape, device=param.device,
                                         dtype=param.dtype))
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        gated = {b.prefix: b.name for b in blocks if b.skippable}
        terms = []
        for name, module in model.named_modules():
            info = slot_tag(module)
            if info is None:
                continue
            block = next((b for p, b in gated.items() if name.startswith(p)), None)
            if isinstance(module, nn.Conv2d):
                if module.groups != 1 or (info.in_slot is not None
                                          and info.in_slot == info.out_slot):
                    raise ValueError(f"{name}: grouped/depthwise convs are not modelled")
                kh, kw = module.kernel_size
                terms.append(Term(name, "conv", info.in_slot, info.out_slot,
                                  module.in_channels, module.out_channels, kh * kw,
                                  spatial[name], module.bias is not None, block))
            elif isinstance(module, nn.BatchNorm2d):
                terms.append(Term(name, "bn", info.out_slot, info.out_slot,
                                  module.num_features, module.num_features, 1, 1,
                                  module.affine, block))
            elif isinstance(module, nn.Linear):
                terms.append(Term(name, "linear", info.in_slot, info.out_slot,
                                  module.in_features, module.out_features, 1, 1,
                                  module.bias is not None, block))
        return cls(tuple(terms))

    @property
    def slots(self) -> set[str]:
        return {s for t in self.terms for s in (t.in_slot, t.out_slot) if s is not None}

    @property
    def gated_blocks(self) -> set[str]:
        return {t.block for t in self.terms if t.block is not None}

    def expected(self, units: Mapping[str, torch.Tensor], layers: Mapping[str, torch.Tensor]
                 ) -> Cost:
        """Expected cost for unit variables ``units[slot]`` (one θ per channel) and layer
        variables ``layers[block]`` (a scalar θ per gated block)."""
        macs = torch.tensor(0.0, dtype=DTYPE)
        params = torch.tensor(0.0, dtype=DTYPE)
        for t in self.terms:
            g = layers[t.block].to(DTYPE) if t.block is not None else torch.tensor(1.0, dtype=DTYPE)
            n_out = _count(t.out_slot, t.out_fixed, units)
            if t.kind == "bn":
                params = params + 2.0 * n_out * g if t.bias else params
                continue
            n_in = _count(t.in_slot, t.in_fixed, units)
            weights = t.kernel * n_in * n_out
            macs = macs + t.spatial * weights * g
            params = params + (weights + (n_out if t.bias else 0.0)) * g
        return Cost(macs, params)

    def at_full(self) -> Cost:
        """Cost with every unit and layer kept (θ = 1): the model's own size."""
        units = {}
        for t in self.terms:
            if t.in_slot is not None:
                units[t.in_slot] = torch.ones(t.in_fixed)
            if t.out_slot is not None:
                units[t.out_slot] = torch.ones(t.out_fixed)
        return self.expected(units, {b: torch.tensor(1.0) for b in self.gated_blocks})


def normalised_cost(cost: Cost, full: Cost, beta: float) -> torch.Tensor:
    """β·MACs/MACs_full + (1-β)·params/params_full."""
    return beta * cost.macs / full.macs + (1.0 - beta) * cost.params / full.params


def penalty(model: ComplexityModel, full: Cost, units: Mapping[str, torch.Tensor],
            layers: Mapping[str, torch.Tensor], params: DiscoveryParams) -> torch.Tensor:
    """ν·[(1-α)·C(θ_units, θ̄_layers) + α·C(θ̄_units, θ_layers)] (see the module docstring)."""
    still_layers = {k: v.detach() for k, v in layers.items()}
    still_units = {k: v.detach() for k, v in units.items()}
    total = torch.tensor(0.0, dtype=DTYPE)
    if params.alpha < 1.0:
        total = total + (1.0 - params.alpha) * normalised_cost(
            model.expected(units, still_layers), full, params.beta)
    if params.alpha > 0.0:
        total = total + params.alpha * normalised_cost(
            model.expected(still_units, layers), full, params.beta)
    return params.nu * total


def regularisation_weights(model: ComplexityModel, full: Cost,
                           units: Mapping[str, torch.Tensor], layers: Mapping[str, torch.Tensor],
                           params: DiscoveryParams) -> dict[str, float]:
    """The pull on each variable's θ: mean ∂penalty/∂θ per unit slot and per layer.

    This is the per-layer regularisation weight the complexity model assigns for ν, α, β at
    the given θ (reported, and what the training step applies through autograd).
    """
    u = {k: v.detach().clone().requires_grad_(True) for k, v in units.items()}
    g = {k: v.detach().clone().requires_grad_(True) for k, v in layers.items()}
    penalty(model, full, u, g, params).backward()  # type: ignore[no-untyped-call]
    out = {}
    for k, v in u.items():
        out[f"units:{k}"] = float(v.grad.mean()) if v.grad is not None else 0.0
    for k, v in g.items():
        out[f"layer:{k}"] = float(v.grad) if v.grad is not None else 0.0
    return out
