"""The pure parts of the replica wiring: the Deployment's count as built, the reconcile
status (what the model's scale subresource reports, who owns the count), the joint
policy's status, its effective policy."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.children import SPEC_REPLICAS_ANNOTATION, Owner, build_deployment
from elastiserve_operator.joint_policy import ReplicaCause, ReplicaDecision, ReplicaState
from elastiserve_operator.replica_owner import decide_ownership
from elastiserve_operator.replica_spec import ReplicaPolicy, parse_replica_policy
from elastiserve_operator.settings import OperatorSettings
from elastiserve_operator.spec import parse_spec
from elastiserve_operator.status import (
    effective_policy,
    reconcile_patch,
    replica_patch,
    restore_replica_state,
    wanted_replicas,
)

OWNER = Owner("m", "ml", "u1")


def spec(replicas: int = 2) -> Any:
    return parse_spec({"model": {"levelCount": 2, "source": {"localPath": "/models/m.mar"}},
                       "objective": {"p95Ms": 100}, "replicas": replicas})


def live(replicas: int, ready: int, manager: str) -> dict[str, Any]:
    return {"metadata": {"managedFields": [
                {"manager": manager, "fieldsV1": {"f:spec": {"f:replicas": {}}}}]},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "readyReplicas": ready}}


class TestDeployment:
    @pytest.mark.parametrize(("autoscaled", "replicas", "expected"),
                             [(False, None, 2), (False, 5, 5), (True, None, None),
                              (True, 5, None)])
    def test_the_count_as_asked(self, autoscaled: bool, replicas: int | None,
                                expected: int | None) -> None:
        built = build_deployment(OWNER, spec(2), OperatorSettings(), autoscaled=autoscaled,
                                 replicas=replicas)
        assert built["spec"].get("replicas") == expected
        # Whatever is sent, the Deployment records the spec's count it was applied against.
        assert built["metadata"]["annotations"] == {SPEC_REPLICAS_ANNOTATION: "2"}


class TestReconcileStatus:
    def test_what_the_scale_subresource_reads(self) -> None:
        ownership = decide_ownership(annotation="", policy=ReplicaPolicy(), spec_replicas=2,
                                     deployment=None)
        patch = reconcile_patch({}, 3, spec(2), {"status": {"replicas": 2, "readyReplicas": 1}},
                                None, 0.0, ownership=ownership, selector="elastiserve.io/model=m")
        assert patch["replicas"] == 2 and patch["readyReplicas"] == 1
        assert patch["selector"] == "elastiserve.io/model=m"
        assert patch["replicasOwner"] == "spec"
        (owned,) = [c for c in patch["conditions"] if c["type"] == "ReplicaOwnership"]
        assert (owned["status"], owned["reason"], owned["observedGeneration"]) == (
            "True", "Spec", 3)

    def test_no_deployment_yet_has_no_pods(self) -> None:
        patch = reconcile_patch({}, 1, spec(2), None, None, 0.0)
        assert patch["replicas"] == 0
        assert "replicasOwner" not in patch and "selector" not in patch

    def test_ready_waits_for_the_count_whoever_owns_it(self) -> None:
        hpa = live(5, 3, "kube-controller-manager")
        ownership = decide_ownership(annotation="", policy=ReplicaPolicy(), spec_replicas=2,
                                     deployment=hpa)
        assert wanted_replicas(spec(2), hpa, ownership) == 5
        patch = reconcile_patch({}, 1, spec(2), hpa, None, 0.0, ownership=ownership)
        (ready,) = [c for c in patch["conditions"] if c["type"] == "Ready"]
        assert (ready["status"], ready["message"]) == ("False", "3/5 serving replicas ready")
        # The spec's own count: the spec's.
        assert wanted_replicas(spec(2), live(1, 1, "x"), None) == 2


class TestJointStatus:
    def decision(self, replicas: int, previous: int) -> ReplicaDecision:
        state = ReplicaState.initial(replicas, 100.0)
        return ReplicaDecision(replicas, previous, ReplicaCause.CAPACITY, "needs more", state,
                               30.0, 123.4567)

    def test_a_scale(self) -> None:
        patch = replica_patch({}, self.decision(4, 2), True, 0.0)
        assert patch["desiredReplicas"] == 4
        assert patch["replicaDecision"] == {
            "cause": "NarrowestOverShare", "reason": "needs more", "podStartSeconds": 30.0,
            "podStartSource": "Measured", "forecastRps": 123.457}
        assert patch["lastScaleTime"] == "1970-01-01T00:00:00Z"
        assert patch["lastScaleReason"] == "needs more"
        assert ReplicaState.from_dict(patch["replicaState"]).replicas == 4

    def test_no_scale_keeps_the_last_one(self) -> None:
        before = {"lastScaleTime": "2026-01-01T00:00:00Z", "lastScaleReason": "earlier"}
        patch = replica_patch(before, self.decision(4, 4), False, 0.0)
        assert patch["lastScaleReason"] == "earlier"
        assert patch["replicaDecision"]["podStartSource"] == "Default"
        assert "lastScaleTime" not in replica_patch({}, self.decision(4, 4), False, 0.0)

    def test_the_state_survives_the_status_or_starts_over(self) -> None:
        state = ReplicaState.initial(3, 50.0)
        assert restore_replica_state({"replicaState": state.to_dict()}, 7, 60.0) == state
        fresh = restore_replica_state({"replicaState": {"version": 99}}, 7, 60.0)
        assert (fresh.replicas, fresh.started_at) == (7, 60.0)


def test_the_effective_policy_lists_the_replica_policy_while_enabled() -> None:
    assert "replicas" not in effective_policy(spec(), ReplicaPolicy())
    on = parse_replica_policy({"enabled": True, "max": 9}, pod_start_s=80)
    got = effective_policy(spec(), on)
    assert got["replicas"]["max"] == 9 and got["replicas"]["podStartSeconds"] == 80
    # Every knob in effect is shown, the joint policy's shares included.
    assert got["replicas"]["widthShareOfObjective"] == 0.9
    assert got["replicas"]["guardShareOfObjective"] == 0.75
    assert got["sources"]["policy.replicas.podStartSeconds"] == "chartDefault"
    own = parse_replica_policy({"enabled": True, "max": 9, "podStartSeconds": 5})
    assert effective_policy(spec(), own)["sources"]["policy.replicas.podStartSeconds"] == "spec"
