"""One pod LIST per namespace shared by every model's evaluation: grouping, slimming,
the cache's age, one request for concurrent callers, failures not kept."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from elastiserve_operator.children import MODEL_LABEL
from elastiserve_operator.shared_pods import SELECTOR, SharedPods, by_model, slim


def pod(model: str | None, node: str = "n1", *, ready: bool = True) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "elastiserve-operator"}
    if model is not None:
        labels[MODEL_LABEL] = model
    return {
        "metadata": {"name": f"{model}-x", "labels": labels,
                     "creationTimestamp": "2026-03-01T10:00:00Z",
                     "managedFields": [{"manager": "kube-controller-manager"}]},
        "spec": {"nodeName": node, "containers": [{"name": "torchserve", "image": "i"}]},
        "status": {"phase": "Running", "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False",
             "lastTransitionTime": "2026-03-01T10:00:12Z"}]},
    }


class Lister:
    """The API's ``list``; each call waits for ``gate`` (when set) so tests can hold a
    LIST in flight; ``fail`` makes the next call raise."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def list(self, path: str, **params: str) -> list[dict[str, Any]]:
        self.calls.append((path, params))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        return list(self.pods)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_pods_are_grouped_by_model_and_unlabelled_ones_left_out() -> None:
    grouped = by_model([pod("a"), pod("b", "n2"), pod("a", "n3"), pod(None)])
    assert sorted(grouped) == ["a", "b"]
    assert [p["spec"]["nodeName"] for p in grouped["a"]] == ["n1", "n3"]


def test_slim_keeps_what_node_pressure_and_pod_start_read() -> None:
    kept = slim(pod("a"))
    assert kept == {
        "metadata": {"creationTimestamp": "2026-03-01T10:00:00Z"},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-03-01T10:00:12Z"}]},
    }


def test_what_the_readers_compute_is_the_same_on_slim_pods() -> None:
    from elastiserve_operator.pod_start import pod_start_seconds
    from elastiserve_operator.signals.node_readings import hosting_nodes

    full = [pod("a", "n1"), pod("a", "n2", ready=False)]
    slimmed = by_model(full)["a"]
    assert hosting_nodes(slimmed) == hosting_nodes(full) == ["n1", "n2"]
    assert pod_start_seconds(slimmed) == pod_start_seconds(full) == 12.0


def test_one_list_per_namespace_answers_every_model_until_it_is_too_old() -> None:
    api, clock = Lister([pod("a"), pod("b")]), Clock()
    shared = SharedPods(api, max_age_s=5.0, clock=clock)

    async def run() -> None:
        assert len(await shared.of_model("ml", "a")) == 1
        assert len(await shared.of_model("ml", "b")) == 1
        assert await shared.of_model("ml", "c") == []
        assert api.calls == [("/api/v1/namespaces/ml/pods", {"labelSelector": SELECTOR})]
        clock.now += 5.0
        await shared.of_model("ml", "a")
        assert len(api.calls) == 1  # 5 s old: still fresh enough
        clock.now += 0.1
        await shared.of_model("ml", "a")
        assert len(api.calls) == 2
        await shared.of_model("other", "a")  # another namespace, its own listing
        assert api.calls[-1][0] == "/api/v1/namespaces/other/pods"

    asyncio.run(run())


def test_concurrent_callers_share_the_list_in_flight() -> None:
    api = Lister([pod(f"m{i}") for i in range(50)])
    shared = SharedPods(api, clock=Clock())

    async def run() -> list[list[dict[str, Any]]]:
        api.gate = asyncio.Event()
        waiting = [asyncio.ensure_future(shared.of_model("ml", f"m{i}")) for i in range(50)]
        await asyncio.sleep(0)
        api.gate.set()
        return await asyncio.gather(*waiting)

    answers = asyncio.run(run())
    assert len(api.calls) == 1
    assert all(len(found) == 1 for found in answers)


def test_a_failed_list_reaches_every_waiter_and_is_not_kept() -> None:
    api = Lister([pod("a")])
    shared = SharedPods(api, clock=Clock())

    async def run() -> list[Any]:
        api.gate = asyncio.Event()
        api.fail = RuntimeError("API server unavailable")
        waiting = [asyncio.ensure_future(shared.of_model("ml", "a")) for _ in range(3)]
        await asyncio.sleep(0)
        api.gate.set()
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        api.gate = None
        outcomes.append(await shared.of_model("ml", "a"))  # the next call lists again
        return outcomes

    *failed, after = asyncio.run(run())
    assert [str(e) for e in failed] == ["API server unavailable"] * 3
    assert len(after) == 1 and len(api.calls) == 2


