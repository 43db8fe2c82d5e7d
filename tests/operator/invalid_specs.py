"""ElasticModel specs the API server must refuse, with the message it should give.

Data only, shared by two tests: ``test_spec.py`` checks that the Python mirror
(``elastiserve_operator.spec.parse_spec``, and ``replica_spec.replica_policy_from_spec`` for
``spec.policy.replicas``) refuses each one at ``field``, and a later
control-plane test applies ``as_object(case)`` to a real kube-apiserver with the CRD
installed and checks that the error contains ``message``.

``kind`` says which layer refuses: ``schema`` (OpenAPI type/range/enum/pattern, message in
the API server's wording) or ``cel`` (an ``x-kubernetes-validations`` rule, message ours,
and the same words as the Python mirror's). ``old`` is set for transition rules: create
``old`` first, then update to ``spec``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

GROUP_VERSION = "elastiserve.io/v1alpha1"


def valid_spec() -> dict[str, Any]:
    """A minimal spec that every layer accepts; each case changes one thing in it."""
    return {
        "model": {"levelCount": 4, "source": {"localPath": "/models/resnet20.mar"}},
        "objective": {"p95Ms": 100},
    }


@dataclass(frozen=True)
class InvalidSpec:
    """One refused spec: what the API server says and which field the Python mirror names."""

    name: str
    spec: dict[str, Any]
    message: str
    field: str
    kind: Literal["schema", "cel"]
    old: dict[str, Any] | None = None


def _with(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``valid_spec()`` with ``value`` set at dotted ``path`` (``None`` deletes the key)."""
    spec = copy.deepcopy(base if base is not None else valid_spec())
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


def _many(**paths: Any) -> dict[str, Any]:
    spec = valid_spec()
    for path, value in paths.items():
        spec = _with(path.replace("__", "."), value, spec)
    return spec


_PROFILE_ENTRY = {"name": "w25", "serviceTimeMs": 5.0, "accuracy": 0.905}

