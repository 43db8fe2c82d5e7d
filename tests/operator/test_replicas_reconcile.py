"""The replica count behind the ``KubeApi`` seam: who writes it, when, and in which order.

The fake API server below keeps the one thing server-side apply does to ``spec.replicas``
that matters here: the field has owners; an apply that changes it takes it (forced) or is
refused naming them (not forced); a manager that stops sending a field it alone owned
deletes it (the Deployment falls back to 1). The real API server's answers to the same
requests are in ``test_replicas_cluster.py``.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any, cast

from elastiserve_operator.children import AUTOSCALER_ANNOTATION, SPEC_REPLICAS_ANNOTATION
from elastiserve_operator.kube import FIELD_MANAGER, ApiTransient, KubeApi, conflicting_managers
from elastiserve_operator.metrics import OperatorMetrics
from elastiserve_operator.reconcile import (
    Runtime,
    evaluate,
    reconcile,
    refresh_ready,
    remember_deployment,
)
from elastiserve_operator.replica_owner import SCALE_MANAGER
from elastiserve_operator.settings import OperatorSettings
from elastiserve_operator.signals.prometheus import InstantValue, SeriesPolicy
from tests.operator.test_reconcile_writes import RecordingApi

DEPLOYMENT = "resnet-serving"


class ReplicaApi(RecordingApi):
    """``RecordingApi`` with the Deployment's ``spec.replicas`` and its owners, the ``scale``
    subresource, and pods to list. ``calls`` is every write in order."""

    def __init__(self, pods: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.count: int | None = None
        self.owners: set[str] = set()
        self.calls: list[tuple[str, ...]] = []
        self.pods = pods or []
        self.lists: list[str] = []

    # --- the server's side of spec.replicas
    def _write_count(self, manager: str, value: int | None, *, force: bool) -> None:
        if value is None:  # left out of an apply
            if self.owners == {manager}:
                self.count, self.owners = 1, set()  # deleted, then defaulted
            self.owners.discard(manager)
            return
        others = self.owners - {manager}
        if value != self.count:
            if others and not force:
                names = ", ".join(f'conflict with "{m}"' for m in sorted(others))
                raise ApiTransient(409, f"Apply failed with {len(others)} conflict: {names}: "
                                        ".spec.replicas")
            self.owners = {manager}
        else:
            self.owners.add(manager)
        self.count = value

    def scale_by(self, manager: str, value: int) -> dict[str, Any]:
        """Someone else's update through ``scale`` (an HPA, ``kubectl scale``)."""
        self.count, self.owners = value, {manager}
        return self.deployment()

    def deployment(self) -> dict[str, Any]:
        stored = copy.deepcopy(self.stored[("Deployment", DEPLOYMENT)])
        stored["metadata"]["managedFields"] = [
            {"manager": m, "operation": "Apply", "fieldsV1": {"f:spec": {"f:replicas": {}}}}
            for m in sorted(self.owners)
        ] + [{"manager": FIELD_MANAGER, "operation": "Apply",
              "fieldsV1": {"f:spec": {"f:template": {}}}}]
        stored["spec"]["replicas"] = self.count
        stored["status"] = {"replicas": self.count, "readyReplicas": self.count}
        return stored

    # --- KubeApi
    async def apply(
        self, obj: Mapping[str, Any], *, manager: str = "", subresource: str = "",
        force: bool = True,
    ) -> dict[str, Any]:
        if obj["kind"] == "Deployment" and not subresource:
            self._write_count(manager or FIELD_MANAGER, obj["spec"].get("replicas"),
                              force=True)
            self.calls.append(("apply", "Deployment", str(obj["spec"].get("replicas"))))
            await super().apply(obj, manager=manager, subresource=subresource)
            return self.deployment()
        if subresource == "status":
            self.calls.append(("status",))
        return await super().apply(obj, manager=manager, subresource=subresource)

    async def apply_scale(
        self, api_version: str, kind: str, namespace: str, name: str, replicas: int, *,
        manager: str, force: bool = False,
    ) -> dict[str, Any]:
        self.calls.append(("scale", str(replicas), manager, "forced" if force else "not forced"))
        self._write_count(manager, replicas, force=force)
        return {"spec": {"replicas": self.count}, "status": {"replicas": self.count}}

    async def list(self, path: str, **params: str) -> list[dict[str, Any]]:
        self.lists.append(path)
        return copy.deepcopy(self.pods)