def test_a_cancelled_caller_does_not_cancel_the_list_the_others_wait_for() -> None:
    api = Lister([pod("a")])
    shared = SharedPods(api, clock=Clock())

    async def run() -> list[dict[str, Any]]:
        api.gate = asyncio.Event()
        first = asyncio.ensure_future(shared.of_model("ml", "a"))  # it starts the LIST
        await asyncio.sleep(0)
        second = asyncio.ensure_future(shared.of_model("ml", "a"))  # it joins
        await asyncio.sleep(0)
        first.cancel()  # e.g. its evaluation timed out
        with pytest.raises(asyncio.CancelledError):
            await first
        api.gate.set()
        return await second

    assert len(asyncio.run(run())) == 1
    assert len(api.calls) == 1


def test_a_slow_list_is_joined_not_repeated() -> None:
    """Callers that arrive while a LIST runs longer than the cache's age wait for it."""
    api, clock = Lister([pod("a")]), Clock()
    shared = SharedPods(api, max_age_s=5.0, clock=clock)

    async def run() -> None:
        api.gate = asyncio.Event()
        first = asyncio.ensure_future(shared.of_model("ml", "a"))
        await asyncio.sleep(0)
        clock.now += 30.0  # the API server takes 30 s to answer
        later = [asyncio.ensure_future(shared.of_model("ml", "a")) for _ in range(10)]
        await asyncio.sleep(0)
        api.gate.set()
        await asyncio.gather(first, *later)

    asyncio.run(run())
    assert len(api.calls) == 1


class PagingLister(Lister):
    """A client that pages like ``KubeApi.list_pages``."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        super().__init__(pods)
        self.pages: list[int] = []

    async def list_pages(self, path: str, *, page_size: int, **params: str) -> Any:
        self.calls.append((path, params))
        for first in range(0, len(self.pods), page_size):
            page = self.pods[first:first + page_size]
            self.pages.append(len(page))
            yield page


def test_a_paging_client_is_read_page_by_page_with_the_same_answer() -> None:
    pods = [pod(f"m{i % 7}", f"n{i}") for i in range(250)]
    paged, whole = PagingLister(pods), Lister(pods)

    async def run(api: Lister) -> dict[str, list[dict[str, Any]]]:
        shared = SharedPods(api, clock=Clock())
        return {f"m{k}": await shared.of_model("ml", f"m{k}") for k in range(7)}

    assert asyncio.run(run(paged)) == asyncio.run(run(whole))
    assert paged.pages == [100, 100, 50]
    assert paged.calls == [("/api/v1/namespaces/ml/pods", {"labelSelector": SELECTOR})]


def named(model: str | None, name: str, node: str = "n1") -> dict[str, Any]:
    found = pod(model, node)
    found["metadata"]["name"] = name
    return found


class Watcher:
    """A watching client (``KubeApi.list_versioned``/``watch``): each listing answers
    ``pods`` at version ``"10"``; each watch yields what the test puts on ``events`` until a
    ``None`` ends it; an exception put there is raised by the watch."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.lists = 0
        self.watches: list[str] = []
        self.events: asyncio.Queue[dict[str, Any] | Exception | None] = asyncio.Queue()
        self.list_error: Exception | None = None
        self.seen = asyncio.Event()

    async def list_versioned(self, path: str, *, page_size: int, **params: str) -> Any:
        self.lists += 1
        if self.list_error is not None:
            error, self.list_error = self.list_error, None
            raise error
        yield list(self.pods), "10"

    async def watch(self, path: str, *, timeout_s: int, **params: str) -> Any:
        assert params["labelSelector"] == SELECTOR
        self.watches.append(params["resourceVersion"])
        while True:
            self.seen.set()
            item = await self.events.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def list(self, path: str, **params: str) -> list[dict[str, Any]]:
        return list(self.pods)


def event(kind: str, body: dict[str, Any], version: str) -> dict[str, Any]:
    body["metadata"]["resourceVersion"] = version
    return {"type": kind, "object": body}


async def drained(api: Watcher) -> None:
    """Until the fake watch has handed out everything queued and waits for more."""
    while not api.events.empty():
        api.seen.clear()
        await api.seen.wait()


def test_a_watched_namespace_is_listed_once_and_kept_by_its_events() -> None:
    api = Watcher([named("a", "a-1"), named("b", "b-1")])
    shared = SharedPods(api)

    async def run() -> None:
        assert [p["spec"]["nodeName"] for p in await shared.of_model("ml", "a")] == ["n1"]
        for item in (event("ADDED", named("a", "a-2", "n2"), "11"),
                     event("MODIFIED", named("b", "b-1", "n3"), "12"),
                     event("DELETED", named("a", "a-1"), "13"),
                     event("MODIFIED", named("c", "b-1", "n3"), "14"),  # relabelled
                     {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}}):
            api.events.put_nowait(item)
        await drained(api)
        assert [p["spec"]["nodeName"] for p in await shared.of_model("ml", "a")] == ["n2"]
        assert await shared.of_model("ml", "b") == []
        assert [p["spec"]["nodeName"] for p in await shared.of_model("ml", "c")] == ["n3"]
        api.events.put_nowait(None)  # the server ends the watch: resumed at the last version
        await drained(api)
        await asyncio.sleep(0)
        await shared.close()

    asyncio.run(run())
    assert api.lists == 1
    assert api.watches == ["10", "15"]


