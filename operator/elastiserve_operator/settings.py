"""Operator-wide settings, read once from the environment (and CLI flags) at start.

Everything a deployment may want to change without a new image lives here, under one
``ELASTISERVE_`` prefix so that the Helm chart can set them as plain env vars. Parsing is
pure (a mapping in, a frozen dataclass out) so that tests build settings without touching
``os.environ``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .signals.nodes import ExporterNames, exporter_names_from_env
from .signals.prometheus import DEFAULT_LATENCY_QUERY, DEFAULT_RATE_QUERY
from .spec import SpecDefaults, SpecError, parse_defaults
from .tenancy import QueryMode, TenancyPolicy, check_host_prefix, valid_image_entry

__all__ = [
    "DEFAULTS_ENV",
    "ENV",
    "TENANCY_ENV",
    "NetworkPolicySettings",
    "OperatorSettings",
    "defaults_from_env",
    "network_from_env",
    "settings_from_env",
    "tenancy_from_env",
]

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
    "prometheus_max_bytes": "ELASTISERVE_PROMETHEUS_MAX_RESPONSE_BYTES",
    "prometheus_max_series": "ELASTISERVE_PROMETHEUS_MAX_SERIES",
    "node_pressure": "ELASTISERVE_NODE_PRESSURE",
    "ownership_retry": "ELASTISERVE_OWNERSHIP_RETRY_SECONDS",
    "serving_allowed_factories": "ELASTISERVE_SERVING_ALLOWED_FACTORIES",
}
"""Setting -> env var name (the chart's contract; the README of the chart lists them)."""


def _integer_or_auto(text: str) -> int | str:
    """``serving.batchSize``: an integer, or ``Auto`` (each pod measures; spec.AUTO_BATCH)."""
    return text.strip() if text.strip() == "Auto" else _integer(text)


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
    "ELASTISERVE_DEFAULT_POD_START_SECONDS": ("policy.replicas.podStartSeconds", _integer),
    "ELASTISERVE_NODE_PRESSURE_CPU_FRACTION": ("nodePressure.cpuFraction", float),
    "ELASTISERVE_NODE_PRESSURE_MEMORY_FRACTION": ("nodePressure.memoryFraction", float),
    "ELASTISERVE_NODE_PRESSURE_TEMPERATURE_CELSIUS": ("nodePressure.temperatureCelsius", float),
    "ELASTISERVE_NODE_PRESSURE_GPU_LOAD_PERCENT": ("nodePressure.gpuLoadPercent", float),
    "ELASTISERVE_SERVING_WORKERS": ("serving.workers", _integer),
    "ELASTISERVE_SERVING_BATCH_SIZE": ("serving.batchSize", _integer_or_auto),
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
    raw: dict[str, Any] = {}
    for var, (path, parse) in DEFAULTS_ENV.items():
        text = env.get(var)
        if not text or not text.strip():
            continue
        *sections, key = path.split(".")
        try:
            value = parse(text)
        except ValueError as error:
            raise ValueError(f"{var}: {error}") from error
        if value is not None and value != "":
            node = raw
            for section in sections:
                node = node.setdefault(section, {})
            node[key] = value
    try:
        return parse_defaults(raw)
    except SpecError as error:
        var = _variable_for(error.path)
        whole = var in DEFAULTS_ENV and DEFAULTS_ENV[var][0] == error.path
        detail = "" if whole or var not in DEFAULTS_ENV else f" (at {error.path})"
        raise ValueError(f"{var}: {error.message}{detail}") from error


TENANCY_ENV = {
    "host_path": "ELASTISERVE_HOST_PATH_ENABLED",
    "host_path_prefixes": "ELASTISERVE_ALLOWED_HOST_PATHS",
    "images": "ELASTISERVE_ALLOWED_IMAGES",
    "tolerations": "ELASTISERVE_ALLOWED_TOLERATIONS",
    "node_selectors": "ELASTISERVE_ALLOWED_NODE_SELECTORS",
    "runtime_classes": "ELASTISERVE_ALLOWED_RUNTIME_CLASSES",
    "queries": "ELASTISERVE_MODEL_QUERIES",
    "namespace_label": "ELASTISERVE_PROMETHEUS_NAMESPACE_LABEL",
    "max_query_range_s": "ELASTISERVE_MODEL_QUERY_MAX_RANGE_SECONDS",
}
"""``TenancyPolicy`` field -> env var (the chart's ``tenancy.*`` and ``prometheus.*``).
Lists and maps are JSON, like the serving defaults."""

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_TOLERATION_FIELDS = {"key", "operator", "value", "effect"}
_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")


def _string_list(var: str, text: str | None) -> tuple[str, ...]:
    value = _json(text) if text and text.strip() else None
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{var}: must be a JSON list of non-empty strings")
    return tuple(value)


def _tolerations(var: str, text: str | None) -> tuple[Mapping[str, Any], ...]:
    value = _json(text) if text and text.strip() else None
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"{var}: must be a JSON list of tolerations")
    out = []
    for index, item in enumerate(value):
        where = f"{var}[{index}]"
        if not isinstance(item, dict) or not all(isinstance(v, str) for v in item.values()):
            raise ValueError(f"{where}: must be an object of strings")
        unknown = sorted(set(item) - _TOLERATION_FIELDS)
        if unknown:
            raise ValueError(f"{where}: unknown field {unknown[0]!r}")
        if not item.get("key"):
            raise ValueError(f"{where}: needs a key (an empty key would tolerate every taint)")
        if item.get("operator", "Equal") not in ("Equal", "Exists"):
            raise ValueError(f"{where}: operator must be Equal or Exists")
        if item.get("effect", "") not in _EFFECTS:
            raise ValueError(f"{where}: effect must be one of {', '.join(_EFFECTS[1:])}")
        out.append(dict(item))
    return tuple(out)


