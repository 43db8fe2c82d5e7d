"""Typed, validated view of an ``ElasticModel`` spec.

The CRD (``crd/elasticmodels.yaml``) is what the API server enforces; this module is its
Python mirror so that the policy engine, the simulator and the cluster-less mode
(``elastiserve serve``) all read one frozen, fully-defaulted object instead of poking at
nested dicts. Two reasons to mirror the CRD rather than trust it:

* the local mode has no API server, so nobody else applies the defaults or the CEL rules;
* a handler that receives a spec from an older CRD version (or a hand-edited object) should
  fail with a readable path (``spec.policy.panicWindowSeconds: ...``) instead of a
  ``KeyError`` deep in the policy.

Parsing is pure: ``parse_spec(dict) -> ElasticModelSpec`` raises ``SpecError``; it never
touches the cluster. ``check_update(old, new)`` mirrors the CRD's transition rules
(immutable fields).

Two kinds of defaults:

* ``DEFAULTS``: applied by the API server (the CRD's ``default:`` values; a test keeps
  them equal), for fields a cluster has no reason to tune (replicas, level bounds...);
* ``SpecDefaults``: the *chart-defaulted* fields (``CHART_DEFAULTED``: the objective, the
  policy mode, windows and thresholds, the node-pressure thresholds, the PromQL, and the
  serving pods' batching, workers, resources and placement). The CRD
  injects nothing for them, so "unset" stays visible in the object, and the operator fills
  them from its settings (the chart's ``ELASTISERVE_DEFAULT_*``). The merged result records
  which fields came from the defaults (``ElasticModelSpec.defaulted``), and a relation
  between a spec value and a default that CEL could not see (it only sees the object) is
  refused here with both values named, so the operator reports it as ``InvalidSpec``
  instead of clamping anything.

Wiring (for the kopf handlers): call ``parse_spec(body["spec"], settings.spec_defaults)``
at the top of each handler and turn ``SpecError`` into ``kopf.PermanentError`` (retrying
cannot fix a bad spec). The schema has already rejected most of these; what it cannot
reject is a spec value that conflicts with one of the operator's defaults.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, TypeAlias

__all__ = [
    "CHART_DEFAULTED",
    "DEFAULTS",
    "ElasticModelSpec",
    "LevelBounds",
    "LocalPathSource",
    "ModelSource",
    "ModelSpec",
    "NodePressureThresholds",
    "Objective",
    "PolicyMode",
    "PolicySettings",
    "ProfileEntry",
    "PvcSource",
    "ServingDefaults",
    "ServingSettings",
    "SpecDefaults",
    "SpecError",
    "UrlSource",
    "check_update",
    "parse_defaults",
    "parse_spec",
]

MAX_LEVELS = 16
"""Upper bound on the number of nested levels; keeps CEL costs and status small."""


class SpecError(ValueError):
    """A spec the operator cannot act on; ``path`` names the offending field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class PolicyMode(str, Enum):
    """How the policy picks the next level.

    ``Predictive`` asks the queueing model which level fits the measured request rate and
    jumps there; ``Step`` moves one level at a time and only looks at the measured p95
    (the naive baseline, kept because it needs no profile).
    """

    PREDICTIVE = "Predictive"
    STEP = "Step"


class Loops(str, Enum):
    """Which loops choose the level (``spec.policy.loops``).

    ``Both``: the operator's decision is the ceiling and each worker picks, per batch, within
    ``[minLevel, ceiling]`` (the fast loop absorbs a burst before any metric moves; the slow
    one sets the bounds). ``Operator``: replicas serve exactly the operator's decision.
    ``Worker``: the operator only caps (``maxLevel``, node pressure) and workers choose.
    """

    BOTH = "Both"
    OPERATOR = "Operator"
    WORKER = "Worker"

    @property
    def worker_chooses(self) -> bool:
        return self is not Loops.OPERATOR


# --- Defaults the API server applies: mirrored in crd/elasticmodels.yaml (test_crd.py). ---
DEFAULTS: Mapping[str, Any] = {
    "replicas": 1,
    "allowRequestPinning": False,
    "levels.minLevel": 0,
    "policy.loops": "Both",
    "nodePressure.enabled": True,
    "serving.tokenAuthorization": "Enabled",
    "serving.device": "Auto",
}