class Rates:
    """A Prometheus that answers the latency and rate queries with set values."""

    def __init__(self, p95_s: float = 0.04, rate_rps: float = 100.0) -> None:
        self.p95_s, self.rate_rps = p95_s, rate_rps

    async def query(self, promql: str, *, multiple: SeriesPolicy = SeriesPolicy.ERROR
                    ) -> InstantValue | None:
        import time
        value = self.p95_s if multiple is SeriesPolicy.MAX else self.rate_rps
        return InstantValue(value, time.time())


def runtime(api: ReplicaApi, rates: Rates | None = None) -> Runtime:
    return Runtime(api=cast(KubeApi, api), prometheus=cast(Any, rates or Rates()),
                   settings=OperatorSettings(metrics_port=0, node_pressure=False),
                   metrics=OperatorMetrics())


PROFILE = [{"name": f"w{k}", "capacityRps": c, "accuracy": a}
           for k, (c, a) in enumerate(((30.0, 0.80), (20.0, 0.85), (10.0, 0.90)))]


def model(*, replicas: int = 1, joint: bool = False, annotation: str = "",
          status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"levelCount": 3, "source": {"pvc": {"claimName": "m", "path": "r.mar"}},
                  "profile": PROFILE},
        "objective": {"p95Ms": 100},
        "replicas": replicas,
        "nodePressure": {"enabled": False},
    }
    if joint:
        spec["policy"] = {"replicas": {"enabled": True, "min": 1, "max": 8,
                                       "podStartSeconds": 45}}
    meta: dict[str, Any] = {"name": "resnet", "namespace": "ml", "uid": "u1",
                            "generation": generation}
    if annotation:
        meta["annotations"] = {AUTOSCALER_ANNOTATION: annotation}
    return {"metadata": meta, "spec": spec, "status": status or {}}


def last_status(api: ReplicaApi) -> dict[str, Any]:
    return api.status_writes()[-1]


def merged_status(api: ReplicaApi) -> dict[str, Any]:
    """Every status write merged in order (what the object's status would read)."""
    merged: dict[str, Any] = {}
    for written in api.status_writes():
        conditions = {c["type"]: c for c in merged.get("conditions", [])}
        conditions.update({c["type"]: c for c in written.get("conditions", [])})
        merged.update(written)
        merged["conditions"] = list(conditions.values())
    return merged


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [c for c in status["conditions"] if c["type"] == kind]
    return dict(found)


def events(api: ReplicaApi, kind: str | None = None) -> list[dict[str, Any]]:
    return [c for c in api.creates if c["kind"] == "Event"
            and (kind is None or c["type"] == kind)]


def deployment_applies(api: ReplicaApi) -> list[dict[str, Any]]:
    return [obj for kind, sub, obj in api.applies if kind == "Deployment" and not sub]


# --------------------------------------------------------------------------- the spec


def test_the_spec_owns_the_count_and_the_status_says_so() -> None:
    api = ReplicaApi()
    asyncio.run(reconcile(runtime(api), model(replicas=3)))
    (applied,) = deployment_applies(api)
    assert applied["spec"]["replicas"] == 3
    assert applied["metadata"]["annotations"] == {SPEC_REPLICAS_ANNOTATION: "3"}
    status = merged_status(api)
    assert status["replicasOwner"] == "spec"
    assert status["selector"] == "elastiserve.io/model=resnet"
    assert status["replicas"] == 3  # the pods the Deployment has: the scale's status
    assert condition(status, "ReplicaOwnership")["reason"] == "Spec"


