"""``elastiserve archive`` and ``elastiserve level``: the .mar holds no pickle; levels are set."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from elastiserve.cli import main
from elastiserve_serve.cli_serve import mar_registrations
from elastiserve_serve.runtime.control import read_control_file
from elastiserve_serve.served_levels import write_served_levels

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


@pytest.mark.parametrize(("flag", "expected"), [([], True), (["--no-trace-levels"], False)])
def test_archive_traces_levels_unless_told_not_to(tmp_path: Path, flag: list[str],
                                                  expected: bool) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    assert main(["archive", str(bundle), "--name", "m", "--export-path", str(tmp_path / "s"),
                 *flag]) == 0
    with zipfile.ZipFile(tmp_path / "s" / "m.mar") as mar:
        config = yaml.safe_load(mar.read("model-config.yaml"))
    assert config["handler"]["trace_levels"] is expected


def test_archive_refuses_corrupt_bundle(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    (bundle / "weights.safetensors").write_bytes(b"\x00" * 64)
    assert main(["archive", str(bundle), "--name", "m", "--export-path",
                 str(tmp_path / "s")]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 1
    assert not (tmp_path / "s" / "m.mar").exists()


def test_level_set_bumps_generation(tmp_path: Path) -> None:
    path = tmp_path / "level.json"
    bundle = make_bundle(tmp_path / "bundle")
    served = ["--control-file", str(path), "--bundle", str(bundle)]
    assert main(["level", "set", "L0", *served]) == 0
    assert main(["level", "set", "L1", *served, "--deny-pin"]) == 0
    state = read_control_file(path)
    assert state is not None and (state.level, state.generation, state.allow_pin) == (
        "L1", 2, False
    )


def test_level_set_accepts_an_index(tmp_path: Path) -> None:
    path = tmp_path / "level.json"
    write_served_levels(path, ("L0", "L1", "L2"))  # as `elastiserve serve` records them
    assert main(["level", "set", "0", "--control-file", str(path)]) == 0
    state = read_control_file(path)
    assert state is not None and (state.level, state.generation) == (0, 1)


def test_serve_registers_a_mar_under_the_given_name() -> None:
    assert mar_registrations([Path("/x/model.mar")], "resnet20") == ["resnet20=model.mar"]
    assert mar_registrations([Path("/x/a.mar"), Path("/y/b.mar")], None) == ["a=a.mar", "b=b.mar"]


def test_serve_refuses_one_name_for_several_mars(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["serve", "--mar", str(tmp_path / "a.mar"), "--mar", str(tmp_path / "b.mar"),
                 "--name", "m", "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert "--name needs exactly one --mar" in capsys.readouterr().err
