"""A burst absorbed inside the worker, before the operator moves (real TorchServe).

One TorchServe worker serves a three-level ResNet-20 at 96x96 whose full level is about ten
times slower than its narrowest (a wide gap, so that the burst overloads the full level and
stays well within the narrowest whatever else this shared machine runs). The control file
says ceiling = full, floor = narrowest, objective 1 s, and nobody touches it during the run:
the operator does not move. An open-loop client (which stamps each request's arrival the way
the pod's gateway does) sends a low rate, then a 3 s burst at twice what the full level can
serve, then the low rate again. Shown: no failed request, the full level answers at low load,
narrower batches carry the burst, the full level is back once the queue has drained, and the
burst's latency stays bounded (serving only the full level would end it ~3 s behind).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.bundle_levels import load_levels
from elastiserve_serve.loadgen import percentile
from elastiserve_serve.runtime.control import (
    ARRIVAL_HEADER,
    ControlState,
    read_control_file,
    write_control_file,
)
from elastiserve_serve.ts_server import TorchServe, run_torchserve

from .bundles import make_bundle
from .tiny import png_bytes

MODEL = "burst"
SIZE = 96
BATCH = 4
OBJECTIVE_MS = 1000.0
LOW_S, BURST_S, AFTER_S = 4.0, 3.0, 6.0
BURST_OVER_FULL = 2.0
MAX_IN_FLIGHT = 90
"""Requests the client has in flight at most; the rest wait in its own queue (their latency
still counts from when they were due). TorchServe's job queue holds 100 (``ts_config``): past
it every request is an immediate 503, an overflow of that queue, not a level choice. On a quiet
machine the burst (sized from the forward pass alone) can outrun what the whole HTTP path
serves even at the narrowest level, and 128 in flight overflowed it."""
TAIL_S = 3.0


@dataclass(frozen=True)
class Answer:
    sent: float  # monotonic, when it was due
    phase: str
    latency_s: float  # from when it was due (the client's own queue included)
    served_s: float  # from when it left the client (what the server can see and act on)
    status: int
    level: str | None


@dataclass(frozen=True)
class Setup:
    server: TorchServe
    control: Path
    full_capacity_rps: float
    narrowest_capacity_rps: float


def forward_capacity(bundle: Path, level: int) -> float:
    """Samples per second one thread serves at ``level`` in batches of :data:`BATCH`, forward
    pass only (so the burst is sized from this machine now, loaded or not)."""
    levels = load_levels(str(bundle))
    module = levels.modules[level]
    sample = torch.zeros((BATCH, *levels.input_spec.shape))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            module(sample)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                module(sample)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return BATCH / sorted(times)[len(times) // 2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    assert shutil.which("java") is not None, "TorchServe needs Java 17 on PATH"
    root = tmp_path_factory.mktemp("burst")
    bundle = make_bundle(root / "bundle", width_mult=1.0, ratios=(0.125, 0.5, 1.0), size=SIZE)
    control = root / "shm" / "level.json"
    write_control_file(control, ControlState(2, 1, floor=0, objective_ms=OBJECTIVE_MS))
    spec = ArchiveSpec(workers=1, batch_size=BATCH, max_batch_delay_ms=5,
                       handler={"control_file": str(control), "threads": 1})
    build_archive(bundle, root / "store", MODEL, spec)
    full, narrowest = forward_capacity(bundle, 2), forward_capacity(bundle, 0)
    with run_torchserve(root / "run", root / "store", [f"{MODEL}={MODEL}.mar"]) as server:
        yield Setup(server, control, full, narrowest)


def send_phases(setup: Setup, phases: list[tuple[str, float, float]]) -> list[Answer]:
    """Open loop: requests due on a fixed schedule, each stamped when it is sent (as the
    gateway stamps on arrival), latency measured from when it was due."""
    url = f"{setup.server.inference_url}/predictions/{MODEL}"
    body = png_bytes(SIZE, SIZE)
    auth = {"Authorization": f"Bearer {setup.server.keys.inference}"}
    due: list[tuple[float, str]] = []
    offset = 0.0
    for name, seconds, rate in phases:
        count = int(seconds * rate)
        due += [(offset + i / rate, name) for i in range(count)]
        offset += seconds
    answers: list[Answer] = []
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    with (httpx.Client(timeout=30.0, limits=limits) as client,
          ThreadPoolExecutor(MAX_IN_FLIGHT) as pool):

        def send(when: float, phase: str) -> None:
            headers = {**auth, ARRIVAL_HEADER: str(time.time_ns())}
            left = time.monotonic()
            try:
                response = client.post(url, content=body, headers=headers)
                status, level = response.status_code, response.headers.get("x-elastiserve-level")
            except httpx.HTTPError:
                status, level = 0, None
            with lock:
                now = time.monotonic()
                answers.append(Answer(when, phase, now - when, now - left, status, level))

        start = time.monotonic()
        for at, phase in due:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, start + at, phase)
    return sorted(answers, key=lambda a: a.sent)


def share(answers: list[Answer], level: str) -> float:
    return sum(a.level == level for a in answers) / max(1, len(answers))


def test_a_burst_is_absorbed_by_narrower_batches_before_the_operator_moves(
    setup: Setup,
) -> None:
    full, narrowest = setup.full_capacity_rps, setup.narrowest_capacity_rps
    burst_rps = BURST_OVER_FULL * full
    assert burst_rps < 0.5 * narrowest, (
        f"the narrowest level must carry the burst: {burst_rps:.0f} vs {narrowest:.0f} req/s")
    low_rps = 0.3 * full
    before = read_control_file(setup.control)
    answers = send_phases(setup, [("low", LOW_S, low_rps), ("burst", BURST_S, burst_rps),
                                  ("after", AFTER_S, low_rps)])
    assert read_control_file(setup.control) == before  # the operator did not move

    by_phase = {p: [a for a in answers if a.phase == p] for p in ("low", "burst", "after")}
    tail_start = answers[-1].sent - TAIL_S
    tail = [a for a in by_phase["after"] if a.sent >= tail_start]
    burst_p95_ms = percentile([a.latency_s for a in by_phase["burst"]], 95) * 1e3
    served_p95_ms = percentile([a.served_s for a in by_phase["burst"]], 95) * 1e3
    report: dict[str, object] = {
        "full_rps": round(full, 1), "narrowest_rps": round(narrowest, 1),
        "burst_rps": round(burst_rps, 1),
        **{f"{p}_levels": {lv: round(share(a, lv), 2) for lv in ("L0", "L1", "L2")}
           for p, a in by_phase.items()},
        "tail_full_share": round(share(tail, "L2"), 2),
        "burst_p95_ms": round(burst_p95_ms),
        "burst_served_p95_ms": round(served_p95_ms),
        "burst_max_ms": round(max(a.latency_s for a in by_phase["burst"]) * 1e3),
        "failed": [(a.phase, a.status, round(a.latency_s, 2)) for a in answers
                   if a.status != 200][:10],
    }
    print(report)
    failed = [a for a in answers if a.status != 200]
    assert failed == [], report
    assert {a.level for a in answers} <= {"L0", "L1", "L2"}
    assert share(by_phase["low"], "L2") >= 0.8, report
    # At twice the full level's forward-only capacity, a good share of the burst must have
    # been served narrower for the worker to keep up; the worker chose, the file never moved.
    assert 1 - share(by_phase["burst"], "L2") >= 0.3, report
    # Back to full once the queue has drained (at least half of the last 3 s: draining a
    # burst takes longer whenever a neighbour takes the CPU).
    assert share(tail, "L2") >= 0.5, report
    # Serving only the full level would end the burst ~3 s behind and more with a
    # slower machine; the choice keeps the burst's p95 bounded (loose: this machine is
    # shared, and a neighbour can slow every level several times over). Counted from when each
    # request left the client: on a fast machine the burst (sized from the full level's forward
    # pass) can outrun what the client and TorchServe's HTTP path carry at any level, and the
    # requests then wait in the client's own queue, where no worker can see them (CI: due-time
    # p95 3,075 ms, with 62 % of the burst already narrower).
    assert served_p95_ms < 3 * OBJECTIVE_MS, report
