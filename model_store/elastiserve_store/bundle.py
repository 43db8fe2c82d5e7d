"""The nested bundle: ``manifest.json`` + ``weights.safetensors`` in one directory.

The model is one of the in-project architectures or (schema 3) a constructor the serving side
allows (:mod:`.constructors`: torchvision's classification models, user factories listed in
``ELASTISERVE_ALLOWED_FACTORIES``), tagged with the dependency-group layout the manifest records
(:mod:`.external`). The allow-list is checked on the manifest's name before anything is built.

Layout of the weights file:

* ``shared.<tensor>``: every tensor the levels share (conv and hidden linear weights), stored
  once at the largest level's width with each slot's channels in *nested order*, so level k's
  copy is a prefix slice on every slotted axis;
* ``levels.<k>.<tensor>``: what each level owns, at that level's width: batch-norm parameters
  and running statistics (activation statistics differ per width) and the classifier head.

All levels together therefore cost the full model plus a few small per-level tensors.

Levels may also differ in depth (manifest schema 2, ``skipped_blocks``): a level that skips a
residual block has no tensors for it, shared or own; a block's shared tensors are stored when
the largest level runs it. Depth nests like width: a block a level runs, every larger level
runs too.
:func:`load_bundle` runs every integrity check (schema version, pickle refusal, truncation,
SHA-256, names, shapes and dtypes against manifest and architecture) before a tensor is read.

Dtypes: every tensor is ``F32`` but batch norm's ``num_batches_tracked`` counters (``I64``),
which is what the levels are built from and what the runtime's float32 inputs can run through;
a manifest that records ``weights.dtypes`` must also agree with the file's header entry by
entry.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import architectures, constructors, external, integrity, profile
from .errors import CorruptWeightsError, ManifestError, ShapeMismatchError
from .manifest import (
    MANIFEST_NAME,
    WEIGHTS_NAME,
    InputSpec,
    LevelInfo,
    Manifest,
    Normalisation,
    SkippedBlocksError,
    WeightsRef,
    schema_version_for,
)
from .slots import (
    TensorSlots,
    Widths,
    expected_shape,
    prefix,
    slot_groups,
    tensor_slots,
    widths_of,
)

SHARED = "shared."
COUNTER_SUFFIX = "num_batches_tracked"
"""Batch norm's step counter: the one integer tensor a level holds."""


def expected_dtype(name: str) -> str:
    """The safetensors dtype a bundle tensor must have."""
    return "I64" if name.endswith(COUNTER_SUFFIX) else "F32"


def _dtype_name(tensor: torch.Tensor) -> str:
    names = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16",
             torch.bfloat16: "BF16", torch.float64: "F64", torch.int32: "I32"}
    return names.get(tensor.dtype, str(tensor.dtype))


def level_prefix(k: int) -> str:
    """Name prefix of level ``k``'s own tensors in the weights file."""
    return f"levels.{k}."


def _layout(arch: str, arch_args: Mapping[str, Any], skipped: Sequence[str] = ()
            ) -> tuple[dict[str, TensorSlots], dict[str, tuple[int, ...]]]:
    """Slot axes and full-width shapes of every tensor of ``arch`` without the ``skipped``
    blocks (built on the meta device; cached and read-only, as building a constructor's model
    costs time even there and each level asks again)."""
    return _layout_cached(arch, json.dumps(arch_args, sort_keys=True), tuple(skipped))


@functools.lru_cache(maxsize=32)
def _layout_cached(arch: str, args_json: str, skipped: tuple[str, ...]
                   ) -> tuple[dict[str, TensorSlots], dict[str, tuple[int, ...]]]:
    with torch.device("meta"):
        model = architectures.build(arch, json.loads(args_json), skipped_blocks=skipped)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return tensor_slots(model), shapes


