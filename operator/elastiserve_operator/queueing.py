"""Queueing estimate of the p95 latency a level would show at a given request rate.

Why a model at all: a latency breach says *that* the current level is too slow, not *which*
level would be fast enough. Stepping one level per stable window takes minutes to reach a
level three steps away; the model lets the policy jump there in one decision.

Model (documented so its limits are clear):

* Arrivals are Poisson with rate ``lambda`` (many independent clients).
* One replica is ``c`` identical servers (TorchServe workers), each serving at rate
  ``mu = capacity / c``; ``capacity`` is the measured saturation throughput of the level
  (with batching if the profile measured it so), or ``c / service_time`` at batch 1.
* Waiting time follows M/M/c: ``P(W > t) = C(c, a) * exp(-(c*mu - lambda) * t)`` with
  ``C`` the Erlang-C probability of waiting and ``a = lambda / mu`` the offered load.
* CNN service times are nearly deterministic (fixed input size), which halves the wait of
  M/M/c. The Allen-Cunneen factor ``k = (ca^2 + cs^2) / 2`` with ``ca^2 = 1`` (Poisson)
  scales the wait: ``W_q95 = k * ln(C / (1 - q)) / (c*mu - lambda)``, zero when
  ``C <= 1 - q`` (fewer than 5 % of requests wait at all).
* ``p95 ~= service_time + W_q95``: exact for deterministic service under this tail, and
  an upper bound of the true quantile of a sum otherwise.
* ``lambda >= c*mu`` is unstable: the estimate is ``inf``.

The request rate is per replica: divide the service's rate by the ready replicas first.
"""

from __future__ import annotations

import math

__all__ = ["erlang_c", "p95_latency_s"]


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits in M/M/c (Erlang C).

    Computed through the Erlang-B recursion, which stays stable for large ``servers``
    where the textbook factorial form overflows. ``offered_load`` must be below ``servers``.
    """
    if servers < 1:
        raise ValueError("servers must be >= 1")
    if offered_load <= 0.0:
        return 0.0
    if offered_load >= servers:
        return 1.0
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered_load * blocking / (k + offered_load * blocking)
    rho = offered_load / servers
    return blocking / (1.0 - rho + rho * blocking)


def p95_latency_s(
    rate_rps: float,
    *,
    service_time_s: float,
    capacity_rps: float,
    servers: int,
    service_cv2: float = 0.0,
    quantile: float = 0.95,
) -> float:
    """Estimated ``quantile`` of the response time in seconds (``inf`` when overloaded)."""
    if service_time_s <= 0.0 or capacity_rps <= 0.0:
        raise ValueError("service_time_s and capacity_rps must be > 0")
    if not 0.0 < quantile < 1.0:
        raise ValueError("quantile must lie in (0, 1)")
    rate = max(rate_rps, 0.0)
    if rate >= capacity_rps:
        return math.inf
    mu = capacity_rps / servers
    waiting = erlang_c(servers, rate / mu)
    tail = 1.0 - quantile
    if waiting <= tail:
        return service_time_s
    variability = (1.0 + service_cv2) / 2.0
    return service_time_s + variability * math.log(waiting / tail) / (capacity_rps - rate)