def test_a_watch_too_old_to_resume_lists_again() -> None:
    api = Watcher([named("a", "a-1")])
    shared = SharedPods(api)

    async def run() -> None:
        await shared.of_model("ml", "a")
        api.pods = [named("a", "a-1", "n9")]
        api.events.put_nowait({"type": "ERROR", "object": {"code": 410, "message": "gone"}})
        await drained(api)
        while len(api.watches) < 2:
            await asyncio.sleep(0)
        assert [p["spec"]["nodeName"] for p in await shared.of_model("ml", "a")] == ["n9"]
        await shared.close()

    asyncio.run(run())
    assert api.lists == 2


def test_without_watch_permission_the_namespace_is_listed_instead() -> None:
    from elastiserve_operator.kube import ApiError

    api = Watcher([named("a", "a-1")])
    shared = SharedPods(api)

    async def run() -> None:
        await shared.of_model("ml", "a")
        api.events.put_nowait(ApiError(403, "pods is forbidden: cannot watch"))
        while "ml" not in shared._listing_only:
            await asyncio.sleep(0)
        api.pods = [named("a", "a-1", "n7")]  # listed now: what a LIST says
        assert [p["spec"]["nodeName"] for p in await shared.of_model("ml", "a")] == ["n7"]
        await shared.close()

    asyncio.run(run())


def test_a_failed_first_listing_reaches_the_callers_and_is_tried_again() -> None:
    from elastiserve_operator.kube import ApiTransient

    api = Watcher([named("a", "a-1")])
    api.list_error = ApiTransient(503, "unavailable")
    shared = SharedPods(api)

    async def run() -> None:
        with pytest.raises(ApiTransient):
            await shared.of_model("ml", "a")
        assert len(await shared.of_model("ml", "a")) == 1
        await shared.close()

    asyncio.run(run())
    assert api.lists == 2


def test_an_unexpected_watch_failure_is_logged_and_the_next_read_lists_again(
        caplog: pytest.LogCaptureFixture) -> None:
    """Not a frozen table: a watch that fails in a way the API does not (here a ValueError,
    as a body that does not decode) says so once, and the next reader starts afresh."""
    api = Watcher([named("a", "a-1")])
    shared = SharedPods(api)

    async def run() -> None:
        await shared.of_model("ml", "a")
        api.events.put_nowait(ValueError("half a JSON object"))
        while "ml" in shared._tables:
            await asyncio.sleep(0)
        api.pods = [named("a", "a-1", "n5")]
        assert [p["spec"]["nodeName"] for p in await shared.of_model("ml", "a")] == ["n5"]
        await shared.close()

    with caplog.at_level("ERROR", logger="elastiserve_operator.shared_pods"):
        asyncio.run(run())
    assert api.lists == 2
    assert any("pod watch in ml stopped" in r.getMessage() for r in caplog.records)


def test_a_forgotten_namespace_stops_its_watch() -> None:
    api = Watcher([named("a", "a-1")])
    shared = SharedPods(api)

    async def run() -> None:
        await shared.of_model("ml", "a")
        watcher = shared._watchers["ml"]
        shared.forget("ml")
        with pytest.raises(asyncio.CancelledError):
            await watcher
        assert "ml" not in shared._watchers and "ml" not in shared._tables
        await shared.close()

    asyncio.run(run())


def test_the_last_model_of_a_namespace_going_stops_its_pod_watch() -> None:
    from elastiserve_operator.children import names_for
    from elastiserve_operator.kube import KubeApi
    from elastiserve_operator.metrics import OperatorMetrics
    from elastiserve_operator.reconcile import Runtime, forget_model
    from elastiserve_operator.settings import OperatorSettings

    forgotten: list[str] = []

    class Pods(SharedPods):
        def forget(self, namespace: str) -> None:
            forgotten.append(namespace)

    rt = Runtime(api=cast(KubeApi, object()), prometheus=cast(Any, object()),
                 settings=OperatorSettings(metrics_port=0), metrics=OperatorMetrics())
    rt.pods = Pods(cast(Any, object()))
    for name in ("a", "b"):
        rt.deployments[("ml", names_for(name).deployment)] = {}
    forget_model(rt, "ml", "a")
    assert forgotten == []  # model b still needs the namespace's pods
    forget_model(rt, "ml", "b")
    assert forgotten == ["ml"]
