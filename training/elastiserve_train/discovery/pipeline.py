"""Discovery as resumable stages: discover -> core -> grow1 .. growN-1 -> export.

* **discover**: :func:`.search.discover` trains the ResNet from scratch with the Bernoulli
  gates; the discovered (compact, possibly shallower) network is level 0.
* **core**: fine-tune level 0 without gates (the gates' sampling noise is gone; units whose θ
  ended between θ_tol and 1 are now fully on).
* **grow k**: level k keeps level k-1's channels and blocks and adds back pruned ones (highest
  final θ first) up to widths *and depth* interpolated between the discovered and the full
  network: with L levels, level k runs back round(k/(L-1)) of the blocks discovery removed, so
  depth nests (a larger level skips a subset of what a smaller one skips) and the top level is
  the full architecture. It is trained with level k-1's weights frozen by gradient masks
  (:func:`~elastiserve_train.nested.core_masks`), except the blocks level k-1 skipped, which
  are new at level k and trained whole. Reinserted channels start from the weights they had
  when discovery removed them. With ``level_macs`` the fraction is instead the smallest one
  whose level reaches that MACs ratio (bisection over the fraction), so the levels can sit at
  the same budgets as another strategy's.
* **export**: the nested bundle (channels permuted so each level is a prefix) and
  ``report.json``.

Each stage checkpoints a :class:`~elastiserve_train.nested.NestedState` (safetensors + JSON)
and records itself in ``state.json``; a rerun skips what is done.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from elastiserve_store import InputSpec, Normalisation, architectures, load_bundle, write_bundle
from elastiserve_store.profile import count_macs, latency_ms

from .. import loop
from ..data import Dataset
from ..nested import NestedState, check_nested, core_masks
from ..progress import Progress
from ..report import level_size_bytes
from .params import DiscoveryParameterError, DiscoveryParams
from .search import SearchConfig, discover


@dataclass(frozen=True)
class DiscoveryConfig:
    """Everything that determines a discovery run's result."""

    arch: str = "resnet20"
    arch_args: dict[str, Any] = field(default_factory=dict)
    params: DiscoveryParams = field(default_factory=DiscoveryParams)
    search: SearchConfig = field(default_factory=SearchConfig)
    levels: int = 4
    level_macs: tuple[float, ...] = ()
    """MACs ratios of the grown levels between the discovered and the full one (optional)."""
    core_epochs: float = 1.0
    grow_epochs: float = 1.0
    lr: float = 0.05
    batch_size: int = 128
    seed: int = 0

    def train_cfg(self, epochs: float, salt: int) -> loop.TrainConfig:
        return loop.TrainConfig(epochs=epochs, lr=self.lr, batch_size=self.batch_size,
                                seed=self.seed * 7919 + salt)


def grown_kept(core: dict[str, torch.Tensor], theta: dict[str, list[float]],
               full: dict[str, int], fraction: float) -> dict[str, torch.Tensor]:
    """Channels of a level ``fraction`` of the way from the core to the full width, per slot:
    the core's plus the pruned channels with the highest final θ (ties: lower index first)."""
    out = {}
    for slot, kept in core.items():
        n = len(kept) + round((full[slot] - len(kept)) * fraction)
        chosen = torch.zeros(full[slot], dtype=torch.bool)
        chosen[kept] = True
        rest = [i for i in range(full[slot]) if not chosen[i]]
        rest.sort(key=lambda i: (-_finite(theta[slot][i]), i))
        extra = torch.tensor(rest[:n - len(kept)], dtype=torch.long)
        out[slot] = torch.sort(torch.cat([kept, extra])).values
    return out


def grown_skipped(skipped: tuple[str, ...], layer_theta: dict[str, float], fraction: float
                  ) -> tuple[str, ...]:
    """The blocks a level ``fraction`` of the way to full depth still skips: it runs back the
    removed blocks with the highest final θ first (ties: the earlier block first)."""
    order = sorted(skipped, key=lambda b: (-layer_theta.get(b, 0.0), skipped.index(b)))
    back = set(order[:round(len(skipped) * fraction)])
    return tuple(b for b in skipped if b not in back)


def check_level_macs(targets: tuple[float, ...], levels: int) -> None:
    """Refuse MACs targets that cannot describe the levels between discovered and full."""
    if not targets:
        return
    if len(targets) != levels - 2:
        raise DiscoveryParameterError(
            f"--level-macs needs one ratio per level between the discovered and the full "
            f"one: {levels - 2} for {levels} levels, got {len(targets)}")
    if any(not 0.0 < t < 1.0 for t in targets) or list(targets) != sorted(set(targets)):
        raise DiscoveryParameterError(
            f"--level-macs ratios must be increasing and in (0, 1), got "
            f"{', '.join(f'{t:g}' for t in targets)}")


def _finite(value: float) -> float:
    return value if value == value else 0.0  # NaN (never sampled) sorts last


