"""The bundle manifest: a typed, schema-versioned description of a nested model.

``manifest.json`` is what every other component reads first: the handler to build levels and
normalise inputs, the operator's policy for each level's cost (MACs, latency), the archiver for
the weights' checksum. Parsing is strict: an unknown schema version or a missing / mistyped field
is refused with a message naming the field, before the weights are touched.

Schema versions: 1 is a bundle whose levels differ only in width; 2 adds the optional per-level
``skipped_blocks`` (residual blocks a level runs as the identity, so levels may differ in depth).
A writer uses 2 only when some level skips a block, so depth-uniform bundles stay readable by
loaders that only know 1, and a version-1 loader refuses a depth-varying bundle by its version
instead of failing on shapes. This loader reads both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import ManifestError, UnknownSchemaVersionError

SCHEMA_VERSION = 1
DEPTH_SCHEMA_VERSION = 2
"""The version that introduced per-level ``skipped_blocks``."""
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.safetensors"

T = TypeVar("T")


class SkippedBlocksError(ManifestError):
    """A level's ``skipped_blocks`` names an unknown or unskippable block, or breaks nesting."""


@dataclass(frozen=True)
class LevelInfo:
    """One nested level: its widths (channels per slot) and measured cost / accuracy."""

    name: str
    channel_ratio: float
    widths: Mapping[str, int]
    macs: int
    params: int
    accuracy: float | None = None
    latency_ms_b1: float | None = None
    latency_ms_b32: float | None = None
    skipped_blocks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``skipped_blocks`` is left out when empty (the version-1 layout)."""
        out: dict[str, Any] = {**asdict(self), "widths": dict(self.widths)}
        if self.skipped_blocks:
            out["skipped_blocks"] = list(self.skipped_blocks)
        else:
            del out["skipped_blocks"]
        return out


def schema_version_for(levels: Sequence[LevelInfo]) -> int:
    """The lowest schema version that can describe ``levels``."""
    return DEPTH_SCHEMA_VERSION if any(lv.skipped_blocks for lv in levels) else SCHEMA_VERSION


@dataclass(frozen=True)
class InputSpec:
    """Shape and dtype of one input image (NCHW without the batch)."""

    channels: int
    height: int
    width: int
    dtype: str = "float32"


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and std applied to [0, 1] pixels before the model."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class WeightsRef:
    """The weights file, its SHA-256 and the name -> shape of every tensor in it."""

    file: str
    sha256: str
    tensors: Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class Manifest:
    """Everything needed to rebuild and serve every level of a nested bundle."""

    architecture: str
    arch_args: Mapping[str, Any]
    levels: tuple[LevelInfo, ...]
    input: InputSpec
    normalisation: Normalisation
    class_names: tuple[str, ...]
    weights: WeightsRef
    training: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self.levels)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "architecture": {"name": self.architecture, "args": dict(self.arch_args)},
            "levels": [level.to_dict() for level in self.levels],
            "input": asdict(self.input),
            "normalisation": {"mean": list(self.normalisation.mean),
                              "std": list(self.normalisation.std)},
            "class_names": list(self.class_names),
            "weights": {"file": self.weights.file, "sha256": self.weights.sha256,
                        "tensors": {k: list(v) for k, v in self.weights.tensors.items()}},
            "training": dict(self.training),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        version = data.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ManifestError("manifest field 'schema_version' must be an integer")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            raise UnknownSchemaVersionError(
                f"manifest schema_version {version} is not supported by this loader "
                f"(supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)})")
        arch = _get(data, "architecture", dict, "")
        levels_raw = _get(data, "levels", list, "")
        if not levels_raw:
            raise ManifestError("manifest field 'levels' must list at least one level")
        levels = tuple(_level(raw, f"levels[{i}]") for i, raw in enumerate(levels_raw))
        if version < DEPTH_SCHEMA_VERSION and any(lv.skipped_blocks for lv in levels):
            raise ManifestError(f"manifest field 'levels[].skipped_blocks' needs schema_version "
                                f"{DEPTH_SCHEMA_VERSION}, the manifest says {version}")
        inp = _get(data, "input", dict, "")
        norm = _get(data, "normalisation", dict, "")
        weights = _get(data, "weights", dict, "")
        tensors = _get(weights, "tensors", dict, "weights.")
        return cls(
            schema_version=version,
            architecture=_get(arch, "name", str, "architecture."),
            arch_args=_get(arch, "args", dict, "architecture."),
            levels=levels,
            input=InputSpec(
                channels=_get(inp, "channels", int, "input."),
                height=_get(inp, "height", int, "input."),
                width=_get(inp, "width", int, "input."),
                dtype=_get(inp, "dtype", str, "input."),
            ),
            normalisation=Normalisation(
                mean=tuple(_floats(_get(norm, "mean", list, "normalisation."), "mean")),
                std=tuple(_floats(_get(norm, "std", list, "normalisation."), "std")),
            ),
            class_names=tuple(str(c) for c in _get(data, "class_names", list, "")),
            weights=WeightsRef(
                file=_get(weights, "file", str, "weights."),
                sha256=_get(weights, "sha256", str, "weights."),
                tensors={str(k): _shape(v, f"weights.tensors.{k}") for k, v in tensors.items()},
            ),
            training=data.get("training", {}) if isinstance(data.get("training"), dict) else {},
        )

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ManifestError(f"{path}: no manifest (expected {MANIFEST_NAME})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{path}: not valid JSON ({err})") from None
        return cls.from_dict(data)


def _get(data: Mapping[str, Any], key: str, kind: type[T], where: str) -> T:
    if key not in data:
        raise ManifestError(f"manifest field '{where}{key}' is missing")
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"manifest field '{where}{key}' must be {kind.__name__}")
    return value


def _opt_float(data: Mapping[str, Any], key: str, where: str) -> float | None:
    if data.get(key) is None:
        return None
    return _get(data, key, float, where)


def _floats(values: Sequence[Any], where: str) -> list[float]:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ManifestError(f"manifest field 'normalisation.{where}' must be a list of numbers")
    return [float(v) for v in values]


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise ManifestError(f"manifest field '{where}' must be a list of sizes")
    return tuple(value)


def _level(raw: Any, where: str) -> LevelInfo:
    if not isinstance(raw, dict):
        raise ManifestError(f"manifest field '{where}' must be an object")
    w = f"{where}."
    widths = _get(raw, "widths", dict, w)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in widths.values()):
        raise ManifestError(f"manifest field '{w}widths' must map slots to positive integers")
    return LevelInfo(
        name=_get(raw, "name", str, w),
        channel_ratio=_get(raw, "channel_ratio", float, w),
        widths={str(k): int(v) for k, v in widths.items()},
        macs=_get(raw, "macs", int, w),
        params=_get(raw, "params", int, w),
        accuracy=_opt_float(raw, "accuracy", w),
        latency_ms_b1=_opt_float(raw, "latency_ms_b1", w),
        latency_ms_b32=_opt_float(raw, "latency_ms_b32", w),
        skipped_blocks=_skipped(raw, w),
    )


def _skipped(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = raw.get("skipped_blocks", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ManifestError(f"manifest field '{where}skipped_blocks' must be a list of block "
                            f"names")
    if len(set(value)) != len(value):
        raise ManifestError(f"manifest field '{where}skipped_blocks' names a block twice")
    return tuple(value)
