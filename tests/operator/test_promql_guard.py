"""A tenant's PromQL is confined to its namespace, and a bad answer holds only its own model.

* ``confine``: a table of queries, evasion attempts included, each either rewritten (every
  selector carries ``namespace="<ns>"``, checked by parsing the output again) or refused;
* a real Prometheus with two tenants' series: the confined query reads only its own;
* the client's caps (bytes, series) and the plausibility checks, against a local server;
* one model's Prometheus query hangs: another model's evaluation finishes on time.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import promql_parser as pq
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from elastiserve.testing.ports import free_port
from elastiserve.testing.prometheus import PrometheusServer, ScrapeTarget, run_prometheus
from elastiserve_operator.metrics import OperatorMetrics
from elastiserve_operator.promql_guard import QueryRefused, confine
from elastiserve_operator.reconcile import Runtime, evaluate
from elastiserve_operator.settings import OperatorSettings
from elastiserve_operator.signals.prometheus import (
    PrometheusClient,
    PrometheusError,
    gather_observation,
)

NS = "team-a"

CONFINED = [
    # (query, rewritten)
    ("up", 'up{namespace="team-a"}'),
    ("sum(rate(x[1m]))", 'sum(rate(x{namespace="team-a"}[1m]))'),
    ('x{namespace="team-a"}', 'x{namespace="team-a"}'),  # its own, as the chart writes it
    ('{__name__=~".+"}', '{__name__=~".+",namespace="team-a"}'),  # every metric: of its own
    ('x{job=~".*"} or y', 'x{job=~".*",namespace="team-a"} or  y{namespace="team-a"}'),
    ("max_over_time(x[30m:1m])", 'max_over_time(x{namespace="team-a"}[30m:1m])'),
    ("x offset 30m", 'x{namespace="team-a"} offset 30m'),
    ('label_replace(x, "namespace", "team-a", "", "")',
     'label_replace(x{namespace="team-a"}, "namespace", "team-a", "", "")'),
    ("sum(x) + on() group_left sum(y)",
     'sum(x{namespace="team-a"}) + on () group_left () sum(y{namespace="team-a"})'),
    ("vector(1) + time()", "vector(1) + time()"),
    ("sum(x) # a comment", 'sum(x{namespace="team-a"})'),
    ("histogram_quantile(0.95, sum by (le) (rate(h_bucket[1m])))",
     'histogram_quantile(0.95, sum by (le)(rate(h_bucket{namespace="team-a"}[1m])))'),
]

REFUSED = [
    # (query, what the message says)
    ('x{namespace="team-b"}', "other than 'team-a'"),
    ('x{namespace=~"team-.*"}', "other than 'team-a'"),
    ('x{namespace!="team-a"}', "other than 'team-a'"),
    ('x{namespace=~".*"}', "other than 'team-a'"),
    ('x{namespace="team-a", namespace="team-b"}', "other than 'team-a'"),
    ('x{a="1" or namespace="team-b"}', "'or' between selector matchers"),
    ('x{a="x\\"} or y{b=\\""}', "quotes"),  # a value that would end its string when printed
    ('x{a="\\n"}', "control"),
    ('label_replace(x, "a", "\\"", "b", "c")', "quotes"),
    ("x @ 1700000000", "@ modifier"),
    ("x @ start()", "@ modifier"),
    ("rate(x[2h])", "range 2h"),
    ("max_over_time(x[1d:1m])", "subquery range"),
    ("x offset 1w", "offset"),
    ("x offset -2h", "offset"),
    ("sum(", "not a PromQL expression"),
    ("x; y", "not a PromQL expression"),
    ("", "not a PromQL expression"),
]


@pytest.mark.parametrize(("query", "expected"), CONFINED)
def test_confined(query: str, expected: str) -> None:
    assert confine(query, NS) == expected


@pytest.mark.parametrize(("query", "message"), REFUSED)
def test_refused(query: str, message: str) -> None:
    with pytest.raises(QueryRefused, match=re.escape(message)):
        confine(query, NS)


@pytest.mark.parametrize("query", [q for q, _ in CONFINED])
def test_every_selector_of_the_output_carries_the_matcher(query: str) -> None:
    """Checked with the parser, independently of the rewrite's own check."""
    selectors: list[Any] = []
    pq.walk(pq.parse(confine(query, NS)), lambda node: selectors.append(node)
            if isinstance(node, pq.VectorSelector) else None)
    for selector in selectors:
        ours = [m for m in selector.matchers.matchers if m.name == "namespace"]
        assert [(m.op, m.value) for m in ours] == [(pq.MatchOp.Equal, NS)], str(selector)


