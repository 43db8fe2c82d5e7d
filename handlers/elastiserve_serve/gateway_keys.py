"""The gateway's inference key: read from a file, re-read when the file changes, checked in
constant time.

Why a file: in a pod the key is a Kubernetes Secret mounted as a volume, shared by every replica
of one ``ElasticModel`` (TorchServe can only generate a random key per server, so replicas behind
one Service could never share its keys). When the Secret changes, the kubelet writes the new
files into a fresh directory and swaps the ``..data`` symlink, so the path's target gets a new
inode: one ``stat`` per request notices a rotation without a restart, the same way the runtime
follows its control file. A key that cannot be read (deleted, emptied) refuses every request:
revoking a key must never leave the old one working.
"""

from __future__ import annotations

import hmac
import os
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KeyFile", "KeyFileError", "Verdict", "check_bearer"]

MAX_KEY_BYTES = 4096


class KeyFileError(ValueError):
    """The key file is missing, unreadable, too large or empty."""


@dataclass(frozen=True)
class Verdict:
    """Whether a request may pass, and why not (for the 401 body; never names the key)."""

    allowed: bool
    reason: str = ""


def check_bearer(header: str | None, key: bytes | None) -> Verdict:
    """Judge an ``Authorization`` header against ``key`` (``None``: no usable key).

    The comparison is ``hmac.compare_digest`` so that the time taken does not tell how many
    leading bytes of a guess were right.
    """
    if key is None:
        return Verdict(False, "no inference key is configured on this server")
    if not header:
        return Verdict(False, "missing Authorization: Bearer <key>")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return Verdict(False, "Authorization must be 'Bearer <key>'")
    try:
        offered = token.strip().encode("utf-8")
    except UnicodeEncodeError:  # a header byte that decoded to a lone surrogate
        return Verdict(False, "invalid inference key")
    if not hmac.compare_digest(offered, key):
        return Verdict(False, "invalid inference key")
    return Verdict(True)


def _read_key(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_KEY_BYTES + 1)
    except OSError as error:
        raise KeyFileError(f"{path}: {error.strerror or error}") from error
    if len(data) > MAX_KEY_BYTES:
        raise KeyFileError(f"{path}: larger than {MAX_KEY_BYTES} bytes")
    key = data.strip()
    if not key:
        raise KeyFileError(f"{path}: empty")
    return key


class KeyFile:
    """The current key of ``path``; :meth:`current` costs one ``stat`` unless it changed.

    The file's identity is (device, inode, size, mtime): a Secret update or an atomic rename
    always yields a new inode, an edit in place a new mtime or size.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int, int] | None = None
        self._key: bytes | None = None

    def load(self) -> bytes:
        """Read the key now; raises :class:`KeyFileError` (used at start, to fail early)."""
        key = _read_key(self.path)
        with self._lock:
            self._seen, self._key = self._identity(), key
        return key

    def _identity(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> bytes | None:
        """The key as the file holds it now; ``None`` when it cannot be read."""
        identity = self._identity()
        with self._lock:
            if identity is not None and identity == self._seen:
                return self._key
        try:
            key: bytes | None = _read_key(self.path)
        except KeyFileError:
            key = None
        with self._lock:
            self._seen, self._key = identity, key
        return key