def _node_selectors(var: str, text: str | None) -> dict[str, tuple[str, ...]]:
    value = _json(text) if text and text.strip() else None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{var}: must be a JSON object of label -> list of values")
    out = {}
    for key, values in value.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{var}[{key}]: must be a list of values ('*': any)")
        out[str(key)] = tuple(values)
    return out


def tenancy_from_env(env: Mapping[str, str]) -> TenancyPolicy:
    """The allow-lists, checked: a host directory that is ``/`` or a system path, an image
    entry that names nothing, a toleration with no key... stop the operator at start."""
    base = TenancyPolicy()

    def get(key: str) -> str | None:
        value = env.get(TENANCY_ENV[key])
        return value if value and value.strip() else None

    try:
        host_path = _flag(get("host_path") or "false")
    except ValueError as error:
        raise ValueError(f"{TENANCY_ENV['host_path']}: {error}") from error
    prefixes = _string_list(TENANCY_ENV["host_path_prefixes"], get("host_path_prefixes"))
    for prefix in prefixes:
        problem = check_host_prefix(prefix)
        if problem is not None:
            raise ValueError(f"{TENANCY_ENV['host_path_prefixes']}: {prefix!r}: {problem}")
    images = _string_list(TENANCY_ENV["images"], get("images"))
    for entry in images:
        if not valid_image_entry(entry):
            raise ValueError(f"{TENANCY_ENV['images']}: {entry!r} is neither an image "
                             "repository nor a prefix ending in '/'")
    runtime_classes = _string_list(TENANCY_ENV["runtime_classes"], get("runtime_classes"))
    for name in runtime_classes:
        if not _DNS_SUBDOMAIN.match(name):
            raise ValueError(f"{TENANCY_ENV['runtime_classes']}: {name!r} is not a name")
    mode_text = (get("queries") or base.queries.value).strip()
    try:
        mode = QueryMode(mode_text)
    except ValueError:
        allowed = ", ".join(m.value for m in QueryMode)
        raise ValueError(f"{TENANCY_ENV['queries']}: must be one of {allowed}, "
                         f"got {mode_text!r}") from None
    label = (get("namespace_label") or base.namespace_label).strip()
    if not _LABEL_NAME.match(label):
        raise ValueError(f"{TENANCY_ENV['namespace_label']}: {label!r} is not a label name")
    try:
        max_range = _integer(get("max_query_range_s") or str(base.max_query_range_s))
    except ValueError as error:
        raise ValueError(f"{TENANCY_ENV['max_query_range_s']}: {error}") from error
    if not 60 <= max_range <= 86_400:
        raise ValueError(f"{TENANCY_ENV['max_query_range_s']}: must be 60..86400, "
                         f"got {max_range}")
    return TenancyPolicy(
        host_path=host_path,
        host_path_prefixes=prefixes,
        images=images,
        tolerations=_tolerations(TENANCY_ENV["tolerations"], get("tolerations")),
        node_selectors=_node_selectors(TENANCY_ENV["node_selectors"], get("node_selectors")),
        runtime_classes=runtime_classes,
        queries=mode,
        namespace_label=label,
        max_query_range_s=max_range,
    )


