"""The in-pod level agent: copy the decided level from a source into the control file.

It runs as a sidecar next to TorchServe and is the only container that talks to the Kubernetes
API (read-only, one object); TorchServe's workers only read the file it writes on the shared
``emptyDir``. The source is pluggable: the ``ElasticModel`` status (through a watch, the
operator's side), a ConfigMap, or a plain callable in local mode and tests. When the source
fails, the agent keeps the file as it is, so replicas keep serving the last level.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .runtime.control import ControlState, read_control_file, write_control_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """What the source says should be served: a level index (0 = narrowest) or a level name.

    With ``floor`` and ``objective_ms`` the level is a ceiling: each worker picks per batch
    within ``[floor, level]`` against the objective (``runtime.batch_level``)."""

    level: int | str
    allow_pin: bool | None = None
    floor: int | str | None = None
    objective_ms: float | None = None


class LevelSource(Protocol):
    def current(self) -> Decision | None:
        """The decided level now; ``None`` when unknown (the file is then left alone)."""


@dataclass(frozen=True)
class CallableSource:
    """Adapts any function (a CR status reader, a policy loop) to :class:`LevelSource`."""

    fn: Callable[[], Decision | None]

    def current(self) -> Decision | None:
        return self.fn()


class LevelAgent:
    """Writes the control file whenever the source's decision changes."""

    def __init__(self, source: LevelSource, path: Path) -> None:
        self.source = source
        self.path = path
        existing = _safe_read(path)
        self._last: ControlState | None = existing

    def sync_once(self) -> ControlState | None:
        """Poll the source once; write if the decision differs. Returns the file's state."""
        try:
            decision = self.source.current()
        except Exception:  # a broken source must never change what is served
            log.exception("level source failed; keeping %s", self._last)
            return self._last
        if decision is None:
            return self._last
        last = self._last
        if last is not None and (last.level, last.allow_pin, last.floor, last.objective_ms) == (
            decision.level, decision.allow_pin, decision.floor, decision.objective_ms
        ):
            return last
        state = ControlState(
            decision.level, (last.generation + 1) if last else 1, decision.allow_pin,
            decision.floor, decision.objective_ms,
        )
        write_control_file(self.path, state)
        self._last = state
        log.info("control file %s: level %s (generation %d)", self.path, state.level,
                 state.generation)
        return state

    def run(self, stop: threading.Event, interval_s: float = 0.2) -> None:
        """Poll until ``stop`` is set (a watch-based source can make ``current`` block)."""
        while not stop.is_set():
            self.sync_once()
            stop.wait(interval_s)


def set_level(path: Path, level: int | str, allow_pin: bool | None = None) -> ControlState:
    """One-shot write with the next generation (``elastiserve level set``).

    ``level`` is an index or a name; the serving runtime resolves it against its own levels.
    """
    last = _safe_read(path)
    state = ControlState(level, (last.generation + 1) if last else 1, allow_pin)
    write_control_file(path, state)
    return state


def _safe_read(path: Path) -> ControlState | None:
    try:
        return read_control_file(path)
    except ValueError:
        return None
