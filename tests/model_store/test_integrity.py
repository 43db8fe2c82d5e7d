"""Each way a bundle is refused has its own exception, raised before any tensor is read."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from elastiserve_store import (
    ChecksumMismatchError,
    CorruptWeightsError,
    ManifestError,
    PickleWeightsError,
    ShapeMismatchError,
    TruncatedWeightsError,
    UnknownSchemaVersionError,
    UnsafeWeightsPathError,
    WeightsMissingError,
    load_bundle,
)
from elastiserve_store.integrity import read_header, sha256_file


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


# ------------------------------------------------------------------ hostile bundles (issue 17)


def _rewrite_weights(bundle_dir: Path, change: Any) -> None:
    """Rewrite the weights with ``change(tensors)`` applied and the manifest resealed."""
    path = bundle_dir / "weights.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["weights"]["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    _reseal(bundle_dir)


def test_writer_records_dtypes_and_they_round_trip(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    dtypes = data["weights"]["dtypes"]
    assert set(dtypes) == set(data["weights"]["tensors"])
    assert {dtypes[k] for k in dtypes if k.endswith("num_batches_tracked")} == {"I64"}
    assert {v for k, v in dtypes.items() if not k.endswith("num_batches_tracked")} == {"F32"}
    load_bundle(bundle_dir)


def test_refuses_a_dtype_the_manifest_does_not_record(bundle_dir: Path) -> None:
    def to_double(tensors: dict[str, torch.Tensor]) -> None:
        tensors["shared.conv1.weight"] = tensors["shared.conv1.weight"].double()

    _rewrite_weights(bundle_dir, to_double)
    with pytest.raises(CorruptWeightsError, match=r"F64 in the file, F32 in the manifest"):
        load_bundle(bundle_dir)


def test_refuses_a_dtype_no_level_can_run_even_unrecorded(bundle_dir: Path) -> None:
    def to_half(tensors: dict[str, torch.Tensor]) -> None:
        tensors["shared.conv1.weight"] = tensors["shared.conv1.weight"].half()

    _rewrite_weights(bundle_dir, to_half)
    data = json.loads((bundle_dir / "manifest.json").read_text())
    del data["weights"]["dtypes"]  # a bundle written before dtypes were recorded
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CorruptWeightsError, match=r"is F16; bundle tensors are F32"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    "name", ["../weights.safetensors", "sub/weights.safetensors", "..", ".", "/etc/passwd",
             ".hidden", "w\x00.safetensors", "a\\b", ""])
def test_refuses_a_weights_file_that_is_not_a_plain_name(bundle_dir: Path, name: str) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["weights"]["file"] = name
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="plain file name"):
        load_bundle(bundle_dir)


def test_refuses_weights_behind_a_symlink(bundle_dir: Path, tmp_path: Path) -> None:
    real = tmp_path / "outside.safetensors"
    (bundle_dir / "weights.safetensors").rename(real)
    (bundle_dir / "weights.safetensors").symlink_to(real)  # same bytes, same checksum
    with pytest.raises(UnsafeWeightsPathError, match="symbolic link"):
        load_bundle(bundle_dir)


def test_refuses_a_fifo_in_place_of_the_weights(bundle_dir: Path) -> None:
    (bundle_dir / "weights.safetensors").unlink()
    os.mkfifo(bundle_dir / "weights.safetensors")
    with pytest.raises(UnsafeWeightsPathError, match="not a regular file"):
        load_bundle(bundle_dir)


def test_refuses_an_implausible_header_length(bundle_dir: Path) -> None:
    path = bundle_dir / "weights.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 64 * 1024 * 1024) + raw[8:] + b" " * (64 << 20))
    _reseal(bundle_dir)
    with pytest.raises(CorruptWeightsError, match="implausible"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    "entry",
    [{"dtype": "F32", "shape": [3], "data_offsets": [0, 8]},
     {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]},
     {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]},
     {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}],
    ids=["span-vs-shape", "unknown-dtype", "negative-dim", "negative-offset"],
)
def test_refuses_a_header_entry_that_lies(tmp_path: Path, entry: dict[str, Any]) -> None:
    header = json.dumps({"t": entry}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    with pytest.raises(CorruptWeightsError):
        read_header(path)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("mean", [float("nan")], "non-finite"), ("std", [float("inf")], "non-finite"),
     ("std", [0.0], "positive"), ("std", [-0.5], "positive"), ("mean", [0.5, 0.5], "per input"),
     ("std", [10**400], "non-finite")],
)
def test_refuses_normalisation_that_is_not_finite_or_divides_by_zero(
    bundle_dir: Path, field: str, value: list[float], says: str,
) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["normalisation"][field] = value
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=says):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("change", "says"),
    [({"height": 100_000}, "height/width"), ({"width": 0}, "height/width"),
     ({"channels": 0}, "channels"), ({"channels": 1000}, "channels"),
     ({"dtype": "float64"}, "dtype")],
)
def test_refuses_input_sizes_out_of_bounds(bundle_dir: Path, change: dict[str, Any],
                                           says: str) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["input"].update(change)
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=says):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    "text",
    ['{"schema_version": ' + "9" * 5000 + "}",  # int() refuses past 4300 digits
     '{"schema_version": 1, "training": ' + "[" * 5000 + "]" * 5000 + "}",
     '{"schema_version": 1, "levels": [{"accuracy": NaN}]}',
     "\ud800"],
    ids=["huge-int", "deep", "nan", "surrogate"],
)
def test_refuses_manifest_json_python_chokes_on(bundle_dir: Path, text: str) -> None:
    (bundle_dir / "manifest.json").write_text(text, errors="surrogatepass")
    with pytest.raises(ManifestError):
        load_bundle(bundle_dir)


def test_refuses_a_huge_manifest(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["training"] = {"padding": "x" * (17 << 20)}
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="more than a manifest needs"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("name", ["L0\r\nX: 1", "", "L 0", "x" * 65, "L\u00e9"])
def test_refuses_level_names_that_are_not_plain_tokens(bundle_dir: Path, name: str) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["levels"][0]["name"] = name
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="name"):
        load_bundle(bundle_dir)


def test_refuses_architecture_arguments_it_cannot_take(bundle_dir: Path) -> None:
    data = json.loads((bundle_dir / "manifest.json").read_text())
    data["architecture"]["args"]["width_mult"] = "wide"
    (bundle_dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="architecture"):
        load_bundle(bundle_dir)
