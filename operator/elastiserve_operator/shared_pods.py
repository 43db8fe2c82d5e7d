"""The serving pods, listed once per namespace and shared by every model's evaluation.

Each evaluation needs its model's pods: the nodes they run on (node pressure) and, with the
joint replica policy, how long they took to start. Listed per model, that is one LIST per
model per evaluation: with 1,000 models on a 5 s interval, 200 LISTs a second, which kept the
API server and the operator's connection pool busy with answers of one pod each. Here one
LIST of the operator's pods per namespace (the ``app.kubernetes.io/managed-by`` label every
serving pod carries) answers every model in it for ``max_age_s``; callers meanwhile share the
one request in flight (single flight: on a slow API server, a LIST per caller would pile up
behind each other), and a failed LIST is raised to each of them and not kept.

Only what the readers use is kept of each pod (``slim``), page by page (``PAGE_SIZE``, when
the client pages: ``KubeApi.list_pages``): a 1,000-pod listing decoded at once is ~55 MB, and
the process's RSS keeps that high-water mark. ``by_model``, ``slim`` and ``PodTable`` are
pure.

**Watched, where the client can.** Listed every ``max_age_s``, 1,000 pods were ~10 MB of
JSON to decode every 5 s (31 % of the operator's CPU samples at 1,000 models) and as much
for the API server to encode, although almost nothing had changed. With a client that
watches (``KubeApi.watch``), each namespace is listed once, then kept by a watch of the same
selector (``PodTable``, updated per event): an evaluation reads memory, and a pod that
became Ready is seen when the event arrives rather than up to ``max_age_s`` later. The
watch is started on a namespace's first read, whose callers wait for the first listing
(a failed one is raised to them, as before); afterwards a broken watch resumes from the
last version it saw (``resourceVersion``, with bookmarks), lists again on 410 Gone, and
meanwhile the readers keep the last state. An account without ``watch`` on pods (403)
falls back to the listing above, with one warning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from .children import MANAGED_BY, MODEL_LABEL

__all__ = ["PodLister", "PodTable", "PodWatcher", "SharedPods", "by_model", "slim"]

log = logging.getLogger(__name__)

SELECTOR = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())
"""Every pod the operator's Deployments create carries these labels."""


PAGE_SIZE = 100
"""Pods per LIST page: each page is slimmed before the next is read, so a 1,000-pod listing
never sits in memory whole (decoded, it is ~55 MB; the process keeps that high-water mark)."""


WATCH_TIMEOUT_S = 300
"""Seconds the API server keeps one pod watch open before it ends it (then it resumes)."""
RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits before reconnecting a broken watch, one after the other, the last repeated."""


class PodLister(Protocol):
    async def list(self, path: str, **params: str) -> list[dict[str, Any]]: ...


class PodWatcher(Protocol):
    """What a watching client offers (``KubeApi``)."""

    def list_versioned(
        self, path: str, *, page_size: int, **params: str
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str]]: ...

    def watch(
        self, path: str, *, timeout_s: int, **params: str
    ) -> AsyncIterator[dict[str, Any]]: ...


def slim(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What ``hosting_nodes`` and ``pod_start`` read of a pod, nothing else."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    kept_meta = {key: meta[key] for key in ("creationTimestamp", "deletionTimestamp")
                 if meta.get(key)}
    ready = [c for c in status.get("conditions") or []
             if isinstance(c, Mapping) and c.get("type") == "Ready"]
    return {
        "metadata": kept_meta,
        "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")},
        "status": {"phase": status.get("phase"), "conditions": [dict(c) for c in ready]},
    }


def by_model(pods: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The pods grouped by their model label's value (pods without one are left out)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        model = ((pod.get("metadata") or {}).get("labels") or {}).get(MODEL_LABEL)
        if isinstance(model, str) and model:
            grouped.setdefault(model, []).append(slim(pod))
    return grouped


def pod_model(pod: Mapping[str, Any]) -> str | None:
    """The value of a pod's model label, or ``None`` without one."""
    model = ((pod.get("metadata") or {}).get("labels") or {}).get(MODEL_LABEL)
    return model if isinstance(model, str) and model else None


