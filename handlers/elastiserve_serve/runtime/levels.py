"""The seam between a model store and the runtime: named levels as ready-built modules.

The runtime needs only what it takes to serve: each level's module, the input geometry the
decoder must produce, the normalisation, and the class names for the response. Keeping that as a
plain dataclass (instead of passing a store object around) lets tests build a level set from tiny
torch modules and lets another store format plug in with one adapter function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .control import level_index


@dataclass(frozen=True)
class InputSpec:
    """Geometry every decoded sample is brought to: channels x height x width."""

    channels: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"only 1- or 3-channel inputs are supported, got {self.channels}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input size must be positive, got {self.height}x{self.width}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass(frozen=True)
class Normalisation:
    """Per-channel mean and std applied after scaling pixels to [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def check(self, channels: int) -> None:
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(
                f"normalisation has {len(self.mean)}/{len(self.std)} values for {channels} channels"
            )
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise ValueError("normalisation values must be finite")
        if any(s <= 0 for s in self.std):
            raise ValueError("normalisation std must be positive")


@dataclass(frozen=True)
class LevelSet:
    """Every level of one model, built once, ordered narrowest first."""

    names: tuple[str, ...]
    modules: tuple[nn.Module, ...]
    input_spec: InputSpec
    normalisation: Normalisation
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a level set needs at least one level")
        if len(self.names) != len(self.modules):
            raise ValueError("one module per level name is required")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"level names must be unique: {self.names}")
        if not self.class_names:
            raise ValueError("class names must not be empty")
        self.normalisation.check(self.input_spec.channels)
        for module in self.modules:
            module.eval()

    def index(self, name: str) -> int:
        """Position of a level; raises ``KeyError`` for an unknown name."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(name) from None

    def resolve(self, ref: int | str) -> str:
        """The name of the level ``ref`` designates: an index (0 = narrowest) or a name.

        Indexes are what the operator decides; names are what people type. A string of ASCII
        digits that is not itself a level name is read as an index (so ``--level 2`` works
        from a shell). Raises ``KeyError`` for anything that designates no level, never
        another error, whatever a request or the control file holds
        (:func:`.control.level_index`).
        """
        return self.names[level_index(self.names, ref)]

    def module(self, name: str) -> nn.Module:
        return self.modules[self.index(name)]


def level_set(
    names: Sequence[str],
    modules: Sequence[nn.Module],
    input_spec: InputSpec,
    normalisation: Normalisation,
    class_names: Sequence[str],
) -> LevelSet:
    """Build a :class:`LevelSet` from any sequences (convenience for adapters and tests)."""
    return LevelSet(
        tuple(names), tuple(modules), input_spec, normalisation, tuple(class_names)
    )
