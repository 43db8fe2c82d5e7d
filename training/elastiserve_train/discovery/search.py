"""Structure discovery: train a ResNet from scratch with Bernoulli gates and the complexity
penalty, removing units and layers during training.

The loss per step is ``cross-entropy + penalty`` (:func:`.complexity.penalty`). The weights take
SGD with Nesterov momentum and a cosine schedule. θ takes plain SGD at a constant rate, so a
variable drifts down exactly when its data gradient is weaker than its price ν·∂C/∂θ, and ν
acts in proportion. Two choices make that work on a network trained from scratch:

* units and layers have their own step size (``theta_lr``, ``layer_theta_lr``): a residual
  layer's marginal cost is tens of times one channel's, so one step size either collapses the
  layers before the network has learnt anything or never moves the channels;
* θ is frozen for the first ``theta_warmup`` of the steps: at initialisation the data gradient
  on a gate is noise, and the penalty alone would decide.

(An adaptive optimiser such as Adam was tried and rejected: it moves a θ that only the penalty
touches at full speed whatever ν is, pruning the untrained network at once.) After each step θ
is projected to [0, 1] and variables under θ_tol are removed (:mod:`.gates`).

A budget (``DiscoveryParams.budget``) turns ν into a controlled quantity: after the warm-up,
every step multiplies ν by ``exp(gain/steps · (min(C/budget, 2) - 1))`` with ``C`` the expected
normalised cost at the current θ, an integral controller in log space (a dual ascent on the
budget constraint). ν rises while the network is too expensive and falls back once it is
cheap enough, so the pruning strength needed for a budget need not be guessed. Once the kept
structure fits the budget θ stops moving, so removal (which is final) cannot run on past it:
the rest of the run trains the weights of what is kept. The controller steers the *expected*
cost (smooth in θ); the kept network counts every surviving variable as whole, so it sits
above the expected cost, and what the budget does not allow at the end is removed, the lowest
θ first (units of a block's hidden slot, never its last one; then whole skippable layers): the
result is never over budget. One step can remove several variables at once, so it can end a
little under. A budget below the cheapest network discovery can reach is refused before
training.

Removed structure is not only masked: every ``compact_every`` steps the network is rebuilt
without it (a compact dense model, skipped blocks as the identity), so training gets cheaper as
it prunes. The optimisers restart after a compaction (their momentum is dropped, a small cost
paid at most a few times per epoch). Every weight the compact model drops is first written back
into a full-width master copy (:class:`~elastiserve_train.nested.NestedState`) at its original
channel positions, which is what regrowing the wider levels starts from.
"""

# ruff: noqa: RUF001, RUF002  (Greek letters: the paper's notation for nu, alpha, beta)

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from elastiserve_store import architectures
from elastiserve_store.profile import count_macs, count_params
from elastiserve_store.slots import gather, tensor_slots

from ..data import Dataset
from ..loop import batches
from ..nested import NestedState
from ..schedules import cosine_lr
from .complexity import ComplexityModel, Cost, normalised_cost
from .gates import Gate, ResNetGates
from .params import DiscoveryParameterError, DiscoveryParams
from .variational import gate_objective

StepHook = Callable[[int, int, float], None]


@dataclass(frozen=True)
class SearchConfig:
    """Optimisation settings of the discovery run."""

    epochs: float = 10.0
    lr: float = 0.05
    theta_lr: float = 2.0
    """SGD step size of the unit (channel) variables."""
    layer_theta_lr: float = 0.2
    """SGD step size of the residual-layer variables."""
    theta_warmup: float = 0.2
    """Fraction of the steps before θ starts to move."""
    theta_init: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    compact_every: int = 0
    """Steps between compactions; 0: four times per epoch."""
    gate_streams: bool = False
    """Also gate the residual streams' channels (see :mod:`.gates`; off by default)."""
    budget_gain: float = 10.0
    """With a budget: how fast ν follows it (ν can move by e^gain over the run at full error)."""
    prune_patience: int = 3
    """Consecutive θ steps under θ_tol before a variable is removed (see :mod:`.gates`)."""
    theta_settle: float = 0.25
    """Fraction of the steps, at the end, in which θ takes sign steps (see the docstring)."""
    trend_decay: float = 0.9
    """Running-mean decay of each θ's gradient, the settling steps' direction."""
    seed: int = 0


