"""The free heap is handed back periodically where the C library can (glibc here), and every
garbage collection is timed."""

from __future__ import annotations

import asyncio
import platform

from elastiserve_operator.heap import malloc_trim, trim_periodically


def test_glibc_malloc_trim_is_found_and_callable() -> None:
    """Found where the C library is glibc (every image and CI machine of this project);
    elsewhere it may be missing, and then the operator simply does not trim."""
    trim = malloc_trim()
    if platform.libc_ver()[0] == "glibc":
        assert trim is not None
    if trim is None:
        return
    blocks = [bytearray(256 * 1024) for _ in range(64)]  # 16 MiB from malloc, then freed
    del blocks
    assert isinstance(trim(), bool)


def test_trim_runs_every_period_and_its_time_is_observed() -> None:
    calls: list[float] = []

    def trim() -> bool:
        calls.append(0.0)
        return True

    async def run() -> None:
        task = asyncio.ensure_future(trim_periodically(trim, calls.append, period_s=0.01))
        while len(calls) < 6:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(run())
    assert len(calls) >= 6 and all(t >= 0.0 for t in calls)


def test_every_garbage_collection_is_timed_by_generation_until_unhooked() -> None:
    import gc

    from elastiserve_operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    unhook = metrics.watch_gc()
    gc.collect(2)
    gc.collect(0)

    def count(generation: str) -> float:
        found = metrics.registry.get_sample_value(
            "elastiserve_operator_gc_pause_seconds_count", {"generation": generation})
        return float(found or 0.0)

    assert count("2") >= 1 and count("0") >= 1
    unhook()
    before = count("2")
    gc.collect(2)
    assert count("2") == before
