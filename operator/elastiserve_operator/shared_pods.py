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
the process's RSS keeps that high-water mark. ``by_model`` and ``slim`` are pure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .children import MANAGED_BY, MODEL_LABEL

__all__ = ["PodLister", "SharedPods", "by_model", "slim"]

SELECTOR = ",".join(f"{key}={value}" for key, value in MANAGED_BY.items())
"""Every pod the operator's Deployments create carries these labels."""


PAGE_SIZE = 100
"""Pods per LIST page: each page is slimmed before the next is read, so a 1,000-pod listing
never sits in memory whole (decoded, it is ~55 MB; the process keeps that high-water mark)."""


class PodLister(Protocol):
    async def list(self, path: str, **params: str) -> list[dict[str, Any]]: ...


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

    async def of_model(self, namespace: str, model: str) -> list[dict[str, Any]]:
        """The pods of ``model`` (its ``MODEL_LABEL`` value) in ``namespace``, from a
        listing started at most ``max_age_s`` ago, or the one in flight."""
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
        """Drop a namespace's listing (tests; a namespace with no models left)."""
        self._listed.pop(namespace, None)