@dataclass
class Discovered:
    """The discovered network and everything needed to grow and check it."""

    model: nn.Module
    """The compact network (plain: no gates), eval mode."""
    state: NestedState
    """Full-width master weights; ``kept[0]``/``skipped[0]``: the discovered structure."""
    theta: dict[str, list[float]]
    """Final θ per slot at full width, original channel order (removed: θ when removed)."""
    layer_theta: dict[str, float]
    predicted: dict[str, float]
    """Complexity model at the final keep/remove decisions (θ ∈ {0, 1})."""
    expected: dict[str, float]
    """Complexity model at the final θ themselves (the training objective's view)."""
    measured: dict[str, int]
    full: dict[str, int]
    history: list[dict[str, Any]] = field(default_factory=list)
    starved: tuple[str, ...] = ()
    """Removed blocks whose hidden units had all fallen under θ_tol (removed as a consequence,
    not by their own layer variable)."""
    nu_final: float = 0.0
    """ν at the end (the given ν unless a budget steered it)."""
    budget_removed: tuple[str, ...] = ()
    """What the final budget projection removed (``slot[index]`` units, block names)."""
    theta_interior: dict[str, float] = field(default_factory=dict)
    """Share of the gate variables with 0 < θ < 1 (neither removed nor certain):
    ``before_settle`` and ``end`` (after the last step, before the budget projection)."""

    @property
    def skipped(self) -> tuple[str, ...]:
        return self.state.skipped.get(0, ())

    def summary(self) -> dict[str, Any]:
        """Units and layers removed, cost reduction, prediction error: the sweep's columns."""
        widths = self.state.widths(0)
        full_widths = architectures.full_widths(self.state.arch, self.state.arch_args)
        live = [s for s in widths if s not in self.skipped]
        return {
            "layers_removed": len(self.skipped),
            "skipped_blocks": list(self.skipped),
            "layers_starved": list(self.starved),
            "units_removed": sum(full_widths[s] - widths[s] for s in live),
            "units_total": sum(full_widths[s] for s in live),
            "widths": widths,
            "macs_ratio": self.measured["macs"] / self.full["macs"],
            "params_ratio": self.measured["params"] / self.full["params"],
            "predicted": self.predicted,
            "expected": self.expected,
            "measured": self.measured,
            "prediction_exact": (round(self.predicted["macs"]) == self.measured["macs"]
                                 and round(self.predicted["params"]) == self.measured["params"]),
            "nu_final": self.nu_final,
            "budget_removed": list(self.budget_removed),
            "theta_interior": dict(self.theta_interior),
        }


def _as_dict(cost: Cost) -> dict[str, float]:
    return {"macs": float(cost.macs), "params": float(cost.params)}


