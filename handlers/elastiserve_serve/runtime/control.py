"""The level control file: how a serving process learns, within a batch, which level is active.

Why a file: the decision is made outside the pod (the operator writes it into the
``ElasticModel`` status). Serving workers must not hold Kubernetes credentials, must not restart
or reload to switch, and must keep the last level when the control path is down. A tiny file on
a shared ``emptyDir`` (``medium: Memory``, i.e. tmpfs) written by one in-pod agent meets all of
that: the agent is the only holder of (read-only) credentials, every TorchServe worker reads the
same file, and a missing or broken file simply means "keep what you have".

Format: one small JSON object, ``{"level": <index or "name">, "generation": <int>, "allow_pin":
<bool>, "floor": <index or "name">, "objective_ms": <number>}`` (``floor`` and ``objective_ms``
optional), written atomically (temporary file in the same directory, then ``rename``), so a
reader sees the old file or the new one and never a torn write. JSON rather than packed bytes
because it costs nothing measurable at a few dozen bytes and an operator can ``cat`` it.

Cost per batch: :meth:`ControlFileReader.current` does one ``stat`` and re-reads only when the
inode, mtime or size changed (a rename always yields a new inode, so two writes within one mtime
tick are still seen). That is a microsecond-scale syscall against milliseconds of inference, which
is why the reader checks on every batch instead of polling on a timer.

Hostile files: the file is read through :func:`.safe_files.read_small_file` (no link followed,
no blocking on a FIFO, a regular file of at most :data:`MAX_CONTROL_BYTES`), and anything in
it that is not a valid state (invalid UTF-8, numbers Python refuses to convert, deep nesting)
is a :class:`ControlFileError`. A reader never raises: it keeps the last good state and reports
each new problem once (:attr:`ControlFileReader.on_problem`), so the worker says so in its log
and metrics and never crash-loops on a bad file.

Level: an integer index into the bundle's ordered levels (0 = narrowest) or a level name. The
operator decides indexes (``status.activeLevel``) and the level agent writes the index as it is:
the agent then needs no copy of the bundle's names, which it used to get wrong (the CR knew
``L<k>``, training wrote ``L<k>-<pct>pct``). The runtime resolves the index against the levels it
loaded, the only place that knows them for sure. Names stay accepted for people
(``elastiserve level set L2-100pct``) and for the local loop.

Bounds for the per-batch choice (:mod:`.batch_level`): ``level`` is the *ceiling* (the
operator's decision, lowered by node caps), ``floor`` the narrowest level a worker may pick on
its own and ``objective_ms`` the latency objective it picks against. A file without ``floor``
or without ``objective_ms`` (written by an older agent, by ``elastiserve level set`` or for a
model whose ``spec.policy.loops`` is ``Operator``) means floor = ceiling: every unpinned request
gets exactly ``level``, as before.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from .safe_files import UnsafeFileError, read_small_file

MAX_CONTROL_BYTES = 4096
PIN_HEADER = "x-elastiserve-level"
"""The request header that pins a level (and the response header naming the level that
answered); here, with no torch import, so that the gateway can share it."""
MAX_INDEX_DIGITS = 6
"""A level index written as a string is at most this many ASCII digits (no bundle has a
million levels); longer digit strings are refused before ``int()``, which refuses past 4300."""
ARRIVAL_HEADER = "x-elastiserve-arrival-ns"
"""The request header holding when the request entered the pod (``time.time_ns()`` as decimal
digits), stamped by the gateway in front of TorchServe: TorchServe's frontend passes client
headers to its workers but no arrival or queue time, and the per-batch choice needs how long a
request waited before it reached the worker. The gateway replaces whatever a client sent."""
MAX_OBJECTIVE_MS = 600_000.0


class ControlFileError(ValueError):
    """The control file exists but does not hold a valid state."""


@dataclass(frozen=True)
class ControlState:
    """What the controller wants served: a level, a monotonic generation, and whether pins pass.

    ``level`` is an index (0 = narrowest) or a level name; see the module docstring.
    """

    level: int | str
    generation: int
    allow_pin: bool | None = None  # None: leave it to the handler's configuration
    floor: int | str | None = None  # None: no per-batch choice (floor = level)
    objective_ms: float | None = None  # None: no per-batch choice

    def to_json(self) -> bytes:
        body: dict[str, object] = {"level": self.level, "generation": self.generation}
        if self.allow_pin is not None:
            body["allow_pin"] = self.allow_pin
        if self.floor is not None:
            body["floor"] = self.floor
        if self.objective_ms is not None:
            body["objective_ms"] = self.objective_ms
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def level_index(names: Sequence[str], ref: int | str) -> int:
    """The position in ``names`` that ``ref`` designates: a name, else an index (0 = narrowest).

    A string of ASCII digits that is not itself a name reads as an index (so ``--level 2``
    works from a shell); anything else, including digits Python's ``int()`` would choke on
    (``"²"``, thousands of them), raises ``KeyError``.
    """
    if isinstance(ref, str):
        if ref in names:
            return list(names).index(ref)
        if not (ref.isascii() and ref.isdigit()) or len(ref) > MAX_INDEX_DIGITS:
            raise KeyError(ref)
        ref = int(ref)
    if isinstance(ref, bool) or not isinstance(ref, int) or not 0 <= ref < len(names):
        raise KeyError(ref)
    return ref


def parse_control(data: bytes) -> ControlState:
    """Validate the file's bytes; raise :class:`ControlFileError` on anything unexpected."""
    if len(data) > MAX_CONTROL_BYTES:
        raise ControlFileError(f"control file larger than {MAX_CONTROL_BYTES} bytes")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        # ValueError also covers integers past Python's digit limit, RecursionError deep nesting.
        raise ControlFileError(f"control file is not JSON: {type(err).__name__}") from None
    if not isinstance(body, dict):
        raise ControlFileError("control file must hold a JSON object")
    level = body.get("level")
    generation = body.get("generation", 0)
    allow_pin = body.get("allow_pin")
    if not _is_level_ref(level):
        raise ControlFileError("control file needs 'level': an index or a non-empty name")
    if isinstance(level, int) and level < 0:
        raise ControlFileError("a level index must not be negative")
    floor = body.get("floor")
    if floor is not None and (not _is_level_ref(floor) or (isinstance(floor, int) and floor < 0)):
        raise ControlFileError("'floor' must be a non-negative index or a non-empty name")
    objective = body.get("objective_ms")
    if objective is not None and (
        isinstance(objective, bool) or not isinstance(objective, (int, float))
        or not 0 < objective <= MAX_OBJECTIVE_MS  # NaN fails this too
    ):
        raise ControlFileError(f"'objective_ms' must be a number in (0, {MAX_OBJECTIVE_MS:g}]")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ControlFileError("'generation' must be a non-negative integer")
    if allow_pin is not None and not isinstance(allow_pin, bool):
        raise ControlFileError("'allow_pin' must be a boolean when present")
    return ControlState(level, generation, allow_pin, floor,
                        float(objective) if objective is not None else None)


