"""The bundle manifest: a typed, schema-versioned description of a nested model.

``manifest.json`` is what every other component reads first: the handler to build levels and
normalise inputs, the operator's policy for each level's cost (MACs, latency), the archiver for
the weights' checksum. Parsing is strict: an unknown schema version or a missing / mistyped field
is refused with a message naming the field, before the weights are touched.

Schema versions: 1 is a bundle whose levels differ only in width; 2 adds the optional per-level
``skipped_blocks`` (residual blocks a level runs as the identity, so levels may differ in depth).
A writer uses 2 only when some level skips a block, so depth-uniform bundles stay readable by
loaders that only know 1, and a version-1 loader refuses a depth-varying bundle by its version
instead of failing on shapes. Version 3 names a *constructor* instead of an in-project
architecture (``torchvision:resnet18``, ``package.module:factory``; see :mod:`.external` and
:mod:`.constructors`): ``architecture.args`` then holds the constructor's ``kwargs`` and the
``layout`` (each layer's dependency-group slots), and each level's ``widths`` are channels per
group. Writers use 3 only for such bundles, so older loaders refuse them by version; this loader
reads all three (versions 1 and 2 need no migration: their fields mean the same in 3).

A bundle may come from someone who should not be trusted (a tenant's model), so everything the
serving side sizes itself by is bounded here: the manifest's own size, the input geometry
(the decoder's limits follow it), the number and names of levels and classes, tensor ranks and
sizes; normalisation values must be finite with a positive std; the weights file must be a
plain file name inside the bundle. ``weights.dtypes`` (written since this check exists) names
each tensor's safetensors dtype, which the loader compares with the file's header.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import constructors, external
from .errors import ManifestError, UnknownSchemaVersionError

SCHEMA_VERSION = 1
DEPTH_SCHEMA_VERSION = 2
"""The version that introduced per-level ``skipped_blocks``."""
CONSTRUCTOR_SCHEMA_VERSION = 3
"""The version that introduced constructor-built models (``architecture.args.layout``)."""
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2, 3})
MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.safetensors"

T = TypeVar("T")

MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_INPUT_SIDE = 8192
MAX_INPUT_CHANNELS = 4
INPUT_DTYPES = frozenset({"float32"})
"""The runtime feeds float32 tensors (``decode.normalise``); nothing else would run."""
MAX_LEVELS = 64
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 256
MAX_TENSORS = 100_000
MAX_RANK = 8
MAX_DIM = 1 << 31
LEVEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""Level names travel in an HTTP header and a metrics label: a short plain token."""
WEIGHTS_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
"""A plain file name: no separator, no ``..`` (checked too), not hidden."""
SAFETENSORS_DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64",
                                "F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"})


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


def schema_version_for(levels: Sequence[LevelInfo], architecture: str = "") -> int:
    """The lowest schema version that can describe ``levels`` of ``architecture``."""
    if constructors.is_external(architecture):
        return CONSTRUCTOR_SCHEMA_VERSION
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
    """The weights file, its SHA-256, the name -> shape of every tensor in it and (when the
    writer recorded them) the name -> safetensors dtype (``F32``, ``I64``...)."""

    file: str
    sha256: str
    tensors: Mapping[str, tuple[int, ...]]
    dtypes: Mapping[str, str] | None = None


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
            "weights": self._weights_dict(),
            "training": dict(self.training),
        }

    def _weights_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "file": self.weights.file, "sha256": self.weights.sha256,
            "tensors": {k: list(v) for k, v in self.weights.tensors.items()}}
        if self.weights.dtypes is not None:
            out["dtypes"] = dict(self.weights.dtypes)
        return out

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
        if len(levels_raw) > MAX_LEVELS:
            raise ManifestError(f"manifest field 'levels' lists more than {MAX_LEVELS} levels")
        levels = tuple(_level(raw, f"levels[{i}]") for i, raw in enumerate(levels_raw))
        names = [lv.name for lv in levels]
        if len(set(names)) != len(names):
            raise ManifestError("manifest field 'levels[].name' names a level twice")
        if version < DEPTH_SCHEMA_VERSION and any(lv.skipped_blocks for lv in levels):
            raise ManifestError(f"manifest field 'levels[].skipped_blocks' needs schema_version "
                                f"{DEPTH_SCHEMA_VERSION}, the manifest says {version}")
        arch_name = _get(arch, "name", str, "architecture.")
        arch_args = _get(arch, "args", dict, "architecture.")
        if constructors.is_external(arch_name):
            if version < CONSTRUCTOR_SCHEMA_VERSION:
                raise ManifestError(f"manifest field 'architecture.name' names a constructor, "
                                    f"which needs schema_version {CONSTRUCTOR_SCHEMA_VERSION}, "
                                    f"the manifest says {version}")
            constructors.check_name(arch_name)
            external.split_args(arch_args)
        inp = _get(data, "input", dict, "")
        norm = _get(data, "normalisation", dict, "")
        weights = _get(data, "weights", dict, "")
        tensors = _get(weights, "tensors", dict, "weights.")
        if len(tensors) > MAX_TENSORS:
            raise ManifestError(f"manifest field 'weights.tensors' lists more than "
                                f"{MAX_TENSORS} tensors")
        input_spec = _input(inp)
        shapes = {str(k): _shape(v, f"weights.tensors.{k}") for k, v in tensors.items()}
        return cls(
            schema_version=version,
            architecture=arch_name,
            arch_args=arch_args,
            levels=levels,
            input=input_spec,
            normalisation=_normalisation(norm, input_spec.channels),
            class_names=_class_names(_get(data, "class_names", list, "")),
            weights=WeightsRef(
                file=_weights_file(_get(weights, "file", str, "weights.")),
                sha256=_get(weights, "sha256", str, "weights."),
                tensors=shapes,
                dtypes=_dtypes(weights.get("dtypes"), shapes),
            ),
            training=data.get("training", {}) if isinstance(data.get("training"), dict) else {},
        )

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        try:
            size = path.stat().st_size
            if size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{path}: {size} bytes, more than a manifest needs "
                                    f"({MAX_MANIFEST_BYTES})")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ManifestError(f"{path}: no manifest (expected {MANIFEST_NAME})") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ManifestError(f"{path}: cannot be read ({type(err).__name__})") from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:
            # ValueError: invalid JSON, or an integer longer than Python converts.
            raise ManifestError(f"{path}: not valid JSON ({type(err).__name__})") from None
        return cls.from_dict(data)


