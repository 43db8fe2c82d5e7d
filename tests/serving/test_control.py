"""The control file: atomic writes, cheap cached reads, and keeping the last level on failure."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from elastiserve_serve.runtime.control import (
    ControlFileError,
    ControlFileReader,
    ControlState,
    parse_control,
    read_control_file,
    write_control_file,
)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "level.json"
    state = ControlState("medium", 3, allow_pin=True)
    write_control_file(path, state)
    assert read_control_file(path) == state
    assert os.stat(path).st_size < 64
    assert not [p for p in path.parent.iterdir() if p.name != "level.json"]


def test_index_round_trips_as_a_number(tmp_path: Path) -> None:
    path = tmp_path / "level.json"
    write_control_file(path, ControlState(2, 1))
    assert b'"level":2' in path.read_bytes()
    assert read_control_file(path) == ControlState(2, 1)
    assert parse_control(b'{"level": 0}') == ControlState(0, 0)


def test_missing_file_reads_none(tmp_path: Path) -> None:
    assert read_control_file(tmp_path / "nope.json") is None


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'{"level": ""}', b'{"level": -1}', b'{"level": true}',
     b'{"level": 1.5}', b'{"level": null}', b'{"level": "a", "generation": -1}',
     b'{"level": "a", "generation": true}', b'{"level": "a", "allow_pin": "yes"}',
     b'{"level": "' + b"x" * 5000 + b'"}'],
)
def test_parse_rejects(data: bytes) -> None:
    with pytest.raises(ControlFileError):
        parse_control(data)


class TestReader:
    def test_sees_every_replacement(self, tmp_path: Path) -> None:
        path = tmp_path / "level.json"
        reader = ControlFileReader(path)
        assert reader.current() is None
        for generation, level in enumerate(["a", "b", "a", "c"], start=1):
            write_control_file(path, ControlState(level, generation))
            state = reader.current()
            assert state is not None and (state.level, state.generation) == (level, generation)

    def test_keeps_last_good_state(self, tmp_path: Path) -> None:
        path = tmp_path / "level.json"
        reader = ControlFileReader(path)
        write_control_file(path, ControlState("b", 1))
        assert reader.current() == ControlState("b", 1)
        path.write_bytes(b"garbage")
        assert reader.current() == ControlState("b", 1)
        assert reader.last_error
        path.unlink()
        assert reader.current() == ControlState("b", 1)
        write_control_file(path, ControlState("c", 2))
        assert reader.current() == ControlState("c", 2)
        assert reader.last_error is None

    def test_ignores_older_generation(self, tmp_path: Path) -> None:
        path = tmp_path / "level.json"
        reader = ControlFileReader(path)
        write_control_file(path, ControlState("b", 5))
        reader.current()
        write_control_file(path, ControlState("a", 4))
        assert reader.current() == ControlState("b", 5)

    def test_concurrent_writer_never_tears(self, tmp_path: Path) -> None:
        path = tmp_path / "level.json"
        write_control_file(path, ControlState("a" * 40, 0))
        stop = threading.Event()

        def writer() -> None:
            generation = 1
            while not stop.is_set():
                write_control_file(path, ControlState("ab"[generation % 2] * 40, generation))
                generation += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            reader = ControlFileReader(path)
            for _ in range(3000):
                state = reader.current()
                assert state is not None and state.level in ("a" * 40, "b" * 40)
        finally:
            stop.set()
            thread.join()
        assert reader.last_error is None or "does not exist" not in reader.last_error
