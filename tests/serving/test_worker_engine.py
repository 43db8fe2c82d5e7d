"""The per-batch choice inside the runtime: bounds from the control file, waits from the
gateway's stamp, pins apart, hostile stamps harmless, a profile at load (tiny real levels)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from elastiserve_serve.runtime import (
    ControlState,
    ElasticRuntime,
    RawRequest,
    RecordingMetrics,
    RuntimeSettings,
    Success,
    write_control_file,
)
from elastiserve_serve.runtime.control import ARRIVAL_HEADER, ControlFileError, parse_control
from elastiserve_serve.runtime.service_times import ServiceTimes

from .tiny import tiny_levels

SAMPLE = json.dumps([[[0.25] * 8] * 8])
NOW_NS = 1_800_000_000_000_000_000  # the worker's wall clock when the batch arrives
PIN = "x-elastiserve-level"


class FixedTimes(ServiceTimes):
    """A profile that ignores what the tiny levels really take, so choices are exact."""

    def observe(self, level: int, samples: int, seconds: float) -> None:
        pass


def fixed_times() -> FixedTimes:
    # small / medium / full: 2, 5, 10 ms per sample (linear in the batch size).
    return FixedTimes((1, 2), ((0.002, 0.004), (0.005, 0.010), (0.010, 0.020)))


def make_runtime(tmp_path: Path, state: ControlState | None,
                 **settings: object) -> tuple[ElasticRuntime, RecordingMetrics]:
    control = tmp_path / "level.json"
    if state is not None:
        write_control_file(control, state)
    metrics = RecordingMetrics()
    rt = ElasticRuntime(
        tiny_levels(),
        RuntimeSettings(control_file=control, allow_pin=True, **settings),  # type: ignore[arg-type]
        metrics, clock=lambda: 0.0, wall_ns=lambda: NOW_NS,
    )
    rt.service_times = fixed_times()
    return rt, metrics


def waited(ms: float, body: str = SAMPLE, **headers: str) -> RawRequest:
    """A request the gateway stamped ``ms`` milliseconds before the worker got the batch."""
    stamp = str(NOW_NS - int(ms * 1_000_000))
    return RawRequest(body, {ARRIVAL_HEADER: stamp, **headers})


# objective 100 ms, worker_target 0.8: a batch's oldest request must finish within 80 ms.
BOTH = ControlState(2, 1, floor=0, objective_ms=100.0)


def levels_of(outcomes: list[object]) -> list[str]:
    return [o.level if isinstance(o, Success) else "failed" for o in outcomes]


@pytest.mark.parametrize(
    ("waits_ms", "level"),
    [
        ([0.0], "full"),  # 10 ms fits
        ([69.0], "full"),  # 79 ms fits
        ([72.0], "medium"),  # full would end at 82 ms, medium at 77
        ([76.0], "small"),
        ([200.0], "small"),  # late whatever runs: the fastest
        ([1.0, 69.5], "medium"),  # the oldest decides; 2 samples: 20 / 10 / 4 ms
    ],
)
def test_the_oldest_wait_picks_the_level(
    tmp_path: Path, waits_ms: list[float], level: str
) -> None:
    rt, metrics = make_runtime(tmp_path, BOTH)
    outcomes = rt.handle([waited(ms) for ms in waits_ms])
    assert levels_of(list(outcomes)) == [level] * len(waits_ms)
    assert [name for name, _ in metrics.served] == [level] * len(waits_ms)


def test_never_above_the_ceiling_nor_below_the_floor(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path, ControlState(1, 1, floor=1, objective_ms=100.0))
    assert levels_of(list(rt.handle([waited(0.0)]))) == ["medium"]
    assert levels_of(list(rt.handle([waited(500.0)]))) == ["medium"]


def test_a_floor_above_the_ceiling_serves_the_ceiling(tmp_path: Path) -> None:
    """A node cap may push the ceiling under minLevel; the cap wins."""
    rt, _ = make_runtime(tmp_path, ControlState(0, 1, floor=2, objective_ms=100.0))
    assert levels_of(list(rt.handle([waited(0.0)]))) == ["small"]


@pytest.mark.parametrize(
    "state",
    [ControlState(2, 1), ControlState(2, 1, floor=0), ControlState(2, 1, objective_ms=100.0)],
    ids=["level only", "no objective", "no floor"],
)
def test_without_floor_and_objective_the_level_is_served_as_before(
    tmp_path: Path, state: ControlState
) -> None:
    rt, _ = make_runtime(tmp_path, state)
    assert levels_of(list(rt.handle([waited(500.0)]))) == ["full"]


def test_worker_choice_off_in_settings_serves_the_ceiling(tmp_path: Path) -> None:
    control = tmp_path / "level.json"
    write_control_file(control, BOTH)
    rt = ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=control, worker_choice=False),
                        clock=lambda: 0.0, wall_ns=lambda: NOW_NS)
    rt.warm_up(4)
    assert rt.service_times is None
    assert levels_of(list(rt.handle([waited(500.0)]))) == ["full"]


def test_bounds_follow_the_control_file_without_reload(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path, BOTH)
    control = tmp_path / "level.json"
    assert levels_of(list(rt.handle([waited(76.0)]))) == ["small"]
    write_control_file(control, ControlState(2, 2, floor=1, objective_ms=100.0))
    assert levels_of(list(rt.handle([waited(76.0)]))) == ["medium"]
    write_control_file(control, ControlState(2, 3, floor=0, objective_ms=1000.0))
    assert levels_of(list(rt.handle([waited(76.0)]))) == ["full"]
    write_control_file(control, ControlState(2, 4))  # the operator took the choice back
    assert levels_of(list(rt.handle([waited(500.0)]))) == ["full"]


def test_an_unknown_floor_turns_the_choice_off_and_is_reported(tmp_path: Path) -> None:
    rt, metrics = make_runtime(tmp_path, ControlState(2, 1, floor="nope", objective_ms=100.0))
    assert levels_of(list(rt.handle([waited(500.0)]))) == ["full"]
    assert metrics.control_problems == ["unknown_level"]


def test_pinned_requests_are_honoured_and_do_not_drive_the_choice(tmp_path: Path) -> None:
    rt, metrics = make_runtime(tmp_path, BOTH)
    outcomes = rt.handle([
        waited(500.0, **{PIN: "full"}),  # pinned and very late: still full, no narrowing
        waited(0.0),
        waited(300.0, **{PIN: "medium"}),
    ])
    assert levels_of(list(outcomes)) == ["full", "full", "medium"]
    assert [name for name, _ in metrics.pinned] == ["full", "medium"]
    assert [name for name, _ in metrics.served] == ["full"]


def test_a_batch_of_pinned_requests_makes_no_choice(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path, BOTH)
    rt.handle([waited(500.0, **{PIN: "small"})])
    assert rt.last_choice is None


@pytest.mark.parametrize(
    "stamp",
    ["", "abc", "-5", "1e18", "١٢٣", "9" * 21, str(NOW_NS + 10**9), "0", " "],
    ids=["empty", "letters", "negative", "float", "arabic digits", "too long", "future",
         "epoch (absurdly old)", "blank"],
)
def test_a_stamp_that_is_not_a_recent_past_time_counts_as_no_wait(
    tmp_path: Path, stamp: str
) -> None:
    rt, metrics = make_runtime(tmp_path, BOTH)
    (out,) = rt.handle([RawRequest(SAMPLE, {ARRIVAL_HEADER: stamp})])
    assert isinstance(out, Success) and out.level == "full"
    assert metrics.rejected == []


def test_the_stamp_header_name_is_case_insensitive(tmp_path: Path) -> None:
    rt, _ = make_runtime(tmp_path, BOTH)
    stamp = str(NOW_NS - 200_000_000)
    (out,) = rt.handle([RawRequest(SAMPLE, {ARRIVAL_HEADER.upper(): stamp})])
    assert isinstance(out, Success) and out.level == "small"


def test_decode_time_already_spent_counts(tmp_path: Path) -> None:
    """The worker's own clock advances 10 ms while it reads the batch: full no longer fits."""
    ticks = iter([0.0, 0.010] + [0.010] * 20)
    control = tmp_path / "level.json"
    write_control_file(control, BOTH)
    rt = ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=control),
                        clock=lambda: next(ticks), wall_ns=lambda: NOW_NS)
    rt.service_times = fixed_times()
    assert levels_of(list(rt.handle([waited(64.0)]))) == ["medium"]
    assert rt.last_choice is not None
    assert rt.last_choice.predicted_s == pytest.approx(0.079)


