"""Tiny nested-looking models for serving tests: fast on a shared CPU, distinct per level.

Each level is a different-width conv + linear head; the outputs only need to be deterministic and
to differ between levels, not to be accurate.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import nn

from elastiserve_serve.runtime import InputSpec, LevelSet, Normalisation

SPEC = InputSpec(channels=1, height=8, width=8)
CLASSES = tuple(f"class{i}" for i in range(4))
NAMES = ("small", "medium", "full")


class Tiny(nn.Module):
    def __init__(self, width: int, channels: int = 1, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))
        return out


def tiny_levels(spec: InputSpec = SPEC) -> LevelSet:
    torch.manual_seed(0)
    modules = tuple(Tiny(w, spec.channels) for w in (2, 4, 8))
    norm = Normalisation((0.5,) * spec.channels, (0.25,) * spec.channels)
    return LevelSet(NAMES, modules, spec, norm, CLASSES)


def png_bytes(width: int = 8, height: int = 8, mode: str = "L", fmt: str = "PNG") -> bytes:
    rng = np.random.default_rng(width * 31 + height)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    shape = (height, width) if channels == 1 else (height, width, channels)
    image = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
