"""CUDA graphs per level and batch size (``runtime.cuda_graphs``), with a stand-in capture.

The real capture needs a GPU (none here); what is tested on the CPU is everything around it:
which sizes a level gets, the padding into the smallest captured size, the output rows handed
back, the fallbacks (a capture that fails or replays something else), and that the graphed
level answers like the level itself.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from elastiserve_serve.runtime.cuda_graphs import (
    GraphedLevel,
    graph_level,
    graph_levels,
    wants_graphs,
)

from .tiny import SPEC, tiny_levels

Replay = tuple[Callable[[], None], torch.Tensor, object]


class Recorder:
    """A capture that "records" by remembering the module and its buffers: each replay runs
    the module on whatever the input buffer holds, into the output buffer (what a CUDA graph
    does, without the GPU)."""

    def __init__(self, fail_at: frozenset[int] = frozenset(), skew_at: frozenset[int] = frozenset()
                 ) -> None:
        self.fail_at, self.skew_at = fail_at, skew_at
        self.replays: list[int] = []
        self.pools: list[tuple[int, object]] = []  # (size, the pool it was given)

    def __call__(self, module: nn.Module, static_input: torch.Tensor, pool: object) -> Replay:
        size = static_input.shape[0]
        self.pools.append((size, pool))
        if size in self.fail_at:
            raise RuntimeError("operation not permitted when stream is capturing")
        with torch.inference_mode():
            static_output = module(static_input).clone()

        def replay() -> None:
            self.replays.append(size)
            with torch.inference_mode():
                fresh = module(static_input)
                static_output.copy_(fresh + (1.0 if size in self.skew_at else 0.0))

        return replay, static_output, pool or f"pool-of-{size}"


@pytest.mark.parametrize(("device", "enabled", "expected"), [
    ("cuda", True, True), ("cuda", False, False), ("cpu", True, False), ("cpu", False, False),
])
def test_graphs_only_on_cuda_and_when_enabled(device: str, enabled: bool, expected: bool) -> None:
    assert wants_graphs(torch.device(device), enabled) is expected


def test_each_level_is_graphed_at_every_size_and_answers_like_itself() -> None:
    levels = tiny_levels()
    recorder = Recorder()
    graphed = graph_levels(levels, (1, 2, 4), recorder)
    x = torch.randn(3, *SPEC.shape)
    for plain, module in zip(levels.modules, graphed.modules, strict=True):
        assert isinstance(module, GraphedLevel) and module.sizes == (1, 2, 4)
        with torch.inference_mode():
            expected, got = plain(x), module(x)
        assert got.shape == (3, 4)
        assert torch.allclose(got, expected, atol=1e-6)
    # A batch of 3 replays the size-4 graph (each level's check replayed every size once).
    assert recorder.replays[-1] == 4
    # Outside inference mode too (the buffers are updated in it either way).
    assert torch.allclose(graphed.modules[0](x), levels.modules[0](x).detach(), atol=1e-6)
    # The parameters are the level's own (shared storage and device reporting hold).
    assert list(graphed.modules[2].parameters()) == list(levels.modules[2].parameters())


def test_rows_past_the_batch_are_zeroed_and_the_output_is_a_copy() -> None:
    level = graph_level("full", tiny_levels().modules[2], SPEC.shape, (4,), Recorder())
    assert isinstance(level, GraphedLevel)
    with torch.inference_mode():
        first = level(torch.randn(4, *SPEC.shape))
        kept = first.clone()
        level(torch.randn(1, *SPEC.shape))
    buffer = level._graphs[4].static_input
    assert torch.count_nonzero(buffer[1:]) == 0  # no row of the earlier batch is left behind
    assert torch.equal(first, kept)  # the next replay does not change an answer handed out


def test_a_batch_larger_than_every_graph_runs_the_level_itself() -> None:
    plain = tiny_levels().modules[1]
    recorder = Recorder()
    level = graph_level("medium", plain, SPEC.shape, (1, 2), recorder)
    replays = len(recorder.replays)
    x = torch.randn(5, *SPEC.shape)
    with torch.inference_mode():
        assert torch.allclose(level(x), plain(x))
    assert len(recorder.replays) == replays


def test_sizes_that_fail_or_differ_are_dropped_and_the_rest_kept() -> None:
    level = graph_level("full", tiny_levels().modules[2], SPEC.shape, (1, 2, 4, 8),
                        Recorder(fail_at=frozenset({2}), skew_at=frozenset({8})))
    assert isinstance(level, GraphedLevel) and level.sizes == (1, 4)
    x = torch.randn(2, *SPEC.shape)  # 2 failed: the size-4 graph serves it
    with torch.inference_mode():
        assert torch.allclose(level(x), tiny_levels().modules[2](x), atol=1e-6)


def test_a_level_with_no_size_left_stays_as_it_was(caplog: pytest.LogCaptureFixture) -> None:
    plain = tiny_levels().modules[0]
    level = graph_level("small", plain, SPEC.shape, (1, 2),
                        Recorder(skew_at=frozenset({1, 2})))
    assert level is plain
    assert "output differs" in caplog.text


def test_an_already_graphed_level_is_not_graphed_again() -> None:
    once = graph_levels(tiny_levels(), (1,), Recorder())
    twice = graph_levels(once, (1, 2), Recorder())
    assert twice.modules == once.modules


def test_a_levels_sizes_share_the_pool_of_its_largest_capture() -> None:
    recorder = Recorder()
    graph_level("full", tiny_levels().modules[2], SPEC.shape, (2, 8, 1, 4), recorder)
    assert recorder.pools == [(8, None), (4, "pool-of-8"), (2, "pool-of-8"), (1, "pool-of-8")]


def test_the_engine_graphs_its_levels_at_warm_up_where_the_device_wants_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's seam: with graphs wanted (CUDA, here forced), warm-up captures each level
    at the profiled sizes and serving runs through the graphs, answering as before."""
    from elastiserve_serve.runtime import engine
    from elastiserve_serve.runtime.engine import ElasticRuntime, RawRequest, Success
    from elastiserve_serve.runtime.settings import RuntimeSettings

    from .tiny import png_bytes

    settings = RuntimeSettings(control_file=None, worker_choice=False, trace_levels=False)
    plain = ElasticRuntime(tiny_levels(), settings)
    monkeypatch.setattr(engine, "wants_graphs", lambda device, enabled: enabled)
    recorder = Recorder()
    graphed = ElasticRuntime(tiny_levels(), settings, capture=recorder)
    graphed.warm_up(4)
    assert all(isinstance(m, GraphedLevel) and m.sizes == (1, 2, 4)
               for m in graphed.levels.modules)
    requests = [RawRequest(png_bytes()) for _ in range(3)]
    before = len(recorder.replays)
    got, expected = graphed.handle(requests), plain.handle(requests)
    assert len(recorder.replays) == before + 1  # one batch of 3: the size-4 graph, once
    assert all(isinstance(o, Success) for o in got)
    assert [o.to_json() for o in got] == [o.to_json() for o in expected]
    off = ElasticRuntime(tiny_levels(), RuntimeSettings(
        control_file=None, worker_choice=False, trace_levels=False, cuda_graphs=False),
        capture=recorder)
    off.warm_up(4)
    assert not any(isinstance(m, GraphedLevel) for m in off.levels.modules)
