"""On CUDA, replay each level as captured CUDA graphs, one per batch size, where verified equal.

Why: a small CNN at a small batch launches hundreds of short kernels, and on a GPU (a Jetson
board above all) the CPU's time to launch them is most of the batch's time; a CUDA graph
launches the whole recorded sequence at once. A graph replays fixed shapes from fixed
buffers, so each level gets one graph per batch size the worker profiles (1, 2, 4, ... up to
the host's batch size, :func:`.service_times.profile_sizes`): a batch of ``n`` is copied into
the smallest captured size ``>= n`` (the rows past ``n`` are zeros; a CNN in eval mode treats
rows independently, so they change nothing), and the first ``n`` rows of the output are
returned. A batch larger than every captured size runs the level as it was.

Verified equal, or not used: after capturing a size, the graph is replayed on a probe batch and
compared with the level run directly on the same batch (:data:`CHECK_TOLERANCE`); a size whose
capture fails or whose output differs is dropped with its reason logged, and a level with no
size left stays as it was. Serving never depends on a graph.

Where it runs: only with ``device`` resolving to CUDA and ``cuda_graphs`` on (the default);
the capture itself is behind a seam (:data:`Capture`), so the padding, the size choice and the
fallbacks are tested on the CPU with a stand-in capture. Not run on a GPU in this project yet
(none was lent); ``benchmarks/gpu_check.py`` reports which sizes each level got.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .levels import LevelSet

log = logging.getLogger(__name__)

CHECK_TOLERANCE = 1e-4
WARMUP_RUNS = 3
"""Runs before capture (on a side stream, as CUDA requires): cuDNN picks its algorithms and
TorchScript's profiling executor optimises a traced level within the first runs."""

Captured = tuple[Callable[[], None], torch.Tensor, Any]
Capture = Callable[[nn.Module, torch.Tensor, Any], Captured]
"""Record ``module(static_input)`` into memory pool ``pool`` (``None``: a new one); return
``replay`` (re-runs it on whatever the input buffer holds), the output buffer each replay
overwrites, and the pool (for the level's next size)."""


def capture_cuda(module: nn.Module, static_input: torch.Tensor, pool: Any) -> Captured:
    """The real capture: warm-up on a side stream, then ``torch.cuda.graph`` into ``pool``.

    One pool per level, shared by its sizes (captured largest first, so the smaller ones fit
    in what the largest reserved): a worker replays one graph at a time and copies each
    output out at once, so no replay overwrites memory another one still needs."""
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(WARMUP_RUNS):
            module(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool), torch.inference_mode():
        static_output = module(static_input)
    return graph.replay, static_output, graph.pool()


@dataclasses.dataclass(frozen=True)
class _Graph:
    replay: Callable[[], None]
    static_input: torch.Tensor
    static_output: torch.Tensor


class GraphedLevel(nn.Module):
    """A level that replays a captured graph for the smallest captured size that fits."""

    def __init__(self, inner: nn.Module, graphs: dict[int, _Graph]) -> None:
        super().__init__()
        self.inner = inner  # a submodule: parameters() and the device stay the level's
        self._graphs = graphs
        self.sizes: tuple[int, ...] = tuple(sorted(graphs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        size = next((s for s in self.sizes if s >= n), None)
        if size is None:
            return self.inner(x)  # type: ignore[no-any-return]
        graph = self._graphs[size]
        # The buffers were made in inference mode (as the capture ran): so are their updates.
        with torch.inference_mode():
            graph.static_input[:n].copy_(x)
            if n < size:
                graph.static_input[n:].zero_()
            graph.replay()
            return graph.static_output[:n].clone()


def wants_graphs(device: torch.device, enabled: bool) -> bool:
    """Graphs only on CUDA (the CPU has no launch cost to save) and only when enabled."""
    return enabled and device.type == "cuda"


def graph_levels(levels: LevelSet, sizes: Sequence[int],
                 capture: Capture = capture_cuda) -> LevelSet:
    """The level set with each level graphed at every size that captures and checks equal
    (a level already graphed is kept as it is)."""
    modules = tuple(
        module if isinstance(module, GraphedLevel)
        else graph_level(name, module, levels.input_spec.shape, sizes, capture)
        for name, module in zip(levels.names, levels.modules, strict=True)
    )
    return dataclasses.replace(levels, modules=modules)


def graph_level(name: str, module: nn.Module, shape: tuple[int, ...], sizes: Sequence[int],
                capture: Capture) -> nn.Module:
    """``module`` graphed at each of ``sizes`` that works, or ``module`` itself if none does."""
    module.eval()
    first = next(iter(module.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    graphs: dict[int, _Graph] = {}
    pool: Any = None
    for size in sorted(set(sizes), reverse=True):
        try:
            with torch.inference_mode():  # serving runs in it: buffers and checks do too
                static_input = torch.zeros((size, *shape), device=device)
                replay, static_output, pool = capture(module, static_input, pool)
                probe = torch.randn((size, *shape), generator=generator).to(device)
                expected = module(probe)
                static_input.copy_(probe)
                replay()
                equal = static_output.shape == expected.shape and torch.allclose(
                    static_output, expected, atol=CHECK_TOLERANCE, rtol=CHECK_TOLERANCE)
        except Exception as err:  # any failure means: no graph at this size
            log.warning("level %s: no CUDA graph at batch %d: capture failed: %s",
                        name, size, err)
            continue
        if not equal:
            log.warning("level %s: no CUDA graph at batch %d: output differs from the level",
                        name, size)
            continue
        graphs[size] = _Graph(replay, static_input, static_output)
    if not graphs:
        return module
    log.info("level %s: CUDA graphs at batch sizes %s", name, sorted(graphs))
    return GraphedLevel(module, graphs)
