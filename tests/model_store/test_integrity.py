"""Each way a bundle is refused has its own exception, raised before any tensor is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from elastiserve_store import (
    ChecksumMismatchError,
    ManifestError,
    PickleWeightsError,
    ShapeMismatchError,
    TruncatedWeightsError,
    UnknownSchemaVersionError,
    WeightsMissingError,
    load_bundle,
)
from elastiserve_store.integrity import sha256_file


def _edit_manifest(bundle_dir: Path, **changes: Any) -> dict[str, Any]:
    path = bundle_dir / "manifest.json"
    data: dict[str, Any] = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return data


def _reseal(bundle_dir: Path) -> None:
    """Make the manifest's SHA-256 match whatever the weights file now holds."""
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["weights"]["sha256"] = sha256_file(bundle_dir / data["weights"]["file"])
    (bundle_dir / "manifest.json").write_text(json.dumps(data))


@pytest.fixture(autouse=True)
def _no_tensor_reads(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Refusal tests fail if the loader reaches the point of reading tensors."""
    if request.node.name.startswith("test_refuses"):
        def boom(*_a: object, **_k: object) -> None:
            raise AssertionError("tensor data was read before the bundle was refused")
        monkeypatch.setattr("elastiserve_store.bundle.load_file", boom)


def test_refuses_wrong_sha256(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["weights"]["sha256"] = "0" * 64
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ChecksumMismatchError, match="SHA-256"):
        load_bundle(bundle_dir)


def test_refuses_tampered_weights(bundle_dir: Path) -> None:
    path = bundle_dir / "weights.safetensors"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumMismatchError):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("keep", [4, 100, -16])
def test_refuses_truncated_safetensors(bundle_dir: Path, keep: int) -> None:
    path = bundle_dir / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:keep])
    _reseal(bundle_dir)  # even with a matching checksum, a cut file is named as such
    with pytest.raises(TruncatedWeightsError, match=r"truncated|too short"):
        load_bundle(bundle_dir)


def test_refuses_manifest_shapes_disagreeing_with_weights(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["weights"]["tensors"]["shared.conv1.weight"][0] += 1
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ShapeMismatchError, match=r"shared\.conv1\.weight"):
        load_bundle(bundle_dir)


def test_refuses_level_widths_disagreeing_with_weights(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["levels"][1]["widths"]["s1"] += 1  # still nested, but level 1's BN has other shapes
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ShapeMismatchError, match=r"levels\.1"):
        load_bundle(bundle_dir)


def test_refuses_pickle_in_place_of_safetensors(bundle_dir: Path) -> None:
    path = bundle_dir / "weights.safetensors"
    torch.save({"w": torch.zeros(2)}, path)
    _reseal(bundle_dir)
    with pytest.raises(PickleWeightsError, match="pickle"):
        load_bundle(bundle_dir)


def test_refuses_pt_file_named_by_manifest(bundle_dir: Path) -> None:
    torch.save({"w": torch.zeros(2)}, bundle_dir / "weights.pt")
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["weights"]["file"] = "weights.pt"
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    _reseal(bundle_dir)
    with pytest.raises(PickleWeightsError, match=r"\.pt"):
        load_bundle(bundle_dir)


def test_refuses_unknown_schema_version(bundle_dir: Path) -> None:
    _edit_manifest(bundle_dir, schema_version=99)
    with pytest.raises(UnknownSchemaVersionError, match="99"):
        load_bundle(bundle_dir)


def test_refuses_missing_manifest_field(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    del data["levels"][0]["macs"]
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"levels\[0\]\.macs"):
        load_bundle(bundle_dir)


def test_refuses_missing_weights(bundle_dir: Path) -> None:
    (bundle_dir / "weights.safetensors").unlink()
    with pytest.raises(WeightsMissingError):
        load_bundle(bundle_dir)


def test_errors_are_distinct_classes() -> None:
    classes = {ChecksumMismatchError, TruncatedWeightsError, ShapeMismatchError,
               PickleWeightsError, UnknownSchemaVersionError}
    for cls in classes:
        assert not any(issubclass(cls, other) for other in classes - {cls})
