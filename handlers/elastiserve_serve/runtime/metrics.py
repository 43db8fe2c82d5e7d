"""The metrics seam: what the runtime reports, independent of where it is exported.

The runtime calls three methods; the TorchServe adapter forwards them to TorchServe's metrics
cache (so they appear on its Prometheus endpoint), tests use :class:`RecordingMetrics`, and a
different host runtime can plug in prometheus-client directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class MetricsSink(Protocol):
    def request_served(self, level: str, seconds: float) -> None:
        """One request answered by ``level``; ``seconds`` from decode start to its result."""

    def request_rejected(self, status: int) -> None:
        """One request refused with an HTTP ``status`` before reaching a model."""

    def active_level(self, level: str, index: int) -> None:
        """The level the control path currently selects (``index`` 0 is the narrowest)."""


class NullMetrics:
    """Discards everything (the default when nobody is listening)."""

    def request_served(self, level: str, seconds: float) -> None:
        pass

    def request_rejected(self, status: int) -> None:
        pass

    def active_level(self, level: str, index: int) -> None:
        pass


@dataclass
class RecordingMetrics:
    """Keeps every call, for tests and for the in-process benchmark."""

    served: list[tuple[str, float]] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    active: list[tuple[str, int]] = field(default_factory=list)

    def request_served(self, level: str, seconds: float) -> None:
        self.served.append((level, seconds))

    def request_rejected(self, status: int) -> None:
        self.rejected.append(status)

    def active_level(self, level: str, index: int) -> None:
        self.active.append((level, index))
