"""Sparse storage for unstructured-pruned weights: the size on disk really shrinks.

A dense safetensors file of a 99 %-sparse network is as large as the unpruned one. Here each
tensor is stored in whichever of three encodings is smallest for its own density:

* ``dense``: the tensor as is (batch norms, biases, anything barely sparse);
* ``indices``: the int32 flat positions of the nonzeros plus their values (best when very
  sparse: 8 bytes per nonzero for float32);
* ``bitmask``: one bit per element (packed little-endian into uint8) plus the nonzero values
  (best at moderate sparsity: numel/8 bytes + 4 per nonzero).

Values keep their dtype, so decoding is exact: the round trip returns the same tensor bit for
bit (a ``-0.0`` comes back as ``+0.0``, which compares equal). The directory holds
``sparse.json`` (schema version, per-tensor shape/dtype/encoding/nonzero count, the weights'
SHA-256, free metadata) and ``sparse.safetensors``. :func:`load_sparse` runs the bundle loader's
checks before it reads a tensor (pickle refused, truncation, SHA-256, every stored part's name,
dtype and shape against the manifest), then checks the decoded positions themselves (in range,
strictly increasing, bit count equal to the manifest's nonzero count). No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import integrity
from .errors import (
    CorruptWeightsError,
    ManifestError,
    ShapeMismatchError,
    UnknownSchemaVersionError,
)

SPARSE_SCHEMA_VERSION = 1
SPARSE_FORMAT = "elastiserve-sparse"
MANIFEST_NAME = "sparse.json"
WEIGHTS_NAME = "sparse.safetensors"
ENCODINGS = ("dense", "indices", "bitmask")

_DTYPES: dict[str, tuple[torch.dtype, str]] = {
    "float32": (torch.float32, "F32"),
    "float16": (torch.float16, "F16"),
    "bfloat16": (torch.bfloat16, "BF16"),
    "float64": (torch.float64, "F64"),
    "int64": (torch.int64, "I64"),
    "int32": (torch.int32, "I32"),
    "uint8": (torch.uint8, "U8"),
}
"""Manifest dtype name -> (torch dtype, safetensors header dtype)."""

_INDEX_LIMIT = 2**31 - 1


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest's name for ``dtype`` (``ValueError`` for one it cannot store)."""
    for name, (value, _) in _DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"dtype {dtype} cannot be stored sparsely")


def payload_bytes(encoding: str, numel: int, nnz: int, itemsize: int) -> int:
    """Bytes of tensor data one encoding needs (headers excluded): a pure cost model."""
    if encoding == "dense":
        return numel * itemsize
    if encoding == "indices":
        return nnz * (4 + itemsize)
    if encoding == "bitmask":
        return math.ceil(numel / 8) + nnz * itemsize
    raise ValueError(f"unknown encoding {encoding!r}; choose from {', '.join(ENCODINGS)}")


def choose_encoding(numel: int, nnz: int, itemsize: int) -> str:
    """The smallest encoding for a tensor of ``numel`` elements with ``nnz`` nonzeros."""
    usable = [e for e in ENCODINGS if e != "indices" or numel <= _INDEX_LIMIT]
    return min(usable, key=lambda e: payload_bytes(e, numel, nnz, itemsize))


def _parts(name: str, encoding: str) -> tuple[str, ...]:
    if encoding == "dense":
        return (f"{name}::dense",)
    return (f"{name}::values", f"{name}::{encoding}")


