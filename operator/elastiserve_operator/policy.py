"""The level policy: which nested level should serve now.

``decide(observation, spec, profile, state, now) -> Decision`` is pure and deterministic:
no I/O, no clock, no randomness. The caller (the kopf timer, the local ``serve`` loop, the
simulator) gathers an ``Observation``, passes the ``PolicyState`` it got from the previous
``Decision``, and acts on ``decision.level``. Wiring for the operator:

* ``decision.state`` -> ``status.policyState`` (``to_dict``), ``decision.level`` ->
  ``status.desiredLevel`` (and ``activeLevel`` once actuated);
* ``decision.changed`` -> a Kubernetes Event with ``decision.reason`` as the message and
  ``decision.cause.value`` as its reason, plus ``status.lastSwitchReason``/``Time``;
* ``decision.metrics_available`` -> the ``MetricsAvailable`` condition (False with the
  cause as reason when the policy held because the metrics were missing or stale).

Rules, in order of precedence (Knative KPA / HPA practice, adapted to levels; "narrow"
gives capacity, "widen" gives accuracy):

1. **Bounds.** A level outside ``[minLevel, maxLevel]`` (the spec changed) is clamped at
   once, whatever the metrics say.
2. **No data, no move.** A missing, NaN, infinite or negative p95 or request rate, or a
   sample older than ``staleAfterSeconds``, holds the level (``metrics_available=False``).
   2a. **Idle is data.** A request rate measured at exactly 0 with no latency (missing or
   NaN: ``histogram_quantile`` over zero requests is NaN, and so is a queue wait over zero
   completions) is a model that nobody called in the window, not a gap in the metrics:
   nothing waited, so its p95 reads as 0 and the rules below apply (it widens after its
   window, and the joint policy may scale in). Holding instead kept an idle model at the
   level and the replica count of its last burst until the next request came.
3. **Settle.** For ``settleSeconds`` after a narrowing, latency readings still mix in the
   slower level (the query's rate() window and the queue it left), so they are not
   recorded and the level is held, unless the request rate alone predicts an overload.
   After a widening, mixed readings underestimate, so they are used at once.
4. **Panic.** Mean p95 over the panic window >= ``panicThreshold`` x objective narrows at
   once. So does, in Predictive mode, a request rate for which the queueing model predicts
   a p95 past that line at the current level, or past the breach line while the measured
   p95 is already over the headroom line (the model moves first when the measurement
   corroborates it, rather than waiting for the queue to build up).
5. **Sustained breach.** Mean p95 over the stable window > (1 + tolerance) x objective,
   with clean samples spanning the window (so not before a full window after a start or a
   settle), narrows at once.
   Predictive mode narrows to the best level whose predicted p95 meets the objective,
   and always at least one level (the breach is evidence the model is optimistic);
   Step mode narrows one level. "Best" is the most accurate when the profile gives every
   level an accuracy (a narrower level can out-score a wider one in a badly trained
   bundle, and then the wider one is never worth its cost), else the widest.
6. **Node pressure.** Any reading at or above its threshold blocks widening and narrows
   one level per stable window. The operator passes a reading here only when *every* node
   hosting the model is hot (``node_caps.decide_caps``'s ``model_pressure``); a single hot
   node gets a per-node cap instead, so only its replicas narrow.
7. **Widen.** Every clean evaluation records a recommendation: the best level whose
   predicted p95 is at most (1 - headroom) x objective (Step: one level wider if the
   measured p95 is under that line). Narrowings record their target. The level widens to
   the *minimum* recommendation over ``widenStabilizationSeconds`` (HPA's scale-down
   stabilisation), so one bad minute blocks widening for the whole window.

``spec.policy.loops``: with ``Both`` (the default) and ``Operator`` the rules above set the
level, which is the ceiling the workers choose under (``Both``) or exactly what they serve
(``Operator``). With ``Worker`` the workers alone follow latency, per batch, so the operator
neither reads latency nor narrows on it: after the bounds, only node pressure (rule 6, which
needs no Prometheus reading) narrows the ceiling, and once the node is cool again for a stable
window the ceiling goes back to ``maxLevel``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from .observation import NodePressure, Observation, finite_or_none
from .policy_state import PolicyState, Sample
from .profile import LevelProfile
from .queueing import p95_latency_s
from .spec import ElasticModelSpec, Loops, NodePressureThresholds, PolicyMode

__all__ = ["Cause", "Decision", "decide", "idle", "predict_p95_s", "pressure_reasons"]


class Cause(str, Enum):
    """Machine-readable cause of a decision (Event reason, condition reason)."""

    CLAMPED = "Clamped"
    METRICS_MISSING = "MetricsMissing"
    METRICS_STALE = "MetricsStale"
    SETTLING = "Settling"
    PANIC = "Panic"
    PREDICTED_OVERLOAD = "PredictedOverload"
    SUSTAINED_BREACH = "SustainedBreach"
    AT_MIN_LEVEL = "AtMinLevel"
    NODE_PRESSURE = "NodePressure"
    NODE_PRESSURE_HOLD = "NodePressureHold"
    BREACH_PENDING = "BreachPending"
    HEADROOM = "Headroom"
    STABILIZING = "Stabilizing"
    STEADY = "Steady"
    WORKER_LOOP = "WorkerLoop"


@dataclass(frozen=True)
class Decision:
    """What to serve next, why, and the state to pass to the next call."""

    level: int
    previous_level: int
    cause: Cause
    reason: str
    state: PolicyState
    metrics_available: bool = True
    predicted_p95_s: tuple[float, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the level moves (the caller emits an Event and actuates)."""
        return self.level != self.previous_level


