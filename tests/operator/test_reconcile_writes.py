"""How many requests a reconcile sends, and what its status says, behind the ``KubeApi`` seam.

The footprint benchmark measures the time; these pin the request pattern it depends on: a
spec change is one status write (children unchanged are skipped), a resume of an unchanged
model writes nothing, a new model's status is right the first time, and a Deployment found
ready by its first apply after a restart gets its status corrected.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any, cast

from elastiserve_operator.kube import KubeApi
from elastiserve_operator.metrics import OperatorMetrics
from elastiserve_operator.reconcile import Runtime, reconcile
from elastiserve_operator.settings import OperatorSettings


class RecordingApi:
    """Answers applies like the API server would (the object back, a new resourceVersion);
    a Deployment comes back with ``ready`` ready replicas."""

    def __init__(self, ready: int = 0) -> None:
        self.ready = ready
        self.applies: list[tuple[str, str, dict[str, Any]]] = []

    async def apply(
        self, obj: Mapping[str, Any], *, manager: str = "", subresource: str = ""
    ) -> dict[str, Any]:
        self.applies.append((str(obj["kind"]), subresource, copy.deepcopy(dict(obj))))
        answer = copy.deepcopy(dict(obj))
        answer["metadata"] = {**answer["metadata"], "resourceVersion": str(len(self.applies))}
        if obj["kind"] == "Deployment":
            answer["status"] = {"readyReplicas": self.ready} if self.ready else {}
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
        "spec": {"model": {"levelCount": 3, "source": {"localPath": "/m/r.mar"}},
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
        ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "Deployment"])
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
