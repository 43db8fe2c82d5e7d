"""The level agent: writes on change only, bumps the generation, survives a failing source."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from elastiserve_serve.level_agent import CallableSource, Decision, LevelAgent, set_level
from elastiserve_serve.runtime.control import ControlFileReader, read_control_file


def test_writes_on_change_and_keeps_file_when_source_fails(tmp_path: Path) -> None:
    path = tmp_path / "shm" / "level.json"
    answers: list[Decision | Exception | None] = [
        Decision("L2"), Decision("L2"), Decision("L0", allow_pin=True), None, RuntimeError("x"),
        Decision("L1"),
    ]

    def source() -> Decision | None:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    agent = LevelAgent(CallableSource(source), path)
    states = [agent.sync_once() for _ in range(6)]
    assert [(s.level, s.generation) if s else None for s in states] == [
        ("L2", 1), ("L2", 1), ("L0", 2), ("L0", 2), ("L0", 2), ("L1", 3),
    ]
    assert read_control_file(path) == states[-1]


def test_restarted_agent_continues_generations(tmp_path: Path) -> None:
    path = tmp_path / "level.json"
    set_level(path, "a")
    set_level(path, "b")
    agent = LevelAgent(CallableSource(lambda: Decision("c")), path)
    state = agent.sync_once()
    assert state is not None and state.generation == 3


def test_run_loop_reaches_reader(tmp_path: Path) -> None:
    path = tmp_path / "level.json"
    decision = [Decision("a")]
    agent = LevelAgent(CallableSource(lambda: decision[0]), path)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop, 0.01))
    thread.start()
    reader = ControlFileReader(path)
    try:
        deadline = time.monotonic() + 5
        while (s := reader.current()) is None or s.level != "a":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        decision[0] = Decision("b")
        while (s := reader.current()) is None or s.level != "b":
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