# --------------------------------------------------------------------------- helpers


def idle(observation: Observation) -> bool:
    """Rule 2a: the request rate is a reading of exactly 0 (the counter counts arrivals, so
    no request arrived in the window) and there is no latency reading, missing or NaN (an
    infinite or negative one is a broken query, not an idle model)."""
    p95 = observation.p95_s
    return (finite_or_none(observation.request_rate_rps) == 0.0
            and (p95 is None or math.isnan(p95)))


def predict_p95_s(
    profile: Sequence[LevelProfile], rate_rps: float, workers: int
) -> tuple[float, ...]:
    """Queueing-model p95 (seconds) of every level at ``rate_rps`` per replica."""
    predictions = []
    for level in profile:
        service, capacity = level.service_and_capacity(workers)
        predictions.append(
            p95_latency_s(rate_rps, service_time_s=service, capacity_rps=capacity, servers=workers)
        )
    return tuple(predictions)


def pressure_reasons(node: NodePressure | None, limits: NodePressureThresholds) -> list[str]:
    """Human-readable list of the node readings at or above their thresholds."""
    if node is None or not limits.enabled:
        return []
    checks = (
        ("cpu", finite_or_none(node.cpu_fraction), limits.cpu_fraction, 100.0, "%"),
        ("memory", finite_or_none(node.memory_fraction), limits.memory_fraction, 100.0, "%"),
        ("temperature", finite_or_none(node.temperature_c), limits.temperature_c, 1.0, " C"),
        ("gpu", finite_or_none(node.gpu_load_percent), limits.gpu_load_percent, 1.0, "%"),
    )
    return [
        f"{name} {value * scale:.0f}{unit} >= {limit * scale:.0f}{unit}"
        for name, value, limit, scale, unit in checks
        if value is not None and value >= limit
    ]


def _ms(seconds: float) -> str:
    return "inf ms" if math.isinf(seconds) else f"{seconds * 1000.0:.0f} ms"


def _best_fitting(
    predictions: Sequence[float], accuracies: Sequence[float] | None, lo: int, hi: int,
    line_s: float,
) -> int | None:
    """Among levels ``lo..hi`` predicted within ``line_s``: the most accurate, ties to the
    widest; the widest when accuracies are unknown. None when none fits."""
    fitting = [k for k in range(lo, hi + 1) if predictions[k] <= line_s]
    if not fitting:
        return None
    if accuracies is None:
        return max(fitting)
    return max(fitting, key=lambda k: (accuracies[k], k))


