"""The policy simulator: its Prometheus arithmetic, its determinism, and the comparison."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import pytest

from elastiserve_operator.profile import LevelProfile
from elastiserve_operator.simulate import (
    PolicyController,
    SimConfig,
    StaticController,
    histogram_quantile,
    ramp_trace,
    simulate,
    standard_trace,
)
from elastiserve_operator.spec import ElasticModelSpec, parse_spec

# A slow model keeps the request count (and the test's run time) small: full level 40 ms,
# 50 rps with two workers; the narrowest level serves 200 rps.
PROFILE = tuple(
    LevelProfile(name, service_time_s=0.040 / factor, accuracy=acc)
    for name, factor, acc in (
        ("w25", 4.0, 0.905), ("w50", 2.4, 0.923), ("w75", 1.5, 0.931), ("w100", 1.0, 0.935)
    )
)


def spec(mode: str = "Predictive") -> ElasticModelSpec:
    return parse_spec(
        {
            "model": {"levelCount": 4, "source": {"localPath": "/sim.mar"}},
            "objective": {"p95Ms": 250},
            "serving": {"workers": 2},
            "policy": {"mode": mode},
        }
    )


class TestHistogramQuantile:
    BUCKETS = (0.1, 0.2, 0.5)

    @pytest.mark.parametrize(
        ("counts", "expected"),
        [
            ((100, 0, 0, 0), 0.095),  # rank 95 of 100 in the first bucket: 0 + 0.1 * 0.95
            ((50, 50, 0, 0), 0.19),  # rank 95: 45 into the second bucket of 50
            ((0, 0, 10, 0), 0.485),
            ((90, 0, 0, 10), 0.5),  # in +Inf: the highest finite edge, as Prometheus does
            ((0, 0, 0, 0), None),
        ],
    )
    def test_interpolates_like_prometheus(
        self, counts: tuple[int, ...], expected: float | None
    ) -> None:
        result = histogram_quantile(0.95, self.BUCKETS, counts)
        assert result == (None if expected is None else pytest.approx(expected))


class TestTraces:
    def test_standard_trace_reaches_twice_the_capacity(self) -> None:
        trace = standard_trace(100.0, 1800)
        assert len(trace) == 1800
        assert max(trace) == pytest.approx(200.0)
        assert trace[0] == pytest.approx(50.0)

    def test_short_trace_keeps_the_shape(self) -> None:
        assert sorted(set(standard_trace(10.0, 60))) == sorted(set(standard_trace(10.0, 1800)))

    def test_ramp_stays_between_its_bounds(self) -> None:
        trace = ramp_trace(100.0)
        assert min(trace) == pytest.approx(30.0) and max(trace) == pytest.approx(190.0)


class TestSimulation:
    def test_same_seed_same_result(self) -> None:
        trace = standard_trace(50.0, 120)
        runs = [
            simulate(trace, PROFILE, spec(), PolicyController("p", spec(), PROFILE))
            for _ in range(2)
        ]
        assert runs[0] == runs[1]

    def test_light_load_meets_the_objective_at_full_width(self) -> None:
        result = simulate([20.0] * 120, PROFILE, spec(), StaticController("full", 3))
        assert result.violation_pct == 0.0
        assert result.mean_acc == pytest.approx(93.5)
        assert result.rejected_pct == 0.0

    def test_overload_is_rejected_past_the_queue_limit(self) -> None:
        result = simulate(
            [100.0] * 60, PROFILE, spec(), StaticController("full", 3), SimConfig(queue_limit=10)
        )
        assert result.rejected_pct > 30.0
        assert result.violation_pct > 90.0

    def test_policy_without_metrics_keeps_its_start_level(self) -> None:
        # No traffic: p95 is NaN and the rate 0, so the policy must hold the initial level.
        result = simulate([0.0] * 60, PROFILE, spec(), PolicyController("p", spec(), PROFILE))
        assert result.switches == 0
        assert math.isnan(result.p95_ms)


class TestComparison:
    def test_predictive_beats_both_static_baselines(self) -> None:
        trace = standard_trace(50.0, 600)
        full = simulate(trace, PROFILE, spec(), StaticController("full", 3))
        narrowest = simulate(trace, PROFILE, spec(), StaticController("narrowest", 0))
        predictive = simulate(trace, PROFILE, spec(), PolicyController("p", spec(), PROFILE))
        assert predictive.violation_pct < full.violation_pct / 4
        assert predictive.mean_acc > narrowest.mean_acc + 1.0
        assert predictive.switches >= 2


def _policy_sim() -> Any:
    """``benchmarks/policy_sim.py`` as a module (benchmarks/ is not a package)."""
    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / "policy_sim.py"
    loaded = importlib.util.spec_from_file_location("policy_sim", script)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def _manifest(tmp_path: Path, accuracies: list[float | None]) -> Path:
    levels = [
        {"name": f"L{i}", "latency_ms_b1": 40.0 / (len(accuracies) - i), "accuracy": acc}
        for i, acc in enumerate(accuracies)
    ]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"schema_version": 1, "architecture": {"name": "tiny"},
                                "levels": levels}))
    return path


def _one_line_refusal(capsys: pytest.CaptureFixture[str], code: int) -> str:
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_policy_sim_refuses_to_run_without_a_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    line = _one_line_refusal(capsys, _policy_sim().main(["--out", str(out)]))
    assert "--profile is required" in line
    assert not out.exists()


def test_policy_sim_refuses_a_profile_without_measured_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(tmp_path, [0.6, None, 0.8])
    out = tmp_path / "out.json"
    code = _policy_sim().main(["--profile", str(manifest), "--out", str(out)])
    line = _one_line_refusal(capsys, code)
    assert "no measured accuracy for level(s) L1" in line
    assert not out.exists()


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]", '{"levels": []}'])
def test_policy_sim_refuses_unreadable_profiles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    path = tmp_path / "profile.json"
    if content is not None:
        path.write_text(content)
    code = _policy_sim().main(["--profile", str(path), "--out", str(tmp_path / "o.json")])
    assert str(path) in _one_line_refusal(capsys, code)


def test_policy_sim_records_which_profile_it_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _manifest(tmp_path, [0.61, 0.7, 0.74])
    out = tmp_path / "out.json"
    code = _policy_sim().main(
        ["--profile", str(manifest), "--out", str(out), "--duration", "60", "--objective-ms", "250"]
    )
    assert code == 0
    document = json.loads(out.read_text())
    profile = document["profile"]
    assert profile["source"] == str(manifest)
    assert profile["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert profile["architecture"] == "tiny"
    assert [lv["accuracy"] for lv in profile["levels"]] == [0.61, 0.7, 0.74]
    capsys.readouterr()
