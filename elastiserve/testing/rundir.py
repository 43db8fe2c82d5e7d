"""Ownership of a run directory, and what to do with one a crashed run left behind.

A run directory holds etcd's data, the PKI, the kubeconfig and one log per component. While a
control plane runs, ``controlplane.json`` in it records the harness's pid and every child's pid
(with start times, so a recycled pid is not mistaken for ours). A clean stop removes that file.

Policy when the file is still there at the next start (documented in the module so the choice
is visible):

* its owner, or any recorded child, is still alive -> refuse, naming the pids: two control
  planes must never share an etcd data directory, and the harness will not kill processes it
  did not start in this run;
* everything recorded is dead (a crash, a SIGKILLed test runner) -> refuse by default with the
  command that clears it, because etcd would otherwise resurrect the crashed run's objects into
  the new one; ``clean_stale=True`` (``up --clean`` on the command line) wipes it instead.

A clean stop leaves ``controlplane.stopped`` instead. A directory holding that marker is
reused after the files the harness generated are removed, so a rerun starts from an empty
cluster; an empty or missing directory is simply used. Any other non-empty directory is
refused rather than cleared: ``--run-dir .`` must never delete someone's ``logs/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from elastiserve.testing.errors import StaleRunDirError

STATE_FILE = "controlplane.json"
STOPPED_MARKER = "controlplane.stopped"
# Everything the harness generates in a run directory; nothing else there is ever deleted.
GENERATED = (
    "etcd", "pki", "logs", "kubeconfig", "kwok.yaml", "apiserver", "kcm", "scheduler",
    "node",  # a real node's state (elastiserve.testing.realnode), swept before it is removed
)


@dataclass(frozen=True)
class RecordedProcess:
    name: str
    pid: int
    create_time: float

    def alive(self) -> bool:
        """True if this exact process (same pid and start time) is still running."""
        try:
            proc = psutil.Process(self.pid)
            return bool(
                abs(proc.create_time() - self.create_time) < 1.0
                and proc.status() != psutil.STATUS_ZOMBIE
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False


def _record(name: str, pid: int) -> RecordedProcess:
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        created = 0.0
    return RecordedProcess(name=name, pid=pid, create_time=created)


class RunDir:
    """The claimed run directory of one control plane."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._owner = _record("harness", os.getpid())
        self._children: list[RecordedProcess] = []

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    @classmethod
    def claim(cls, path: Path, *, clean_stale: bool = False) -> RunDir:
        """Take the directory for a new run, applying the stale-state policy above."""
        path = path.resolve()
        path.mkdir(parents=True, exist_ok=True)
        run_dir = cls(path)
        marker = path / STOPPED_MARKER
        if run_dir.state_file.exists():
            run_dir._handle_leftover_state(clean_stale)
        elif any(path.iterdir()) and not marker.exists():
            raise StaleRunDirError(
                f"run directory {path} is not empty and was not made by the control-plane "
                "harness; give an empty or new directory"
            )
        for name in (*GENERATED, STOPPED_MARKER):
            _remove(path / name)
        run_dir._write()
        return run_dir

    def _handle_leftover_state(self, clean_stale: bool) -> None:
        recorded = _read_state(self.state_file)
        alive = [proc for proc in recorded if proc.alive()]
        if alive:
            listed = ", ".join(f"{proc.name} pid {proc.pid}" for proc in alive)
            raise StaleRunDirError(
                f"run directory {self.path} is in use by live processes ({listed}); "
                "stop that control plane first, or use another run directory"
            )
        if not clean_stale:
            raise StaleRunDirError(
                f"run directory {self.path} holds state from a control plane that did not shut "
                f"down cleanly (recorded in {self.state_file}; none of its processes is still "
                f"running). Remove it with `rm -rf {self.path}`, or pass clean_stale=True "
                "(`python -m elastiserve.testing.controlplane up --clean`) to wipe it"
            )
        self.state_file.unlink()

    def add(self, name: str, pid: int) -> None:
        """Record a started child so that a later run can tell whether it is still alive."""
        self._children.append(_record(name, pid))
        self._write()

    def release(self) -> None:
        """Mark the run as cleanly stopped (all its processes are gone)."""
        (self.path / STOPPED_MARKER).touch()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def _write(self) -> None:
        state: dict[str, Any] = {
            "processes": [
                {"name": p.name, "pid": p.pid, "create_time": p.create_time}
                for p in (self._owner, *self._children)
            ]
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(self.state_file)


def _read_state(path: Path) -> list[RecordedProcess]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [
            RecordedProcess(str(p["name"]), int(p["pid"]), float(p["create_time"]))
            for p in data.get("processes", [])
        ]
    except (OSError, ValueError, KeyError, TypeError):
        # Unreadable state is still evidence of a run that did not finish cleanly.
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
