"""Runtime settings, read from the ``handler:`` section of TorchServe's ``model-config.yaml``.

Everything a deployment may want to tune without rebuilding the bundle lives here; the parser
accepts a plain mapping so that it is independent of TorchServe and easy to table-test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .control import PIN_HEADER
from .decode import DecodeLimits
from .device import parse_device

__all__ = ["DEFAULT_CONTROL_FILE", "PIN_HEADER", "RuntimeSettings", "settings_from_mapping"]

DEFAULT_CONTROL_FILE = Path("/dev/shm/elastiserve/level.json")


@dataclass(frozen=True)
class RuntimeSettings:
    """How the runtime serves; see :func:`settings_from_mapping` for the keys."""

    control_file: Path | None = DEFAULT_CONTROL_FILE
    default_level: str | None = None  # None: the widest level
    allow_pin: bool = False
    top_k: int = 5
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    warmup_batch: int = 2
    threads: int = 0  # torch intra-op threads per worker; 0 leaves torch's default
    trace_levels: bool = True  # run levels as traced graphs where verified equal (runtime.graph)
    cuda_graphs: bool = True  # on CUDA, replay captured graphs where verified equal (cuda_graphs)
    device: str = "auto"  # auto | cpu | cuda (see runtime.device)
    worker_choice: bool = True  # per-batch level choice within the control file's bounds
    worker_target: float = 0.8  # share of the objective a batch's oldest request may use
    profile_max_samples: int = 0  # largest batch profiled at load; 0: the host's batch size
    profile_repeats: int = 3  # timed runs per level and batch size at load (median)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")
        if self.warmup_batch < 0 or self.threads < 0:
            raise ValueError("warmup_batch and threads must not be negative")
        if not 0 < self.worker_target <= 1:
            raise ValueError("worker_target must be in (0, 1]")
        parse_device(self.device)
        if self.profile_max_samples < 0 or self.profile_repeats < 1:
            raise ValueError("profile_max_samples must be >= 0 and profile_repeats >= 1")


def settings_from_mapping(raw: Mapping[str, object]) -> RuntimeSettings:
    """Parse the ``handler:`` mapping; unknown keys are rejected so typos do not pass silently.

    Keys: ``control_file`` (path, or empty for none), ``default_level``, ``allow_pin``,
    ``top_k``, ``max_body_bytes``, ``max_image_pixels``, ``max_samples``, ``warmup_batch``,
    ``threads``, ``trace_levels``, ``cuda_graphs``, ``worker_choice``, ``worker_target``,
    ``profile_max_samples``, ``profile_repeats``, ``device`` (``auto``/``cpu``/``cuda``).
    """
    known = {
        "control_file",
        "default_level",
        "allow_pin",
        "top_k",
        "max_body_bytes",
        "max_image_pixels",
        "max_samples",
        "warmup_batch",
        "threads",
        "trace_levels",
        "cuda_graphs",
        "worker_choice",
        "worker_target",
        "profile_max_samples",
        "profile_repeats",
        "device",
    }
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown handler settings: {sorted(unknown)}")
    defaults = RuntimeSettings()
    control = raw.get("control_file", str(DEFAULT_CONTROL_FILE))
    limits = DecodeLimits(
        max_body_bytes=_int(raw, "max_body_bytes", defaults.limits.max_body_bytes),
        max_image_pixels=_int(raw, "max_image_pixels", defaults.limits.max_image_pixels),
        max_samples=_int(raw, "max_samples", defaults.limits.max_samples),
    )
    default_level = raw.get("default_level")
    if default_level is not None and not isinstance(default_level, str):
        raise ValueError("default_level must be a string")
    allow_pin = raw.get("allow_pin", defaults.allow_pin)
    if not isinstance(allow_pin, bool):
        raise ValueError("allow_pin must be a boolean")
    trace = raw.get("trace_levels", defaults.trace_levels)
    if not isinstance(trace, bool):
        raise ValueError("trace_levels must be a boolean")
    cuda_graphs = raw.get("cuda_graphs", defaults.cuda_graphs)
    if not isinstance(cuda_graphs, bool):
        raise ValueError("cuda_graphs must be a boolean")
    worker_choice = raw.get("worker_choice", defaults.worker_choice)
    if not isinstance(worker_choice, bool):
        raise ValueError("worker_choice must be a boolean")
    target = raw.get("worker_target", defaults.worker_target)
    if isinstance(target, bool) or not isinstance(target, (int, float)):
        raise ValueError("worker_target must be a number")
    return RuntimeSettings(
        control_file=Path(str(control)) if control else None,
        default_level=default_level,
        allow_pin=allow_pin,
        top_k=_int(raw, "top_k", defaults.top_k),
        limits=limits,
        warmup_batch=_int(raw, "warmup_batch", defaults.warmup_batch),
        threads=_int(raw, "threads", defaults.threads),
        trace_levels=trace,
        cuda_graphs=cuda_graphs,
        worker_choice=worker_choice,
        worker_target=float(target),
        profile_max_samples=_int(raw, "profile_max_samples", defaults.profile_max_samples),
        profile_repeats=_int(raw, "profile_repeats", defaults.profile_repeats),
        device=parse_device(raw.get("device", defaults.device)),
    )


def _int(raw: Mapping[str, object], key: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer")
    return value
