"""The elastic runtime: everything that serves nested levels, with no TorchServe import.

TorchServe is archived upstream, so the logic that matters (loading levels, choosing the level
per batch, batching by level, decoding requests, level control, metrics) lives here behind small
seams; :mod:`elastiserve_serve.torchserve_handler` is only a thin adapter over it, and another
runtime (KServe, MLServer, a Triton Python backend) can be adapted the same way.

The names below are imported on first use (PEP 562): the level agent and the liveness probe
import :mod:`.control` and :mod:`.safe_files`, which need only the standard library, and must
not pay for torch (hundreds of MB in a container limited to a few dozen).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .control import ControlFileReader, ControlState, write_control_file
    from .decode import BadRequest, DecodeLimits
    from .engine import ElasticRuntime, Failure, RawRequest, Success
    from .levels import InputSpec, LevelSet, Normalisation
    from .metrics import MetricsSink, NullMetrics, RecordingMetrics
    from .settings import RuntimeSettings

_HOMES = {
    "BadRequest": "decode",
    "ControlFileReader": "control",
    "ControlState": "control",
    "DecodeLimits": "decode",
    "ElasticRuntime": "engine",
    "Failure": "engine",
    "InputSpec": "levels",
    "LevelSet": "levels",
    "MetricsSink": "metrics",
    "Normalisation": "levels",
    "NullMetrics": "metrics",
    "RawRequest": "engine",
    "RecordingMetrics": "metrics",
    "RuntimeSettings": "settings",
    "Success": "engine",
    "write_control_file": "control",
}

__all__ = [
    "BadRequest",
    "ControlFileReader",
    "ControlState",
    "DecodeLimits",
    "ElasticRuntime",
    "Failure",
    "InputSpec",
    "LevelSet",
    "MetricsSink",
    "Normalisation",
    "NullMetrics",
    "RawRequest",
    "RecordingMetrics",
    "RuntimeSettings",
    "Success",
    "write_control_file",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)
