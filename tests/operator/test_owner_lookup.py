"""A child event finds its owner in memory (the kopf index) and reads the API only on a miss."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from elastiserve_operator.kube import KubeApi
from elastiserve_operator.metrics import OperatorMetrics
from elastiserve_operator.reconcile import Runtime, find_owner
from elastiserve_operator.settings import OperatorSettings


class CountingApi:
    """Stands in for ``KubeApi.get``: answers from a dict and counts the reads."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.gets: list[str] = []

    async def get(self, path: str) -> dict[str, Any] | None:
        self.gets.append(path)
        return self.objects.get(path)


PATH = "/apis/elastiserve.io/v1alpha1/namespaces/ml/elasticmodels/resnet"


def model(uid: str, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "resnet", "namespace": "ml", "uid": uid, **meta},
            "spec": {}, "status": {}}


def child(owner_uid: str) -> dict[str, Any]:
    return {"metadata": {"name": "resnet", "namespace": "ml", "ownerReferences": [
        {"apiVersion": "elastiserve.io/v1alpha1", "kind": "ElasticModel", "name": "resnet",
         "uid": owner_uid}]}}


def runtime(api: CountingApi) -> Runtime:
    return Runtime(api=cast(KubeApi, api), prometheus=cast(Any, object()),
                   settings=OperatorSettings(metrics_port=0), metrics=OperatorMetrics())


def lookup(*bodies: dict[str, Any]) -> Any:
    by_key = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in bodies}
    return lambda namespace, name: by_key.get((namespace, name))


def test_an_indexed_owner_costs_no_request() -> None:
    api = CountingApi({})
    found = asyncio.run(find_owner(runtime(api), child("u1"), lookup(model("u1"))))
    assert found is not None and found["metadata"]["uid"] == "u1"
    assert api.gets == []


def test_a_miss_or_another_uid_reads_the_api() -> None:
    api = CountingApi({PATH: model("u2")})
    rt = runtime(api)
    # Deleted and re-created under the same name: the index still holds the old uid.
    found = asyncio.run(find_owner(rt, child("u2"), lookup(model("u1"))))
    assert found is not None and found["metadata"]["uid"] == "u2"
    assert asyncio.run(find_owner(rt, child("u2"))) is not None
    assert api.gets == [PATH, PATH]


def test_no_owner_a_foreign_owner_or_a_deleting_one_is_none() -> None:
    api = CountingApi({PATH: model("u1")})
    rt = runtime(api)
    assert asyncio.run(find_owner(rt, {"metadata": {"name": "x"}})) is None
    assert asyncio.run(find_owner(rt, child("gone"))) is None  # uid no longer exists
    deleting = model("u1", deletionTimestamp="2026-01-01T00:00:00Z")
    assert asyncio.run(find_owner(rt, child("u1"), lookup(deleting))) is None
