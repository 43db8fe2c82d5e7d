"""The memory the policy carries from one evaluation to the next.

The policy is a pure function, so whatever it needs to remember (recent latency samples,
recent recommendations, when the level last changed) travels in a ``PolicyState`` that the
caller stores and hands back. The operator keeps it in ``status.policyState`` (see
``to_dict``/``from_dict``) so that a restart or a leader change keeps the windows: losing
them would either widen too early or forget a breach in progress.

All times are epoch seconds supplied by the caller; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["PolicyState", "Recommendation", "Sample"]

_STATE_VERSION = 1
_MAX_ENTRIES = 4096
"""Hard cap per window: a safety net if a caller evaluates far more often than configured."""


@dataclass(frozen=True)
class Sample:
    """One clean latency reading (taken after the last switch settled)."""

    at: float
    p95_s: float
    rate_rps: float


@dataclass(frozen=True)
class Recommendation:
    """The widest level judged safe at ``at``; widening takes the minimum over a window."""

    at: float
    level: int


@dataclass(frozen=True)
class PolicyState:
    """Windows and timestamps; replace, never mutate (every method returns a new state)."""

    level: int
    started_at: float
    last_change_at: float | None = None
    settle_until: float | None = None
    samples: tuple[Sample, ...] = ()
    recommendations: tuple[Recommendation, ...] = ()

    @classmethod
    def initial(cls, level: int, now: float) -> PolicyState:
        """State for a model that has just started at ``level``.

        The recommendation history is seeded with ``level`` so that widening waits a full
        stabilisation window after start, as it would after a narrowing: a fresh operator
        has no evidence that a wider level is safe.
        """
        return cls(level=level, started_at=now, recommendations=(Recommendation(now, level),))

    def with_sample(self, sample: Sample, horizon_s: float, now: float) -> PolicyState:
        """Append ``sample`` (unless already seen) and drop those older than the horizon."""
        kept = [s for s in self.samples if s.at >= now - horizon_s and s.at != sample.at]
        kept.append(sample)
        kept.sort(key=lambda s: s.at)
        return replace(self, samples=tuple(kept[-_MAX_ENTRIES:]))

    def with_recommendation(self, level: int, window_s: float, now: float) -> PolicyState:
        """Record a recommendation at ``now`` and drop those older than ``window_s``."""
        kept = [r for r in self.recommendations if r.at >= now - window_s]
        kept.append(Recommendation(now, level))
        return replace(self, recommendations=tuple(kept[-_MAX_ENTRIES:]))

    def switched_to(self, level: int, now: float, settle_until: float | None = None) -> PolicyState:
        """The level changed: old samples describe the old level, so they are dropped.

        ``settle_until`` (set after a narrowing) marks readings taken before it as still
        showing the slower level.
        """
        return replace(self, level=level, last_change_at=now, settle_until=settle_until, samples=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for ``status.policyState``."""
        return {
            "version": _STATE_VERSION,
            "level": self.level,
            "startedAt": self.started_at,
            "lastChangeAt": self.last_change_at,
            "settleUntil": self.settle_until,
            "samples": [[s.at, s.p95_s, s.rate_rps] for s in self.samples],
            "recommendations": [[r.at, r.level] for r in self.recommendations],
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PolicyState:
        """Inverse of ``to_dict``; raises ``ValueError`` on an unknown version or shape.

        The caller should then start from ``PolicyState.initial`` at the status's
        ``activeLevel``: a lost window only delays the next widening.
        """
        if raw.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported policy state version {raw.get('version')!r}")
        try:
            last = raw.get("lastChangeAt")
            settle = raw.get("settleUntil")
            return cls(
                level=int(raw["level"]),
                started_at=float(raw["startedAt"]),
                last_change_at=float(last) if last is not None else None,
                settle_until=float(settle) if settle is not None else None,
                samples=tuple(
                    Sample(float(a), float(p), float(r)) for a, p, r in raw.get("samples", [])
                ),
                recommendations=tuple(
                    Recommendation(float(a), int(lv)) for a, lv in raw.get("recommendations", [])
                ),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed policy state: {error}") from error