CHART_DEFAULTED: tuple[str, ...] = (
    "objective.p95Ms",
    "objective.latencyQuery",
    "objective.requestRateQuery",
    "policy.mode",
    "policy.evaluationIntervalSeconds",
    "policy.stableWindowSeconds",
    "policy.panicWindowSeconds",
    "policy.panicThreshold",
    "policy.tolerance",
    "policy.headroom",
    "policy.widenStabilizationSeconds",
    "policy.settleSeconds",
    "policy.staleAfterSeconds",
    "nodePressure.cpuFraction",
    "nodePressure.memoryFraction",
    "nodePressure.temperatureCelsius",
    "nodePressure.gpuLoadPercent",
    "serving.workers",
    "serving.batchSize",
    "serving.maxBatchDelayMs",
    "serving.resources",
    "serving.nodeSelector",
    "serving.tolerations",
    "serving.runtimeClassName",
)
"""Fields (relative to ``spec``) with no CRD default: a CR that leaves one out gets the
operator's value (``SpecDefaults``, from the chart). A test checks the CRD has no
``default:`` for any of them."""

_SHA256 = re.compile(r"^[a-f0-9]{64}$")
_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""A Kubernetes resource quantity (the CRD's pattern for ``serving.resources``)."""
_TOLERATION_KEYS = {"key": str, "operator": str, "value": str, "effect": str,
                    "tolerationSeconds": int}


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class PvcSource:
    """A ``.mar`` on a PersistentVolumeClaim, ``path`` relative to the volume root."""

    claim_name: str
    path: str


@dataclass(frozen=True)
class UrlSource:
    """A ``.mar`` fetched over HTTP(S); the digest is checked before the archive is used."""

    url: str
    sha256: str


@dataclass(frozen=True)
class LocalPathSource:
    """A ``.mar`` already on the serving host (tests and the cluster-less mode)."""

    path: str


ModelSource = PvcSource | UrlSource | LocalPathSource


@dataclass(frozen=True)
class ProfileEntry:
    """One level's measured numbers as written in the CR (overrides the bundle manifest)."""

    name: str
    service_time_ms: float | None
    capacity_rps: float | None
    accuracy: float | None
    macs: int | None


@dataclass(frozen=True)
class ModelSpec:
    """What to serve: the archive, how many nested levels it holds, optional profile."""

    source: ModelSource
    level_count: int
    name: str | None = None
    profile: tuple[ProfileEntry, ...] = ()


@dataclass(frozen=True)
class LevelBounds:
    """The levels the policy may choose from; ``max_level`` is always resolved."""

    min_level: int
    max_level: int
    initial_level: int


@dataclass(frozen=True)
class Objective:
    """The latency objective and the PromQL that measures it (``None`` = operator default)."""

    p95_ms: int
    latency_query: str | None = None
    request_rate_query: str | None = None

    @property
    def p95_s(self) -> float:
        """The objective in seconds, the unit every latency in the policy uses."""
        return self.p95_ms / 1000.0


@dataclass(frozen=True)
class PolicySettings:
    """Windows and thresholds of the level policy (see ``policy.py`` for their use)."""

    mode: PolicyMode = PolicyMode.PREDICTIVE
    loops: Loops = Loops.BOTH
    evaluation_interval_s: int = 5
    stable_window_s: int = 60
    panic_window_s: int = 6
    panic_threshold: float = 2.0
    tolerance: float = 0.1
    headroom: float = 0.2
    widen_stabilization_s: int = 300
    settle_s: int = 30
    stale_after_s: int = 60


@dataclass(frozen=True)
class NodePressureThresholds:
    """Node readings at or above which the policy narrows step by step and never widens."""

    enabled: bool = True
    cpu_fraction: float = 0.9
    memory_fraction: float = 0.9
    temperature_c: float = 85.0
    gpu_load_percent: float = 95.0


@dataclass(frozen=True)
class ServingDefaults:
    """The serving values a CR's ``spec.serving`` leaves out get (the chart's ``serving.*``).

    Batching and workers default like the CRD did before they became chart values. Resources
    and placement default to none: an operator started without the chart imposes none (the
    chart's own defaults reach it as ``ELASTISERVE_SERVING_*``). A CR that sets one of these
    fields replaces the default as a whole (its ``resources`` are not merged with the chart's:
    a merge could pair the chart's requests with the CR's lower limits, which no pod accepts).
    """

    workers: int = 1
    batch_size: BatchSize = 1
    max_batch_delay_ms: int = 10
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    runtime_class_name: str | None = None


AUTO_BATCH: Literal["Auto"] = "Auto"
"""``serving.batchSize: Auto``: each pod measures its node before TorchServe registers the model
and takes the batch size and threads that serve most within the objective
(``elastiserve serve --batch-size auto --threads auto``, ``runtime/batch_plan.py``)."""
BatchSize: TypeAlias = int | Literal["Auto"]


@dataclass(frozen=True)
class ServingSettings:
    """Pod-level serving knobs; ``workers`` also feeds the queueing model's server count."""

    workers: int = 1
    batch_size: BatchSize = 1
    max_batch_delay_ms: int = 10
    image: str | None = None
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    runtime_class_name: str | None = None
    token_authorization: bool = True
    """Whether the pods' gateway checks the model's inference key (one key in a Secret,
    shared by every replica); ``Disabled`` leaves authentication to whatever fronts the
    Service (an ingress, a mesh)."""
    device: str = "auto"
    """Where the workers run the levels (the handler's ``device``: ``auto``/``cpu``/``cuda``),
    from ``spec.serving.device`` (``Auto``/``CPU``/``CUDA``)."""


@dataclass(frozen=True)
class ElasticModelSpec:
    """The whole spec, defaulted and validated like the API server would."""

    model: ModelSpec
    levels: LevelBounds
    objective: Objective
    replicas: int = 1
    policy: PolicySettings = PolicySettings()
    node_pressure: NodePressureThresholds = NodePressureThresholds()
    serving: ServingSettings = ServingSettings()
    allow_request_pinning: bool = False
    defaulted: frozenset[str] = frozenset()
    """Which ``CHART_DEFAULTED`` fields the spec left out (filled from ``SpecDefaults``)."""


@dataclass(frozen=True)
class SpecDefaults:
    """Values for the chart-defaulted fields a CR leaves out (the operator's settings).

    The built-in values equal the chart's ``values.yaml`` (a chart test checks), so the
    cluster-less mode and an operator started without the chart behave like a default
    install. ``objective_p95_ms=None``: no default objective, every CR must set one.
    ``None`` queries: the caller's own (the local loop passes its queries explicitly).
    """

    objective_p95_ms: int | None = 100
    latency_query: str | None = None
    request_rate_query: str | None = None
    policy: PolicySettings = PolicySettings()
    node_pressure: NodePressureThresholds = NodePressureThresholds()
    serving: ServingDefaults = field(default_factory=ServingDefaults)
    pod_start_s: int = 60
    """``spec.policy.replicas.podStartSeconds`` for a model that leaves it out: the pod
    start time the joint replica policy assumes until it has measured the model's own pods
    (a property of the cluster: image pulls, node provisioning). Read by ``replica_spec``."""


# --------------------------------------------------------------------------- reading helpers


class _Reader:
    """Typed access to one mapping with the JSON path kept for error messages."""

    def __init__(self, raw: object, path: str) -> None:
        if not isinstance(raw, Mapping):
            raise SpecError(path, f"must be an object, got {type(raw).__name__}")
        self.raw: Mapping[str, Any] = raw
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def sub(self, key: str, *, required: bool = False) -> _Reader:
        value = self.raw.get(key)
        if value is None:
            if required:
                raise SpecError(self.at(key), "is required")
            value = {}
        return _Reader(value, self.at(key))

    def integer(
        self, key: str, default: int | None, lo: int | None = None, hi: int | None = None
    ) -> int:
        value = self.raw.get(key, default)
        if value is None:
            raise SpecError(self.at(key), "is required")
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(self.at(key), f"must be an integer, got {value!r}")
        _check_range(self.at(key), value, lo, hi)
        return value

    def optional_integer(
        self, key: str, lo: int | None = None, hi: int | None = None
    ) -> int | None:
        return self.integer(key, None, lo, hi) if self.has(key) else None

    def number(
        self,
        key: str,
        default: float | None,
        lo: float | None = None,
        hi: float | None = None,
        *,
        lo_exclusive: bool = False,
        hi_exclusive: bool = False,
    ) -> float:
        value = self.raw.get(key, default)
        if value is None:
            raise SpecError(self.at(key), "is required")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpecError(self.at(key), f"must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise SpecError(self.at(key), "must be finite")
        if lo is not None and (number <= lo if lo_exclusive else number < lo):
            raise SpecError(self.at(key), f"must be {'>' if lo_exclusive else '>='} {lo}")
        if hi is not None and (number >= hi if hi_exclusive else number > hi):
            raise SpecError(self.at(key), f"must be {'<' if hi_exclusive else '<='} {hi}")
        return number

    def optional_number(self, key: str, lo: float | None = None) -> float | None:
        return self.number(key, None, lo) if self.has(key) else None

    def string(self, key: str, *, required: bool = True, max_length: int = 1024) -> str:
        value = self.raw.get(key)
        if value is None:
            raise SpecError(self.at(key), "is required")
        if not isinstance(value, str) or (required and not value):
            raise SpecError(self.at(key), f"must be a non-empty string, got {value!r}")
        if len(value) > max_length:
            raise SpecError(self.at(key), f"must be at most {max_length} characters")
        return value

    def optional_string(self, key: str, max_length: int = 4096) -> str | None:
        return self.string(key, max_length=max_length) if self.has(key) else None

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise SpecError(self.at(key), f"must be true or false, got {value!r}")
        return value

    def string_map(self, key: str) -> dict[str, str]:
        value = self.raw.get(key) or {}
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise SpecError(self.at(key), "must be a map of strings to strings")
        return dict(value)


def _check_range(path: str, value: int, lo: int | None, hi: int | None) -> None:
    if lo is not None and value < lo:
        raise SpecError(path, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise SpecError(path, f"must be <= {hi}, got {value}")


# --------------------------------------------------------------------------- section parsers


def _parse_source(r: _Reader) -> ModelSource:
    present = [k for k in ("pvc", "url", "localPath") if r.has(k)]
    if len(present) != 1:
        raise SpecError(r.path, "exactly one of pvc, url, localPath must be set")
    kind = present[0]
    if kind == "pvc":
        pvc = r.sub("pvc")
        claim = pvc.string("claimName", max_length=253)
        path = pvc.string("path", max_length=1024)
        if path.startswith("/") or ".." in path:
            raise SpecError(pvc.at("path"), "must be relative to the volume and not contain '..'")
        return PvcSource(claim_name=claim, path=path)
    if kind == "url":
        url = r.sub("url")
        address = url.string("url", max_length=2048)
        if not _URL.match(address):
            raise SpecError(url.at("url"), "must be an http:// or https:// URL")
        digest = url.string("sha256", max_length=64)
        if not _SHA256.match(digest):
            raise SpecError(url.at("sha256"), "must be 64 lowercase hex characters")
        return UrlSource(url=address, sha256=digest)
    path = r.string("localPath", max_length=4096)
    if not path.startswith("/"):
        raise SpecError(r.at("localPath"), "must be an absolute path")
    return LocalPathSource(path=path)


def _parse_profile(raw: object, path: str, level_count: int) -> tuple[ProfileEntry, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(path, "must be a list")
    if len(raw) != level_count:
        raise SpecError(path, "must list exactly levelCount entries, narrowest first")
    entries = []
    for index, item in enumerate(raw):
        r = _Reader(item, f"{path}[{index}]")
        service = r.optional_number("serviceTimeMs", lo=0.0)
        capacity = r.optional_number("capacityRps", lo=0.0)
        if not service and not capacity:
            raise SpecError(r.path, "needs serviceTimeMs or capacityRps (> 0)")
        accuracy = r.number("accuracy", None, 0.0, 1.0) if r.has("accuracy") else None
        entries.append(
            ProfileEntry(
                name=r.string("name", max_length=63) if r.has("name") else f"level-{index}",
                service_time_ms=service or None,
                capacity_rps=capacity or None,
                accuracy=accuracy,
                macs=r.optional_integer("macs", lo=0),
            )
        )
    return tuple(entries)


def _parse_model(r: _Reader) -> ModelSpec:
    level_count = r.integer("levelCount", None, 1, MAX_LEVELS)
    name = r.optional_string("name", max_length=63)
    if name is not None and not _DNS_LABEL.match(name):
        raise SpecError(r.at("name"), "must be a DNS label (lowercase letters, digits, '-')")
    return ModelSpec(
        source=_parse_source(r.sub("source", required=True)),
        level_count=level_count,
        name=name,
        profile=_parse_profile(r.raw.get("profile"), r.at("profile"), level_count),
    )


def _parse_levels(r: _Reader, level_count: int) -> LevelBounds:
    top = level_count - 1
    min_level = r.integer("minLevel", DEFAULTS["levels.minLevel"], 0, MAX_LEVELS - 1)
    max_level = r.integer("maxLevel", top, 0, MAX_LEVELS - 1)
    if min_level > top:
        raise SpecError(r.at("minLevel"), "minLevel must be < model.levelCount")
    if max_level > top:
        raise SpecError(r.at("maxLevel"), "maxLevel must be < model.levelCount")
    if min_level > max_level:
        raise SpecError(r.at("minLevel"), "minLevel must be <= maxLevel")
    initial = r.integer("initialLevel", max_level, 0, MAX_LEVELS - 1)
    if not min_level <= initial <= max_level:
        raise SpecError(r.at("initialLevel"), "initialLevel must lie in [minLevel, maxLevel]")
    return LevelBounds(min_level=min_level, max_level=max_level, initial_level=initial)


def _refusal(r: _Reader, key: str, message: str, values: Mapping[str, object]) -> SpecError:
    """A broken relation at ``key``; names the values that came from the defaults.

    The CEL rule with the same message only fires when the spec sets both fields; when one
    side is a default, only this check sees the pair, so the message says which value the
    operator supplied (the fix may be in the chart rather than in the CR).
    """
    supplied = [f"{name}={value}" for name, value in values.items() if not r.has(name)]
    note = f" ({', '.join(supplied)} from the operator's defaults)" if supplied else ""
    return SpecError(r.at(key), message + note)


def _parse_objective(r: _Reader, defaults: SpecDefaults) -> Objective:
    if not r.has("p95Ms") and defaults.objective_p95_ms is None:
        raise SpecError(r.at("p95Ms"), "is required (the operator has no default objective)")
    return Objective(
        p95_ms=r.integer("p95Ms", defaults.objective_p95_ms, 1, 600_000),
        latency_query=r.optional_string("latencyQuery") or defaults.latency_query,
        request_rate_query=r.optional_string("requestRateQuery") or defaults.request_rate_query,
    )


def _parse_policy(r: _Reader, d: PolicySettings) -> PolicySettings:
    mode_raw = r.raw.get("mode", d.mode.value)
    try:
        mode = PolicyMode(mode_raw)
    except ValueError:
        allowed = ", ".join(m.value for m in PolicyMode)
        raise SpecError(r.at("mode"), f"must be one of {allowed}, got {mode_raw!r}") from None
    loops_raw = r.raw.get("loops", DEFAULTS["policy.loops"])
    try:
        loops = Loops(loops_raw)
    except ValueError:
        allowed = ", ".join(m.value for m in Loops)
        raise SpecError(r.at("loops"), f"must be one of {allowed}, got {loops_raw!r}") from None
    p = PolicySettings(
        mode=mode,
        loops=loops,
        evaluation_interval_s=r.integer(
            "evaluationIntervalSeconds", d.evaluation_interval_s, 1, 60
        ),
        stable_window_s=r.integer("stableWindowSeconds", d.stable_window_s, 6, 3600),
        panic_window_s=r.integer("panicWindowSeconds", d.panic_window_s, 1, 600),
        panic_threshold=r.number(
            "panicThreshold", d.panic_threshold, 1.0, 10.0, lo_exclusive=True
        ),
        tolerance=r.number("tolerance", d.tolerance, 0.0, 0.5),
        headroom=r.number("headroom", d.headroom, 0.0, 0.9),
        widen_stabilization_s=r.integer(
            "widenStabilizationSeconds", d.widen_stabilization_s, 0, 3600
        ),
        settle_s=r.integer("settleSeconds", d.settle_s, 0, 600),
        stale_after_s=r.integer("staleAfterSeconds", d.stale_after_s, 1, 3600),
    )
    # Relations: each mirrors one CEL rule on spec.policy in the CRD, same wording.
    if p.panic_window_s > p.stable_window_s:
        raise _refusal(r, "panicWindowSeconds", "panicWindowSeconds must be <= stableWindowSeconds",
                       {"panicWindowSeconds": p.panic_window_s,
                        "stableWindowSeconds": p.stable_window_s})
    if p.evaluation_interval_s > p.panic_window_s:
        raise _refusal(r, "evaluationIntervalSeconds",
                       "evaluationIntervalSeconds must be <= panicWindowSeconds",
                       {"evaluationIntervalSeconds": p.evaluation_interval_s,
                        "panicWindowSeconds": p.panic_window_s})
    if p.panic_threshold <= 1.0 + p.tolerance:
        raise _refusal(r, "panicThreshold", "panicThreshold must be > 1 + tolerance",
                       {"panicThreshold": p.panic_threshold, "tolerance": p.tolerance})
    if p.settle_s > p.widen_stabilization_s:
        raise _refusal(r, "settleSeconds", "settleSeconds must be <= widenStabilizationSeconds",
                       {"settleSeconds": p.settle_s,
                        "widenStabilizationSeconds": p.widen_stabilization_s})
    if p.stale_after_s < p.evaluation_interval_s:
        raise _refusal(r, "staleAfterSeconds",
                       "staleAfterSeconds must be >= evaluationIntervalSeconds",
                       {"staleAfterSeconds": p.stale_after_s,
                        "evaluationIntervalSeconds": p.evaluation_interval_s})
    return p


def _parse_node_pressure(r: _Reader, d: NodePressureThresholds) -> NodePressureThresholds:
    """Thresholds left out come from ``d`` (the operator's defaults); ``enabled`` from the CRD."""
    return NodePressureThresholds(
        enabled=r.boolean("enabled", DEFAULTS["nodePressure.enabled"]),
        cpu_fraction=r.number("cpuFraction", d.cpu_fraction, 0.0, 1.0, lo_exclusive=True),
        memory_fraction=r.number(
            "memoryFraction", d.memory_fraction, 0.0, 1.0, lo_exclusive=True
        ),
        temperature_c=r.number("temperatureCelsius", d.temperature_c, 30.0, 120.0),
        gpu_load_percent=r.number("gpuLoadPercent", d.gpu_load_percent, 1.0, 100.0),
    )


def _parse_resources(r: _Reader) -> dict[str, dict[str, str]]:
    """``requests``/``limits`` maps of Kubernetes quantities (a number is taken as written)."""
    unknown = sorted(set(r.raw) - {"requests", "limits"})
    if unknown:
        raise SpecError(r.at(unknown[0]), "must be requests or limits")
    out: dict[str, dict[str, str]] = {}
    for section in ("requests", "limits"):
        if not r.has(section):
            continue
        amounts = r.sub(section)
        parsed = {}
        for name, value in amounts.raw.items():
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise SpecError(amounts.at(str(name)), f"must be a quantity, got {value!r}")
            if not _QUANTITY.match(str(value)):
                raise SpecError(amounts.at(str(name)), f"not a quantity: {value!r}")
            parsed[str(name)] = str(value)
        out[section] = parsed
    return out


def _parse_tolerations(raw: object, path: str) -> tuple[dict[str, Any], ...]:
    """Pod tolerations with the fields and types a Pod spec has (the CRD's items schema)."""
    if not isinstance(raw, list):
        raise SpecError(path, "must be a list of objects")
    out = []
    for index, item in enumerate(raw):
        r = _Reader(item, f"{path}[{index}]")
        for key, value in r.raw.items():
            kind = _TOLERATION_KEYS.get(str(key))
            if kind is None:
                raise SpecError(r.at(str(key)), "not a toleration field")
            if isinstance(value, bool) or not isinstance(value, kind):
                raise SpecError(r.at(str(key)), f"must be a {kind.__name__}, got {value!r}")
        if r.raw.get("operator", "Equal") not in ("Exists", "Equal"):
            raise SpecError(r.at("operator"), "must be Exists or Equal")
        if r.raw.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise SpecError(r.at("effect"), "must be NoSchedule, PreferNoSchedule or NoExecute")
        out.append(dict(r.raw))
    return tuple(out)


def _parse_serving(r: _Reader, d: ServingDefaults) -> ServingSettings:
    """Fields left out come from ``d`` (the operator's defaults), each as a whole."""
    return ServingSettings(
        workers=r.integer("workers", d.workers, 1, 64),
        batch_size=_batch_size(r, d.batch_size),
        max_batch_delay_ms=r.integer("maxBatchDelayMs", d.max_batch_delay_ms, 0, 10_000),
        image=r.optional_string("image"),
        resources=_parse_resources(r.sub("resources")) if r.has("resources") else d.resources,
        node_selector=r.string_map("nodeSelector") if r.has("nodeSelector")
        else d.node_selector,
        tolerations=_parse_tolerations(r.raw["tolerations"], r.at("tolerations"))
        if r.has("tolerations") else d.tolerations,
        runtime_class_name=r.optional_string("runtimeClassName", max_length=253)
        or d.runtime_class_name,
        token_authorization=_token_authorization(r),
        device=_device(r),
    )


def _batch_size(r: _Reader, default: BatchSize) -> BatchSize:
    """An integer 1..256, or ``Auto`` (measured by each pod, :data:`AUTO_BATCH`)."""
    if not r.has("batchSize"):
        return default
    value = r.raw["batchSize"]
    if value == AUTO_BATCH:
        return AUTO_BATCH
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise SpecError(r.at("batchSize"), f"{_BATCH_RULE}, got {value!r}")
    return value


_BATCH_RULE = "must be an integer 1-256 or Auto"
"""The CRD's CEL message for ``serving.batchSize``, word for word."""


SERVING_DEVICES = {"Auto": "auto", "CPU": "cpu", "CUDA": "cuda"}


def _device(r: _Reader) -> str:
    raw = r.raw.get("device", DEFAULTS["serving.device"])
    if not isinstance(raw, str) or raw not in SERVING_DEVICES:
        raise SpecError(r.at("device"), f"must be Auto, CPU or CUDA, got {raw!r}")
    return SERVING_DEVICES[raw]


def _token_authorization(r: _Reader) -> bool:
    raw = r.raw.get("tokenAuthorization", DEFAULTS["serving.tokenAuthorization"])
    if raw not in ("Enabled", "Disabled"):
        raise SpecError(r.at("tokenAuthorization"), f"must be Enabled or Disabled, got {raw!r}")
    return bool(raw == "Enabled")


# --------------------------------------------------------------------------- entry points


def _missing(raw: Mapping[str, Any], dotted: str) -> bool:
    node: object = raw
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or node.get(key) is None:
            return True
        node = node[key]
    return False


def parse_spec(raw: object, defaults: SpecDefaults | None = None) -> ElasticModelSpec:
    """Default and validate ``raw`` (the CR's ``spec``) as the CRD and the operator do.

    ``defaults`` fill the chart-defaulted fields the spec leaves out (``SpecDefaults()``,
    the chart's own defaults, when not given). Raises ``SpecError`` naming the first
    offending field. The order of checks follows the document (model, levels, objective,
    ...) so the message is stable for a given input.
    """
    d = defaults if defaults is not None else SpecDefaults()
    r = _Reader(raw, "spec")
    model = _parse_model(r.sub("model", required=True))
    levels = _parse_levels(r.sub("levels"), model.level_count)
    objective_r = r.sub("objective")
    serving_r = r.sub("serving")
    spec = ElasticModelSpec(
        model=model,
        levels=levels,
        objective=_parse_objective(objective_r, d),
        replicas=r.integer("replicas", DEFAULTS["replicas"], 0, 1000),
        policy=_parse_policy(r.sub("policy"), d.policy),
        node_pressure=_parse_node_pressure(r.sub("nodePressure"), d.node_pressure),
        serving=_parse_serving(serving_r, d.serving),
        allow_request_pinning=r.boolean("allowRequestPinning", DEFAULTS["allowRequestPinning"]),
        defaulted=frozenset(path for path in CHART_DEFAULTED if _missing(r.raw, path)),
    )
    if spec.serving.max_batch_delay_ms >= spec.objective.p95_ms:
        supplied = []
        if not objective_r.has("p95Ms"):
            supplied.append(f"objective.p95Ms={spec.objective.p95_ms}")
        if not serving_r.has("maxBatchDelayMs"):
            supplied.append(f"serving.maxBatchDelayMs={spec.serving.max_batch_delay_ms}")
        note = f" ({', '.join(supplied)} from the operator's defaults)" if supplied else ""
        raise SpecError("spec.serving.maxBatchDelayMs", _DELAY_RULE + note)
    return spec


_DELAY_RULE = "maxBatchDelayMs must be < objective.p95Ms (a batch wait alone would break it)"
"""The CRD's CEL message for the batch delay's relation to the objective, word for word."""


def parse_defaults(raw: Mapping[str, Any]) -> SpecDefaults:
    """Validate operator defaults given in the spec's own shape, with the spec's rules.

    ``raw`` holds ``objective`` (``p95Ms``, queries), ``policy`` (with
    ``replicas.podStartSeconds``), ``nodePressure`` and ``serving`` sections; what it leaves
    out keeps the built-in value. The same ranges and relations
    as a CR's apply (a default that no CR could set is refused), and a ``SpecError`` path
    is relative to ``raw`` (``policy.tolerance``) so the caller can name its own source.
    """
    r = _Reader(raw, "")
    builtin = SpecDefaults()
    objective = r.sub("objective")
    policy = _parse_policy(r.sub("policy"), builtin.policy)
    p95 = objective.integer("p95Ms", builtin.objective_p95_ms, 1, 600_000)
    serving = _parse_serving(r.sub("serving"), builtin.serving)
    if serving.max_batch_delay_ms >= p95:
        raise SpecError("serving.maxBatchDelayMs",
                        f"{_DELAY_RULE} (objective.p95Ms={p95}, "
                        f"serving.maxBatchDelayMs={serving.max_batch_delay_ms})")
    pod_start_s = r.sub("policy").sub("replicas").integer(
        "podStartSeconds", builtin.pod_start_s, 1, 3600)
    return SpecDefaults(
        objective_p95_ms=p95,
        pod_start_s=pod_start_s,
        latency_query=objective.optional_string("latencyQuery"),
        request_rate_query=objective.optional_string("requestRateQuery"),
        policy=policy,
        node_pressure=_parse_node_pressure(r.sub("nodePressure"), builtin.node_pressure),
        serving=ServingDefaults(
            workers=serving.workers,
            batch_size=serving.batch_size,
            max_batch_delay_ms=serving.max_batch_delay_ms,
            resources=serving.resources,
            node_selector=serving.node_selector,
            tolerations=serving.tolerations,
            runtime_class_name=serving.runtime_class_name,
        ),
    )


def check_update(
    old: object, new: object, defaults: SpecDefaults | None = None
) -> ElasticModelSpec:
    """Validate ``new`` as an update of ``old`` (the CRD's transition rules).

    ``model.levelCount`` is immutable: ``status.activeLevel``, the policy state and every
    pod's level file index into the bundle's levels, so a bundle with another level count
    is a different ``ElasticModel``. The source itself may change (a retrained bundle with
    the same levels rolls out like a new image).
    """
    new_spec = parse_spec(new, defaults)
    old_spec = parse_spec(old, defaults)
    if old_spec.model.level_count != new_spec.model.level_count:
        raise SpecError("spec.model.levelCount", "levelCount is immutable")
    return new_spec
