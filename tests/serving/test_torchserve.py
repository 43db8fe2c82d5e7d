"""Real TorchServe: responses, per-request 4xx in a batch, auth, pinning, fuzz, level switching."""

from __future__ import annotations

import io
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from elastiserve_serve.loadgen import (
    Switch,
    first_new_answers,
    percentile,
    run_open_loop,
    switch_latencies,
)

from .bundles import LEVELS
from .conftest import Served
from .tiny import png_bytes

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]


def post(served: Served, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        served.predict_url, content=body, headers={**served.auth, **headers}, timeout=30
    )


def test_png_and_json_answered_with_level(served: Served) -> None:
    served.set_level("L2", 1)
    for body in (png_bytes(40, 30, "RGB"), png_bytes(16, 16, "L", "JPEG"),
                 json.dumps([[[0.5] * 16] * 16]).encode()):
        response = post(served, body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["level"] == "L2" == response.headers["x-elastiserve-level"]
        assert len(answer["predictions"][0]) == 5
        assert answer["predictions"][0][0]["label"].startswith("item")


def test_token_required(served: Served) -> None:
    response = httpx.post(served.predict_url, content=png_bytes(), timeout=30)
    assert response.status_code in (400, 401, 403)
    assert "Token" in response.text


def test_pin_header(served: Served) -> None:
    served.set_level("L2", 2)
    response = post(served, png_bytes(), **{"X-Elastiserve-Level": "L0"})
    assert response.status_code == 200 and response.json()["level"] == "L0"
    assert post(served, png_bytes(), **{"X-Elastiserve-Level": "L9"}).status_code == 400
    served.set_level("L2", 3, allow_pin=False)
    assert post(served, png_bytes(), **{"X-Elastiserve-Level": "L0"}).status_code == 403
    served.set_level("L2", 4)


def test_malformed_requests_get_4xx_and_neighbours_succeed(served: Served) -> None:
    """Good and bad requests concurrently, so TorchServe batches them together."""
    rng = random.Random(7)
    huge = io.BytesIO()
    Image.new("L", (5000, 5000)).save(huge, format="PNG")
    bad = [
        b"\x00" * 10,
        bytes(rng.getrandbits(8) for _ in range(3000)),
        b"\x89PNG\r\n\x1a\n" + bytes(rng.getrandbits(8) for _ in range(200)),
        png_bytes(30, 30)[:60],
        huge.getvalue(),
        b'{"data": "nope"}',
        b"[[[1, 2], [3]]]",
        b"[" * 50000,
        json.dumps([[[0.1] * 15] * 16]).encode(),
    ]
    good = [png_bytes(12 + i, 12) for i in range(len(bad))]
    jobs = [(body, False) for body in bad] + [(body, True) for body in good]
    rng.shuffle(jobs)
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda job: (post(served, job[0]), job[1]), jobs))
    for response, ok in responses:
        if ok:
            assert response.status_code == 200, response.text
        else:
            assert 400 <= response.status_code < 500, response.text
            assert response.json()["error"]
    # The workers survived: both still answer.
    described = served.server.describe_model("elastic")[0]["workers"]
    assert [w["status"] for w in described] == ["READY", "READY"]


def test_oversized_body_refused_by_frontend(served: Served) -> None:
    response = post(served, b"[" + b"0," * (5 * 1024 * 1024) + b"0]")
    assert response.status_code == 413


