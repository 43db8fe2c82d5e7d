"""Threads and batch size for a serving pod, chosen from what this host measured.

Why measure: TorchServe fixes a model's ``batchSize`` when it registers the model, and torch's
thread count is set once per worker, so both must be chosen before serving starts. The right
values depend on the model and the node, not on the archive's author's laptop: a small model
gains throughput from every doubling of the batch (the per-batch cost of the worker's Python
and of TorchServe's transport is paid once per batch), a large one stops gaining at batch 2 and
only adds latency, and a second thread helps a 224x224 ResNet but slows a 28x28 one on a busy
node. So ``elastiserve serve --batch-size auto --threads auto`` times the worker's own batch
path (decode, forward pass of the widest level, postprocess: :mod:`..serve_profile`) at each
candidate and keeps the smallest configuration within :data:`THROUGHPUT_TOLERANCE` of the best
one that fits the latency budget.

The latency budget: a request that arrives just after a batch started waits for that batch,
then for the batch delay, then for its own batch: ``2 * s(b) + delay <= target * objective``,
with ``s(b)`` the widest level's time for ``b`` requests (narrower levels are faster, so the
widest is the one the budget must hold for) and ``target`` the worker's share of the objective
(``worker_target``, 0.8 by default: the rest is the frontend and the network).

Throughput is not the worker's alone: the worker's threads share the pod's cores with TorchServe's
frontend (a JVM) and with the worker's own transport, which cost about
:data:`REQUEST_OVERHEAD_CPU_S` of CPU per request whatever the batch. So a configuration is
credited with ``min(b / s(b), cores / (threads * s(b) / b + overhead))``: what the worker can
run, and what the cores can pay for. Without the second term, two threads on a two-core pod
looked twice as fast in isolation and served less end to end (``benchmarks/serving_plan.py``:
the demo model at batch 32 and two threads held 466 requests/s, batch 1 at one thread 582).

Smallest, not fastest: within the tolerance, fewer threads leave cores to the node and to other
workers, and a smaller batch keeps a light load's latency low; a measurement 5 % apart is noise
on a shared node anyway. A batch larger than it pays for is worse than useless where a model's
activations outgrow the cache: the serving benchmark's ResNet-20 at 224x224 takes 27 ms for one
image and 371 ms for eight at two threads, so once a queue forms, TorchServe hands the worker
full batches that drain slower than single requests would, and the queue never recovers (seen
at 27 requests/s: batch 2 in both of two rounds and batch 8 in one collapsed to p95 > 3 s,
where batch 1 held 188-231 ms).

This module is pure (no clock, no torch, no files); :func:`measure` takes the work to time as
callables, so the choice and the search are table-tested.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .service_times import profile_sizes

THROUGHPUT_TOLERANCE = 0.05
"""A configuration within 5 % of the best throughput counts as equally fast."""
MAX_AUTO_BATCH = 64
"""The largest batch ``auto`` considers (requests per batch)."""
REQUEST_OVERHEAD_CPU_S = 0.0015
"""CPU seconds per request spent outside the timed batch path: TorchServe 0.12's frontend and
the worker's backend protocol. On the 2-core test machine with the demo model's one-sample
requests, ``benchmarks/serving_plan.py`` records (``cpu_ms_per_request``, whole sweeps) the JVM
at 0.49-0.53 ms and the worker processes at 1.78-1.83 ms a request, of which the timed path
is about 0.5 ms; a first ad-hoc reading at a steady 200-400 requests/s gave the JVM 0.8-1.4
ms."""


@dataclass(frozen=True)
class Measurement:
    """One timed configuration: ``seconds`` for a batch of ``batch`` requests at ``threads``."""

    threads: int
    batch: int
    seconds: float

    @property
    def requests_per_s(self) -> float:
        return self.batch / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class ServingPlan:
    """The chosen threads and batch size, what the profile predicts for them, and why."""

    threads: int
    batch_size: int
    seconds: float
    requests_per_s: float
    budget_s: float
    reason: str

    def to_json(self) -> dict[str, object]:
        return {
            "threads": self.threads,
            "batch_size": self.batch_size,
            "batch_ms": round(self.seconds * 1000, 3),
            "requests_per_s": round(self.requests_per_s, 1),
            "budget_ms": round(self.budget_s * 1000, 3),
            "reason": self.reason,
        }


def latency_budget_s(objective_ms: float, max_batch_delay_ms: float, target: float) -> float:
    """The longest a batch of the widest level may take: ``(target * objective - delay) / 2``.

    Not positive when the delay alone eats the objective's share; :func:`plan` then falls back
    to batch 1.
    """
    if objective_ms <= 0 or max_batch_delay_ms < 0 or not 0 < target <= 1:
        raise ValueError("objective must be > 0, delay >= 0 and target in (0, 1]")
    return (target * objective_ms - max_batch_delay_ms) / 2 / 1000


def thread_candidates(max_threads: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``max_threads``, and ``max_threads`` itself (the sizes the worker's
    own profile uses for batches, :func:`.service_times.profile_sizes`)."""
    return profile_sizes(max_threads)


