"""Pure status rebuilding: the world as read -> the ``status`` patch to write.

kubebuilder's shape: every pass reads the world (the CR, its Deployment, the metrics) and
rebuilds the status from it, rather than editing the old status incrementally, so a missed
event or an operator restart cannot leave a stale field behind. Two writers share the
status through server-side apply with distinct field managers, so neither needs to read
and re-send what the other owns (``conditions`` is a map-list keyed by ``type``):

* ``reconcile_patch`` (create/update/resume and Deployment changes): ``observedGeneration``,
  ``readyReplicas``, ``replicas`` and ``selector`` (what the model's ``scale`` subresource
  reports to an HPA: the serving pods that exist, and the label selector that finds them),
  ``replicasOwner`` (``replica_owner``), ``effectivePolicy`` (the objective, policy,
  node-pressure and serving values the model runs with, and for each chart-defaulted one
  whether the spec or the operator's default supplied it), ``inferenceKeySecret`` (where
  clients find the key) and the ``Ready``/``Degraded``/``InferenceAuth``/``ReplicaOwnership``
  conditions;
* ``evaluation_patch`` (the policy loop): the levels, the latency readings, the policy
  state, the last switch and the ``MetricsAvailable`` condition; with the joint replica
  policy also ``replica_patch``: ``desiredReplicas``, ``replicaState``, ``replicaDecision``
  and the last scale.

Each always sends its whole set: with apply, a field a manager stops sending is removed,
which is how a stale ``p95Ms`` disappears when the metrics do. A condition's
``lastTransitionTime`` moves only when its ``status`` changes (the Kubernetes convention),
and every condition carries the ``observedGeneration`` it was computed from.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .joint_policy import ReplicaDecision, ReplicaState
from .observation import Observation
from .policy import Decision
from .policy_state import PolicyState
from .replica_owner import CONDITION as OWNERSHIP_CONDITION
from .replica_owner import SPEC_OWNER, ReplicaOwnership, live_replicas
from .replica_spec import ReplicaPolicy
from .spec import CHART_DEFAULTED, ElasticModelSpec

KEY_SECRET_ITEM = "key"
"""The data key of the inference key Secret (``children.INFERENCE_KEY_ITEM``)."""

__all__ = [
    "RECONCILE_OPTIONAL",
    "Condition",
    "effective_policy",
    "evaluation_patch",
    "iso",
    "merge_conditions",
    "metrics_condition",
    "readiness_drifted",
    "ready_condition",
    "ready_count",
    "reconcile_patch",
    "replica_patch",
    "restore_replica_state",
    "restore_state",
    "status_holds",
    "wanted_replicas",
    "worker_bounds",
]


def iso(epoch_s: float) -> str:
    """RFC 3339 in UTC with second precision (what ``format: date-time`` fields hold)."""
    moment = datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Condition:
    """One condition as computed now (``lastTransitionTime`` is decided when merging)."""

    type: str
    status: str
    reason: str
    message: str
    observed_generation: int


def merge_conditions(
    existing: Sequence[Mapping[str, Any]], updates: Sequence[Condition], now: float
) -> list[dict[str, Any]]:
    """The ``updates`` as condition dicts, sorted by type; ``existing`` (the status as last
    seen) only supplies ``lastTransitionTime`` for a condition whose status did not move."""
    by_type = {str(c.get("type")): dict(c) for c in existing if isinstance(c, Mapping)}
    out: dict[str, dict[str, Any]] = {}
    for new in updates:
        old = by_type.get(new.type)
        moved = old is None or old.get("status") != new.status
        out[new.type] = {
            "type": new.type,
            "status": new.status,
            "reason": new.reason,
            "message": new.message[:32768],
            "observedGeneration": new.observed_generation,
            "lastTransitionTime": iso(now)
            if moved or old is None
            else str(old.get("lastTransitionTime") or iso(now)),
        }
    return [out[key] for key in sorted(out)]


def ready_condition(
    deployment: Mapping[str, Any] | None, replicas: int, generation: int
) -> tuple[Condition, int]:
    """``Ready`` from the Deployment's status, and the ready replica count."""
    if deployment is None:
        return Condition("Ready", "False", "DeploymentMissing", "no serving Deployment yet",
                         generation), 0
    ready = ready_count(deployment)
    if replicas == 0:
        return Condition("Ready", "False", "ScaledToZero", "spec.replicas is 0", generation), 0
    if ready >= replicas:
        message = f"{ready}/{replicas} serving replicas ready"
        return Condition("Ready", "True", "ReplicasReady", message, generation), ready
    message = f"{ready}/{replicas} serving replicas ready"
    return Condition("Ready", "False", "ReplicasNotReady", message, generation), ready


