"""Who owns a model's replica count, and what the operator may write of it.

Three parties can set the count of a model's serving Deployment:

* **the spec** (``spec.replicas`` of the ElasticModel): the default. A person, ``kubectl
  scale elasticmodel``, or an HPA / KEDA ``ScaledObject`` that targets the *model* write it
  through the model's ``scale`` subresource; the operator copies it to the Deployment with
  its forced apply. When the model's own ``managedFields`` show that an autoscaler's field
  manager (one that is not ``kubectl``'s) owns ``spec.replicas`` through ``scale``
  (:func:`scale_writer`), ``status.replicasOwner`` names it (``autoscaler:<manager>``, reason
  ``AutoscalerOnModel``), and with the joint policy enabled too that is a conflict: two
  deciders of one count (the joint policy then acts on the width only, and the count follows
  the spec);
* **an autoscaler that targets the Deployment** itself: named by the annotation
  ``elastiserve.io/replicas-managed-by`` on the model, or found in the Deployment's
  ``managedFields``: a field manager other than the operator's owns its ``spec.replicas``
  (an HPA writes it through the Deployment's ``scale`` subresource as
  ``kube-controller-manager``, ``kubectl scale deployment`` as ``kubectl``);
* **the operator's joint policy** (``spec.policy.replicas.enabled``), which writes the
  count through the Deployment's ``scale`` subresource as ``SCALE_MANAGER``.

``decide_ownership`` reads the model (annotation, replica policy, ``spec.replicas``) and
the Deployment as last seen, and says who owns the count (``status.replicasOwner``:
``spec``, ``autoscaler:<manager>`` or ``operator-joint-policy``), whether the operator's
apply of the Deployment carries ``spec.replicas`` and with which value, and the
``ReplicaOwnership`` condition. The rules, in order:

1. The annotation: the named autoscaler owns the count; the apply leaves it out. With the
   joint policy enabled too, that is a conflict (condition ``False``/``ConflictingOwners``;
   the joint policy acts on the width only).
2. A foreign field manager owns the Deployment's ``spec.replicas``: yield to it (leave the
   count out; never force it) **until the model's ``spec.replicas`` changes**, which takes
   it back (the apply carries the new count once, forced). The Deployment carries the
   ``spec.replicas`` it was last reconciled against (``SPEC_REPLICAS_ANNOTATION``), so a
   change is seen after a restart too. With the joint policy enabled, a foreign owner is a
   conflict as in 1.
3. The joint policy: the apply carries the count only while the joint policy's own
   manager does not (yet) own it: the count it starts from at creation (the last
   ``status.desiredReplicas``, else ``spec.replicas`` clamped to ``[min, max]``), or the
   live one, unchanged, so that dropping the field from the apply never resets it to the
   Deployment's default of 1 (server-side apply deletes a field its only owner stops
   sending). Once ``SCALE_MANAGER`` owns it the apply leaves it out.
4. Otherwise the spec: the apply carries ``spec.replicas``, forced.

**Handing over.** Leaving ``spec.replicas`` out of an apply whose manager is its only
owner deletes it (the Deployment falls back to 1 replica). When rule 1 or 2 drops the
field while the operator's apply still solely owns it (the annotation was just added),
``hand_over`` says to first apply the live count, unchanged, through the ``scale``
subresource as ``SCALE_MANAGER`` (not forced: an autoscaler that changed it meanwhile
wins), which keeps the field owned.

Pure: no I/O; the callers pass the Deployment as the watch or an apply answer showed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .children import AUTOSCALER_ANNOTATION, SPEC_REPLICAS_ANNOTATION
from .kube import FIELD_MANAGER
from .replica_spec import ReplicaPolicy

__all__ = [
    "APPLY_MANAGER",
    "CONDITION",
    "JOINT_OWNER",
    "SCALE_MANAGER",
    "SPEC_OWNER",
    "ReplicaOwnership",
    "autoscaler_owner",
    "decide_ownership",
    "deployment_view",
    "foreign_managers",
    "live_replicas",
    "replicas_managers",
    "scale_entries",
    "scale_writer",
    "spec_replicas_seen",
]

APPLY_MANAGER = FIELD_MANAGER
"""The manager of the operator's forced apply of the whole Deployment."""
SCALE_MANAGER = "elastiserve-policy"
"""The manager of the operator's writes through the Deployment's ``scale`` subresource (the
joint policy's count, a hand-over). The same name as the policy loop's status writes."""
OURS = frozenset({APPLY_MANAGER, SCALE_MANAGER})

