"""``elastiserve train --device``: the choices, and ``cuda`` refused in one line on a host
without a CUDA device (never trained on the CPU instead)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from elastiserve.cli import main


def test_cuda_without_a_device_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["train", "--out", str(tmp_path / "out"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "elastiserve train: --device cuda but torch sees no CUDA device"
    assert not (tmp_path / "out").exists()


def test_unknown_device_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", "x", "--device", "gpu"])
    assert exit_info.value.code == 2
    assert "--device" in capsys.readouterr().err