def ready_count(deployment: Mapping[str, Any]) -> int:
    """How many replicas of ``deployment`` are ready (0 when its status says nothing)."""
    return int((deployment.get("status") or {}).get("readyReplicas") or 0)


def pod_count(deployment: Mapping[str, Any] | None) -> int:
    """How many pods ``deployment`` has (its ``status.replicas``: what ``scale`` reports)."""
    if deployment is None:
        return 0
    return int((deployment.get("status") or {}).get("replicas") or 0)


def wanted_replicas(
    spec: ElasticModelSpec, deployment: Mapping[str, Any] | None,
    ownership: ReplicaOwnership | None,
) -> int:
    """How many replicas ``Ready`` waits for: ``spec.replicas`` while the spec owns the
    count, the Deployment's own count while an autoscaler or the joint policy does."""
    if ownership is None or ownership.owner == SPEC_OWNER:
        return spec.replicas
    live = live_replicas(deployment)
    return live if live is not None else spec.replicas


def readiness_drifted(
    status: Mapping[str, Any], spec: ElasticModelSpec, deployment: Mapping[str, Any],
    generation: int, ownership: ReplicaOwnership | None = None,
) -> bool:
    """Whether ``status.readyReplicas`` disagrees with the Deployment as last seen.

    Readiness is written on Deployment events, and only when it moved; a write that lost
    a race against an older one would otherwise stay wrong until the next rollout.
    """
    recorded = status.get("readyReplicas")
    if not isinstance(recorded, int):
        return False  # nothing reported yet: the reconcile's first write owns that
    _, expected = ready_condition(deployment, wanted_replicas(spec, deployment, ownership),
                                  generation)
    return recorded != expected


def inference_auth_condition(
    spec: ElasticModelSpec, key_secret: str, generation: int
) -> Condition:
    """``InferenceAuth``: how clients of the Service authenticate, and with what.

    Every replica's gateway checks the one key in the model's Secret, so a client holding it
    reaches every pod behind the Service (TorchServe's own per-server keys could not).
    """
    if not spec.serving.token_authorization:
        return Condition("InferenceAuth", "True", "Delegated",
                         "the serving pods check no key (spec.serving.tokenAuthorization: "
                         "Disabled): authenticate in front of the Service", generation)
    return Condition("InferenceAuth", "True", "SharedKey",
                     f"every replica accepts Authorization: Bearer <key> with the key in "
                     f"Secret {key_secret} (data key '{KEY_SECRET_ITEM}'); edit the Secret to "
                     f"rotate it, no restart", generation)


def effective_policy(
    spec: ElasticModelSpec, replicas: ReplicaPolicy | None = None
) -> dict[str, Any]:
    """``status.effectivePolicy``: what the policy runs with, and where each value came from.

    The CRD leaves the chart-defaulted fields unset, so the spec alone no longer says which
    objective, windows or batching a model has; this does (``kubectl get em`` prints the
    objective from here). ``sources`` maps each chart-defaulted field (spec-relative path) to
    ``spec`` or ``chartDefault``; the serving pods' resources and placement are listed there
    too, their values are in the Deployment. ``replicas``: the joint replica policy, listed
    (with the source of its ``podStartSeconds``) while it is enabled.
    """
    o, p, n, s = spec.objective, spec.policy, spec.node_pressure, spec.serving
    objective: dict[str, Any] = {"p95Ms": o.p95_ms}
    if o.latency_query is not None:
        objective["latencyQuery"] = o.latency_query
    if o.request_rate_query is not None:
        objective["requestRateQuery"] = o.request_rate_query
    values: dict[str, dict[str, Any]] = {
        "objective": objective,
        "policy": {
            "mode": p.mode.value,
            "loops": p.loops.value,
            "evaluationIntervalSeconds": p.evaluation_interval_s,
            "stableWindowSeconds": p.stable_window_s,
            "panicWindowSeconds": p.panic_window_s,
            "panicThreshold": p.panic_threshold,
            "tolerance": p.tolerance,
            "headroom": p.headroom,
            "widenStabilizationSeconds": p.widen_stabilization_s,
            "settleSeconds": p.settle_s,
            "staleAfterSeconds": p.stale_after_s,
        },
        "nodePressure": {
            "enabled": n.enabled,
            "cpuFraction": n.cpu_fraction,
            "memoryFraction": n.memory_fraction,
            "temperatureCelsius": n.temperature_c,
            "gpuLoadPercent": n.gpu_load_percent,
        },
        "serving": {
            "workers": s.workers,
            "batchSize": s.batch_size,
            "maxBatchDelayMs": s.max_batch_delay_ms,
        },
    }
    sources = {}
    for path in CHART_DEFAULTED:
        section, key = path.split(".")
        if key in values[section] or section == "serving":
            sources[path] = "chartDefault" if path in spec.defaulted else "spec"
    if replicas is not None and replicas.enabled:
        values["replicas"] = {
            "min": replicas.min_replicas,
            "max": replicas.max_replicas,
            "scaleUpStabilizationSeconds": replicas.scale_up_stabilization_s,
            "scaleDownStabilizationSeconds": replicas.scale_down_stabilization_s,
            "targetShareOfNarrowest": replicas.target_share_of_narrowest,
            "tolerance": replicas.tolerance,
            "widthShareOfObjective": replicas.width_share_of_objective,
            "guardShareOfObjective": replicas.guard_share_of_objective,
            "podStartSeconds": replicas.pod_start_s,
        }
        sources["policy.replicas.podStartSeconds"] = (
            "chartDefault" if replicas.pod_start_defaulted else "spec")
    return {**values, "sources": sources}