SPEC_OWNER = "spec"
JOINT_OWNER = "operator-joint-policy"
CONDITION = "ReplicaOwnership"
"""The condition type: ``True`` when exactly one party sets the count."""


def autoscaler_owner(manager: str) -> str:
    """``status.replicasOwner`` for an autoscaler (annotation value or field manager)."""
    return f"autoscaler:{manager}"


@dataclass(frozen=True)
class ReplicaOwnership:
    """Who owns the count, and what the operator's Deployment apply does with it."""

    owner: str
    """``status.replicasOwner``."""
    send: int | None
    """``spec.replicas`` for the Deployment's apply; ``None``: left out."""
    joint: bool
    """The joint policy acts on the count (the policy loop calls ``decide_joint``)."""
    status: str
    reason: str
    message: str
    """The ``ReplicaOwnership`` condition."""
    hand_over: int | None = None
    """Apply this count (the live one) through ``scale`` as ``SCALE_MANAGER`` before the
    Deployment's apply drops ``spec.replicas`` (see "Handing over")."""

    @property
    def conflict(self) -> bool:
        return self.status != "True"


def _replicas_owned(entry: Mapping[str, Any]) -> bool:
    fields = entry.get("fieldsV1")
    spec = fields.get("f:spec") if isinstance(fields, Mapping) else None
    return isinstance(spec, Mapping) and "f:replicas" in spec


