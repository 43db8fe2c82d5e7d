"""The skip-unchanged-children record: which watch events count as drift.

The cluster test (``test_operator_cluster``) shows the whole path on a real API server;
these pin the decisions, including the ones a cluster test cannot easily provoke (ties
of managed-fields timestamps, events of our own apply arriving before its response).
"""

from __future__ import annotations

from typing import Any

from elastiserve_operator.applied import AppliedChildren, fingerprint, last_main_writers

ME = "elastiserve-operator"


def configmap(
    data: str = "a", version: str = "", fields: list[Any] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "m1-config", "namespace": "ns"}
    if version:
        meta["resourceVersion"] = version
    if fields is not None:
        meta["managedFields"] = fields
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": data}}


def field(manager: str, time: str, subresource: str = "") -> dict[str, Any]:
    entry = {"manager": manager, "operation": "Apply", "time": time}
    if subresource:
        entry["subresource"] = subresource
    return entry


def test_fingerprint_ignores_key_order() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_unchanged_child_is_skipped_changed_one_is_not() -> None:
    record = AppliedChildren(manager=ME)
    assert record.needs_apply(configmap())
    record.started(configmap())
    record.applied(configmap(), {"metadata": {"resourceVersion": "5"}})
    assert not record.needs_apply(configmap())
    assert record.needs_apply(configmap("b"))


def test_own_write_and_in_flight_events_are_not_drift() -> None:
    record = AppliedChildren(manager=ME)
    record.started(configmap())
    ours = configmap(version="5", fields=[field(ME, "2026-01-01T00:00:01Z")])
    assert not record.drifted("ADDED", ours)  # arrived before the apply's response
    record.applied(configmap(), {"metadata": {"resourceVersion": "5"}})
    assert not record.drifted("MODIFIED", ours)


def test_foreign_write_to_main_resource_is_drift_subresources_are_not() -> None:
    record = AppliedChildren(manager=ME)
    record.applied(configmap(), {"metadata": {"resourceVersion": "5"}})
    edited = configmap("x", "6", [field(ME, "2026-01-01T00:00:01Z"),
                                  field("kubectl-edit", "2026-01-01T00:00:09Z")])
    assert record.drifted("MODIFIED", edited)
    tie = configmap("x", "6", [field(ME, "2026-01-01T00:00:09Z"),
                               field("kubectl-edit", "2026-01-01T00:00:09Z")])
    assert record.drifted("MODIFIED", tie)
    scaled = configmap("a", "7", [field(ME, "2026-01-01T00:00:01Z"),
                                  field("hpa", "2026-01-01T00:00:09Z", "scale"),
                                  field("kube-controller-manager", "2026-01-01T00:00:09Z",
                                        "status")])
    assert not record.drifted("MODIFIED", scaled)
    revision = configmap("a", "8", [field(ME, "2026-01-01T00:00:01Z"),
                                    field("kube-controller-manager", "2026-01-01T00:00:09Z")])
    assert not record.drifted("MODIFIED", revision)


def test_deletion_is_always_drift_unknown_changes_are_not() -> None:
    record = AppliedChildren(manager=ME)
    assert record.drifted("DELETED", configmap())  # e.g. deleted while the operator was down
    stranger = configmap("x", "6", [field("kubectl-edit", "2026-01-01T00:00:09Z")])
    assert not record.drifted("MODIFIED", stranger)  # never applied here: next reconcile does


def test_forget_owner_drops_only_its_children() -> None:
    record = AppliedChildren(manager=ME)
    record.applied(configmap(), {"metadata": {"resourceVersion": "5"}})
    other = configmap()
    other["metadata"]["name"] = "m2-config"
    record.applied(other, {"metadata": {"resourceVersion": "6"}})
    record.forget_owner("ns", {"m1-config"})
    assert record.needs_apply(configmap()) and not record.needs_apply(other)
    assert len(record) == 1


def test_last_main_writers_empty_without_managed_fields() -> None:
    assert last_main_writers(configmap()) == set()
