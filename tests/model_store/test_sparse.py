"""Sparse storage: exact round trip, real shrinking on disk, and refusal of damaged artifacts."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from elastiserve_store import (
    ChecksumMismatchError,
    CorruptWeightsError,
    ManifestError,
    PickleWeightsError,
    ShapeMismatchError,
    TruncatedWeightsError,
    UnknownSchemaVersionError,
)
from elastiserve_store.integrity import sha256_file
from elastiserve_store.sparse import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    choose_encoding,
    load_sparse,
    payload_bytes,
    write_sparse,
)


def _sparse(shape: tuple[int, ...], density: float, seed: int = 0,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen).to(dtype)
    return t * (torch.rand(shape, generator=gen) < density)


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "very_sparse": _sparse((64, 32, 3, 3), 0.01),          # -> indices
        "half": _sparse((40, 40), 0.3, seed=1),                 # -> bitmask
        "dense": torch.randn(17, generator=torch.Generator().manual_seed(2)),
        "all_zero": torch.zeros(5, 3),
        "odd_bits": _sparse((13,), 0.5, seed=3),                # numel not a multiple of 8
        "half_precision": _sparse((30, 30), 0.2, seed=4, dtype=torch.float16),
        "counter": torch.tensor(7),
        "negative_zero": torch.tensor([0.0, -0.0, 1.5]),
    }


def test_round_trip_is_exact(tmp_path: Path) -> None:
    tensors = _tensors()
    write_sparse(tmp_path, tensors, {"sparsity": 0.9})
    art = load_sparse(tmp_path)
    assert art.metadata == {"sparsity": 0.9}
    assert set(art.tensors) == set(tensors)
    for name, t in tensors.items():
        got = art.tensors[name]
        assert got.dtype == t.dtype and got.shape == t.shape, name
        assert torch.equal(got, t), name
        assert art.nonzeros[name] == int((t != 0).sum())
    encodings = {n: e["encoding"] for n, e in
                 json.loads((tmp_path / MANIFEST_NAME).read_text())["tensors"].items()}
    assert encodings["very_sparse"] == "indices"
    assert encodings["half"] == "bitmask"
    assert encodings["dense"] == "dense"


def test_size_on_disk_shrinks_with_sparsity(tmp_path: Path) -> None:
    shape = (256, 256, 3, 3)
    sizes = {d: write_sparse(tmp_path / str(d), {"w": _sparse(shape, d)}) for d in
             (1.0, 0.1, 0.01)}
    dense_bytes = 256 * 256 * 9 * 4
    assert sizes[1.0] >= dense_bytes
    assert sizes[0.1] < 0.7 * dense_bytes        # bitmask + values: 1/32 + 10 % of 4 bytes
    assert sizes[0.01] < 0.03 * dense_bytes      # indices + values: 8 bytes per nonzero


@pytest.mark.parametrize(("numel", "nnz", "want"), [
    (1000, 1000, "dense"), (1000, 10, "indices"), (1000, 300, "bitmask"), (1, 1, "dense"),
])
def test_choose_encoding_picks_the_smallest(numel: int, nnz: int, want: str) -> None:
    assert choose_encoding(numel, nnz, 4) == want
    sizes = [payload_bytes(e, numel, nnz, 4) for e in ("dense", "indices", "bitmask")]
    assert payload_bytes(want, numel, nnz, 4) == min(sizes)


def _written(tmp_path: Path) -> Path:
    write_sparse(tmp_path, _tensors())
    return tmp_path


def test_refuses_checksum_mismatch(tmp_path: Path) -> None:
    d = _written(tmp_path)
    raw = bytearray((d / WEIGHTS_NAME).read_bytes())
    raw[-1] ^= 0xFF
    (d / WEIGHTS_NAME).write_bytes(bytes(raw))
    with pytest.raises(ChecksumMismatchError):
        load_sparse(d)


def test_refuses_truncated_file(tmp_path: Path) -> None:
    d = _written(tmp_path)
    raw = (d / WEIGHTS_NAME).read_bytes()
    (d / WEIGHTS_NAME).write_bytes(raw[:-20])
    with pytest.raises(TruncatedWeightsError):
        load_sparse(d)


def test_refuses_pickle_in_place_of_weights(tmp_path: Path) -> None:
    d = _written(tmp_path)
    (d / WEIGHTS_NAME).write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=4))
    with pytest.raises(PickleWeightsError):
        load_sparse(d)


def _rewrite_manifest(d: Path, **changes: object) -> None:
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    manifest.update(changes)
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_refuses_unknown_schema_and_missing_manifest(tmp_path: Path) -> None:
    d = _written(tmp_path / "a")
    _rewrite_manifest(d, schema_version=99)
    with pytest.raises(UnknownSchemaVersionError):
        load_sparse(d)
    with pytest.raises(ManifestError, match="not found"):
        load_sparse(tmp_path / "nowhere")


def test_refuses_parts_that_disagree_with_manifest(tmp_path: Path) -> None:
    d = _written(tmp_path)
    manifest = json.loads((d / MANIFEST_NAME).read_text())
    manifest["tensors"]["very_sparse"]["nnz"] += 1
    (d / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ShapeMismatchError, match="very_sparse"):
        load_sparse(d)


def test_refuses_out_of_range_positions_even_with_a_matching_checksum(tmp_path: Path) -> None:
    """A writer bug (or a forged file with a recomputed SHA-256) must not scatter out of range."""
    values = torch.tensor([1.0, 2.0])
    save_file({"w::values": values, "w::indices": torch.tensor([3, 99], dtype=torch.int32)},
              str(tmp_path / WEIGHTS_NAME))
    manifest = {"format": "elastiserve-sparse", "schema_version": 1,
                "weights": {"file": WEIGHTS_NAME, "sha256": sha256_file(tmp_path / WEIGHTS_NAME)},
                "tensors": {"w": {"shape": [10], "dtype": "float32", "encoding": "indices",
                                  "nnz": 2}}}
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CorruptWeightsError, match="out of range"):
        load_sparse(tmp_path)


def test_refuses_names_it_cannot_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'::'"):
        write_sparse(tmp_path, {"a::b": torch.zeros(2)})
