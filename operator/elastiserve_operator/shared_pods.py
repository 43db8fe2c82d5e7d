"""The serving pods, listed once per namespace and shared by every model's evaluation.

Each evaluation needs its model's pods: the nodes they run on (node pressure) and, with the
joint replica policy, how long they took to start. Listed per model, that is one LIST per
model per evaluation: with 1,000 models on a 5 s interval, 200 LISTs a second, which kept the
API server and the operator's connection pool busy with answers of one pod each. Here one
LIST of the operator's pods per namespace (the ``app.kubernetes.io/managed-by`` label every
serving pod carries) answers every model in it for ``max_age_s``; concurrent callers share
the one request in flight, and a failed LIST is raised to each of them and not kept.

Only what the readers use is kept of each pod (``slim``): a 1,000-pod listing would otherwise
stay in memory whole between refreshes. ``by_model`` and ``slim`` are pure.
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

    async def of_model(self, namespace: str, model: str) -> list[dict[str, Any]]:
        """The pods of ``model`` (its ``MODEL_LABEL`` value) in ``namespace``, from a
        listing started at most ``max_age_s`` before this call."""
        limit = self.max_age_s
        asked = self.clock()
        listed = self._listed.get(namespace)
        if listed is None or asked - listed[0] > limit:
            pending = self._pending.get(namespace)
            if pending is not None:
                try:
                    listed = await asyncio.shield(pending)
                except asyncio.CancelledError:
                    if not pending.cancelled():
                        raise  # this caller was cancelled, not the LIST it joined
                    listed = None  # the LIST's own caller was: list again
            if listed is None or asked - listed[0] > limit:
                listed = await self._list(namespace)
        return list(listed[1].get(model, ()))

    async def _list(self, namespace: str) -> tuple[float, dict[str, list[dict[str, Any]]]]:
        from .kube import resource_path  # kube imports kopf; keep this module light

        future: asyncio.Future[tuple[float, dict[str, list[dict[str, Any]]]]] = (
            asyncio.get_running_loop().create_future())
        self._pending[namespace] = future
        started = self.clock()
        try:
            pods = await self.api.list(resource_path("v1", "Pod", namespace),
                                       labelSelector=SELECTOR)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        finally:
            if self._pending.get(namespace) is future:
                del self._pending[namespace]
        listed = (started, by_model(pods))
        if started >= self._listed.get(namespace, (float("-inf"), {}))[0]:
            self._listed[namespace] = listed  # not over a newer one that finished first
        future.set_result(listed)
        return listed

    def forget(self, namespace: str) -> None:
        """Drop a namespace's listing (tests; a namespace with no models left)."""
        self._listed.pop(namespace, None)
