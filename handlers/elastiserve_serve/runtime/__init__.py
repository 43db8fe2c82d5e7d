"""The elastic runtime: everything that serves nested levels, with no TorchServe import.

TorchServe is archived upstream, so the logic that matters (loading levels, choosing the level
per batch, batching by level, decoding requests, level control, metrics) lives here behind small
seams; :mod:`elastiserve_serve.torchserve_handler` is only a thin adapter over it, and another
runtime (KServe, MLServer, a Triton Python backend) can be adapted the same way.
"""

from .control import ControlFileReader, ControlState, write_control_file
from .decode import BadRequest, DecodeLimits
from .engine import ElasticRuntime, Failure, RawRequest, Success
from .levels import InputSpec, LevelSet, Normalisation
from .metrics import MetricsSink, NullMetrics, RecordingMetrics
from .settings import RuntimeSettings

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
