"""``elastiserve train``: runs, resumes after an interruption, writes report and plot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from elastiserve.cli import main
from elastiserve_store import load_bundle
from elastiserve_train import pipeline

ARGS = ["train", "--dataset", "generated", "--arch", "resnet20", "--width-mult", "0.25",
        "--epochs", "0.5", "--core-epochs", "0.5", "--grow-epochs", "0.5", "--batch-size", "16",
        "--threads", "1", "--no-progress"]


def test_train_resumes_after_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    out = tmp_path / "run"
    real_grow = pipeline.Pipeline.grow

    def interrupted(self: pipeline.Pipeline, k: int) -> None:
        if k == 2:
            raise KeyboardInterrupt
        real_grow(self, k)

    monkeypatch.setattr(pipeline.Pipeline, "grow", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main([*ARGS, "--out", str(out)])
    state = json.loads((out / "state.json").read_text())
    assert state["done"] == ["baseline", "prune", "core", "grow1"]

    monkeypatch.setattr(pipeline.Pipeline, "grow", real_grow)
    for stage in ("baseline", "prune", "core"):  # finished stages must not run again
        monkeypatch.setattr(pipeline.Pipeline, stage, lambda self: pytest.fail("re-ran"))
    assert main([*ARGS, "--out", str(out)]) == 0
    state = json.loads((out / "state.json").read_text())
    assert state["done"][-3:] == ["grow2", "grow3", "export"]
    report = json.loads((out / "report.json").read_text())
    assert [lv["channel_ratio"] for lv in report["levels"]] == [0.25, 0.5, 0.75, 1.0]
    assert (out / "report.md").read_text().startswith("# Nested resnet20")
    # every stage's wall time survives the interruption: those of the first run are kept
    assert list(report["stage_seconds"]) == ["baseline", "prune", "core", "grow1", "grow2",
                                             "grow3", "export"]
    assert all(isinstance(sec, float) and sec >= 0 for sec in report["stage_seconds"].values())
    assert "| grow1 |" in (out / "report.md").read_text()
    assert (out / "accuracy_vs_macs.png").stat().st_size > 1000
    assert len(load_bundle(out / "bundle").build_all()) == 4


def test_train_refuses_changed_config_in_same_dir(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "state.json").write_text(json.dumps({"config": {"arch": "other"}, "done": []}))
    assert main([*ARGS, "--out", str(out)]) == 2
    assert "different configuration" in capsys.readouterr().err


def test_train_refuses_a_negative_anchor_and_a_missing_baseline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ARGS, "--out", str(tmp_path / "a"), "--anchor", "-1"]) == 2
    assert "--anchor must be >= 0, got -1.0" in capsys.readouterr().err
    absent = tmp_path / "absent.safetensors"
    assert main([*ARGS, "--out", str(tmp_path / "b"), "--baseline-weights", str(absent)]) == 2
    assert f"--baseline-weights: {absent} is not a file" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_names_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a if a != "generated" else "fashion-mnist" for a in ARGS]
    assert main([*args, "--data-path", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err


@pytest.mark.slow
def test_train_under_torchrun_ddp_two_processes(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(  # --full-loss: its second forward pass shares DDP's parameters
        [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "elastiserve.cli",
         *ARGS, "--full-loss", "0.5", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "state.json").read_text())["done"][-1] == "export"
    assert len(load_bundle(out / "bundle").build_all()) == 4