class DiscoveryPipeline:
    """Runs the stages of one discovery job in ``out_dir``."""

    def __init__(self, cfg: DiscoveryConfig, data: Dataset, out_dir: Path,
                 progress: Progress | None = None) -> None:
        if cfg.levels < 1:
            raise ValueError(f"--levels must be >= 1, got {cfg.levels}")
        check_level_macs(cfg.level_macs, cfg.levels)
        self.cfg, self.data, self.out, self.progress = cfg, data, out_dir, progress
        self.mean, self.std = torch.tensor(data.mean), torch.tensor(data.std)
        self.state_path = out_dir / "state.json"
        self.state = self._load_state()

    def _load_state(self) -> dict[str, Any]:
        config = json.loads(json.dumps(asdict(self.cfg)))
        if self.state_path.is_file():
            state: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
            if state.get("config") != config:
                raise ValueError(f"{self.state_path}: existing run used a different "
                                 f"configuration; use a new --out directory")
            return state
        return {"config": config, "done": [], "metrics": {}, "seconds": {}}

    def _finish(self, stage: str, seconds: float, **metrics: Any) -> None:
        self.state["metrics"].update(metrics)
        self.state["seconds"][stage] = seconds
        self.state["done"].append(stage)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2), encoding="utf-8")
        tmp.replace(self.state_path)

    @property
    def stages(self) -> list[str]:
        return ["discover", "core", *[f"grow{k}" for k in range(1, self.cfg.levels)], "export"]

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def _on_step(self, stage: str) -> Callable[[int, int, float], None] | None:
        if self.progress is None:
            return None
        report = self.progress
        return lambda step, total, _loss: report(stage, step, total)

    def _acc(self, model: nn.Module) -> float:
        return loop.evaluate(model, self.data.test, self.mean, self.std)

    def run(self) -> dict[str, Any]:
        for stage in self.stages:
            if self.done(stage):
                continue
            start = time.perf_counter()
            metrics: dict[str, Any]
            if stage == "discover":
                metrics = self.discover()
            elif stage == "core":
                metrics = self.core()
            elif stage.startswith("grow"):
                metrics = self.grow(int(stage[4:]))
            else:
                metrics = self.export()
            self._finish(stage, time.perf_counter() - start, **metrics)
        return dict(self.state["metrics"])

    def discover(self) -> dict[str, Any]:
        cfg = self.cfg
        found = discover(cfg.arch, cfg.arch_args, self.data, cfg.params, cfg.search,
                         self._on_step("discover"))
        self.out.mkdir(parents=True, exist_ok=True)
        found.state.save(self.out / "discover")
        summary = found.summary()
        (self.out / "discovery.json").write_text(json.dumps({
            **summary, "full": found.full, "theta": found.theta,
            "layer_theta": found.layer_theta, "history": found.history,
        }, indent=2) + "\n", encoding="utf-8")
        return {"discovered": summary, "discovered_acc": self._acc(found.model),
                "full": found.full}

    def core(self) -> dict[str, Any]:
        state = NestedState.load(self.out / "discover")
        model = state.level_model(0)
        loop.train(model, self.data.train, self.mean, self.std,
                   self.cfg.train_cfg(self.cfg.core_epochs, 200), on_step=self._on_step("core"))
        state.absorb(model, state.kept[0], level=0)
        state.save(self.out / "core")
        return {"core_acc": self._acc(model)}

    def _theta(self) -> tuple[dict[str, list[float]], dict[str, float]]:
        data: dict[str, Any] = json.loads((self.out / "discovery.json").read_text("utf-8"))
        units = {s: [float("nan") if v is None else float(v) for v in t]
                 for s, t in data["theta"].items()}
        return units, {b: float(v) for b, v in data["layer_theta"].items()}

    def _level(self, state: NestedState, k: int, frac: float,
               theta: tuple[dict[str, list[float]], dict[str, float]]
               ) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
        """Level ``k``'s channels and skipped blocks ``frac`` of the way to the full network."""
        full = architectures.full_widths(self.cfg.arch, self.cfg.arch_args)
        unit_theta, layer_theta = theta
        kept = grown_kept(state.kept[0], unit_theta, full, frac)
        kept = {s: torch.unique(torch.cat([kept[s], state.kept[k - 1][s]])) for s in full}
        narrower = state.skipped.get(k - 1, ())  # depth nests too: skip no more than k - 1
        skipped = grown_skipped(state.skipped.get(0, ()), layer_theta, frac)
        return kept, tuple(b for b in skipped if b in narrower)

    def _macs(self, kept: dict[str, torch.Tensor], skipped: tuple[str, ...]) -> int:
        widths = {s: len(v) for s, v in kept.items()}
        model = architectures.build(self.cfg.arch, self.cfg.arch_args, widths, skipped)
        return int(count_macs(model, self.data.input_shape))

    def _fraction(self, state: NestedState, k: int,
                  theta: tuple[dict[str, list[float]], dict[str, float]]) -> float:
        """How far level ``k`` goes from the discovered network towards the full one."""
        even = k / (self.cfg.levels - 1)
        if not self.cfg.level_macs or k == self.cfg.levels - 1:
            return even
        target = self.cfg.level_macs[k - 1]
        full_macs = count_macs(architectures.build(self.cfg.arch, self.cfg.arch_args),
                               self.data.input_shape)
        below = self._macs(state.kept[k - 1], state.skipped.get(k - 1, ())) / full_macs
        if target <= below:
            print(f"discovery: level {k}'s MACs target {target:g} is not above level "
                  f"{k - 1}'s {below:.3f}; growing it {even:.2f} of the way instead",
                  file=sys.stderr)
            return even
        lo, hi = 0.0, 1.0  # MACs grow with the fraction: find the smallest that reaches it
        for _ in range(20):
            mid = (lo + hi) / 2
            if self._macs(*self._level(state, k, mid, theta)) >= target * full_macs:
                hi = mid
            else:
                lo = mid
        return hi

    def grow(self, k: int) -> dict[str, Any]:
        state = NestedState.load(self.out / ("core" if k == 1 else f"grow{k - 1}"))
        theta = self._theta()  # read once: the bisection below builds many candidates
        kept, skipped = self._level(state, k, self._fraction(state, k, theta), theta)
        state.kept = [*state.kept[:k], kept]
        state.skipped[k] = skipped
        check_nested(state.kept)
        model = state.level_model(k, own_from=k - 1)
        masks = core_masks(model, state.kept[k - 1], state.kept[k])
        for index, block in enumerate(architectures.blocks(self.cfg.arch)):
            if block.name in state.skipped.get(k - 1, ()):
                prefix = f"layers.{index}."
                masks = {n: (torch.ones_like(m) if n.startswith(prefix) else m)
                         for n, m in masks.items()}
        loop.train(model, self.data.train, self.mean, self.std,
                   self.cfg.train_cfg(self.cfg.grow_epochs, 300 + k), masks=masks,
                   on_step=self._on_step(f"grow{k}"))
        state.absorb(model, state.kept[k], level=k)
        state.save(self.out / f"grow{k}")
        return {f"grow{k}_acc": self._acc(model)}

    def export(self) -> dict[str, Any]:
        last = "core" if self.cfg.levels == 1 else f"grow{self.cfg.levels - 1}"
        state = NestedState.load(self.out / last)
        models = state.nested_models()
        shape = self.data.input_shape
        accs = [self._acc(m) for m in models]
        lat = [(latency_ms(m, shape, 1), latency_ms(m, shape, 32, repeats=3)) for m in models]
        full = architectures.full_widths(self.cfg.arch, self.cfg.arch_args)
        ratios = [sum(state.widths(k).values()) / sum(full.values())
                  for k in range(len(models))]
        write_bundle(
            self.out / "bundle", architecture=self.cfg.arch, arch_args=self.cfg.arch_args,
            models=models, names=[f"L{k}" for k in range(len(models))],
            channel_ratios=ratios, input_spec=InputSpec(*shape),
            normalisation=Normalisation(self.data.mean, self.data.std),
            class_names=self.data.class_names, accuracies=accs, latencies_ms=lat,
            training={"strategy": "discovery", **json.loads(json.dumps(asdict(self.cfg))),
                      "dataset": self.data.name})
        return {"level_acc": accs}

    def report(self) -> dict[str, Any]:
        """``report.json``: the contract shared by the three strategies, plus discovery's own
        numbers (removed units/layers, predicted vs measured cost of the discovered network)."""
        manifest = load_bundle(self.out / "bundle").manifest
        metrics = self.state["metrics"]
        full_macs = metrics["full"]["macs"]
        discovered = metrics["discovered"]
        report = {
            "strategy": "discovery",
            "architecture": manifest.architecture,
            "dataset": self.data.name,
            "train_seconds": sum(self.state["seconds"].get(s, 0.0) for s in self.stages
                                 if s != "export"),
            "params": asdict(self.cfg.params),
            "levels": [{
                "name": lv.name, "macs": lv.macs, "macs_ratio": lv.macs / full_macs,
                "params": lv.params, "size_bytes": level_size_bytes(manifest, lv),
                "accuracy": lv.accuracy, "skipped_blocks": list(lv.skipped_blocks),
                "latency_ms_b1": lv.latency_ms_b1,
            } for lv in manifest.levels],
            "predicted": discovered["predicted"],
            "measured": discovered["measured"],
            "discovered": {**{k: v for k, v in discovered.items()
                              if k not in ("predicted", "measured")},
                           "accuracy_before_finetune": metrics.get("discovered_acc")},
            "full": metrics["full"],
            "config": self.state["config"],
        }
        (self.out / "report.json").write_text(json.dumps(report, indent=2) + "\n",
                                              encoding="utf-8")
        return report
