"""``spec.policy.replicas``: the knobs of the joint width-and-replicas policy.

Kept apart from ``spec.py`` on purpose: the replica policy is optional (off by default, the
operator then leaves ``spec.replicas`` alone and an HPA or KEDA object may own the count
through the ``scale`` subresource), and its parsing should not make the level policy's
mirror of the CRD any larger. The CRD and chart wiring mirror these fields; this module is
their Python reading, pure like ``spec.py``: ``parse_replica_policy(raw) -> ReplicaPolicy``
raises ``SpecError`` naming the offending field, it never touches the cluster.

The fields (``spec.policy.replicas``), with the defaults the API server would apply:

* ``enabled`` (false): the operator owns the replica count. Leave it off when an HPA or
  KEDA scales the model: two controllers writing one count fight.
* ``min`` (1), ``max`` (required when enabled, at most 1000 like ``spec.replicas``).
  No default for ``max``: it is a cost ceiling, so it is the user's to choose.
* ``scaleUpStabilizationSeconds`` (0): a scale-out for width (to widen back) must be
  recommended over this window, and never over less than the pod start time: a replica
  that arrives after the excess is gone buys nothing, while narrowing already holds the
  objective. Scale-outs for capacity (the narrowest level would not hold) never wait.
* ``scaleDownStabilizationSeconds`` (300): a scale-in takes the highest recommendation
  of this window (the HPA's rule), and waits until the model has been at its widest level
  for the level policy's ``widenStabilizationSeconds``.
* ``targetShareOfNarrowest`` (0.8): replicas are asked for at once when the request rate
  predicted one pod start ahead exceeds this share of the narrowest level's capacity on
  the replicas asked for: narrowing can no longer carry the load.
* ``tolerance`` (0.1): the HPA's band; no width scaling while the per-replica rate is
  within this fraction of the target.
* ``widthShareOfObjective`` (0.9): where replicas for width are sized. The top of the
  tolerance band is the per-replica rate at which the widest allowed level is predicted at
  this share of the p95 objective; the width target is that rate divided by
  ``1 + tolerance`` (the HPA's convention: a scale-out lands at the target, the load may
  rise by the tolerance before the next). Higher runs the fleet hotter: fewer replicas,
  more time served narrowed by ``guardShareOfObjective``. At 0.9 the target is about the
  HPA's default 80 % utilisation of the widest level's capacity for a one-worker replica.
* ``guardShareOfObjective`` (0.75): narrow ahead of a breach. When no replicas are wanted
  and the level served is predicted above this share of the objective at the rate per
  ready replica (moved forward by its recent rise), the model narrows at once and widens
  back as soon as the level policy recommends the wider level again. A rate() window
  lags the load by 10-20 s; below the width band's top this is what holds the objective
  through that lag at the cost of some accuracy, and what lets the fleet run hotter than
  an HPA's. 1.0 narrows only on a predicted breach.
* ``podStartSeconds`` (the operator's default, 60 unless the chart's
  ``policy.replicas.podStartSeconds`` says otherwise): the pod start time assumed until the
  model's own pods have been measured (creation to Ready); the measured value replaces it.
  The only *chart-defaulted* field here (``CHART_DEFAULTED_REPLICAS``: the CRD injects no
  default for it): how long a pod takes to start is a property of the cluster (image
  pulls, node provisioning), not of one model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .spec import SpecDefaults, SpecError, _Reader

__all__ = [
    "CHART_DEFAULTED_REPLICAS",
    "MAX_REPLICAS",
    "REPLICA_DEFAULTS",
    "ReplicaPolicy",
    "parse_replica_policy",
    "replica_policy_from_spec",
]

MAX_REPLICAS = 1000
"""Same ceiling as ``spec.replicas`` (``spec.py``)."""

REPLICA_DEFAULTS: Mapping[str, Any] = {
    "enabled": False,
    "min": 1,
    "scaleUpStabilizationSeconds": 0,
    "scaleDownStabilizationSeconds": 300,
    "targetShareOfNarrowest": 0.8,
    "tolerance": 0.1,
    "widthShareOfObjective": 0.9,
    "guardShareOfObjective": 0.75,
    "podStartSeconds": 60,
}
"""The built-in defaults of ``spec.policy.replicas``: the CRD's ``default:`` values, except
for ``CHART_DEFAULTED_REPLICAS`` (the operator's settings supply those; this is the chart's
own value). ``max`` has none and is required when ``enabled``."""

CHART_DEFAULTED_REPLICAS: tuple[str, ...] = ("podStartSeconds",)
"""Fields of ``spec.policy.replicas`` without a CRD default: a model that leaves them out
gets the operator's (``SpecDefaults.pod_start_s``, the chart's
``policy.replicas.podStartSeconds``)."""


@dataclass(frozen=True)
class ReplicaPolicy:
    """``spec.policy.replicas``, defaulted and validated (see the module docstring)."""

    enabled: bool = False
    min_replicas: int = 1
    max_replicas: int = MAX_REPLICAS
    """Only read when ``enabled``; required then."""
    scale_up_stabilization_s: int = 0
    scale_down_stabilization_s: int = 300
    target_share_of_narrowest: float = 0.8
    tolerance: float = 0.1
    pod_start_s: int = 60
    pod_start_defaulted: bool = True
    """Whether ``pod_start_s`` is the operator's default (the spec left it out)."""
    width_share_of_objective: float = 0.9
    guard_share_of_objective: float = 0.75

    def clamp(self, replicas: int) -> int:
        """``replicas`` within ``[min, max]``."""
        return min(max(replicas, self.min_replicas), self.max_replicas)


