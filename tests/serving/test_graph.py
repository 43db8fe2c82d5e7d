"""Traced levels (``trace_levels``): same answers, same shared weights, eager where unsafe."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from elastiserve_serve.bundle_levels import load_levels
from elastiserve_serve.runtime import ElasticRuntime, RawRequest, RuntimeSettings, Success
from elastiserve_serve.runtime.graph import trace_levels
from elastiserve_serve.runtime.levels import LevelSet
from elastiserve_serve.runtime.settings import settings_from_mapping

from .bundles import make_bundle
from .tiny import CLASSES, SPEC, tiny_levels


class SignBranch(nn.Module):
    """Data-dependent control flow: tracing freezes whichever branch its input took."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(1, 2, 3))
        logits = torch.stack([pooled, -pooled, pooled * 2, pooled * 3], dim=1)
        return logits if bool(x.mean() > 0) else -logits


class Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 4) + float(x.numpy().sum() > 0)  # leaves the graph


@pytest.fixture(scope="module")
def bundle_levels(tmp_path_factory: pytest.TempPathFactory) -> LevelSet:
    bundle = make_bundle(tmp_path_factory.mktemp("graph") / "bundle", ratios=(0.5, 1.0), size=8)
    return load_levels(bundle)


def test_traced_bundle_levels_answer_like_eager_and_keep_shared_weights(
    bundle_levels: LevelSet,
) -> None:
    traced = trace_levels(bundle_levels)
    assert all(isinstance(m, torch.jit.ScriptModule) for m in traced.modules)
    full_ptr = bundle_levels.modules[-1].state_dict()["conv1.weight"].untyped_storage().data_ptr()
    for eager, graph in zip(bundle_levels.modules, traced.modules, strict=True):
        weight = graph.state_dict()["conv1.weight"]
        assert weight.untyped_storage().data_ptr() == full_ptr  # a prefix view, not a copy
        x = torch.randn(3, *bundle_levels.input_spec.shape)
        with torch.inference_mode():
            assert torch.allclose(eager(x), graph(x), atol=1e-5)


def test_runtime_with_traced_levels_serves_the_same_predictions() -> None:
    levels = tiny_levels()
    body = json.dumps(torch.rand(2, *levels.input_spec.shape).tolist())
    answers = []
    for trace in (False, True):
        rt = ElasticRuntime(levels, RuntimeSettings(control_file=None, allow_pin=True,
                                                    trace_levels=trace))
        assert all(isinstance(m, torch.jit.ScriptModule) for m in rt.levels.modules) is trace
        rt.warm_up()
        outcomes = rt.handle([RawRequest(body, {"X-Elastiserve-Level": name})
                              for name in levels.names])
        assert all(isinstance(o, Success) for o in outcomes)
        answers.append([o.to_json() for o in outcomes])
    assert answers[0] == answers[1]


@pytest.mark.parametrize("module", [SignBranch(), Untraceable()], ids=["branch", "numpy"])
def test_unsafe_levels_stay_eager(module: nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    levels = tiny_levels()
    mixed = LevelSet(levels.names, (module, *levels.modules[1:]), SPEC,
                     levels.normalisation, CLASSES)
    traced = trace_levels(mixed)
    assert traced.modules[0] is module
    assert all(isinstance(m, torch.jit.ScriptModule) for m in traced.modules[1:])
    assert "stays eager" in caplog.text


@pytest.mark.parametrize(("raw", "expected"), [({}, True), ({"trace_levels": False}, False)])
def test_setting(raw: dict[str, object], expected: bool) -> None:
    assert settings_from_mapping(raw).trace_levels is expected


def test_setting_must_be_boolean() -> None:
    with pytest.raises(ValueError, match="trace_levels"):
        settings_from_mapping({"trace_levels": "yes"})


def test_heap_trim_available_on_this_glibc_machine() -> None:
    from elastiserve_serve.runtime.heap import trim_heap

    assert trim_heap() is True  # Linux with glibc (the serving image too); a no-op elsewhere