def replicas_managers(deployment: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The field managers that own the Deployment's ``spec.replicas``, sorted, once each."""
    if deployment is None:
        return ()
    entries = (deployment.get("metadata") or {}).get("managedFields") or []
    return tuple(sorted({str(e.get("manager") or "") for e in entries
                         if isinstance(e, Mapping) and _replicas_owned(e)}))


def scale_entries(model: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The model's ``managedFields`` entries that own ``spec.replicas`` through ``scale``,
    cut to what :func:`scale_writer` reads: what the operator's in-memory copy of a model keeps
    of its (large) field records, so that a status refresh from a Deployment event names the
    same owner as the reconcile."""
    entries = (model.get("metadata") or {}).get("managedFields") or []
    return [{"manager": str(e.get("manager") or ""), "subresource": "scale",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}}
            for e in entries
            if isinstance(e, Mapping) and e.get("subresource") == "scale" and _replicas_owned(e)]


def scale_writer(model: Mapping[str, Any]) -> str:
    """The field manager that owns the model's ``spec.replicas`` through its ``scale``
    subresource, unless it is ``kubectl``'s (a person's ``kubectl scale``): an HPA (``kube-
    controller-manager``, also KEDA's HPA) or another autoscaler. "" when none."""
    entries = (model.get("metadata") or {}).get("managedFields") or []
    writers = sorted({str(e.get("manager") or "") for e in entries
                      if isinstance(e, Mapping) and e.get("subresource") == "scale"
                      and _replicas_owned(e)})
    return next((w for w in writers if w and not w.startswith("kubectl")), "")


def live_replicas(deployment: Mapping[str, Any] | None) -> int | None:
    """The Deployment's ``spec.replicas`` (``None``: unknown)."""
    if deployment is None:
        return None
    value = (deployment.get("spec") or {}).get("replicas")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def spec_replicas_seen(deployment: Mapping[str, Any] | None) -> int | None:
    """The model's ``spec.replicas`` that the Deployment was last applied against."""
    if deployment is None:
        return None
    raw = ((deployment.get("metadata") or {}).get("annotations") or {}).get(
        SPEC_REPLICAS_ANNOTATION)
    try:
        return int(str(raw)) if raw is not None else None
    except ValueError:
        return None


def deployment_view(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator keeps of a child Deployment: its status, its ``spec.replicas``, the
    ``managedFields`` entries that own that field and the annotation above (a few hundred
    bytes, instead of the whole object with its pod template)."""
    meta = deployment.get("metadata") or {}
    entries: list[dict[str, Any]] = [
        {"manager": e.get("manager"), "operation": e.get("operation"),
         "subresource": e.get("subresource"), "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        for e in meta.get("managedFields") or [] if isinstance(e, Mapping) and _replicas_owned(e)
    ]
    view: dict[str, Any] = {
        "metadata": {"namespace": meta.get("namespace"), "name": meta.get("name"),
                     "managedFields": entries},
        "status": dict(deployment.get("status") or {}),
    }
    replicas = live_replicas(deployment)
    if replicas is not None:
        view["spec"] = {"replicas": replicas}
    seen = ((meta.get("annotations") or {}).get(SPEC_REPLICAS_ANNOTATION))
    if seen is not None:
        view["metadata"]["annotations"] = {SPEC_REPLICAS_ANNOTATION: seen}
    return view


def _desired(raw: object) -> int | None:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0 else None


def decide_ownership(
    *,
    annotation: str,
    policy: ReplicaPolicy,
    spec_replicas: int,
    deployment: Mapping[str, Any] | None,
    desired: object = None,
    model_writer: str = "",
) -> ReplicaOwnership:
    """The rules of the module docstring. ``annotation``: the model's
    ``elastiserve.io/replicas-managed-by`` ("" when absent); ``deployment``: the serving
    Deployment as last seen (``None``: not known, about to be created); ``desired``: the
    model's ``status.desiredReplicas`` (the joint policy's last count); ``model_writer``: the
    autoscaler that writes the model's ``spec.replicas`` (:func:`scale_writer`, "" none)."""
    managers = replicas_managers(deployment)
    foreign = [m for m in managers if m not in OURS]
    live = live_replicas(deployment)
    seen = spec_replicas_seen(deployment)
    spec_changed = seen is not None and seen != spec_replicas
    sole = managers == (APPLY_MANAGER,)
    hand_over = live if sole else None
    if annotation:
        if policy.enabled:
            return ReplicaOwnership(
                autoscaler_owner(annotation), None, False, "False", "ConflictingOwners",
                f"spec.policy.replicas.enabled is true but the annotation "
                f"{AUTOSCALER_ANNOTATION}={annotation} gives the count to {annotation}: the "
                f"joint policy acts on the width only; remove the annotation or disable "
                f"spec.policy.replicas", hand_over)
        return ReplicaOwnership(
            autoscaler_owner(annotation), None, False, "True", "Autoscaler",
            f"{annotation} owns the serving Deployment's replicas (annotation "
            f"{AUTOSCALER_ANNOTATION}); the operator leaves them out of its apply", hand_over)
    if foreign and not spec_changed:
        holder = foreign[0]
        if policy.enabled:
            return ReplicaOwnership(
                autoscaler_owner(holder), None, False, "False", "ConflictingOwners",
                f"spec.policy.replicas.enabled is true but field manager {holder} set the "
                f"serving Deployment's replicas (an HPA or KEDA aimed at the Deployment?): the "
                f"joint policy holds the count and acts on the width only; remove that "
                f"autoscaler, then change spec.replicas to hand the count back")
        return ReplicaOwnership(
            autoscaler_owner(holder), None, False, "True", "Autoscaler",
            f"field manager {holder} set the serving Deployment's replicas: the operator "
            f"leaves them alone until this model's spec.replicas changes (kubectl scale "
            f"elasticmodel ... --replicas=N takes them back)")
    if policy.enabled and model_writer:
        return ReplicaOwnership(
            autoscaler_owner(model_writer), spec_replicas, False, "False", "ConflictingOwners",
            f"spec.policy.replicas.enabled is true but field manager {model_writer} (an HPA or "
            f"KEDA aimed at this model) writes spec.replicas through the scale subresource: "
            f"the count follows spec.replicas and the joint policy acts on the width only; "
            f"remove that autoscaler or disable spec.policy.replicas")
    if policy.enabled:
        if deployment is None:
            start = _desired(desired)
            send: int | None = policy.clamp(start if start is not None else spec_replicas)
        elif foreign:  # spec.replicas changed: taken back at the spec's count
            send = policy.clamp(spec_replicas)
        elif SCALE_MANAGER not in managers:
            send = live if live is not None else policy.clamp(spec_replicas)
        else:
            send = None
        return ReplicaOwnership(
            JOINT_OWNER, send, True, "True", "JointPolicy",
            f"the joint policy sets the count within [{policy.min_replicas}, "
            f"{policy.max_replicas}] (spec.policy.replicas)")
    if model_writer:
        return ReplicaOwnership(
            autoscaler_owner(model_writer), spec_replicas, False, "True", "AutoscalerOnModel",
            f"field manager {model_writer} (an HPA or KEDA aimed at this model) sets "
            f"spec.replicas ({spec_replicas}) through the scale subresource; the operator "
            f"copies it to the serving Deployment and never writes it back")
    return ReplicaOwnership(
        SPEC_OWNER, spec_replicas, False, "True", "Spec",
        f"spec.replicas ({spec_replicas}) sets the count; kubectl scale elasticmodel, an HPA "
        f"or KEDA aimed at this model write it through its scale subresource")


def foreign_managers(managers: Sequence[str]) -> tuple[str, ...]:
    """The managers (of a conflict, or of ``replicas_managers``) that are not the operator."""
    return tuple(m for m in managers if m not in OURS)
