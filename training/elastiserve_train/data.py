"""Datasets as in-memory uint8 tensors: Fashion-MNIST (IDX), CIFAR-10 (python batches),
ImageFolder directories, and small generated sets for tests.

CIFAR-10's python batches are pickles. They are read with :class:`_RestrictedUnpickler`, which
resolves only the handful of globals a numpy array needs (``numpy...._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``, ``_codecs.encode``) and refuses everything else, so a
tampered batch cannot run code. Every malformed or missing file raises :class:`DatasetError`
naming the file and what was expected.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})


class DatasetError(Exception):
    """A dataset file is missing or not in the expected format (the message names both)."""


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 NCHW and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def subset(self, n: int | None, seed: int = 0) -> ImageSet:
        """A seeded random subset of ``n`` examples (all of them when ``n`` is None)."""
        if n is None or n >= len(self.labels):
            return self
        idx = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))[:n]
        return ImageSet(self.images[idx], self.labels[idx])

    def split(self, n: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """``(rest, held_out)``: a seeded random ``n`` examples held out, the rest kept.

        The two are disjoint, so settings chosen on ``held_out`` (a validation split carved
        from the training set) never see the test set.
        """
        if not 0 < n < len(self.labels):
            raise DatasetError(
                f"validation split of {n} needs 0 < n < {len(self.labels)} training examples")
        idx = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))
        held, rest = idx[:n], idx[n:]
        return (ImageSet(self.images[rest], self.labels[rest]),
                ImageSet(self.images[held], self.labels[held]))

    def resized(self, size: int, chunk: int = 4096) -> ImageSet:
        """Images scaled to ``size`` x ``size`` with bilinear filtering, kept as uint8."""
        if self.images.shape[-2:] == (size, size):
            return self
        parts = [torch.nn.functional.interpolate(part.float(), size=(size, size),
                                                 mode="bilinear", align_corners=False)
                 .round().clamp(0, 255).to(torch.uint8)
                 for part in torch.split(self.images, chunk)]
        return ImageSet(torch.cat(parts) if parts else self.images, self.labels)


@dataclass(frozen=True)
class Dataset:
    """Train and test splits with class names and per-channel normalisation."""

    name: str
    train: ImageSet
    test: ImageSet
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    def limit(self, train: int | None, test: int | None, seed: int = 0) -> Dataset:
        return Dataset(self.name, self.train.subset(train, seed), self.test.subset(test, seed),
                       self.class_names, self.mean, self.std)

    def with_validation(self, n: int, seed: int = 0) -> tuple[Dataset, ImageSet]:
        """This dataset without ``n`` training examples, and those examples as a validation
        split (for every choice of settings; the test split stays for the reported numbers).
        Normalisation statistics are kept: they were computed on the training images only."""
        rest, held = self.train.split(n, seed)
        return (Dataset(self.name, rest, self.test, self.class_names, self.mean, self.std),
                held)

    def resized(self, size: int) -> Dataset:
        """Both splits scaled to ``size`` x ``size`` (bilinear), statistics recomputed.

        Upscaling Fashion-MNIST makes per-image compute, not per-request overhead, set what a
        served level can take, so the nested levels differ in capacity.
        """
        return _make(f"{self.name}-{size}px", self.train.resized(size), self.test.resized(size),
                     self.class_names)

    def rgb(self) -> Dataset:
        """Grey images repeated on three channels (as PIL's ``convert("RGB")`` does): models
        built by a constructor (torchvision's) take three-channel input."""
        if self.input_shape[0] != 1:
            return self
        def three(s: ImageSet) -> ImageSet:
            return ImageSet(s.images.expand(-1, 3, -1, -1).contiguous(), s.labels)
        return Dataset(self.name, three(self.train), three(self.test), self.class_names,
                       self.mean * 3, self.std * 3)


def _stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images.float() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp(min=1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _make(name: str, train: ImageSet, test: ImageSet, classes: Sequence[str]) -> Dataset:
    mean, std = _stats(train.images)
    return Dataset(name, train, test, tuple(classes), mean, std)


# --------------------------------------------------------------------------- augmentation


def augment(images: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, on a uint8 batch."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(images.shape[1])[None, :, None, None]
    out = padded[batch, chans, rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float, scaled to [0, 1] then standardised per channel."""
    x = images.float() / 255.0
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


# --------------------------------------------------------------------------- Fashion-MNIST


def _open_maybe_gz(path: Path) -> bytes:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DatasetError(f"{path}: corrupt gzip stream ({err})") from None
    return raw


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes with ``ndim`` dimensions (gzipped or not)."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: too short for an IDX header with {ndim} dimensions")
    zero, dtype, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or dims != ndim:
        raise DatasetError(f"{path}: expected an IDX file of unsigned bytes with {ndim} "
                           f"dimension(s) (magic 0x0000080{ndim}), found magic "
                           f"{raw[:4].hex()}")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    count = int(np.prod(shape))
    if len(body) != count:
        raise DatasetError(f"{path}: expected {count} data bytes for shape {shape}, "
                           f"found {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DatasetError(f"{root / (stem + '.gz')}: file not found (expected the IDX file "
                       f"'{stem}' or '{stem}.gz' in {root})")


def load_fashion_mnist(root: str | Path = FASHION_MNIST_DIR) -> Dataset:
    """Fashion-MNIST from its four IDX files (default: Debian's ``dataset-fashion-mnist``)."""
    root = Path(root)
    splits = []
    for prefix in ("train", "t10k"):
        img_path = _find(root, f"{prefix}-images-idx3-ubyte")
        lbl_path = _find(root, f"{prefix}-labels-idx1-ubyte")
        images = read_idx(img_path, 3)
        labels = read_idx(lbl_path, 1)
        if len(images) != len(labels):
            raise DatasetError(f"{lbl_path}: {len(labels)} labels for {len(images)} images "
                               f"in {img_path}")
        if labels.size and int(labels.max()) >= len(FASHION_CLASSES):
            raise DatasetError(f"{lbl_path}: label {int(labels.max())} outside 0..9")
        splits.append(ImageSet(torch.from_numpy(images.copy()).unsqueeze(1),
                               torch.from_numpy(labels.astype(np.int64))))
    return _make("fashion-mnist", splits[0], splits[1], FASHION_CLASSES)


# --------------------------------------------------------------------------- CIFAR-10


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (expected a CIFAR-10 python batch)")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as err:  # any failure means the file is not a well-formed batch
        raise DatasetError(f"{path}: not a CIFAR-10 python batch ({err})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict in the CIFAR-10 batch")
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _cifar_batch(path: Path) -> ImageSet:
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise DatasetError(f"{path}: expected 'data' as a uint8 array of shape (N, 3072)")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(
            isinstance(v, int) and 0 <= v < 10 for v in labels):
        raise DatasetError(f"{path}: expected 'labels' as {len(data)} integers in 0..9")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageSet(images, torch.tensor(labels, dtype=torch.long))


def load_cifar10(root: str | Path) -> Dataset:
    """CIFAR-10 from ``cifar-10-batches-py`` (``root`` may be that folder or its parent)."""
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    parts = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    train = ImageSet(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    test = _cifar_batch(root / "test_batch")
    names: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                              "horse", "ship", "truck")
    meta_path = root / "batches.meta"
    if meta_path.is_file():
        meta = _unpickle(meta_path).get("label_names")
        if isinstance(meta, list) and len(meta) == 10:
            names = tuple(m.decode() if isinstance(m, bytes) else str(m) for m in meta)
    return _make("cifar10", train, test, names)


# --------------------------------------------------------------------------- ImageFolder


def _read_folder(root: Path, size: int, channels: int, classes: Sequence[str] | None
                 ) -> tuple[ImageSet, tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DatasetError(f"{root}: directory not found (expected one sub-folder per class)")
    names = tuple(classes) if classes is not None else tuple(
        sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not names:
        raise DatasetError(f"{root}: no class sub-folders found")
    images, labels = [], []
    mode = "L" if channels == 1 else "RGB"
    for label, name in enumerate(names):
        folder = root / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        for path in files:
            try:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert(mode).resize((size, size)), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as err:
                raise DatasetError(f"{path}: not a readable image ({err})") from None
            images.append(arr.reshape(size, size, channels).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DatasetError(f"{root}: no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    return ImageSet(torch.from_numpy(np.stack(images)), torch.tensor(labels)), names


def load_image_folder(root: str | Path, size: int = 32, channels: int = 3,
                      test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """``root/<class>/*.png`` (split seeded) or ``root/train/<class>`` + ``root/test|val/``."""
    root = Path(root)
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if train_dir.is_dir() and test_dir is not None:
        train, names = _read_folder(train_dir, size, channels, None)
        test, _ = _read_folder(test_dir, size, channels, names)
    else:
        full, names = _read_folder(root, size, channels, None)
        n = len(full.labels)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        cut = max(1, int(n * test_fraction))
        test = ImageSet(full.images[perm[:cut]], full.labels[perm[:cut]])
        train = ImageSet(full.images[perm[cut:]], full.labels[perm[cut:]])
    return _make(f"imagefolder:{root.name}", train, test, names)


# --------------------------------------------------------------------------- generated


def generated(n_train: int = 64, n_test: int = 32, channels: int = 1, size: int = 8,
              classes: int = 4, seed: int = 0) -> Dataset:
    """A small learnable synthetic set: each class is a noisy fixed random pattern."""
    gen = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, channels, size, size, generator=gen)

    def split(n: int) -> ImageSet:
        labels = torch.randint(0, classes, (n,), generator=gen)
        noise = torch.rand(n, channels, size, size, generator=gen) * 0.5
        img = ((protos[labels] * 0.7 + noise) / 1.2 * 255).clamp(0, 255).to(torch.uint8)
        return ImageSet(img, labels)

    return _make("generated", split(n_train), split(n_test), [f"c{i}" for i in range(classes)])


def load_dataset(name: str, path: str | Path | None = None, *, image_size: int | None = None,
                 channels: int = 3) -> Dataset:
    """By name: ``fashion-mnist`` (path optional), ``cifar10``, ``imagefolder``, ``generated``.

    ``image_size``: ImageFolder's resize (default 32); for Fashion-MNIST an optional bilinear
    resize from its native 28x28 (none by default).
    """
    if name == "fashion-mnist":
        fashion = load_fashion_mnist(path or FASHION_MNIST_DIR)
        return fashion if image_size is None else fashion.resized(image_size)
    if name == "generated":
        return generated() if image_size is None else generated(size=image_size)
    if path is None:
        raise DatasetError(f"dataset {name!r} needs --data-path")
    if name == "cifar10":
        return load_cifar10(path)
    if name == "imagefolder":
        return load_image_folder(path, image_size or 32, channels)
    raise DatasetError(f"unknown dataset {name!r}; choose fashion-mnist, cifar10, imagefolder, "
                       f"generated")
