"""A torchvision model's nested levels through the real TorchServe (issue 19, item 3).

The bundle names its constructor (``torchvision:resnet18``, manifest schema 3: constructor,
keyword arguments and the DependencyGraph's channel layout) instead of an in-project
architecture; the serving path is the one every bundle takes: ``build_archive`` -> a ``.mar``
-> TorchServe's workers rebuild every level from the manifest and the safetensors. What a
user relies on is checked as for the in-project models: each level answers exactly what the
level computes, a pin chooses the level, switching under load fails no request, and the
per-level metrics count what was served.

The bundle is built once for the module (``torchvision_bundles``: the library calls that
``elastiserve train`` runs at export, with seeded random weights in place of training:
accuracy is not what this checks, and a training run would cost minutes). Input 3x16x16 and
4 classes keep each request to milliseconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn

from elastiserve_serve.archive import ArchiveSpec, build_archive
from elastiserve_serve.loadgen import (
    Switch,
    first_new_answers,
    percentile,
    run_open_loop,
    switch_latencies,
)
from elastiserve_serve.runtime import levels as runtime
from elastiserve_serve.runtime.decode import DecodeLimits, decode
from elastiserve_serve.ts_server import run_torchserve
from elastiserve_store.manifest import CONSTRUCTOR_SCHEMA_VERSION

from .conftest import MODEL, Served
from .tiny import png_bytes
from .torchvision_bundles import (
    CLASSES,
    CONSTRUCTOR,
    LEVELS,
    MEAN,
    SHAPE,
    STD,
    make_torchvision_bundle,
)

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]

PIN = "X-Elastiserve-Level"


@dataclass(frozen=True)
class TorchvisionServed:
    served: Served
    models: tuple[nn.Module, ...]  # the levels as written, before any bundle round trip
    bundle: Path


@pytest.fixture(scope="module")
def tv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchvisionServed]:
    started = time.monotonic()
    root = tmp_path_factory.mktemp("torchvision-serving")
    models = make_torchvision_bundle(root / "bundle")
    control = root / "shm" / "level.json"
    # One worker, as a serving pod runs by default (the chart's serving.workers): each worker
    # imports torchvision and rebuilds four ResNet-18 levels, ~30 s of this loaded machine.
    spec = ArchiveSpec(workers=1, batch_size=4, max_batch_delay_ms=5,
                       handler={"control_file": str(control), "allow_pin": True, "threads": 1})
    build_archive(root / "bundle", root / "store", MODEL, spec)
    built = time.monotonic()
    with run_torchserve(root / "run", root / "store", [f"{MODEL}={MODEL}.mar"],
                        min_ready_workers=1) as server:
        print(json.dumps({"bundle_and_archive_s": round(built - started, 1),
                          "torchserve_ready_s": round(time.monotonic() - built, 1)}))
        yield TorchvisionServed(Served(server, control), models, root / "bundle")


def post(served: Served, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(served.predict_url, content=body, headers={**served.auth, **headers},
                      timeout=30)


def scrape(served: Served) -> dict[tuple[str, str], float]:
    """(sample name, level) -> value, summed over TorchServe's other labels."""
    text = httpx.get(f"http://{served.server.metrics_address}/metrics", timeout=10).text
    totals: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            level = sample.labels.get("ElasticLevel")
            if level is not None:
                totals[(sample.name, level)] = totals.get((sample.name, level), 0.0) + sample.value
    return totals