def test_another_label_name_and_range_are_settings() -> None:
    assert confine("x", NS, label="kubernetes_namespace") == 'x{kubernetes_namespace="team-a"}'
    assert confine("rate(x[2h])", NS, max_range_s=7200) == 'rate(x{namespace="team-a"}[2h])'


# ----------------------------------------------------------------- a real Prometheus


class Tenants:
    """One exporter per namespace, each with the same series name and its own value."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        for namespace, value in (("team-a", 1.0), ("team-b", 1000.0)):
            registry = CollectorRegistry()
            Gauge("tenant_requests", "a tenant's series", registry=registry).set(value)
            port = free_port()
            start_http_server(port, addr="127.0.0.1", registry=registry)
            self.ports[namespace] = port


@pytest.fixture(scope="module")
def tenants_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    tenants = Tenants()
    targets = [ScrapeTarget("tenants", f"127.0.0.1:{port}", labels=(("namespace", ns),))
               for ns, port in tenants.ports.items()]
    with run_prometheus(tmp_path_factory.mktemp("prom"), targets) as prom:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(prom.query("tenant_requests")) < 2:
            time.sleep(0.2)
        yield prom


@pytest.mark.prometheus
def test_a_real_prometheus_answers_the_confined_query_with_the_tenants_own_series(
    tenants_prometheus: PrometheusServer,
) -> None:
    async def ask(query: str) -> float | None:
        async with PrometheusClient(tenants_prometheus.url) as client:
            found = await client.query(query)
            return found.value if found is not None else None

    assert asyncio.run(ask("sum(tenant_requests)")) == 1001.0  # unconfined: both tenants
    for attempt in ("sum(tenant_requests)", 'sum({__name__=~"tenant_.+"})',
                    "sum(tenant_requests) or on() vector(0)",
                    'sum(label_replace(tenant_requests, "x", "$1", "namespace", "(.*)"))'):
        assert asyncio.run(ask(confine(attempt, "team-a"))) == 1.0, attempt


# ------------------------------------------------------------- caps and plausibility

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve(handler: Handler, body: Callable[[str], Awaitable[None]]) -> None:
    app = web.Application()
    app.router.add_post("/api/v1/query", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)  # a hanging handler is not waited for
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        await body(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def vector(*samples: tuple[Any, Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"pod": f"p{i}"}, "value": [t, v]} for i, (t, v) in enumerate(samples)]}}


def gathered(payload: dict[str, Any] | None = None, *, raw: bytes | None = None,
             max_bytes: int = 1 << 20, max_series: int = 1000) -> tuple[Any, tuple[str, ...]]:
    text = raw if raw is not None else json.dumps(payload).encode()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=text, content_type="application/json")

    found: list[Any] = []

    async def body(url: str) -> None:
        async with PrometheusClient(url, max_bytes=max_bytes, max_series=max_series) as client:
            found.append(await gather_observation(client, "lat", "rate"))

    asyncio.run(serve(handler, body))
    return found[0].observation, found[0].errors


NOW = time.time()
BAD_ANSWERS = [
    (vector((NOW, "1e300")), "not a plausible value"),
    (vector((NOW, "-0.5")), "not a plausible value"),
    (vector((NOW, "1e8")), "not a plausible value"),  # a p95 of three years, 1e8 req/s
    (vector(("yesterday", "0.1")), "timestamp 'yesterday' is not a number"),
    (vector((-1, "0.1")), "is not a time"),
    (vector(("NaN", "0.1")), "is not a time"),
    (vector((NOW, {"a": 1})), "is not a number"),
    (vector(*[(NOW, "0.1")] * 1001), "more than the 1000"),
    ({"status": "success", "data": {"resultType": "vector", "result": [[]]}}, "malformed"),
]


@pytest.mark.parametrize(("payload", "message"), BAD_ANSWERS)
def test_a_bad_answer_is_no_reading_with_the_reason(payload: dict[str, Any],
                                                    message: str) -> None:
    observation, errors = gathered(payload)
    assert observation.p95_s is None and observation.request_rate_rps is None
    assert len(errors) == 2 and all(message in e for e in errors), errors


def test_a_p95_over_an_hour_is_refused_but_a_rate_of_5000_is_not() -> None:
    observation, errors = gathered(vector((NOW, "5000")))
    assert observation.p95_s is None and observation.request_rate_rps == 5000.0
    (error,) = errors
    assert error.startswith("latency: 5000 is not a plausible value")


class Broken:
    """A metrics source that fails in a way nobody foresaw (not a PrometheusError)."""

    async def query(self, promql: str, **_: Any) -> Any:
        raise RuntimeError("boom")


def test_an_unforeseen_failure_is_this_models_missing_reading() -> None:
    found = asyncio.run(gather_observation(cast(Any, Broken()), "lat", "rate"))
    assert found.observation.p95_s is None
    assert found.errors == ("latency: unexpected RuntimeError: boom",
                            "request rate: unexpected RuntimeError: boom")


def test_nan_is_no_reading() -> None:
    observation, _ = gathered(vector((NOW, "NaN")))
    assert observation.p95_s is None and observation.request_rate_rps is None


def test_an_answer_over_the_byte_cap_is_not_read() -> None:
    big = vector(*[(NOW, "0.1")] * 3000)
    observation, errors = gathered(big, max_bytes=64 * 1024, max_series=10_000)
    assert observation.p95_s is None
    assert all("bytes" in e for e in errors), errors


def test_a_chunked_answer_over_the_cap_is_cut_off() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()  # no Content-Length to refuse it by
        await response.prepare(request)
        for _ in range(1000):
            await response.write(b" " * 4096)
        await response.write(json.dumps(vector((NOW, "0.1"))).encode())
        return response

    errors: list[str] = []

    async def body(url: str) -> None:
        async with PrometheusClient(url, max_bytes=100_000) as client:
            with pytest.raises(PrometheusError, match="larger than"):
                await client.query("x")
            errors.append("cut")

    asyncio.run(serve(handler, body))
    assert errors == ["cut"]


# --------------------------------------------------------------- one query hangs


class Hanging:
    """A Prometheus that answers every query at once, except those naming ``slow``."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handler(self, request: web.Request) -> web.Response:
        form = await request.post()
        query = str(form["query"])
        self.seen.append(query)
        if "slow" in query:
            await asyncio.sleep(3600)
        return web.Response(text=json.dumps(vector((time.time(), "0.02"))),
                            content_type="application/json")


