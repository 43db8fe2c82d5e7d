"""The I/O half of the operator: read the world, call the pure parts, write the result.

``reconcile`` (kopf create/update/resume) ensures the children by server-side apply (and
creates the model's inference key Secret once: it is never applied, see ``children``) and
rebuilds the reconcile part of the status; ``refresh_ready`` does the latter when a child
Deployment changes; ``evaluate`` (the per-model policy loop) gathers an ``Observation``,
calls ``decide`` (``decide_joint`` when the joint replica policy owns the count) and applies
the policy part of the status, then posts an Event when the level or the count moved.
Everything pure lives in ``children``, ``status``, ``policy``, ``joint_policy``,
``replica_owner``, ``pod_start``; this module only sequences calls and maps failures onto
kopf's retry semantics:

* an invalid spec -> ``Degraded=True`` + ``kopf.PermanentError`` (retrying cannot fix it);
* a spec that asks for more than the operator's settings allow (``tenancy``) ->
  ``Degraded=True`` reason ``PolicyViolation``, a Warning event, no child at all, and
  ``kopf.PermanentError`` (an admin's settings change restarts the operator, which resumes);
* a child name held by an object this model does not control -> that object is left
  untouched, ``Degraded=True`` reason ``OwnershipConflict`` naming it, a Warning event, and
  a retry every minute (see "Ownership" below);
* API throttling/conflicts/outages -> ``kopf.TemporaryError`` (retry soon);
* any other refusal (missing RBAC) -> ``Degraded=True`` + ``TemporaryError`` with a long
  delay (someone has to fix the cluster, then the retry succeeds).

Ownership: a child is created only where its name is free, and written only while it
carries this model's controller reference. A child this process has not seen yet is applied
with ``kube.CREATE_ONLY`` (created, or 409 when the name is taken); on 409 it is read, and
applied (with its uid as a precondition) only when this model controls it. A child known to
be ours is applied with its uid as a precondition, so one deleted and re-created by someone
else meanwhile is read again instead of written. The Deployment waits for the other children
until they are all known to be ours (it names the ServiceAccount and mounts the ConfigMap),
and the RoleBinding and the Deployment are withheld while any child is foreign.

Crash safety: a level switch is one status apply (levels, policy state and last switch
together), so an operator killed mid-switch leaves either the old or the new state,
never half; the Event follows the apply and may be lost, never duplicated for one switch.

Replicas (``replica_owner``): the Deployment's apply carries ``spec.replicas`` only while
the spec (or, until its own writes own the field, the joint policy) owns the count; an
autoscaler's count is never forced. The joint policy's count is written status first
(``desiredReplicas`` and its state), then through the Deployment's ``scale`` subresource as
``SCALE_MANAGER``, not forced: a count another manager owns answers 409 and is left alone.
An operator killed between the two writes finds the Deployment behind its state and writes
it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from secrets import token_urlsafe
from typing import Any, cast

import kopf

from .applied import AppliedChildren, ChildOwners, controller_of, describe_controller, key_of
from .children import (
    API_VERSION,
    AUTOSCALER_ANNOTATION,
    KIND,
    MODEL_LABEL,
    Owner,
    build_children,
    build_deployment,
    build_key_secret,
    model_name,
    names_for,
)
from .grouped_queries import SharedQueries
from .joint_policy import (
    JointState,
    ReplicaDecision,
    ReplicaObservation,
    ReplicaState,
    decide_joint,
)
from .kube import (
    CREATE_ONLY,
    FIELD_MANAGER,
    ApiError,
    ApiTransient,
    KubeApi,
    NotFound,
    conflicting_managers,
    resource_path,
)
from .metrics import OperatorMetrics
from .node_caps import CapsDecision, caps_from_status, caps_status, decide_caps
from .observation import NodePressure
from .pod_start import pod_start_seconds
from .policy import Decision, decide
from .profile import profile_from_spec
from .promql_guard import QueryRefused
from .replica_owner import (
    CONDITION as OWNERSHIP_CONDITION,
)
from .replica_owner import (
    SCALE_MANAGER,
    ReplicaOwnership,
    decide_ownership,
    deployment_view,
    foreign_managers,
    live_replicas,
    replicas_managers,
    scale_writer,
)
from .replica_spec import ReplicaPolicy, replica_policy_from_spec
from .served_share import SERVED_SHARE_QUERY, read_served_shares, share_for_status
from .settings import OperatorSettings
from .shared_pods import SharedPods
from .signals.node_readings import NodeReadings, hosting_nodes
from .signals.prometheus import MetricsSource, VectorSource, gather_observation, render_query
from .spec import ElasticModelSpec, SpecError, parse_spec
from .status import (
    RECONCILE_OPTIONAL,
    evaluation_patch,
    readiness_drifted,
    ready_count,
    reconcile_patch,
    replica_patch,
    restore_replica_state,
    restore_state,
    status_holds,
)
from .status_memory import StatusMemory
from .tenancy import Violation, model_query
from .tenancy import check as check_tenancy

__all__ = [
    "POLICY_MANAGER",
    "OwnerLookup",
    "Runtime",
    "evaluate",
    "find_owner",
    "forget_model",
    "reconcile",
    "refresh_ready",
    "remember_deployment",
]

log = logging.getLogger(__name__)

POLICY_MANAGER = "elastiserve-policy"
"""Field manager of the policy's part of the status (the reconcile part uses the default)."""

NODE_CACHE_S = 5.0
"""How long node readings (Node objects, NodeMetrics, exporter series) are reused."""

KEY_BYTES = 32
"""Entropy of a generated inference key (``secrets.token_urlsafe``: 43 characters)."""

POD_START_REFRESH_S = 60.0
"""How long a model's measured pod start time is reused (one pod list per refresh; sooner
when the ready count moved: new pods are what there is to measure)."""


