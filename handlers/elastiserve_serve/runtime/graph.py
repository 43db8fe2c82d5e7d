"""Optionally run every level as a traced graph instead of eager Python (``trace_levels``).

Why: TorchServe's stock handlers serve a TorchScript file, and on this project's CPU benchmark
(ResNet-20 at 3x224x224, one thread) the same model ran 10-20 % faster traced than eager, with
the same kernels: the gap is eager dispatch between ops, which grows on a busy CPU. Tracing
here happens in memory, from the modules built from the verified safetensors weights, so the
load path still reads no pickle and no serialized program.

What is kept: a traced module holds the *same* parameter tensors as the module it was traced
from, so levels that share storage (narrower levels are prefix views of the full weights) still
share it; outputs are checked against eager on a sample before a graph replaces a level.

What can go wrong, and the answer: TorchScript is deprecated upstream and tracing cannot follow
data-dependent control flow. Any error while tracing, or a graph whose output differs from
eager on the check sample, keeps that level eager and logs why; serving never depends on it.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings

import torch
from torch import nn

from .levels import LevelSet

log = logging.getLogger(__name__)

CHECK_TOLERANCE = 1e-4


def trace_levels(levels: LevelSet, batch: int = 1) -> LevelSet:
    """A level set whose modules are traced graphs where tracing is safe, else left eager.

    ``batch`` is the tracing input's batch size; 1 keeps the activations allocated while
    tracing (per level, at full resolution) small.
    """
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn((max(1, batch), *levels.input_spec.shape), generator=generator)
    first = next(iter(levels.modules[-1].parameters()), None)
    if first is not None:  # trace on the levels' device (runtime.device moved them there)
        sample = sample.to(first.device)
    modules = tuple(
        _traced_or_eager(name, module, sample)
        for name, module in zip(levels.names, levels.modules, strict=True)
    )
    return dataclasses.replace(levels, modules=modules)


def _traced_or_eager(name: str, module: nn.Module, sample: torch.Tensor) -> nn.Module:
    module.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # TorchScript's deprecation notice, and tracer warnings that the check below
            # turns into a decision instead of a log line.
            warnings.simplefilter("ignore")
            graph: nn.Module = torch.jit.trace(  # type: ignore[no-untyped-call]
                module, sample, check_trace=False
            )
            check = -torch.cat([sample, sample[:1]])
            expected = module(check)
            got = graph(check)
    except Exception as err:  # any failure means: serve this level eager
        log.warning("level %s stays eager: tracing failed: %s", name, err)
        return module
    if got.shape != expected.shape or not torch.allclose(
        got, expected, atol=CHECK_TOLERANCE, rtol=CHECK_TOLERANCE
    ):
        log.warning("level %s stays eager: traced output differs from eager", name)
        return module
    return graph
