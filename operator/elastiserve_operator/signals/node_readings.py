"""Gather one ``NodePressure`` per node that hosts a model's replicas (the I/O half).

Three sources, each cached for ``cache_s`` and shared by every model on the same node, each
read once for all the callers that ask while it is read (``_once``):

* the ``Node`` object (allocatable), ``GET /api/v1/nodes/<name>``;
* ``metrics.k8s.io`` ``NodeMetrics`` (CPU/memory usage), when metrics-server runs (a 404
  on the whole API switches the lookups off for the life of the process);
* the exporter series (Jetson temperature / GPU load, CPU/memory fallback), one PromQL
  query per configured selector for every node at once (``node_series``).

``node_pressure`` (pure) combines them. A source that fails is no reading for that node,
never an error for the policy: a Node that cannot be read still appears (with whatever the
exporter said), so that a node with replicas is never mistaken for one without.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, cast

from ..observation import NodePressure
from .node_series import NodeSeries, read_node_series
from .nodes import ExporterNames, node_pressure
from .prometheus import VectorSource

__all__ = ["NodeApi", "NodeReadings", "hosting_nodes"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class NodeApi(Protocol):
    """The part of ``kube.KubeApi`` this module uses."""

    async def get(self, path: str) -> dict[str, Any] | None: ...

    async def list(self, path: str, **params: str) -> list[dict[str, Any]]: ...

    async def request(self, method: str, path: str) -> dict[str, Any]: ...


def hosting_nodes(pods: list[dict[str, Any]]) -> list[str]:
    """Names of the nodes running (or about to run) these pods, sorted (pure)."""
    names = {
        str((pod.get("spec") or {}).get("nodeName") or "")
        for pod in pods
        if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        and not (pod.get("metadata") or {}).get("deletionTimestamp")
    }
    return sorted(names - {""})


@dataclass
class NodeReadings:
    """Per-process cache of node readings; ``read(nodes)`` for one model's nodes."""

    api: NodeApi
    source: VectorSource | None
    names: ExporterNames = field(default_factory=ExporterNames)
    cache_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    metrics_server: bool = True
    _nodes: dict[str, tuple[float, dict[str, Any] | None, dict[str, Any] | None]] = field(
        default_factory=dict
    )
    _series: tuple[float, NodeSeries] | None = None
    _flights: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    """Readings in flight by key (``_once``)."""

    async def read(self, nodes: list[str]) -> dict[str, NodePressure]:
        """``NodePressure`` of each node in ``nodes`` (every one appears)."""
        series = await self._exporter()
        readings: dict[str, NodePressure] = {}
        for node in nodes:
            obj, usage = await self._node(node)
            readings[node] = node_pressure(obj or {}, usage, series.for_node(node), self.names)
        return readings

    async def _once(self, key: str, read: Callable[[], Awaitable[T]]) -> T:
        """``read()`` once for every caller that asks for ``key`` while it runs (single
        flight): when a cached reading expires, the models evaluating at that moment would
        otherwise each send the same queries (at 1,000 models, a burst of exporter queries
        every ``cache_s`` that made Prometheus time out). Its own task, so a caller
        cancelled meanwhile does not cancel it for the others."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(read())
            self._flights[key] = task

            def done(finished: asyncio.Future[Any]) -> None:
                if self._flights.get(key) is finished:
                    del self._flights[key]
                if not finished.cancelled():
                    finished.exception()  # raised to the waiters, not logged as lost

            task.add_done_callback(done)
        return cast(T, await asyncio.shield(task))

    async def _exporter(self) -> NodeSeries:
        now = self.clock()
        if self._series is not None and now - self._series[0] < self.cache_s:
            return self._series[1]
        return await self._once("series", self._read_series)

    async def _read_series(self) -> NodeSeries:
        now = self.clock()
        if self.source is None or not self.names.selectors():
            series = NodeSeries({})
        else:
            series = await read_node_series(self.source, self.names)
            for error in series.errors:
                log.warning("node exporter series unavailable: %s", error)
        self._series = (now, series)
        return series

    async def _node(self, node: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        cached = self._nodes.get(node)
        if cached is not None and self.clock() - cached[0] < self.cache_s:
            return cached[1], cached[2]
        return await self._once(f"node/{node}", lambda: self._read_node(node))

    async def _read_node(
        self, node: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        from ..kube import ApiError, resource_path  # kube imports kopf; keep this module light

        now = self.clock()
        obj: dict[str, Any] | None = None
        usage: dict[str, Any] | None = None
        try:
            obj = await self.api.get(resource_path("v1", "Node", None, node))
        except ApiError as error:
            log.warning("node %s unreadable: %s", node, error)
        if self.metrics_server:
            try:
                usage = await self.api.request(
                    "GET", f"/apis/metrics.k8s.io/v1beta1/nodes/{node}"
                )
            except ApiError as error:
                # No metrics-server (404 on the whole API) is normal on small clusters.
                if error.status == 404 and "nodes" not in str(error):
                    self.metrics_server = False
        self._nodes[node] = (now, obj, _mapping(usage))
        return obj, _mapping(usage)



def _mapping(raw: Any) -> dict[str, Any] | None:
    return dict(raw) if isinstance(raw, Mapping) else None