@dataclass(frozen=True)
class PodStartReading:
    """A model's pod start time as last measured (``None``: no Ready pod to measure)."""

    at: float
    ready: int | None
    seconds: float | None


@dataclass
class Runtime:
    """Per-process clients and caches, created at operator start (kopf ``memo``)."""

    api: KubeApi
    prometheus: MetricsSource
    settings: OperatorSettings
    metrics: OperatorMetrics
    applied: AppliedChildren = field(
        default_factory=lambda: AppliedChildren(manager=FIELD_MANAGER)
    )
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    nodes: NodeReadings | None = None
    owners: ChildOwners = field(
        default_factory=lambda: ChildOwners(kinds=frozenset({(API_VERSION, KIND)}))
    )
    key_secrets: set[tuple[str, str, str]] = field(default_factory=set)
    """(namespace, name, uid) of the models whose key Secret this process created or found:
    their reconciles send no create (it starts empty, so one 409 per model after a start)."""
    pod_starts: dict[tuple[str, str], PodStartReading] = field(default_factory=dict)
    """Per model: its pods' start time as last measured (``pod_start_s``)."""
    owner_conflicts: dict[tuple[str, str], str] = field(default_factory=dict)
    """Per model: the replica-owner conflict this process last posted a Warning for (the
    reconcile and the Deployment events see it in turn, with statuses of different ages)."""
    pods: SharedPods | None = None
    """The serving pods, one LIST per namespace shared by every model's evaluation."""
    statuses: StatusMemory = field(default_factory=StatusMemory)
    """The answers to this process's status writes that kopf's copies have not caught up
    with (``status_memory``): what an evaluation compares its patch with."""
    grouped: SharedQueries | None = None
    """The namespaces' grouped Prometheus answers (``grouped_queries``); by default over
    ``vectors`` (none without them)."""

    @property
    def vectors(self) -> VectorSource | None:
        """The Prometheus client's per-series queries, when it answers them (the real one
        does; a latency-only fake does not): node exporter series, served shares."""
        return (cast(VectorSource, self.prometheus)
                if hasattr(self.prometheus, "query_vector") else None)

    def __post_init__(self) -> None:
        if self.pods is None:
            self.pods = SharedPods(self.api, max_age_s=NODE_CACHE_S)
        if self.grouped is None and self.vectors is not None:
            self.grouped = SharedQueries(self.vectors)
        if self.nodes is None:
            # The exporter series come through the same Prometheus client when it can
            # answer per-series queries (the real one can; a latency-only fake cannot).
            vectors = self.vectors
            self.nodes = NodeReadings(self.api, vectors, self.settings.node_exporter,
                                      cache_s=NODE_CACHE_S)


