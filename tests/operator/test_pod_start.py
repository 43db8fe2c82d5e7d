"""A model's pod start time from its pods: creation to Ready, p90 of the newest ready ones."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.pod_start import (
    MIN_SECONDS,
    RECENT,
    pod_start_seconds,
    start_durations,
)


def stamp(seconds: int) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"2026-03-01T10:{minutes:02d}:{rest:02d}Z"


def pod(created: int, ready_after: int | None, *, status: str = "True") -> dict[str, Any]:
    conditions = [{"type": "PodScheduled", "status": "True",
                   "lastTransitionTime": stamp(created)}]
    if ready_after is not None:
        conditions.append({"type": "Ready", "status": status,
                           "lastTransitionTime": stamp(created + ready_after)})
    return {"metadata": {"creationTimestamp": stamp(created)},
            "status": {"conditions": conditions}}


def test_p90_of_the_ready_pods() -> None:
    pods = [pod(i, start) for i, start in enumerate([10, 20, 30, 40, 50, 60, 70, 80, 90, 100])]
    assert pod_start_seconds(pods) == 90.0  # nearest rank: the 9th of 10


def test_one_pod_is_its_own_p90() -> None:
    assert pod_start_seconds([pod(0, 42)]) == 42.0


def test_pods_not_ready_or_unreadable_do_not_count() -> None:
    pods = [pod(0, None), pod(1, 30, status="False"), pod(2, 12),
            {"metadata": {}, "status": {}},
            {"metadata": {"creationTimestamp": "yesterday"},
             "status": {"conditions": [{"type": "Ready", "status": "True",
                                        "lastTransitionTime": stamp(5)}]}}]
    assert pod_start_seconds(pods) == 12.0


def test_none_until_a_pod_is_ready() -> None:
    assert pod_start_seconds([]) is None
    assert pod_start_seconds([pod(0, None)]) is None


def test_a_ready_time_before_creation_is_ignored() -> None:
    assert start_durations([pod(10, -5)]) == []


def test_only_the_newest_count() -> None:
    old = [pod(i, 300) for i in range(10)]                  # slow, long ago
    new = [pod(100 + i, 8) for i in range(RECENT)]          # the recent ones are quick
    assert pod_start_seconds(old + new) == 8.0
    assert start_durations(old + new)[0][1] == 8.0          # newest first


def test_a_start_within_the_second_reads_as_the_floor() -> None:
    assert pod_start_seconds([pod(0, 0), pod(1, 0)]) == MIN_SECONDS


@pytest.mark.parametrize("recent", [1, 3])
def test_recent_is_a_parameter(recent: int) -> None:
    pods = [pod(0, 50), pod(1, 40), pod(2, 5)]
    assert pod_start_seconds(pods, recent=recent) == (5.0 if recent == 1 else 50.0)
