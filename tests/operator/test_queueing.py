"""The queueing estimate and the profile it reads."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest

from elastiserve_operator.profile import LevelProfile, profile_from_manifest, profile_from_spec
from elastiserve_operator.queueing import erlang_c, p95_latency_s
from elastiserve_operator.spec import ProfileEntry


class TestErlangC:
    @pytest.mark.parametrize("load", [0.1, 0.5, 0.9])
    def test_one_server_waits_with_probability_rho(self, load: float) -> None:
        assert erlang_c(1, load) == pytest.approx(load)

    def test_two_servers_textbook_value(self) -> None:
        # c = 2, a = 1 (rho = 0.5): C = a^2 / (2! (1 - rho)) / (1 + a + a^2/(2 (1 - rho))) = 1/3
        assert erlang_c(2, 1.0) == pytest.approx(1 / 3)

    def test_large_server_counts_do_not_overflow(self) -> None:
        assert 0.0 < erlang_c(500, 480.0) < 1.0

    def test_edges(self) -> None:
        assert erlang_c(4, 0.0) == 0.0
        assert erlang_c(4, 4.0) == 1.0
        with pytest.raises(ValueError):
            erlang_c(0, 1.0)


class TestP95:
    def test_light_load_is_the_service_time(self) -> None:
        assert p95_latency_s(1.0, service_time_s=0.01, capacity_rps=100.0, servers=1) == 0.01

    def test_mm1_tail_with_exponential_service(self) -> None:
        # M/M/1 wait: P(W > t) = rho exp(-(mu - lambda) t), so t95 = ln(rho / 0.05) / (mu - lambda)
        got = p95_latency_s(80.0, service_time_s=0.01, capacity_rps=100.0, servers=1,
                            service_cv2=1.0)
        assert got == pytest.approx(0.01 + math.log(0.8 / 0.05) / 20.0)

    def test_deterministic_service_halves_the_wait(self) -> None:
        exp = p95_latency_s(80.0, service_time_s=0.01, capacity_rps=100.0, servers=1,
                            service_cv2=1.0)
        det = p95_latency_s(80.0, service_time_s=0.01, capacity_rps=100.0, servers=1)
        assert det - 0.01 == pytest.approx((exp - 0.01) / 2)

    def test_grows_with_rate_and_is_infinite_at_capacity(self) -> None:
        values = [p95_latency_s(r, service_time_s=0.01, capacity_rps=200.0, servers=2)
                  for r in (10, 100, 150, 190, 199)]
        assert values == sorted(values)
        assert p95_latency_s(200.0, service_time_s=0.01, capacity_rps=200.0, servers=2) == math.inf

    @pytest.mark.parametrize(
        "kwargs",
        [{"service_time_s": 0.0, "capacity_rps": 1.0}, {"service_time_s": 1.0, "capacity_rps": 0.0},
         {"service_time_s": 1.0, "capacity_rps": 1.0, "quantile": 1.0}],
    )
    def test_refuses_nonsense(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError):
            p95_latency_s(1.0, servers=1, **kwargs)


class TestProfile:
    def test_service_time_or_capacity_implies_the_other(self) -> None:
        assert LevelProfile("a", service_time_s=0.01).service_and_capacity(2) == (0.01, 200.0)
        assert LevelProfile("b", capacity_rps=50.0).service_and_capacity(2) == (0.04, 50.0)
        assert LevelProfile("c", 0.01, 300.0).service_and_capacity(2) == (0.01, 300.0)

    @pytest.mark.parametrize("kwargs", [{}, {"service_time_s": -1.0}, {"capacity_rps": 0.0}])
    def test_needs_a_positive_number(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            LevelProfile("x", **kwargs)

    def test_reads_the_store_manifest_spelling(self) -> None:
        manifest = {
            "levels": [
                {"name": "w100", "index": 1, "latency_ms_b1": 8.0, "accuracy": 93.5, "macs": 40},
                {"name": "w50", "index": 0, "latency_ms_b1": 3.0, "accuracy": 0.92},
            ]
        }
        profile = profile_from_manifest(manifest)
        assert [p.name for p in profile] == ["w50", "w100"]
        assert profile[1].service_time_s == pytest.approx(0.008)
        assert profile[1].accuracy == pytest.approx(0.935)
        assert profile[1].macs == 40

    def test_reads_capacity_spellings(self) -> None:
        profile = profile_from_manifest({"levels": [{"throughput_rps": 10}, {"capacity_rps": 5}]})
        assert [p.capacity_rps for p in profile] == [10.0, 5.0]
        assert profile[0].name == "level-0"

    def test_manifest_without_levels(self) -> None:
        with pytest.raises(ValueError):
            profile_from_manifest({"levels": []})

    def test_cr_profile_is_in_milliseconds(self) -> None:
        (level,) = profile_from_spec([ProfileEntry("w", 8.0, None, 0.9, None)])
        assert level.service_time_s == pytest.approx(0.008)


def test_operator_modules_import_without_torch_or_kopf() -> None:
    """The operator image has no torch; the pure core must not even need kopf."""
    code = (
        "import sys\n"
        "import elastiserve_operator.policy, elastiserve_operator.simulate\n"
        "import elastiserve_operator.signals.prometheus, elastiserve_operator.signals.nodes\n"
        "bad = [m for m in ('torch', 'kopf', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
