"""The elastic_vs_static benchmark's pure pieces: capacity calibration, the offered-rate
counter it exports for the policy's rate query, the oracle and the kept earlier results."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from elastiserve_operator.queueing import p95_latency_s
from elastiserve_operator.signals.prometheus import render_query
from elastiserve_operator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "elastic_vs_static", ROOT / "benchmarks" / "elastic_vs_static.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["elastic_vs_static"] = module
    spec.loader.exec_module(module)
    return module


BENCH = _load()


@pytest.mark.parametrize("slo_rps", [20.0, 125.0, 290.0])
def test_calibrated_capacity_makes_the_model_predict_the_objective_at_the_slo_rate(
        slo_rps: float) -> None:
    capacity = BENCH.model_capacity(slo_rps, 0.1)
    assert capacity > slo_rps
    predicted = p95_latency_s(slo_rps, service_time_s=1 / capacity, capacity_rps=capacity,
                              servers=1)
    assert predicted == pytest.approx(0.1, rel=1e-6)
    # Just under the SLO rate the model fits the objective, just over it it does not.
    assert p95_latency_s(0.95 * slo_rps, service_time_s=1 / capacity, capacity_rps=capacity,
                         servers=1) < 0.1
    assert p95_latency_s(1.02 * slo_rps, service_time_s=1 / capacity, capacity_rps=capacity,
                         servers=1) > 0.1


def test_offered_counter_counts_due_requests_and_carries_over_between_runs() -> None:
    counter = BENCH.OfferedCounter()
    assert counter.value() == 0
    counter.begin([0.0, 0.5, 3600.0], time.monotonic() - 1.0)
    assert counter.value() == 2  # the third is due in an hour
    counter.end()
    assert counter.value() == 3  # a finished run counts whole
    counter.begin([0.0], time.monotonic())
    assert counter.value() == 4  # monotonic, as a Prometheus counter must be


def test_offered_counter_is_served_in_the_prometheus_text_format() -> None:
    counter = BENCH.OfferedCounter()
    counter.begin([0.0, 0.0, 0.0], time.monotonic())
    with BENCH.serve_offered(counter) as address:
        text = httpx.get(f"http://{address}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sample = families[BENCH.OFFERED_METRIC.removesuffix("_total")].samples[0]
    assert sample.value == 3
    assert sample.labels == {"model_name": BENCH.MODEL}


def test_policy_spec_is_a_valid_cr_reading_the_offered_rate() -> None:
    names = ["L0", "L1", "L2", "L3"]
    raw = BENCH.policy_spec(4, 100, [300.0, 240.0, 165.0, 140.0], names, [0.79, 0.81, 0.84, 0.86])
    spec = parse_spec(raw)
    assert spec.policy.mode.value == "Predictive"
    assert spec.objective.request_rate_query is not None
    query = render_query(spec.objective.request_rate_query, namespace="bench", name="elastic",
                         model="elastic")
    assert BENCH.OFFERED_METRIC in query and 'namespace="bench"' in query
    assert f"[{BENCH.WINDOW_S}s]" in query


def test_oracle_serves_each_phase_at_the_most_accurate_level_that_covers_it() -> None:
    phases = [(10.0, 0.5, 0.5), (10.0, 2.0, 2.0)]  # 5 C*s then 20 C*s
    # SLO rates 300 / 100 (C = 100): the 2C phase only fits the narrow level.
    assert BENCH.oracle_accuracy(phases, [300.0, 100.0], [0.80, 0.90]) == pytest.approx(82.0)
    assert BENCH.oracle_accuracy(phases, [150.0, 100.0], [0.80, 0.90]) is None
    assert BENCH.share_above(phases, 1.0) == pytest.approx(80.0)


def test_replaced_result_is_kept_without_its_timeline() -> None:
    previous = {"bundle": {"weights_sha256": "ab"}, "accuracy": {"L0": 0.8},
                "trace": {"phases_x_capacity": [[1, 1, 1]], "seconds": 1, "requests": 5,
                          "share_above_c_pct": 0.0},
                "runs": {"elastic": {"violation_pct": 1.0}}, "timeline": {"elastic": {}},
                "objective_ms": 100}
    entry = BENCH.earlier_entry(previous, "run 5: before")
    assert entry["note"] == "run 5: before"
    assert entry["bundle_weights_sha256"] == "ab"
    assert entry["runs"] == previous["runs"] and entry["objective_ms"] == 100
    assert "timeline" not in entry


@pytest.mark.parametrize(("args", "message"), [
    (["--scale", "0"], "--scale must be > 0"),
    (["--objective-ms", "-5"], "--objective-ms must be > 0"),
])
def test_bad_arguments_are_refused_before_anything_starts(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        BENCH.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
