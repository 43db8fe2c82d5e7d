"""Operator-wide settings, read once from the environment (and CLI flags) at start.

Everything a deployment may want to change without a new image lives here, under one
``ELASTISERVE_`` prefix so that the Helm chart can set them as plain env vars. Parsing is
pure (a mapping in, a frozen dataclass out) so that tests build settings without touching
``os.environ``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .signals.nodes import ExporterNames, exporter_names_from_env
from .signals.prometheus import DEFAULT_LATENCY_QUERY, DEFAULT_RATE_QUERY
from .spec import SpecDefaults, SpecError, parse_defaults

__all__ = ["DEFAULTS_ENV", "ENV", "OperatorSettings", "defaults_from_env", "settings_from_env"]

ENV = {
    "prometheus_url": "ELASTISERVE_PROMETHEUS_URL",
    "latency_query": "ELASTISERVE_LATENCY_QUERY",
    "rate_query": "ELASTISERVE_RATE_QUERY",
    "namespaces": "ELASTISERVE_NAMESPACES",
    "serving_image": "ELASTISERVE_SERVING_IMAGE",
    "serving_pull_policy": "ELASTISERVE_SERVING_IMAGE_PULL_POLICY",
    "metrics_port": "ELASTISERVE_METRICS_PORT",
    "liveness": "ELASTISERVE_LIVENESS_ENDPOINT",
    "peering": "ELASTISERVE_PEERING",
    "prometheus_timeout": "ELASTISERVE_PROMETHEUS_TIMEOUT_SECONDS",
    "node_pressure": "ELASTISERVE_NODE_PRESSURE",
}
"""Setting -> env var name (the chart's contract; the README of the chart lists them)."""


def _integer(text: str) -> int:
    """An integer, also written as a float with no fraction (``5.0``: how YAML may hand
    a chart value over)."""
    try:
        return int(text)
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"not an integer: {text!r}") from None
        return int(number)


