"""The grouped forms give every model what its own query gives, on a real Prometheus.

An exporter publishes the series the operator's default templates read (TorchServe's
``ts_*``, the handler's histogram and counter) for three models in one namespace and one of
the same name in another; once Prometheus has scraped enough for ``rate``, each template is
evaluated per model and grouped at one fixed evaluation time, and the grouped answer split
per model (``grouped_queries``) must equal the per-model answers.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from elastiserve.testing.ports import free_port
from elastiserve.testing.prometheus import ScrapeTarget, run_prometheus
from elastiserve_operator.grouped_queries import by_model, grouped_form, reduce
from elastiserve_operator.served_share import SERVED_SHARE_QUERY
from elastiserve_operator.signals.prometheus import (
    DEFAULT_LATENCY_QUERY,
    DEFAULT_RATE_QUERY,
    HANDLER_LATENCY_QUERY,
    SeriesPolicy,
    parse_vector_response,
    render_query,
)

MODELS = (("ml", "a", 1), ("ml", "b", 3), ("ml", "c", 5), ("other", "a", 7))
"""(namespace, model, requests per tick): different rates and latencies per model."""


@pytest.fixture
def exporter() -> Iterator[str]:
    """The serving series of ``MODELS``, growing every 0.2 s until the test ends."""
    registry = CollectorRegistry()
    latency = Histogram("elastiserve_request_latency_seconds", "handler latency",
                        ["namespace", "ModelName", "ElasticLevel"], registry=registry,
                        buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5))
    done = Counter("elastiserve_requests", "answered", ["namespace", "ModelName"],
                   registry=registry)
    queue = Gauge("ts_queue_latency_microseconds", "queue wait (a counter in TorchServe)",
                  ["namespace", "model_name"], registry=registry)
    arrived = Counter("ts_inference_requests", "arrived", ["namespace", "model_name"],
                      registry=registry)
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(0.2):
            for namespace, model, n in MODELS:
                for i in range(n):
                    level = "L1" if i % 2 else "L0"
                    latency.labels(namespace, model, level).observe(0.004 * n + 0.003 * i)
                    done.labels(namespace, model).inc()
                    arrived.labels(namespace, model).inc()
                    queue.labels(namespace, model).inc(500 * n)

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        feeder.join(timeout=5)
        server.shutdown()
        thread.join(timeout=5)


def at(url: str, promql: str, when: float) -> object:
    query = urllib.parse.urlencode({"query": promql, "time": f"{when:.3f}"})
    with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=10) as response:
        return json.loads(response.read())


CASES = ((DEFAULT_LATENCY_QUERY, SeriesPolicy.MAX), (HANDLER_LATENCY_QUERY, SeriesPolicy.MAX),
         (DEFAULT_RATE_QUERY, SeriesPolicy.SUM), (SERVED_SHARE_QUERY, None))
"""Each default template and how its per-model answer is reduced (``None``: per level)."""


def test_grouped_answers_equal_the_per_model_ones(tmp_path: Path, exporter: str) -> None:
    with run_prometheus(tmp_path, [ScrapeTarget("serving", exporter)],
                        scrape_interval_s=0.5) as prom:
        for template, multiple in CASES:
            form = grouped_form(template)
            assert form is not None
            deadline = time.monotonic() + 90
            while True:  # until every model's own query answers (two scrapes of every series)
                when = time.time()
                own = {(namespace, model): parse_vector_response(at(prom.url, render_query(
                    template, namespace=namespace, name=model, model=model), when))  # type: ignore[arg-type]
                    for namespace, model, _ in MODELS}
                if all(own.values()):
                    break
                assert time.monotonic() < deadline, f"no answer for every model: {own}"
                time.sleep(0.5)
            answers = {namespace: by_model(parse_vector_response(at(
                prom.url, render_query(form.query, namespace=namespace, name="", model=""),
                when)), form.label) for namespace in ("ml", "other")}  # type: ignore[arg-type]
            for (namespace, model), mine in own.items():
                grouped = answers[namespace].get(model, ())
                if multiple is None:  # per level: the same series, labelled by level
                    assert sorted((v.labels["ElasticLevel"], v.value) for v in grouped) == sorted(
                        (v.labels["ElasticLevel"], v.value) for v in mine), template
                else:
                    expected = reduce(mine, multiple)
                    assert expected is not None
                    assert reduce(grouped, multiple) == pytest.approx(expected), (template, model)