@dataclass
class PodTable:
    """One namespace's serving pods as a watch keeps them: slim pods per model, by pod name.

    ``apply`` takes a watch event (``ADDED``/``MODIFIED``/``DELETED``); a pod whose model
    label changed moves to the other model, one that lost it is dropped."""

    models: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _model_of: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, pods: Iterable[Mapping[str, Any]]) -> PodTable:
        table = cls()
        for pod in pods:
            table.apply("ADDED", pod)
        return table

    def apply(self, kind: str, pod: Mapping[str, Any]) -> None:
        name = str((pod.get("metadata") or {}).get("name") or "")
        if not name:
            return
        before = self._model_of.pop(name, None)
        if before is not None:
            held = self.models.get(before, {})
            held.pop(name, None)
            if not held:
                self.models.pop(before, None)
        model = pod_model(pod)
        if kind != "DELETED" and model is not None:
            self._model_of[name] = model
            self.models.setdefault(model, {})[name] = slim(pod)

    def of_model(self, model: str) -> list[dict[str, Any]]:
        return list(self.models.get(model, {}).values())


@dataclass
class SharedPods:
    """Per-process cache of the serving pods, one LIST per namespace per ``max_age_s``."""

    api: PodLister
    max_age_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _listed: dict[str, tuple[float, dict[str, list[dict[str, Any]]]]] = field(
        default_factory=dict)
    _pending: dict[str, asyncio.Future[tuple[float, dict[str, list[dict[str, Any]]]]]] = field(
        default_factory=dict)
    """The LIST in flight per namespace: every caller meanwhile waits for it."""
    _tables: dict[str, PodTable] = field(default_factory=dict)
    """Per watched namespace: its pods as the watch keeps them."""
    _watchers: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    """Per namespace: the task that lists and then watches it."""
    _synced: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    """Per namespace being watched: done once the first listing is in ``_tables``."""
    _listing_only: set[str] = field(default_factory=set)
    """Namespaces where the watch was refused (403): listed every ``max_age_s`` instead."""

    async def of_model(self, namespace: str, model: str) -> list[dict[str, Any]]:
        """The pods of ``model`` (its ``MODEL_LABEL`` value) in ``namespace``: as the
        namespace's watch keeps them, or (a client that cannot watch, or may not) from a
        listing started at most ``max_age_s`` ago, or the one in flight."""
        if namespace not in self._listing_only and _watching(self.api):
            table = self._tables.get(namespace)
            if table is None:
                await asyncio.shield(self._watch(namespace))
                table = self._tables.get(namespace)
            if table is not None:
                return table.of_model(model)
        listed = self._listed.get(namespace)
        if listed is None or self.clock() - listed[0] > self.max_age_s:
            task = self._pending.get(namespace)
            if task is None:
                # Its own task: a caller cancelled meanwhile (its evaluation timed out)
                # does not cancel the LIST the others are waiting for.
                task = asyncio.ensure_future(self._list(namespace))
                self._pending[namespace] = task
                task.add_done_callback(lambda done: self._done(namespace, done))
            listed = await asyncio.shield(task)
        return list(listed[1].get(model, ()))

    async def _list(self, namespace: str) -> tuple[float, dict[str, list[dict[str, Any]]]]:
        from .kube import resource_path  # kube imports kopf; keep this module light

        started = self.clock()
        path = resource_path("v1", "Pod", namespace)
        pages = getattr(self.api, "list_pages", None)
        if pages is None:  # a client without paging (the tests' fakes)
            grouped = by_model(await self.api.list(path, labelSelector=SELECTOR))
        else:
            grouped = {}
            async for page in pages(path, page_size=PAGE_SIZE, labelSelector=SELECTOR):
                for model, pods in by_model(page).items():
                    grouped.setdefault(model, []).extend(pods)
        listed = (started, grouped)
        self._listed[namespace] = listed
        return listed

    def _done(self, namespace: str, task: asyncio.Future[Any]) -> None:
        if self._pending.get(namespace) is task:
            del self._pending[namespace]
        if not task.cancelled():
            task.exception()  # retrieved: raised to the waiters, if any, not logged as lost

    def forget(self, namespace: str) -> None:
        """Drop a namespace's listing and stop its watch (tests; a namespace with no models
        left)."""
        self._listed.pop(namespace, None)
        self._tables.pop(namespace, None)
        self._synced.pop(namespace, None)
        watcher = self._watchers.pop(namespace, None)
        if watcher is not None:
            watcher.cancel()

    async def close(self) -> None:
        """Stop every watch (operator shutdown)."""
        watchers = list(self._watchers.values())
        for namespace in list(self._watchers):
            self.forget(namespace)
        await asyncio.gather(*watchers, return_exceptions=True)

    def _watch(self, namespace: str) -> asyncio.Future[None]:
        """The namespace's first listing: started here unless it is running (one watcher per
        namespace); a watcher that failed before its first listing is started again."""
        synced = self._synced.get(namespace)
        if synced is None or (synced.done() and namespace not in self._tables):
            synced = asyncio.get_running_loop().create_future()
            self._synced[namespace] = synced
            watcher = asyncio.ensure_future(self._keep(namespace, synced))
            self._watchers[namespace] = watcher
            watcher.add_done_callback(lambda done: self._watcher_done(namespace, done))
        return synced

    def _watcher_done(self, namespace: str, task: asyncio.Future[None]) -> None:
        if self._watchers.get(namespace) is task:
            del self._watchers[namespace]
        if not task.cancelled():
            task.exception()  # retrieved: its first-listing error went to the waiters

    async def _keep(self, namespace: str, synced: asyncio.Future[None]) -> None:
        """List the namespace's pods, then follow them with watches until cancelled."""
        from .kube import resource_path

        api = cast(PodWatcher, self.api)
        path = resource_path("v1", "Pod", namespace)
        try:
            await self._follow(namespace, api, path, synced)
        finally:
            if not synced.done():
                synced.cancel()  # stopped before the first listing: the waiters stop too

    async def _follow(
        self, namespace: str, api: PodWatcher, path: str, synced: asyncio.Future[None]
    ) -> None:
        from .kube import ApiError

        version = ""
        failures = 0
        while True:
            try:
                if not version:
                    table = PodTable()
                    async for page, listed in api.list_versioned(
                            path, page_size=PAGE_SIZE, labelSelector=SELECTOR):
                        for pod in page:
                            table.apply("ADDED", pod)
                        version = listed
                    self._tables[namespace] = table
                    if not synced.done():
                        synced.set_result(None)
                table = self._tables[namespace]
                async for event in api.watch(path, timeout_s=WATCH_TIMEOUT_S,
                                             labelSelector=SELECTOR, resourceVersion=version):
                    kind, obj = str(event.get("type") or ""), event.get("object") or {}
                    if kind == "ERROR":
                        raise ApiError(int(obj.get("code") or 0), str(obj.get("message")))
                    version = str((obj.get("metadata") or {}).get("resourceVersion")
                                  or version)
                    if kind != "BOOKMARK":
                        table.apply(kind, obj)
                    failures = 0
            except Exception as error:
                if not synced.done():  # the first listing: its callers get the error
                    synced.set_exception(error)
                    raise
                if not isinstance(error, ApiError):
                    # Unexpected (a body that does not decode, an event of a shape the API
                    # does not send): said once, and the table dropped, so the next reader
                    # starts a fresh listing and watch instead of reading a frozen table.
                    log.exception("pod watch in %s stopped: listing it again on the next "
                                  "read", namespace)
                    self._tables.pop(namespace, None)
                    return
                if error.status == 403:
                    log.warning("pods in %s cannot be watched (%s): listed every %.0f s "
                                "instead; grant the operator 'watch' on pods", namespace,
                                error, self.max_age_s)
                    self._listing_only.add(namespace)
                    self._tables.pop(namespace, None)
                    return
                if error.status == 410:
                    version = ""  # too old to resume from: list again
                    continue
                log.info("pod watch in %s broke (%s): resuming", namespace, error)
            delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
            failures += 1
            await asyncio.sleep(delay if failures > 1 else 0.0)


def _watching(api: object) -> bool:
    """Whether ``api`` can list with versions and watch (``PodWatcher``)."""
    return hasattr(api, "watch") and hasattr(api, "list_versioned")
