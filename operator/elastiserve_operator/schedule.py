"""When a model's next policy evaluation is due: a fixed grid, not "interval after the last".

Each model's loop used to sleep one interval *after* its evaluation ended, so every round
slipped by the evaluation's own duration (and by whatever the event loop was busy with):
with 1,000 models on one loop the slip adds up and a 5 s interval becomes 5.x s. Here the
rounds sit on a grid (``first + k * interval``) and how late each one starts against its
due time is what the operator reports (``elastiserve_operator_evaluation_lag_seconds``).

A loop that fell a whole interval or more behind does not run the missed rounds back to back
(a burst of queries that would answer the same question): it moves to the latest grid point
that has passed, runs once, and counts the rounds it skipped. Pure: times in, times out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Slot", "next_slot"]


@dataclass(frozen=True)
class Slot:
    """The next evaluation: when it is due, and how many due times were skipped to get
    there (each a round that would have started a whole interval or more late)."""

    due: float
    skipped: int = 0


def next_slot(due: float, interval_s: float, now: float) -> Slot:
    """The round after the one due at ``due``, seen at ``now`` (after it ran).

    One interval on, unless that is already a whole interval in the past: then the latest
    grid point not after ``now`` (it runs at once, less than an interval late). A
    non-positive interval is refused (the CRD's minimum is 1 s).
    """
    if not interval_s > 0:
        raise ValueError(f"interval must be > 0 s, got {interval_s}")
    following = due + interval_s
    behind = now - following
    if behind < interval_s:
        return Slot(following)
    skipped = math.floor(behind / interval_s)
    return Slot(following + skipped * interval_s, skipped)
