"""Read a small file that someone else may have replaced with something hostile.

Why: the control file lives on a volume another container writes, and the serving process reads
it on every batch. Whoever can write there could put a symbolic link (to ``/dev/zero``, to a
file of the worker's it should not see), a FIFO (``open`` would block the worker forever) or a
huge file in its place. So the file is opened without following a final link
(``O_NOFOLLOW``) and without blocking (``O_NONBLOCK``), ``fstat`` must show a regular file, and
at most ``limit`` bytes are read. Stdlib only: the level agent and the probes use it too.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["UnsafeFileError", "read_small_file"]

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class UnsafeFileError(ValueError):
    """The path is a link, not a regular file, or larger than allowed."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``; raises :class:`UnsafeFileError` for a link, a non-regular file or
    more than ``limit`` bytes, ``FileNotFoundError`` when absent, ``OSError`` otherwise."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeFileError(f"{path} is a symbolic link (not followed)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{path} is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise UnsafeFileError(f"{path} is larger than {limit} bytes")
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:  # grew after fstat
            raise UnsafeFileError(f"{path} is larger than {limit} bytes")
        return data
    finally:
        os.close(fd)
