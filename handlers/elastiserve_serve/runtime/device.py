"""Where the levels run: the ``device`` setting (``auto``/``cpu``/``cuda``), and what each level
costs there.

Why a setting and not a guess: a serving pod on a GPU node must use the GPU (that is why it was
scheduled there, and on a Jetson board the GPU is what the operator watches), but a pod that asks
for ``cuda`` on a node without one must fail its load loudly instead of serving on the CPU at a
tenth of the capacity it was sized for. ``auto`` takes CUDA where torch sees a device.

Levels are moved to the device once, when the runtime is built; every request's batch is moved
there before its forward pass and the probabilities come back to the CPU for the response.

Memory per level: :func:`level_memory_bytes` reports the bytes of a level's own parameters and
buffers (views into shared storage counted at their own size) plus, on CUDA, the peak activation
memory of one forward pass at the profiled batch size; it is exported as a gauge per level so an
operator can see what narrowing buys on a device whose memory is the limit.

Known limit: on CUDA, ``Module.to`` copies each level separately, so narrower levels no longer
share the full level's storage (device memory is the sum over levels, not the full level's).
On the CPU ``to("cpu")`` is a no-op and sharing is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from .levels import LevelSet

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def parse_device(value: object) -> str:
    """The ``device`` setting as given, checked; raises ``ValueError`` with the choices."""
    if not isinstance(value, str) or value not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)}, got {value!r}")
    return value


def resolve_device(
    setting: str, cuda_available: Callable[[], bool] = torch.cuda.is_available
) -> torch.device:
    """The device a setting means on this host.

    ``auto``: CUDA where torch sees a device, else the CPU. ``cuda`` without a device is a
    ``ValueError`` (a model sized for a GPU must not quietly serve on the CPU).
    """
    parse_device(setting)
    if setting == "cpu":
        return torch.device("cpu")
    if cuda_available():
        return torch.device("cuda")
    if setting == "cuda":
        raise ValueError("device is cuda but torch sees no CUDA device on this host")
    return torch.device("cpu")


def levels_on(levels: LevelSet, device: torch.device) -> LevelSet:
    """The level set with every module on ``device`` (the same set when already there)."""
    if device.type == "cpu" and all(_on(m, device) for m in levels.modules):
        return levels
    return dataclasses.replace(levels, modules=tuple(m.to(device) for m in levels.modules))


def _on(module: nn.Module, device: torch.device) -> bool:
    return all(t.device.type == device.type for t in (*module.parameters(), *module.buffers()))


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a level's parameters and buffers at their own (view) sizes."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def level_memory_bytes(
    levels: LevelSet, device: torch.device, samples: int = 1
) -> dict[str, int]:
    """Per level: its weight bytes, plus on CUDA the peak activation bytes of one forward pass
    of ``samples`` inputs (measured with the allocator's peak counter)."""
    report: dict[str, int] = {}
    for name, module in zip(levels.names, levels.modules, strict=True):
        total = weight_bytes(module)
        if device.type == "cuda":
            x = torch.zeros((max(1, samples), *levels.input_spec.shape), device=device)
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode():
                module(x)
            torch.cuda.synchronize(device)
            total += max(0, torch.cuda.max_memory_allocated(device) - base)
            del x
        report[name] = total
    return report
