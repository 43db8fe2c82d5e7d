"""Give the heap's free pages back to the system after a burst (glibc's ``malloc_trim``).

CPython keeps small objects in its own arenas and returns an arena once it is empty; larger
blocks (dict tables, decoded JSON answers, request bodies: most of what a reconcile holds
while it waits for the API server) come from the C allocator, and glibc keeps what is freed
inside its heaps for reuse. After a burst (a thousand models created or resumed at once, all
their reconciles in flight together) the memory is free but still counted in the process's
RSS, which then stays at the burst's high-water mark: what an RSS limit or the node's memory
pressure sees. ``malloc_trim(0)`` hands the free pages back (``madvise``), which is what an
idle process should do. Elsewhere (musl, macOS) there is nothing to call and nothing is done.

One call walks the heap (a few milliseconds at a few hundred MB) on the event loop, every
``TRIM_PERIOD_S``; a burst's memory is back within one period after it ended.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

__all__ = ["TRIM_PERIOD_S", "malloc_trim", "trim_periodically"]

log = logging.getLogger(__name__)

TRIM_PERIOD_S = 30.0
"""How often the free heap is handed back."""


def malloc_trim() -> Callable[[], bool] | None:
    """glibc's ``malloc_trim(0)`` (``True`` when memory was released), or ``None`` where the
    C library has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def call() -> bool:
        return bool(trim(0))

    return call


async def trim_periodically(
    trim: Callable[[], bool], observe: Callable[[float], None] | None = None,
    period_s: float = TRIM_PERIOD_S,
) -> None:
    """Call ``trim`` every ``period_s`` forever (cancel to stop); ``observe`` gets each
    call's duration in seconds."""
    while True:
        await asyncio.sleep(period_s)
        started = time.perf_counter()
        trim()
        if observe is not None:
            observe(time.perf_counter() - started)
