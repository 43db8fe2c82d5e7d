"""The width-and-replicas simulator: its JSON, the HPA baseline's algorithm, and the
policies' ordering on the quick (short) traces. Nothing here checks timings."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from elastiserve_operator.observation import Observation

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("joint_sim", ROOT / "benchmarks" / "joint_sim.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["joint_sim"] = module
    spec.loader.exec_module(module)
    return module


joint_sim = _load()
FIELDS = ("violation_s", "mean_accuracy", "replica_seconds", "scaling_actions")


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("joint_sim") / "joint_sim.json"
    assert joint_sim.main(["--quick", "--quiet", "--out", str(out)]) == 0
    document: dict[str, Any] = json.loads(out.read_text())
    return document


class TestQuickRun:
    def test_json_shape(self, quick: dict[str, Any]) -> None:
        assert set(quick["traces"]) == {"diurnal", "bursty", "ramp"}
        for runs in quick["traces"].values():
            for policy in ("hpa", "width", "joint"):
                for name in FIELDS:
                    value = runs[policy][name]
                    assert isinstance(value, int | float) and math.isfinite(value), name
                assert runs[policy]["replica_seconds"] > 0
                assert len(runs[policy]["per_seed"]) == len(quick["seeds"])
        assert quick["seeds"] == [1]
        assert quick["settings"]["quick"] is True
        assert set(quick["targets"]) == set(quick["traces"])
        assert set(quick["hpa_targets"]["diurnal"]) == {"0.6", "0.7"}

    def test_the_hpa_always_serves_the_full_level(self, quick: dict[str, Any]) -> None:
        for runs in quick["traces"].values():
            assert runs["hpa"]["mean_accuracy"] == pytest.approx(86.1)
            assert runs["hpa"]["level_switches"] == 0

    def test_ordering(self, quick: dict[str, Any]) -> None:
        for name, runs in quick["traces"].items():
            hpa, width, joint = runs["hpa"], runs["width"], runs["joint"]
            # Narrowing first beats waiting for pods on the SLO...
            assert joint["violation_s"] < hpa["violation_s"], name
            # ...and replicas give back the accuracy a fixed fleet narrows away.
            assert width["mean_accuracy"] < joint["mean_accuracy"] <= hpa["mean_accuracy"], name
            # A fixed fleet sized for the narrowest level is the cheapest and never scales.
            assert width["replica_seconds"] < joint["replica_seconds"], name
            assert width["scaling_actions"] == 0
            assert joint["scaling_actions"] > 0 and hpa["scaling_actions"] > 0

    def test_deterministic_for_a_seed(self) -> None:
        world = joint_sim.World()
        spec = joint_sim.build_spec()
        profile = joint_sim.profile_from_spec(spec.model.profile)
        policy = joint_sim.parse_replica_policy({"enabled": True, "max": 1000})
        trace = joint_sim.make_trace("bursty", 20_000.0, 900, 7)
        again = joint_sim.make_trace("bursty", 20_000.0, 900, 7)
        assert trace == again
        first = [joint_sim.simulate(trace, c, profile, world, 0.1, 7)
                 for c in joint_sim.controllers(spec, profile, policy, world, trace)]
        second = [joint_sim.simulate(trace, c, profile, world, 0.1, 7)
                  for c in joint_sim.controllers(spec, profile, policy, world, trace)]
        assert first == second
        assert trace != joint_sim.make_trace("bursty", 20_000.0, 900, 8)


class TestHpaBaseline:
    """The HPA's algorithm with its default behaviour (autoscaling/v2)."""

    def hpa(self, replicas: int) -> Any:
        controller = joint_sim.HpaController(target_rps=100.0, world=joint_sim.World(),
                                             level=3)
        controller.start(100.0 * replicas, 0.0)
        assert controller.replicas == replicas
        return controller

    @staticmethod
    def step(controller: Any, rate: float | None, now: float) -> int:
        _, replicas = controller.step(Observation(0.05, rate, now, None, None), 0, None, now)
        return int(replicas)

    def test_within_tolerance_nothing_moves(self) -> None:
        controller = self.hpa(10)
        assert self.step(controller, 1090.0, 15.0) == 10
        assert self.step(controller, 1100.1, 30.0) == 12  # ratio 1.1001 > 1 + 0.1

    def test_scale_up_is_limited_to_double_or_four_pods_per_15_s(self) -> None:
        small = self.hpa(1)
        assert self.step(small, 5000.0, 15.0) == 5  # max(1 + 4, 2 * 1)
        assert self.step(small, 5000.0, 20.0) == 5  # the period's budget is spent
        assert self.step(small, 5000.0, 30.0) == 10  # max(5 + 4, 2 * 5)
        big = self.hpa(10)
        assert self.step(big, 5000.0, 15.0) == 20  # max(10 + 4, 2 * 10)

    def test_scale_down_takes_the_highest_recommendation_of_300_s(self) -> None:
        controller = self.hpa(10)
        assert self.step(controller, 2000.0, 15.0) == 20
        assert self.step(controller, 500.0, 30.0) == 20
        assert self.step(controller, 500.0, 300.0) == 20  # 20 recommended at 15 s
        # The HPA keeps recommendations strictly after now - 300 s.
        assert self.step(controller, 500.0, 315.0) == 5

    def test_no_metric_no_change(self) -> None:
        controller = self.hpa(10)
        assert self.step(controller, None, 15.0) == 10
        assert self.step(controller, math.nan, 30.0) == 10

    def test_bounds(self) -> None:
        controller = self.hpa(1)
        assert self.step(controller, 0.0, 15.0) == 1
        big = self.hpa(999)
        assert self.step(big, 10_000_000.0, 15.0) == 1000


class TestExplain:
    """The diagnostic that says where the joint policy loses against the HPA."""

    def test_accounts_for_every_violation_second(self, quick: dict[str, Any]) -> None:
        text = joint_sim.explain("ramp", 1, quick=True)
        head, *rest = text.splitlines()
        violations = int(head.split("joint ")[1].split(" violation")[0])
        assert violations == quick["traces"]["ramp"]["joint"]["per_seed"][0]["violation_s"]
        listed = rest[1:rest.index("replica-seconds beyond the HPA's, by the joint's "
                                   "replica cause:")]
        assert sum(int(line.split()[0]) for line in listed) == violations

    def test_bad_arguments_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert joint_sim.main(["--explain", "weekly", "1"]) == 2
        assert "TRACE one of diurnal, bursty, ramp" in capsys.readouterr().err