NETWORK_ENV = {
    "enabled": "ELASTISERVE_NETWORK_POLICY",
    "inference_namespaces": "ELASTISERVE_INFERENCE_NAMESPACES",
    "metrics_namespace_selector": "ELASTISERVE_METRICS_NAMESPACE_SELECTOR",
    "metrics_pod_selector": "ELASTISERVE_METRICS_POD_SELECTOR",
}
"""``NetworkPolicySettings`` field -> env var (the chart's ``networkPolicy.*``)."""


@dataclass(frozen=True)
class NetworkPolicySettings:
    """The NetworkPolicy each model gets (``children.build_network_policy``).

    Inference (the gateway's port) is open to pods of the model's own namespace and of
    ``inference_namespaces`` (``*``: every namespace); metrics only to pods matching both
    selectors (Prometheus). Label selectors are ``matchLabels`` maps.
    """

    enabled: bool = True
    inference_namespaces: tuple[str, ...] = ()
    metrics_namespace_selector: Mapping[str, str] = field(
        default_factory=lambda: {"kubernetes.io/metadata.name": "monitoring"})
    metrics_pod_selector: Mapping[str, str] = field(
        default_factory=lambda: {"app.kubernetes.io/name": "prometheus"})


def _labels(var: str, text: str | None, default: Mapping[str, str]) -> Mapping[str, str]:
    if text is None or not text.strip():
        return default
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{var}: not JSON: {error.msg}") from None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{var}: must be a JSON object of label -> value (matchLabels)")
    return dict(value)


def network_from_env(env: Mapping[str, str]) -> NetworkPolicySettings:
    base = NetworkPolicySettings()

    def get(key: str) -> str | None:
        value = env.get(NETWORK_ENV[key])
        return value if value and value.strip() else None

    try:
        enabled = _flag(get("enabled") or "true")
    except ValueError as error:
        raise ValueError(f"{NETWORK_ENV['enabled']}: {error}") from error
    namespaces = _string_list(NETWORK_ENV["inference_namespaces"], get("inference_namespaces"))
    for name in namespaces:
        if name != "*" and not _DNS_SUBDOMAIN.match(name):
            raise ValueError(f"{NETWORK_ENV['inference_namespaces']}: {name!r} is not a "
                             "namespace name or '*'")
    return NetworkPolicySettings(
        enabled=enabled,
        inference_namespaces=namespaces,
        metrics_namespace_selector=_labels(NETWORK_ENV["metrics_namespace_selector"],
                                           get("metrics_namespace_selector"),
                                           base.metrics_namespace_selector),
        metrics_pod_selector=_labels(NETWORK_ENV["metrics_pod_selector"],
                                     get("metrics_pod_selector"), base.metrics_pod_selector),
    )


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
    prometheus_max_bytes: int = 1 << 20
    """Largest Prometheus answer the operator reads (bigger: an error, the level holds)."""
    prometheus_max_series: int = 1000
    """Most series a model's query may return (a model's p95 or rate reduces to one value)."""
    node_pressure: bool = True
    serving_allowed_factories: tuple[str, ...] = ()
    """User model factories (``package.module:factory``) the serving pods may build a bundle
    with: their ``ELASTISERVE_ALLOWED_FACTORIES`` (``elastiserve_store.constructors``). An
    operator setting, not a CR field, because naming code to run is the serving side's call,
    never a model author's; torchvision's builders need no entry."""
    ownership_retry_s: float = 60.0
    """How soon a model with a foreign object in a child's place is reconciled again: nothing
    watches that object (it may carry none of the operator's labels), so only a retry sees it
    go. A minute keeps a conflict that lasts cheap; tests shorten it."""
    defaults: SpecDefaults = field(default_factory=SpecDefaults)
    node_exporter: ExporterNames = field(default_factory=ExporterNames)
    """Per-node exporter series (Jetson temperature/GPU load...); env names in
    ``signals.nodes.EXPORTER_ENV`` (the chart's ``nodePressure.metrics``)."""
    tenancy: TenancyPolicy = field(default_factory=TenancyPolicy)
    """What an ElasticModel may ask for (``tenancy``): host paths, images, placement, PromQL."""
    network: NetworkPolicySettings = field(default_factory=NetworkPolicySettings)

    @property
    def spec_defaults(self) -> SpecDefaults:
        """What a CR's left-out chart-defaulted fields get, the PromQL defaults included
        (so that a model's effective spec names the queries it runs)."""
        return dataclasses.replace(
            self.defaults, latency_query=self.latency_query, request_rate_query=self.rate_query
        )


