"""The level control file: how a serving process learns, within a batch, which level is active.

Why a file: the decision is made outside the pod (the operator writes it into the
``ElasticModel`` status). Serving workers must not hold Kubernetes credentials, must not restart
or reload to switch, and must keep the last level when the control path is down. A tiny file on
a shared ``emptyDir`` (``medium: Memory``, i.e. tmpfs) written by one in-pod agent meets all of
that: the agent is the only holder of (read-only) credentials, every TorchServe worker reads the
same file, and a missing or broken file simply means "keep what you have".

Format: one small JSON object, ``{"level": <index or "name">, "generation": <int>, "allow_pin":
<bool>}``, written atomically (temporary file in the same directory, then ``rename``), so a
reader sees the old file or the new one and never a torn write. JSON rather than packed bytes
because it costs nothing measurable at a few dozen bytes and an operator can ``cat`` it.

Cost per batch: :meth:`ControlFileReader.current` does one ``stat`` and re-reads only when the
inode, mtime or size changed (a rename always yields a new inode, so two writes within one mtime
tick are still seen). That is a microsecond-scale syscall against milliseconds of inference, which
is why the reader checks on every batch instead of polling on a timer.

Level: an integer index into the bundle's ordered levels (0 = narrowest) or a level name. The
operator decides indexes (``status.activeLevel``) and the level agent writes the index as it is:
the agent then needs no copy of the bundle's names, which it used to get wrong (the CR knew
``L<k>``, training wrote ``L<k>-<pct>pct``). The runtime resolves the index against the levels it
loaded, the only place that knows them for sure. Names stay accepted for people
(``elastiserve level set L2-100pct``) and for the local loop.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAX_CONTROL_BYTES = 4096


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

    def to_json(self) -> bytes:
        body: dict[str, object] = {"level": self.level, "generation": self.generation}
        if self.allow_pin is not None:
            body["allow_pin"] = self.allow_pin
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def parse_control(data: bytes) -> ControlState:
    """Validate the file's bytes; raise :class:`ControlFileError` on anything unexpected."""
    if len(data) > MAX_CONTROL_BYTES:
        raise ControlFileError(f"control file larger than {MAX_CONTROL_BYTES} bytes")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ControlFileError(f"control file is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise ControlFileError("control file must hold a JSON object")
    level = body.get("level")
    generation = body.get("generation", 0)
    allow_pin = body.get("allow_pin")
    if isinstance(level, bool) or not isinstance(level, (int, str)) or level in ("", None):
        raise ControlFileError("control file needs 'level': an index or a non-empty name")
    if isinstance(level, int) and level < 0:
        raise ControlFileError("a level index must not be negative")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ControlFileError("'generation' must be a non-negative integer")
    if allow_pin is not None and not isinstance(allow_pin, bool):
        raise ControlFileError("'allow_pin' must be a boolean when present")
    return ControlState(level, generation, allow_pin)


def write_control_file(path: Path, state: ControlState) -> None:
    """Replace ``path`` atomically with ``state`` (readers never see a partial file)."""
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
    """One-shot read; ``None`` when the file does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse_control(data)


class ControlFileReader:
    """Cached reader: a ``stat`` per call, a read only when the file was replaced.

    On any problem (file missing, unreadable, invalid) it keeps returning the last good state and
    remembers the error in :attr:`last_error`, so the control path failing never changes what is
    being served.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._state: ControlState | None = None
        self.last_error: str | None = None

    def current(self) -> ControlState | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.last_error = f"{self.path} does not exist"
            return self._state
        except OSError as err:
            self.last_error = f"cannot stat {self.path}: {err}"
            return self._state
        signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        if signature == self._signature:
            return self._state
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_CONTROL_BYTES + 1)
            state = parse_control(data)
        except (OSError, ControlFileError) as err:
            self.last_error = str(err)
            return self._state
        self._signature = signature
        if self._state is None or state.generation >= self._state.generation:
            self._state = state
            self.last_error = None
        else:
            self.last_error = (
                f"ignored generation {state.generation} older than {self._state.generation}"
            )
        return self._state
