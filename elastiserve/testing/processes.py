"""Child processes that are always stopped, and waits that always end.

Each component runs in a process group of its own, so that stopping it also stops anything it
forked, and on Linux it is asked to die with the harness (``PR_SET_PDEATHSIG``): a test runner
killed with SIGKILL then leaves no etcd holding a port behind. Output goes to a log file per
process, whose tail is quoted in every error, because "kube-apiserver exited" alone says nothing.

Linux delivers the parent-death signal when the *thread* that spawned the child ends, so start
the control plane from a thread that lives as long as it does (the main thread, in pytest).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from elastiserve.testing.errors import (
    ControlPlaneError,
    ProcessExitedError,
    ReadinessTimeoutError,
)

_PR_SET_PDEATHSIG = 1
LOG_TAIL_LINES = 25


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: deliver SIGKILL when the harness goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, or a note when it is empty or unreadable."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    kept = text.splitlines()[-lines:]
    if not kept:
        return f"(log {path} is empty)"
    return "\n".join(kept)


@dataclass
class ManagedProcess:
    """One started component: its process, its log, and how to stop it."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in a new session with stdout and stderr appended to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        preexec = _die_with_parent if sys.platform.startswith("linux") else None
        with log_path.open("ab") as log:
            log.write(f"# {name}: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except OSError as exc:
                raise ControlPlaneError(f"{name}: could not execute {argv[0]}: {exc}") from exc
        return cls(name=name, popen=popen, log_path=log_path)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def returncode(self) -> int | None:
        """The exit status once the process has ended, else ``None`` (reaps it if it has)."""
        return self.popen.poll()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return tail(self.log_path, lines)

    def check_alive(self) -> None:
        """Raise with the exit code and the log tail if the process has ended."""
        code = self.returncode()
        if code is not None:
            raise ProcessExitedError(
                f"{self.name} exited with code {code} during start "
                f"(log {self.log_path}):\n{self.log_tail()}",
                name=self.name,
                returncode=code,
            )

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left after ``grace_s``.

        The group is signalled even after the leader has exited, because a forked helper may
        still hold the group (and a port) open; a group with no members is simply skipped.
        """
        pgid = self.popen.pid
        if self.popen.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace_s)
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=grace_s)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_tiers(tiers: Sequence[Sequence[ManagedProcess]], grace_s: float = 5.0) -> None:
    """Stop processes tier by tier: each tier is gone before the next is signalled.

    Order matters for speed, not only tidiness: kube-apiserver exits in about a second while
    etcd is up, but stalls past any sensible grace period (and needs SIGKILL) when etcd goes
    first, so the callers pass clients, then the API server, then etcd. Within a tier every
    process is signalled before any is waited for, so a tier costs at most one grace period.
    """
    for tier in tiers:
        for proc in tier:
            if proc.popen.poll() is None:
                _signal_group(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in tier:
            remaining = max(0.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=remaining)
        for proc in tier:
            proc.stop(grace_s=grace_s)


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout_s: float,
    watch: Sequence[ManagedProcess] = (),
    interval_s: float = 0.1,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``ready`` until it returns true, failing fast if a watched process dies.

    Every wait in the test bed goes through here so that none can hang: the deadline is
    mandatory, and a component that crashes is reported at once rather than after the timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        for proc in watch:
            proc.check_alive()
        if ready():
            return
        if time.monotonic() >= deadline:
            extra = detail() if detail is not None else ""
            logs = "".join(
                f"\n--- {p.name} (log {p.log_path}):\n{p.log_tail()}" for p in watch
            )
            raise ReadinessTimeoutError(
                f"timed out after {timeout_s:.0f}s waiting for {what}{extra}{logs}"
            )
        time.sleep(interval_s)