def _accuracies(profile: Sequence[LevelProfile]) -> tuple[float, ...] | None:
    values = [level.accuracy for level in profile]
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return tuple(float(v) for v in values if v is not None)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


@dataclass(frozen=True)
class _Context:
    """Derived inputs shared by the rules, computed once per call."""

    spec: ElasticModelSpec
    names: tuple[str, ...]
    predictions: tuple[float, ...]
    per_replica_rps: float
    accuracies: tuple[float, ...] | None = None
    """Every level's accuracy when the profile has them all, else None (rank by width)."""

    @property
    def predictive(self) -> bool:
        return bool(self.predictions)

    def label(self, level: int) -> str:
        return f"{level} ({self.names[level]})" if level < len(self.names) else str(level)

    def predicted(self, level: int) -> str:
        if not self.predictive:
            return ""
        return f", predicted p95 {_ms(self.predictions[level])} at {self.per_replica_rps:.1f} rps"


# --------------------------------------------------------------------------- decide


def decide(
    observation: Observation,
    spec: ElasticModelSpec,
    profile: Sequence[LevelProfile],
    state: PolicyState,
    now: float,
) -> Decision:
    """Choose the level to serve at ``now``; see the module docstring for the rules.

    ``profile`` lists the levels narrowest first. Predictive mode needs one entry per level
    of the bundle; with a shorter profile the policy steps (Step mode) and says so.
    """
    policy = spec.policy
    lo, hi = spec.levels.min_level, spec.levels.max_level
    current = state.level
    objective = spec.objective.p95_s

    def hold(
        cause: Cause,
        reason: str,
        st: PolicyState,
        *,
        ok: bool = True,
        predictions: tuple[float, ...] = (),
    ) -> Decision:
        return Decision(current, current, cause, reason, st, ok, predictions)

    # 1. Bounds.
    if not lo <= current <= hi:
        target = min(max(current, lo), hi)
        return Decision(
            target,
            current,
            Cause.CLAMPED,
            f"level {current} outside allowed [{lo}, {hi}]; moving to {target}",
            state.switched_to(target, now, now + policy.settle_s if target < current else None),
            metrics_available=True,
        )

    if policy.loops is Loops.WORKER:
        return _worker_ceiling(observation, spec, state, now)

    # 2. Metrics present, finite, fresh; an idle model's missing latency is no gap (2a).
    rate = finite_or_none(observation.request_rate_rps)
    p95 = 0.0 if idle(observation) else finite_or_none(observation.p95_s)
    missing = [
        name
        for name, value in (("p95 latency", p95), ("request rate", rate))
        if value is None or value < 0.0
    ]
    if missing:
        return hold(
            Cause.METRICS_MISSING,
            f"holding level {current}: no usable {' or '.join(missing)}",
            state,
            ok=False,
        )
    assert p95 is not None and rate is not None
    sampled_at = finite_or_none(observation.sampled_at)
    if sampled_at is None or abs(now - sampled_at) > policy.stale_after_s:
        age = "unknown" if sampled_at is None else f"{now - sampled_at:.0f} s"
        return hold(
            Cause.METRICS_STALE,
            f"holding level {current}: metrics sample age {age} exceeds {policy.stale_after_s} s",
            state,
            ok=False,
        )

    replicas = observation.ready_replicas or spec.replicas or 1
    predictive = policy.mode is PolicyMode.PREDICTIVE and len(profile) >= spec.model.level_count
    ctx = _Context(
        spec=spec,
        names=tuple(level.name for level in profile),
        predictions=(
            predict_p95_s(profile, rate / replicas, spec.serving.workers) if predictive else ()
        ),
        per_replica_rps=rate / replicas,
        accuracies=_accuracies(profile) if predictive else None,
    )

    # 3. Settle after a narrowing: readings still show the slower level. The rate does not
    #    depend on the level, so a predicted overload is still acted on while settling.
    settling = state.settle_until is not None and sampled_at < state.settle_until
    if not settling:
        horizon = max(policy.stable_window_s, policy.panic_window_s)
        state = state.with_sample(Sample(sampled_at, p95, rate), horizon, now)
    panic_values = [s.p95_s for s in state.samples if s.at >= now - policy.panic_window_s]
    stable = [s for s in state.samples if s.at >= now - policy.stable_window_s]
    panic_line = policy.panic_threshold * objective
    breach_line = (1.0 + policy.tolerance) * objective
    headroom_line = (1.0 - policy.headroom) * objective

    # 4./5. Narrowing on latency (measured, or predicted from the rate).
    narrow_cause: Cause | None = None
    evidence = ""
    if not settling and panic_values and _mean(panic_values) >= panic_line:
        narrow_cause = Cause.PANIC
        evidence = (
            f"p95 {_ms(_mean(panic_values))} >= {policy.panic_threshold:g}x objective "
            f"{_ms(objective)} over the {policy.panic_window_s} s panic window"
        )
    elif ctx.predictive and (
        ctx.predictions[current] >= panic_line
        or (not settling and ctx.predictions[current] > breach_line and p95 > headroom_line)
    ):
        # The model alone acts only on a clear overload; a predicted breach needs the
        # measured p95 to corroborate it (already past the headroom line).
        narrow_cause = Cause.PREDICTED_OVERLOAD
        evidence = (
            f"{ctx.per_replica_rps:.1f} rps per replica predicts p95 "
            f"{_ms(ctx.predictions[current])} at level {current} (measured {_ms(p95)}), "
            f"over objective {_ms(objective)} +{policy.tolerance:.0%}"
        )
    elif not settling:
        # Samples must span the window (less one evaluation interval): a breach seen for
        # a few seconds after a start or a switch is not yet "sustained".
        span_start = now - (policy.stable_window_s - policy.evaluation_interval_s)
        stable_mean = _mean([s.p95_s for s in stable]) if stable else 0.0
        if stable and stable[0].at <= span_start and stable_mean > breach_line:
            narrow_cause = Cause.SUSTAINED_BREACH
            evidence = (
                f"mean p95 {_ms(stable_mean)} > objective {_ms(objective)} "
                f"+{policy.tolerance:.0%} over the {policy.stable_window_s} s window"
            )
    if settling and narrow_cause is None:
        assert state.settle_until is not None
        return hold(
            Cause.SETTLING,
            f"holding level {current}: ignoring latency until "
            f"{state.settle_until - sampled_at:.0f} s from now, the query window still "
            f"holds the previous level",
            state,
            predictions=ctx.predictions,
        )
    if narrow_cause is not None:
        if current <= lo:
            return hold(
                Cause.AT_MIN_LEVEL,
                f"{evidence}; already at the narrowest allowed level {lo}",
                state,
                predictions=ctx.predictions,
            )
        target = current - 1
        if ctx.predictive:
            # Only levels below the current one: the breach says the current one fails.
            fit = _best_fitting(ctx.predictions, ctx.accuracies, lo, current - 1, objective)
            target = fit if fit is not None else lo
        return _switch(
            ctx,
            state,
            current,
            target,
            now,
            narrow_cause,
            f"{evidence}; narrowing {ctx.label(current)} -> {ctx.label(target)}"
            f"{ctx.predicted(target)}",
        )

    # 6. Node pressure.
    pressure = pressure_reasons(observation.node, spec.node_pressure)
    if pressure:
        since = state.last_change_at if state.last_change_at is not None else -math.inf
        what = "node pressure (" + ", ".join(pressure) + ")"
        if current > lo and now - since >= policy.stable_window_s:
            return _switch(
                ctx,
                state,
                current,
                current - 1,
                now,
                Cause.NODE_PRESSURE,
                f"{what}; narrowing {ctx.label(current)} -> {ctx.label(current - 1)}",
            )
        return hold(
            Cause.NODE_PRESSURE_HOLD,
            f"{what}; holding level {current}, no widening",
            state,
            predictions=ctx.predictions,
        )

    # 7. Recommendation, then widen after stabilisation.
    if ctx.predictive:
        fit = _best_fitting(ctx.predictions, ctx.accuracies, lo, hi, headroom_line)
        recommended = fit if fit is not None else lo
    else:
        recommended = min(current + 1, hi) if p95 <= headroom_line else current
    state = state.with_recommendation(recommended, policy.widen_stabilization_s, now)
    if p95 > breach_line:
        return hold(
            Cause.BREACH_PENDING,
            f"p95 {_ms(p95)} above objective {_ms(objective)} +{policy.tolerance:.0%}; "
            f"narrowing if it holds over {policy.stable_window_s} s",
            state,
            predictions=ctx.predictions,
        )
    stabilized = min(r.level for r in state.recommendations)
    if stabilized > current and p95 <= objective:
        target = min(stabilized, hi)
        return _switch(
            ctx,
            state,
            current,
            target,
            now,
            Cause.HEADROOM,
            f"p95 {_ms(p95)} within objective {_ms(objective)} and "
            + (
                f"level {target} predicted within {policy.headroom:.0%} headroom"
                if ctx.predictive
                else f"p95 under the {policy.headroom:.0%} headroom line"
            )
            + f" for {policy.widen_stabilization_s} s; widening {ctx.label(current)} -> "
            f"{ctx.label(target)}{ctx.predicted(target)}",
        )
    if recommended > current:
        return hold(
            Cause.STABILIZING,
            f"level {recommended} fits with headroom; widening once that holds for "
            f"{policy.widen_stabilization_s} s",
            state,
            predictions=ctx.predictions,
        )
    return hold(
        Cause.STEADY,
        f"p95 {_ms(p95)} within objective {_ms(objective)}; holding level {current}",
        state,
        predictions=ctx.predictions,
    )


