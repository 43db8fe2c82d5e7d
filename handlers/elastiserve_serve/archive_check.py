"""Refuse a ``.mar`` that is not what ``elastiserve archive`` writes, before any of it runs.

Why: a ``.mar`` is code. TorchServe imports the handler module it names, puts the extracted
directory first on the worker's ``sys.path`` (so any ``.py`` inside can stand in for a module
imported later: ``torch.py``, a Pillow plugin), and honours settings in its
``model-config.yaml`` that install packages or start other programs. Whoever may hand the
operator a model must not thereby run code in the serving pod. ``elastiserve archive`` writes
exactly five members with a fixed two-line handler and no serialized model, so anything else is
refused:

* :func:`check_archive` (``elastiserve serve --mar``, through :mod:`.mar_overrides`, before the
  archive reaches TorchServe's model store): the member list, each member's size, the handler's
  bytes, the manifest's keys and the model config's keys;
* :func:`check_model_dir` (the handler's ``initialize``, for an archive that reached TorchServe
  some other way): the extracted directory holds only those files (and the entry module's
  ``__pycache__``), none of them a link, and the same manifest and handler.
"""

from __future__ import annotations

import json
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .archive import BUNDLE_FILES, CONFIG_NAME, ENTRY_MODULE, ENTRY_SOURCE
from .runtime.text import plain

__all__ = [
    "ALLOWED_CONFIG_KEYS",
    "EXPECTED_MEMBERS",
    "MANIFEST",
    "MarError",
    "check_archive",
    "check_config",
    "check_manifest",
    "check_model_dir",
]

MANIFEST = "MAR-INF/MANIFEST.json"
ENTRY_FILE = f"{ENTRY_MODULE}.py"
EXPECTED_MEMBERS = frozenset({MANIFEST, ENTRY_FILE, CONFIG_NAME, *BUNDLE_FILES})
ALLOWED_TOP_KEYS = frozenset({"createdOn", "runtime", "model", "archiverVersion"})
ALLOWED_MODEL_KEYS = frozenset({"modelName", "handler", "modelVersion", "configFile"})
ALLOWED_CONFIG_KEYS = frozenset(
    {"minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout", "handler"}
)
"""What ``elastiserve archive`` and ``serve`` write; TorchServe knows more (``useVenv``,
``parallelType``, ``torchrun``...), which would install packages or start programs."""
MAX_SMALL_MEMBER = 64 * 1024
"""The handler, the TorchServe manifest and the model config are a few hundred bytes."""
MAX_BUNDLE_MANIFEST = 16 * 1024 * 1024
MAX_WEIGHTS = 16 * 1024 * 1024 * 1024
"""Bounds on the uncompressed sizes the archive declares (zipfile never reads past them)."""


class MarError(ValueError):
    """The archive cannot be served: not a zip ``.mar``, broken, or not what
    ``elastiserve archive`` writes."""


def _limit(name: str) -> int:
    if name == "weights.safetensors":
        return MAX_WEIGHTS
    if name == "manifest.json":
        return MAX_BUNDLE_MANIFEST
    return MAX_SMALL_MEMBER


def _names(found: set[str] | frozenset[str]) -> str:
    shown = sorted(plain(n, 60) for n in found)[:5]
    return ", ".join(shown) + (", ..." if len(found) > 5 else "")


def check_manifest(manifest: Any) -> dict[str, Any]:
    """TorchServe's ``MAR-INF/MANIFEST.json`` as ``elastiserve archive`` writes it."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise MarError(f"{MANIFEST} has no model section")
    extra = set(manifest) - ALLOWED_TOP_KEYS
    if extra:
        raise MarError(f"{MANIFEST} has keys elastiserve does not write: {_names(extra)}")
    if manifest.get("runtime", "python") != "python":
        raise MarError(f"{MANIFEST}: runtime must be python")
    model: dict[str, Any] = manifest["model"]
    extra = set(model) - ALLOWED_MODEL_KEYS
    if extra:
        raise MarError(f"{MANIFEST} names what elastiserve does not archive: {_names(extra)} "
                       "(a serialized model, requirements or extensions)")
    if model.get("handler") != ENTRY_FILE:
        raise MarError(f"{MANIFEST}: the handler must be {ENTRY_FILE}, the one "
                       "elastiserve archive writes")
    if model.get("configFile", CONFIG_NAME) != CONFIG_NAME:
        raise MarError(f"{MANIFEST}: the model config must be {CONFIG_NAME}")
    return manifest


def check_config(config: Any) -> Mapping[str, Any]:
    """The archive's ``model-config.yaml``: a mapping of the keys elastiserve writes."""
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise MarError(f"{CONFIG_NAME} in the archive is not a mapping")
    extra = {str(k) for k in config} - ALLOWED_CONFIG_KEYS
    if extra:
        raise MarError(f"{CONFIG_NAME} sets what elastiserve does not: {_names(extra)}")
    handler = config.get("handler")
    if handler is not None and not isinstance(handler, Mapping):
        raise MarError(f"{CONFIG_NAME}: handler: is not a mapping")
    return config