def batch_candidates(max_batch: int = MAX_AUTO_BATCH) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``max_batch`` (a power of two beyond it is not tried)."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    return tuple(sizes)


def predicted_rps(m: Measurement, cores: float, overhead_s: float) -> float:
    """Requests/s one worker can serve at ``m``: its own rate, or what ``cores`` pay for when
    each request also costs ``overhead_s`` of CPU outside the batch path."""
    if cores <= 0 or overhead_s < 0:
        raise ValueError("cores must be > 0 and overhead >= 0")
    cpu = m.threads * m.seconds / m.batch + overhead_s
    return min(m.requests_per_s, cores / cpu if cpu > 0 else float("inf"))


def plan(measurements: Sequence[Measurement], budget_s: float, *, cores: float,
         overhead_s: float = REQUEST_OVERHEAD_CPU_S,
         tolerance: float = THROUGHPUT_TOLERANCE) -> ServingPlan:
    """The fewest threads, then the smallest batch, within ``tolerance`` of the best predicted
    throughput (:func:`predicted_rps`) among the measurements whose batch fits ``budget_s``.

    ``cores``: the CPU one worker may count on (the pod's request over its workers). When no
    batch fits (the widest level is slower than the budget even for one request), batch 1 at
    its fastest thread count: batching would only add to a latency that already misses.
    """
    if not measurements:
        raise ValueError("no measurements to plan from")
    if not 0 <= tolerance < 1:
        raise ValueError("tolerance must be in [0, 1)")
    fits = [m for m in measurements if m.seconds <= budget_s]
    if not fits:
        singles = [m for m in measurements if m.batch == 1] or list(measurements)
        best = min(singles, key=lambda m: (m.seconds, m.threads))
        return _plan(best, budget_s, predicted_rps(best, cores, overhead_s),
                     f"no batch fits the budget at the widest level (batch 1 takes "
                     f"{best.seconds * 1000:.1f} ms, budget {budget_s * 1000:.1f} ms): batch 1")
    rates = {m: predicted_rps(m, cores, overhead_s) for m in fits}
    top = max(rates.values())
    good = [m for m in fits if rates[m] >= (1 - tolerance) * top]
    chosen = min(good, key=lambda m: (m.threads, m.batch))
    return _plan(chosen, budget_s, rates[chosen],
                 f"{rates[chosen]:.1f} requests/s predicted on {cores:g} core(s), within "
                 f"{tolerance:.0%} of the best ({top:.1f}) with the fewest threads, then the "
                 f"smallest batch, whose batch fits the budget")


def _plan(m: Measurement, budget_s: float, rps: float, reason: str) -> ServingPlan:
    return ServingPlan(m.threads, m.batch, m.seconds, rps, budget_s, reason)


def measure(
    run: Callable[[int], None],
    set_threads: Callable[[int], None],
    threads: Sequence[int],
    batches: Sequence[int],
    budget_s: float,
    *,
    repeats: int = 3,
    min_timed_s: float = 0.0,
    max_repeats: int = 25,
    clock: Callable[[], float],
) -> list[Measurement]:
    """Time ``run(batch)`` for every thread count and batch size (one warm-up, then the median
    of at least ``repeats`` runs, more until ``min_timed_s`` of them, at most ``max_repeats``),
    stopping a thread count's batches at the first one over ``budget_s``: larger batches only
    take longer, and the profile delays the pod's start.

    Why a minimum time: three runs are three samples of a noisy node; the serving
    benchmark's ResNet-20 at 224x224 read 51 ms for batch 2 in a three-run profile and 74-89
    ms in steady state, enough to choose the wrong batch."""
    if repeats < 1 or max_repeats < repeats:
        raise ValueError("repeats must be at least 1 and max_repeats at least repeats")
    out: list[Measurement] = []
    for count in threads:
        set_threads(count)
        for batch in batches:
            run(batch)
            times: list[float] = []
            while len(times) < repeats or (sum(times) < min_timed_s
                                           and len(times) < max_repeats):
                start = clock()
                run(batch)
                times.append(clock() - start)
            seconds = statistics.median(times)
            out.append(Measurement(count, batch, seconds))
            if seconds > budget_s:
                break
    return out
