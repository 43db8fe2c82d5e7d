"""The Prometheus client against a real HTTP server speaking Prometheus's query API.

A tiny aiohttp app stands in for Prometheus (the real binary is covered by
tests/prometheus); each test sets the answer it should give and checks what the client
makes of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from elastiserve_operator.signals.prometheus import (
    InstantValue,
    PrometheusClient,
    PrometheusError,
    SeriesPolicy,
    gather_observation,
    parse_instant_response,
    render_query,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def vector(*values: str, at: float = 1700000000.0) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [
                {"metric": {"pod": f"p{i}"}, "value": [at, v]} for i, v in enumerate(values)
            ],
        },
    }


async def with_server(handler: Handler, body: Callable[[str], Awaitable[None]]) -> None:
    app = web.Application()
    app.router.add_route("*", "/api/v1/query", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        await body(f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()


def answer(payload: Any, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        assert form["query"]
        if isinstance(payload, str):
            return web.Response(text=payload, status=status)
        return web.json_response(payload, status=status)

    return handler


def run_query(
    payload: Any, status: int = 200, multiple: SeriesPolicy = SeriesPolicy.ERROR
) -> InstantValue | None:
    found: list[InstantValue | None] = []

    async def body(url: str) -> None:
        async with PrometheusClient(url) as client:
            found.append(await client.query("up", multiple=multiple))

    asyncio.run(with_server(answer(payload, status), body))
    return found[0]


class TestValues:
    def test_one_series_gives_value_and_timestamp(self) -> None:
        assert run_query(vector("0.125", at=1234.5)) == InstantValue(0.125, 1234.5, 1)

    def test_scalar_result(self) -> None:
        payload = {"status": "success", "data": {"resultType": "scalar", "result": [7.0, "3"]}}
        assert run_query(payload) == InstantValue(3.0, 7.0)

    @pytest.mark.parametrize("raw", ["NaN", "+Inf", "-Inf"])
    def test_non_finite_is_none(self, raw: str) -> None:
        assert run_query(vector(raw)) is None

    def test_empty_result_is_none(self) -> None:
        assert run_query(vector()) is None


class TestSeveralSeries:
    def test_error_by_default(self) -> None:
        with pytest.raises(PrometheusError, match="2 series"):
            run_query(vector("0.1", "0.3"))

    def test_max_takes_the_slowest(self) -> None:
        assert run_query(vector("0.1", "0.3", "NaN"), multiple=SeriesPolicy.MAX) == InstantValue(
            0.3, 1700000000.0, 2
        )

    def test_sum_adds_rates(self) -> None:
        value = run_query(vector("10", "15.5"), multiple=SeriesPolicy.SUM)
        assert value is not None and value.value == 25.5

    def test_all_nan_series_is_none(self) -> None:
        assert run_query(vector("NaN", "NaN"), multiple=SeriesPolicy.MAX) is None


class TestFailures:
    @pytest.mark.parametrize("status", [400, 422, 500, 503])
    def test_non_2xx_is_an_error(self, status: int) -> None:
        with pytest.raises(PrometheusError, match=f"HTTP {status}"):
            run_query({"status": "error", "error": "bad"}, status=status)

    def test_error_status_in_a_200_body(self) -> None:
        with pytest.raises(PrometheusError, match="bad_data"):
            run_query({"status": "error", "errorType": "bad_data", "error": "parse error"})

    def test_not_json(self) -> None:
        with pytest.raises(PrometheusError, match="not JSON"):
            run_query("<html>proxy error</html>")

    def test_matrix_is_refused(self) -> None:
        with pytest.raises(PrometheusError, match="matrix"):
            run_query({"status": "success", "data": {"resultType": "matrix", "result": []}})

    def test_timeout(self) -> None:
        async def slow(request: web.Request) -> web.StreamResponse:
            await asyncio.sleep(2.0)
            return web.json_response(vector("1"))

        async def body(url: str) -> None:
            async with PrometheusClient(url, timeout_s=0.2) as client:
                with pytest.raises(PrometheusError, match="timed out"):
                    await client.query("up")

        asyncio.run(with_server(slow, body))

    def test_connection_refused(self) -> None:
        async def body() -> None:
            async with PrometheusClient("http://127.0.0.1:9", timeout_s=2) as client:
                with pytest.raises(PrometheusError, match="cannot reach"):
                    await client.query("up")

        asyncio.run(body())


class TestGatherObservation:
    def test_both_queries_become_one_observation(self) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            query = str((await request.post())["query"])
            if query.startswith("histogram_quantile"):
                return web.json_response(vector("0.08", "0.2", at=100.0))
            return web.json_response(vector("30", "12", at=99.0))

        found = []

        async def body(url: str) -> None:
            async with PrometheusClient(url) as client:
                found.append(await gather_observation(client, "histogram_quantile(x)", "rate"))

        asyncio.run(with_server(handler, body))
        result = found[0]
        assert result.errors == ()
        assert result.observation.p95_s == 0.2
        assert result.observation.request_rate_rps == 42.0
        assert result.observation.sampled_at == 99.0

    def test_a_failed_query_becomes_none_and_an_error_line(self) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            query = str((await request.post())["query"])
            if query == "latency":
                return web.Response(status=503, text="overloaded")
            return web.json_response(vector("5"))

        found = []

        async def body(url: str) -> None:
            async with PrometheusClient(url) as client:
                found.append(await gather_observation(client, "latency", "rate"))

        asyncio.run(with_server(handler, body))
        result = found[0]
        assert result.observation.p95_s is None
        assert result.observation.request_rate_rps == 5.0
        assert len(result.errors) == 1 and "HTTP 503" in result.errors[0]


class TestPureParts:
    def test_render_query_fills_placeholders_and_keeps_braces(self) -> None:
        rendered = render_query(
            'rate(x{namespace="$namespace",model="$model",cr="$name",o="$other"}[1m])',
            namespace="ml",
            name="resnet",
            model="resnet20",
        )
        assert rendered == 'rate(x{namespace="ml",model="resnet20",cr="resnet",o="$other"}[1m])'

    def test_malformed_sample_value(self) -> None:
        with pytest.raises(PrometheusError):
            parse_instant_response(vector("abc"))

    def test_vector_entry_without_a_value_pair(self) -> None:
        payload = {"status": "success", "data": {"resultType": "vector", "result": [{}]}}
        with pytest.raises(PrometheusError, match="malformed"):
            parse_instant_response(payload)
