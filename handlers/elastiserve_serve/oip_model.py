"""What the Open Inference Protocol says about one served model: its v2 metadata.

Why a separate description: TorchServe's management API knows a model's workers and version
but not its tensors, and the handler's answer only shows what one request produced. A v2
client asks ``GET /v2/models/<name>`` first to learn the input's datatype and shape, so the
gateway reads them where they are written down: the bundle manifest inside the served
``.mar`` (input geometry, classes, levels with their cost), TorchServe's ``MAR-INF/
MANIFEST.json`` (the version) and the archive's ``model-config.yaml`` (how many answers per
sample, how many samples per request). Reading the archive costs one zip open at start; the
same bounded readers as :mod:`.served_levels` refuse an archive that is not one.

Tensors, as v2 names them (a model here has one input and three outputs):

* input ``input-0``: ``FP32`` ``[-1, C, H, W]``, pixel values in [0, 1] before the model's
  normalisation (what the TorchServe API's JSON tensor takes); ``BYTES`` ``[-1]`` PNG/JPEG
  images are accepted in its place (base64 in JSON, raw with the binary data extension);
* outputs ``label`` (``BYTES`` ``[-1, k]``), ``probability`` (``FP32`` ``[-1, k]``), the top
  ``k`` classes per sample, best first, and ``level`` (``BYTES`` ``[-1]``), the level that
  answered each sample.

When a model's archive is not known (a gateway configured without it), the description keeps
what is known for sure (name, levels) and marks every unknown dimension ``-1``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .oip_types import MetadataTensor, ModelLevel, ModelMetadataResponse

__all__ = [
    "DEFAULT_MAX_SAMPLES",
    "DEFAULT_TOP_K",
    "INPUT_NAME",
    "OUTPUT_LABEL",
    "OUTPUT_LEVEL",
    "OUTPUT_PROBABILITY",
    "PLATFORM",
    "OipModel",
    "OipModelError",
    "oip_model_of_mar",
    "oip_model_of_names",
]

INPUT_NAME = "input-0"
OUTPUT_LABEL = "label"
OUTPUT_PROBABILITY = "probability"
OUTPUT_LEVEL = "level"
OUTPUTS = (OUTPUT_LABEL, OUTPUT_PROBABILITY, OUTPUT_LEVEL)
PLATFORM = "pytorch_elastiserve"
"""``platform``: the protocol leaves the name to the server (Triton says ``pytorch_libtorch``,
KServe's TorchServe runtime ``pytorch``); this one names what answers."""
DEFAULT_TOP_K = 5
DEFAULT_MAX_SAMPLES = 64
"""The handler's defaults (:class:`~.runtime.settings.RuntimeSettings` ``top_k`` and
``limits.max_samples``), repeated so that the gateway need not import the runtime (torch);
a unit test keeps them equal."""
MAX_ARCHIVE_MEMBER = 16 << 20


class OipModelError(ValueError):
    """The archive cannot describe its model (not a .mar, no manifest, a broken config)."""


@dataclass(frozen=True)
class OipModel:
    """One model as v2 describes it; ``input_shape`` ``None`` when unknown."""

    name: str
    versions: tuple[str, ...] = ()
    input_shape: tuple[int, int, int] | None = None
    """``(C, H, W)`` of one sample."""
    class_names: tuple[str, ...] = ()
    levels: tuple[ModelLevel, ...] = ()
    top_k: int = DEFAULT_TOP_K
    max_samples: int = DEFAULT_MAX_SAMPLES

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(level.name for level in self.levels)

    @property
    def answers_per_sample(self) -> int:
        """``k``: the top-k the handler returns, at most the number of classes (-1 unknown)."""
        return min(self.top_k, len(self.class_names)) if self.class_names else -1

    def metadata(self, active_level: str | None = None) -> ModelMetadataResponse:
        """``GET /v2/models/<name>``; ``active_level`` is what unpinned requests get now."""
        c, h, w = self.input_shape or (-1, -1, -1)
        k = self.answers_per_sample
        parameters: dict[str, Any] = {
            "levels": ",".join(self.level_names),
            "pin_parameter": "level",
            "image_input": "BYTES [-1]: PNG or JPEG, base64 in JSON",
            "max_samples": self.max_samples,
        }
        if active_level is not None:
            parameters["active_level"] = active_level
        return ModelMetadataResponse(
            name=self.name,
            versions=list(self.versions) or None,
            platform=PLATFORM,
            inputs=[MetadataTensor(name=INPUT_NAME, datatype="FP32", shape=[-1, c, h, w])],
            outputs=[
                MetadataTensor(name=OUTPUT_LABEL, datatype="BYTES", shape=[-1, k]),
                MetadataTensor(name=OUTPUT_PROBABILITY, datatype="FP32", shape=[-1, k]),
                MetadataTensor(name=OUTPUT_LEVEL, datatype="BYTES", shape=[-1]),
            ],
            parameters=parameters,
            levels=list(self.levels) or None,
        )


def oip_model_of_names(name: str, level_names: Sequence[str]) -> OipModel:
    """What can be said of a model whose archive the gateway was not given."""
    return OipModel(name=name, levels=tuple(ModelLevel(name=n) for n in level_names))


def _member(archive: zipfile.ZipFile, member: str, where: Path) -> bytes:
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise OipModelError(f"{where}: no {member} inside") from None
    if info.file_size > MAX_ARCHIVE_MEMBER:
        raise OipModelError(f"{where}: {member} is larger than {MAX_ARCHIVE_MEMBER} bytes")
    return archive.read(info)


def _positive(raw: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OipModelError(f"{where}: handler.{key} must be a whole number >= 1")
    return value


def oip_model_of_mar(mar: Path, name: str) -> OipModel:
    """Describe the model that ``mar`` serves under ``name`` (only the small members are read;
    the weights stay in the archive)."""
    from elastiserve_store.errors import ManifestError
    from elastiserve_store.manifest import Manifest

    try:
        with zipfile.ZipFile(mar) as archive:
            manifest_bytes = _member(archive, "manifest.json", mar)
            ts_manifest_bytes = _member(archive, "MAR-INF/MANIFEST.json", mar)
            config_bytes = _member(archive, "model-config.yaml", mar)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise OipModelError(f"{mar}: not a readable .mar ({error})") from None
    try:
        manifest = Manifest.from_dict(json.loads(manifest_bytes.decode("utf-8")))
        ts_manifest = json.loads(ts_manifest_bytes.decode("utf-8"))
        config = yaml.safe_load(config_bytes.decode("utf-8")) or {}
    except (UnicodeDecodeError, ValueError, RecursionError, ManifestError,
            yaml.YAMLError) as error:
        raise OipModelError(f"{mar}: cannot describe the model ({error})") from None
    model = ts_manifest.get("model") if isinstance(ts_manifest, dict) else None
    version = model.get("modelVersion") if isinstance(model, dict) else None
    handler = config.get("handler") if isinstance(config, dict) else None
    handler = handler if isinstance(handler, dict) else {}
    return OipModel(
        name=name,
        versions=(version,) if isinstance(version, str) and version else (),
        input_shape=(manifest.input.channels, manifest.input.height, manifest.input.width),
        class_names=tuple(manifest.class_names),
        levels=tuple(
            ModelLevel(name=level.name, macs=level.macs, params=level.params,
                       accuracy=level.accuracy)
            for level in manifest.levels
        ),
        top_k=_positive(handler, "top_k", DEFAULT_TOP_K, str(mar)),
        max_samples=_positive(handler, "max_samples", DEFAULT_MAX_SAMPLES, str(mar)),
    )
