"""Replay a load trace through a queueing simulation to compare level policies.

Why: the policy's windows and thresholds interact with Prometheus's scrape interval and
rate() window in ways a table test cannot show (a switch is only visible 30 s later, a
burst is half over before the rate shows it). This module runs the real ``decide`` against
a simulated serving pool and a simulated Prometheus, so a change to the policy can be
judged by SLO-violation time and delivered accuracy before it meets a cluster.

The model, second by second (``tick_s = 1``):

* **Arrivals**: a Poisson process whose rate is piecewise constant per second (the trace);
  drawn once per run from a seeded RNG, so every controller sees the same requests.
* **Serving**: one FIFO queue in front of ``workers x replicas`` identical servers (the
  load balancer and TorchServe's per-model queue are merged). A request is served at the
  level active when it *starts* (the handler reads the level per batch); its service time
  is the level's batch-1 time times a log-normal jitter (``service_jitter``). Arrivals
  that find ``queue_limit`` requests waiting are rejected (TorchServe's ``job_queue_size``
  default is 100) and count as violations.
* **Prometheus**: a latency histogram observed at completion and an arrival counter,
  scraped every ``scrape_interval_s`` (at ``scrape_offset_s`` past the interval: scrapes
  and evaluations run on independent timers, so their phase is arbitrary; 2 s is the mean
  phase for 5 s timers); a scrape becomes queryable ``scrape_lag_s`` later.
  The controller sees ``histogram_quantile(0.95, rate(..[query_window_s]))`` with bucket
  interpolation as Prometheus does it, and ``rate(arrivals[query_window_s])``.
  The policy's ``settleSeconds`` (30 s) covers this 20 s window plus two scrapes.
* **Control**: every ``spec.policy.evaluation_interval_s`` the controller gets that
  ``Observation`` and returns the level; a change applies to requests starting after it.

Ground truth for the scores is what clients saw: a second *violates* the SLO when the p95
latency of the requests that arrived in it (rejections count as infinitely slow) exceeds
the objective. ``mean_acc`` is the mean accuracy of the levels that answered, in percent.

Everything is deterministic for a given seed; nothing here touches the network or a clock.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .observation import Observation
from .policy import decide
from .policy_state import PolicyState
from .profile import LevelProfile
from .spec import ElasticModelSpec

__all__ = [
    "Controller",
    "PolicyController",
    "SimConfig",
    "SimResult",
    "StaticController",
    "histogram_quantile",
    "ramp_trace",
    "simulate",
    "standard_trace",
]

DEFAULT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Prometheus's default buckets with 0.15/0.2/0.3 added so that objectives near 100 ms
are resolved; an ingress histogram should have bucket edges around its objective."""


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the simulated world (not of the policy, which comes from the spec)."""

    seed: int = 7
    scrape_interval_s: int = 5
    scrape_offset_s: int = 2
    scrape_lag_s: float = 1.0
    query_window_s: int = 20
    queue_limit: int | None = 100
    service_jitter: float = 0.1
    buckets: tuple[float, ...] = DEFAULT_BUCKETS


@dataclass(frozen=True)
class SimResult:
    """Scores of one controller on one trace."""

    name: str
    violation_pct: float
    mean_acc: float
    p95_ms: float
    switches: int
    rejected_pct: float
    level_seconds: tuple[int, ...] = field(default=(), repr=False)
    levels: tuple[int, ...] = field(default=(), repr=False)
    p95_by_second_ms: tuple[float, ...] = field(default=(), repr=False)


class Controller(Protocol):
    """Decides the level at each evaluation; ``decide`` wrapped, or a static baseline."""

    name: str

    def start(self, level: int, now: float) -> int:
        """Reset for a new run; ``level`` is the spec's initial level. Returns the level
        served from the first second."""
        ...

    def step(self, observation: Observation, now: float) -> int: ...


@dataclass
class StaticController:
    """Always serves one level (the static baselines)."""

    name: str
    level: int

    def start(self, level: int, now: float) -> int:
        """Static: the spec's initial level is ignored."""
        return self.level

    def step(self, observation: Observation, now: float) -> int:
        return self.level


