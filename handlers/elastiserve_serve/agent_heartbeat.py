"""The level agent's liveness: a file whose modification time is the agent's last sync.

Why a file: the agent's container has no port (nothing should reach it), and an exec probe
that only ``stat``s a file on the shared in-memory volume costs a short Python start, no
network and no credential. The agent sets the file's mtime to the wall-clock time of its last
successful sync with the API server (a list, a watch event or bookmark, a watch window that ran
its full length), so the probe fails when the agent has not synced for too long, whether its
watch thread hangs, the API refuses its token or the network is gone; the kubelet then restarts
the agent, which keeps the control file as it is meanwhile (replicas keep their level).

At start the agent stamps the file with its start time: a new agent has the whole allowance to
make its first sync.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

__all__ = ["DEFAULT_MAX_STALE_S", "Heartbeat", "check_alive", "heartbeat_file_for"]

DEFAULT_MAX_STALE_S = 150.0
"""Two and a half watch windows (60 s each): an idle model is synced at least once a window."""


def heartbeat_file_for(control_file: Path) -> Path:
    """The default heartbeat path: beside the control file, on the same volume."""
    return control_file.with_name("level-agent.alive")


class Heartbeat:
    """``beat(at)`` sets the file's mtime to ``at`` (seconds since the epoch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._last: float | None = None

    def beat(self, at: float) -> None:
        if at == self._last:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        try:
            os.utime(fd, (at, at))
        finally:
            os.close(fd)
        self._last = at


def check_alive(path: Path, max_stale_s: float, now: float | None = None) -> tuple[bool, str]:
    """Whether the heartbeat at ``path`` is at most ``max_stale_s`` old, and why not."""
    now = time.time() if now is None else now
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False, f"no heartbeat at {path}: the agent has not started"
    except OSError as error:
        return False, f"cannot stat {path}: {error.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return False, f"{path} is not a regular file"
    age = now - info.st_mtime
    if age > max_stale_s:
        return False, f"last sync {age:.0f} s ago, more than {max_stale_s:.0f} s"
    return True, f"last sync {max(age, 0.0):.0f} s ago"
