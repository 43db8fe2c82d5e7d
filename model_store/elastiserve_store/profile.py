"""Cost of a level: multiply-accumulates, parameters and wall-clock latency.

Counted with forward hooks on our own layer types so the store needs no profiling library;
these numbers go into the manifest, where the operator's policy uses them to predict which level
fits the current load.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass on one sample of ``input_shape`` (C, H, W)."""
    total = 0

    def conv_hook(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Conv2d)
        kh, kw = mod.kernel_size
        total += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Module, _inp: object, out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Linear)
        total += mod.in_features * mod.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    probe_forward(model, input_shape, handles)
    return total


@torch.no_grad()
def probe_forward(model: nn.Module, input_shape: Sequence[int],
                  hooks: Sequence[torch.utils.hooks.RemovableHandle]) -> None:
    """One eval-mode forward pass on zeros of ``input_shape`` so ``hooks`` see every layer;
    the hooks are removed and the model's train/eval mode restored even if it raises."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model(torch.zeros(1, *input_shape, dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


@torch.no_grad()
def latency_ms(model: nn.Module, input_shape: Sequence[int], batch: int, *, warmup: int = 2,
               repeats: int = 5) -> float:
    """Median wall-clock milliseconds of one eval-mode forward pass at ``batch``."""
    model.eval()
    param = next(model.parameters())
    x = torch.randn(batch, *input_shape, dtype=param.dtype, device=param.device)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return times[len(times) // 2]