def model(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": NS, "uid": f"u-{name}", "generation": 1},
            "spec": {"model": {"levelCount": 2,
                               "source": {"pvc": {"claimName": "m", "path": "m.mar"}}},
                     "objective": {"p95Ms": 100, "latencyQuery": f"max({name}_latency)",
                                   "requestRateQuery": f"sum({name}_rate)"},
                     "nodePressure": {"enabled": False}},
            "status": {}}


class StatusSink:
    """Records status applies (the policy loop's writes) per model."""

    def __init__(self) -> None:
        self.status: dict[str, dict[str, Any]] = {}

    async def apply(self, obj: dict[str, Any], *, manager: str = "",
                    subresource: str = "") -> dict[str, Any]:
        self.status[obj["metadata"]["name"]] = obj["status"]
        return obj

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return obj


def test_a_hanging_query_of_one_model_does_not_hold_up_another() -> None:
    hanging = Hanging()
    sink = StatusSink()
    timings: dict[str, float] = {}

    async def body(url: str) -> None:
        client = PrometheusClient(url, timeout_s=2.0)
        rt = Runtime(api=cast(Any, sink), prometheus=client,
                     settings=OperatorSettings(metrics_port=0, node_pressure=False),
                     metrics=OperatorMetrics())
        started = time.monotonic()

        async def run(name: str) -> None:
            await evaluate(rt, model(name))
            timings[name] = time.monotonic() - started

        await asyncio.gather(run("slow"), run("fast"))
        await client.close()

    asyncio.run(serve(hanging.handler, body))
    assert timings["fast"] < 1.0, timings
    assert timings["slow"] < 3.0, timings  # bounded by the client's timeout
    fast = {c["type"]: c for c in sink.status["fast"]["conditions"]}
    slow = {c["type"]: c for c in sink.status["slow"]["conditions"]}
    assert fast["MetricsAvailable"]["status"] == "True"
    assert slow["MetricsAvailable"]["status"] == "False"
    assert "timed out" in slow["MetricsAvailable"]["message"]
    # The model's own queries went out confined to its namespace.
    assert 'max(fast_latency{namespace="team-a"})' in hanging.seen