@dataclass
class PolicyController:
    """The real policy: carries ``PolicyState`` from one decision to the next."""

    name: str
    spec: ElasticModelSpec
    profile: Sequence[LevelProfile]
    state: PolicyState | None = None

    def start(self, level: int, now: float) -> int:
        self.state = PolicyState.initial(level, now)
        return level

    def step(self, observation: Observation, now: float) -> int:
        assert self.state is not None, "start() first"
        decision = decide(observation, self.spec, self.profile, self.state, now)
        self.state = decision.state
        return decision.level


def standard_trace(full_capacity_rps: float, duration_s: int = 1800) -> tuple[float, ...]:
    """Per-second arrival rates: steps and bursts up to 2x the full level's capacity.

    Phases as fractions of the run and multiples of the full level's capacity: calm (0.5x),
    a step above capacity (1.3x), a burst (2.0x), recovery (0.8x), a second burst (1.8x),
    a mild overload (1.1x), and a quiet tail (0.4x). Scaled to ``duration_s`` so that a
    short test trace has the same shape.
    """
    phases = ((0.0, 0.5), (1 / 6, 1.3), (1 / 3, 2.0), (0.4, 0.8), (0.6, 1.8),
              (2 / 3, 1.1), (5 / 6, 0.4))  # fmt: skip
    rates = []
    for second in range(duration_s):
        fraction = second / duration_s
        multiple = next(m for start, m in reversed(phases) if fraction >= start)
        rates.append(multiple * full_capacity_rps)
    return tuple(rates)


def ramp_trace(
    full_capacity_rps: float, duration_s: int = 1800, period_s: int = 900
) -> tuple[float, ...]:
    """Per-second rates on a smooth wave between 0.3x and 1.9x the full level's capacity.

    The counterpart of ``standard_trace``: load that climbs over minutes (a diurnal ramp
    compressed) rather than in steps, where a policy that reads the request rate can move
    before the latency breaks.
    """
    return tuple(
        full_capacity_rps * (1.1 - 0.8 * math.cos(2.0 * math.pi * second / period_s))
        for second in range(duration_s)
    )


def histogram_quantile(q: float, buckets: Sequence[float], counts: Sequence[float]) -> float | None:
    """Prometheus's ``histogram_quantile``: ``counts`` are per-bucket (not cumulative)
    increases, the last one for ``+Inf``. Linear interpolation inside the bucket; a rank
    in the ``+Inf`` bucket returns the highest finite edge; no observations -> ``None``."""
    total = math.fsum(counts)
    if total <= 0.0:
        return None
    rank = q * total
    cumulative = 0.0
    for index, count in enumerate(counts):
        if cumulative + count >= rank and count > 0:
            if index == len(buckets):
                return buckets[-1]
            lower = buckets[index - 1] if index > 0 else 0.0
            return lower + (buckets[index] - lower) * (rank - cumulative) / count
        cumulative += count
    return buckets[-1]