def _seconds(key: str, text: str | None, default: float) -> float:
    """A duration setting in seconds; a malformed one names its variable."""
    try:
        return float(text) if text is not None else default
    except ValueError:
        raise ValueError(f"{ENV[key]}: not a number of seconds: {text!r}") from None


# elastiserve_store.constructors' own form (that module needs torch; the operator has none).
_FACTORY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


def _factories(text: str | None) -> tuple[str, ...]:
    """The serving pods' factory allow-list: a JSON list of ``package.module:factory``."""
    var = ENV["serving_allowed_factories"]
    try:
        names = _string_list(var, text)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(var) else f"{var}: {message}") from None
    for name in names:
        if len(name) > 200 or not _FACTORY.fullmatch(name):
            raise ValueError(f"{var}: {name[:80]!r} is not 'package.module:factory'")
        if name.startswith("torchvision:"):
            raise ValueError(f"{var}: {name!r}: torchvision's models are allowed without "
                             "an entry; list only your own factories")
    return names


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
        max_bytes = _integer(get("prometheus_max_bytes") or str(base.prometheus_max_bytes))
        max_series = _integer(get("prometheus_max_series") or str(base.prometheus_max_series))
        pressure = _flag(get("node_pressure") or "true")
        ownership_retry = _seconds("ownership_retry", get("ownership_retry"),
                                   base.ownership_retry_s)
    except ValueError as error:
        raise ValueError(f"malformed ELASTISERVE_* setting: {error}") from error
    if not 0 <= port <= 65535:
        raise ValueError(f"{ENV['metrics_port']} must be a port number, got {port}")
    if not 1024 <= max_bytes <= 1 << 30:
        raise ValueError(f"{ENV['prometheus_max_bytes']} must be 1024..{1 << 30}, got {max_bytes}")
    if not 1 <= max_series <= 1_000_000:
        raise ValueError(f"{ENV['prometheus_max_series']} must be 1..1000000, got {max_series}")
    if not 1.0 <= ownership_retry <= 3600.0:
        raise ValueError(f"{ENV['ownership_retry']} must be 1..3600 seconds, "
                         f"got {ownership_retry}")
    pull_policy = (get("serving_pull_policy") or base.serving_pull_policy).strip()
    if pull_policy not in PULL_POLICIES:
        raise ValueError(f"{ENV['serving_pull_policy']}: must be one of "
                         f"{', '.join(PULL_POLICIES)}, got {pull_policy!r}")
    factories = _factories(get("serving_allowed_factories"))
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
        prometheus_max_bytes=max_bytes,
        prometheus_max_series=max_series,
        node_pressure=pressure,
        serving_allowed_factories=factories,
        ownership_retry_s=ownership_retry,
        defaults=defaults,
        node_exporter=node_exporter,
        tenancy=tenancy_from_env(env),
        network=network_from_env(env),
    )
