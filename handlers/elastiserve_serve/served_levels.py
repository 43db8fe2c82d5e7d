"""Which levels a server serves, kept beside its control file so that writers can check.

Why: ``elastiserve level set`` must refuse a level the served bundle does not have (a typo
would otherwise be written, and every worker would log it and keep its level, while the
command said it switched). The writer has no bundle of its own to look at, so ``elastiserve
serve`` records the served bundle's level names next to the control file it configures
(``level.json`` -> ``level.levels.json``), and the command reads them from there or from a
``--bundle``/``--mar`` it is given. Stdlib only apart from the bundle manifest's parser.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from .runtime.safe_files import UnsafeFileError, read_small_file

__all__ = [
    "ServedLevelsError",
    "levels_file_for",
    "levels_of_bundle",
    "levels_of_mar",
    "read_served_levels",
    "write_served_levels",
]

MAX_LEVELS_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 16 << 20


class ServedLevelsError(ValueError):
    """The served levels cannot be known (no record, a broken one, an unreadable bundle)."""


def levels_file_for(control_file: Path) -> Path:
    """Where ``serve`` records the levels behind ``control_file``."""
    stem = control_file.name[: -len(".json")] if control_file.name.endswith(".json") \
        else control_file.name
    return control_file.with_name(f"{stem}.levels.json")


def _names(body: object, where: str) -> tuple[str, ...]:
    names = body.get("levels") if isinstance(body, dict) else None
    if not isinstance(names, list) or not names or not all(
            isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ServedLevelsError(f"{where}: no list of distinct level names")
    return tuple(names)


def write_served_levels(control_file: Path, names: Sequence[str]) -> Path:
    """Record ``names`` (narrowest first) beside ``control_file``, atomically."""
    path = levels_file_for(control_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"levels": list(names)}, handle)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_served_levels(control_file: Path) -> tuple[str, ...] | None:
    """The names ``serve`` recorded for ``control_file``; ``None`` when it recorded none."""
    path = levels_file_for(control_file)
    try:
        data = read_small_file(path, MAX_LEVELS_BYTES)
    except FileNotFoundError:
        return None
    except (UnsafeFileError, OSError) as error:
        raise ServedLevelsError(f"{path}: {error}") from None
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ServedLevelsError(f"{path}: not JSON") from None
    return _names(body, str(path))


def _manifest_names(data: bytes, where: str) -> tuple[str, ...]:
    from elastiserve_store.errors import ManifestError
    from elastiserve_store.manifest import Manifest

    try:
        return Manifest.from_dict(json.loads(data.decode("utf-8"))).level_names
    except (UnicodeDecodeError, ValueError, RecursionError, ManifestError) as error:
        raise ServedLevelsError(f"{where}: not a bundle manifest ({error})") from None


def levels_of_bundle(directory: Path) -> tuple[str, ...]:
    """The level names of the bundle in ``directory`` (its manifest only, no weights)."""
    path = directory / "manifest.json"
    try:
        data = read_small_file(path, MAX_MANIFEST_BYTES)
    except (UnsafeFileError, OSError) as error:
        raise ServedLevelsError(f"{directory} is not a bundle: {error}") from None
    return _manifest_names(data, str(path))


def levels_of_mar(mar: Path) -> tuple[str, ...]:
    """The level names of the bundle inside a ``.mar``."""
    try:
        with zipfile.ZipFile(mar) as archive:
            info = archive.getinfo("manifest.json")
            if info.file_size > MAX_MANIFEST_BYTES:
                raise ServedLevelsError(f"{mar}: manifest.json is too large")
            data = archive.read(info)
    except KeyError:
        raise ServedLevelsError(f"{mar}: no manifest.json inside") from None
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ServedLevelsError(f"{mar}: not a readable .mar ({error})") from None
    return _manifest_names(data, f"{mar}!manifest.json")