def encode(name: str, tensor: torch.Tensor) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """One tensor's manifest entry and the stored parts (named ``<name>::<part>``)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    nonzero = flat != 0
    nnz = int(nonzero.sum())
    encoding = choose_encoding(flat.numel(), nnz, flat.element_size())
    entry = {"shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype),
             "encoding": encoding, "nnz": nnz}
    if encoding == "dense":
        return entry, {f"{name}::dense": flat.reshape(tensor.shape).clone()}
    values = flat[nonzero].clone()
    if encoding == "indices":
        where = torch.nonzero(nonzero).flatten().to(torch.int32)
        return entry, {f"{name}::values": values, f"{name}::indices": where}
    bits = np.packbits(nonzero.numpy(), bitorder="little")
    return entry, {f"{name}::values": values, f"{name}::bitmask": torch.from_numpy(bits)}


def decode(entry: Mapping[str, Any], parts: Mapping[str, torch.Tensor], name: str
           ) -> torch.Tensor:
    """Inverse of :func:`encode`; raises :class:`CorruptWeightsError` on bad positions."""
    shape = tuple(int(s) for s in entry["shape"])
    encoding = entry["encoding"]
    if encoding == "dense":
        return parts[f"{name}::dense"].reshape(shape)
    numel = math.prod(shape)
    values = parts[f"{name}::values"]
    out = torch.zeros(numel, dtype=values.dtype)
    if encoding == "indices":
        where = parts[f"{name}::indices"].to(torch.long)
        if len(where) and (int(where.min()) < 0 or int(where.max()) >= numel
                           or bool((where[1:] <= where[:-1]).any())):
            raise CorruptWeightsError(f"{name}: stored positions are out of range or not "
                                      f"strictly increasing")
        out[where] = values
        return out.reshape(shape)
    bits = np.unpackbits(parts[f"{name}::bitmask"].numpy(), bitorder="little")
    if int(bits[numel:].sum()) != 0 or int(bits[:numel].sum()) != len(values):
        raise CorruptWeightsError(f"{name}: bitmask disagrees with the number of stored values")
    mask = torch.from_numpy(bits[:numel].astype(np.bool_))
    out[mask] = values
    return out.reshape(shape)


def _expected_parts(name: str, entry: Mapping[str, Any]
                    ) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Stored part -> (safetensors dtype, shape) that the manifest entry implies."""
    shape = tuple(int(s) for s in entry["shape"])
    header_dtype = _DTYPES[entry["dtype"]][1]
    nnz = int(entry["nnz"])
    if entry["encoding"] == "dense":
        return {f"{name}::dense": (header_dtype, shape)}
    numel = math.prod(shape)
    values = (f"{name}::values", (header_dtype, (nnz,)))
    if entry["encoding"] == "indices":
        return dict([values, (f"{name}::indices", ("I32", (nnz,)))])
    return dict([values, (f"{name}::bitmask", ("U8", (math.ceil(numel / 8),)))])


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_sparse(directory: str | Path, tensors: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, Any] | None = None) -> int:
    """Store ``tensors`` (e.g. a state dict) sparsely; returns the bytes written on disk."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    stored: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if "::" in name:
            raise ValueError(f"tensor name {name!r} must not contain '::'")
        entries[name], parts = encode(name, tensor)
        stored.update(parts)
    weights = directory / WEIGHTS_NAME
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".sparse-", suffix=".tmp")
    os.close(fd)
    save_file(stored, tmp, metadata={"format": SPARSE_FORMAT})
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the artifact from a serving user
    os.replace(tmp, weights)
    manifest = {"format": SPARSE_FORMAT, "schema_version": SPARSE_SCHEMA_VERSION,
                "weights": {"file": WEIGHTS_NAME, "sha256": integrity.sha256_file(weights)},
                "tensors": entries, "metadata": dict(metadata or {})}
    _atomic_write_text(directory / MANIFEST_NAME,
                       json.dumps(manifest, separators=(",", ":")) + "\n")
    return size_on_disk(directory)


def size_on_disk(directory: str | Path) -> int:
    """Bytes of the manifest plus the weights: what storing this artifact costs."""
    directory = Path(directory)
    return sum((directory / n).stat().st_size for n in (MANIFEST_NAME, WEIGHTS_NAME))


@dataclass(frozen=True)
class SparseArtifact:
    """A verified, decoded sparse artifact: dense tensors and the writer's metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    nonzeros: dict[str, int]


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SPARSE_FORMAT:
        raise ManifestError(f"{path}: not an {SPARSE_FORMAT} manifest")
    if manifest.get("schema_version") != SPARSE_SCHEMA_VERSION:
        raise UnknownSchemaVersionError(
            f"{path}: schema_version {manifest.get('schema_version')!r}; this loader reads "
            f"version {SPARSE_SCHEMA_VERSION}")
    try:
        sha = str(manifest["weights"]["sha256"])
        file = str(manifest["weights"]["file"])
        entries = dict(manifest["tensors"])
        for name, entry in entries.items():
            if entry["encoding"] not in ENCODINGS or entry["dtype"] not in _DTYPES:
                raise ManifestError(f"{path}: tensor {name!r} has an unknown encoding or dtype")
            if int(entry["nnz"]) < 0 or any(int(s) < 0 for s in entry["shape"]):
                raise ManifestError(f"{path}: tensor {name!r} has a negative size")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ManifestError(f"{path}: missing or mistyped field ({err})") from None
    if Path(file).name != file:
        raise ManifestError(f"{path}: weights file {file!r} must be a plain file name")
    return {"sha256": sha, "file": file, "tensors": entries,
            "metadata": dict(manifest.get("metadata") or {})}


def load_sparse(directory: str | Path) -> SparseArtifact:
    """Verify and decode an artifact written by :func:`write_sparse`.

    Every file-level refusal (pickle, truncation, SHA-256, names/dtypes/shapes against the
    manifest) is raised before a tensor is read; bad positions are refused while decoding.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    path = directory / manifest["file"]
    header = integrity.verify_weights(path, manifest["sha256"])
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, entry in manifest["tensors"].items():
        expected.update(_expected_parts(name, entry))
    found = {name: (h.dtype, h.shape) for name, h in header.items()}
    if found != expected:
        bad = sorted(n for n in set(found) | set(expected) if found.get(n) != expected.get(n))
        raise ShapeMismatchError(f"{path}: stored parts disagree with the manifest at "
                                 f"{', '.join(bad[:5])}")
    parts = load_file(str(path))
    tensors = {name: decode(entry, parts, name) for name, entry in manifest["tensors"].items()}
    nonzeros = {name: int(entry["nnz"]) for name, entry in manifest["tensors"].items()}
    return SparseArtifact(tensors, manifest["metadata"], nonzeros)


def dense_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of ``tensors`` as one plain safetensors file: a dense level stored alone."""
    with tempfile.TemporaryDirectory(prefix="elastiserve-size-") as tmp:
        path = Path(tmp) / "level.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
        return path.stat().st_size
