"""The runtime core: level choice per batch and per request, grouping, failures, metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from elastiserve_serve.runtime import (
    ControlState,
    ElasticRuntime,
    Failure,
    RawRequest,
    RecordingMetrics,
    RuntimeSettings,
    Success,
    write_control_file,
)

from .tiny import CLASSES, NAMES, png_bytes, tiny_levels

SAMPLE = json.dumps([[[0.25] * 8] * 8])


def runtime(tmp_path: Path, **kwargs: object) -> tuple[ElasticRuntime, RecordingMetrics, Path]:
    control = tmp_path / "level.json"
    metrics = RecordingMetrics()
    settings = RuntimeSettings(control_file=control, **kwargs)  # type: ignore[arg-type]
    rt = ElasticRuntime(tiny_levels(), settings, metrics)
    rt.warm_up()
    return rt, metrics, control


def test_defaults_to_widest_level(tmp_path: Path) -> None:
    rt, _, _ = runtime(tmp_path)
    assert rt.active == "full"
    (out,) = rt.handle([RawRequest(SAMPLE)])
    assert isinstance(out, Success) and out.level == "full"
    assert len(out.predictions) == 1 and len(out.predictions[0]) == 4
    assert {p["label"] for p in out.predictions[0]} == set(CLASSES)
    total = sum(float(str(p["probability"])) for p in out.predictions[0])
    assert total == pytest.approx(1, abs=1e-4)


def test_control_file_switches_without_reload(tmp_path: Path) -> None:
    rt, metrics, control = runtime(tmp_path, default_level="medium")
    modules = [id(m) for m in rt.levels.modules]
    for generation, level in enumerate(["small", "full", "medium", "small"], start=1):
        write_control_file(control, ControlState(level, generation))
        (out,) = rt.handle([RawRequest(SAMPLE)])
        assert isinstance(out, Success) and out.level == level
    assert [id(m) for m in rt.levels.modules] == modules
    assert metrics.active[-1] == ("small", 0)


def test_control_file_index_resolves_against_the_bundle_order(tmp_path: Path) -> None:
    # The operator decides indexes (0 = narrowest); the runtime alone knows the names.
    rt, metrics, control = runtime(tmp_path)
    cases: list[tuple[int | str, str]] = [
        (0, "small"), (2, "full"), ("1", "medium"), ("small", "small")]
    for generation, (ref, name) in enumerate(cases, start=1):
        write_control_file(control, ControlState(ref, generation))
        (out,) = rt.handle([RawRequest(SAMPLE)])
        assert isinstance(out, Success) and out.level == name
    assert metrics.active[-1] == ("small", 0)
    write_control_file(control, ControlState(3, 9))  # past the last level: keep serving
    (out,) = rt.handle([RawRequest(SAMPLE)])
    assert isinstance(out, Success) and out.level == "small"


def test_level_set_resolves_names_then_indexes() -> None:
    levels = tiny_levels()
    assert [levels.resolve(r) for r in (0, 1, 2, "full", "0")] == [
        "small", "medium", "full", "full", "small"]
    for bad in (3, -1, "huge", "", True):
        with pytest.raises(KeyError):
            levels.resolve(bad)


def test_unknown_level_in_control_file_keeps_current(tmp_path: Path) -> None:
    rt, _, control = runtime(tmp_path)
    write_control_file(control, ControlState("small", 1))
    rt.handle([RawRequest(SAMPLE)])
    write_control_file(control, ControlState("huge", 2))
    (out,) = rt.handle([RawRequest(SAMPLE)])
    assert isinstance(out, Success) and out.level == "small"


def test_levels_answer_differently_and_match_direct_call(tmp_path: Path) -> None:
    rt, _, control = runtime(tmp_path, top_k=4)
    answers = {}
    for generation, level in enumerate(NAMES, start=1):
        write_control_file(control, ControlState(level, generation))
        (out,) = rt.handle([RawRequest(SAMPLE)])
        assert isinstance(out, Success)
        answers[level] = out.predictions[0][0]["probability"]
        x = (torch.full((1, 1, 8, 8), 0.25) - 0.5) / 0.25
        expected = torch.softmax(rt.levels.module(level)(x), dim=1).max().item()
        assert answers[level] == pytest.approx(expected, abs=1e-5)
    assert len(set(answers.values())) == 3


class TestPinning:
    def test_refused_unless_allowed(self, tmp_path: Path) -> None:
        rt, metrics, _ = runtime(tmp_path)
        (out,) = rt.handle([RawRequest(SAMPLE, {"X-Elastiserve-Level": "small"})])
        assert isinstance(out, Failure) and out.status == 403
        assert metrics.rejected == [403]

    def test_allowed_by_settings_groups_by_level(self, tmp_path: Path) -> None:
        rt, metrics, _ = runtime(tmp_path, allow_pin=True)
        batch = [
            RawRequest(SAMPLE, {"x-elastiserve-level": "small"}),
            RawRequest(SAMPLE),
            RawRequest(png_bytes(), {"X-ELASTISERVE-LEVEL": "small"}),
            RawRequest(SAMPLE, {"x-elastiserve-level": "nope"}),
            RawRequest(b"garbage"),
        ]
        out = rt.handle(batch)
        assert [o.level if isinstance(o, Success) else o.status for o in out] == [
            "small", "full", "small", 400, 415,
        ]
        # Pinned requests are reported apart, out of the latency the operator acts on.
        assert [level for level, _ in metrics.served] == ["full"]
        assert sorted(level for level, _ in metrics.pinned) == ["small", "small"]
        assert all(seconds > 0 for _, seconds in metrics.served + metrics.pinned)

    def test_control_file_overrides_setting(self, tmp_path: Path) -> None:
        rt, _, control = runtime(tmp_path, allow_pin=True)
        write_control_file(control, ControlState("full", 1, allow_pin=False))
        (out,) = rt.handle([RawRequest(SAMPLE, {"x-elastiserve-level": "small"})])
        assert isinstance(out, Failure) and out.status == 403


def test_client_batch_in_one_request(tmp_path: Path) -> None:
    rt, _, _ = runtime(tmp_path)
    body = json.dumps({"data": [[[[0.1] * 8] * 8], [[[0.9] * 8] * 8]]})
    (out,) = rt.handle([RawRequest(body)])
    assert isinstance(out, Success) and len(out.predictions) == 2


def test_model_failure_is_500_for_its_group_only(tmp_path: Path) -> None:
    rt, _, _ = runtime(tmp_path, allow_pin=True)

    def broken(_: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    rt.levels.modules[0].forward = broken  # type: ignore[method-assign]
    out = rt.handle([RawRequest(SAMPLE, {"x-elastiserve-level": "small"}), RawRequest(SAMPLE)])
    assert isinstance(out[0], Failure) and out[0].status == 500
    assert isinstance(out[1], Success)


def test_bad_default_level(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=None, default_level="x"))


class TestControlFileProblems:
    """A worker that cannot follow the control file keeps its level and says so: log, a
    counter by kind and a health gauge; it never fails to start (no crash loop)."""

    @pytest.mark.parametrize("level", ["\u00b2", "9" * 4000, "\u0663"])
    def test_a_level_int_refuses_does_not_stop_the_worker_starting(
        self, tmp_path: Path, level: str, caplog: pytest.LogCaptureFixture,
    ) -> None:
        # Before: LevelSet.resolve called int() on "²" (str.isdigit() is True for it) and the
        # ValueError escaped ElasticRuntime's constructor: the worker died at every start.
        control = tmp_path / "level.json"
        write_control_file(control, ControlState(level, 1))
        metrics = RecordingMetrics()
        rt = ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=control), metrics)
        (out,) = rt.handle([RawRequest(SAMPLE)])
        assert isinstance(out, Success) and out.level == "full"
        assert metrics.control_problems == ["unknown_level"]
        assert metrics.control_ok == [False]
        assert "keeping level full" in caplog.text

    def test_a_fifo_at_start_and_then_a_good_file(self, tmp_path: Path) -> None:
        control = tmp_path / "level.json"
        os.mkfifo(control)
        metrics = RecordingMetrics()
        rt = ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=control), metrics)
        for _ in range(3):
            (out,) = rt.handle([RawRequest(SAMPLE)])
            assert isinstance(out, Success) and out.level == "full"
        assert metrics.control_problems == ["unsafe"] and metrics.control_ok == [False]
        control.unlink()
        write_control_file(control, ControlState("small", 1))
        (out,) = rt.handle([RawRequest(SAMPLE)])
        assert isinstance(out, Success) and out.level == "small"
        assert metrics.control_ok == [False, True]

    def test_a_symlink_keeps_the_level(self, tmp_path: Path) -> None:
        control = tmp_path / "level.json"
        rt, metrics, control = runtime(tmp_path)
        write_control_file(control, ControlState("medium", 1))
        rt.handle([RawRequest(SAMPLE)])
        decoy = tmp_path / "decoy.json"
        write_control_file(decoy, ControlState("small", 5))
        control.unlink()
        control.symlink_to(decoy)
        (out,) = rt.handle([RawRequest(SAMPLE)])
        assert isinstance(out, Success) and out.level == "medium"
        assert metrics.control_problems[-1] == "unsafe"


def test_stage_times_flush_once_per_interval_and_clear() -> None:
    from elastiserve_serve.runtime.stages import StageTimes

    stages = StageTimes(interval_s=1.0)
    stages.add("forward", 0.25)
    assert stages.due(10.0) == {}  # the first call starts the interval
    stages.add("decode", 0.5)
    assert stages.due(10.5) == {}
    assert stages.due(11.0) == {"forward": 0.25, "decode": 0.5}
    assert stages.due(12.0) == {}  # nothing new since
    assert stages.totals == {"decode": 0.5, "forward": 0.25, "postprocess": 0.0}


def test_runtime_reports_decode_forward_and_postprocess_seconds() -> None:
    ticks = iter(float(i) for i in range(10_000))
    metrics = RecordingMetrics()
    rt = ElasticRuntime(tiny_levels(), RuntimeSettings(control_file=None), metrics,
                        clock=lambda: next(ticks))
    rt.stages.interval_s = 0.0
    body = json.dumps(torch.rand(1, 1, 8, 8).tolist())
    rt.handle([RawRequest(body), RawRequest(body)])
    rt.handle([RawRequest(body)])
    # Every stage took whole clock ticks; all three were reported, forward once per batch.
    assert set(metrics.stages) == {"decode", "forward", "postprocess"}
    assert all(seconds >= 1.0 for seconds in metrics.stages.values())
    assert rt.stages.batches == metrics.batches == 2
    assert metrics.stages == rt.stages.totals
