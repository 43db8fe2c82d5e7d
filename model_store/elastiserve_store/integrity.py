"""Checks on a weights file that run before any tensor is read.

The order matters: a pickle is refused by its name or magic bytes (never handed to a parser
that might execute it), a cut-off file by comparing its size with its own header (so the error
says *truncated* rather than just *checksum mismatch*), then the SHA-256 against the manifest.
Only the small JSON header of the safetensors file is parsed here; tensor data is not touched.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import (
    ChecksumMismatchError,
    CorruptWeightsError,
    PickleWeightsError,
    TruncatedWeightsError,
    WeightsMissingError,
)

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar"})
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorHeader:
    """One entry of a safetensors header."""

    dtype: str
    shape: tuple[int, ...]


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _looks_like_pickle(head: bytes) -> bool:
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip container holds a pickle
        return True
    # Pickle protocol 2+ starts with PROTO (0x80) and the version; a safetensors file whose
    # header length happens to start with those bytes is told apart by its JSON header.
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[8:9] != b"{"


def refuse_pickle(path: Path) -> None:
    """Raise :class:`PickleWeightsError` if ``path`` is (named like) a pickle."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise PickleWeightsError(
            f"{path}: '{path.suffix}' is a pickle-based format; bundles carry weights only as "
            f"safetensors (loading a pickle can run arbitrary code)")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if _looks_like_pickle(head):
        raise PickleWeightsError(
            f"{path}: content is a pickle / torch.save archive, not safetensors; refused "
            f"(loading a pickle can run arbitrary code)")


def read_header(path: Path) -> dict[str, TensorHeader]:
    """Parse the safetensors header and check the file is as long as the header says."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw_len = fh.read(8)
        if len(raw_len) < 8:
            raise TruncatedWeightsError(f"{path}: {size} bytes, too short for a safetensors file")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > _MAX_HEADER:
            raise CorruptWeightsError(f"{path}: header length {header_len} is implausible")
        if 8 + header_len > size:
            raise TruncatedWeightsError(
                f"{path}: truncated inside the header ({size} bytes, header needs "
                f"{8 + header_len})")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptWeightsError(f"{path}: safetensors header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{path}: safetensors header is not an object")
    out: dict[str, TensorHeader] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
            out[name] = TensorHeader(str(entry["dtype"]), tuple(int(s) for s in entry["shape"]))
        except (KeyError, TypeError, ValueError):
            raise CorruptWeightsError(f"{path}: bad header entry for {name!r}") from None
        if begin > end:
            raise CorruptWeightsError(f"{path}: bad data offsets for {name!r}")
        data_end = max(data_end, end)
    if 8 + header_len + data_end > size:
        raise TruncatedWeightsError(
            f"{path}: truncated: header promises {8 + header_len + data_end} bytes, file has "
            f"{size}")
    return out


def verify_weights(path: Path, expected_sha256: str) -> dict[str, TensorHeader]:
    """All pre-read checks in order; returns the header for the shape checks that follow."""
    if not path.is_file():
        raise WeightsMissingError(f"{path}: weights file not found")
    refuse_pickle(path)
    header = read_header(path)
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise ChecksumMismatchError(
            f"{path}: SHA-256 {actual} does not match the manifest's {expected_sha256}")
    return header
