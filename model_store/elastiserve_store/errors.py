"""One exception class per way a bundle can be refused.

Callers (the serving handler, the archiver) can tell a corrupted download from a bundle written
by a newer release from someone dropping a pickle in place of the weights, and report each
precisely. All are raised before any weight tensor is read.
"""

from __future__ import annotations


class BundleError(Exception):
    """Base class: the bundle at a path cannot be used."""


class ManifestError(BundleError):
    """``manifest.json`` is missing, not JSON, or lacks / mistypes a field."""


class UnknownSchemaVersionError(ManifestError):
    """The manifest's ``schema_version`` is one this loader does not understand."""


class WeightsMissingError(BundleError):
    """The weights file named by the manifest does not exist."""


class UnsafeWeightsPathError(BundleError):
    """The weights path is a symbolic link or not a regular file (the manifest may only name a
    plain file inside the bundle)."""


class PickleWeightsError(BundleError):
    """The weights are a pickle / ``torch.save`` archive: refused, loading one runs code."""


class CorruptWeightsError(BundleError):
    """The weights file is not a well-formed safetensors file."""


class TruncatedWeightsError(CorruptWeightsError):
    """The safetensors file is shorter than its header says, or its header is cut off."""


class ChecksumMismatchError(BundleError):
    """The weights' SHA-256 differs from the manifest's."""


class ShapeMismatchError(BundleError):
    """Tensor names or shapes in the weights disagree with the manifest / architecture."""
