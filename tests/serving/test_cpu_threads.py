"""Torch threads per worker from the container's CPU request (``runtime.cpu_threads``)."""

from __future__ import annotations

import pytest

from elastiserve_serve.runtime.cpu_threads import (
    CPU_REQUEST_ENV,
    WORKERS_ENV,
    auto_threads,
    threads_for_request,
)


@pytest.mark.parametrize(("milli", "workers", "threads"), [
    (500, 1, 1),      # the quick start's half core: one thread, never torch's node-wide default
    (1000, 1, 1),
    (1999, 1, 1),     # rounded down: a thread over the grant is the stall
    (2000, 1, 2),
    (4000, 2, 2),
    (3000, 2, 1),
    (8000, 1, 8),
    (1, 4, 1),        # at least one
])
def test_whole_cores_per_worker(milli: int, workers: int, threads: int) -> None:
    assert threads_for_request(milli, workers) == threads


@pytest.mark.parametrize(("milli", "workers"), [(-1, 1), (1000, 0)])
def test_impossible_counts_are_refused(milli: int, workers: int) -> None:
    with pytest.raises(ValueError):
        threads_for_request(milli, workers)


@pytest.mark.parametrize(("archived", "env", "threads", "said"), [
    (3, {CPU_REQUEST_ENV: "500"}, 3, "archive"),          # an explicit setting wins
    (0, {}, 0, "no CPU request"),                          # outside a pod: torch's default
    (0, {CPU_REQUEST_ENV: "500"}, 1, "500m over 1"),       # workers default to one
    (0, {CPU_REQUEST_ENV: "4000", WORKERS_ENV: "2"}, 2, "4000m over 2"),
    (0, {CPU_REQUEST_ENV: "0"}, 0, "requests no CPU"),
    (0, {CPU_REQUEST_ENV: "half"}, 0, "not a usable count"),
    (0, {CPU_REQUEST_ENV: "500", WORKERS_ENV: "0"}, 0, "not a usable count"),
])
def test_auto_threads(archived: int, env: dict[str, str], threads: int, said: str) -> None:
    got, why = auto_threads(archived, env)
    assert got == threads
    assert said in why
