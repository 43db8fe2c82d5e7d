"""Serve-time settings for a ready ``.mar``: a rewritten copy of its ``model-config.yaml``.

Why rewrite the archive: TorchServe 0.12 takes a model's workers, batch size and batch delay
from the archive's ``model-config.yaml`` whenever it sets them (``ModelServer.initModelStore``
and ``ModelManager.createModel`` consult ``config.properties``' ``models=`` only for values the
archive leaves out or sets to 0), and every archive ``elastiserve archive`` writes sets them. The
handler reads its own settings (control file, pinning) from the same file's ``handler:``
section. So an ``ElasticModel``'s ``spec.serving`` and ``allowRequestPinning`` reach TorchServe
and the handler only through that file: ``elastiserve serve --mar`` copies the archive into its
model store with the file replaced, and leaves the user's archive untouched.

``config.properties``' ``models=`` cannot express a zero delay either: TorchServe reads 0 (or
less) as "unset" there and in the yaml and falls back to 100 ms, so a requested 0 ms becomes
1 ms here (the closest delay TorchServe honours).

Pure part: :func:`override_config` (a mapping in, a mapping out). I/O part: :func:`rewrite_mar`,
which first refuses any archive that is not what ``elastiserve archive`` writes
(:func:`.archive_check.check_archive`), so a foreign handler never reaches TorchServe.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .archive_check import MANIFEST, MarError, check_archive, check_config

__all__ = ["DEFAULT_CONFIG_NAME", "MarError", "ServeOverrides", "override_config", "read_config",
           "rewrite_mar"]

DEFAULT_CONFIG_NAME = "model-config.yaml"
MIN_TORCHSERVE_DELAY_MS = 1
"""TorchServe 0.12 treats a batch delay of 0 as unset (then 100 ms): the smallest it keeps."""


@dataclass(frozen=True)
class ServeOverrides:
    """What ``elastiserve serve`` sets over the archive's own values; ``None`` keeps them.

    ``handler`` is merged key by key over the archive's ``handler:`` section, so settings the
    serve command does not know (``threads``, ``trace_levels``...) stay as archived.
    """

    workers: int | None = None
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    handler: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.max_batch_delay_ms is not None and self.max_batch_delay_ms < 0:
            raise ValueError("max batch delay must not be negative")


def override_config(config: Mapping[str, Any], overrides: ServeOverrides) -> dict[str, Any]:
    """``config`` (a parsed ``model-config.yaml``) with ``overrides`` applied.

    Workers set both ``minWorkers`` and ``maxWorkers``: the queueing model counts a fixed number
    of servers, and TorchServe never scales between the two on its own anyway.
    """
    out = dict(config)
    if overrides.workers is not None:
        out["minWorkers"] = overrides.workers
        out["maxWorkers"] = overrides.workers
    if overrides.batch_size is not None:
        out["batchSize"] = overrides.batch_size
    if overrides.max_batch_delay_ms is not None:
        out["maxBatchDelay"] = max(overrides.max_batch_delay_ms, MIN_TORCHSERVE_DELAY_MS)
    if overrides.handler:
        handler = out.get("handler") or {}
        if not isinstance(handler, Mapping):
            raise MarError("the archive's model-config.yaml has a handler: that is not a mapping")
        out["handler"] = {**handler, **overrides.handler}
    return out


def read_config(mar: Path) -> Mapping[str, Any]:
    """The checked ``model-config.yaml`` of an archive ``elastiserve archive`` wrote."""
    try:
        with zipfile.ZipFile(mar) as archive:
            manifest = check_archive(archive)
            name = str(manifest["model"].get("configFile") or DEFAULT_CONFIG_NAME)
            return check_config(yaml.safe_load(archive.read(name)))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, KeyError) as error:
        raise MarError(f"{mar}: broken archive: {error}") from None


def rewrite_mar(source: Path, target: Path, overrides: ServeOverrides) -> dict[str, Any]:
    """Copy ``source`` to ``target`` with its model config overridden; return the new config.

    The archive must be one ``elastiserve archive`` wrote (:func:`.archive_check.check_archive`:
    its members, handler, manifest and config keys); every other member is copied byte for
    byte (same compression). Only zip archives (``torch-model-archiver``'s default format)
    are accepted.
    """
    try:
        is_zip = zipfile.is_zipfile(source)
    except OSError as error:
        raise MarError(f"{source}: {error.strerror or error}") from None
    if not source.is_file() or not is_zip:
        raise MarError(f"{source}: not a zip .mar (only the default archive format can take "
                       "serve-time settings)")
    try:
        with zipfile.ZipFile(source) as archive:
            return _rewrite(archive, target, overrides)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise MarError(f"{source}: broken archive: {error}") from None


def _rewrite(archive: zipfile.ZipFile, target: Path, overrides: ServeOverrides) -> dict[str, Any]:
    manifest = check_archive(archive)
    name = str(manifest["model"].get("configFile") or DEFAULT_CONFIG_NAME)
    current = check_config(yaml.safe_load(archive.read(name)))
    config = override_config(current, overrides)
    check_config(config)
    manifest["model"]["configFile"] = name
    replaced = {name, MANIFEST}
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as out:
            for info in archive.infolist():
                if info.filename in replaced:
                    continue
                with archive.open(info) as src, out.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            out.writestr(MANIFEST, json.dumps(manifest, indent=2))
            out.writestr(name, yaml.safe_dump(config, sort_keys=False))
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)  # no half-written archive left in the model store
        raise
    return config
