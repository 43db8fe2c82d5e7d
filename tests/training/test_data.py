"""Dataset loaders on small generated files; every malformed input names its file."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from elastiserve_train.data import (
    DatasetError,
    augment,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_image_folder,
)


def _idx(path: Path, array: np.ndarray, *, gz: bool = True) -> None:
    raw = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _fashion(root: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))


def test_fashion_mnist_idx(tmp_path: Path) -> None:
    _fashion(tmp_path)
    data = load_fashion_mnist(tmp_path)
    assert data.train.images.shape == (6, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.test.labels.dtype == torch.int64 and len(data.class_names) == 10


def test_fashion_mnist_missing_file_is_named(tmp_path: Path) -> None:
    _fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        load_fashion_mnist(tmp_path)


def test_fashion_mnist_bad_magic_and_short_body(tmp_path: Path) -> None:
    _fashion(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 12))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz.*magic"):
        load_fashion_mnist(tmp_path)
    raw = struct.pack(">HBB3I", 0, 8, 3, 5, 28, 28) + b"\x00" * 10
    bad.write_bytes(raw)
    with pytest.raises(DatasetError, match="expected 3920 data bytes"):
        load_fashion_mnist(tmp_path)


def _cifar(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (4, 3072)).astype(np.uint8),
                 b"labels": [0, 1, 2, 9]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_batches(tmp_path: Path) -> None:
    _cifar(tmp_path)
    data = load_cifar10(tmp_path)
    assert data.train.images.shape == (20, 3, 32, 32) and len(data.test.labels) == 4


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os
        return (os.system, ("echo pwned",))


def test_cifar10_refuses_code_in_pickles(tmp_path: Path) -> None:
    _cifar(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(DatasetError, match=r"data_batch_3.*not allowed"):
        load_cifar10(tmp_path)


def test_cifar10_wrong_layout_is_named(tmp_path: Path) -> None:
    _cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8),
                                                        b"labels": [0, 1]}))
    with pytest.raises(DatasetError, match=r"test_batch.*\(N, 3072\)"):
        load_cifar10(tmp_path)


def test_image_folder(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.new("RGB", (12, 10), (i * 40, 0, 0)).save(tmp_path / cls / f"{i}.png")
    data = load_image_folder(tmp_path, size=16)
    assert data.class_names == ("cat", "dog")
    assert data.train.images.shape[1:] == (3, 16, 16)
    assert len(data.train.labels) + len(data.test.labels) == 10
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        load_image_folder(tmp_path, size=16)


def test_augment_is_seeded_and_keeps_shape() -> None:
    images = torch.randint(0, 255, (4, 1, 8, 8), dtype=torch.uint8)
    a = augment(images, torch.Generator().manual_seed(1))
    b = augment(images, torch.Generator().manual_seed(1))
    assert a.shape == images.shape and torch.equal(a, b)


def test_fashion_mnist_resize_only_when_asked(tmp_path: Path) -> None:
    """``--image-size`` upscales Fashion-MNIST (bilinear, uint8, stats recomputed); no size
    keeps the native 28x28, so existing runs are unchanged."""
    _fashion(tmp_path)
    native = load_dataset("fashion-mnist", tmp_path)
    assert native.input_shape == (1, 28, 28) and native.name == "fashion-mnist"
    big = load_dataset("fashion-mnist", tmp_path, image_size=64)
    assert big.input_shape == (1, 64, 64) and big.test.images.shape == (6, 1, 64, 64)
    assert big.train.images.dtype == torch.uint8 and big.name == "fashion-mnist-64px"
    assert torch.equal(big.train.labels, native.train.labels)
    assert abs(big.mean[0] - native.mean[0]) < 0.02 and big.std[0] < native.std[0]
