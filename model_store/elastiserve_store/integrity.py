"""Checks on a weights file that run before any tensor is read.

The order matters: a pickle is refused by its name or magic bytes (never handed to a parser
that might execute it), a cut-off file by comparing its size with its own header (so the error
says *truncated* rather than just *checksum mismatch*), then the SHA-256 against the manifest.
Only the small JSON header of the safetensors file is parsed here; tensor data is not touched.

The weights path must be a regular file, not a symbolic link (a bundle is a directory someone
handed over: a link could point the loader at any file of the serving host). The header is
bounded (:data:`MAX_HEADER_BYTES`, :data:`MAX_HEADER_TENSORS`), every entry's dtype must be a
safetensors dtype, and its byte range must be exactly its shape times its element size.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import (
    ChecksumMismatchError,
    CorruptWeightsError,
    PickleWeightsError,
    TruncatedWeightsError,
    UnsafeWeightsPathError,
    WeightsMissingError,
)

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".tar"})
MAX_HEADER_BYTES = 16 * 1024 * 1024
"""A header of a few thousand tensors is a few hundred kB; 16 MiB is generous and bounded."""
MAX_HEADER_TENSORS = 100_000
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
               "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
"""Element size of every safetensors dtype; any other dtype is refused."""


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
        if header_len > MAX_HEADER_BYTES:
            raise CorruptWeightsError(f"{path}: header length {header_len} is implausible "
                                      f"(at most {MAX_HEADER_BYTES})")
        if 8 + header_len > size:
            raise TruncatedWeightsError(
                f"{path}: truncated inside the header ({size} bytes, header needs "
                f"{8 + header_len})")
        raw = fh.read(header_len)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise CorruptWeightsError(f"{path}: safetensors header is not JSON "
                                  f"({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise CorruptWeightsError(f"{path}: safetensors header is not an object")
    if len(header) > MAX_HEADER_TENSORS + 1:
        raise CorruptWeightsError(f"{path}: more than {MAX_HEADER_TENSORS} tensors")
    out: dict[str, TensorHeader] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
            out[name] = TensorHeader(str(entry["dtype"]), tuple(int(s) for s in entry["shape"]))
        except (KeyError, TypeError, ValueError):
            raise CorruptWeightsError(f"{path}: bad header entry for {name[:80]!r}") from None
        if not 0 <= begin <= end:
            raise CorruptWeightsError(f"{path}: bad data offsets for {name[:80]!r}")
        itemsize = DTYPE_BYTES.get(out[name].dtype)
        if itemsize is None:
            raise CorruptWeightsError(f"{path}: unknown dtype {out[name].dtype[:20]!r} for "
                                      f"{name[:80]!r}")
        shape = out[name].shape
        if any(d < 0 for d in shape) or math.prod(shape) * itemsize != end - begin:
            raise CorruptWeightsError(f"{path}: {name[:80]!r} spans {end - begin} bytes, not "
                                      f"its shape times its {out[name].dtype} size")
        data_end = max(data_end, end)
    if 8 + header_len + data_end > size:
        raise TruncatedWeightsError(
            f"{path}: truncated: header promises {8 + header_len + data_end} bytes, file has "
            f"{size}")
    return out


def refuse_link(path: Path) -> None:
    """Raise unless ``path`` itself is a regular file (no link followed, no device or FIFO)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise WeightsMissingError(f"{path}: weights file not found") from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeWeightsPathError(f"{path}: the weights file is a symbolic link; a bundle "
                                     "must hold its weights as a plain file")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeWeightsPathError(f"{path}: the weights file is not a regular file")


def verify_weights(path: Path, expected_sha256: str) -> dict[str, TensorHeader]:
    """All pre-read checks in order; returns the header for the shape checks that follow."""
    refuse_link(path)
    refuse_pickle(path)
    header = read_header(path)
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise ChecksumMismatchError(
            f"{path}: SHA-256 {actual} does not match the manifest's {expected_sha256}")
    return header
