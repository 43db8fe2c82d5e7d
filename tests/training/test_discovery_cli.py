"""``elastiserve train --strategy discovery`` end to end on generated data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from elastiserve.cli import main
from elastiserve_store import architectures, load_bundle
from elastiserve_store.profile import count_macs

ARGS = ["train", "--strategy", "discovery", "--dataset", "generated", "--arch", "resnet20",
        "--width-mult", "0.25", "--levels", "3", "--core-epochs", "0.5", "--grow-epochs", "0.5",
        "--batch-size", "16", "--threads", "1", "--no-progress"]
# Strong layer pricing so the discovered level is shallower than the others.
DISCOVERY = ["--nu", "4", "--alpha", "1", "--beta", "1", "--discovery-epochs", "4",
             "--layer-theta-lr", "0.5", "--theta-warmup", "0.1"]


def test_discovery_writes_a_depth_nested_bundle_and_report(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main([*ARGS, *DISCOVERY, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["strategy"] == "discovery"
    assert report["train_seconds"] > 0
    assert {"macs", "params"} <= set(report["predicted"]) and report["measured"]
    assert report["predicted"]["macs"] == report["measured"]["macs"]
    assert report["predicted"]["params"] == report["measured"]["params"]
    levels = report["levels"]
    assert [lv["name"] for lv in levels] == ["L0", "L1", "L2"]
    for lv in levels:
        assert {"name", "macs", "macs_ratio", "params", "size_bytes", "accuracy"} <= set(lv)
    assert levels[-1]["macs_ratio"] == pytest.approx(1.0)
    assert levels[0]["macs"] < levels[1]["macs"] < levels[2]["macs"]

    bundle = load_bundle(out / "bundle")
    skipped = [lv.skipped_blocks for lv in bundle.manifest.levels]
    assert len(skipped[0]) >= 2, "the discovered level should skip residual blocks"
    assert set(skipped[1]) < set(skipped[0])  # depth nests: L1 runs some of them back
    assert skipped[2] == ()
    assert report["measured"]["macs"] == levels[0]["macs"]
    level0 = bundle.build_level(0)
    assert count_macs(level0, (1, 8, 8)) == levels[0]["macs"]
    assert count_macs(level0, (1, 8, 8)) < count_macs(
        architectures.build("resnet20", bundle.manifest.arch_args), (1, 8, 8))
    x = torch.rand(2, 1, 8, 8)
    for model in bundle.build_all(share_storage=True):
        assert model(x).shape == (2, 4)

    # A rerun resumes: every stage is done, nothing retrains.
    assert main([*ARGS, *DISCOVERY, "--out", str(out)]) == 0


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--nu", "0", "nu (pruning strength) must be > 0"),
    ("--alpha", "1.2", "alpha (layer vs unit pruning) must be in [0, 1]"),
    ("--beta", "-0.5", "beta (FLOPs vs parameters) must be in [0, 1]"),
])
def test_invalid_parameters_exit_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str,
        message: str) -> None:
    assert main([*ARGS, flag, value, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
