"""The measured plan for threads and batch size (``runtime.batch_plan``): pure table tests."""

from __future__ import annotations

import itertools

import pytest

from elastiserve_serve.runtime.batch_plan import (
    Measurement,
    batch_candidates,
    latency_budget_s,
    measure,
    plan,
    predicted_rps,
    thread_candidates,
)

M = Measurement


def test_budget_leaves_room_for_the_batch_in_front_and_the_delay() -> None:
    # 0.8 * 100 ms - 5 ms, over the two batches a request may wait for.
    assert latency_budget_s(100, 5, 0.8) == pytest.approx(0.0375)
    assert latency_budget_s(10, 20, 0.8) < 0  # the delay alone misses: plan falls back


@pytest.mark.parametrize("bad", [(0, 5, 0.8), (100, -1, 0.8), (100, 5, 0), (100, 5, 1.5)])
def test_budget_refuses_impossible_inputs(bad: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError):
        latency_budget_s(*bad)


@pytest.mark.parametrize(("most", "expected"), [
    (1, (1,)), (2, (1, 2)), (3, (1, 2, 3)), (4, (1, 2, 4)), (6, (1, 2, 4, 6)),
])
def test_thread_candidates(most: int, expected: tuple[int, ...]) -> None:
    assert thread_candidates(most) == expected


@pytest.mark.parametrize(("most", "expected"), [(1, (1,)), (5, (1, 2, 4)), (8, (1, 2, 4, 8))])
def test_batch_candidates_are_powers_of_two(most: int, expected: tuple[int, ...]) -> None:
    assert batch_candidates(most) == expected


@pytest.mark.parametrize("call", [lambda: thread_candidates(0), lambda: batch_candidates(0)])
def test_candidates_need_one(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_predicted_rate_is_the_worker_or_what_the_cores_pay_for() -> None:
    m = M(threads=1, batch=10, seconds=0.01)  # 1,000/s, 1 ms of CPU a request
    assert predicted_rps(m, cores=8, overhead_s=0.0) == pytest.approx(1000)
    assert predicted_rps(m, cores=1, overhead_s=0.001) == pytest.approx(500)  # 1 / 2 ms
    two = M(threads=2, batch=10, seconds=0.006)  # faster, but 1.2 ms of CPU a request
    assert predicted_rps(two, cores=1, overhead_s=0.001) == pytest.approx(1 / 0.0022)


# A small model: every doubling of the batch pays off until 16, a second thread halves the time.
SMALL = [M(1, 1, 0.001), M(1, 2, 0.0015), M(1, 4, 0.002), M(1, 8, 0.0032), M(1, 16, 0.006),
         M(1, 32, 0.0125), M(2, 1, 0.0009), M(2, 8, 0.0016), M(2, 16, 0.003), M(2, 32, 0.0062)]
# A large model: batching gains nothing, one request already takes 40 ms at one thread.
LARGE = [M(1, 1, 0.040), M(1, 2, 0.081), M(2, 1, 0.024), M(2, 2, 0.049)]


@pytest.mark.parametrize(("rows", "budget", "cores", "overhead", "threads", "batch"), [
    # Plenty of cores, no overhead: two threads at 16 (5,333/s) is within 5 % of the best
    # (two threads at 32, 5,161/s is not better: 16 wins as the smaller batch anyway).
    (SMALL, 0.05, 64, 0.0, 2, 16),
    # Two cores and 1.5 ms of frontend per request: CPU bounds everything near 1,300/s, the
    # second thread buys nothing, so one thread, and the smallest batch within 5 %.
    (SMALL, 0.05, 2, 0.0015, 1, 8),
    # A budget of 2.5 ms leaves batches up to 4 at one thread, up to 8 at two.
    (SMALL, 0.0025, 64, 0.0, 2, 8),
    # The large model: batch 1 (batch 2 gains nothing), two threads are 1.67x faster and the
    # two cores pay for them.
    (LARGE, 0.2, 2, 0.0015, 2, 1),
    # Half a core: the CPU bound is the same for both thread counts; fewer threads win.
    (LARGE, 0.2, 0.5, 0.0015, 1, 1),
])
def test_plan(rows: list[Measurement], budget: float, cores: float, overhead: float,
              threads: int, batch: int) -> None:
    chosen = plan(rows, budget, cores=cores, overhead_s=overhead)
    assert (chosen.threads, chosen.batch_size) == (threads, batch), chosen.reason
    assert chosen.seconds <= budget


def test_nothing_fits_falls_back_to_batch_one_at_its_fastest() -> None:
    chosen = plan(LARGE, 0.01, cores=2)
    assert (chosen.threads, chosen.batch_size) == (2, 1)
    assert "no batch fits" in chosen.reason
    assert chosen.to_json()["batch_size"] == 1


@pytest.mark.parametrize("call", [
    lambda: plan([], 1.0, cores=1),
    lambda: plan(SMALL, 1.0, cores=1, tolerance=1.0),
    lambda: plan(SMALL, 1.0, cores=0),
])
def test_plan_refuses_impossible_inputs(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_measure_times_each_configuration_and_stops_past_the_budget() -> None:
    """A fake clock: each run of batch ``b`` at ``t`` threads takes ``b / t`` ms."""
    now = itertools.count()
    state = {"threads": 0, "t": 0.0}
    runs: list[tuple[int, int]] = []

    def set_threads(count: int) -> None:
        state["threads"] = count

    def run(batch: int) -> None:
        runs.append((int(state["threads"]), batch))
        state["t"] += batch / state["threads"] / 1000

    def clock() -> float:
        next(now)
        return state["t"]

    rows = measure(run, set_threads, (1, 2), (1, 2, 4, 8, 16), 0.0035, repeats=2, clock=clock)
    got = [(m.threads, m.batch, round(m.seconds * 1000, 6)) for m in rows]
    # One thread: 1, 2, 4 ms; 4 ms is over 3.5, so 8 and 16 are never run. Two threads: up to 8.
    assert got == [(1, 1, 1.0), (1, 2, 2.0), (1, 4, 4.0),
                   (2, 1, 0.5), (2, 2, 1.0), (2, 4, 2.0), (2, 8, 4.0)]
    assert runs.count((1, 8)) == 0 and runs.count((1, 1)) == 3  # a warm-up and two timed
    with pytest.raises(ValueError):
        measure(run, set_threads, (1,), (1,), 1.0, repeats=0, clock=clock)


def test_measure_keeps_timing_fast_configurations_until_the_minimum_time() -> None:
    clock_now = [0.0]
    counts: dict[int, int] = {}

    def run(batch: int) -> None:
        counts[batch] = counts.get(batch, 0) + 1
        clock_now[0] += batch / 1000  # 1 ms a request

    rows = measure(run, lambda _: None, (1,), (1, 64), 1.0, repeats=3, min_timed_s=0.05,
                   max_repeats=20, clock=lambda: clock_now[0])
    assert [m.batch for m in rows] == [1, 64]
    assert counts[1] == 1 + 20  # 1 ms runs: capped at max_repeats before 50 ms
    assert counts[64] == 1 + 3  # 64 ms runs: the three repeats already pass 50 ms
    with pytest.raises(ValueError):
        measure(run, lambda _: None, (1,), (1,), 1.0, repeats=3, max_repeats=2,
                clock=lambda: 0.0)
