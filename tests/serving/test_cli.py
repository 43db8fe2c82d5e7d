"""``elastiserve archive`` and ``elastiserve level``: the .mar holds no pickle; levels are set."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from elastiserve.cli import main
from elastiserve_serve.runtime.control import read_control_file
from elastiserve_store.errors import BundleError

from .bundles import make_bundle


def test_archive_contains_bundle_and_config_but_no_pickle(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    code = main(["archive", str(bundle), "--name", "m", "--export-path", str(tmp_path / "s"),
                 "--workers", "2", "--batch-size", "4", "--allow-pin", "--trace-levels"])
    assert code == 0
    with zipfile.ZipFile(tmp_path / "s" / "m.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert {"manifest.json", "weights.safetensors", "elastiserve_entry.py"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".bin", ".ckpt"))]
    assert "serializedFile" not in manifest["model"]
    assert config["minWorkers"] == 2 and config["batchSize"] == 4
    assert config["handler"]["allow_pin"] is True
    assert config["handler"]["trace_levels"] is True


def test_archive_refuses_corrupt_bundle(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "weights.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(BundleError):
        main(["archive", str(bundle), "--name", "m", "--export-path", str(tmp_path / "s")])
    assert not (tmp_path / "s" / "m.mar").exists()


def test_level_set_bumps_generation(tmp_path: Path) -> None:
    path = tmp_path / "level.json"
    assert main(["level", "set", "L0", "--control-file", str(path)]) == 0
    assert main(["level", "set", "L1", "--control-file", str(path), "--deny-pin"]) == 0
    state = read_control_file(path)
    assert state is not None and (state.level, state.generation, state.allow_pin) == (
        "L1", 2, False
    )


def test_level_set_accepts_an_index(tmp_path: Path) -> None:
    path = tmp_path / "level.json"
    assert main(["level", "set", "0", "--control-file", str(path)]) == 0
    state = read_control_file(path)
    assert state is not None and (state.level, state.generation) == ("0", 1)
