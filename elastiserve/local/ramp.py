"""Open-loop load whose arrival rate follows a piecewise-linear plan (the demo's ramp).

The schedule is :func:`elastiserve_serve.loadgen.piecewise_arrivals` (one schedule for the whole
ramp, latency measured from each request's due time). The sender differs from
:func:`~elastiserve_serve.loadgen.run_schedule` in what the demo needs on top: many bodies of
real test images, each answer scored against the true labels (the accuracy each level gives
back), and a stop that also drops the requests not yet sent when the user presses Ctrl-C.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from elastiserve_serve.loadgen import piecewise_arrivals
from elastiserve_serve.runtime.settings import PIN_HEADER


@dataclass(frozen=True)
class Phase:
    """The rate moves linearly from ``start_rps`` to ``end_rps`` over ``duration_s``."""

    name: str
    duration_s: float
    start_rps: float
    end_rps: float


@dataclass(frozen=True)
class LoadPlan:
    """Phases back to back, starting at offset 0."""

    phases: tuple[Phase, ...]

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("a load plan needs at least one phase")
        for phase in self.phases:
            if phase.duration_s <= 0 or phase.start_rps < 0 or phase.end_rps < 0:
                raise ValueError(f"phase {phase.name!r}: duration > 0 and rates >= 0 needed")

    @property
    def duration_s(self) -> float:
        return math.fsum(p.duration_s for p in self.phases)

    def rate_at(self, offset_s: float) -> float:
        """The planned arrival rate at ``offset_s`` (0 outside the plan)."""
        begin = 0.0
        for phase in self.phases:
            if begin <= offset_s < begin + phase.duration_s:
                fraction = (offset_s - begin) / phase.duration_s
                return phase.start_rps + fraction * (phase.end_rps - phase.start_rps)
            begin += phase.duration_s
        return 0.0

    def phase_at(self, offset_s: float) -> str:
        begin = 0.0
        for phase in self.phases:
            begin += phase.duration_s
            if offset_s < begin:
                return phase.name
        return self.phases[-1].name

    def arrivals(self) -> list[float]:
        """Due offsets of every request (deterministic; see ``piecewise_arrivals``)."""
        phases = [(p.duration_s, p.start_rps, p.end_rps) for p in self.phases]
        return list(piecewise_arrivals(phases))


@dataclass(frozen=True)
class Request:
    """One request body and the true label of each sample in it (empty: not scored)."""

    body: bytes
    labels: tuple[str, ...] = ()
    content_type: str = "application/json"


@dataclass(frozen=True)
class Outcome:
    """What happened to one request; times are ``time.monotonic()`` seconds."""

    scheduled: float
    received: float
    status: int  # 0: transport error or timeout
    level: str | None
    samples: int
    correct: int  # samples whose top-1 label matched (0 when not scored)

    @property
    def latency_s(self) -> float:
        return self.received - self.scheduled

    @property
    def ok(self) -> bool:
        return self.status == 200


class RampLoad:
    """Sends ``requests`` (cycled) on the schedule of ``plan``; call :meth:`run` in a thread."""

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        requests: Sequence[Request],
        plan: LoadPlan,
        *,
        max_in_flight: int = 64,
        timeout_s: float = 10.0,
    ) -> None:
        if not requests:
            raise ValueError("no request bodies to send")
        self.url = url
        self.headers = dict(headers)
        self.requests = tuple(requests)
        self.plan = plan
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.started: float | None = None
        self._outcomes: list[Outcome] = []
        self._scheduled: list[float] = []
        self._lock = threading.Lock()

    def snapshot(self) -> tuple[list[float], list[Outcome]]:
        """Copies of the due times sent so far and the outcomes answered so far."""
        with self._lock:
            return list(self._scheduled), list(self._outcomes)

    def run(self, stop: threading.Event) -> None:
        """Send until the plan ends or ``stop`` is set; then wait for the requests in flight."""
        limits = httpx.Limits(
            max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
        )
        due_offsets = self.plan.arrivals()
        with httpx.Client(timeout=self.timeout_s, limits=limits) as client:
            pool = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="ramp")
            try:
                self.started = start = time.monotonic()
                for index, offset in enumerate(due_offsets):
                    due = start + offset
                    delay = due - time.monotonic()
                    if delay > 0 and stop.wait(delay):
                        break
                    if stop.is_set():
                        break
                    with self._lock:
                        self._scheduled.append(due)
                    request = self.requests[index % len(self.requests)]
                    pool.submit(self._send, client, request, due)
            finally:
                pool.shutdown(wait=True, cancel_futures=stop.is_set())

    def _send(self, client: httpx.Client, request: Request, due: float) -> None:
        status, level, correct = 0, None, 0
        try:
            response = client.post(self.url, content=request.body,
                                   headers={**self.headers, "Content-Type": request.content_type})
            status = response.status_code
            level = response.headers.get(PIN_HEADER)
            if status == 200 and request.labels:
                correct = count_correct(response.content, request.labels)
        except httpx.HTTPError:
            pass
        outcome = Outcome(due, time.monotonic(), status, level, len(request.labels), correct)
        with self._lock:
            self._outcomes.append(outcome)


def count_correct(content: bytes, labels: Sequence[str]) -> int:
    """Top-1 hits in one response of the elastic handler (``{"predictions": [[{label}...]]}``)."""
    try:
        rows = json.loads(content)["predictions"]
        return sum(
            1 for row, label in zip(rows, labels, strict=False) if row and row[0]["label"] == label
        )
    except (ValueError, KeyError, TypeError, IndexError):
        return 0