def test_warm_up_profiles_every_level_up_to_the_batch_size(tmp_path: Path) -> None:
    rt = ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=None, profile_repeats=1))
    rt.warm_up(6)
    times = rt.service_times
    assert times is not None
    assert times.sizes == (1, 2, 4, 6)
    assert len(times.seconds) == 3
    assert all(math.isfinite(t) and t > 0 for row in times.seconds for t in row)


def test_profile_max_samples_setting_overrides_the_batch_size(tmp_path: Path) -> None:
    rt = ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=None, profile_repeats=1,
                                                       profile_max_samples=2))
    rt.warm_up(64)
    assert rt.service_times is not None and rt.service_times.sizes == (1, 2)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"level": 2, "floor": -1}, "floor"),
        ({"level": 2, "floor": True}, "floor"),
        ({"level": 2, "floor": ""}, "floor"),
        ({"level": 2, "floor": [0]}, "floor"),
        ({"level": 2, "objective_ms": 0}, "objective_ms"),
        ({"level": 2, "objective_ms": -3}, "objective_ms"),
        ({"level": 2, "objective_ms": "100"}, "objective_ms"),
        ({"level": 2, "objective_ms": True}, "objective_ms"),
        ({"level": 2, "objective_ms": 1e9}, "objective_ms"),
    ],
)
def test_control_file_refuses_bad_bounds(body: dict[str, object], message: str) -> None:
    with pytest.raises(ControlFileError, match=message):
        parse_control(json.dumps(body).encode())


@pytest.mark.parametrize("raw", [b'{"level": 2, "objective_ms": NaN}',
                                 b'{"level": 2, "objective_ms": Infinity}'])
def test_control_file_refuses_non_finite_objectives(raw: bytes) -> None:
    with pytest.raises(ControlFileError, match="objective_ms"):
        parse_control(raw)


def test_control_file_round_trips_bounds() -> None:
    state = ControlState(2, 7, True, floor=1, objective_ms=150.0)
    assert parse_control(state.to_json()) == state
    assert parse_control(ControlState(2, 7).to_json()) == ControlState(2, 7)