def reconcile_patch(
    status: Mapping[str, Any],
    generation: int,
    spec: ElasticModelSpec | None,
    deployment: Mapping[str, Any] | None,
    error: str | None,
    now: float,
    key_secret: str = "",
    reason: str | None = None,
    *,
    ownership: ReplicaOwnership | None = None,
    replica_policy: ReplicaPolicy | None = None,
    selector: str = "",
) -> dict[str, Any]:
    """Status after a reconcile; ``error`` (an invalid spec, a refused apply) -> Degraded.

    ``key_secret``: the name of the model's inference key Secret (``children.names_for``),
    written to ``inferenceKeySecret`` while the pods check it. ``reason``: the Degraded
    reason when it is not the default one (``PolicyViolation``: the spec asks for more than
    the operator allows; ``OwnershipConflict``: a child's name is held by an object the
    model does not control). ``ownership`` (``replica_owner.decide_ownership``):
    ``replicasOwner`` and the ``ReplicaOwnership`` condition; ``selector``: the serving
    pods' label selector (``status.selector``, read by an HPA through ``scale``).
    """
    replicas = wanted_replicas(spec, deployment, ownership) if spec is not None else 0
    ready, ready_count = ready_condition(deployment, replicas, generation)
    if error is not None:
        reason = reason or ("InvalidSpec" if spec is None else "ReconcileFailed")
        degraded = Condition("Degraded", "True", reason, error, generation)
    else:
        degraded = Condition("Degraded", "False", "Reconciled",
                             "children are in the desired state", generation)
    updates = [ready, degraded]
    if spec is not None:
        updates.append(inference_auth_condition(spec, key_secret, generation))
    if ownership is not None:
        updates.append(Condition(OWNERSHIP_CONDITION, ownership.status, ownership.reason,
                                 ownership.message, generation))
    patch: dict[str, Any] = {
        "observedGeneration": generation,
        "readyReplicas": ready_count,
        "replicas": pod_count(deployment),
        "conditions": merge_conditions(status.get("conditions") or [], updates, now),
    }
    if selector:
        patch["selector"] = selector
    if ownership is not None:
        patch["replicasOwner"] = ownership.owner
    if spec is not None:
        patch["effectivePolicy"] = effective_policy(spec, replica_policy)
        bounds = worker_bounds(spec)
        if bounds is not None:
            patch["workerBounds"] = bounds
        if spec.serving.token_authorization and key_secret:
            patch["inferenceKeySecret"] = key_secret
    return patch


def worker_bounds(spec: ElasticModelSpec) -> dict[str, Any] | None:
    """``status.workerBounds``: the floor and objective each worker picks its per-batch level
    against (the level agent copies them into the control file beside the ceiling), or
    ``None`` when ``spec.policy.loops`` leaves the level to the operator alone."""
    if not spec.policy.loops.worker_chooses:
        return None
    return {"floor": spec.levels.min_level, "objectiveMs": spec.objective.p95_ms}


RECONCILE_OPTIONAL = ("effectivePolicy", "inferenceKeySecret", "replicasOwner", "workerBounds")
"""Status fields ``reconcile_patch`` leaves out to remove them (an invalid spec has no
effective policy nor a known owner of its count; pods that check no key have no key Secret
to point to)."""


def restore_state(status: Mapping[str, Any], spec: ElasticModelSpec, now: float) -> PolicyState:
    """The policy state kept in the status, or a fresh one at the active level.

    A malformed or missing state (first evaluation, a version change) only delays the next
    widening by one stabilisation window: ``PolicyState.initial`` seeds that window.
    """
    raw = status.get("policyState")
    if isinstance(raw, Mapping):
        try:
            return PolicyState.from_dict(raw)
        except ValueError:
            pass
    active = status.get("activeLevel")
    level = active if isinstance(active, int) else spec.levels.initial_level
    return PolicyState.initial(level, now)


