"""What the workers actually served: the share of each level over the last minute.

With ``spec.policy.loops`` ``Both`` or ``Worker`` the operator's ``activeLevel`` is only a
ceiling: each worker picks the level per batch. So the status would say nothing about the
accuracy users got unless it reported what was served. Each worker counts the requests it
answered per level in the latency histogram the operator already reads
(``elastiserve_request_latency_seconds_count{ElasticLevel}``: unpinned requests only, so a
client pinning a level does not show up as the workers' choice); one vector query per
evaluation, grouped by level, gives the rates, and :func:`served_shares` turns them into
fractions (pure, table-tested).

A failed or empty answer (whatever the failure) is no share (the status field is then left
out): nothing served in the window is not "100 % of some level".
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from .signals.prometheus import LabelledValue, PrometheusError, VectorSource

log = logging.getLogger(__name__)

LEVEL_LABEL = "ElasticLevel"
SERVED_SHARE_QUERY = (
    f"sum by ({LEVEL_LABEL}) (rate(elastiserve_request_latency_seconds_count"
    '{namespace="$namespace",ModelName="$model"}[1m]))'
)
"""Requests/s answered per level (unpinned), over the same 1 m window as the latency query."""
MAX_LEVEL_NAME = 63


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

