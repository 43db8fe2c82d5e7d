"""How many requests a reconcile sends, and what its status says, behind the ``KubeApi`` seam.

The footprint benchmark measures the time; these pin the request pattern it depends on: a
spec change is one status write (children unchanged are skipped), a resume of an unchanged
model writes nothing, a new model's status is right the first time, and a Deployment found
ready by its first apply after a restart gets its status corrected. And the inference key
Secret: created (never applied) once, kept when it exists, its refusal reported.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any, cast

import kopf
import pytest

from elastiserve_operator.kube import CREATE_ONLY, ApiError, ApiTransient, KubeApi, resource_path
from elastiserve_operator.metrics import OperatorMetrics
from elastiserve_operator.reconcile import Runtime, reconcile
from elastiserve_operator.settings import OperatorSettings


class RecordingApi:
    """Answers applies like the API server would (the object back, a new resourceVersion, a
    uid kept per object); a Deployment comes back with ``ready`` ready replicas. The
    preconditions the reconcile sends are honoured: ``resourceVersion`` ``CREATE_ONLY`` (409
    when the name is taken) and ``uid`` (409 when gone, 422 when another object)."""

    def __init__(self, ready: int = 0, refuse_creates: int = 0) -> None:
        self.ready = ready
        self.applies: list[tuple[str, str, dict[str, Any]]] = []
        self.creates: list[dict[str, Any]] = []
        self.gets: list[str] = []
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}
        self.refuse_creates = refuse_creates

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """A POST: 409 when the name is taken, like the API server (nothing replaced)."""
        self.creates.append(copy.deepcopy(dict(obj)))
        if obj["kind"] == "Event":
            return dict(obj)
        if self.refuse_creates:
            raise ApiError(self.refuse_creates, 'secrets is forbidden: cannot create')
        key = (str(obj["kind"]), str(obj["metadata"]["name"]))
        if key in self.stored:
            raise ApiTransient(409, f"{key[1]} already exists")
        self.stored[key] = copy.deepcopy(dict(obj))
        return dict(obj)

    async def get(self, path: str) -> dict[str, Any] | None:
        self.gets.append(path)
        found = [o for o in self.stored.values() if resource_path(
            o["apiVersion"], o["kind"], o["metadata"].get("namespace"),
            o["metadata"]["name"]) == path]
        return copy.deepcopy(found[0]) if found else None

    async def apply(
        self, obj: Mapping[str, Any], *, manager: str = "", subresource: str = ""
    ) -> dict[str, Any]:
        self.applies.append((str(obj["kind"]), subresource, copy.deepcopy(dict(obj))))
        key = (str(obj["kind"]), str(obj["metadata"]["name"]))
        meta = dict(obj["metadata"])
        stored = self.stored.get(key)
        if not subresource:
            if meta.pop("resourceVersion", None) == CREATE_ONLY and stored is not None:
                raise ApiTransient(409, "the object has been modified")
            uid = meta.pop("uid", None)
            if uid is not None and stored is None:
                raise ApiTransient(409, "uid mismatch: no existing object was found")
            if uid is not None and stored is not None and stored["metadata"]["uid"] != uid:
                raise ApiError(422, "metadata.uid: field is immutable")
        answer = copy.deepcopy({**dict(obj), "metadata": meta})
        uid = stored["metadata"]["uid"] if stored else f"uid-{len(self.applies)}"
        answer["metadata"] = {**answer["metadata"], "uid": uid,
                              "resourceVersion": str(len(self.applies))}
        if obj["kind"] == "Deployment":
            answer["status"] = {"readyReplicas": self.ready} if self.ready else {}
        if not subresource:
            self.stored[key] = copy.deepcopy(answer)
        return answer

    def status_writes(self) -> list[dict[str, Any]]:
        return [obj["status"] for _, sub, obj in self.applies if sub == "status"]

    def child_applies(self) -> list[str]:
        return [kind for kind, sub, _ in self.applies if not sub]


def runtime(api: RecordingApi) -> Runtime:
    return Runtime(api=cast(KubeApi, api), prometheus=cast(Any, object()),
                   settings=OperatorSettings(metrics_port=0), metrics=OperatorMetrics())


def body(generation: int = 1, status: dict[str, Any] | None = None,
         objective_ms: int = 100) -> dict[str, Any]:
    return {
        "metadata": {"name": "resnet", "namespace": "ml", "uid": "u1", "generation": generation},
        "spec": {"model": {"levelCount": 3,
                           "source": {"pvc": {"claimName": "models", "path": "r.mar"}}},
                 "objective": {"p95Ms": objective_ms}},
        "status": status or {},
    }


def ready(status: Mapping[str, Any]) -> dict[str, Any]:
    (condition,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    return dict(condition)


def test_a_new_model_gets_its_children_and_one_right_status() -> None:
    api = RecordingApi()
    asyncio.run(reconcile(runtime(api), body()))
    assert sorted(api.child_applies()) == sorted(
        ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "NetworkPolicy",
         "Deployment"])
    (status,) = api.status_writes()
    assert ready(status)["reason"] == "ReplicasNotReady"  # exists, nothing ready yet
    assert status["effectivePolicy"]["objective"]["p95Ms"] == 100


def test_a_spec_change_that_changes_no_child_is_one_status_write() -> None:
    api = RecordingApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, body()))
    (first,) = api.status_writes()
    api.applies.clear()
    asyncio.run(reconcile(rt, body(generation=2, status=first, objective_ms=120)))
    assert api.child_applies() == []
    (status,) = api.status_writes()
    assert status["observedGeneration"] == 2
    assert status["effectivePolicy"]["objective"]["p95Ms"] == 120


def test_a_resume_of_an_unchanged_model_writes_nothing() -> None:
    api = RecordingApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, body()))
    (first,) = api.status_writes()
    api.applies.clear()
    asyncio.run(reconcile(rt, body(status=first)))
    assert api.applies == []


def test_after_a_restart_a_ready_deployment_corrects_the_assumed_status() -> None:
    api = RecordingApi(ready=1)
    asyncio.run(reconcile(runtime(api), body()))  # a fresh process: nothing remembered
    hopeful, corrected = api.status_writes()
    assert ready(hopeful)["status"] == "False"
    assert ready(corrected)["status"] == "True" and corrected["readyReplicas"] == 1


def test_the_key_secret_is_created_once_never_applied() -> None:
    api = RecordingApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, body()))
    assert "Secret" not in api.child_applies()
    (secret,) = [c for c in api.creates if c["kind"] == "Secret"]
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "resnet-inference-key"
    (status,) = api.status_writes()
    assert status["inferenceKeySecret"] == "resnet-inference-key"
    # A spec change (and any later reconcile of this model) sends no create at all.
    api.applies.clear()
    asyncio.run(reconcile(rt, body(generation=2, status=status, objective_ms=120)))
    assert len(api.creates) == 1


def test_after_a_restart_an_existing_key_is_kept_and_nothing_is_degraded() -> None:
    api = RecordingApi()
    asyncio.run(reconcile(runtime(api), body()))
    key = api.stored[("Secret", "resnet-inference-key")]["data"]["key"]
    (status,) = api.status_writes()
    api.applies.clear()
    asyncio.run(reconcile(runtime(api), body(status=status)))  # a fresh process
    assert len(api.creates) == 2  # asked again, answered 409
    assert api.stored[("Secret", "resnet-inference-key")]["data"]["key"] == key
    for written in api.status_writes():
        (degraded,) = [c for c in written["conditions"] if c["type"] == "Degraded"]
        assert degraded["status"] == "False"


def test_two_models_get_different_keys() -> None:
    api = RecordingApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, body()))
    other = body()
    other["metadata"] = {**other["metadata"], "name": "vgg", "uid": "u2"}
    asyncio.run(reconcile(rt, other))
    keys = {s["metadata"]["name"]: s["data"]["key"] for s in api.creates}
    assert set(keys) == {"resnet-inference-key", "vgg-inference-key"}
    assert len(set(keys.values())) == 2


def test_a_refused_create_is_reported_and_retried() -> None:
    api = RecordingApi(refuse_creates=403)
    rt = runtime(api)
    with pytest.raises(kopf.TemporaryError, match="forbidden"):
        asyncio.run(reconcile(rt, body()))
    (degraded,) = [c for c in api.status_writes()[-1]["conditions"] if c["type"] == "Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "ReconcileFailed")
    api.refuse_creates = 0
    asyncio.run(reconcile(rt, body(status=api.status_writes()[-1])))
    assert ("Secret", "resnet-inference-key") in api.stored


def test_no_key_secret_when_the_pods_check_no_key() -> None:
    api = RecordingApi()
    disabled = body()
    disabled["spec"]["serving"] = {"tokenAuthorization": "Disabled"}
    asyncio.run(reconcile(runtime(api), disabled))
    assert api.creates == []
    (status,) = api.status_writes()
    assert "inferenceKeySecret" not in status
