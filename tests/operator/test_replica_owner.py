"""Who owns a model's replica count (``replica_owner``): a table over the annotation, the
joint policy, the Deployment's ``managedFields`` and the ``spec.replicas`` it was applied
against; and what the operator keeps of a Deployment to decide it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from elastiserve_operator.children import SPEC_REPLICAS_ANNOTATION
from elastiserve_operator.kube import FIELD_MANAGER
from elastiserve_operator.replica_owner import (
    JOINT_OWNER,
    SCALE_MANAGER,
    SPEC_OWNER,
    decide_ownership,
    deployment_view,
    foreign_managers,
    live_replicas,
    replicas_managers,
    scale_entries,
    scale_writer,
    spec_replicas_seen,
)
from elastiserve_operator.replica_spec import ReplicaPolicy

OFF = ReplicaPolicy()
JOINT = ReplicaPolicy(enabled=True, min_replicas=2, max_replicas=8)


def entry(manager: str, *, replicas: bool = True, subresource: str | None = None,
          operation: str = "Update") -> dict[str, Any]:
    spec: dict[str, Any] = {"f:replicas": {}} if replicas else {"f:template": {}}
    found: dict[str, Any] = {"manager": manager, "operation": operation,
                             "fieldsV1": {"f:spec": spec}}
    if subresource:
        found["subresource"] = subresource
    return found


def deployment(replicas: int | None, *owners: str, seen: int | None = None,
               others: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Deployment with ``replicas``, whose count ``owners`` own (``kubectl`` through
    scale, the operator by apply), applied against the model's ``spec.replicas`` ``seen``."""
    fields = [entry(m, subresource="scale" if m != FIELD_MANAGER else None,
                    operation="Apply" if m in (FIELD_MANAGER, SCALE_MANAGER) else "Update")
              for m in owners]
    fields += [entry(m, replicas=False) for m in others]
    meta: dict[str, Any] = {"name": "m-serving", "namespace": "ml", "managedFields": fields}
    if seen is not None:
        meta["annotations"] = {SPEC_REPLICAS_ANNOTATION: str(seen), "other": "x"}
    body: dict[str, Any] = {"metadata": meta, "status": {"replicas": replicas or 0}}
    if replicas is not None:
        body["spec"] = {"replicas": replicas, "template": {"spec": {}}}
    return body


@dataclass(frozen=True)
class Row:
    name: str
    deployment: dict[str, Any] | None
    owner: str
    send: int | None
    annotation: str = ""
    policy: ReplicaPolicy = OFF
    spec_replicas: int = 1
    desired: object = None
    joint: bool = False
    status: str = "True"
    reason: str = "Spec"
    hand_over: int | None = None


