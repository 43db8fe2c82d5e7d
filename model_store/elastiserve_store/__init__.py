"""elastiserve_store: nested model architectures, the bundle format and its verified loader.

Depends on torch, safetensors and numpy only (never on training code or Torch-Pruning), so the
serving image can load bundles without the training stack.
"""

from .architectures import ARCHITECTURES, BlockSkipError, build, full_widths
from .bundle import NestedBundle, load_bundle, write_bundle, write_manifest
from .errors import (
    BundleError,
    ChecksumMismatchError,
    CorruptWeightsError,
    ManifestError,
    PickleWeightsError,
    ShapeMismatchError,
    TruncatedWeightsError,
    UnknownSchemaVersionError,
    UnsafeWeightsPathError,
    WeightsMissingError,
)
from .manifest import (
    DEPTH_SCHEMA_VERSION,
    SCHEMA_VERSION,
    InputSpec,
    LevelInfo,
    Manifest,
    Normalisation,
    SkippedBlocksError,
)

__all__ = [
    "ARCHITECTURES",
    "DEPTH_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "BlockSkipError",
    "BundleError",
    "ChecksumMismatchError",
    "CorruptWeightsError",
    "InputSpec",
    "LevelInfo",
    "Manifest",
    "ManifestError",
    "NestedBundle",
    "Normalisation",
    "PickleWeightsError",
    "ShapeMismatchError",
    "SkippedBlocksError",
    "TruncatedWeightsError",
    "UnknownSchemaVersionError",
    "UnsafeWeightsPathError",
    "WeightsMissingError",
    "build",
    "full_widths",
    "load_bundle",
    "write_bundle",
    "write_manifest",
]
