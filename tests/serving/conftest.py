"""One real TorchServe (2 workers, batching on) shared by every integration test in this folder.

Starting TorchServe costs ~10 s of a shared CPU, so it is started once per session; tests that
change the control file put the level back when they finish.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.level_agent import set_level
from elastiserve_serve.ts_server import TorchServe, run_torchserve

from .bundles import make_bundle

MODEL = "elastic"


@dataclass(frozen=True)
class Served:
    server: TorchServe
    control_file: Path

    @property
    def predict_url(self) -> str:
        return f"{self.server.inference_url}/predictions/{MODEL}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.keys.inference}"}

    def set_level(self, level: str, _order: int = 0, allow_pin: bool | None = None) -> None:
        """Write the next generation (tests share one server, so generations must only grow)."""
        set_level(self.control_file, level, allow_pin)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    # make test installs Java when it is missing; a missing java here must fail, not skip.
    assert shutil.which("java") is not None, "TorchServe needs Java 17 on PATH"
    root = tmp_path_factory.mktemp("torchserve")
    bundle = make_bundle(root / "bundle")
    control = root / "shm" / "level.json"
    spec = ArchiveSpec(
        workers=2,
        batch_size=4,
        max_batch_delay_ms=5,
        handler={"control_file": str(control), "allow_pin": True, "threads": 1},
    )
    build_archive(bundle, root / "store", MODEL, spec)
    with run_torchserve(
        root / "run", root / "store", [f"{MODEL}={MODEL}.mar"], min_ready_workers=2
    ) as server:
        yield Served(server, control)
