"""Where a batch's time goes inside the worker: decode, forward, postprocess.

Why: a request's end-to-end time is frontend + queue + transport + these three + response; the
frontend and queue show in TorchServe's own counters, these do not. The serving benchmark
divides them by the batches and requests TorchServe counted to say which part is the model.

Exported as running totals (``elastiserve_stage_seconds_total{Stage}``) flushed at most once
per ``interval_s``: every metric emission is a log line the frontend parses, so one per stage
per batch would itself become a visible stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("decode", "forward", "postprocess")


@dataclass
class StageTimes:
    """Seconds per stage since start (``totals``) and not yet flushed (``pending``)."""

    interval_s: float = 1.0
    totals: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    pending: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    batches: int = 0
    pending_batches: int = 0
    _last_flush: float | None = None

    def batch_done(self) -> None:
        self.batches += 1
        self.pending_batches += 1

    def take_batches(self) -> int:
        """Batches finished since the last call (reported with each flush)."""
        count, self.pending_batches = self.pending_batches, 0
        return count

    def add(self, stage: str, seconds: float) -> None:
        self.totals[stage] += seconds
        self.pending[stage] += seconds

    def due(self, now: float) -> dict[str, float]:
        """The pending seconds per stage when a flush is due at ``now`` (then cleared), else
        an empty mapping. The first call only starts the interval."""
        if self._last_flush is None:
            self._last_flush = now
        if now - self._last_flush < self.interval_s:
            return {}
        self._last_flush = now
        out = {k: v for k, v in self.pending.items() if v > 0.0}
        self.pending = dict.fromkeys(STAGES, 0.0)
        return out
