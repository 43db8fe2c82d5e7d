"""Variational Bernoulli scale variables on units and residual layers, and their dynamics.

Each gated quantity (one channel of a slot, or one skippable residual block) is multiplied by
``z ~ Bernoulli(θ)``. Training samples ``z`` per example (like dropout, which keeps the
gradient's variance low) and differentiates through the sample with the straight-through
estimator ``z = b + θ - sg(θ)``: the forward pass is a real sampled sub-network, the backward
pass gives ``∂L/∂θ = E[∂L/∂z]`` up to the estimator's bias. θ lives in [0, 1] by projection
after each step (not through a sigmoid), so θ can reach exactly 0 and 1 and "θ under θ_tol"
is a statement about θ itself. A variable below θ_tol is *removed*: its θ is set to 0 and it is
never sampled again (``alive`` false); the structure is then physically compacted by the
trainer. In evaluation mode the gates are deterministic: 1 for every variable still alive.

Where the gates sit in a CIFAR ResNet (so that a removed variable really is removable):

* a block's hidden channel: after ``bn1`` (its ReLU passes zeros);
* a block's residual branch (layer variable): after ``bn2``, so ``relu(z·branch + x) = x``
  when ``z = 0`` (``x`` is already a ReLU output);
* a stream channel (the residual path of a stage): after the stem's ``bn1`` and on the output
  of every block writing to that stream, so a removed channel is zero everywhere it is read.

Stream gates are optional (``streams``, off by default): a stream channel is shared by every
block of its stage, so its price is many times a hidden channel's, and in our Fashion-MNIST runs
gating it let the streams of stages 1 and 2 collapse to a single channel (ResNet-20, alpha
= 0: accuracy 0.35 before fine-tuning at nu = 1; at chance at nu = 3 with an earlier version
that drew a stream gate anew at each place) before the data gradient could defend them.
Without stream gates the units are the blocks' hidden channels (the filters of each block's
first conv), as in most ResNet channel pruning.

One variable is one random draw: a stream channel's ``z`` is sampled once per forward pass and
the same sample scales it at every place it is gated (independent draws per place would model
a different, noisier network than the one whose cost is priced).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from elastiserve_store.architectures import BasicBlock, Block, CifarResNet
from elastiserve_store.slots import slot_tag


def sample(theta: torch.Tensor, alive: torch.Tensor, shape: tuple[int, ...], training: bool
           ) -> torch.Tensor:
    """The scale variables for one batch, broadcastable to ``shape`` (N, C, ...).

    ``theta``/``alive`` hold one entry per gated variable (channels, or a single layer).
    """
    view = (1, -1) + (1,) * (len(shape) - 2) if theta.numel() > 1 else (1,) * len(shape)
    if not training:
        return alive.to(theta.dtype).view(view)
    eff = theta * alive
    draw_shape = (shape[0], *eff.view(view).shape[1:])
    b = torch.bernoulli(eff.detach().view(view).expand(draw_shape))
    return b + (eff - eff.detach()).view(view)


@dataclass
class Gate:
    """θ (a leaf tensor, optimised), the ``alive`` mask of one gated group, how many
    consecutive θ steps each variable has spent under θ_tol (``under``, the pruning
    condition's patience) and the running mean of its θ gradient (``trend``, the settling
    phase's direction; see :mod:`.search`)."""

    theta: torch.Tensor
    alive: torch.Tensor
    under: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    trend: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    trend_sq: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    """Running mean of the squared gradient: with ``trend``, the gradient's noise."""

    def __post_init__(self) -> None:
        n = self.theta.numel()
        if self.under.numel() != n:
            self.under = torch.zeros(n, dtype=torch.long)
        if self.trend.numel() != n:
            self.trend = torch.zeros(n)
        if self.trend_sq.numel() != n:
            self.trend_sq = torch.zeros(n)

    @classmethod
    def new(cls, n: int, init: float) -> Gate:
        return cls(torch.full((n,), float(init), requires_grad=True),
                   torch.ones(n, dtype=torch.bool))

    def select(self, index: torch.Tensor) -> Gate:
        """The variables at ``index`` (after a compaction), with their counters."""
        return Gate(self.theta.detach()[index].clone().requires_grad_(True),
                    self.alive[index].clone(), self.under[index].clone(),
                    self.trend[index].clone(), self.trend_sq[index].clone())

    def effective(self) -> torch.Tensor:
        """θ with removed variables at exactly 0 (what the complexity model prices)."""
        return self.theta * self.alive


@torch.no_grad()
def project_and_remove(gate: Gate, tol: float, *, keep_one: bool, patience: int = 1) -> bool:
    """Clamp θ to [0, 1], remove variables under ``tol``; True if one was removed now.

    The pruning condition: a variable is removed once θ has been under ``tol`` for
    ``patience`` consecutive θ steps, not at the first noisy step that takes it there (θ
    at 0 still receives the data gradient through the straight-through sample, so a unit the
    loss needs can climb back). With ``keep_one`` the variable with the largest θ survives
    even under ``tol`` (a slot needs at least one channel for the network to exist at all).
    """
    gate.theta.clamp_(0.0, 1.0)
    low = (gate.theta < tol) & gate.alive
    gate.under = torch.where(low, gate.under + 1, torch.zeros_like(gate.under))
    below = low & (gate.under >= patience)
    if keep_one and bool(below.any()) and not bool((gate.alive & ~below).any()):
        best = int(torch.where(gate.alive, gate.theta, torch.tensor(-1.0)).argmax())
        below[best] = False
    gate.alive &= ~below
    gate.theta[~gate.alive] = 0.0
    return bool(below.any())


@dataclass
class ResNetGates:
    """All gates of one (possibly already compacted) CIFAR ResNet, installed as hooks."""

    units: dict[str, Gate]
    layers: dict[str, Gate]
    _handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list)
    _draws: dict[int, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def attach(cls, model: nn.Module, blocks: tuple[Block, ...], units: dict[str, Gate],
               layers: dict[str, Gate], *, streams: bool = False) -> ResNetGates:
        """Hook ``units``/``layers`` into ``model`` (see the module docstring for where);
        without ``streams`` the stream slots' gates stay out of the network (θ stays 1)."""
        if not isinstance(model, CifarResNet):
            raise ValueError("structure discovery supports the CIFAR ResNets (resnet20/56)")
        gates = cls(units, layers)
        gates._handles.append(model.register_forward_pre_hook(
            lambda _mod, _inp: gates._draws.clear()))
        if streams:
            gates._hook(model.bn1, units["s1"])
        for block, module in zip(blocks, model.layers, strict=True):
            if not isinstance(module, BasicBlock):
                continue  # skipped: identity, nothing to gate
            out = slot_tag(module.conv2)
            assert out is not None and out.out_slot is not None
            gates._hook(module.bn1, units[block.name])
            if block.skippable:
                gates._hook(module.bn2, layers[block.name])
            if streams:
                gates._hook(module, units[out.out_slot])
        return gates

    def _hook(self, module: nn.Module, gate: Gate) -> None:
        def scale(mod: nn.Module, _inp: object, out: torch.Tensor) -> torch.Tensor:
            z = self._draws.get(id(gate))
            if z is None or z.shape[0] != out.shape[0]:
                z = sample(gate.theta, gate.alive, tuple(out.shape), mod.training)
                self._draws[id(gate)] = z
            return out * z

        self._handles.append(module.register_forward_hook(scale))

    def detach(self) -> None:
        """Remove the hooks (the model is then the plain deterministic network)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def thetas(self) -> Iterator[torch.Tensor]:
        for gate in (*self.units.values(), *self.layers.values()):
            yield gate.theta

    def effective(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """θ per unit slot and per layer with removed variables at 0."""
        return ({s: g.effective() for s, g in self.units.items()},
                {b: g.effective()[0] for b, g in self.layers.items()})

    def remove_below(self, tol: float, on_layer_removed: Callable[[str], None] | None = None,
                     patience: int = 1) -> bool:
        """Apply :func:`project_and_remove` everywhere; a block whose every hidden unit fell
        under ``tol`` loses its layer variable too (its branch computes nothing)."""
        changed = False
        for name, gate in self.layers.items():
            hidden = self.units.get(name)
            starved = hidden is not None and not bool(
                ((hidden.theta >= tol) & hidden.alive).any())
            if starved and bool(gate.alive.all()):
                with torch.no_grad():
                    gate.theta.zero_()
            if project_and_remove(gate, tol, keep_one=False,
                                  patience=1 if starved else patience):
                changed = True
                if on_layer_removed is not None:
                    on_layer_removed(name)
        for gate in self.units.values():
            changed |= project_and_remove(gate, tol, keep_one=True, patience=patience)
        return changed