def _worker_ceiling(
    observation: Observation, spec: ElasticModelSpec, state: PolicyState, now: float
) -> Decision:
    """``loops: Worker``: the ceiling is ``maxLevel``, lowered one level per stable window
    while node pressure lasts and raised back to ``maxLevel`` a stable window after the last
    change once the node is cool; latency is the workers' business."""
    current, lo, hi = state.level, spec.levels.min_level, spec.levels.max_level
    window = spec.policy.stable_window_s
    since = state.last_change_at if state.last_change_at is not None else -math.inf
    pressure = pressure_reasons(observation.node, spec.node_pressure)
    if pressure:
        what = "node pressure (" + ", ".join(pressure) + ")"
        if current > lo and now - since >= window:
            target = current - 1
            return Decision(target, current, Cause.NODE_PRESSURE,
                            f"{what}; lowering the workers' ceiling {current} -> {target}",
                            state.switched_to(target, now))
        return Decision(current, current, Cause.NODE_PRESSURE_HOLD,
                        f"{what}; holding the workers' ceiling at {current}", state)
    if current < hi and now - since >= window:
        return Decision(hi, current, Cause.WORKER_LOOP,
                        f"nodes cool for {window} s; workers choose up to level {hi} again",
                        state.switched_to(hi, now))
    return Decision(current, current, Cause.WORKER_LOOP,
                    f"workers choose the level per batch in [{lo}, {current}]", state)


def _switch(
    ctx: _Context,
    state: PolicyState,
    current: int,
    target: int,
    now: float,
    cause: Cause,
    reason: str,
) -> Decision:
    """Move to ``target``; a narrowing also records ``target`` as a recommendation so that
    widening past it waits a full stabilisation window."""
    window = ctx.spec.policy.widen_stabilization_s
    if target < current:
        state = state.with_recommendation(target, window, now)
    settle_until = now + ctx.spec.policy.settle_s if target < current else None
    new_state = state.switched_to(target, now, settle_until)
    return Decision(target, current, cause, reason, new_state, True, ctx.predictions)
