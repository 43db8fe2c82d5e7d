"""Build a TorchServe ``.mar`` from a nested bundle directory, with no pickled model inside.

The archive holds the bundle's ``manifest.json`` and ``weights.safetensors`` (the handler loads
them through ``load_bundle``, which checks the SHA-256 before reading tensors), a
``model-config.yaml`` (workers, batching, handler settings) and a two-line handler module that
subclasses the installed :class:`~elastiserve_serve.torchserve_handler.ElastiserveHandler`: the
code lives in the installed package, not in the archive. There is no ``--serialized-file``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ENTRY_MODULE = "elastiserve_entry"
ENTRY_SOURCE = '''"""TorchServe entry point from `elastiserve archive`; the code is installed."""

from elastiserve_serve.torchserve_handler import ElastiserveHandler


class ElastiserveEntry(ElastiserveHandler):
    """TorchServe's loader wants exactly one class defined in the handler module."""
'''
BUNDLE_FILES = ("manifest.json", "weights.safetensors")
CONFIG_NAME = "model-config.yaml"
"""The archive's members are exactly these, the entry module and TorchServe's manifest:
:mod:`.archive_check` refuses any other archive before it is served."""


@dataclass(frozen=True)
class ArchiveSpec:
    """Batching and worker settings written to ``model-config.yaml``."""

    workers: int = 1
    batch_size: int = 8
    max_batch_delay_ms: int = 5
    response_timeout_s: int = 30
    handler: Mapping[str, Any] = field(default_factory=dict)

    def model_config(self) -> dict[str, Any]:
        if self.workers < 1 or self.batch_size < 1 or self.max_batch_delay_ms < 0:
            raise ValueError("workers and batch size must be >= 1, batch delay >= 0")
        return {
            "minWorkers": self.workers,
            "maxWorkers": self.workers,
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s,
            "handler": dict(self.handler),
        }


def build_archive(
    bundle_dir: Path, export_dir: Path, name: str, spec: ArchiveSpec, *, version: str = "1.0",
    force: bool = False,
) -> Path:
    """Verify the bundle, then write ``export_dir/name.mar``; return its path."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    from elastiserve_store.bundle import load_bundle

    load_bundle(bundle_dir)  # refuse a corrupt bundle now rather than at model load
    export_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="elastiserve-archive-") as tmp:
        work = Path(tmp)
        entry = work / f"{ENTRY_MODULE}.py"
        entry.write_text(ENTRY_SOURCE)
        config = work / CONFIG_NAME
        config.write_text(yaml.safe_dump(spec.model_config(), sort_keys=False))
        extra = ",".join(str(bundle_dir / f) for f in BUNDLE_FILES)
        generate_model_archive(
            ModelArchiverConfig(
                model_name=name,
                handler=str(entry),
                version=version,
                extra_files=extra,
                export_path=str(export_dir),
                config_file=str(config),
                force=force,
            )
        )
    return export_dir / f"{name}.mar"
