"""An evaluation compares its status with the freshest one the operator knows: kopf's copy,
or the answer to its own last write when the copy lags behind it (``status_memory``)."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

from elastiserve_operator.reconcile import evaluate, reconcile
from elastiserve_operator.status_memory import StatusMemory, Written, fresher_status
from tests.operator.test_replicas_reconcile import ReplicaApi, merged_status, model, runtime


def body(version: str | None, status: dict[str, Any], uid: str = "u1") -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ml", "name": "m", "uid": uid}
    if version is not None:
        meta["resourceVersion"] = version
    return {"metadata": meta, "status": status}


OURS = Written("u1", 10, {"activeLevel": 1})


def test_the_answer_to_our_write_is_used_while_kopfs_copy_is_older() -> None:
    assert fresher_status(body("7", {"activeLevel": 2}), OURS) == ({"activeLevel": 1}, True)


def test_kopfs_copy_is_used_once_it_caught_up_or_passed_our_write() -> None:
    for version in ("10", "12"):
        assert fresher_status(body(version, {"activeLevel": 3}), OURS) == (
            {"activeLevel": 3}, False)


def test_no_write_another_model_of_that_name_or_an_opaque_version_use_kopfs_copy() -> None:
    copy_status = {"activeLevel": 2}
    assert fresher_status(body("7", copy_status), None) == (copy_status, False)
    assert fresher_status(body("7", copy_status, uid="u2"), OURS) == (copy_status, False)
    assert fresher_status(body("a7", copy_status), OURS) == (copy_status, False)
    assert fresher_status(body(None, copy_status), OURS) == (copy_status, False)


def answer(version: str, level: int, uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"namespace": "ml", "name": "m", "uid": uid,
                         "resourceVersion": version}, "status": {"activeLevel": level}}


def test_the_memory_keeps_the_newest_answer_until_the_copy_catches_up() -> None:
    memory = StatusMemory()
    memory.wrote(answer("10", 1))
    memory.wrote(answer("9", 5))  # an older answer arriving late changes nothing
    assert memory.status_of(body("7", {"activeLevel": 2})) == {"activeLevel": 1}
    assert len(memory) == 1
    assert memory.status_of(body("10", {"activeLevel": 1})) == {"activeLevel": 1}
    assert len(memory) == 0  # caught up: dropped
    memory.wrote(answer("11", 1))
    memory.forget("ml", "m")
    assert len(memory) == 0
    memory.wrote(answer("x", 1))  # not a number: not kept
    assert len(memory) == 0


class ServerApi(ReplicaApi):
    """Answers a status apply as the API server does: the whole model, its status merged
    (conditions by type), at the next resourceVersion."""

    def __init__(self) -> None:
        super().__init__()
        self.version = 100
        self.model_status: dict[str, Any] = {}

    async def apply(self, obj: Mapping[str, Any], *, manager: str = "",
                    subresource: str = "", force: bool = True) -> dict[str, Any]:
        answer = await super().apply(obj, manager=manager, subresource=subresource)
        if subresource != "status":
            return answer
        self.version += 1
        conditions = {c["type"]: c for c in self.model_status.get("conditions", [])}
        conditions.update({c["type"]: c for c in obj["status"].get("conditions", [])})
        self.model_status = {**self.model_status, **copy.deepcopy(dict(obj["status"])),
                             "conditions": list(conditions.values())}
        return {"metadata": {"namespace": "ml", "name": "resnet", "uid": "u1",
                             "resourceVersion": str(self.version)},
                "status": copy.deepcopy(self.model_status)}


def test_an_evaluation_on_a_lagging_copy_does_not_write_what_it_wrote_before() -> None:
    api = ServerApi()
    rt = runtime(api)
    asyncio.run(reconcile(rt, model()))
    status = merged_status(api)
    stale = model(status=status)
    stale["metadata"]["resourceVersion"] = str(api.version)  # kopf's copy after the reconcile
    asyncio.run(evaluate(rt, stale))
    writes = len(api.status_writes())
    # The watch has not delivered that write yet: the same copy again, nothing new to say.
    asyncio.run(evaluate(rt, stale))
    assert len(api.status_writes()) == writes
    skipped = rt.metrics.registry.get_sample_value(
        "elastiserve_operator_status_writes_skipped_total", {"reason": "stale_copy"})
    assert skipped == 1.0
    # Once the copy has caught up, it is what the evaluation reads (and the memory is freed).
    fresh = model(status=copy.deepcopy(api.model_status))
    fresh["metadata"]["resourceVersion"] = str(api.version)
    asyncio.run(evaluate(rt, fresh))
    assert len(api.status_writes()) == writes
    assert len(rt.statuses) == 0
    # Without a version to compare (a copy that never had one), the copy decides, as before.
    asyncio.run(evaluate(rt, model(status=status)))
    assert len(api.status_writes()) == writes + 1
