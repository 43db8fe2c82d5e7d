"""Node readings -> ``NodePressure`` (pure: dicts in, dataclass out).

Inputs are what the operator already has as plain dicts:

* the ``Node`` object (``status.allocatable``, falling back to ``status.capacity``);
* the ``metrics.k8s.io/v1beta1`` ``NodeMetrics`` object (``usage.cpu``/``usage.memory``),
  when metrics-server runs;
* exporter values (name -> value, or name -> list of values for one value per thermal
  zone / GPU), already fetched from Prometheus by the caller (``node_series``), for what
  metrics-server does not know: Jetson temperature and GPU load, or CPU/memory where
  metrics-server is absent.

Fractions are of allocatable because that is what pods may use. Metric names differ
between exporters (jetson-stats exporters, tegrastats scrapers, DCGM), so they are
configurable through ``ExporterNames`` (chart values ``nodePressure.metrics``, env
``ELASTISERVE_NODE_*_METRIC``). The defaults:

* CPU/memory: kube-prometheus's recording rules;
* Jetson: the jetson-stats (``jtop``) Prometheus collector that the jetson-stats Grafana
  dashboard ships and its forks reuse: ``jetson_temperatures{temperature="gpu"|"cpu"|...}``
  (degrees Celsius, one series per sensor; the hottest counts) and
  ``jetson_usage_gpu{gpu="val"}`` (GR3D load in percent). Chosen because it is the
  collector most Jetson Grafana setups scrape; other exporters name these
  differently (tegrastats scrapers, ``jetson_stats_node_exporter``'s ``temperature_C``),
  hence the settings.

Each series must carry the node's name in one label (``node_label``, default ``node``:
what a PodMonitor relabelling ``__meta_kubernetes_pod_node_name`` usually writes;
kube-prometheus writes it into ``instance``, so set ``instance`` there).

A reading that cannot be had stays ``None`` and caps nothing. Jetson sensors that are
switched off report -256 C; temperatures below ``MIN_PLAUSIBLE_C`` are no reading.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..observation import NodePressure, finite_or_none

__all__ = [
    "EXPORTER_ENV",
    "MIN_PLAUSIBLE_C",
    "ExporterNames",
    "exporter_names_from_env",
    "node_pressure",
    "parse_quantity",
    "worst",
]

MIN_PLAUSIBLE_C = -40.0
"""Below this a temperature is a switched-off sensor (Jetson reports -256), not a reading."""

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1.0,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
}


@dataclass(frozen=True)
class ExporterNames:
    """Series selectors of the exporter values to read; ``None`` skips that reading.

    A selector is a metric name, optionally with matchers
    (``jetson_temperatures{temperature!="pmic"}``). ``node_label`` is the label that holds
    the node's name; a sample older than ``max_age_s`` is no reading.
    """

    cpu_fraction: str | None = "instance:node_cpu_utilisation:rate5m"
    memory_fraction: str | None = "instance:node_memory_utilisation:ratio"
    temperature_c: str | None = "jetson_temperatures"
    gpu_load_percent: str | None = "jetson_usage_gpu"
    node_label: str = "node"
    max_age_s: float = 60.0

    def selectors(self) -> tuple[str, ...]:
        """The configured selectors, each once (a reading may be switched off)."""
        named = (self.cpu_fraction, self.memory_fraction, self.temperature_c,
                 self.gpu_load_percent)
        return tuple(dict.fromkeys(n for n in named if n))


EXPORTER_ENV = {
    "cpu_fraction": "ELASTISERVE_NODE_CPU_FRACTION_METRIC",
    "memory_fraction": "ELASTISERVE_NODE_MEMORY_FRACTION_METRIC",
    "temperature_c": "ELASTISERVE_NODE_TEMPERATURE_METRIC",
    "gpu_load_percent": "ELASTISERVE_NODE_GPU_LOAD_METRIC",
    "node_label": "ELASTISERVE_NODE_METRICS_NODE_LABEL",
    "max_age_s": "ELASTISERVE_NODE_METRICS_MAX_AGE_SECONDS",
}
"""``ExporterNames`` field -> env var (the chart's ``nodePressure.metrics`` values)."""

_SELECTOR = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^{}]*\})?$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def exporter_names_from_env(env: Mapping[str, str]) -> ExporterNames:
    """``ExporterNames`` from ``ELASTISERVE_NODE_*`` variables.

    A selector variable that is *set but empty* switches that reading off (the chart's
    "empty = not read"); an unset one keeps the default. Raises ``ValueError`` naming the
    variable for a selector that is not a metric name with optional matchers, a label
    that is not a label name, or a non-positive age, because each ends up inside PromQL.
    """
    base = ExporterNames()
    selectors: dict[str, str | None] = {}
    for key in ("cpu_fraction", "memory_fraction", "temperature_c", "gpu_load_percent"):
        var = EXPORTER_ENV[key]
        if var not in env:
            selectors[key] = getattr(base, key)
            continue
        text = env[var].strip()
        if text and not _SELECTOR.match(text):
            raise ValueError(f"{var}: not a series selector: {text!r}")
        selectors[key] = text or None
    label = env.get(EXPORTER_ENV["node_label"], "").strip() or base.node_label
    if not _LABEL_NAME.match(label) or label.startswith("__"):
        raise ValueError(f"{EXPORTER_ENV['node_label']}: not a label name: {label!r}")
    age_text = env.get(EXPORTER_ENV["max_age_s"], "").strip()
    try:
        age = float(age_text) if age_text else base.max_age_s
    except ValueError:
        raise ValueError(f"{EXPORTER_ENV['max_age_s']}: not a number: {age_text!r}") from None
    if not (math.isfinite(age) and age > 0):
        raise ValueError(f"{EXPORTER_ENV['max_age_s']}: must be > 0, got {age_text!r}")
    return ExporterNames(
        cpu_fraction=selectors["cpu_fraction"],
        memory_fraction=selectors["memory_fraction"],
        temperature_c=selectors["temperature_c"],
        gpu_load_percent=selectors["gpu_load_percent"],
        node_label=label,
        max_age_s=age,
    )