class _Prometheus:
    """Scrapes of a latency histogram and an arrival counter; answers instant queries."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.pending: list[tuple[float, float]] = []  # (finish, latency) not yet scraped
        self.buckets = [0] * (len(config.buckets) + 1)
        self.arrivals = 0
        self.scrapes: list[tuple[float, tuple[int, ...], int]] = []

    def observe(self, finish: float, latency: float) -> None:
        heapq.heappush(self.pending, (finish, latency))

    def scrape(self, at: float) -> None:
        while self.pending and self.pending[0][0] <= at:
            _, latency = heapq.heappop(self.pending)
            index = next(
                (i for i, edge in enumerate(self.config.buckets) if latency <= edge),
                len(self.config.buckets),
            )
            self.buckets[index] += 1
        self.scrapes.append((at, tuple(self.buckets), self.arrivals))

    def query(self, now: float) -> Observation:
        visible = [s for s in self.scrapes if s[0] + self.config.scrape_lag_s <= now]
        if not visible:
            return Observation(None, None, None)
        last = visible[-1]
        earlier = [s for s in visible if s[0] <= last[0] - self.config.query_window_s]
        if not earlier:
            return Observation(None, None, last[0])
        first = earlier[-1]
        span = last[0] - first[0]
        increases = [b - a for a, b in zip(first[1], last[1], strict=True)]
        p95 = histogram_quantile(0.95, self.config.buckets, increases)
        return Observation(p95, (last[2] - first[2]) / span, last[0])


def _arrivals(trace: Sequence[float], rng: random.Random) -> list[list[float]]:
    """Arrival times per second: exponential gaps, restarted each second (memoryless)."""
    per_second: list[list[float]] = []
    for second, rate in enumerate(trace):
        times: list[float] = []
        if rate > 0.0:
            t = second + rng.expovariate(rate)
            while t < second + 1:
                times.append(t)
                t += rng.expovariate(rate)
        per_second.append(times)
    return per_second


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``inf`` entries allowed)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def simulate(
    trace: Sequence[float],
    profile: Sequence[LevelProfile],
    spec: ElasticModelSpec,
    controller: Controller,
    config: SimConfig | None = None,
) -> SimResult:
    """Run ``controller`` over ``trace`` (requests/s per second) and score it."""
    config = config or SimConfig()
    arrivals = _arrivals(trace, random.Random(config.seed))
    jitter = random.Random(config.seed + 1)
    servers = spec.serving.workers * max(spec.replicas, 1)
    service = [lv.service_and_capacity(spec.serving.workers)[0] for lv in profile]
    accuracy = [lv.accuracy if lv.accuracy is not None else math.nan for lv in profile]
    objective = spec.objective.p95_s
    interval = spec.policy.evaluation_interval_s

    prometheus = _Prometheus(config)
    free = [0.0] * servers  # heap of the times each server becomes free
    queue: deque[tuple[float, int]] = deque()  # (arrival time, arrival second)
    latencies: list[list[float]] = [[] for _ in trace]
    served_accuracy = 0.0
    answered: list[float] = []
    rejected = 0
    level = controller.start(spec.levels.initial_level, 0.0)
    switches = 0
    level_seconds = [0] * len(profile)
    levels: list[int] = []

    def dispatch(until: float) -> None:
        nonlocal served_accuracy
        while queue and free[0] <= until:
            arrived, second = queue.popleft()
            start = max(arrived, heapq.heappop(free))
            finish = start + service[level] * jitter.lognormvariate(0.0, config.service_jitter)
            heapq.heappush(free, finish)
            latency = finish - arrived
            latencies[second].append(latency)
            answered.append(latency)
            served_accuracy += accuracy[level]
            prometheus.observe(finish, latency)

    for second, times in enumerate(arrivals):
        dispatch(float(second))
        if second % config.scrape_interval_s == config.scrape_offset_s % config.scrape_interval_s:
            prometheus.scrape(float(second))
        if second % interval == 0 and second > 0:
            observation = prometheus.query(float(second))
            chosen = controller.step(
                Observation(observation.p95_s, observation.request_rate_rps,
                            observation.sampled_at, None, spec.replicas),
                float(second),
            )  # fmt: skip
            switches += chosen != level
            level = chosen
        level_seconds[level] += 1
        levels.append(level)
        for arrived in times:
            dispatch(arrived)
            prometheus.arrivals += 1
            if config.queue_limit is not None and len(queue) >= config.queue_limit:
                rejected += 1
                latencies[second].append(math.inf)
                continue
            queue.append((arrived, second))
            dispatch(arrived)
        dispatch(float(second + 1))
    dispatch(math.inf)

    busy = [values for values in latencies if values]
    violating = sum(1 for values in busy if _percentile(values, 0.95) > objective)
    total = sum(len(values) for values in latencies)
    return SimResult(
        name=controller.name,
        violation_pct=100.0 * violating / max(len(busy), 1),
        mean_acc=100.0 * served_accuracy / max(len(answered), 1),
        p95_ms=1000.0 * _percentile(answered, 0.95) if answered else math.nan,
        switches=switches,
        rejected_pct=100.0 * rejected / max(total, 1),
        level_seconds=tuple(level_seconds),
        levels=tuple(levels),
        p95_by_second_ms=tuple(
            1000.0 * _percentile(values, 0.95) if values else math.nan for values in latencies
        ),
    )
