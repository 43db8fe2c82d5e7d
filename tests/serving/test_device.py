"""The ``device`` setting: parsing, what ``auto``/``cpu``/``cuda`` mean on a host without CUDA,
and the CPU path end to end (levels and batches on the device, memory reported per level)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from elastiserve_serve.runtime import ElasticRuntime, RawRequest, RuntimeSettings, Success
from elastiserve_serve.runtime.device import (
    level_memory_bytes,
    levels_on,
    resolve_device,
    weight_bytes,
)
from elastiserve_serve.runtime.metrics import RecordingMetrics
from elastiserve_serve.runtime.settings import settings_from_mapping

from .tiny import tiny_levels


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda"])
def test_setting_accepts_the_three_choices(value: str) -> None:
    assert settings_from_mapping({"device": value}).device == value


def test_setting_defaults_to_auto() -> None:
    assert settings_from_mapping({}).device == "auto"


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:0", "", 1, True, None])
def test_setting_refuses_anything_else_naming_the_choices(value: object) -> None:
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        settings_from_mapping({"device": value})


@pytest.mark.parametrize(
    ("setting", "cuda", "expected"),
    [("auto", False, "cpu"), ("auto", True, "cuda"), ("cpu", True, "cpu"),
     ("cpu", False, "cpu"), ("cuda", True, "cuda")],
)
def test_resolution(setting: str, cuda: bool, expected: str) -> None:
    assert resolve_device(setting, lambda: cuda).type == expected


def test_cuda_without_a_device_is_refused_not_served_on_the_cpu() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda", lambda: False)


def test_cpu_placement_keeps_the_same_modules_and_shared_storage() -> None:
    levels = tiny_levels()
    assert levels_on(levels, torch.device("cpu")) is levels


def test_cpu_runtime_serves_and_reports_memory_per_level() -> None:
    levels = tiny_levels()
    metrics = RecordingMetrics()
    rt = ElasticRuntime(levels, RuntimeSettings(control_file=None, device="cpu",
                                                allow_pin=True, trace_levels=False), metrics)
    rt.warm_up(2)
    assert rt.device.type == "cpu"
    assert set(metrics.memory) == set(levels.names)
    # Weights only on the CPU; a narrower level holds fewer weight bytes than the full one.
    assert metrics.memory == {n: weight_bytes(m) for n, m in zip(levels.names, levels.modules,
                                                                 strict=True)}
    assert metrics.memory[levels.names[0]] < metrics.memory[levels.names[-1]]
    body = json.dumps(torch.rand(2, *levels.input_spec.shape).tolist())
    for name in levels.names:
        [outcome] = rt.handle([RawRequest(body, {"x-elastiserve-level": name})])
        assert isinstance(outcome, Success) and outcome.level == name


def test_memory_report_on_cpu_is_weights_only() -> None:
    levels = tiny_levels()
    report = level_memory_bytes(levels, torch.device("cpu"), samples=4)
    assert all(report[n] == weight_bytes(m) > 0
               for n, m in zip(levels.names, levels.modules, strict=True))



class _Context:
    """What the handler reads at initialize, for the environment override only."""


def test_environment_device_overrides_the_archived_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from elastiserve_serve import torchserve_handler

    seen: dict[str, object] = {}

    def settings(raw: dict[str, object]) -> RuntimeSettings:
        seen.update(raw)
        raise RuntimeError("stop after the settings")

    monkeypatch.setattr(torchserve_handler, "check_model_dir", lambda *_: None)
    monkeypatch.setattr(torchserve_handler, "settings_from_mapping", settings)
    monkeypatch.setenv(torchserve_handler.DEVICE_ENV, "cpu")
    context = _Context()
    context.system_properties = {"model_dir": "/nonexistent"}  # type: ignore[attr-defined]
    context.model_yaml_config = {"handler": {"device": "cuda"}}  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="stop after"):
        torchserve_handler.ElastiserveHandler().initialize(context)
    assert seen["device"] == "cpu"


def _gpu_check() -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_refuses_in_one_line_without_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.json"
    assert _gpu_check().main(["--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no CUDA device" in err
    assert not out.exists()


def test_gpu_check_refuses_bad_batch_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert _gpu_check().main(["--batch-sizes", "0,x"]) == 2
    assert "--batch-sizes" in capsys.readouterr().err