def parse_quantity(quantity: str | int | float) -> float:
    """A Kubernetes resource quantity (``"250m"``, ``"2"``, ``"1Gi"``, ``"1e3"``) as a float.

    Raises ``ValueError`` on anything else, so a malformed node never reads as idle.
    """
    if isinstance(quantity, int | float) and not isinstance(quantity, bool):
        return float(quantity)
    match = _QUANTITY.match(str(quantity).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def _resource(node: Mapping[str, Any], name: str) -> float | None:
    status = node.get("status") or {}
    for field in ("allocatable", "capacity"):
        raw = (status.get(field) or {}).get(name)
        if raw is not None:
            value = parse_quantity(raw)
            return value if value > 0 else None
    return None


def _usage(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    if not metrics:
        return None
    raw = (metrics.get("usage") or {}).get(name)
    return parse_quantity(raw) if raw is not None else None


def _exported(
    values: Mapping[str, float | Sequence[float]] | None, name: str | None
) -> float | None:
    """The value named ``name``; for a list (one per zone/GPU) the hottest/busiest."""
    if not values or name is None or name not in values:
        return None
    raw = values[name]
    items: Iterable[float] = raw if isinstance(raw, Sequence) else (raw,)
    finite = [v for v in (finite_or_none(float(x)) for x in items) if v is not None]
    return max(finite) if finite else None


def _plausible_temperature(value: float | None) -> float | None:
    return value if value is not None and value >= MIN_PLAUSIBLE_C else None


def _fraction(used: float | None, total: float | None) -> float | None:
    if used is None or total is None:
        return None
    return used / total


def node_pressure(
    node: Mapping[str, Any],
    node_metrics: Mapping[str, Any] | None = None,
    exporter: Mapping[str, float | Sequence[float]] | None = None,
    names: ExporterNames | None = None,
) -> NodePressure:
    """Combine the three sources; metrics-server wins over the exporter for CPU/memory
    because it measures the same thing the scheduler's allocatable describes."""
    names = names or ExporterNames()
    cpu = _fraction(_usage(node_metrics, "cpu"), _resource(node, "cpu"))
    memory = _fraction(_usage(node_metrics, "memory"), _resource(node, "memory"))
    return NodePressure(
        cpu_fraction=cpu if cpu is not None else _exported(exporter, names.cpu_fraction),
        memory_fraction=(
            memory if memory is not None else _exported(exporter, names.memory_fraction)
        ),
        temperature_c=_plausible_temperature(_exported(exporter, names.temperature_c)),
        gpu_load_percent=_exported(exporter, names.gpu_load_percent),
    )


def worst(readings: Iterable[NodePressure]) -> NodePressure | None:
    """Field-wise maximum over several nodes (the busiest node caps the level)."""
    readings = list(readings)
    if not readings:
        return None

    def top(values: Iterable[float | None]) -> float | None:
        finite = [v for v in values if v is not None and not math.isnan(v)]
        return max(finite) if finite else None

    return NodePressure(
        cpu_fraction=top(r.cpu_fraction for r in readings),
        memory_fraction=top(r.memory_fraction for r in readings),
        temperature_c=top(r.temperature_c for r in readings),
        gpu_load_percent=top(r.gpu_load_percent for r in readings),
    )