def test_a_count_another_manager_set_is_left_out_until_the_spec_changes() -> None:
    api = ReplicaApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, model()))
    remember_deployment(rt, api.scale_by("kubectl", 3))  # the watch saw kubectl scale it
    status = merged_status(api)
    # A spec change that is not the count: the template is applied, the count left alone.
    asyncio.run(reconcile(rt, {**model(generation=2, status=status),
                               "spec": {**model()["spec"], "objective": {"p95Ms": 120}}}))
    assert "replicas" not in deployment_applies(api)[-1]["spec"]
    assert api.count == 3 and api.owners == {"kubectl"}
    assert merged_status(api)["replicasOwner"] == "autoscaler:kubectl"
    # A new spec.replicas takes it back (once, forced).
    asyncio.run(reconcile(rt, model(replicas=2, generation=3, status=merged_status(api))))
    assert deployment_applies(api)[-1]["spec"]["replicas"] == 2
    assert api.count == 2 and api.owners == {FIELD_MANAGER}
    assert merged_status(api)["replicasOwner"] == "spec"


def test_a_deployment_event_reports_the_new_owner() -> None:
    api = ReplicaApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, model()))
    body = model(status=merged_status(api))
    asyncio.run(refresh_ready(rt, api.scale_by("kube-controller-manager", 4),
                              lambda ns, name: body))
    status = last_status(api)
    assert status["replicasOwner"] == "autoscaler:kube-controller-manager"
    assert status["replicas"] == 4
    assert condition(status, "Ready")["message"] == "4/4 serving replicas ready"


# --------------------------------------------------------------------------- the annotation


def test_an_annotation_added_later_hands_the_count_over_instead_of_resetting_it() -> None:
    api = ReplicaApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, model(replicas=4)))
    assert api.owners == {FIELD_MANAGER}
    api.calls.clear()
    asyncio.run(reconcile(rt, model(replicas=4, annotation="keda", generation=2,
                                    status=merged_status(api))))
    # The live count is applied through scale first, then the Deployment without it.
    scale, applied = [c for c in api.calls if c[0] in ("scale", "apply")]
    assert scale == ("scale", "4", SCALE_MANAGER, "not forced")
    assert applied == ("apply", "Deployment", "None")
    assert api.count == 4  # not reset to 1
    assert merged_status(api)["replicasOwner"] == "autoscaler:keda"
    # KEDA scales; the next reconcile leaves it.
    remember_deployment(rt, api.scale_by("keda-operator", 7))
    asyncio.run(reconcile(rt, model(replicas=4, annotation="keda", generation=3,
                                    status=merged_status(api))))
    assert api.count == 7


def test_the_annotation_and_the_joint_policy_conflict() -> None:
    api = ReplicaApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, model(joint=True, annotation="keda")))
    assert "replicas" not in deployment_applies(api)[-1]["spec"]
    status = merged_status(api)
    owned = condition(status, "ReplicaOwnership")
    assert (owned["status"], owned["reason"]) == ("False", "ConflictingOwners")
    assert "remove the annotation or disable spec.policy.replicas" in owned["message"]
    assert status["replicasOwner"] == "autoscaler:keda"
    (warning,) = events(api, "Warning")
    assert warning["reason"] == "ConflictingOwners"
    # The policy loop leaves the count alone (the width policy goes on).
    asyncio.run(evaluate(rt, model(joint=True, annotation="keda", status=status)))
    assert [c for c in api.calls if c[0] == "scale"] == []
    assert "desiredReplicas" not in last_status(api)
    # Said once, not on every reconcile.
    asyncio.run(reconcile(rt, model(joint=True, annotation="keda",
                                    status=merged_status(api))))
    assert len(events(api, "Warning")) == 1


# --------------------------------------------------------------------------- the joint policy


def ready_pod(created: str, ready: str) -> dict[str, Any]:
    return {"metadata": {"creationTimestamp": created,
                         "labels": {"elastiserve.io/model": "resnet"}},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                                       "lastTransitionTime": ready}]}}


def joint_model_after_reconcile(api: ReplicaApi, rt: Runtime) -> dict[str, Any]:
    asyncio.run(reconcile(rt, model(joint=True)))
    status = merged_status(api)
    status["readyReplicas"] = 1
    return model(joint=True, status=status)


