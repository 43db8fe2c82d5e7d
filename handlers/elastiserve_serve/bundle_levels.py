"""Adapter from the model store's nested bundle to the runtime's :class:`LevelSet` seam.

``load_bundle`` verifies the weights' SHA-256 (and refuses pickles and shape mismatches) before
it reads a tensor, so a serving process never builds a level from unchecked bytes.
"""

from __future__ import annotations

from pathlib import Path

from elastiserve_store.bundle import NestedBundle, load_bundle

from .runtime.levels import InputSpec, LevelSet, Normalisation


def levels_from_bundle(bundle: NestedBundle, *, share_storage: bool = True) -> LevelSet:
    """Build every level once.

    ``share_storage`` makes the levels' shared weights views of one tensor set, so all levels
    cost about as much memory as the widest (the design goal); the benchmark measures both.
    """
    manifest = bundle.manifest
    modules = bundle.build_all(share_storage=share_storage)
    return LevelSet(
        names=tuple(manifest.level_names),
        modules=tuple(modules),
        input_spec=InputSpec(
            manifest.input.channels, manifest.input.height, manifest.input.width
        ),
        normalisation=Normalisation(
            tuple(manifest.normalisation.mean), tuple(manifest.normalisation.std)
        ),
        class_names=tuple(manifest.class_names),
    )


def load_levels(directory: str | Path, *, share_storage: bool = True) -> LevelSet:
    """Verify and load a bundle directory, then build every level."""
    return levels_from_bundle(load_bundle(directory), share_storage=share_storage)
