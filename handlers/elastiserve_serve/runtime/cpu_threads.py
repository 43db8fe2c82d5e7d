"""How many torch threads a worker runs when the archive leaves ``threads`` at 0 (auto).

Why not torch's default: torch starts one intra-op thread per core of the *node*, not of the
container. A serving pod that requests half a core on a busy node then runs every small operator
across threads the kernel keeps descheduling, and each waits for the slowest: on the 2-core test
machine beside other work, a batch-1 forward pass of a small ResNet-20 took 1.2 ms at one thread
and 2.3 to ~100 ms at two. The right count is what the pod was granted, shared by its workers.

Where the grant comes from: the operator hands the serving container its own CPU request through
the downward API (``ELASTISERVE_CPU_REQUEST_MILLI``, ``resourceFieldRef`` with divisor ``1m``: the
API server's normalised quantity, no parsing of ``"500m"`` or ``"1.5"`` here) and its worker
count (``ELASTISERVE_WORKERS``). A pod without a CPU request gets no variable, and torch's
default stays (nothing to size against). Outside a pod (``make demo``, a laptop) nothing is set
either. An explicit ``threads`` in the archive always wins: its author measured something.
"""

from __future__ import annotations

from collections.abc import Mapping

CPU_REQUEST_ENV = "ELASTISERVE_CPU_REQUEST_MILLI"
WORKERS_ENV = "ELASTISERVE_WORKERS"


def threads_for_request(cpu_request_milli: int, workers: int) -> int:
    """Whole cores of the request per worker, at least one.

    Rounded down: a thread more than the grant is the stall above, a core left idle costs only
    that core's share (and 1.5 cores over one worker is still one thread's worth of certainty).
    """
    if cpu_request_milli < 0 or workers < 1:
        raise ValueError("cpu request must be >= 0 and workers >= 1")
    return max(1, cpu_request_milli // (1000 * workers))


def auto_threads(archived: int, env: Mapping[str, str]) -> tuple[int, str]:
    """The thread count to set (0: leave torch's default) and why, for the worker's log.

    ``archived`` is the archive's ``threads`` setting; anything but 0 is returned as is.
    Variables that do not parse as non-negative integers are ignored with the reason said:
    the worker must start, and the log line tells the operator's author what went wrong.
    """
    if archived:
        return archived, f"{archived} (the archive's threads setting)"
    raw = env.get(CPU_REQUEST_ENV)
    if raw is None:
        return 0, "torch's default (no CPU request given to the container)"
    workers_raw = env.get(WORKERS_ENV, "1")
    try:
        request, workers = int(raw), int(workers_raw)
        threads = threads_for_request(request, workers)
    except ValueError:
        return 0, (f"torch's default ({CPU_REQUEST_ENV}={raw!r} or {WORKERS_ENV}="
                   f"{workers_raw!r} is not a usable count)")
    if request == 0:
        return 0, "torch's default (the container requests no CPU)"
    return threads, f"{threads} (CPU request {request}m over {workers} worker(s))"