class Search:
    """One discovery run; :meth:`run` trains and returns the :class:`Discovered` network."""

    def __init__(self, arch: str, arch_args: Mapping[str, Any], data: Dataset,
                 params: DiscoveryParams, cfg: SearchConfig) -> None:
        self.blocks = architectures.blocks(arch)
        if not self.blocks:
            raise ValueError(f"structure discovery needs residual layers; {arch} has none "
                             f"(use resnet20 or resnet56)")
        self.arch, self.arch_args = arch, dict(arch_args)
        self.data, self.params, self.cfg = data, params, cfg
        self.mean, self.std = torch.tensor(data.mean), torch.tensor(data.std)
        self.shape = data.input_shape
        torch.manual_seed(cfg.seed)
        model = architectures.build(arch, arch_args)
        self.master = NestedState.from_model(arch, arch_args, model)
        self.full_cm = ComplexityModel.of(model, self.shape, self.blocks)
        self.full_cost = self.full_cm.at_full()
        full = architectures.full_widths(arch, arch_args)
        self.orig = {s: torch.arange(n) for s, n in full.items()}
        self.theta_full = {s: torch.full((n,), float("nan")) for s, n in full.items()}
        self.layer_theta: dict[str, float] = {}
        self.skipped: set[str] = set()
        units = {s: Gate.new(n, cfg.theta_init) for s, n in full.items()}
        layers = {b.name: Gate.new(1, cfg.theta_init) for b in self.blocks if b.skippable}
        self._install(model, units, layers)
        self.history: list[dict[str, Any]] = []
        self.theta_interior: dict[str, float] = {}
        self.nu = params.nu
        self.budget_removed: list[str] = []
        if params.budget is not None:
            cheapest = self.cheapest_cost()
            if params.budget < cheapest:
                raise DiscoveryParameterError(
                    f"budget {params.budget:g} is below the cheapest network discovery can "
                    f"reach from {arch}: {cheapest:.4f} of the full cost (every skippable "
                    f"block removed, one hidden channel left in each other block, the "
                    f"residual streams whole); raise the budget")

    def cheapest_cost(self) -> float:
        """Normalised cost of the smallest structure the search and projection can leave."""
        full = architectures.full_widths(self.arch, self.arch_args)
        units = {s: torch.ones(n, dtype=torch.float64) for s, n in full.items()}
        for block in self.blocks:
            units[block.name] = torch.zeros(full[block.name], dtype=torch.float64)
            units[block.name][0] = 1.0
        layers = {b.name: torch.tensor(0.0) for b in self.blocks if b.skippable}
        with torch.no_grad():
            return float(normalised_cost(self.full_cm.expected(units, layers), self.full_cost,
                                         self.params.beta))

    def hard_cost(self) -> float:
        """Normalised cost of the structure as it stands (alive variables at 1, removed at 0)."""
        units = {s: g.alive.to(torch.float64) for s, g in self.gates.units.items()}
        layers = {b: g.alive.to(torch.float64)[0] for b, g in self.gates.layers.items()}
        with torch.no_grad():
            return float(normalised_cost(self.cm.expected(units, layers), self.full_cost,
                                         self.params.beta))

    def _budget_met(self) -> bool:
        """Whether the kept structure already fits the budget: then θ stops moving (nothing
        more is removed) and the rest of the run trains the weights of what is kept."""
        return self.params.budget is not None and self.hard_cost() <= self.params.budget

    def _steer_nu(self, units: Mapping[str, torch.Tensor], layers: Mapping[str, torch.Tensor],
                  total: int) -> None:
        budget = self.params.budget
        assert budget is not None
        with torch.no_grad():
            cost = float(normalised_cost(self.cm.expected(units, layers), self.full_cost,
                                         self.params.beta))
        error = min(cost / budget, 2.0) - 1.0
        self.nu *= math.exp(self.cfg.budget_gain / total * error)
        self.nu = min(max(self.nu, self.params.nu * 1e-3), self.params.nu * 1e3)

    @torch.no_grad()
    def meet_budget(self) -> None:
        """Remove what the budget does not allow, lowest θ first (see the module docstring)."""
        budget = self.params.budget
        if budget is None:
            return
        removed: list[str] = []
        while self.hard_cost() > budget + 1e-12:
            best: tuple[float, str, int] | None = None
            for block in self.blocks:
                gate = self.gates.units.get(block.name)
                if block.name in self.skipped or gate is None or int(gate.alive.sum()) <= 1:
                    continue
                layer = self.gates.layers.get(block.name)
                if layer is not None and not bool(layer.alive.all()):
                    continue
                theta = torch.where(gate.alive, gate.theta, torch.tensor(math.inf))
                index = int(theta.argmin())
                if best is None or float(theta[index]) < best[0]:
                    best = (float(theta[index]), block.name, index)
            if best is not None:
                _, slot, index = best
                gate = self.gates.units[slot]
                gate.alive[index] = False
                gate.theta[index] = 0.0
                removed.append(f"{slot}[{int(self.orig[slot][index])}]")
                continue
            layers = [(float(g.theta[0]), b) for b, g in self.gates.layers.items()
                      if bool(g.alive.all())]
            if not layers:  # unreachable: the budget was checked against the cheapest network
                raise DiscoveryParameterError(f"budget {budget:g} cannot be met")
            _, name = min(layers)
            self.gates.layers[name].alive[0] = False
            self.gates.layers[name].theta[0] = 0.0
            removed.append(name)
        if removed:
            self.budget_removed.extend(removed)
            self.compact()

    def _install(self, model: nn.Module, units: dict[str, Gate], layers: dict[str, Gate]
                 ) -> None:
        self.model = model
        self.gates = ResNetGates.attach(model, self.blocks, units, layers,
                                        streams=self.cfg.gate_streams)
        self.cm = ComplexityModel.of(model, self.shape, self.blocks)
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        self.opt_w = torch.optim.SGD(
            [{"params": decay, "weight_decay": self.cfg.weight_decay},
             {"params": rest, "weight_decay": 0.0}],
            lr=self.cfg.lr, momentum=self.cfg.momentum, nesterov=True)
        hidden = {b.name for b in self.blocks}
        groups = [{"params": [g.theta for s, g in self.gates.units.items()
                              if s in hidden or self.cfg.gate_streams],
                   "lr": self.cfg.theta_lr},
                  {"params": [g.theta for g in self.gates.layers.values()],
                   "lr": self.cfg.layer_theta_lr}]
        self.opt_t = torch.optim.SGD([g for g in groups if g["params"]],
                                     lr=self.cfg.theta_lr)

    def _gated(self) -> list[Gate]:
        """The gates whose θ is optimised (hidden units, streams if gated, layers)."""
        hidden = {b.name for b in self.blocks}
        return [g for s, g in self.gates.units.items()
                if s in hidden or self.cfg.gate_streams] + list(self.gates.layers.values())

    @torch.no_grad()
    def interior_share(self) -> float:
        """Share of all gate variables (removed ones count, at θ = 0) with 0 < θ < 1."""
        hidden = {b.name for b in self.blocks}
        full = architectures.full_widths(self.arch, self.arch_args)
        total = int(sum(n for s, n in full.items() if s in hidden or self.cfg.gate_streams))
        total += sum(1 for b in self.blocks if b.skippable)
        inside = sum(int(((g.theta > 0.0) & (g.theta < 1.0) & g.alive).sum())
                     for g in self._gated())
        return inside / max(total, 1)

    @torch.no_grad()
    def _track_trend(self) -> None:
        for gate in self._gated():
            if gate.theta.grad is not None:
                d = self.cfg.trend_decay
                gate.trend.mul_(d).add_(gate.theta.grad, alpha=1.0 - d)
                gate.trend_sq.mul_(d).add_(gate.theta.grad.square(), alpha=1.0 - d)

    @torch.no_grad()
    def _settle_step(self, size: float, remaining: int) -> None:
        """One step of θ towards the vertex of [0, 1] its objective prefers, ``remaining``
        settling steps (this one included) before the end.

        Where the running mean of θ's gradient is significant (over twice its standard
        error over the running mean's ~(1+d)/(1-d) samples) the step goes against it: the
        flattened objective is linear, so that sign names the better vertex. Where it is not,
        θ keeps its leaning (towards 1 from 0.5 up, else towards 0): a sign taken from noise
        would prune units nothing prices (α = 1) or keep ones the price removes.

        The step is ``size``, or the distance to that vertex over the steps left when that is
        longer: a θ whose evidence changes sides late still lands on a vertex at the last step
        (with fixed steps 11 % of the gates were still inside (0, 1) at the end of the ν sweep).
        """
        d = self.cfg.trend_decay
        samples = (1.0 + d) / (1.0 - d)
        for gate in self._gated():
            noise = (gate.trend_sq - gate.trend.square()).clamp(min=0.0).div(samples).sqrt()
            significant = gate.trend.abs() > 2.0 * noise
            leaning = torch.where(gate.theta >= 0.5, -1.0, 1.0)
            direction = torch.where(significant, torch.sign(gate.trend), leaning)
            distance = torch.where(direction > 0, gate.theta, 1.0 - gate.theta).clamp(min=0.0)
            step = torch.maximum(torch.full_like(distance, size), distance / max(1, remaining))
            gate.theta.sub_(step * direction * gate.alive)

    def _record_theta(self) -> None:
        for s, gate in self.gates.units.items():
            self.theta_full[s][self.orig[s]] = gate.theta.detach()
        for b, gate in self.gates.layers.items():
            self.layer_theta[b] = float(gate.theta.detach()[0])

    @torch.no_grad()
    def compact(self) -> None:
        """Rebuild the network without removed units and layers (weights carried over)."""
        self._record_theta()
        self.master.absorb(self.model, self.orig)
        local = {s: torch.nonzero(g.alive).flatten() for s, g in self.gates.units.items()}
        dead = {b for b, g in self.gates.layers.items() if not bool(g.alive.any())}
        self.skipped |= dead
        self.orig = {s: self.orig[s][local[s]] for s in local}
        widths = {s: len(v) for s, v in self.orig.items()}
        old = self.model.state_dict()
        layout = tensor_slots(self.model)
        self.gates.detach()
        model = architectures.build(self.arch, self.arch_args, widths, self.skipped)
        model.load_state_dict({n: gather(old[n], layout[n].axes, local).clone()
                               for n in model.state_dict()})
        units = {s: g.select(local[s]) for s, g in self.gates.units.items()}
        layers = {b: g for b, g in self.gates.layers.items() if b not in dead}
        self._install(model, units, layers)

    def _snapshot(self, step: int, ce: float) -> None:
        units, layers = self.gates.effective()
        with torch.no_grad():
            cost = normalised_cost(self.cm.expected(units, layers), self.full_cost,
                                   self.params.beta)
        self.history.append({
            "step": step, "ce": round(ce, 4), "expected_cost": round(float(cost), 4),
            "units_alive": int(sum(int(g.alive.sum()) for s, g in self.gates.units.items()
                                   if s not in self.skipped)),
            "layers_alive": int(sum(int(g.alive.sum()) for g in self.gates.layers.values())),
            "nu": round(self.nu, 4),
        })

    def run(self, on_step: StepHook | None = None) -> Discovered:
        cfg = self.cfg
        per_epoch = max(1, math.ceil(len(self.data.train.labels) / cfg.batch_size))
        total = max(1, int(per_epoch * cfg.epochs))
        every = cfg.compact_every or max(1, per_epoch // 4)
        warmup = int(total * cfg.theta_warmup)
        settle_from = max(warmup, total - int(total * cfg.theta_settle))
        settle_size = 2.0 / max(1, total - settle_from)
        step, epoch, pending, ce_avg = 0, 0, False, 0.0
        while step < total:
            self.model.train()
            for x, y in batches(self.data.train, self.mean, self.std, cfg.batch_size,
                                cfg.seed + 1000 * epoch, train=True, shard=False):
                if step >= total:
                    break
                for group in self.opt_w.param_groups:
                    group["lr"] = cosine_lr(cfg.lr, step, total)
                ce = F.cross_entropy(self.model(x), y)
                units, layers = self.gates.effective()
                if self.params.budget is not None and step >= warmup:
                    self._steer_nu(units, layers, total - warmup)
                priced = self.params if self.nu == self.params.nu else replace(
                    self.params, nu=self.nu)
                loss = ce + gate_objective(self.cm, self.full_cost, units, layers, priced)
                self.opt_w.zero_grad(set_to_none=True)
                self.opt_t.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                self.opt_w.step()
                if step == settle_from:
                    self.theta_interior["before_settle"] = self.interior_share()
                if step >= warmup and not self._budget_met():
                    self._track_trend()
                    if step < settle_from:
                        self.opt_t.step()
                    else:
                        self._settle_step(settle_size, total - step)
                    pending |= self.gates.remove_below(self.params.theta_tol,
                                                       patience=cfg.prune_patience)
                step += 1
                ce_now = float(ce.detach())
                ce_avg = 0.9 * ce_avg + 0.1 * ce_now if step > 1 else ce_now
                if step % every == 0 or step == total:
                    self._snapshot(step, ce_avg)
                    if pending:
                        self.compact()
                        self.model.train()
                        pending = False
                if on_step is not None:
                    on_step(step, total, float(loss.detach()))
            epoch += 1
        if settle_from < total and not self._budget_met():
            # Settled: a variable the last step took to θ = 0 is removed now, not after the
            # pruning condition's patience, which the run has no steps left to count.
            self.gates.remove_below(self.params.theta_tol, patience=1)
        self.theta_interior["end"] = self.interior_share()
        self.compact()
        self.meet_budget()
        return self._result()

    def _result(self) -> Discovered:
        self.gates.detach()
        model = self.model.eval()
        self.master.kept = [dict(self.orig)]
        self.master.skipped = {0: tuple(b.name for b in self.blocks if b.name in self.skipped)}
        self.master.level_own = {0: {n: t.detach().clone() for n, t in model.state_dict().items()
                                     if tensor_slots(model)[n].per_level}}
        full = architectures.full_widths(self.arch, self.arch_args)
        hard_units = {s: torch.zeros(n, dtype=torch.float64).index_fill_(0, self.orig[s], 1.0)
                      for s, n in full.items()}
        hard_layers = {b.name: torch.tensor(0.0 if b.name in self.skipped else 1.0)
                       for b in self.blocks if b.skippable}
        soft_units = {s: torch.nan_to_num(t, nan=0.0) for s, t in self.theta_full.items()}
        soft_layers = {b: torch.tensor(0.0 if b in self.skipped else v)
                       for b, v in self.layer_theta.items()}
        for b in hard_layers:
            soft_layers.setdefault(b, torch.tensor(1.0))
        with torch.no_grad():
            predicted = _as_dict(self.full_cm.expected(hard_units, hard_layers))
            expected = _as_dict(self.full_cm.expected(soft_units, soft_layers))
        return Discovered(
            model=model, state=self.master,
            theta={s: [round(float(v), 4) for v in t] for s, t in self.theta_full.items()},
            layer_theta=dict(self.layer_theta), predicted=predicted, expected=expected,
            measured={"macs": count_macs(model, self.shape), "params": count_params(model)},
            full={"macs": round(float(self.full_cost.macs)),
                  "params": round(float(self.full_cost.params))},
            history=self.history,
            starved=tuple(b for b in self.master.skipped[0]
                          if float(torch.nan_to_num(self.theta_full[b], nan=0.0).max())
                          < self.params.theta_tol
                          and b not in self.budget_removed),
            nu_final=self.nu, budget_removed=tuple(self.budget_removed),
            theta_interior=dict(self.theta_interior))


def discover(arch: str, arch_args: Mapping[str, Any], data: Dataset, params: DiscoveryParams,
             cfg: SearchConfig, on_step: StepHook | None = None) -> Discovered:
    """Train ``arch`` from scratch with structure discovery; see the module docstring."""
    return Search(arch, arch_args, data, params, cfg).run(on_step)
