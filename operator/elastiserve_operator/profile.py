"""Per-level performance profile: what each nested level costs and what it is worth.

The predictive policy needs, for every level, how fast one request is served and how many
requests per second a replica sustains. The numbers come from the bundle manifest written
by ``elastiserve_store`` (measured at archive time) or from ``spec.model.profile`` in the CR,
which overrides the manifest (the operator cannot open the ``.mar``; the CR is where a user
or CI puts the measured profile).

A profile may give the batch-1 service time, the saturation capacity, or both. One is
enough: with ``c`` workers, ``capacity = c / service_time`` and vice versa. Both together
describe batching (capacity above ``c / service_time``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .spec import ProfileEntry

__all__ = ["LevelProfile", "profile_from_manifest", "profile_from_spec"]


@dataclass(frozen=True)
class LevelProfile:
    """Measured numbers of one level (index = position in the profile, narrowest first)."""

    name: str
    service_time_s: float | None = None
    capacity_rps: float | None = None
    accuracy: float | None = None
    macs: int | None = None

    def __post_init__(self) -> None:
        if not (self.service_time_s or self.capacity_rps):
            raise ValueError(f"level {self.name!r}: needs service_time_s or capacity_rps > 0")
        for label, value in (
            ("service_time_s", self.service_time_s),
            ("capacity_rps", self.capacity_rps),
        ):
            if value is not None and value <= 0.0:
                raise ValueError(f"level {self.name!r}: {label} must be > 0")

    def service_and_capacity(self, workers: int) -> tuple[float, float]:
        """``(service_time_s, capacity_rps)`` for a replica with ``workers`` servers."""
        if self.service_time_s and self.capacity_rps:
            return self.service_time_s, self.capacity_rps
        if self.service_time_s:
            return self.service_time_s, workers / self.service_time_s
        assert self.capacity_rps
        return workers / self.capacity_rps, self.capacity_rps


def profile_from_spec(entries: Sequence[ProfileEntry]) -> tuple[LevelProfile, ...]:
    """The CR's ``spec.model.profile`` (milliseconds) as ``LevelProfile`` (seconds)."""
    return tuple(
        LevelProfile(
            name=e.name,
            service_time_s=e.service_time_ms / 1000.0 if e.service_time_ms else None,
            capacity_rps=e.capacity_rps,
            accuracy=e.accuracy,
            macs=e.macs,
        )
        for e in entries
    )


def _first(entry: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if entry.get(key) is not None:
            return entry[key]
    return None


def profile_from_manifest(manifest: Mapping[str, Any]) -> tuple[LevelProfile, ...]:
    """Read the ``levels`` list of a bundle manifest, narrowest first.

    Accepted keys per level (the manifest is owned by ``elastiserve_store``; both spellings
    are read until its format settles): ``name``; the batch-1 latency as ``service_time_s``,
    ``latency_ms_b1`` (what ``elastiserve_store.manifest.LevelInfo`` writes) or
    ``latency_ms``; ``capacity_rps`` or ``throughput_rps``; ``accuracy`` (fraction, or
    percent if above 1); ``macs``. Levels are sorted by ``index`` when present.
    """
    levels = manifest.get("levels")
    if not isinstance(levels, list) or not levels:
        raise ValueError("manifest has no 'levels' list")
    ordered = sorted(enumerate(levels), key=lambda item: (item[1].get("index", item[0]), item[0]))
    profile = []
    for position, (_, entry) in enumerate(ordered):
        service = _first(entry, "service_time_s")
        if service is None and (ms := _first(entry, "latency_ms_b1", "latency_ms")) is not None:
            service = float(ms) / 1000.0
        accuracy = _first(entry, "accuracy")
        if accuracy is not None and accuracy > 1.0:
            accuracy = accuracy / 100.0
        macs = _first(entry, "macs")
        profile.append(
            LevelProfile(
                name=str(_first(entry, "name") or f"level-{position}"),
                service_time_s=float(service) if service is not None else None,
                capacity_rps=_as_float(_first(entry, "capacity_rps", "throughput_rps")),
                accuracy=float(accuracy) if accuracy is not None else None,
                macs=int(macs) if macs is not None else None,
            )
        )
    return tuple(profile)


def _as_float(value: Any) -> float | None:
    return float(value) if value is not None else None