def _json(text: str) -> Any:
    """A structured chart value (the chart writes node selector, tolerations and resources
    as JSON); ``{}``/``[]``/``null`` mean "no default", like an unset variable."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error.msg} at character {error.pos}") from None
    return value if value else None


PULL_POLICIES = ("Always", "IfNotPresent", "Never")


DEFAULTS_ENV: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "ELASTISERVE_DEFAULT_OBJECTIVE_P95_MS": ("objective.p95Ms", _integer),
    "ELASTISERVE_DEFAULT_POLICY_MODE": ("policy.mode", str.strip),
    "ELASTISERVE_DEFAULT_EVALUATION_INTERVAL_SECONDS": (
        "policy.evaluationIntervalSeconds", _integer),
    "ELASTISERVE_DEFAULT_STABLE_WINDOW_SECONDS": ("policy.stableWindowSeconds", _integer),
    "ELASTISERVE_DEFAULT_PANIC_WINDOW_SECONDS": ("policy.panicWindowSeconds", _integer),
    "ELASTISERVE_DEFAULT_PANIC_THRESHOLD": ("policy.panicThreshold", float),
    "ELASTISERVE_DEFAULT_TOLERANCE": ("policy.tolerance", float),
    "ELASTISERVE_DEFAULT_HEADROOM": ("policy.headroom", float),
    "ELASTISERVE_DEFAULT_WIDEN_STABILIZATION_SECONDS": (
        "policy.widenStabilizationSeconds", _integer),
    "ELASTISERVE_DEFAULT_SETTLE_SECONDS": ("policy.settleSeconds", _integer),
    "ELASTISERVE_DEFAULT_STALE_AFTER_SECONDS": ("policy.staleAfterSeconds", _integer),
    "ELASTISERVE_NODE_PRESSURE_CPU_FRACTION": ("nodePressure.cpuFraction", float),
    "ELASTISERVE_NODE_PRESSURE_MEMORY_FRACTION": ("nodePressure.memoryFraction", float),
    "ELASTISERVE_NODE_PRESSURE_TEMPERATURE_CELSIUS": ("nodePressure.temperatureCelsius", float),
    "ELASTISERVE_NODE_PRESSURE_GPU_LOAD_PERCENT": ("nodePressure.gpuLoadPercent", float),
    "ELASTISERVE_SERVING_WORKERS": ("serving.workers", _integer),
    "ELASTISERVE_SERVING_BATCH_SIZE": ("serving.batchSize", _integer),
    "ELASTISERVE_SERVING_MAX_BATCH_DELAY_MS": ("serving.maxBatchDelayMs", _integer),
    "ELASTISERVE_SERVING_RESOURCES": ("serving.resources", _json),
    "ELASTISERVE_SERVING_NODE_SELECTOR": ("serving.nodeSelector", _json),
    "ELASTISERVE_SERVING_TOLERATIONS": ("serving.tolerations", _json),
    "ELASTISERVE_SERVING_RUNTIME_CLASS": ("serving.runtimeClassName", str.strip),
}
"""Env var -> (the chart-defaulted spec field it supplies, its parser). The PromQL
defaults are ``ENV['latency_query']`` and ``ENV['rate_query']``."""


def _variable_for(path: str) -> str:
    """The variable that supplied ``path`` (a field, or a part of a structured one)."""
    for var, (field_path, _) in DEFAULTS_ENV.items():
        if path == field_path or path.startswith((f"{field_path}.", f"{field_path}[")):
            return var
    return path


def defaults_from_env(env: Mapping[str, str]) -> SpecDefaults:
    """The values a CR's chart-defaulted fields get when it leaves them out.

    Unset or empty variables keep the built-in value (the chart's own default). Each value
    is checked with the spec's own ranges and relations (``spec.parse_defaults``): a
    default no CR could set is refused. Raises ``ValueError`` naming the variable, so that
    the operator refuses to start instead of failing every model later.
    """
    raw: dict[str, dict[str, Any]] = {}
    for var, (path, parse) in DEFAULTS_ENV.items():
        text = env.get(var)
        if not text or not text.strip():
            continue
        section, key = path.split(".")
        try:
            value = parse(text)
        except ValueError as error:
            raise ValueError(f"{var}: {error}") from error
        if value is not None and value != "":
            raw.setdefault(section, {})[key] = value
    try:
        return parse_defaults(raw)
    except SpecError as error:
        var = _variable_for(error.path)
        whole = var in DEFAULTS_ENV and DEFAULTS_ENV[var][0] == error.path
        detail = "" if whole or var not in DEFAULTS_ENV else f" (at {error.path})"
        raise ValueError(f"{var}: {error.message}{detail}") from error


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator process needs besides each CR's spec.

    ``namespaces`` empty means cluster-wide. ``peering`` empty means standalone (one
    replica; nothing to coordinate with). ``metrics_port`` 0 disables the metrics server.
    """

    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    latency_query: str = DEFAULT_LATENCY_QUERY
    rate_query: str = DEFAULT_RATE_QUERY
    namespaces: tuple[str, ...] = ()
    serving_image: str = "elastiserve/serving:0.1.0"
    serving_pull_policy: str = "IfNotPresent"
    """``imagePullPolicy`` of the serving pods' containers (the chart's
    ``serving.image.pullPolicy``)."""
    metrics_port: int = 8000
    liveness_endpoint: str | None = None
    peering: str = ""
    prometheus_timeout_s: float = 5.0
    node_pressure: bool = True
    defaults: SpecDefaults = field(default_factory=SpecDefaults)
    node_exporter: ExporterNames = field(default_factory=ExporterNames)
    """Per-node exporter series (Jetson temperature/GPU load...); env names in
    ``signals.nodes.EXPORTER_ENV`` (the chart's ``nodePressure.metrics``)."""

    @property
    def spec_defaults(self) -> SpecDefaults:
        """What a CR's left-out chart-defaulted fields get, the PromQL defaults included
        (so that a model's effective spec names the queries it runs)."""
        return dataclasses.replace(
            self.defaults, latency_query=self.latency_query, request_rate_query=self.rate_query
        )


def _flag(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def settings_from_env(env: Mapping[str, str]) -> OperatorSettings:
    """Defaults overridden by whichever ``ELASTISERVE_*`` variables are set (non-empty).

    Raises ``ValueError`` naming the variable on a malformed value, so a bad chart value
    stops the operator at start rather than misbehaving later.
    """
    base = OperatorSettings()

    def get(key: str) -> str | None:
        value = env.get(ENV[key])
        return value if value else None

    try:
        port = int(get("metrics_port") or base.metrics_port)
        timeout = float(get("prometheus_timeout") or base.prometheus_timeout_s)
        pressure = _flag(get("node_pressure") or "true")
    except ValueError as error:
        raise ValueError(f"malformed ELASTISERVE_* setting: {error}") from error
    if not 0 <= port <= 65535:
        raise ValueError(f"{ENV['metrics_port']} must be a port number, got {port}")
    pull_policy = (get("serving_pull_policy") or base.serving_pull_policy).strip()
    if pull_policy not in PULL_POLICIES:
        raise ValueError(f"{ENV['serving_pull_policy']}: must be one of "
                         f"{', '.join(PULL_POLICIES)}, got {pull_policy!r}")
    defaults = defaults_from_env(env)
    node_exporter = exporter_names_from_env(env)
    namespaces = tuple(n.strip() for n in (get("namespaces") or "").split(",") if n.strip())
    return OperatorSettings(
        prometheus_url=get("prometheus_url") or base.prometheus_url,
        latency_query=get("latency_query") or base.latency_query,
        rate_query=get("rate_query") or base.rate_query,
        namespaces=namespaces,
        serving_image=get("serving_image") or base.serving_image,
        serving_pull_policy=pull_policy,
        metrics_port=port,
        liveness_endpoint=get("liveness"),
        peering=get("peering") or "",
        prometheus_timeout_s=timeout,
        node_pressure=pressure,
        defaults=defaults,
        node_exporter=node_exporter,
    )
