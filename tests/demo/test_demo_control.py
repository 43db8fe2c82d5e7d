"""The demo's local loop writes the control file as the operator's level agent does: the level
is the ceiling and, unless ``spec.policy.loops`` is ``Operator``, the workers' floor and
objective go beside it so they choose each batch's level."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastiserve.local.loop import PolicyLoop
from elastiserve_operator.profile import LevelProfile
from elastiserve_operator.spec import parse_spec
from elastiserve_serve.runtime.control import read_control_file

PROFILE = tuple(LevelProfile(name, capacity_rps=rps)
                for name, rps in (("L0", 400.0), ("L1", 200.0), ("L2", 100.0)))


def _loop(tmp_path: Path, loops: str) -> PolicyLoop:
    spec = parse_spec({
        "model": {"levelCount": 3, "source": {"pvc": {"claimName": "m", "path": "m.mar"}}},
        "objective": {"p95Ms": 250},
        "levels": {"minLevel": 1},
        "policy": {"loops": loops},
    })
    return PolicyLoop(spec, PROFILE, tmp_path / "level.json", source=None,  # type: ignore[arg-type]
                      latency_query="q", request_rate_query="r")


@pytest.mark.parametrize("loops", ["Both", "Worker"])
def test_worker_loops_get_floor_and_objective(tmp_path: Path, loops: str) -> None:
    loop = _loop(tmp_path, loops)
    loop.start()
    state = read_control_file(loop.control_file)
    assert state is not None
    assert (state.level, state.floor, state.objective_ms, state.generation) == (
        "L2", "L1", 250.0, 1)
    loop.start()  # a later write takes the next generation
    again = read_control_file(loop.control_file)
    assert again is not None and again.generation == 2 and again.floor == "L1"


def test_operator_only_writes_the_level_alone(tmp_path: Path) -> None:
    loop = _loop(tmp_path, "Operator")
    loop.start()
    state = read_control_file(loop.control_file)
    assert state is not None
    assert (state.level, state.floor, state.objective_ms) == ("L2", None, None)
