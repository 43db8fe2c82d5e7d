"""Predictive targets ranked by accuracy when the profile knows every level's accuracy.

A nested bundle can come out of training with a narrower level scoring above a wider one
(short fine-tuning, an unlucky prune). Serving the wider one then costs capacity and buys
nothing, so the policy must pick the most accurate level that fits, not the widest.
"""

from __future__ import annotations

from elastiserve_operator.policy import Cause, decide
from elastiserve_operator.profile import LevelProfile

from .test_policy import NOW, make_spec, make_state, obs

SERVICE_S = (0.005, 0.020 / 2.4, 0.020 / 1.5, 0.020)
"""Two workers: capacities 400, 240, 150 and 100 rps."""


def profile(*accuracies: float | None) -> tuple[LevelProfile, ...]:
    return tuple(LevelProfile(f"L{k}", service_time_s=s, accuracy=a)
                 for k, (s, a) in enumerate(zip(SERVICE_S, accuracies, strict=True)))


DOMINATED = profile(0.90, 0.85, 0.93, 0.935)
"""L1 is slower than L0 and less accurate: never worth serving."""
MONOTONE = profile(0.90, 0.92, 0.93, 0.935)
UNKNOWN = profile(None, None, None, None)
PARTIAL = profile(0.90, 0.85, None, 0.935)

OVERLOAD_RPS = 180.0
"""Past L3 (100) and L2 (150); L1 (240) and L0 (400) both meet the 100 ms objective."""


def narrow_from_full(levels: tuple[LevelProfile, ...]) -> tuple[int, Cause]:
    decision = decide(obs(0.30, OVERLOAD_RPS), make_spec(), levels, make_state(3), NOW)
    return decision.level, decision.cause


def test_overload_skips_a_dominated_level() -> None:
    assert narrow_from_full(DOMINATED) == (0, Cause.PANIC)


def test_overload_takes_the_widest_fitting_level_when_accuracy_rises_with_width() -> None:
    assert narrow_from_full(MONOTONE) == (1, Cause.PANIC)


def test_without_every_accuracy_the_width_decides() -> None:
    assert narrow_from_full(UNKNOWN) == (1, Cause.PANIC)
    assert narrow_from_full(PARTIAL) == (1, Cause.PANIC)


def test_no_widening_into_a_dominated_level() -> None:
    state = make_state(0)
    dominated = decide(obs(0.01, OVERLOAD_RPS), make_spec(), DOMINATED, state, NOW)
    assert (dominated.level, dominated.cause) == (0, Cause.STEADY)
    monotone = decide(obs(0.01, OVERLOAD_RPS), make_spec(), MONOTONE, state, NOW)
    assert (monotone.level, monotone.cause) == (0, Cause.STABILIZING)
    assert monotone.state.recommendations[-1].level == 1


def test_widening_goes_to_the_most_accurate_level_that_fits() -> None:
    # At 40 rps every level fits; here L2 scores above L3, so L2 is the target.
    odd = profile(0.90, 0.92, 0.94, 0.935)
    state = make_state(0, recs=((70.0, 3), (40.0, 3), (10.0, 3)))
    decision = decide(obs(0.01, 40.0), make_spec(), odd, state, NOW)
    assert (decision.level, decision.cause) == (2, Cause.HEADROOM)