ROWS = [
    # The spec owns the count: sent, forced.
    Row("new model", None, SPEC_OWNER, 1),
    Row("spec owns it", deployment(3, FIELD_MANAGER, seen=3), SPEC_OWNER, 3, spec_replicas=3),
    Row("spec changed", deployment(1, FIELD_MANAGER, seen=1), SPEC_OWNER, 4, spec_replicas=4),
    Row("nobody owns it", deployment(1, seen=1), SPEC_OWNER, 1),
    Row("an older operator's Deployment", deployment(2, FIELD_MANAGER), SPEC_OWNER, 2,
        spec_replicas=2),
    # A field manager other than the operator's holds the Deployment's count: yield...
    Row("kubectl scale deployment", deployment(3, "kubectl", seen=1), "autoscaler:kubectl",
        None, reason="Autoscaler"),
    Row("an HPA on the Deployment", deployment(5, "kube-controller-manager", seen=2),
        "autoscaler:kube-controller-manager", None, spec_replicas=2, reason="Autoscaler"),
    Row("foreign, no record of the spec", deployment(5, "kube-controller-manager"),
        "autoscaler:kube-controller-manager", None, spec_replicas=2, reason="Autoscaler"),
    Row("shared with the operator", deployment(3, FIELD_MANAGER, "keda-operator", seen=3),
        "autoscaler:keda-operator", None, spec_replicas=3, reason="Autoscaler"),
    # ... until spec.replicas changes, which takes it back (forced).
    Row("taken back by the spec", deployment(3, "kubectl", seen=1), SPEC_OWNER, 2,
        spec_replicas=2),
    # Managers of other fields do not count.
    Row("someone edited the template", deployment(1, FIELD_MANAGER, seen=1,
                                                  others=("kubectl-edit",)), SPEC_OWNER, 1),
    # The annotation: never sent; handed over while the operator's apply alone owns it.
    Row("annotated, new", None, "autoscaler:keda", None, annotation="keda",
        reason="Autoscaler"),
    Row("annotated, the operator owns it", deployment(4, FIELD_MANAGER, seen=4),
        "autoscaler:keda", None, annotation="keda", spec_replicas=4, reason="Autoscaler",
        hand_over=4),
    Row("annotated, handed over", deployment(4, SCALE_MANAGER, seen=4), "autoscaler:keda",
        None, annotation="keda", spec_replicas=4, reason="Autoscaler"),
    Row("annotated, the autoscaler wrote it", deployment(6, "keda-operator", seen=4),
        "autoscaler:keda", None, annotation="keda", spec_replicas=4, reason="Autoscaler"),
    Row("annotated, spec changed", deployment(6, "keda-operator", seen=4), "autoscaler:keda",
        None, annotation="keda", spec_replicas=9, reason="Autoscaler"),
    # The joint policy: sends the count until its own scale writes own it.
    Row("joint, new", None, JOINT_OWNER, 2, policy=JOINT, joint=True, reason="JointPolicy"),
    Row("joint, new, spec above max", None, JOINT_OWNER, 8, policy=JOINT, spec_replicas=20,
        joint=True, reason="JointPolicy"),
    Row("joint, after a restart", None, JOINT_OWNER, 5, policy=JOINT, desired=5, joint=True,
        reason="JointPolicy"),
    Row("joint, the apply still owns it", deployment(2, FIELD_MANAGER, seen=1), JOINT_OWNER, 2,
        policy=JOINT, joint=True, reason="JointPolicy"),
    Row("joint, its writes own it", deployment(6, SCALE_MANAGER, seen=1), JOINT_OWNER, None,
        policy=JOINT, joint=True, reason="JointPolicy"),
    Row("joint, spec changed (a starting count only)", deployment(6, SCALE_MANAGER, seen=1),
        JOINT_OWNER, None, policy=JOINT, spec_replicas=3, joint=True, reason="JointPolicy"),
    Row("joint, taken back from an autoscaler", deployment(7, "kubectl", seen=1), JOINT_OWNER,
        3, policy=JOINT, spec_replicas=3, joint=True, reason="JointPolicy"),
    # Conflicts: the joint policy and an autoscaler.
    Row("joint and the annotation", deployment(4, FIELD_MANAGER, seen=4), "autoscaler:keda",
        None, annotation="keda", policy=JOINT, spec_replicas=4, status="False",
        reason="ConflictingOwners", hand_over=4),
    Row("joint and an HPA on the Deployment", deployment(7, "kube-controller-manager", seen=1),
        "autoscaler:kube-controller-manager", None, policy=JOINT, status="False",
        reason="ConflictingOwners"),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_ownership(row: Row) -> None:
    got = decide_ownership(annotation=row.annotation, policy=row.policy,
                           spec_replicas=row.spec_replicas, deployment=row.deployment,
                           desired=row.desired)
    assert (got.owner, got.send, got.joint) == (row.owner, row.send, row.joint)
    assert (got.status, got.reason) == (row.status, row.reason)
    assert got.hand_over == row.hand_over
    assert got.conflict is (row.status == "False")
    assert got.message


def test_the_conflicts_say_what_to_do() -> None:
    annotated = decide_ownership(annotation="keda", policy=JOINT, spec_replicas=1,
                                 deployment=None)
    assert "elastiserve.io/replicas-managed-by=keda" in annotated.message
    assert "remove the annotation or disable spec.policy.replicas" in annotated.message
    hpa = decide_ownership(annotation="", policy=JOINT, spec_replicas=1,
                           deployment=deployment(3, "kube-controller-manager", seen=1))
    assert "kube-controller-manager" in hpa.message and "change spec.replicas" in hpa.message
    yielded = decide_ownership(annotation="", policy=OFF, spec_replicas=1,
                               deployment=deployment(3, "kubectl", seen=1))
    assert "until this model's spec.replicas changes" in yielded.message


def test_a_bad_desired_count_is_ignored() -> None:
    for desired in (True, -1, "5", 2.5):
        got = decide_ownership(annotation="", policy=JOINT, spec_replicas=3, deployment=None,
                               desired=desired)
        assert got.send == 3


def test_managers_of_the_count_only() -> None:
    body = deployment(3, "kubectl", FIELD_MANAGER, others=("kube-controller-manager",))
    assert replicas_managers(body) == (FIELD_MANAGER, "kubectl")
    assert replicas_managers(None) == ()
    assert replicas_managers({"metadata": {"managedFields": [{"manager": "x"}, "junk"]}}) == ()
    assert foreign_managers(("kubectl", FIELD_MANAGER, SCALE_MANAGER)) == ("kubectl",)


def test_what_is_kept_of_a_deployment() -> None:
    body = deployment(3, "kubectl", seen=2, others=("kube-controller-manager",))
    body["status"] = {"replicas": 3, "readyReplicas": 2, "conditions": [{"type": "x"}]}
    view = deployment_view(body)
    assert live_replicas(view) == 3 and spec_replicas_seen(view) == 2
    assert replicas_managers(view) == ("kubectl",)
    assert view["status"] == body["status"]
    assert "template" not in view["spec"]
    assert view["metadata"]["annotations"] == {SPEC_REPLICAS_ANNOTATION: "2"}
    assert (view["metadata"]["namespace"], view["metadata"]["name"]) == ("ml", "m-serving")
    # Nothing to keep when the object says nothing.
    bare = deployment_view({"metadata": {}})
    assert live_replicas(bare) is None and spec_replicas_seen(bare) is None


@pytest.mark.parametrize("raw", ["x", "", "1.5"])
def test_a_malformed_record_of_the_spec_is_no_record(raw: str) -> None:
    body = deployment(2, "kubectl")
    body["metadata"]["annotations"] = {SPEC_REPLICAS_ANNOTATION: raw}
    assert spec_replicas_seen(body) is None
    # No record: a foreign owner keeps the count (never overwritten on a guess).
    got = decide_ownership(annotation="", policy=OFF, spec_replicas=1, deployment=body)
    assert got.owner == "autoscaler:kubectl" and got.send is None


def model_scaled_by(*writers: tuple[str, str | None]) -> dict[str, object]:
    """A model whose managedFields hold, per (manager, subresource), ``spec.replicas``."""
    entries: list[object] = [{"manager": "kubectl-client-side-apply", "operation": "Update",
                              "fieldsV1": {"f:spec": {"f:model": {}}}}]
    for manager, subresource in writers:
        entry: dict[str, object] = {"manager": manager, "operation": "Update",
                                    "fieldsV1": {"f:spec": {"f:replicas": {}}}}
        if subresource:
            entry["subresource"] = subresource
        entries.append(entry)
    return {"metadata": {"managedFields": entries}}


def test_the_autoscaler_writing_the_models_count_is_named() -> None:
    assert scale_writer(model_scaled_by(("kube-controller-manager", "scale"))) == (
        "kube-controller-manager")
    # A person's kubectl scale, a write of the main resource, nothing at all: no autoscaler.
    assert scale_writer(model_scaled_by(("kubectl", "scale"))) == ""
    assert scale_writer(model_scaled_by(("kubectl-scale", "scale"))) == ""
    assert scale_writer(model_scaled_by(("kube-controller-manager", None))) == ""
    assert scale_writer({"metadata": {"managedFields": ["junk", {"subresource": "scale"}]}}) == ""
    assert scale_writer({}) == ""


def test_an_hpa_on_the_model_is_the_owner_and_the_count_still_follows_the_spec() -> None:
    got = decide_ownership(annotation="", policy=OFF, spec_replicas=2,
                           deployment=deployment(1, FIELD_MANAGER, seen=1),
                           model_writer="kube-controller-manager")
    assert (got.owner, got.send, got.joint) == ("autoscaler:kube-controller-manager", 2, False)
    assert (got.status, got.reason) == ("True", "AutoscalerOnModel")
    assert "never writes it back" in got.message


def test_an_hpa_on_the_model_and_the_joint_policy_conflict() -> None:
    got = decide_ownership(annotation="", policy=JOINT, spec_replicas=3, deployment=None,
                           model_writer="keda-operator")
    assert (got.owner, got.send, got.joint) == ("autoscaler:keda-operator", 3, False)
    assert (got.status, got.reason) == ("False", "ConflictingOwners")
    assert "disable spec.policy.replicas" in got.message


def test_the_in_memory_copy_keeps_who_scales_the_model() -> None:
    model = model_scaled_by(("kube-controller-manager", "scale"), ("kubectl", None))
    kept = {"metadata": {"managedFields": scale_entries(model)}}
    assert scale_writer(kept) == "kube-controller-manager"
    assert scale_entries(model_scaled_by(("kubectl", None))) == []