def expected_tensors(arch: str, arch_args: Mapping[str, Any], level_widths: Sequence[Widths],
                     level_skipped: Sequence[Sequence[str]] | None = None
                     ) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a bundle with these levels must hold."""
    skipped = list(level_skipped) if level_skipped is not None else [()] * len(level_widths)
    out: dict[str, tuple[int, ...]] = {}
    top = level_widths[-1]
    layout, shapes = _layout(arch, arch_args, skipped[-1])
    for name, info in layout.items():
        if not info.per_level:
            out[SHARED + name] = expected_shape(shapes[name], info.axes, top)
    for k, widths in enumerate(level_widths):
        layout, shapes = _layout(arch, arch_args, skipped[k])
        for name, info in layout.items():
            if info.per_level:
                out[level_prefix(k) + name] = expected_shape(shapes[name], info.axes, widths)
    return out


def split_nested(models: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """Turn level models (smallest first, channels already in nested order) into bundle tensors.

    Raises ``ValueError`` if a level's shared tensors are not exactly a prefix of the largest
    level's, or a level runs a block the largest level skips: that is the property the serving
    side relies on, so it is checked at write time.
    """
    if not models:
        raise ValueError("need at least one level")
    layout = tensor_slots(models[-1])
    top = models[-1].state_dict()
    top_widths = widths_of(models[-1])
    out: dict[str, torch.Tensor] = {}
    for name, info in layout.items():
        if not info.per_level:
            out[SHARED + name] = top[name].detach().cpu().contiguous().clone()
    for k, model in enumerate(models):
        widths = widths_of(model)
        state = model.state_dict()
        for name, info in tensor_slots(model).items():
            tensor = state[name].detach().cpu()
            if info.per_level:
                out[level_prefix(k) + name] = tensor.contiguous().clone()
            elif SHARED + name not in out:
                raise ValueError(f"level {k}: tensor {name} belongs to a block the largest "
                                 f"level skips; levels are not nested in depth")
            elif not torch.equal(prefix(out[SHARED + name], info.axes, widths, top_widths),
                                 tensor):
                raise ValueError(f"level {k}: tensor {name} is not a prefix of the largest "
                                 f"level's; channels are not in nested order")
    return out


def write_bundle(
    directory: str | Path,
    *,
    architecture: str,
    arch_args: Mapping[str, Any],
    models: Sequence[nn.Module],
    names: Sequence[str] | None = None,
    channel_ratios: Sequence[float],
    input_spec: InputSpec,
    normalisation: Normalisation,
    class_names: Sequence[str],
    accuracies: Sequence[float | None] | None = None,
    latencies_ms: Sequence[tuple[float, float] | None] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Manifest:
    """Write a bundle from the level models (smallest first, nested channel order).

    MACs and parameter counts are computed here from the models themselves, so the manifest
    cannot disagree with the weights; accuracy and latency are measured by the caller.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = len(models)
    names = list(names) if names is not None else [f"L{k}" for k in range(n)]
    if not (len(names) == len(channel_ratios) == n):
        raise ValueError("names, channel_ratios and models must have the same length")
    tensors = split_nested(models)
    shape = (input_spec.channels, input_spec.height, input_spec.width)
    levels = []
    for k, model in enumerate(models):
        lat = latencies_ms[k] if latencies_ms is not None else None
        levels.append(LevelInfo(
            name=names[k],
            channel_ratio=float(channel_ratios[k]),
            widths=level_widths(architecture, arch_args, model),
            skipped_blocks=architectures.skipped_blocks_of(model),
            macs=profile.count_macs(model, shape),
            params=profile.count_params(model),
            accuracy=None if accuracies is None else accuracies[k],
            latency_ms_b1=None if lat is None else lat[0],
            latency_ms_b32=None if lat is None else lat[1],
        ))
    weights_path = directory / WEIGHTS_NAME
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".weights-", suffix=".tmp")
    os.close(fd)
    save_file(tensors, tmp, metadata={"format": "elastiserve-nested"})
    os.replace(tmp, weights_path)
    manifest = Manifest(
        architecture=architecture,
        arch_args=dict(arch_args),
        levels=tuple(levels),
        input=input_spec,
        normalisation=normalisation,
        class_names=tuple(class_names),
        weights=WeightsRef(
            file=WEIGHTS_NAME,
            sha256=integrity.sha256_file(weights_path),
            tensors={k: tuple(v.shape) for k, v in tensors.items()},
            dtypes={k: _dtype_name(v) for k, v in tensors.items()},
        ),
        training=dict(training or {}),
        schema_version=schema_version_for(levels, architecture),
    )
    write_manifest(directory, manifest)
    return manifest