def parse_replica_policy(
    raw: object, path: str = "spec.policy.replicas", *,
    pod_start_s: int = REPLICA_DEFAULTS["podStartSeconds"],
) -> ReplicaPolicy:
    """Default and validate ``raw`` (the ``spec.policy.replicas`` object, or None).

    ``pod_start_s``: the operator's default for ``podStartSeconds`` (its settings). Raises
    ``SpecError`` with the field's path and a message worded like the CRD's rules.
    """
    if raw is None:
        return ReplicaPolicy(pod_start_s=pod_start_s)
    r = _Reader(raw, path)
    known = set(REPLICA_DEFAULTS) | {"max"}
    unknown = sorted(str(key) for key in r.raw if key not in known)
    if unknown:
        raise SpecError(r.at(unknown[0]), f"unknown field (known: {', '.join(sorted(known))})")
    enabled = r.boolean("enabled", REPLICA_DEFAULTS["enabled"])
    low = r.integer("min", REPLICA_DEFAULTS["min"], 1, MAX_REPLICAS)
    if enabled and not r.has("max"):
        raise SpecError(r.at("max"), "is required when enabled (it is the cost ceiling)")
    high = r.integer("max", MAX_REPLICAS, 1, MAX_REPLICAS)
    if low > high:
        raise SpecError(r.at("min"), f"min must be <= max, got min={low}, max={high}")
    return ReplicaPolicy(
        enabled=enabled,
        min_replicas=low,
        max_replicas=high,
        scale_up_stabilization_s=r.integer(
            "scaleUpStabilizationSeconds", REPLICA_DEFAULTS["scaleUpStabilizationSeconds"],
            0, 3600,
        ),
        scale_down_stabilization_s=r.integer(
            "scaleDownStabilizationSeconds", REPLICA_DEFAULTS["scaleDownStabilizationSeconds"],
            0, 3600,
        ),
        target_share_of_narrowest=r.number(
            "targetShareOfNarrowest", REPLICA_DEFAULTS["targetShareOfNarrowest"], 0.0, 1.0,
            lo_exclusive=True,
        ),
        tolerance=r.number("tolerance", REPLICA_DEFAULTS["tolerance"], 0.0, 0.5),
        width_share_of_objective=r.number(
            "widthShareOfObjective", REPLICA_DEFAULTS["widthShareOfObjective"], 0.0, 1.0,
            lo_exclusive=True,
        ),
        guard_share_of_objective=r.number(
            "guardShareOfObjective", REPLICA_DEFAULTS["guardShareOfObjective"], 0.0, 1.0,
            lo_exclusive=True,
        ),
        pod_start_s=r.integer("podStartSeconds", pod_start_s, 1, 3600),
        pod_start_defaulted=not r.has("podStartSeconds"),
    )


def replica_policy_from_spec(spec: object, defaults: SpecDefaults | None = None) -> ReplicaPolicy:
    """Read ``policy.replicas`` of a whole ``spec`` mapping (absent: the defaults, off);
    ``defaults`` are the operator's (``settings.spec_defaults``), for ``podStartSeconds``."""
    pod_start_s = (defaults or SpecDefaults()).pod_start_s
    if not isinstance(spec, Mapping):
        raise SpecError("spec", f"must be an object, got {type(spec).__name__}")
    policy = spec.get("policy")
    if policy is None:
        return ReplicaPolicy(pod_start_s=pod_start_s)
    if not isinstance(policy, Mapping):
        raise SpecError("spec.policy", f"must be an object, got {type(policy).__name__}")
    return parse_replica_policy(policy.get("replicas"), pod_start_s=pod_start_s)
