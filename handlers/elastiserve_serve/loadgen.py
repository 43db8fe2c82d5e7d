"""Open-loop HTTP load at a fixed arrival rate, and the switch-latency analysis over its results.

Open loop: requests are sent on a schedule, not when the previous one returns, and latency is
measured from the *scheduled* send time, so a stalled server shows up as latency instead of
silently lowering the offered load (coordinated omission). Used by the switch-under-load test
and by ``benchmarks/serving.py``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Result:
    """One request: when it was due, when it was answered, and what answered it."""

    scheduled: float
    received: float
    status: int  # 0: transport error
    level: str | None

    @property
    def latency_s(self) -> float:
        return self.received - self.scheduled


def run_open_loop(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    rate_per_s: float,
    duration_s: float,
    *,
    max_in_flight: int = 32,
    timeout_s: float = 10.0,
    on_tick: Callable[[float], None] | None = None,
) -> list[Result]:
    """Send ``body`` to ``url`` at ``rate_per_s`` for ``duration_s``; return every result."""
    if rate_per_s <= 0 or duration_s <= 0:
        raise ValueError("rate and duration must be positive")
    results: list[Result] = []
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    with httpx.Client(timeout=timeout_s, limits=limits) as client, ThreadPoolExecutor(
        max_in_flight
    ) as pool:

        def send(scheduled: float) -> None:
            try:
                response = client.post(url, content=body, headers=dict(headers))
                status, level = response.status_code, response.headers.get("x-elastiserve-level")
            except httpx.HTTPError:
                status, level = 0, None
            with lock:
                results.append(Result(scheduled, time.monotonic(), status, level))

        start = time.monotonic()
        count = max(1, math.floor(rate_per_s * duration_s))
        for i in range(count):
            due = start + i / rate_per_s
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if on_tick is not None:
                on_tick(due)
            pool.submit(send, due)
    results.sort(key=lambda r: r.scheduled)
    return results


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Switch:
    """The control file was changed to ``level`` at ``at`` (monotonic seconds)."""

    at: float
    level: str


def switch_latencies(results: Sequence[Result], switches: Sequence[Switch]) -> list[float]:
    """Per switch: seconds from the change until responses stop reporting another level.

    Counted over requests scheduled after the change and answered before the next one: the
    latency is the answer time of the last of them that still reports a different level, minus
    the change time; 0 when the very first answers already carry the new level. Requests already
    in flight at the change may legitimately answer with the old level, and requests answered
    after the next change may legitimately carry that one, so neither is counted.
    """
    latencies = []
    for i, switch in enumerate(switches):
        end = switches[i + 1].at if i + 1 < len(switches) else math.inf
        window = [
            r for r in results
            if switch.at <= r.scheduled and r.received < end and r.status == 200
        ]
        stale = [r.received - switch.at for r in window if r.level != switch.level]
        latencies.append(max(stale, default=0.0))
    return latencies


def first_new_answers(results: Sequence[Result], switches: Sequence[Switch]) -> list[float]:
    """Per switch: seconds from the change to the first answer carrying the new level.

    An upper bound on how long the change took to reach a worker (it includes that request's
    own service time); NaN when no request in the window reported the new level.
    """
    out = []
    for i, switch in enumerate(switches):
        end = switches[i + 1].at if i + 1 < len(switches) else math.inf
        fresh = [
            r.received - switch.at for r in results
            if switch.at <= r.scheduled < end and r.level == switch.level
        ]
        out.append(min(fresh, default=math.nan))
    return out