def level_widths(arch: str, arch_args: Mapping[str, Any], model: nn.Module) -> Widths:
    """A level model's widths for the manifest: every slot named, as :func:`architectures.build`
    wants; the hidden slot of a block the model skips (absent from its tensors) is recorded as 1.
    """
    widths = widths_of(model)
    for slot in architectures.full_widths(arch, arch_args):
        widths.setdefault(slot, 1)
    return widths


def write_manifest(directory: str | Path, manifest: Manifest) -> None:
    """Atomically (re)write ``manifest.json`` (e.g. to add measured latencies)."""
    path = Path(directory) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, path)


@dataclass(frozen=True)
class NestedBundle:
    """A loaded, verified bundle; builds any level as a compact dense eval-mode model."""

    manifest: Manifest
    directory: Path
    tensors: Mapping[str, torch.Tensor]

    @property
    def level_names(self) -> tuple[str, ...]:
        return self.manifest.level_names

    def level_index(self, level: int | str) -> int:
        """Index of a level given by index or name."""
        if isinstance(level, str):
            try:
                return self.level_names.index(level)
            except ValueError:
                raise KeyError(f"no level named {level!r}; levels: {self.level_names}") from None
        if not 0 <= level < len(self.manifest.levels):
            raise IndexError(f"level {level} out of range 0..{len(self.manifest.levels) - 1}")
        return level

    def state_dict(self, level: int | str) -> dict[str, torch.Tensor]:
        """Level ``level``'s state dict; shared tensors are prefix *views* (no copy), but on
        a concatenated or grouped axis, whose level is several ranges (a copy)."""
        k = self.level_index(level)
        widths = self.manifest.levels[k].widths
        layout, _ = _layout(self.manifest.architecture, self.manifest.arch_args,
                            self.manifest.levels[k].skipped_blocks)
        top = self.manifest.levels[-1].widths  # what the shared tensors are stored at
        own = level_prefix(k)
        state = {}
        for name, info in layout.items():
            if info.per_level:
                state[name] = self.tensors[own + name]
            else:
                state[name] = prefix(self.tensors[SHARED + name], info.axes, widths, top)
        return state

    def build_level(self, level: int | str, *, share_storage: bool = False) -> nn.Module:
        """Level ``level`` as a dense model in eval mode.

        With ``share_storage`` the shared weights are views into the bundle's tensors, so all
        levels together take about the memory of the largest (slicing on the input-channel axis
        gives non-contiguous weights, which some kernels copy per call; off by default).
        """
        k = self.level_index(level)
        m = self.manifest
        with torch.device("meta"):
            model = architectures.build(m.architecture, m.arch_args, m.levels[k].widths,
                                        m.levels[k].skipped_blocks)
        state = self.state_dict(k)
        if not share_storage:
            state = {n: t.clone() for n, t in state.items()}
        model.load_state_dict(state, strict=True, assign=True)
        if share_storage:
            model.requires_grad_(False)
        return model.eval()

    def build_all(self, *, share_storage: bool = False) -> list[nn.Module]:
        """Every level, smallest first."""
        return [self.build_level(k, share_storage=share_storage)
                for k in range(len(self.manifest.levels))]

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Apply the manifest's mean/std to a float NCHW batch of [0, 1] pixels."""
        mean = torch.tensor(self.manifest.normalisation.mean, dtype=images.dtype)
        std = torch.tensor(self.manifest.normalisation.std, dtype=images.dtype)
        return (images - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def _check_levels(manifest: Manifest) -> list[Widths]:
    try:
        full = architectures.full_widths(manifest.architecture, manifest.arch_args)
    except ManifestError:
        raise
    except Exception as err:  # any argument the architecture cannot take: a bad manifest
        raise ManifestError(f"architecture {manifest.architecture[:60]!r} refuses its "
                            f"arguments: {type(err).__name__}: {str(err)[:200]}") from None
    widths = [dict(level.widths) for level in manifest.levels]
    for k, w in enumerate(widths):
        if set(w) != set(full):
            raise ManifestError(f"level {k} widths do not name the slots of "
                                f"{manifest.architecture}")
        too_wide = {s: v for s, v in w.items() if v > full[s]}
        if too_wide:
            raise ManifestError(f"level {k} wider than the architecture: {too_wide}")
        if k and any(w[s] < widths[k - 1][s] for s in w):
            raise ManifestError(f"level {k} is not a superset of level {k - 1}")
    if constructors.is_external(manifest.architecture):
        groups = slot_groups(_layout(manifest.architecture, manifest.arch_args)[0])
        for k, w in enumerate(widths):
            uneven = {s: v for s, v in w.items() if v % groups.get(s, 1)}
            if uneven:
                raise ManifestError(f"level {k} cuts grouped slots to widths that are not a "
                                    f"multiple of their groups: {dict(list(uneven.items())[:5])}")
    _check_depth(manifest)
    return widths


def _check_depth(manifest: Manifest) -> None:
    """Each level's skipped blocks exist, may be skipped, and nest (a larger level skips a
    subset of what a smaller one skips)."""
    for k, level in enumerate(manifest.levels):
        try:
            architectures.check_skipped(manifest.architecture, level.skipped_blocks)
        except architectures.BlockSkipError as err:
            raise SkippedBlocksError(f"level {k} ({level.name}): {err}") from None
        if k:
            runs_again = set(level.skipped_blocks) - set(manifest.levels[k - 1].skipped_blocks)
            if runs_again:
                raise SkippedBlocksError(
                    f"level {k} ({level.name}) skips {sorted(runs_again)}, which level {k - 1} "
                    f"runs: a larger level must run every block a smaller one runs")


def load_bundle(directory: str | Path) -> NestedBundle:
    """Verify and load a bundle. Every refusal is raised before any tensor is read."""
    directory = Path(directory)
    manifest = Manifest.read(directory)
    if constructors.is_external(manifest.architecture):
        # Before anything is built: the serving side decides which code a bundle may run.
        constructors.check_allowed(manifest.architecture)
    widths = _check_levels(manifest)
    path = directory / manifest.weights.file
    header = integrity.verify_weights(path, manifest.weights.sha256)
    listed = dict(manifest.weights.tensors)
    found = {name: h.shape for name, h in header.items()}
    if found != listed:
        raise ShapeMismatchError(f"{path}: tensors disagree with the manifest: "
                                 f"{_diff(listed, found)}")
    _check_dtypes(path, manifest, header)
    try:
        expected = expected_tensors(manifest.architecture, manifest.arch_args, widths,
                                    [lv.skipped_blocks for lv in manifest.levels])
    except ManifestError:
        raise
    except Exception as err:  # arguments the architecture cannot be built with
        raise ManifestError(f"architecture {manifest.architecture[:60]!r} cannot be built from "
                            f"the manifest: {type(err).__name__}") from None
    if found != expected:
        raise ShapeMismatchError(f"{path}: tensors disagree with {manifest.architecture} at the "
                                 f"manifest's level widths: {_diff(expected, found)}")
    if constructors.is_external(manifest.architecture):
        inp = manifest.input
        external.check_runs(manifest.architecture, manifest.arch_args, widths,
                            (inp.channels, inp.height, inp.width))
    return NestedBundle(manifest=manifest, directory=directory, tensors=load_file(str(path)))


def _check_dtypes(path: Path, manifest: Manifest,
                  header: Mapping[str, integrity.TensorHeader]) -> None:
    """Each tensor's dtype in the header: the one the manifest records (when it does), and the
    one a level can run with (:func:`expected_dtype`)."""
    recorded = manifest.weights.dtypes
    for name, entry in header.items():
        if recorded is not None and recorded.get(name) != entry.dtype:
            raise CorruptWeightsError(
                f"{path}: {name[:80]!r} is {entry.dtype} in the file, "
                f"{recorded.get(name)} in the manifest")
        if entry.dtype != expected_dtype(name):
            raise CorruptWeightsError(f"{path}: {name[:80]!r} is {entry.dtype}; bundle tensors "
                                      f"are {expected_dtype(name)}")


def _diff(want: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]]) -> str:
    parts = []
    for name in sorted(set(want) | set(got)):
        if want.get(name) != got.get(name):
            parts.append(f"{name}: expected {want.get(name)}, found {got.get(name)}")
        if len(parts) == 5:
            parts.append("...")
            break
    return "; ".join(parts)


def with_levels(manifest: Manifest, **updates: Sequence[Any]) -> Manifest:
    """A copy of ``manifest`` with per-level fields replaced (e.g. ``accuracy=[...]``)."""
    levels = list(manifest.levels)
    for field_name, values in updates.items():
        levels = [replace(lv, **{field_name: v}) for lv, v in zip(levels, values, strict=True)]
    return replace(manifest, levels=tuple(levels))
