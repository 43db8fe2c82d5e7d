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


@dataclass(frozen=True)
class Target:
    """One replica's predict URL and the headers it needs (each TorchServe has its own token)."""

    url: str
    headers: Mapping[str, str]


def run_schedule(
    targets: Sequence[Target],
    body: bytes,
    due_offsets: Sequence[float],
    results: list[Result],
    *,
    max_in_flight: int = 64,
    timeout_s: float = 30.0,
    stop: threading.Event | None = None,
) -> list[Result]:
    """Send one request per due offset (seconds from now), round-robin over ``targets``.

    One schedule for the whole run, unlike back-to-back :func:`run_open_loop` calls, which
    wait for each call's stragglers and so pause arrivals exactly when the server is slow.
    ``results`` is appended to (under the GIL, one ``append`` per answer) while the run goes
    on, so a caller can read it live, for a timeline or a policy; it is also returned, sorted.
    """
    if not targets:
        raise ValueError("at least one target is needed")
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=max_in_flight, max_keepalive_connections=max_in_flight)
    with httpx.Client(timeout=timeout_s, limits=limits) as client, ThreadPoolExecutor(
        max_in_flight
    ) as pool:

        def send(scheduled: float, target: Target) -> None:
            try:
                response = client.post(target.url, content=body, headers=dict(target.headers))
                status, level = response.status_code, response.headers.get("x-elastiserve-level")
            except httpx.HTTPError:
                status, level = 0, None
            with lock:
                results.append(Result(scheduled, time.monotonic(), status, level))

        start = time.monotonic()
        for i, offset in enumerate(due_offsets):
            if stop is not None and stop.is_set():
                break
            due = start + offset
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, due, targets[i % len(targets)])
    results.sort(key=lambda r: r.scheduled)
    return results


def piecewise_arrivals(phases: Sequence[tuple[float, float, float]]) -> list[float]:
    """Due offsets for phases ``(duration_s, start_rps, end_rps)`` with a linear rate in each.

    Arrival ``k`` is due where the integrated rate reaches ``k``: deterministic (no Poisson
    jitter), so a test offers the same load every run.
    """
    due: list[float] = []
    begin = 0.0
    carried = 0.0  # arrivals owed from earlier phases (fractional part)
    for duration, r0, r1 in phases:
        if duration <= 0 or r0 < 0 or r1 < 0:
            raise ValueError("phases need duration > 0 and rates >= 0")
        slope = (r1 - r0) / duration
        area = r0 * duration + slope * duration**2 / 2
        k = 1.0 - carried  # area still needed for the next arrival
        while k <= area + 1e-12:
            due.append(begin + _time_for_area(r0, slope, k))
            k += 1.0
        carried = area - (k - 1.0)
        begin += duration
    return due


def _time_for_area(r0: float, slope: float, area: float) -> float:
    """``t`` where ``r0 t + slope t^2 / 2 = area`` (the rate's integral reaches ``area``)."""
    if abs(slope) < 1e-12:
        return area / r0
    return (-r0 + math.sqrt(max(0.0, r0 * r0 + 2 * slope * area))) / slope


def planned_rate(phases: Sequence[tuple[float, float, float]], offset_s: float) -> float:
    """The arrival rate the phases plan at ``offset_s`` (0 outside them)."""
    begin = 0.0
    for duration, r0, r1 in phases:
        if begin <= offset_s < begin + duration:
            return r0 + (r1 - r0) * (offset_s - begin) / duration
        begin += duration
    return 0.0


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
