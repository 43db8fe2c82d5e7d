"""The per-batch level choice: the fast loop that absorbs a burst before any metric moves.

The operator's loop reacts as fast as its metrics (Prometheus windows, scrape intervals: seconds
to tens of seconds). A worker knows, for the batch in its hands, how long its oldest request has
already waited and how long each level takes for a batch of this many samples (profiled at load,
:mod:`.service_times`). So before each forward pass it picks the **widest** level whose
predicted completion keeps that oldest request within the objective (SuperServe's SlackFit, per
batch): the slack goes to accuracy when there is slack, to speed when there is none.

Bounds: the choice never leaves ``[floor, ceiling]``; the operator sets the ceiling (its own
decision, the accuracy budget, a node's cap) and the floor (``minLevel``). When no allowed level
fits, the allowed level with the shortest predicted service time is taken (usually the floor):
the request is late whatever runs, and the fastest level shortens the queue behind it most.

This module is pure (no clock, no torch): every input is a number the engine measured, so the
choice is table-tested (``tests/serving/test_worker_batch_level.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


class ChoiceReason(str, Enum):
    """Why the batch got its level (a label for logs and metrics)."""

    FITS = "fits"  # the widest allowed level predicted to meet the objective
    NONE_FITS = "none_fits"  # nothing allowed fits: the fastest allowed level
    NO_SIGNAL = "no_signal"  # no usable objective or service times: the ceiling


@dataclass(frozen=True)
class BatchChoice:
    """The level index for the batch's unpinned requests and the completion predicted for the
    batch's oldest request at that level (seconds since it arrived; NaN without a signal)."""

    level: int
    predicted_s: float
    reason: ChoiceReason


def choose_batch_level(
    *,
    floor: int,
    ceiling: int,
    oldest_wait_s: float,
    elapsed_s: float,
    service_s: Sequence[float],
    budget_s: float,
) -> BatchChoice:
    """The widest level in ``[floor, ceiling]`` predicted to finish the oldest request in time.

    ``oldest_wait_s``: how long the batch's oldest unpinned request waited before the worker got
    the batch. ``elapsed_s``: what the worker has already spent on this batch (reading and
    decoding). ``service_s[i]``: predicted time for level ``i`` to serve this batch.
    ``budget_s``: the objective (times the worker's target fraction) the completion must meet.

    A floor above the ceiling is the ceiling (the operator's decision wins over ``minLevel``
    when a node cap forces it lower). Negative or non-finite waits count as 0: a clock that
    went backwards or a missing stamp must not narrow the model. A missing or non-finite
    service time, or a budget that is not a positive number, gives the ceiling.
    """
    top = max(0, min(ceiling, len(service_s) - 1))
    bottom = max(0, min(floor, top))
    if not (math.isfinite(budget_s) and budget_s > 0) or not service_s:
        return BatchChoice(top, math.nan, ChoiceReason.NO_SIGNAL)
    allowed = range(top, bottom - 1, -1)  # widest first
    if any(not (math.isfinite(service_s[i]) and service_s[i] >= 0) for i in allowed):
        return BatchChoice(top, math.nan, ChoiceReason.NO_SIGNAL)
    spent = _non_negative(oldest_wait_s) + _non_negative(elapsed_s)
    for index in allowed:
        completion = spent + service_s[index]
        if completion <= budget_s:
            return BatchChoice(index, completion, ChoiceReason.FITS)
    fastest = min(allowed, key=lambda i: (service_s[i], i))
    return BatchChoice(fastest, spent + service_s[fastest], ChoiceReason.NONE_FITS)


def _non_negative(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0