def _owner(body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


def selector_for(owner: Owner) -> str:
    """The serving pods' label selector, as ``status.selector`` gives it to an HPA."""
    return f"{MODEL_LABEL}={names_for(owner.name).service}"


def ownership_of(
    body: Mapping[str, Any], spec: ElasticModelSpec, policy: ReplicaPolicy,
    deployment: Mapping[str, Any] | None,
) -> ReplicaOwnership:
    """``replica_owner.decide_ownership`` for ``body`` and its Deployment as last seen."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    return decide_ownership(
        annotation=str(annotations.get(AUTOSCALER_ANNOTATION) or ""),
        policy=policy,
        spec_replicas=spec.replicas,
        deployment=deployment,
        desired=(body.get("status") or {}).get("desiredReplicas"),
        model_writer=scale_writer(body),
    )


def _deployment_key(owner: Owner) -> tuple[str, str]:
    return (owner.namespace, names_for(owner.name).deployment)


@dataclass(frozen=True)
class Foreign:
    """A child's name is held by an object this model does not control."""

    kind: str
    name: str
    holder: str

    def __str__(self) -> str:
        return (f"{self.kind} {self.name} exists and is not this model's ({self.holder}): "
                "left untouched; delete or rename it")


def violations(rt: Runtime, owner: Owner, spec: ElasticModelSpec) -> tuple[Violation, ...]:
    """What ``spec`` asks for beyond the operator's allow-lists (``tenancy.check``)."""
    return check_tenancy(
        spec, namespace=owner.namespace, name=owner.name, model=model_name(owner, spec),
        policy=rt.settings.tenancy, default_image=rt.settings.serving_image,
        defaults=rt.settings.defaults.serving,
    )


def _writer(manager: str) -> str:
    return "policy" if manager == POLICY_MANAGER else "reconcile"


def _status_object(owner: Owner, status: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": owner.name, "namespace": owner.namespace},
        "status": dict(status),
    }


async def _apply_status(
    rt: Runtime, owner: Owner, status: Mapping[str, Any], manager: str = FIELD_MANAGER
) -> None:
    rt.metrics.status_writes.labels(_writer(manager)).inc()
    try:
        rt.statuses.wrote(await rt.api.apply(_status_object(owner, status), manager=manager,
                                             subresource="status"))
    except ApiTransient as error:
        rt.metrics.errors.labels("status").inc()
        raise kopf.TemporaryError(f"status update failed: {error}", delay=2) from error
    except ApiError as error:
        rt.metrics.errors.labels("status").inc()
        if error.status == 404:
            return  # deleted meanwhile: nothing to report on
        raise kopf.TemporaryError(f"status update refused: {error}", delay=30) from error


async def _deployment(rt: Runtime, owner: Owner) -> dict[str, Any] | None:
    path = resource_path("apps/v1", "Deployment", owner.namespace, names_for(owner.name).deployment)
    try:
        return await rt.api.get(path)
    except ApiError:
        return None


async def _ensure_key_secret(rt: Runtime, owner: Owner) -> None:
    """Create the model's inference key Secret unless it exists; never change an existing one.

    A plain create, not an apply: an apply would send a fresh key and replace the one the
    replicas and the clients hold. 409 means it exists (created earlier, or by the user to
    bring a key of their own), which is all this needs to know: the operator may create
    Secrets but not read them.
    """
    key = (owner.namespace, owner.name, owner.uid)
    if key in rt.key_secrets:
        return
    try:
        await rt.api.create(build_key_secret(owner, token_urlsafe(KEY_BYTES)))
    except ApiTransient as error:
        if error.status != 409:
            raise
    rt.key_secrets.add(key)


async def reconcile(rt: Runtime, body: Mapping[str, Any]) -> None:
    """Ensure the children of ``body`` and rebuild the reconcile part of its status.

    Only children that differ from what this process last applied (``AppliedChildren``)
    are sent; the rest were applied before and nobody has touched them since (the child
    watches would have said so). The status write goes out together with the first wave
    of children, written as if they will succeed, and only when it changes something
    (``status_holds``): a spec change costs one round trip whether or not it changes a
    child, a resume of an unchanged model none. A failed child (rare: RBAC, quota, an
    outage) costs a second status write that says ``Degraded``, and so does a Deployment
    whose apply reveals another readiness than the status assumed (after a restart).
    """
    started = time.perf_counter()
    owner = _owner(body)
    generation = int(body["metadata"].get("generation") or 0)
    status = body.get("status") or {}
    key_secret = names_for(owner.name).key_secret
    try:
        spec = parse_spec(body.get("spec"), rt.settings.spec_defaults)
        replica_policy = replica_policy_from_spec(body.get("spec"), rt.settings.spec_defaults)
    except SpecError as error:
        rt.metrics.errors.labels("spec").inc()
        await _apply_status(rt, owner, reconcile_patch(status, generation, None, None,
                                                       str(error), time.time(),
                                                       selector=selector_for(owner)))
        raise kopf.PermanentError(f"invalid spec: {error}") from error
    refused = violations(rt, owner, spec)
    if refused:
        rt.metrics.errors.labels("policy").inc()
        await _refuse(rt, body, spec, refused)
        raise kopf.PermanentError(f"policy violation: {'; '.join(map(str, refused))}")
    rt.metrics.objective.labels(owner.namespace, owner.name).set(spec.objective.p95_s)
    deployment_key = _deployment_key(owner)
    ownership = ownership_of(body, spec, replica_policy, rt.deployments.get(deployment_key))
    built = build_children(owner, spec, rt.settings, autoscaled=ownership.send is None,
                           replicas=ownership.send)
    children = [c for c in built if rt.applied.needs_apply(c)]
    seen_deployment = rt.deployments.get(deployment_key)
    if seen_deployment is None and any(c["kind"] == "Deployment" for c in children):
        seen_deployment = {"status": {}}  # about to be applied: a new one has nothing ready
    hopeful = reconcile_patch(status, generation, spec, seen_deployment, None, time.time(),
                              key_secret=key_secret, ownership=ownership,
                              replica_policy=replica_policy, selector=selector_for(owner))

    async def replan(live: Mapping[str, Any] | None) -> dict[str, Any]:
        """The Deployment to apply, decided again on the Deployment as it is now (read
        after a 409, or as last seen), after handing the count over where it is to be
        dropped (``replica_owner``)."""
        if live is not None:
            remember_deployment(rt, live)
        elif deployment_key not in rt.deployments:
            found = await _deployment(rt, owner)
            if found is not None:
                remember_deployment(rt, found)
        plan = ownership_of(body, spec, replica_policy, rt.deployments.get(deployment_key))
        if plan.hand_over is not None:
            await _hand_over(rt, owner, plan.hand_over)
        return build_deployment(owner, spec, rt.settings, autoscaled=plan.send is None,
                                replicas=plan.send)

    status_write = None
    if not status_holds(status, hopeful, RECONCILE_OPTIONAL):
        status_write = asyncio.ensure_future(_apply_status(rt, owner, hopeful))
    # Alongside the first wave: a pod that starts before the Secret exists waits for its
    # volume (the kubelet retries the mount), which costs less than a sequential round trip.
    key_write = (asyncio.ensure_future(_ensure_key_secret(rt, owner))
                 if spec.serving.token_authorization else None)
    # Two waves: a RoleBinding is checked against its Role (the API server refuses to bind
    # a Role it cannot find), so the Role goes first; within a wave, requests overlap. The
    # Deployment goes first only when every other child is known to be this model's (it
    # would otherwise run pods with an account or a ConfigMap someone else holds).
    deps_known = all(rt.owners.ours(key_of(c), owner.uid) is not None
                     for c in built if c["kind"] != "Deployment")
    late = {"RoleBinding"} if deps_known else {"RoleBinding", "Deployment"}
    first = [c for c in children if c["kind"] not in late]
    second = [c for c in children if c["kind"] in late]
    outcomes: list[Any] = []
    waves_ms: list[float] = []
    try:
        for wave in (first, second):
            if not wave or any(isinstance(o, Foreign) for o in outcomes):
                continue  # a foreign child: nothing that would depend on it is applied
            wave_started = time.perf_counter()
            outcomes += await asyncio.gather(
                *(_ensure_child(rt, owner, child,
                                replan if child["kind"] == "Deployment" else None)
                  for child in wave), return_exceptions=True
            )
            waves_ms.append((time.perf_counter() - wave_started) * 1000.0)
    except BaseException:  # cancelled (kopf stopping): do not leave the writes behind
        for pending in (status_write, key_write):
            if pending is not None:
                pending.cancel()
        raise
    key_outcomes: list[Any] = []
    if key_write is not None:
        key_outcomes += await asyncio.gather(key_write, return_exceptions=True)
    status_error: BaseException | None = None
    if status_write is not None:
        try:
            await status_write
        except kopf.TemporaryError as error:
            status_error = error
    rt.metrics.applies.inc(len(outcomes))
    rt.metrics.skipped_applies.inc(len(built) - len(outcomes))
    failures = [o for o in [*outcomes, *key_outcomes] if isinstance(o, BaseException)]
    for failure in failures:
        if not isinstance(failure, ApiError):
            raise failure
    foreign = [o for o in outcomes if isinstance(o, Foreign)]
    problem = "; ".join(str(f) for f in [*foreign, *failures]) or None
    reason = "OwnershipConflict" if foreign and not failures else None
    # The hopeful status took readiness from the Deployment as last seen (or as a new one).
    # Its apply may have told otherwise (the first apply after a restart, before the
    # Deployment watch listed it, finds ready replicas): then, and after a failure, one
    # more write corrects it.
    seen = {**status, **hopeful} if status_write is not None else dict(status)
    deployment_now = rt.deployments.get(deployment_key)
    final = reconcile_patch(seen, generation, spec, deployment_now, problem, time.time(),
                            key_secret=key_secret, reason=reason,
                            ownership=ownership_of(body, spec, replica_policy, deployment_now),
                            replica_policy=replica_policy, selector=selector_for(owner))
    corrected = problem is not None or not status_holds(seen, final, RECONCILE_OPTIONAL)
    if corrected:
        await _apply_status(rt, owner, final)
    elif status_error is not None:
        raise status_error
    if foreign and _degraded_changed(status, final):
        await post_event(rt, body, "OwnershipConflict", problem or "", kind="Warning")
    await _report_owner_conflict(rt, body, status, final)
    elapsed = time.perf_counter() - started
    rt.metrics.reconcile.observe(elapsed)
    log.info("reconciled %s/%s in %.1f ms: %d of %d children applied (waves %s ms), status %s",
             owner.namespace, owner.name, elapsed * 1000.0, len(outcomes), len(built),
             "/".join(f"{w:.1f}" for w in waves_ms) or "-",
             "corrected" if corrected else "written" if status_write is not None
             else "unchanged")
    if failures:
        rt.metrics.errors.labels("apply").inc()
        transient = all(isinstance(f, ApiTransient | NotFound) for f in failures)
        raise kopf.TemporaryError(f"applying children failed: {problem}",
                                  delay=2 if transient else 30)
    if foreign:
        rt.metrics.errors.labels("ownership").inc()
        raise kopf.TemporaryError(f"children held by others: {problem}",
                                  delay=rt.settings.ownership_retry_s)


def _condition_changed(
    status: Mapping[str, Any], patch: Mapping[str, Any], kind: str = "Degraded"
) -> bool:
    """Whether ``patch``'s condition ``kind`` says something ``status``'s did not (one
    Warning event per new verdict, not one per retry)."""
    def said(conditions: Any) -> tuple[Any, ...]:
        for c in conditions or []:
            if isinstance(c, Mapping) and c.get("type") == kind:
                return (c.get("status"), c.get("reason"), c.get("message"))
        return ()
    return said(status.get("conditions")) != said(patch.get("conditions"))


def _degraded_changed(status: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    return _condition_changed(status, patch, "Degraded")


async def _report_owner_conflict(
    rt: Runtime, body: Mapping[str, Any], status: Mapping[str, Any], patch: Mapping[str, Any]
) -> None:
    """A Warning event when the ``ReplicaOwnership`` condition newly says two parties
    want the count (the joint policy and an autoscaler): once per verdict, whichever of the
    reconcile and the Deployment events writes it first."""
    owner = _owner(body)
    key = (owner.namespace, owner.name)
    for condition in patch.get("conditions") or []:
        if condition.get("type") != OWNERSHIP_CONDITION:
            continue
        if condition.get("status") != "False":
            rt.owner_conflicts.pop(key, None)
            return
        message = str(condition.get("message"))
        if (rt.owner_conflicts.get(key) != message
                and _condition_changed(status, patch, OWNERSHIP_CONDITION)):
            rt.owner_conflicts[key] = message
            await post_event(rt, body, str(condition.get("reason")), message, kind="Warning")


async def _refuse(
    rt: Runtime, body: Mapping[str, Any], spec: ElasticModelSpec,
    refused: tuple[Violation, ...],
) -> None:
    """Report a spec the operator's settings do not allow; no child is touched."""
    owner = _owner(body)
    status = body.get("status") or {}
    generation = int(body["metadata"].get("generation") or 0)
    message = "not applied: " + "; ".join(str(v) for v in refused)
    deployment = rt.deployments.get((owner.namespace, names_for(owner.name).deployment))
    patch = reconcile_patch(status, generation, spec, deployment, message, time.time(),
                            reason="PolicyViolation", selector=selector_for(owner))
    # No key was handed out for a model that is not served: no InferenceAuth to claim.
    patch["conditions"] = [c for c in patch["conditions"] if c["type"] != "InferenceAuth"]
    log.warning("%s/%s refused: %s", owner.namespace, owner.name, message)
    if not status_holds(status, patch, RECONCILE_OPTIONAL):
        await _apply_status(rt, owner, patch)
    if _degraded_changed(status, patch):
        await post_event(rt, body, "PolicyViolation", message, kind="Warning")


def _with_meta(child: Mapping[str, Any], **extra: str) -> dict[str, Any]:
    return {**child, "metadata": {**child["metadata"], **extra}}


def _child_path(child: Mapping[str, Any]) -> str:
    meta = child["metadata"]
    return resource_path(child["apiVersion"], child["kind"], meta["namespace"], meta["name"])


Replan = Callable[[Mapping[str, Any] | None], Awaitable[Mapping[str, Any]]]
"""Builds a child again for the object as it is now (read live, or ``None``: as last seen),
just before it is written to an existing object (the Deployment's replica count)."""


async def _ensure_child(
    rt: Runtime, owner: Owner, child: Mapping[str, Any], replan: Replan | None = None
) -> dict[str, Any] | Foreign:
    """Apply one child where this model controls it (see "Ownership" in the module
    docstring); a foreign holder of its name comes back as ``Foreign``, untouched. A failed
    apply is forgotten (retried next time)."""
    key = key_of(child)
    rt.applied.started(child)
    try:
        response, written = await _write_child(rt, owner, child, replan)
    except BaseException:
        rt.applied.forget(key)
        raise
    if isinstance(response, Foreign):
        rt.applied.forget(key)
        return response
    rt.owners.saw(response)
    rt.applied.applied(written, response)
    if child["kind"] == "Deployment":
        remember_deployment(rt, response)
    return response


async def _write_child(
    rt: Runtime, owner: Owner, child: Mapping[str, Any], replan: Replan | None = None
) -> tuple[dict[str, Any] | Foreign, Mapping[str, Any]]:
    """The answer, and the child as written (``replan`` may have changed it)."""
    key = key_of(child)
    uid = rt.owners.ours(key, owner.uid)
    if uid is not None:
        if replan is not None:
            child = await replan(None)
        try:
            return await rt.api.apply(_with_meta(child, uid=uid)), child
        except ApiError as error:
            if error.status not in (409, 422):
                raise
            rt.owners.forget(key)  # gone (409) or replaced (422) since: look again
    try:
        return await rt.api.apply(_with_meta(child, resourceVersion=CREATE_ONLY)), child
    except ApiTransient as error:
        if error.status != 409:
            raise
    live = await rt.api.get(_child_path(child))
    if live is None:
        raise ApiTransient(409, f"{child['kind']} {key[2]} changed while being created")
    ref = controller_of(live)
    if ref is None or (ref.get("apiVersion"), ref.get("kind"), ref.get("uid")) != (
            API_VERSION, KIND, owner.uid):
        rt.owners.forget(key)
        return Foreign(str(child["kind"]), key[2], describe_controller(live)), child
    if replan is not None:
        child = await replan(live)
    live_uid = str((live.get("metadata") or {}).get("uid") or "")
    return await rt.api.apply(_with_meta(child, uid=live_uid)), child


async def _hand_over(rt: Runtime, owner: Owner, replicas: int) -> None:
    """Apply the live count, unchanged, through the Deployment's ``scale`` subresource as
    ``SCALE_MANAGER`` (not forced), so that the Deployment's apply can drop ``spec.replicas``
    without deleting it (``replica_owner``: "Handing over"). A 409 means another manager
    changed it meanwhile: it owns the field, which is as good."""
    try:
        await _scale(rt, owner, replicas, retry_ours=False)
    except ApiTransient as error:
        if error.status != 409:
            raise


def remember_deployment(rt: Runtime, deployment: Mapping[str, Any]) -> None:
    """Keep the part of a child Deployment that ``Ready`` and the replica owner are built
    from (its status, its count, who owns the count: ``replica_owner.deployment_view``).

    Fed by apply responses and by the Deployment watch, so a reconcile that skips the
    Deployment still reports its current readiness without reading it.
    """
    meta = deployment.get("metadata") or {}
    key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    rt.deployments[key] = deployment_view(deployment)


def forget_model(rt: Runtime, namespace: str, name: str) -> None:
    """The ``ElasticModel`` is gone: drop what is remembered about its children."""
    names = names_for(name)
    children = {names.deployment, names.service, names.configmap, names.account,
                names.network_policy}
    rt.applied.forget_owner(namespace, children)
    rt.owners.forget_owner(namespace, children)
    rt.deployments.pop((namespace, names.deployment), None)
    rt.key_secrets -= {k for k in rt.key_secrets if k[:2] == (namespace, name)}
    rt.pod_starts.pop((namespace, name), None)
    rt.statuses.forget(namespace, name)
    rt.owner_conflicts.pop((namespace, name), None)
    if rt.pods is not None and not any(ns == namespace for ns, _ in rt.deployments):
        # The namespace's last model we know of: stop its pod watch (a model still there
        # but not yet seen only costs one listing on its next read).
        rt.pods.forget(namespace)


OwnerLookup = Callable[[str, str], Mapping[str, Any] | None]
"""(namespace, name) -> the ``ElasticModel`` as the operator's watch last saw it, or None."""


async def find_owner(
    rt: Runtime, child: Mapping[str, Any], known: OwnerLookup | None = None
) -> Mapping[str, Any] | None:
    """The live ``ElasticModel`` that owns ``child`` (same uid), or None.

    ``known`` is the operator's in-memory view (a kopf index fed by the watch it keeps
    anyway): a child event then costs no GET. Only a miss (not indexed yet, or another uid:
    deleted and re-created) reads the API server.
    """
    meta = child.get("metadata") or {}
    refs = [
        ref for ref in meta.get("ownerReferences") or []
        if ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION
    ]
    if not refs:
        return None
    namespace, ref = str(meta.get("namespace") or ""), refs[0]
    body = known(namespace, str(ref["name"])) if known is not None else None
    if body is None or (body.get("metadata") or {}).get("uid") != ref.get("uid"):
        body = await rt.api.get(resource_path(API_VERSION, KIND, namespace, ref["name"]))
    if body is None or body["metadata"].get("uid") != ref.get("uid"):
        return None
    if body["metadata"].get("deletionTimestamp"):
        return None
    return body


async def refresh_ready(
    rt: Runtime, deployment: Mapping[str, Any], known: OwnerLookup | None = None
) -> None:
    """A child Deployment changed: rebuild ``readyReplicas``/``Ready`` of its owner."""
    body = await find_owner(rt, deployment, known)
    if body is None:
        return
    try:
        spec = parse_spec(body.get("spec"), rt.settings.spec_defaults)
        policy = replica_policy_from_spec(body.get("spec"), rt.settings.spec_defaults)
    except SpecError:
        return  # the reconcile handler owns the InvalidSpec report
    await _write_ready(rt, body, spec, policy, deployment)


async def _write_ready(
    rt: Runtime, body: Mapping[str, Any], spec: ElasticModelSpec, policy: ReplicaPolicy,
    deployment: Mapping[str, Any], tries: int = 3,
) -> dict[str, Any]:
    """Rebuild and apply the reconcile part of the status from ``deployment`` (the last
    reconcile's Degraded verdict kept); returns what it says (not written when the status
    says it already)."""
    owner = _owner(body)
    status = body.get("status") or {}
    patch = reconcile_patch(status, int(body["metadata"].get("generation") or 0), spec,
                            deployment, None, time.time(),
                            key_secret=names_for(owner.name).key_secret,
                            ownership=ownership_of(body, spec, policy, deployment),
                            replica_policy=policy, selector=selector_for(owner))
    # Keep the Degraded verdict of the last reconcile: a Deployment event knows nothing of it.
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Degraded":
            patch["conditions"] = [
                c if c["type"] != "Degraded" else dict(condition) for c in patch["conditions"]
            ]
    if not status_holds(status, patch, RECONCILE_OPTIONAL):
        version = (body.get("metadata") or {}).get("resourceVersion") if tries > 1 else None
        if not await _apply_status_at(rt, owner, patch, version):
            # The model changed since the copy this was built from (a reconcile's status
            # write, with a newer Degraded verdict, landed meanwhile): once more from the
            # live object, so a stale copy never overwrites a newer verdict.
            live = await _model(rt, owner)
            if live is None:
                return patch
            return await _write_ready(rt, live, spec, policy, deployment, tries - 1)
        await _report_owner_conflict(rt, body, status, patch)
    return patch


async def _apply_status_at(
    rt: Runtime, owner: Owner, status: Mapping[str, Any], version: object
) -> bool:
    """Apply the reconcile part of the status only if the model is still at ``version``
    (a server-side apply precondition); ``False`` when it moved on (409). Without a version
    (a copy that never had one) the apply is unconditional."""
    if not isinstance(version, str) or not version:
        await _apply_status(rt, owner, status)
        return True
    body = _status_object(owner, status)
    body["metadata"]["resourceVersion"] = version
    rt.metrics.status_writes.labels(_writer(FIELD_MANAGER)).inc()
    try:
        rt.statuses.wrote(await rt.api.apply(body, subresource="status"))
    except ApiTransient as error:
        if error.status == 409:
            return False
        rt.metrics.errors.labels("status").inc()
        raise kopf.TemporaryError(f"status update failed: {error}", delay=2) from error
    except ApiError as error:
        rt.metrics.errors.labels("status").inc()
        if error.status == 404:
            return True  # deleted meanwhile: nothing to report on
        raise kopf.TemporaryError(f"status update refused: {error}", delay=30) from error
    return True


async def _model(rt: Runtime, owner: Owner) -> dict[str, Any] | None:
    """The live ElasticModel (``None`` once it is gone)."""
    try:
        return await rt.api.get(resource_path(API_VERSION, KIND, owner.namespace, owner.name))
    except NotFound:
        return None


async def _node_readings(rt: Runtime, owner: Owner) -> dict[str, NodePressure]:
    """One reading per node that runs this model's pods (cached a few seconds)."""
    assert rt.nodes is not None and rt.pods is not None
    pods = await rt.pods.of_model(owner.namespace, names_for(owner.name).service)
    return await rt.nodes.read(hosting_nodes(pods))


async def _report_caps(rt: Runtime, body: Mapping[str, Any], caps: CapsDecision) -> None:
    """Metrics, a log line and an Event per cap that moved (after the status says so)."""
    owner = _owner(body)
    rt.metrics.set_node_caps(owner.namespace, owner.name, caps.levels())
    for change in caps.changes:
        direction = "narrow" if change.narrowed else "widen"
        rt.metrics.node_cap_changes.labels(owner.namespace, owner.name, direction).inc()
        log.info("%s/%s: %s", owner.namespace, owner.name, change.reason)
        await post_event(rt, body, change.event_reason, change.reason)


async def evaluate(rt: Runtime, body: Mapping[str, Any]) -> Decision | None:
    """One policy evaluation for ``body`` (kopf's live view of the CR)."""
    started = time.perf_counter()
    owner = _owner(body)
    try:
        spec = parse_spec(body.get("spec"), rt.settings.spec_defaults)
        replica_policy = replica_policy_from_spec(body.get("spec"), rt.settings.spec_defaults)
    except SpecError:
        return None  # reported by the reconcile handler as Degraded
    if violations(rt, owner, spec):
        return None  # refused (PolicyViolation): not served, and its queries are not run
    # kopf's copy, or the answer to the last status write when that is newer (kopf's copy
    # lags when the loop does: ``status_memory``).
    status = rt.statuses.status_of(body)
    stale_copy = status is not body.get("status") and bool(status)
    now = time.time()
    generation = int(body["metadata"].get("generation") or 0)
    remembered = rt.deployments.get(_deployment_key(owner))
    ownership = ownership_of(body, spec, replica_policy, remembered)
    if remembered is not None and readiness_drifted(status, spec, remembered, generation,
                                                    ownership):
        # Two status writes of one manager raced (a reconcile's correction and a Deployment
        # event's refresh) and the older one landed last: no further Deployment event
        # would fix it, so the loop does.
        rt.metrics.ready_corrections.inc()
        log.info("%s/%s: readyReplicas %s in status, %d in the Deployment: corrected",
                 owner.namespace, owner.name, status.get("readyReplicas"),
                 ready_count(remembered))
        status = {**status, **await _write_ready(rt, body, spec, replica_policy, remembered)}
    state = restore_state(status, spec, now)
    ready = status.get("readyReplicas")
    readings = None  # unknown: every cap holds
    if rt.settings.node_pressure and spec.node_pressure.enabled and ready:
        try:
            readings = await _node_readings(rt, owner)
        except ApiError as error:
            rt.metrics.errors.labels("nodes").inc()
            log.warning("node pressure of %s/%s unavailable: %s", owner.namespace, owner.name,
                        error)
    # Caps first: a hot node narrows its own replicas; only when every hosting node is hot
    # does the pressure reach the model-wide policy (``node_caps``).
    caps = decide_caps(readings, spec, state.level, caps_from_status(status, now), now,
                       enabled=rt.settings.node_pressure)
    node = caps.model_pressure
    try:
        latency, rate = _model_queries(rt, owner, spec)
    except QueryRefused:
        return None  # cannot happen once ``violations`` passed; never run it unconfined
    share_q = render_query(SERVED_SHARE_QUERY, namespace=owner.namespace, name=owner.name,
                           model=model_name(owner, spec))
    source, vectors = _model_source(rt, owner, spec,
                                    (latency, rate, (share_q, SERVED_SHARE_QUERY)))
    # What the workers served is read beside the latency (one more query, run concurrently).
    gathered, shares = await asyncio.gather(
        gather_observation(
            source, latency[0], rate[0], node=node,
            ready_replicas=int(ready) if isinstance(ready, int) and ready > 0 else None,
        ),
        read_served_shares(vectors, share_q),
    )
    if gathered.errors:
        rt.metrics.errors.labels("prometheus").inc()
    profile = profile_from_spec(spec.model.profile)
    count: ReplicaDecision | None = None
    if ownership.joint:
        ready_now = int(ready) if isinstance(ready, int) and ready >= 0 else None
        pod_start = await _pod_start(rt, owner, ready_now, now)
        joint = decide_joint(
            gathered.observation, ReplicaObservation(ready_now, pod_start), spec,
            replica_policy, profile,
            JointState(state, _replica_state(status, replica_policy, spec, remembered, now)),
            now)
        decision, count = joint.level, joint.replicas
    else:
        decision = decide(gathered.observation, spec, profile, state, now)
        pod_start = None
    rt.metrics.set_served_share(owner.namespace, owner.name, shares)
    patch = evaluation_patch(status, generation, decision, gathered.observation,
                             gathered.errors, now,
                             share_for_status(status.get("servedShare"), shares))
    patch.update(caps_status(caps))
    if count is not None:
        patch.update(replica_patch(status, count, pod_start is not None, now))
    if (decision.changed or (count is not None and count.changed)
            or not status_holds(status, patch, POLICY_OPTIONAL)):
        await _apply_status(rt, owner, patch, POLICY_MANAGER)
    else:
        rt.metrics.status_writes_skipped.labels("stale_copy" if stale_copy else "holds").inc()
    if count is not None:
        await _apply_count(rt, body, count, remembered)
    else:
        rt.metrics.forget_replicas(owner.namespace, owner.name)
    rt.metrics.decisions.labels(decision.cause.value).inc()
    rt.metrics.level.labels(owner.namespace, owner.name).set(decision.level)
    rt.metrics.evaluation.observe(time.perf_counter() - started)
    if decision.changed:
        direction = "narrow" if decision.level < decision.previous_level else "widen"
        rt.metrics.switches.labels(owner.namespace, owner.name, direction).inc()
        log.info("%s/%s: level %d -> %d: %s", owner.namespace, owner.name,
                 decision.previous_level, decision.level, decision.reason)
        await post_event(rt, body, decision.cause.value, decision.reason)
    await _report_caps(rt, body, caps)
    return decision


def model_queries(rt: Runtime, owner: Owner, spec: ElasticModelSpec) -> tuple[str, str]:
    """The latency and rate queries to run for this model, rendered.

    The operator's own (the chart's, when the spec leaves them out) run as the admin wrote
    them; a query the spec supplies goes through ``tenancy.model_query`` (confined to the
    model's namespace, or refused).
    """
    (latency, _), (rate, _) = _model_queries(rt, owner, spec)
    return latency, rate


def _model_queries(
    rt: Runtime, owner: Owner, spec: ElasticModelSpec
) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """``model_queries``, each with the operator's template it was rendered from (``None``
    for a query of the spec's own: those are never grouped)."""
    model = model_name(owner, spec)
    fill = {"namespace": owner.namespace, "name": owner.name, "model": model}
    out: list[tuple[str, str | None]] = []
    for path, own, default in (
        ("objective.latencyQuery", spec.objective.latency_query, rt.settings.latency_query),
        ("objective.requestRateQuery", spec.objective.request_rate_query,
         rt.settings.rate_query),
    ):
        if own is None or path in spec.defaulted:
            template = own or default
            out.append((render_query(template, **fill), template))
        else:
            out.append((model_query(own, policy=rt.settings.tenancy, **fill), None))
    return out[0], out[1]


def _model_source(
    rt: Runtime, owner: Owner, spec: ElasticModelSpec,
    queries: Sequence[tuple[str, str | None]],
) -> tuple[MetricsSource, VectorSource | None]:
    """Where this model's queries go: through the namespace's grouped answers
    (``grouped_queries``) for the operator's own templates, straight to Prometheus for
    the rest; without a grouping source (a latency-only fake), straight."""
    if rt.grouped is None:
        return rt.prometheus, rt.vectors
    source = rt.grouped.for_model(
        rt.prometheus, rt.vectors, namespace=owner.namespace, model=model_name(owner, spec),
        templates={rendered: template for rendered, template in queries
                   if template is not None})
    return source, source


POLICY_OPTIONAL = ("p95Ms", "requestRate", "servedShare", "lastSwitchTime", "lastSwitchReason",
                   "nodeCaps", "nodeCapState", "desiredReplicas", "replicaState", "replicaDecision",
                   "lastScaleTime", "lastScaleReason")
"""Status fields the policy's apply leaves out to remove them (see ``evaluation_patch``; the
replica fields go when the joint policy does not own the count)."""


def _replica_state(
    status: Mapping[str, Any], policy: ReplicaPolicy, spec: ElasticModelSpec,
    deployment: Mapping[str, Any] | None, now: float,
) -> ReplicaState:
    """The joint policy's replica state: the one in the status, except that a count the
    joint policy's own writes do not own (set at creation, or taken back by a change of
    ``spec.replicas``: ``replica_owner``) is where it starts from. A count its writes own
    but that differs from the state is the state's to restore (an operator killed between
    the status write and the scale write)."""
    live = live_replicas(deployment)
    state = restore_replica_state(status, live if live is not None
                                  else policy.clamp(spec.replicas), now)
    if live is not None and SCALE_MANAGER not in replicas_managers(deployment):
        state = dataclasses.replace(state, replicas=live)
    return state


async def _apply_count(
    rt: Runtime, body: Mapping[str, Any], count: ReplicaDecision,
    deployment: Mapping[str, Any] | None,
) -> None:
    """Write the joint policy's count to the Deployment (after the status said it), and
    report a change: a gauge, a counter, a log line and an Event."""
    owner = _owner(body)
    rt.metrics.desired_replicas.labels(owner.namespace, owner.name).set(count.replicas)
    rt.metrics.pod_start.labels(owner.namespace, owner.name).set(count.horizon_s)
    live = live_replicas(deployment)
    if deployment is not None and (live != count.replicas
                                   or SCALE_MANAGER not in replicas_managers(deployment)):
        try:
            await _scale(rt, owner, count.replicas)
        except ApiError as error:
            rt.metrics.errors.labels("scale").inc()
            log.warning("%s/%s: replicas %d not written: %s", owner.namespace, owner.name,
                        count.replicas, error)
    if count.changed:
        direction = "out" if count.replicas > count.previous_replicas else "in"
        rt.metrics.replica_changes.labels(owner.namespace, owner.name, direction,
                                          count.cause.value).inc()
        log.info("%s/%s: replicas %d -> %d: %s", owner.namespace, owner.name,
                 count.previous_replicas, count.replicas, count.reason)
        await post_event(rt, body, count.cause.value, count.reason)


async def _scale(rt: Runtime, owner: Owner, replicas: int, *, retry_ours: bool = True) -> None:
    """Apply ``replicas`` through the Deployment's ``scale`` subresource as ``SCALE_MANAGER``.

    Not forced: a count that another manager owns answers 409 (``ApiTransient``) and stays.
    When the conflict names only the operator's own apply (it set the count at creation or
    on a change of ``spec.replicas``), the write is repeated forced (``retry_ours``).
    """
    name = names_for(owner.name).deployment
    try:
        answer = await rt.api.apply_scale("apps/v1", "Deployment", owner.namespace, name,
                                          replicas, manager=SCALE_MANAGER)
    except ApiTransient as error:
        managers = conflicting_managers(error)
        if not (retry_ours and managers and not foreign_managers(managers)):
            raise
        answer = await rt.api.apply_scale("apps/v1", "Deployment", owner.namespace, name,
                                          replicas, manager=SCALE_MANAGER, force=True)
    key = (owner.namespace, name)
    seen = rt.deployments.get(key)
    if seen is not None:
        # What the watch will say shortly: the count, now owned by SCALE_MANAGER too.
        fields = [e for e in seen["metadata"].get("managedFields") or []
                  if e.get("manager") != SCALE_MANAGER]
        fields.append({"manager": SCALE_MANAGER, "operation": "Apply", "subresource": "scale",
                       "fieldsV1": {"f:spec": {"f:replicas": {}}}})
        seen["metadata"]["managedFields"] = fields
        seen["spec"] = {"replicas": int((answer.get("spec") or {}).get("replicas", replicas))}


async def _pod_start(rt: Runtime, owner: Owner, ready: int | None, now: float) -> float | None:
    """The model's pod start time (``pod_start``), measured again every
    ``POD_START_REFRESH_S`` or when the ready count moved; ``None`` until a pod is Ready."""
    key = (owner.namespace, owner.name)
    last = rt.pod_starts.get(key)
    if last is not None and last.ready == ready and now - last.at < POD_START_REFRESH_S:
        return last.seconds
    assert rt.pods is not None
    try:
        # The namespace's shared listing (up to NODE_CACHE_S old): a pod that just became
        # Ready may be counted from the next refresh on.
        pods = await rt.pods.of_model(owner.namespace, names_for(owner.name).service)
    except ApiError as error:
        rt.metrics.errors.labels("pods").inc()
        log.warning("pods of %s/%s not listed: %s", owner.namespace, owner.name, error)
        return last.seconds if last is not None else None
    seconds = pod_start_seconds(pods)
    if seconds is None and last is not None:
        seconds = last.seconds  # the pods measured before are gone (scaled in): keep it
    rt.pod_starts[key] = PodStartReading(now, ready, seconds)
    return seconds


async def post_event(
    rt: Runtime, body: Mapping[str, Any], reason: str, message: str, *, kind: str = "Normal"
) -> None:
    """A core/v1 Event on the CR (``kubectl describe`` shows it); failures are logged only.
    ``kind`` is the Event's type (``Warning`` for refusals)."""
    owner = _owner(body)
    now_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{owner.name}.", "namespace": owner.namespace},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": owner.name,
            "namespace": owner.namespace,
            "uid": owner.uid,
        },
        "reason": reason,
        "message": message[:1024],
        "type": kind,
        "source": {"component": "elastiserve-operator"},
        "firstTimestamp": now_iso,
        "lastTimestamp": now_iso,
        "count": 1,
        "reportingComponent": "elastiserve-operator",
    }
    try:
        await rt.api.create(event)
    except ApiError as error:
        rt.metrics.errors.labels("event").inc()
        log.warning("event for %s/%s not posted: %s", owner.namespace, owner.name, error)


