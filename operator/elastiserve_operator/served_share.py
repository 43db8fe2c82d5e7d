"""What the workers actually served: the share of each level over the last minute.

With ``spec.policy.loops`` ``Both`` or ``Worker`` the operator's ``activeLevel`` is only a
ceiling: each worker picks the level per batch. So the status would say nothing about the
accuracy users got unless it reported what was served. Each worker counts the requests it
answered per level in the latency histogram the operator already reads
(``elastiserve_request_latency_seconds_count{ElasticLevel}``: unpinned requests only, so a
client pinning a level does not show up as the workers' choice); one vector query per
evaluation, grouped by level, gives the rates, and :func:`served_shares` turns them into
fractions (pure, table-tested).

The status keeps the share it holds until a level's share moves by :data:`STATUS_TOLERANCE`
or the set of levels changes (:func:`share_for_status`): shares wobble by a point from one
evaluation to the next, and a status write per model per evaluation is what the operator
avoids at 1,000 models. The gauge always carries the fresh values.

A failed or empty answer (whatever the failure) is no share (the status field is then left
out): nothing served in the window is not "100 % of some level".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from .signals.prometheus import LabelledValue, PrometheusError, VectorSource

log = logging.getLogger(__name__)

LEVEL_LABEL = "ElasticLevel"
SERVED_SHARE_QUERY = (
    f"sum by ({LEVEL_LABEL}) (rate(elastiserve_request_latency_seconds_count"
    '{namespace="$namespace",ModelName="$model"}[1m]))'
)
"""Requests/s answered per level (unpinned), over the same 1 m window as the latency query."""
MAX_LEVEL_NAME = 63
STATUS_TOLERANCE = 0.05


def served_shares(values: Sequence[LabelledValue]) -> dict[str, float]:
    """Each level's fraction of the answered rate, rounded to 3 places; ``{}`` without any
    positive rate. Series without a plausible level label, or with a negative or non-finite
    rate, are skipped; two series of one level (several scrape jobs) are added."""
    rates: dict[str, float] = {}
    for value in values:
        level = value.labels.get(LEVEL_LABEL, "")
        if not (0 < len(level) <= MAX_LEVEL_NAME and level.isprintable()):
            continue
        if not math.isfinite(value.value) or value.value < 0:
            continue
        rates[level] = rates.get(level, 0.0) + value.value
    total = sum(rates.values())
    if total <= 0:
        return {}
    return {level: round(rate / total, 3) for level, rate in sorted(rates.items())}


async def read_served_shares(source: VectorSource | None, query: str) -> dict[str, float]:
    """Run ``query`` and return the shares; ``{}`` when there is no source or it fails."""
    if source is None:
        return {}
    try:
        return served_shares(await source.query_vector(query))
    except PrometheusError as error:
        log.info("served share unavailable: %s", error)
        return {}
    except Exception as error:  # a source broken in a way it did not foresee: no share
        log.warning("served share unavailable: unexpected %s: %s", type(error).__name__, error)
        return {}



def share_for_status(previous: Any, fresh: Mapping[str, float],
                     tolerance: float = STATUS_TOLERANCE) -> dict[str, float]:
    """``previous`` (the status's ``servedShare``) while it still says the same as ``fresh``
    within ``tolerance`` per level, else ``fresh``; ``{}`` stays ``{}`` (no share)."""
    if not fresh:
        return {}
    if (isinstance(previous, Mapping) and set(previous) == set(fresh)
            and all(isinstance(previous[k], (int, float)) and not isinstance(previous[k], bool)
                    and abs(previous[k] - v) < tolerance for k, v in fresh.items())):
        return {str(k): float(v) for k, v in previous.items()}
    return dict(fresh)