def restore_replica_state(
    status: Mapping[str, Any], replicas: int, now: float
) -> ReplicaState:
    """The joint policy's replica state kept in ``status.replicaState``, or a fresh one at
    ``replicas`` (the count it starts from: the Deployment's, or the spec's). A lost state
    only delays a scale-in by one stabilisation window (``ReplicaState.initial``)."""
    raw = status.get("replicaState")
    if isinstance(raw, Mapping):
        try:
            return ReplicaState.from_dict(raw)
        except ValueError:
            pass
    return ReplicaState.initial(replicas, now)


def replica_patch(
    status: Mapping[str, Any],
    count: ReplicaDecision,
    pod_start_measured: bool,
    now: float,
) -> dict[str, Any]:
    """The joint policy's part of an evaluation's status: ``desiredReplicas`` (the count
    written to the Deployment), its state, the decision (``podStartSeconds`` is the pod start
    time it used, ``Measured`` from the model's pods or the ``Default``), and the last scale,
    carried over from ``status`` unless this one scales."""
    decision: dict[str, Any] = {
        "cause": count.cause.value,
        "reason": count.reason,
        "podStartSeconds": round(count.horizon_s, 3),
        "podStartSource": "Measured" if pod_start_measured else "Default",
    }
    if count.forecast_rps is not None:
        decision["forecastRps"] = round(count.forecast_rps, 3)
    patch: dict[str, Any] = {
        "desiredReplicas": count.replicas,
        "replicaState": count.state.to_dict(),
        "replicaDecision": decision,
    }
    if count.changed:
        patch["lastScaleTime"] = iso(now)
        patch["lastScaleReason"] = count.reason
    else:
        for key in ("lastScaleTime", "lastScaleReason"):
            if status.get(key):
                patch[key] = status[key]
    return patch


def metrics_condition(
    decision: Decision, errors: Sequence[str], generation: int
) -> Condition:
    if decision.metrics_available:
        return Condition("MetricsAvailable", "True", "MetricsFresh",
                         "latency and request rate read from Prometheus", generation)
    message = decision.reason + ("; " + "; ".join(errors) if errors else "")
    return Condition("MetricsAvailable", "False", decision.cause.value, message, generation)


def evaluation_patch(
    status: Mapping[str, Any],
    generation: int,
    decision: Decision,
    observation: Observation,
    errors: Sequence[str],
    now: float,
    served_share: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Status after one policy evaluation; readings that are not usable are left out (and
    so removed), the last switch is carried over from ``status`` unless this one switches.
    ``served_share``: what the workers answered per level (``served_share.py``), when known."""
    p95 = observation.p95_s
    rate = observation.request_rate_rps
    patch: dict[str, Any] = {
        "activeLevel": decision.level,
        "desiredLevel": decision.level,
        "policyState": decision.state.to_dict(),
        "conditions": merge_conditions(
            status.get("conditions") or [], [metrics_condition(decision, errors, generation)], now
        ),
    }
    if served_share:
        patch["servedShare"] = dict(served_share)
    if decision.metrics_available and p95 is not None and rate is not None:
        patch["p95Ms"] = round(p95 * 1000.0, 3)
        patch["requestRate"] = round(rate, 3)
    if decision.changed:
        patch["lastSwitchTime"] = iso(now)
        patch["lastSwitchReason"] = decision.reason
    else:
        for key in ("lastSwitchTime", "lastSwitchReason"):
            if status.get(key):
                patch[key] = status[key]
    return patch


def status_holds(
    status: Mapping[str, Any], patch: Mapping[str, Any], optional: Sequence[str] = ()
) -> bool:
    """Whether ``status`` already says everything ``patch`` would apply.

    Then the apply would write nothing, but it would still cost a request, an admission, a
    merge and a watch event that kopf processes, on an API server that on an edge board
    shares the cores with us. Most policy evaluations (a steady level, or metrics missing)
    and every resume of an unchanged model are such no-ops.

    ``conditions`` is compared per ``type``: the status also holds the other field
    manager's conditions, which this patch neither sends nor removes. ``optional`` names
    fields the writer owns but leaves out to remove them: present in ``status`` but absent
    from ``patch`` means the apply would change something.
    """
    for key, value in patch.items():
        if key == "conditions":
            existing = {
                c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, Mapping)
            }
            if any(existing.get(c["type"]) != c for c in value):
                return False
        elif status.get(key) != value:
            return False
    return not any(key in status for key in optional if key not in patch)