def _is_level_ref(value: object) -> TypeGuard[int | str]:
    return not isinstance(value, bool) and isinstance(value, (int, str)) and value != ""


def write_control_file(path: Path, state: ControlState) -> None:
    """Replace ``path`` atomically with ``state`` (readers never see a partial file).

    ``rename`` replaces whatever is at ``path`` (a link or a FIFO someone put there included)
    without following it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(state.to_json())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_control_file(path: Path) -> ControlState | None:
    """One-shot read; ``None`` when the file does not exist.

    Raises :class:`ControlFileError` for a link, a FIFO, an oversized or an invalid file.
    """
    try:
        data = read_small_file(path, MAX_CONTROL_BYTES)
    except FileNotFoundError:
        return None
    except UnsafeFileError as err:
        raise ControlFileError(str(err)) from None
    return parse_control(data)


ProblemHook = Callable[[str, str], None]
"""Called with (kind, message) once per new problem; kinds: ``missing``, ``unsafe``,
``unreadable``, ``invalid``, ``stale``."""


class ControlFileReader:
    """Cached reader: an ``lstat`` per call, a read only when the file was replaced.

    On any problem (file missing, a link or FIFO, unreadable, invalid, an older generation) it
    keeps returning the last good state, remembers the error in :attr:`last_error` and calls
    :attr:`on_problem` once for that version of the file, so the control path failing never
    changes what is being served and a broken file costs one log line, not one per batch.
    """

    def __init__(self, path: Path, on_problem: ProblemHook | None = None) -> None:
        self.path = path
        self.on_problem = on_problem
        self._signature: tuple[int, ...] | None = None
        self._state: ControlState | None = None
        self.last_error: str | None = None
        self.problems = 0
        self.healthy = False
        """Whether the file as it is now held a state that was taken."""

    def _problem(self, kind: str, message: str) -> ControlState | None:
        self.last_error = message
        self.healthy = False
        self.problems += 1
        if self.on_problem is not None:
            self.on_problem(kind, message)
        return self._state

    def current(self) -> ControlState | None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if self._signature == (-1,):
                return self._state
            self._signature = (-1,)
            return self._problem("missing", f"{self.path} does not exist")
        except OSError as err:
            failed: tuple[int, ...] = (-2, err.errno or 0)
            if self._signature == failed:
                return self._state
            self._signature = failed
            return self._problem("unreadable", f"cannot stat {self.path}: {err.strerror}")
        # ctime too: a chmod that makes an unreadable file readable changes only that.
        signature = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size,
                     st.st_mode)
        if signature == self._signature:
            return self._state
        self._signature = signature
        try:
            data = read_small_file(self.path, MAX_CONTROL_BYTES)
            state = parse_control(data)
        except UnsafeFileError as err:
            return self._problem("unsafe", str(err))
        except ControlFileError as err:
            return self._problem("invalid", str(err))
        except OSError as err:
            return self._problem("unreadable", f"cannot read {self.path}: {err.strerror}")
        if self._state is not None and state.generation < self._state.generation:
            return self._problem(
                "stale",
                f"ignored generation {state.generation} older than {self._state.generation}",
            )
        self._state = state
        self.last_error = None
        self.healthy = True
        return self._state
