"""The metrics seam: what the runtime reports, independent of where it is exported.

The runtime calls these methods; the TorchServe adapter forwards them to TorchServe's metrics
cache (so they appear on its Prometheus endpoint), tests use :class:`RecordingMetrics`, and a
different host runtime can plug in prometheus-client directly.

Pinned requests are reported with ``pinned=True`` so that an exporter can keep them out of the
latency the operator acts on: a client pinning the widest level while the operator narrowed the
model would otherwise hold the p95 up and keep the model narrow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class MetricsSink(Protocol):
    def request_served(self, level: str, seconds: float, *, pinned: bool = False) -> None:
        """One request answered by ``level``; ``seconds`` from batch start to its result;
        ``pinned`` when the client chose the level (not the controller)."""

    def request_rejected(self, status: int) -> None:
        """One request refused with an HTTP ``status`` before reaching a model."""

    def active_level(self, level: str, index: int) -> None:
        """The level the control path currently selects (``index`` 0 is the narrowest)."""

    def control_problem(self, kind: str) -> None:
        """The control file could not be followed (``missing``, ``unsafe``, ``unreadable``,
        ``invalid``, ``stale``, ``unknown_level``); the level was kept. Once per problem."""

    def control_file_ok(self, ok: bool) -> None:
        """Whether the control file as it is now was taken (reported on change)."""

    def level_memory(self, level: str, nbytes: int) -> None:
        """Device memory one level takes (weights, plus peak activations on CUDA), at load."""

    def stage_seconds(self, stage: str, seconds: float) -> None:
        """Seconds spent in ``stage`` (decode, forward, postprocess) since the last report."""

    def batches_served(self, count: int) -> None:
        """Batches handled since the last report (reported with the stage seconds)."""

    def torch_threads(self, count: int) -> None:
        """The intra-op threads this worker runs (``runtime.cpu_threads``), at load."""

    def batch_size(self, count: int) -> None:
        """The most requests the host hands this worker in one batch (TorchServe's registered
        ``batchSize``: fixed, or planned by ``--batch-size auto``), at load."""


class NullMetrics:
    """Discards everything (the default when nobody is listening)."""

    def request_served(self, level: str, seconds: float, *, pinned: bool = False) -> None:
        pass

    def request_rejected(self, status: int) -> None:
        pass

    def active_level(self, level: str, index: int) -> None:
        pass

    def control_problem(self, kind: str) -> None:
        pass

    def control_file_ok(self, ok: bool) -> None:
        pass

    def level_memory(self, level: str, nbytes: int) -> None:
        pass

    def stage_seconds(self, stage: str, seconds: float) -> None:
        pass

    def batches_served(self, count: int) -> None:
        pass

    def torch_threads(self, count: int) -> None:
        pass

    def batch_size(self, count: int) -> None:
        pass


@dataclass
class RecordingMetrics:
    """Keeps every call, for tests and for the in-process benchmark."""

    served: list[tuple[str, float]] = field(default_factory=list)
    pinned: list[tuple[str, float]] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    active: list[tuple[str, int]] = field(default_factory=list)
    control_problems: list[str] = field(default_factory=list)
    control_ok: list[bool] = field(default_factory=list)
    memory: dict[str, int] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    threads: int | None = None
    batch: int | None = None

    def request_served(self, level: str, seconds: float, *, pinned: bool = False) -> None:
        (self.pinned if pinned else self.served).append((level, seconds))

    def request_rejected(self, status: int) -> None:
        self.rejected.append(status)

    def active_level(self, level: str, index: int) -> None:
        self.active.append((level, index))

    def control_problem(self, kind: str) -> None:
        self.control_problems.append(kind)

    def control_file_ok(self, ok: bool) -> None:
        self.control_ok.append(ok)

    def level_memory(self, level: str, nbytes: int) -> None:
        self.memory[level] = nbytes

    def stage_seconds(self, stage: str, seconds: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + seconds

    def batches_served(self, count: int) -> None:
        self.batches += count

    def torch_threads(self, count: int) -> None:
        self.threads = count

    def batch_size(self, count: int) -> None:
        self.batch = count
