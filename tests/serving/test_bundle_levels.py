"""The bundle adapter: a real bundle becomes a level set; a corrupted one is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elastiserve_serve.bundle_levels import load_levels
from elastiserve_serve.runtime import ElasticRuntime, RawRequest, RuntimeSettings, Success
from elastiserve_store.errors import ChecksumMismatchError

from .bundles import LEVELS, make_bundle


def test_bundle_serves_every_level(tmp_path: Path) -> None:
    levels = load_levels(make_bundle(tmp_path / "b"))
    assert levels.names == LEVELS
    assert levels.input_spec.shape == (1, 16, 16)
    rt = ElasticRuntime(levels, RuntimeSettings(control_file=None, allow_pin=True))
    rt.warm_up()
    body = json.dumps([[[0.3] * 16] * 16])
    for name in LEVELS:
        (out,) = rt.handle([RawRequest(body, {"x-elastiserve-level": name})])
        assert isinstance(out, Success) and out.level == name


def test_corrupted_weights_refused_before_use(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "b")
    weights = bundle / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError):
        load_levels(bundle)