def check_archive(archive: zipfile.ZipFile) -> dict[str, Any]:
    """Every check on an open ``.mar``; returns its TorchServe manifest. Reads only the three
    small members, never the weights."""
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(names) != len(set(names)):
        raise MarError("the archive lists a member twice")
    found = set(names)
    if found != EXPECTED_MEMBERS:
        extra, missing = found - EXPECTED_MEMBERS, EXPECTED_MEMBERS - found
        parts = []
        if extra:
            parts.append(f"unexpected {_names(extra)}")
        if missing:
            parts.append(f"missing {_names(missing)}")
        raise MarError("not an archive elastiserve archive writes: " + "; ".join(parts))
    for info in infos:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise MarError(f"{plain(info.filename, 60)} is a symbolic link")
        if info.file_size > _limit(info.filename):
            raise MarError(f"{plain(info.filename, 60)}: {info.file_size} bytes uncompressed, "
                           f"more than {_limit(info.filename)}")
    if archive.read(ENTRY_FILE) != ENTRY_SOURCE.encode():
        raise MarError(f"{ENTRY_FILE} is not the handler elastiserve archive writes")
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except (ValueError, RecursionError) as error:
        raise MarError(f"{MANIFEST} is not JSON: {type(error).__name__}") from None
    check_manifest(manifest)
    try:
        config = yaml.safe_load(archive.read(CONFIG_NAME))
    except (yaml.YAMLError, ValueError, RecursionError) as error:
        raise MarError(f"{CONFIG_NAME} in the archive is not YAML: "
                       f"{type(error).__name__}") from None
    check_config(config)
    return dict(manifest)


def check_model_dir(model_dir: Path, manifest: Any) -> None:
    """The directory TorchServe extracted the archive to holds exactly what the archive may.

    ``manifest`` is TorchServe's parsed ``MANIFEST.json`` (``context.manifest``); ``None``
    reads the file from the directory.
    """
    allowed = {ENTRY_FILE, CONFIG_NAME, *BUNDLE_FILES, "MAR-INF", "__pycache__"}
    found = {entry.name for entry in model_dir.iterdir()}
    if found - allowed:
        raise MarError(f"{model_dir} holds files elastiserve archive does not write: "
                       f"{_names(found - allowed)}")
    if ENTRY_FILE not in found:
        raise MarError(f"{model_dir} has no {ENTRY_FILE}")
    for name in found:
        mode = (model_dir / name).lstat().st_mode
        want_dir = name in ("MAR-INF", "__pycache__")
        if stat.S_ISLNK(mode) or (stat.S_ISDIR(mode) != want_dir) or not (
                stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise MarError(f"{model_dir}/{name} is not a plain "
                           f"{'directory' if want_dir else 'file'}")
    if "MAR-INF" in found:
        inside = {entry.name for entry in (model_dir / "MAR-INF").iterdir()}
        if inside - {"MANIFEST.json"}:
            raise MarError(f"{model_dir}/MAR-INF holds {_names(inside - {'MANIFEST.json'})}")
    if "__pycache__" in found:
        cached = {entry.name for entry in (model_dir / "__pycache__").iterdir()}
        strays = {n for n in cached if not n.startswith(f"{ENTRY_MODULE}.")}
        if strays:
            raise MarError(f"{model_dir}/__pycache__ holds {_names(strays)}")
    if (model_dir / ENTRY_FILE).read_bytes() != ENTRY_SOURCE.encode():
        raise MarError(f"{ENTRY_FILE} is not the handler elastiserve archive writes")
    if manifest is None:
        path = model_dir / MANIFEST
        manifest = json.loads(path.read_text()) if path.is_file() else None
    if manifest is not None:
        check_manifest(manifest)