def wait_for_counts(served: Served, name: str, want: dict[str, float],
                    timeout_s: float = 30.0) -> dict[tuple[str, str], float]:
    """Poll until every level's ``name`` reaches ``want`` (TorchServe's frontend takes the
    handler's metrics from the worker's log asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = scrape(served)
        if all(seen.get((name, level), 0.0) >= value for level, value in want.items()):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never reached {want}: {seen}")
        time.sleep(0.2)


def test_the_bundle_names_its_torchvision_constructor(tv: TorchvisionServed) -> None:
    manifest = json.loads((tv.bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == CONSTRUCTOR_SCHEMA_VERSION
    assert manifest["architecture"]["name"] == CONSTRUCTOR
    assert [level["name"] for level in manifest["levels"]] == list(LEVELS)


def test_every_pinned_level_answers_what_that_level_computes(tv: TorchvisionServed) -> None:
    """A pin chooses the level, and the answer is that level's own output on the decoded
    input: the workers rebuilt each level from the constructor, the layout and the weights."""
    served = tv.served
    served.set_level(LEVELS[-1])
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(SHAPE, generator=generator)
    body = json.dumps(pixels.tolist()).encode()
    # Decoded as the workers decode it (the runtime's own function and types).
    inputs = decode(body, runtime.InputSpec(*SHAPE), runtime.Normalisation(MEAN, STD),
                    DecodeLimits())
    before = scrape(served)
    for k, level in enumerate(LEVELS):
        response = post(served, body, **{PIN: level})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["level"] == level == response.headers["x-elastiserve-level"]
        with torch.inference_mode():
            expected = torch.softmax(tv.models[k](inputs).float(), dim=1)[0].tolist()
        got = {row["label"]: row["probability"] for row in answer["predictions"][0]}
        assert set(got) == set(CLASSES)
        for index, label in enumerate(CLASSES):
            assert got[label] == pytest.approx(expected[index], abs=2e-6), (level, label)
    # The levels really differ (a level that answered with another's weights would not).
    outputs = [post(served, body, **{PIN: level}).json()["predictions"][0] for level in LEVELS]
    assert len({json.dumps(o) for o in outputs}) == len(LEVELS)
    # Pinned answers go to their own histogram, per level, never to the one the operator reads.
    pinned = "elastiserve_pinned_request_latency_seconds_count"
    want = {level: before.get((pinned, level), 0.0) + 2 for level in LEVELS}
    seen = wait_for_counts(served, pinned, want)
    unpinned = "elastiserve_request_latency_seconds_count"
    for level in LEVELS[:-1]:
        assert seen.get((unpinned, level), 0.0) == before.get((unpinned, level), 0.0)
    assert post(served, body, **{PIN: "L9"}).status_code == 400


def test_switching_levels_under_load_fails_no_request(tv: TorchvisionServed) -> None:
    """Open-loop load (batches of up to 4) while the control file moves through every level; the
    per-level metrics then count exactly what the client saw each level answer."""
    served = tv.served
    served.set_level(LEVELS[-1])
    assert post(served, png_bytes(16, 16, "RGB")).json()["level"] == LEVELS[-1]
    sequence = [LEVELS[0], LEVELS[2], LEVELS[1], LEVELS[3], LEVELS[0], LEVELS[3]]
    switches: list[Switch] = []
    stop = threading.Event()

    def controller() -> None:
        for level in sequence:
            if stop.wait(0.7):
                return
            switches.append(Switch(time.monotonic(), level))
            served.set_level(level)

    before = scrape(served)
    thread = threading.Thread(target=controller)
    thread.start()
    try:
        results = run_open_loop(
            served.predict_url, png_bytes(20, 20, "RGB"), served.auth, rate_per_s=15,
            duration_s=0.7 * (len(sequence) + 1.5), max_in_flight=16,
        )
    finally:
        stop.set()
        thread.join()
    failed = [r for r in results if r.status != 200]
    latencies = switch_latencies(results, switches)
    reached = first_new_answers(results, switches)
    by_level: Counter[str] = Counter(r.level or "" for r in results)  # "": no level header
    report = {
        "requests": len(results),
        "failed": len(failed),
        "per_level": dict(sorted(by_level.items(), key=lambda kv: str(kv[0]))),
        "switch_ms": [round(s * 1000, 1) for s in latencies],
        "first_new_answer_ms": [round(s * 1000, 1) for s in reached],
        "p95_ms": round(percentile([r.latency_s for r in results], 95) * 1000, 1),
    }
    print(json.dumps(report))
    assert len(switches) == len(sequence)
    assert failed == [], report
    assert set(by_level) == set(LEVELS), report  # every level served between the switches
    assert max(latencies) < 2.0, report
    # Each switch reached the worker while its level was current (not a vacuous window).
    assert all(s < 2.0 for s in reached), report  # NaN (never answered) fails too
    # Per-level metrics: the answered requests of each level, counted once each.
    requests = "elastiserve_requests_total"
    want = {level: before.get((requests, level), 0.0) + count for level, count in by_level.items()}
    seen = wait_for_counts(served, requests, want)
    for level, count in by_level.items():
        assert seen[(requests, level)] - before.get((requests, level), 0.0) == count, level
    # The operator's signal: the unpinned latency histogram has the same counts per level.
    latency = "elastiserve_request_latency_seconds_count"
    seen = wait_for_counts(served, latency, {
        level: before.get((latency, level), 0.0) + count for level, count in by_level.items()})
    for level, count in by_level.items():
        assert seen[(latency, level)] - before.get((latency, level), 0.0) == count, level
    wait_for_counts(served, "elastiserve_active_level", {sequence[-1]: 1.0})