def test_switch_under_load_no_failures(served: Served) -> None:
    """Switch levels repeatedly while an open-loop client sends 40 req/s to 2 workers."""
    served.set_level("L2", 10)
    time.sleep(0.3)
    switches: list[Switch] = []
    sequence = ["L0", "L1", "L2", "L0", "L2", "L1", "L0", "L2"]
    stop = threading.Event()

    def controller() -> None:
        time.sleep(0.7)
        for generation, level in enumerate(sequence, start=11):
            if stop.is_set():
                return
            switches.append(Switch(time.monotonic(), level))
            served.set_level(level, generation)
            time.sleep(0.7)

    thread = threading.Thread(target=controller)
    thread.start()
    try:
        results = run_open_loop(
            served.predict_url, png_bytes(16, 16), served.auth, rate_per_s=40,
            duration_s=0.7 * (len(sequence) + 1.5), max_in_flight=16,
        )
    finally:
        stop.set()
        thread.join()
    failed = [r for r in results if r.status != 200]
    latencies = switch_latencies(results, switches)
    report = {
        "requests": len(results),
        "failed": len(failed),
        "switch_ms": [round(s * 1000, 1) for s in latencies],
        "first_new_answer_ms": [
            round(s * 1000, 1) for s in first_new_answers(results, switches)
        ],
        "p95_ms": round(percentile([r.latency_s for r in results], 95) * 1000, 1),
    }
    print(json.dumps(report))
    assert len(switches) == len(sequence)
    assert failed == []
    assert all(r.level in LEVELS for r in results)
    assert max(latencies) < 2.0, report
    # Every level was really served between the switches.
    assert {r.level for r in results} == set(LEVELS)
    served.set_level("L2", 100)


def test_worker_pids_unchanged_by_switching(served: Served) -> None:
    before = {w["pid"] for w in served.server.describe_model("elastic")[0]["workers"]}
    for generation, level in enumerate(["L0", "L1", "L2"], start=200):
        served.set_level(level, generation)
        assert post(served, png_bytes()).json()["level"] == level
    after = {w["pid"] for w in served.server.describe_model("elastic")[0]["workers"]}
    assert before == after
    assert all(os.path.exists(f"/proc/{pid}") for pid in after)


def test_hostile_requests_batched_with_good_ones_fail_alone_and_no_worker_restarts(
    served: Served,
) -> None:
    """Issue 17: what used to escape the runtime (Python's own conversions raising) now fails
    only its request; sent concurrently so TorchServe batches them with good requests."""
    served.set_level("L2", 300)
    before = {w["pid"] for w in served.server.describe_model("elastic")[0]["workers"]}
    pin = "X-Elastiserve-Level"
    bad: list[tuple[bytes, dict[str, str | bytes]]] = [
        (b"[[[" + b"9" * 5000 + b"]]]", {}),  # int() refuses past 4300 digits
        (b"[[[" + b"9" * 400 + b"]]]", {}),  # converts, overflows a float
        (b"[" * 3000 + b"0" + b"]" * 3000, {}),  # nested deeper than any tensor
        (b'{"data": [[[NaN]]]}', {}),
        (b"[[[Infinity, -Infinity]]]", {}),
        (b"[\xff\xfe\xfd]", {}),  # invalid UTF-8
        (b'["\\ud800"]', {}),  # a lone surrogate
        (png_bytes(), {pin: "\u00b2".encode()}),  # a digit int() refuses
        (png_bytes(), {pin: "9" * 5000}),  # digits past int()'s limit
        (png_bytes(), {pin: b"\xff\xfe"}),  # a header value that is not UTF-8
        (png_bytes(), {pin: "L0\x7f"}),
        (png_bytes(), {pin: "-1"}),
    ]
    good = [png_bytes(12 + i, 12) for i in range(len(bad))]
    jobs = [(body, headers, False) for body, headers in bad]
    jobs += [(body, {}, True) for body in good]
    random.Random(17).shuffle(jobs)

    def send(job: tuple[bytes, dict[str, str | bytes], bool]) -> tuple[httpx.Response, bool]:
        body, headers, ok = job
        raw = [(k.encode(), v if isinstance(v, bytes) else v.encode())
               for k, v in {**served.auth, **headers}.items()]
        response = httpx.post(served.predict_url, content=body, headers=raw, timeout=30)
        return response, ok

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, jobs))
    for response, ok in responses:
        if ok:
            assert response.status_code == 200, response.text
        else:
            assert 400 <= response.status_code < 500, response.text
            assert len(response.reason_phrase) <= 200
            assert all(0x20 <= ord(c) < 0x7F for c in response.reason_phrase)
    workers = served.server.describe_model("elastic")[0]["workers"]
    assert [w["status"] for w in workers] == ["READY", "READY"]
    assert {w["pid"] for w in workers} == before  # no worker died and came back
