"""Width and replicas under one policy: narrow first, add replicas, widen back, scale in.

Width and replicas are two knobs on one objective. Width moves in seconds and costs
accuracy; replicas move in tens of seconds to minutes (scheduling, image pull, model load)
and cost nodes. A replica autoscaler alone must keep headroom for the load that arrives
while its pods start, and still breaks the objective on a burst; the level policy alone
serves narrow for as long as the load stays high. This layer runs the level policy
(``policy.decide``, unchanged) for the width and adds, in order of evaluation:

1. **Narrow first.** The level policy's decision comes first: it narrows within seconds
   of a breach or of a rate that predicts one. On top of it, this layer narrows further
   in two cases, each with a known end (``bridge``):

   a. *While replicas are wanted or starting*, the level served must be predicted within
      the level policy's headroom line at the rate per *ready* replica, the rate moved
      forward by its recent rise over ``RATE_LAG_S`` (a rate() window shows the load of
      10-20 s ago). The level policy alone narrows only past the objective plus its
      tolerance, corroborated by the measured p95, because a narrowing on a model error
      would cost accuracy for good; here it lasts until the replicas are ready.
   b. *A full queue while the rate still climbs* (p95 at the panic line or above, rate
      rising) means the rate seen underestimates the load by an unknown amount: narrow to
      the narrowest allowed level at once, instead of stepping down one rate window at a
      time, and re-fit when the rate window has caught up (rule 4).
   c. *Guard, when no replicas are wanted*: the level served must be predicted within
      ``guardShareOfObjective`` of the objective at the same forward-moved rate per ready
      replica; otherwise narrow now to the best level that is, and widen back as soon as
      the level policy recommends the wider level again (rule 4). A rate() window shows
      the load of 10-20 s ago, and minute-scale noise moves a load by several per cent in
      that time: without the guard, a fleet inside its width band (rule 3) breaches on
      every such swing before any measurement shows it (the HPA's violations on a smooth
      day come from exactly this). The guard costs accuracy for seconds at a time; it is
      what lets the fleet run as hot as an HPA's.

2. **Replicas for capacity, at once.** When the request rate predicted one pod start
   ahead (the measured rate plus its rising trend times the pod start time) exceeds
   ``targetShareOfNarrowest`` of the *narrowest* level's capacity on the replicas asked
   for, narrowing cannot hold the objective by the time new pods could help: ask for
   enough replicas for the narrowest level to carry that rate within the share.
3. **Replicas for width, when the excess lasts.** The fleet is sized HPA-style (the
   ``tolerance`` band, the highest recommendation over ``scaleDownStabilizationSeconds``
   for a scale-in) around a per-replica *width target*: the rate at which the widest
   allowed level is predicted at ``widthShareOfObjective`` of the objective (the band's
   top), divided by ``1 + tolerance``. A scale-out is judged on the forecast, a scale-in
   on the measured rate. A scale-out is sized like the HPA's, the measured rate at the
   target, and at least so that the forecast stays inside the band: the trend, fitted on
   a few minutes of a noisy rate, says when to scale and how far ahead to look, but sized
   at the target it kept every fleet a trend's worth of noise too large (a plateau after
   a climb stays inside the band, so the extra replicas stayed). A scale-out for width
   takes the lowest recommendation over ``max(scaleUpStabilizationSeconds, pod start
   time)``: an excess that has lasted as long as a pod takes to start will likely last
   that much longer, and a shorter one is carried by narrowing (a pod that comes up after
   the burst only costs). So the *pod start time* (measured from the model's own pods,
   ``podStartSeconds`` until then) sets both the forecast horizon and the patience.
4. **Widen back when the cause is known.** The level policy widens only after its
   stabilisation window (300 s by default), which protects against a load that merely
   dipped. When it recommends a wider level (it would widen but for its window) and the
   headroom has a known cause, this layer widens now: more replicas are ready than at
   the last narrowing, or the narrowing was this layer's own (rule 1) and its reason is
   gone. Rule 1 is applied after this one, so a widening it would undo at once is never
   made.
5. **Scale in only after widening has had its window**: only while the model serves its
   widest allowed level and has for the level policy's ``widenStabilizationSeconds``;
   removing replicas from a narrowed model would trade more accuracy for cost.
6. **Bounds and missing data.** The count is clamped to ``[min, max]`` at once; missing,
   NaN or stale metrics (the level policy's ``metrics_available=False``) hold both the
   level and the count, as does a profile without every level (nothing to predict with).

Pure and deterministic like ``policy.py``: ``decide_joint(observation, replicas, spec,
replica_policy, profile, state, now)`` gathers nothing and reads no clock. Wiring: the
caller passes the ``JointState`` it got from the previous ``JointDecision`` (its two parts
serialise with ``PolicyState.to_dict`` and ``ReplicaState.to_dict``), acts on
``decision.level`` exactly as on the level policy's ``Decision`` (status, Event), and
writes ``decision.replicas.replicas`` to the Deployment's ``spec.replicas`` when it
changed (an Event with ``decision.replicas.reason``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from .observation import Observation, finite_or_none
from .policy import Cause, Decision, decide, predict_p95_s
from .policy_state import PolicyState
from .profile import LevelProfile
from .queueing import p95_latency_s
from .replica_spec import ReplicaPolicy
from .spec import ElasticModelSpec

__all__ = [
    "JointDecision",
    "JointState",
    "RateSample",
    "ReplicaCause",
    "ReplicaDecision",
    "ReplicaObservation",
    "ReplicaRecommendation",
    "ReplicaState",
    "bridge",
    "decide_joint",
    "decide_replicas",
    "forecast_rate",
    "narrowest_capacity_rps",
    "rising_rate",
    "widen_back",
    "widest_fit_rps",
    "width_band_top_rps",
    "width_target_rps",
]

TREND_WINDOW_S = 300.0
"""Rate samples over which the trend is fitted (least squares). Long enough that a burst's
onset, seen through a 20-30 s rate() window, does not read as a lasting climb; a diurnal or
a ramp keeps its slope over minutes."""

RATE_LAG_S = 15.0
"""How far behind the load a rate() reading is: half a 20-30 s window plus the scrape's
age and one evaluation interval. Rule 1a moves the rate forward by its recent rise over
this much; only a rise, so a falling load is never extrapolated."""

_STATE_VERSION = 1
_MAX_ENTRIES = 4096


class ReplicaCause(str, Enum):
    """Machine-readable cause of a replica decision (Event reason)."""

    DISABLED = "ReplicasDisabled"
    CLAMPED = "ReplicasClamped"
    METRICS_MISSING = "ReplicasHeld"
    NO_PROFILE = "NoProfile"
    CAPACITY = "NarrowestOverShare"
    WIDTH = "WidthTarget"
    SCALE_OUT_PENDING = "ScaleOutPending"
    SCALE_IN = "ScaleIn"
    SCALE_IN_AFTER_WIDENING = "ScaleInAfterWidening"
    AT_MAX = "AtMaxReplicas"
    STEADY = "ReplicasSteady"


@dataclass(frozen=True)
class ReplicaObservation:
    """What the caller measured about the model's pods.

    ``ready``: ready replicas (the Deployment's ``status.readyReplicas``). ``pod_start_s``:
    how long this model's pods took from creation to Ready, a high quantile (p90) of the
    recent ones; ``None`` or NaN until one was measured (``podStartSeconds`` is used).
    """

    ready: int | None
    pod_start_s: float | None = None


@dataclass(frozen=True)
class RateSample:
    """One request-rate reading, for the trend."""

    at: float
    rate_rps: float


@dataclass(frozen=True)
class ReplicaRecommendation:
    """The width rule's replica count at ``at`` (before stabilisation)."""

    at: float
    replicas: int


@dataclass(frozen=True)
class ReplicaState:
    """The replica layer's memory; replace, never mutate."""

    replicas: int
    started_at: float
    last_scale_at: float | None = None
    ready_at_narrowing: int | None = None
    """Ready replicas at the last narrowing or widening (rule 4); ``None`` at the widest."""
    joint_narrowed: bool = False
    """The level served was narrowed by this layer (rule 1), not by the level policy:
    it widens back as soon as the level policy recommends it (rule 4)."""
    rates: tuple[RateSample, ...] = ()
    recommendations: tuple[ReplicaRecommendation, ...] = ()

    @classmethod
    def initial(cls, replicas: int, now: float) -> ReplicaState:
        """State for a model that starts with ``replicas``. The recommendation window is
        seeded with that count, so a fresh operator scales in only after a full window."""
        return cls(replicas=replicas, started_at=now,
                   recommendations=(ReplicaRecommendation(now, replicas),))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for a status field)."""
        return {
            "version": _STATE_VERSION,
            "replicas": self.replicas,
            "startedAt": self.started_at,
            "lastScaleAt": self.last_scale_at,
            "readyAtNarrowing": self.ready_at_narrowing,
            "jointNarrowed": self.joint_narrowed,
            "rates": [[s.at, s.rate_rps] for s in self.rates],
            "recommendations": [[r.at, r.replicas] for r in self.recommendations],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ReplicaState:
        """Inverse of ``to_dict``; ``ValueError`` on an unknown version or shape (the caller
        then starts from ``initial`` at the scale's current count)."""
        if raw.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported replica state version {raw.get('version')!r}")
        try:
            last = raw.get("lastScaleAt")
            ready = raw.get("readyAtNarrowing")
            return cls(
                replicas=int(raw["replicas"]),
                started_at=float(raw["startedAt"]),
                last_scale_at=float(last) if last is not None else None,
                ready_at_narrowing=int(ready) if ready is not None else None,
                joint_narrowed=bool(raw.get("jointNarrowed", False)),
                rates=tuple(RateSample(float(a), float(r)) for a, r in raw.get("rates", [])),
                recommendations=tuple(
                    ReplicaRecommendation(float(a), int(n))
                    for a, n in raw.get("recommendations", [])
                ),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed replica state: {error}") from error


@dataclass(frozen=True)
class JointState:
    """Both layers' memory: the level policy's state and the replica layer's."""

    level: PolicyState
    replicas: ReplicaState

    @classmethod
    def initial(cls, level: int, replicas: int, now: float) -> JointState:
        return cls(PolicyState.initial(level, now), ReplicaState.initial(replicas, now))


@dataclass(frozen=True)
class ReplicaDecision:
    """How many replicas to ask for, why, and the state for the next call."""

    replicas: int
    previous_replicas: int
    cause: ReplicaCause
    reason: str
    state: ReplicaState
    horizon_s: float = 0.0
    """The pod start time the decision used (measured, or ``podStartSeconds``)."""
    forecast_rps: float | None = None
    """The request rate predicted one pod start ahead."""

    @property
    def changed(self) -> bool:
        """Whether the count moves (the caller patches the scale and emits an Event)."""
        return self.replicas != self.previous_replicas


@dataclass(frozen=True)
class JointDecision:
    """The width decision (the level policy's, perhaps widened on ready replicas) and the
    replica decision."""

    level: Decision
    replicas: ReplicaDecision

    @property
    def state(self) -> JointState:
        return JointState(self.level.state, self.replicas.state)


# --------------------------------------------------------------------------- model helpers


def _level_p95(profile: Sequence[LevelProfile], level: int, rate: float, workers: int) -> float:
    service, capacity = profile[level].service_and_capacity(workers)
    return p95_latency_s(rate, service_time_s=service, capacity_rps=capacity, servers=workers)


def widest_fit_rps(
    spec: ElasticModelSpec, profile: Sequence[LevelProfile], share: float | None = None
) -> float:
    """Per-replica rate at which the widest allowed level is predicted at ``share`` of the
    objective; by default the level policy's headroom line (above it the level policy
    does not widen to that level, below it it does)."""
    level = spec.levels.max_level
    workers = spec.serving.workers
    if share is None:
        share = 1.0 - spec.policy.headroom
    line = share * spec.objective.p95_s
    capacity = profile[level].service_and_capacity(workers)[1]
    if _level_p95(profile, level, 0.0, workers) > line:
        return capacity * 1e-3  # the level never fits: size for a trickle, narrowing decides
    lo, hi = 0.0, capacity
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if _level_p95(profile, level, mid, workers) <= line:
            lo = mid
        else:
            hi = mid
    return lo


def width_band_top_rps(
    spec: ElasticModelSpec, profile: Sequence[LevelProfile], policy: ReplicaPolicy
) -> float:
    """Per-replica rate past which (one pod start ahead) replicas are wanted for width:
    the widest allowed level predicted at ``widthShareOfObjective`` of the objective."""
    return widest_fit_rps(spec, profile, policy.width_share_of_objective)


def width_target_rps(
    spec: ElasticModelSpec, profile: Sequence[LevelProfile], policy: ReplicaPolicy
) -> float:
    """The per-replica rate a scale-out sizes for: the band's top over ``1 + tolerance``,
    so the load may rise by the tolerance before replicas are wanted again."""
    return width_band_top_rps(spec, profile, policy) / (1.0 + policy.tolerance)


def narrowest_capacity_rps(spec: ElasticModelSpec, profile: Sequence[LevelProfile]) -> float:
    """Saturation capacity of one replica at the narrowest allowed level."""
    return profile[spec.levels.min_level].service_and_capacity(spec.serving.workers)[1]


def forecast_rate(
    samples: Sequence[RateSample], rate: float, horizon_s: float, now: float
) -> tuple[float, float]:
    """``(forecast, slope)``: ``rate`` plus its rising trend over ``horizon_s``.

    The slope is the least-squares fit over the samples of the last ``TREND_WINDOW_S``
    (needing at least three spanning half of it). Only a rising trend counts: a falling
    one must not shrink a fleet faster than the scale-in rules allow.
    """
    recent = [s for s in samples if s.at >= now - TREND_WINDOW_S]
    if len(recent) < 3 or recent[-1].at - recent[0].at < TREND_WINDOW_S / 2.0:
        return rate, 0.0
    mean_t = math.fsum(s.at for s in recent) / len(recent)
    mean_r = math.fsum(s.rate_rps for s in recent) / len(recent)
    var = math.fsum((s.at - mean_t) ** 2 for s in recent)
    slope = math.fsum((s.at - mean_t) * (s.rate_rps - mean_r) for s in recent) / var
    return rate + max(slope, 0.0) * horizon_s, slope


def rising_rate(
    samples: Sequence[RateSample], rate: float, now: float, window_s: float
) -> float:
    """``rate`` moved forward by its rise over the samples of the last ``window_s``
    (two evaluations), extended over ``RATE_LAG_S``; ``rate`` itself when not rising."""
    recent = [s for s in samples if s.at >= now - window_s]
    if len(recent) < 2:
        return rate
    slope = (recent[-1].rate_rps - recent[0].rate_rps) / max(recent[-1].at - recent[0].at, 1e-9)
    return rate + max(slope, 0.0) * RATE_LAG_S


def _window(
    recs: Sequence[ReplicaRecommendation], window_s: float, now: float
) -> list[ReplicaRecommendation]:
    return [r for r in recs if r.at >= now - window_s]


# --------------------------------------------------------------------------- decisions


def widen_back(
    level: Decision,
    observation: Observation,
    replicas: ReplicaObservation,
    spec: ElasticModelSpec,
    state: ReplicaState,
    now: float,
) -> Decision:
    """Rule 4: the level policy's decision, widened now when the headroom it sees has a
    known cause (otherwise unchanged): more replicas ready than at the last narrowing, or
    the narrowing was this layer's own (rule 1, made on a prediction whose reason is
    now gone: the excess ended, or the rate window caught up after a blind narrowing).

    Only when the level policy itself recommends the wider level this evaluation (cause
    ``Stabilizing``: clean metrics, no breach, no node pressure, not settling) and the
    measured p95 is within the objective, as its own widening requires.
    """
    ready = replicas.ready
    p95 = finite_or_none(observation.p95_s)
    more_ready = (ready is not None and state.ready_at_narrowing is not None
                  and ready > state.ready_at_narrowing)
    if (
        level.cause is not Cause.STABILIZING
        or not (more_ready or state.joint_narrowed)
        or p95 is None
        or p95 > spec.objective.p95_s
        or not level.state.recommendations
    ):
        return level
    latest = level.state.recommendations[-1]
    if latest.at != now or latest.level <= level.level:
        return level
    target = min(latest.level, spec.levels.max_level)
    why = (f"{ready} replicas ready ({state.ready_at_narrowing} at the narrowing)"
           if more_ready else "the load that made this layer narrow is gone")
    return Decision(
        target,
        level.level,
        Cause.HEADROOM,
        f"{why} and level {target} predicted within {spec.policy.headroom:.0%} headroom at "
        f"the rate per ready replica; widening {level.level} -> {target} without waiting "
        f"{spec.policy.widen_stabilization_s} s",
        level.state.switched_to(target, now),
        True,
        level.predicted_p95_s,
    )


def _most_accurate_fitting(
    predictions: Sequence[float], profile: Sequence[LevelProfile], lo: int, hi: int,
    line_s: float,
) -> int | None:
    """The level policy's choice among ``lo..hi`` predicted within ``line_s``: the most
    accurate (ties to the widest), the widest when an accuracy is missing."""
    fitting = [k for k in range(lo, hi + 1) if predictions[k] <= line_s]
    if not fitting:
        return None
    accuracies = [profile[k].accuracy for k in fitting]
    if any(a is None or not math.isfinite(a) for a in accuracies):
        return max(fitting)
    return max(fitting, key=lambda k: (profile[k].accuracy or 0.0, k))


_WAITING = frozenset({ReplicaCause.CAPACITY, ReplicaCause.WIDTH, ReplicaCause.SCALE_OUT_PENDING,
                      ReplicaCause.AT_MAX})
"""Replica decisions that mean more replicas are wanted than are ready (rule 1a)."""


def bridge(
    level: Decision,
    count: ReplicaDecision,
    observation: Observation,
    replicas: ReplicaObservation,
    spec: ElasticModelSpec,
    profile: Sequence[LevelProfile],
    now: float,
    rates: Sequence[RateSample] = (),
    guard_share: float | None = None,
) -> tuple[Decision, bool]:
    """Rule 1, narrow first: ``(decision, blind)``, the level policy's decision or a
    narrower one, and whether the narrowing was blind (1b).

    1a. While more replicas are wanted or still starting, the level served must be
    predicted within the headroom line at the rate per *ready* replica, the rate moved
    forward by its recent rise over ``RATE_LAG_S`` (a rate() window shows the load of
    10-20 s ago); otherwise narrow now to the best level that is (at least one level). The
    level policy alone narrows only past the objective plus its tolerance, corroborated
    by the measured p95 (a model error must not cost accuracy for good); here the excess
    has a known end (the replicas asked for), the narrowing lasts only until they are
    ready (rule 4), and the replica layer's patience relies on the objective being held.

    1b. A p95 at the panic line or above (the queue is full) while the request rate
    still climbs means the rate seen underestimates the load by an unknown amount:
    narrow to the narrowest allowed level at once instead of stepping down one rate
    window at a time, and re-fit once the window has caught up (rule 4, after
    ``settleSeconds``, when the level policy recommends a level again).

    1c. With no replicas wanted or starting, the guard (``guard_share`` of the objective;
    ``None``: none): the level served predicted over it at the same forward-moved rate
    per ready replica narrows now to the best level within it. The narrowing is this
    layer's own, so it is undone as soon as the level policy recommends the wider level
    and that level is within the guard again (rules 4 and 1c on the next evaluation).
    """
    rate = finite_or_none(observation.request_rate_rps)
    p95 = finite_or_none(observation.p95_s)
    ready = replicas.ready
    lo = spec.levels.min_level
    policy = spec.policy
    if (
        not level.metrics_available
        or rate is None
        or p95 is None
        or not ready
        or level.level <= lo
        or len(profile) < spec.model.level_count
    ):
        return level, False
    rising = rising_rate(rates, rate, now, 2.0 * policy.evaluation_interval_s + 2.0)
    predictions = predict_p95_s(profile, rising / ready, spec.serving.workers)
    line = (1.0 - policy.headroom) * spec.objective.p95_s
    blind = rising > rate and p95 >= policy.panic_threshold * spec.objective.p95_s
    waiting = count.cause in _WAITING or ready < count.replicas
    guard = None if guard_share is None else guard_share * spec.objective.p95_s
    if blind:
        target = lo
        reason = (f"p95 {p95 * 1000.0:.0f} ms: the queue is full while the rate climbs "
                  f"({rate / ready:.1f} rps per ready replica and rising); narrowing "
                  f"{level.level} -> {target} until the rate window catches up")
    elif waiting and predictions[level.level] > line:
        fit = _most_accurate_fitting(predictions, profile, lo, level.level - 1, line)
        target = fit if fit is not None else lo
        reason = (f"{rising / ready:.1f} rps per ready replica ({ready} ready, "
                  f"{count.replicas} asked for) predicts level {level.level} over the "
                  f"{policy.headroom:.0%} headroom line; narrowing {level.level} -> {target} "
                  f"until the replicas are ready")
    elif not waiting and guard is not None and predictions[level.level] > guard:
        fit = _most_accurate_fitting(predictions, profile, lo, level.level - 1, guard)
        target = fit if fit is not None else lo
        reason = (f"{rising / ready:.1f} rps per ready replica ({rate / ready:.1f} measured, "
                  f"moved forward by its rise) predicts level {level.level} at "
                  f"{predictions[level.level] * 1000.0:.0f} ms, over the guard "
                  f"({guard * 1000.0:.0f} ms); narrowing {level.level} -> {target} until "
                  f"it fits again")
    else:
        return level, False
    state = level.state.with_recommendation(target, policy.widen_stabilization_s, now)
    state = state.switched_to(target, now, now + policy.settle_s)
    decision = Decision(target, level.previous_level, Cause.PREDICTED_OVERLOAD, reason,
                        state, True, predictions)
    return decision, blind


def decide_replicas(
    observation: Observation,
    replicas: ReplicaObservation,
    spec: ElasticModelSpec,
    policy: ReplicaPolicy,
    profile: Sequence[LevelProfile],
    state: ReplicaState,
    level: Decision,
    now: float,
) -> ReplicaDecision:
    """Rules 2, 3, 5, 6: the replica count to ask for, given this evaluation's width
    decision ``level`` (its level, cause and state). See the module docstring."""
    current = state.replicas
    start = finite_or_none(replicas.pod_start_s)
    horizon = start if start is not None and start > 0.0 else float(policy.pod_start_s)

    def result(
        target: int, cause: ReplicaCause, reason: str, st: ReplicaState,
        forecast: float | None = None,
    ) -> ReplicaDecision:
        if target != current:
            st = replace(st, replicas=target, last_scale_at=now)
        return ReplicaDecision(target, current, cause, reason, st, horizon, forecast)

    if not policy.enabled:
        return result(current, ReplicaCause.DISABLED, "replica policy off; count untouched",
                      state)
    # 6. Bounds first, whatever the metrics say.
    bounded = policy.clamp(current)
    if bounded != current:
        return result(bounded, ReplicaCause.CLAMPED,
                      f"{current} replicas outside [{policy.min_replicas}, "
                      f"{policy.max_replicas}]; moving to {bounded}", state)
    rate = finite_or_none(observation.request_rate_rps)
    if not level.metrics_available or rate is None or rate < 0.0:
        return result(current, ReplicaCause.METRICS_MISSING,
                      f"holding {current} replicas: no usable metrics ({level.cause.value})",
                      state)
    if len(profile) < spec.model.level_count:
        return result(current, ReplicaCause.NO_PROFILE,
                      f"holding {current} replicas: the profile lacks levels to predict with",
                      state)

    state = replace(state, rates=tuple(
        [s for s in state.rates if s.at >= now - TREND_WINDOW_S and s.at != now]
        + [RateSample(now, rate)]
    )[-_MAX_ENTRIES:])
    forecast, slope = forecast_rate(state.rates, rate, horizon, now)
    trend = f" (+{slope:.1f} rps/s over {horizon:.0f} s)" if forecast > rate else ""

    # 2. Capacity: the narrowest level on the replicas asked for, one pod start ahead.
    share_rps = policy.target_share_of_narrowest * narrowest_capacity_rps(spec, profile)
    if forecast > share_rps * current:
        needed = policy.clamp(math.ceil(forecast / share_rps))
        what = (f"{forecast:.0f} rps predicted in {horizon:.0f} s{trend} exceeds "
                f"{policy.target_share_of_narrowest:.0%} of the narrowest level's capacity "
                f"on {current} replicas")
        state = _recorded(state, needed, policy, horizon, now)
        if needed > current:
            return result(needed, ReplicaCause.CAPACITY,
                          f"{what}; scaling {current} -> {needed}", state, forecast)
        return result(current, ReplicaCause.AT_MAX,
                      f"{what}; already at max {policy.max_replicas}", state, forecast)

    # 3./5. Width: HPA-style around the width target, stabilised both ways.
    fit_rps = width_band_top_rps(spec, profile, policy)
    target_rps = fit_rps / (1.0 + policy.tolerance)
    wanted = current
    if forecast > fit_rps * current:
        # The measured rate at the target, and the forecast inside the band.
        wanted = policy.clamp(max(math.ceil(rate / target_rps),
                                  math.ceil(forecast / fit_rps)))
    elif rate < target_rps * (1.0 - policy.tolerance) * current:
        wanted = policy.clamp(math.ceil(rate / target_rps))
    state = _recorded(state, wanted, policy, horizon, now)
    per_replica = (f"{forecast / current:.1f} rps per replica{trend}, width band up to "
                   f"{fit_rps:.1f} (target {target_rps:.1f})")

    if wanted > current:
        up_window = max(float(policy.scale_up_stabilization_s), horizon)
        window = _window(state.recommendations, up_window, now)
        spans = window[0].at <= now - up_window + spec.policy.evaluation_interval_s
        target = min(r.replicas for r in window)
        if spans and target > current:
            return result(target, ReplicaCause.WIDTH,
                          f"{per_replica}: the widest level needs {target} replicas "
                          f"(recommended for {up_window:.0f} s); scaling {current} -> {target}",
                          state, forecast)
        if current >= policy.max_replicas:
            return result(current, ReplicaCause.AT_MAX,
                          f"{per_replica}; already at max {policy.max_replicas}", state,
                          forecast)
        return result(current, ReplicaCause.SCALE_OUT_PENDING,
                      f"{per_replica}; scaling out to {wanted} if it lasts {up_window:.0f} s "
                      f"(the pod start time: narrowing carries a shorter excess)",
                      state, forecast)

    down = max(r.replicas for r in _window(state.recommendations,
                                           float(policy.scale_down_stabilization_s), now))
    if down < current:
        widest = spec.levels.max_level
        since = level.state.last_change_at
        waited = since is None or now - since >= spec.policy.widen_stabilization_s
        if level.level < widest or not waited:
            return result(current, ReplicaCause.SCALE_IN_AFTER_WIDENING,
                          f"{per_replica}; scaling in to {down} only once level {widest} has "
                          f"served for {spec.policy.widen_stabilization_s} s", state, forecast)
        return result(down, ReplicaCause.SCALE_IN,
                      f"{per_replica}: {down} replicas recommended over "
                      f"{policy.scale_down_stabilization_s} s; scaling {current} -> {down}",
                      state, forecast)
    return result(current, ReplicaCause.STEADY, f"{per_replica}; holding {current} replicas",
                  state, forecast)


def _recorded(
    state: ReplicaState, replicas: int, policy: ReplicaPolicy, horizon: float, now: float
) -> ReplicaState:
    keep = max(float(policy.scale_up_stabilization_s), horizon,
               float(policy.scale_down_stabilization_s))
    kept = [r for r in state.recommendations if r.at >= now - keep and r.at != now]
    kept.append(ReplicaRecommendation(now, replicas))
    return replace(state, recommendations=tuple(kept[-_MAX_ENTRIES:]))


def decide_joint(
    observation: Observation,
    replicas: ReplicaObservation,
    spec: ElasticModelSpec,
    policy: ReplicaPolicy,
    profile: Sequence[LevelProfile],
    state: JointState,
    now: float,
) -> JointDecision:
    """One evaluation of both knobs: ``policy.decide`` for the width, widened back when
    the cause is known (rule 4), the replica count (rules 2, 3, 5, 6), then narrowed
    further where rule 1 asks. With the replica policy off, the level policy's decision
    and an untouched count (``ReplicasDisabled``).

    ``observation.ready_replicas`` should be ``replicas.ready`` (the level policy divides
    the rate by it); it is filled in from ``replicas`` when left out.
    """
    if observation.ready_replicas is None and replicas.ready:
        observation = replace(observation, ready_replicas=replicas.ready)
    level = decide(observation, spec, profile, state.level, now)
    if not policy.enabled:
        count = decide_replicas(observation, replicas, spec, policy, profile, state.replicas,
                                level, now)
        return JointDecision(level, count)
    level = widen_back(level, observation, replicas, spec, state.replicas, now)
    count = decide_replicas(observation, replicas, spec, policy, profile, state.replicas,
                            level, now)
    bridged, _ = bridge(level, count, observation, replicas, spec, profile, now,
                        count.state.rates, policy.guard_share_of_objective)
    return JointDecision(bridged, replace(count, state=_marks(
        count.state, bridged, replicas, spec, bridged is not level)))


def _marks(
    state: ReplicaState, level: Decision, replicas: ReplicaObservation,
    spec: ElasticModelSpec, bridged: bool,
) -> ReplicaState:
    """Rule 4's bookkeeping after the final width decision: the ready count at the last
    narrowing or widening, and whether the narrowing was this layer's."""
    if level.level >= spec.levels.max_level:
        return replace(state, ready_at_narrowing=None, joint_narrowed=False)
    if level.level < level.previous_level:
        return replace(state, ready_at_narrowing=replicas.ready, joint_narrowed=bridged)
    if level.level > level.previous_level:
        return replace(state, ready_at_narrowing=replicas.ready)
    return state