def test_the_joint_policy_writes_status_then_the_count_then_an_event() -> None:
    pods = [ready_pod("2026-03-01T10:00:00Z", "2026-03-01T10:00:12Z")]
    api = ReplicaApi(pods=pods)
    rt = runtime(api, Rates(rate_rps=100.0))
    body = joint_model_after_reconcile(api, rt)
    assert deployment_applies(api)[-1]["spec"]["replicas"] == 1  # created at min
    assert merged_status(api)["replicasOwner"] == "operator-joint-policy"
    api.calls.clear()
    asyncio.run(evaluate(rt, body))
    # 100 rps over 0.8 x 30 rps of the narrowest level per replica: 5 replicas, at once.
    status_write, *scales = api.calls
    assert status_write == ("status",)
    # Not forced, refused only by the operator's own apply (it set the count at creation):
    # then forced.
    assert scales == [("scale", "5", SCALE_MANAGER, "not forced"),
                      ("scale", "5", SCALE_MANAGER, "forced")]
    assert api.count == 5 and api.owners == {SCALE_MANAGER}
    status = last_status(api)
    assert status["desiredReplicas"] == 5
    assert status["replicaDecision"]["cause"] == "NarrowestOverShare"
    assert status["replicaDecision"]["podStartSource"] == "Measured"
    assert status["replicaDecision"]["podStartSeconds"] == 12.0  # the pods', not the spec's 45
    assert status["replicaState"]["replicas"] == 5
    assert status["lastScaleReason"] == status["replicaDecision"]["reason"]
    (event,) = [e for e in events(api) if e["reason"] == "NarrowestOverShare"]
    assert event["type"] == "Normal" and "scaling 1 -> 5" in event["message"]
    # 100 rps on the one ready replica: the width narrows meanwhile (its own Event).
    assert last_status(api)["activeLevel"] < 2
    gauge = rt.metrics.registry.get_sample_value(
        "elastiserve_operator_desired_replicas", {"namespace": "ml", "name": "resnet"})
    assert gauge == 5.0
    changes = rt.metrics.registry.get_sample_value(
        "elastiserve_operator_replica_changes_total",
        {"namespace": "ml", "name": "resnet", "direction": "out",
         "cause": "NarrowestOverShare"})
    assert changes == 1.0
    # The next evaluation, nothing new: no write to the Deployment, no event.
    api.calls.clear()
    asyncio.run(evaluate(rt, model(joint=True, status={**merged_status(api),
                                                       "readyReplicas": 5})))
    assert [c for c in api.calls if c[0] == "scale"] == []
    assert len([e for e in events(api) if e["reason"] == "NarrowestOverShare"]) == 1
    # A reconcile now leaves the count to the policy's writes.
    asyncio.run(reconcile(rt, {**model(joint=True, generation=2, status=merged_status(api)),
                               "spec": {**model(joint=True)["spec"],
                                        "objective": {"p95Ms": 110}}}))
    assert "replicas" not in deployment_applies(api)[-1]["spec"]
    assert api.count == 5


def test_the_pod_start_time_is_the_spec_s_until_a_pod_is_ready() -> None:
    api = ReplicaApi()
    rt = runtime(api, Rates(rate_rps=10.0))
    asyncio.run(evaluate(rt, joint_model_after_reconcile(api, rt)))
    decision = last_status(api)["replicaDecision"]
    assert (decision["podStartSource"], decision["podStartSeconds"]) == ("Default", 45.0)
    assert api.lists == ["/api/v1/namespaces/ml/pods"]
    # Measured again only after POD_START_REFRESH_S or when the ready count moves.
    asyncio.run(evaluate(rt, model(joint=True, status={**merged_status(api),
                                                       "readyReplicas": 1})))
    assert len(api.lists) == 1


def test_the_joint_policy_never_forces_a_count_another_manager_owns() -> None:
    api = ReplicaApi()
    rt = runtime(api, Rates(rate_rps=100.0))
    body = joint_model_after_reconcile(api, rt)
    api.scale_by("kube-controller-manager", 2)  # not seen by the watch yet
    api.calls.clear()
    asyncio.run(evaluate(rt, body))
    assert [c for c in api.calls if c[0] == "scale"] == [
        ("scale", "5", SCALE_MANAGER, "not forced")]
    assert api.count == 2
    errors = rt.metrics.registry.get_sample_value("elastiserve_operator_errors_total",
                                                  {"stage": "scale"})
    assert errors == 1.0
    # Once seen, the joint policy holds and the status says who has the count.
    remember_deployment(rt, api.deployment())
    asyncio.run(refresh_ready(rt, api.deployment(),
                              lambda ns, name: model(joint=True, status=merged_status(api))))
    status = merged_status(api)
    assert status["replicasOwner"] == "autoscaler:kube-controller-manager"
    assert condition(status, "ReplicaOwnership")["reason"] == "ConflictingOwners"
    api.calls.clear()
    asyncio.run(evaluate(rt, model(joint=True, status=status)))
    assert [c for c in api.calls if c[0] == "scale"] == []
    assert "desiredReplicas" not in last_status(api)
    assert rt.metrics.registry.get_sample_value(
        "elastiserve_operator_desired_replicas", {"namespace": "ml", "name": "resnet"}) is None


