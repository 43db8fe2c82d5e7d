"""Operator-wide settings, read once from the environment (and CLI flags) at start.

Everything a deployment may want to change without a new image lives here, under one
``ELASTISERVE_`` prefix so that the Helm chart can set them as plain env vars. Parsing is
pure (a mapping in, a frozen dataclass out) so that tests build settings without touching
``os.environ``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .signals.prometheus import DEFAULT_LATENCY_QUERY, DEFAULT_RATE_QUERY

__all__ = ["ENV", "OperatorSettings", "settings_from_env"]

ENV = {
    "prometheus_url": "ELASTISERVE_PROMETHEUS_URL",
    "latency_query": "ELASTISERVE_LATENCY_QUERY",
    "rate_query": "ELASTISERVE_RATE_QUERY",
    "namespaces": "ELASTISERVE_NAMESPACES",
    "serving_image": "ELASTISERVE_SERVING_IMAGE",
    "metrics_port": "ELASTISERVE_METRICS_PORT",
    "liveness": "ELASTISERVE_LIVENESS_ENDPOINT",
    "peering": "ELASTISERVE_PEERING",
    "prometheus_timeout": "ELASTISERVE_PROMETHEUS_TIMEOUT_SECONDS",
    "node_pressure": "ELASTISERVE_NODE_PRESSURE",
}
"""Setting -> env var name (the chart's contract; the README of the chart lists them)."""


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
    metrics_port: int = 8000
    liveness_endpoint: str | None = None
    peering: str = ""
    prometheus_timeout_s: float = 5.0
    node_pressure: bool = True


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
    namespaces = tuple(n.strip() for n in (get("namespaces") or "").split(",") if n.strip())
    return OperatorSettings(
        prometheus_url=get("prometheus_url") or base.prometheus_url,
        latency_query=get("latency_query") or base.latency_query,
        rate_query=get("rate_query") or base.rate_query,
        namespaces=namespaces,
        serving_image=get("serving_image") or base.serving_image,
        metrics_port=port,
        liveness_endpoint=get("liveness"),
        peering=get("peering") or "",
        prometheus_timeout_s=timeout,
        node_pressure=pressure,
    )