def _input(inp: Mapping[str, Any]) -> InputSpec:
    spec = InputSpec(
        channels=_get(inp, "channels", int, "input."),
        height=_get(inp, "height", int, "input."),
        width=_get(inp, "width", int, "input."),
        dtype=_get(inp, "dtype", str, "input."),
    )
    if not 1 <= spec.channels <= MAX_INPUT_CHANNELS:
        raise ManifestError(f"manifest field 'input.channels' must be 1..{MAX_INPUT_CHANNELS}")
    if not (1 <= spec.height <= MAX_INPUT_SIDE and 1 <= spec.width <= MAX_INPUT_SIDE):
        raise ManifestError(f"manifest fields 'input.height/width' must be 1..{MAX_INPUT_SIDE}")
    if spec.dtype not in INPUT_DTYPES:
        raise ManifestError(f"manifest field 'input.dtype' must be one of {sorted(INPUT_DTYPES)}")
    return spec


def _normalisation(norm: Mapping[str, Any], channels: int) -> Normalisation:
    mean = tuple(_floats(_get(norm, "mean", list, "normalisation."), "mean"))
    std = tuple(_floats(_get(norm, "std", list, "normalisation."), "std"))
    if len(mean) != channels or len(std) != channels:
        raise ManifestError(f"manifest field 'normalisation' needs one mean and one std per "
                            f"input channel ({channels})")
    if not all(math.isfinite(v) for v in (*mean, *std)):
        raise ManifestError("manifest field 'normalisation' holds a non-finite value")
    if any(v <= 0 for v in std):
        raise ManifestError("manifest field 'normalisation.std' must be positive")
    return Normalisation(mean, std)


def _class_names(raw: Sequence[Any]) -> tuple[str, ...]:
    if not raw or len(raw) > MAX_CLASSES:
        raise ManifestError(f"manifest field 'class_names' must list 1..{MAX_CLASSES} names")
    if not all(isinstance(c, str) and len(c) <= MAX_CLASS_NAME for c in raw):
        raise ManifestError(f"manifest field 'class_names' must hold strings of at most "
                            f"{MAX_CLASS_NAME} characters")
    return tuple(raw)


def _weights_file(name: str) -> str:
    if not WEIGHTS_FILE.fullmatch(name) or name in (".", "..") or ".." in name:
        raise ManifestError(f"manifest field 'weights.file' must be a plain file name inside "
                            f"the bundle, not {name[:80]!r}")
    return name


def _dtypes(raw: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and v in SAFETENSORS_DTYPES for k, v in raw.items()):
        raise ManifestError("manifest field 'weights.dtypes' must map tensor names to "
                            "safetensors dtypes")
    if set(raw) != set(shapes):
        raise ManifestError("manifest field 'weights.dtypes' must name exactly the tensors of "
                            "'weights.tensors'")
    return dict(raw)


def _get(data: Mapping[str, Any], key: str, kind: type[T], where: str) -> T:
    if key not in data:
        raise ManifestError(f"manifest field '{where}{key}' is missing")
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ManifestError(f"manifest field '{where}{key}' is out of range") from None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"manifest field '{where}{key}' must be {kind.__name__}")
    if kind is float and not math.isfinite(value):  # type: ignore[arg-type]
        raise ManifestError(f"manifest field '{where}{key}' must be finite")
    return value


def _opt_float(data: Mapping[str, Any], key: str, where: str) -> float | None:
    if data.get(key) is None:
        return None
    return _get(data, key, float, where)


def _floats(values: Sequence[Any], where: str) -> list[float]:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ManifestError(f"manifest field 'normalisation.{where}' must be a list of numbers")
    try:
        return [float(v) for v in values]
    except OverflowError:  # an integer too large for a float
        raise ManifestError(f"manifest field 'normalisation.{where}' holds a non-finite "
                            "value") from None


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_DIM for v in value):
        raise ManifestError(f"manifest field '{where[:120]}' must be a list of at most "
                            f"{MAX_RANK} sizes")
    return tuple(value)


def _level(raw: Any, where: str) -> LevelInfo:
    if not isinstance(raw, dict):
        raise ManifestError(f"manifest field '{where}' must be an object")
    w = f"{where}."
    widths = _get(raw, "widths", dict, w)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in widths.values()):
        raise ManifestError(f"manifest field '{w}widths' must map slots to positive integers")
    name = _get(raw, "name", str, w)
    if not LEVEL_NAME.fullmatch(name):
        raise ManifestError(f"manifest field '{w}name' must be 1-64 letters, digits, '.', '_' "
                            f"or '-', not {name[:80]!r}")
    return LevelInfo(
        name=name,
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
