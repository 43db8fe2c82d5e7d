"""The control file: atomic writes, cheap cached reads, and keeping the last level on failure."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ------------------------------------------------------------------ hostile control files


@pytest.mark.parametrize(
    "data",
    [b'{"level": ' + b"9" * 5000 + b"}", b'{"level": 1, "generation": ' + b"9" * 5000 + b"}",
     b"[" * 2000 + b"]" * 2000, b'{"level": "\xff"}', b'{"level": 1e999}', b"NaN"],
    ids=["huge-level", "huge-generation", "deep", "bad-utf8", "inf", "nan"],
)
def test_parse_refuses_what_python_refuses_to_convert(data: bytes) -> None:
    # Before: ValueError (digit limit) and RecursionError escaped as other exceptions.
    with pytest.raises(ControlFileError):
        parse_control(data)


def _reader(path: Path) -> tuple[ControlFileReader, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    return ControlFileReader(path, lambda kind, msg: problems.append((kind, msg))), problems


class TestHostileFiles:
    """A link, a FIFO, a directory, a huge or unreadable file: keep the level, say so once."""

    def _good_then(self, tmp_path: Path) -> tuple[ControlFileReader, list[tuple[str, str]],
                                                   Path]:
        path = tmp_path / "level.json"
        reader, problems = _reader(path)
        write_control_file(path, ControlState("b", 1))
        assert reader.current() == ControlState("b", 1) and reader.healthy
        path.unlink()
        return reader, problems, path

    def test_a_symlink_is_not_followed(self, tmp_path: Path) -> None:
        reader, problems, path = self._good_then(tmp_path)
        target = tmp_path / "elsewhere.json"
        write_control_file(target, ControlState("c", 9))
        path.symlink_to(target)
        assert reader.current() == ControlState("b", 1)
        assert problems[-1][0] == "unsafe" and "link" in problems[-1][1]
        assert not reader.healthy
        with pytest.raises(ControlFileError):
            read_control_file(path)

    def test_a_fifo_neither_blocks_nor_crashes(self, tmp_path: Path) -> None:
        reader, problems, path = self._good_then(tmp_path)
        os.mkfifo(path)
        result: list[ControlState | None] = []
        thread = threading.Thread(target=lambda: result.append(reader.current()), daemon=True)
        thread.start()
        thread.join(5.0)
        assert not thread.is_alive(), "reading the control file blocked on a FIFO"
        assert result == [ControlState("b", 1)]
        assert problems[-1][0] == "unsafe" and "FIFO" in problems[-1][1]

    def test_a_directory_or_a_huge_file_keeps_the_level(self, tmp_path: Path) -> None:
        reader, problems, path = self._good_then(tmp_path)
        path.mkdir()
        assert reader.current() == ControlState("b", 1)
        path.rmdir()
        path.write_bytes(b" " * 100_000)
        assert reader.current() == ControlState("b", 1)
        assert [kind for kind, _ in problems] == ["unsafe", "unsafe"]

    def test_an_unreadable_file_keeps_the_level(self, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        # chmod 000 stops no root test runner; the read failing is what matters.
        reader, problems, path = self._good_then(tmp_path)
        write_control_file(path, ControlState("c", 2))

        def denied(*_: object) -> bytes:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr("elastiserve_serve.runtime.control.read_small_file", denied)
        assert reader.current() == ControlState("b", 1)
        assert problems[-1][0] == "unreadable"

    def test_each_problem_is_reported_once_not_per_batch(self, tmp_path: Path) -> None:
        reader, problems, path = self._good_then(tmp_path)
        path.write_bytes(b"garbage")
        for _ in range(50):
            assert reader.current() == ControlState("b", 1)
        assert [kind for kind, _ in problems] == ["invalid"]

    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.binary(max_size=300) | st.text(max_size=60).map(str.encode))
    def test_any_bytes_keep_the_last_level(self, tmp_path: Path, data: bytes) -> None:
        path = tmp_path / "fuzz" / "level.json"
        reader, _ = _reader(path)
        write_control_file(path, ControlState("b", 1))
        reader.current()
        os.unlink(path)
        path.write_bytes(data)
        state = reader.current()
        assert state is not None
        assert state == ControlState("b", 1) or state.generation >= 1