INVALID_SPECS: tuple[InvalidSpec, ...] = (
    # --- model source: exactly one, well formed
    InvalidSpec("no-source", _with("model.source", {}),
                "exactly one of pvc, url, localPath must be set", "spec.model.source", "cel"),
    InvalidSpec("two-sources",
                _with("model.source", {"localPath": "/m.mar",
                                       "pvc": {"claimName": "models", "path": "m.mar"}}),
                "exactly one of pvc, url, localPath must be set", "spec.model.source", "cel"),
    InvalidSpec("url-not-http",
                _with("model.source", {"url": {"url": "ftp://host/m.mar", "sha256": "a" * 64}}),
                "should match '^https?://", "spec.model.source.url.url", "schema"),
    InvalidSpec("url-bad-sha256",
                _with("model.source", {"url": {"url": "https://host/m.mar", "sha256": "ABC"}}),
                "should match '^[a-f0-9]{64}$'", "spec.model.source.url.sha256", "schema"),
    InvalidSpec("pvc-absolute-path",
                _with("model.source", {"pvc": {"claimName": "models", "path": "/etc/m.mar"}}),
                "must be relative to the volume and not contain '..'",
                "spec.model.source.pvc.path", "cel"),
    InvalidSpec("pvc-dotdot-path",
                _with("model.source", {"pvc": {"claimName": "models", "path": "a/../../m.mar"}}),
                "must be relative to the volume and not contain '..'",
                "spec.model.source.pvc.path", "cel"),
    InvalidSpec("local-path-relative", _with("model.source", {"localPath": "models/m.mar"}),
                "should match '^/'", "spec.model.source.localPath", "schema"),
    # --- level count and profile
    InvalidSpec("level-count-zero", _with("model.levelCount", 0),
                "should be greater than or equal to 1", "spec.model.levelCount", "schema"),
    InvalidSpec("level-count-too-many", _with("model.levelCount", 17),
                "should be less than or equal to 16", "spec.model.levelCount", "schema"),
    InvalidSpec("profile-wrong-length", _with("model.profile", [_PROFILE_ENTRY] * 2),
                "must list exactly levelCount entries", "spec.model.profile", "cel"),
    InvalidSpec("profile-entry-without-numbers",
                _with("model.profile", [{"name": "w25", "accuracy": 0.9}] * 4),
                "needs serviceTimeMs or capacityRps", "spec.model.profile[0]", "cel"),
    # --- level bounds
    InvalidSpec("min-above-max", _with("levels", {"minLevel": 3, "maxLevel": 1}),
                "minLevel must be <= maxLevel", "spec.levels.minLevel", "cel"),
    InvalidSpec("max-beyond-level-count", _with("levels", {"maxLevel": 4}),
                "maxLevel must be < model.levelCount", "spec.levels.maxLevel", "cel"),
    InvalidSpec("min-beyond-level-count", _with("levels", {"minLevel": 5}),
                "minLevel must be < model.levelCount", "spec.levels.minLevel", "cel"),
    InvalidSpec("initial-below-min", _with("levels", {"minLevel": 1, "initialLevel": 0}),
                "initialLevel must lie in [minLevel, maxLevel]", "spec.levels.initialLevel",
                "cel"),
    InvalidSpec("negative-min-level", _with("levels", {"minLevel": -1}),
                "should be greater than or equal to 0", "spec.levels.minLevel", "schema"),
    # --- objective
    InvalidSpec("objective-zero", _with("objective.p95Ms", 0),
                "should be greater than or equal to 1", "spec.objective.p95Ms", "schema"),
    InvalidSpec("objective-negative", _with("objective.p95Ms", -20),
                "should be greater than or equal to 1", "spec.objective.p95Ms", "schema"),
    # --- policy windows and thresholds
    InvalidSpec("unknown-mode", _with("policy", {"mode": "Fast"}),
                'Unsupported value: "Fast"', "spec.policy.mode", "schema"),
    InvalidSpec("token-authorization-unknown",
                _with("serving.tokenAuthorization", "Off"),
                'Unsupported value: "Off"', "spec.serving.tokenAuthorization", "schema"),
    InvalidSpec("stable-window-too-short", _with("policy", {"stableWindowSeconds": 3,
                                                            "panicWindowSeconds": 3,
                                                            "evaluationIntervalSeconds": 1}),
                "should be greater than or equal to 6", "spec.policy.stableWindowSeconds",
                "schema"),
    InvalidSpec("panic-window-beyond-stable",
                _with("policy", {"panicWindowSeconds": 120, "stableWindowSeconds": 60}),
                "panicWindowSeconds must be <= stableWindowSeconds",
                "spec.policy.panicWindowSeconds", "cel"),
    InvalidSpec("interval-beyond-panic-window",
                _with("policy", {"evaluationIntervalSeconds": 10, "panicWindowSeconds": 6}),
                "evaluationIntervalSeconds must be <= panicWindowSeconds",
                "spec.policy.evaluationIntervalSeconds", "cel"),
    InvalidSpec("panic-threshold-one", _with("policy", {"panicThreshold": 1}),
                "should be greater than 1", "spec.policy.panicThreshold", "schema"),
    InvalidSpec("panic-threshold-within-tolerance",
                _with("policy", {"panicThreshold": 1.05, "tolerance": 0.1}),
                "panicThreshold must be > 1 + tolerance", "spec.policy.panicThreshold", "cel"),
    InvalidSpec("tolerance-too-large", _with("policy", {"tolerance": 0.9}),
                "should be less than or equal to 0.5", "spec.policy.tolerance", "schema"),
    InvalidSpec("headroom-negative", _with("policy", {"headroom": -0.1}),
                "should be greater than or equal to 0", "spec.policy.headroom", "schema"),
    InvalidSpec("settle-beyond-widen-stabilization",
                _with("policy", {"settleSeconds": 400, "widenStabilizationSeconds": 300}),
                "settleSeconds must be <= widenStabilizationSeconds",
                "spec.policy.settleSeconds", "cel"),
    InvalidSpec("widen-stabilization-too-long",
                _with("policy", {"widenStabilizationSeconds": 7200}),
                "should be less than or equal to 3600",
                "spec.policy.widenStabilizationSeconds", "schema"),
    InvalidSpec("stale-before-interval",
                _with("policy", {"staleAfterSeconds": 2, "evaluationIntervalSeconds": 5}),
                "staleAfterSeconds must be >= evaluationIntervalSeconds",
                "spec.policy.staleAfterSeconds", "cel"),
    # --- the joint replica policy
    InvalidSpec("replicas-enabled-without-max",
                _with("policy", {"replicas": {"enabled": True, "min": 2}}),
                "is required when enabled (it is the cost ceiling)", "spec.policy.replicas.max",
                "cel"),
    InvalidSpec("replicas-min-above-max", _with("policy", {"replicas": {"min": 5, "max": 3}}),
                "min must be <= max", "spec.policy.replicas.min", "cel"),
    InvalidSpec("replicas-max-beyond-limit",
                _with("policy", {"replicas": {"enabled": True, "max": 1001}}),
                "should be less than or equal to 1000", "spec.policy.replicas.max", "schema"),
    InvalidSpec("replicas-share-zero",
                _with("policy", {"replicas": {"max": 3, "targetShareOfNarrowest": 0}}),
                "should be greater than 0", "spec.policy.replicas.targetShareOfNarrowest",
                "schema"),
    InvalidSpec("replicas-guard-share-above-one",
                _with("policy", {"replicas": {"max": 3, "guardShareOfObjective": 1.5}}),
                "should be less than or equal to 1",
                "spec.policy.replicas.guardShareOfObjective", "schema"),
    InvalidSpec("replicas-pod-start-zero",
                _with("policy", {"replicas": {"max": 3, "podStartSeconds": 0}}),
                "should be greater than or equal to 1", "spec.policy.replicas.podStartSeconds",
                "schema"),
    # --- node pressure
    InvalidSpec("cpu-fraction-above-one", _with("nodePressure", {"cpuFraction": 1.5}),
                "should be less than or equal to 1", "spec.nodePressure.cpuFraction", "schema"),
    InvalidSpec("memory-fraction-zero", _with("nodePressure", {"memoryFraction": 0}),
                "should be greater than 0", "spec.nodePressure.memoryFraction", "schema"),
    InvalidSpec("temperature-too-hot", _with("nodePressure", {"temperatureCelsius": 150}),
                "should be less than or equal to 120", "spec.nodePressure.temperatureCelsius",
                "schema"),
    InvalidSpec("gpu-load-above-100", _with("nodePressure", {"gpuLoadPercent": 120}),
                "should be less than or equal to 100", "spec.nodePressure.gpuLoadPercent",
                "schema"),
    # --- serving and replicas
    InvalidSpec("negative-replicas", _with("replicas", -1),
                "should be greater than or equal to 0", "spec.replicas", "schema"),
    InvalidSpec("zero-workers", _with("serving", {"workers": 0}),
                "should be greater than or equal to 1", "spec.serving.workers", "schema"),
    InvalidSpec("batch-size-word", _with("serving", {"batchSize": "Most"}),
                "must be an integer 1-256 or Auto", "spec.serving.batchSize", "cel"),
    InvalidSpec("batch-size-lowercase-auto", _with("serving", {"batchSize": "auto"}),
                "must be an integer 1-256 or Auto", "spec.serving.batchSize", "cel"),
    InvalidSpec("batch-size-too-large", _with("serving", {"batchSize": 300}),
                "must be an integer 1-256 or Auto", "spec.serving.batchSize", "cel"),
    InvalidSpec("batch-delay-beyond-objective",
                _many(serving={"batchSize": 8, "maxBatchDelayMs": 100}),
                "maxBatchDelayMs must be < objective.p95Ms", "spec.serving.maxBatchDelayMs",
                "cel"),
    # --- transition rules
    InvalidSpec("level-count-changed", _with("model.levelCount", 3),
                "levelCount is immutable", "spec.model.levelCount", "cel", old=valid_spec()),
)


def as_object(case: InvalidSpec, name: str | None = None, *, old: bool = False) -> dict[str, Any]:
    """The full ``ElasticModel`` to send to the API server (``old=True``: the create step)."""
    spec = case.old if old and case.old is not None else case.spec
    return {
        "apiVersion": GROUP_VERSION,
        "kind": "ElasticModel",
        "metadata": {"name": name or case.name},
        "spec": copy.deepcopy(spec),
    }
