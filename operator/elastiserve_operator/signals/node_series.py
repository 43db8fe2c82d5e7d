"""Per-node exporter series from Prometheus: Jetson temperature and GPU load (and CPU/memory
where metrics-server is absent), one value per node.

One query per configured selector answers for every node at once, so the cost does not
grow with the number of models (the operator caches the answer for a few seconds and
shares it). Each query is built by :func:`per_node_query`::

    max by (node) (SEL unless (time() - timestamp(SEL)) > 60)

* ``max by (node)``: the hottest sensor / busiest GPU of each node (a node's exporter may
  export one series per thermal zone);
* ``unless ... > max_age``: a sample older than ``max_age_s`` is no reading. Prometheus
  already drops a series when its target's scrape fails (a staleness marker); this also
  catches a value that stopped moving without one (an exporter that serves a cached value,
  a federated series, a Prometheus restart within the 5 min lookback).

What comes back is reduced by :func:`values_by_node` (pure): a series without the node
label, or NaN/Inf, is no reading; a failed query is no reading for every node and one line
in ``errors``. "No reading" never narrows anything (``node_caps``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .nodes import ExporterNames
from .prometheus import LabelledValue, PrometheusError, VectorSource

__all__ = [
    "NodeSeries",
    "per_node_query",
    "read_node_series",
    "valid_label",
    "values_by_node",
]

_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def valid_label(name: str) -> bool:
    """Whether ``name`` is a Prometheus label name (checked before it is put into PromQL)."""
    return bool(_LABEL.match(name)) and not name.startswith("__")


def per_node_query(selector: str, node_label: str, max_age_s: float) -> str:
    """PromQL for the freshest value of ``selector`` per node (see the module docstring)."""
    if not valid_label(node_label):
        raise ValueError(f"not a label name: {node_label!r}")
    return (
        f"max by ({node_label}) ({selector} unless (time() - timestamp({selector})) "
        f"> {max_age_s:g})"
    )


def values_by_node(series: Iterable[LabelledValue], node_label: str) -> dict[str, float]:
    """Node name -> the largest value among its series; unlabelled series are dropped."""
    found: dict[str, float] = {}
    for sample in series:
        node = sample.labels.get(node_label)
        if node:
            found[node] = max(sample.value, found.get(node, sample.value))
    return found


@dataclass(frozen=True)
class NodeSeries:
    """What the exporters said: node -> {selector -> value}, and what failed."""

    values: Mapping[str, Mapping[str, float]]
    errors: tuple[str, ...] = ()

    def for_node(self, node: str) -> Mapping[str, float]:
        """The values of one node in the shape ``node_pressure`` takes (empty: none)."""
        return self.values.get(node, {})


async def read_node_series(source: VectorSource, names: ExporterNames) -> NodeSeries:
    """Run one query per configured selector concurrently and regroup by node."""
    selectors = names.selectors()
    outcomes = await asyncio.gather(
        *(source.query_vector(per_node_query(s, names.node_label, names.max_age_s))
          for s in selectors),
        return_exceptions=True,
    )
    values: dict[str, dict[str, float]] = {}
    errors: list[str] = []
    for selector, outcome in zip(selectors, outcomes, strict=True):
        if isinstance(outcome, PrometheusError):
            errors.append(f"{selector}: {outcome}")
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        for node, value in values_by_node(outcome, names.node_label).items():
            values.setdefault(node, {})[selector] = value
    return NodeSeries(values, tuple(errors))
