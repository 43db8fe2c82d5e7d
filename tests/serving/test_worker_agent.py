"""The level agent carries the workers' bounds (status.workerBounds) into the control file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from elastiserve_serve.level_agent import CallableSource, Decision, LevelAgent
from elastiserve_serve.level_source_k8s import decision_from_object
from elastiserve_serve.runtime.control import ControlState, read_control_file


def model(status: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"allowRequestPinning": True}, "status": {"activeLevel": 3, **status}}


@pytest.mark.parametrize(
    ("status", "floor", "objective"),
    [
        ({"workerBounds": {"floor": 1, "objectiveMs": 150}}, 1, 150.0),
        ({"workerBounds": {"floor": 0, "objectiveMs": 12.5}}, 0, 12.5),
        ({}, None, None),  # loops: Operator
        ({"workerBounds": "x"}, None, None),
        ({"workerBounds": {"floor": -1, "objectiveMs": 150}}, None, None),
        ({"workerBounds": {"floor": True, "objectiveMs": 150}}, None, None),
        ({"workerBounds": {"floor": 1}}, None, None),
        ({"workerBounds": {"floor": 1, "objectiveMs": 0}}, None, None),
        ({"workerBounds": {"floor": 1, "objectiveMs": "150"}}, None, None),
        ({"workerBounds": {"floor": 1, "objectiveMs": float("nan")}}, None, None),
        ({"workerBounds": {"floor": 1, "objectiveMs": 1e12}}, None, None),
    ],
)
def test_decision_carries_valid_bounds_only(
    status: dict[str, Any], floor: int | None, objective: float | None
) -> None:
    decision = decision_from_object(model(status))
    assert decision == Decision(3, True, floor, objective)


def test_a_node_cap_lowers_the_ceiling_and_keeps_the_floor() -> None:
    obj = model({"workerBounds": {"floor": 1, "objectiveMs": 150}, "nodeCaps": {"n1": 2}})
    assert decision_from_object(obj, "n1") == Decision(2, True, 1, 150.0)


def test_agent_writes_bounds_and_rewrites_when_only_they_change(tmp_path: Path) -> None:
    path = tmp_path / "level.json"
    decisions = iter([
        Decision(3, None, 0, 150.0),
        Decision(3, None, 0, 150.0),  # unchanged: no write
        Decision(3, None, 1, 150.0),  # minLevel raised
        Decision(3, None, None, None),  # loops switched to Operator
    ])
    agent = LevelAgent(CallableSource(lambda: next(decisions)), path)
    states = [agent.sync_once() for _ in range(4)]
    assert [s.generation if s else None for s in states] == [1, 1, 2, 3]
    assert read_control_file(path) == ControlState(3, 3)
    assert states[2] == ControlState(3, 2, None, 1, 150.0)