def test_a_lost_scale_write_is_written_again() -> None:
    """Killed between the status write and the scale write: the state says 5, the
    Deployment (its count the policy's own) says 3."""
    api = ReplicaApi()
    rt = runtime(api, Rates(rate_rps=100.0))
    body = joint_model_after_reconcile(api, rt)
    asyncio.run(evaluate(rt, body))
    assert api.count == 5
    api.count = 3
    remember_deployment(rt, api.deployment())
    api.calls.clear()
    asyncio.run(evaluate(rt, model(joint=True, status={**merged_status(api),
                                                       "readyReplicas": 3})))
    assert ("scale", "5", SCALE_MANAGER, "not forced") in api.calls
    assert api.count == 5


def test_a_count_the_policy_does_not_own_is_where_it_starts_from() -> None:
    """The spec took the count back from an autoscaler: the state's old count is not
    restored; the policy goes on from the Deployment's."""
    api = ReplicaApi()
    rt = runtime(api, Rates(rate_rps=30.0))
    body = joint_model_after_reconcile(api, rt)
    asyncio.run(evaluate(rt, body))  # 30 rps: 2 replicas
    assert api.count == 2
    remember_deployment(rt, api.scale_by("kubectl", 6))
    asyncio.run(reconcile(rt, model(joint=True, replicas=3, generation=2,
                                    status=merged_status(api))))
    assert api.count == 3 and api.owners == {FIELD_MANAGER}  # taken back by the spec
    api.calls.clear()
    asyncio.run(evaluate(rt, model(joint=True, replicas=3, status={**merged_status(api),
                                                                    "readyReplicas": 3})))
    state = last_status(api)["replicaState"]
    assert state["replicas"] == 3  # started from the Deployment's 3, not the old 2


def test_conflicting_managers_are_read_off_the_refusal() -> None:
    error = ApiTransient(409, 'Apply failed with 2 conflicts: conflict with "kubectl" with '
                              'subresource "scale" using autoscaling/v1: .spec.replicas, '
                              'conflict with "elastiserve-operator": .spec.replicas')
    assert conflicting_managers(error) == ("kubectl", "elastiserve-operator")
    assert conflicting_managers(ApiTransient(503, 'conflict with "x"')) == ()


def test_kopf_diffs_the_annotation_it_would_otherwise_drop() -> None:
    """kopf leaves every annotation under its storage prefix (``elastiserve.io/``) out of
    the essence it diffs; the operator's storage keeps ``replicas-managed-by`` in, so that an
    edit of it reaches the update handler (the real API server: ``test_replicas_cluster``)."""
    from elastiserve_operator.handlers import PREFIX, ProgressStorage, replica_summary

    essence: Any = {"metadata": {"annotations": {
        AUTOSCALER_ANNOTATION: "keda", f"{PREFIX}/ensure": '{"retries": 0}', "team": "a"}},
        "spec": {"replicas": 2}}
    cleared = ProgressStorage(prefix=PREFIX).clear(essence=essence)
    assert cleared["metadata"]["annotations"] == {AUTOSCALER_ANNOTATION: "keda", "team": "a"}
    bare: Any = {"spec": {"replicas": 2}}
    assert ProgressStorage(prefix=PREFIX).clear(essence=bare) == bare
    # A Deployment event refreshes the owner's status when one of these moved.
    api = ReplicaApi()
    asyncio.run(reconcile(runtime(api), model()))
    before = replica_summary(api.deployment())
    assert replica_summary(api.scale_by("kubectl", 1)) != before  # same count, new owner
