"""Instant PromQL queries, reduced to one number the policy can use.

The policy never imports this module: it takes an ``Observation``. The operator's timer
builds one with ``gather_observation(source, ...)``, where ``source`` is anything with the
``MetricsSource`` shape (a ``PrometheusClient`` in the cluster, a fake in unit tests, the
simulator's Prometheus in benchmarks).

Rules, so that a bad answer never looks like a good number:

* non-2xx, a timeout, a connection error, non-JSON or ``status != "success"`` raise
  ``PrometheusError`` (the caller holds the level and sets ``MetricsAvailable=False``);
* an empty result is ``None``: no series means no traffic or no scrape yet, not zero;
* NaN and +-Inf are ``None``: ``histogram_quantile`` over zero requests is NaN;
* a sample timestamp that is not a positive finite number, an answer larger than
  ``max_bytes`` or with more than ``max_series`` series raise ``PrometheusError`` (a
  tenant's query must not make the operator parse megabytes every few seconds);
* ``gather_observation`` also refuses values no model can have (a negative latency or
  rate, a p95 over ``MAX_PLAUSIBLE_P95_S``, a rate over ``MAX_PLAUSIBLE_RATE_RPS``), so
  that a query gone wrong holds the level with the reason instead of moving it;
* several series are reduced by ``SeriesPolicy``: ``ERROR`` by default (a template that
  forgot its ``sum``/``max`` is a misconfiguration worth failing loudly), ``MAX`` for a
  per-pod p95 (the slowest pod is what some clients see), ``SUM`` for per-pod rates.
  NaN/Inf series are dropped before reducing; if none is left the result is ``None``.

The sample timestamp returned is Prometheus's: for an instant query that is the
evaluation time, so staleness shows up as an empty result (Prometheus drops series 5 min
after the last scrape, and ``rate()`` over a window with < 2 samples is empty). To catch a
scrape that stopped recently, wrap the query in ``timestamp(...)``-style PromQL.

Wiring: create one ``PrometheusClient`` per operator process (it owns an aiohttp session;
``await client.close()`` on shutdown, e.g. from ``@kopf.on.cleanup``), render the CR's
query templates with ``render_query`` and call ``gather_observation`` from the timer.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from string import Template
from types import TracebackType
from typing import Any, Protocol

import aiohttp

from ..observation import NodePressure, Observation

__all__ = [
    "DEFAULT_LATENCY_QUERY",
    "DEFAULT_RATE_QUERY",
    "END_TO_END_LATENCY_QUERY",
    "HANDLER_LATENCY_QUERY",
    "InstantValue",
    "LabelledValue",
    "MetricsSource",
    "PrometheusClient",
    "PrometheusError",
    "SeriesPolicy",
    "VectorSource",
    "end_to_end_latency_query",
    "gather_observation",
    "parse_instant_response",
    "parse_vector_response",
    "render_query",
]

HANDLER_LATENCY_QUERY = (
    "histogram_quantile(0.95, sum by (le) (rate(elastiserve_request_latency_seconds_bucket"
    '{namespace="$namespace",ModelName="$model"}[1m])))'
)
"""p95 of the latency histogram the serving side really exports
(``elastiserve_serve.ts_metrics.LATENCY``, TorchServe labels ``ModelName``/``ElasticLevel``).
It is the handler's time only: the frontend queue, where overload shows first, is outside it,
which is why the operator's default is :data:`DEFAULT_LATENCY_QUERY` below."""

def end_to_end_latency_query(window: str = "1m") -> str:
    """p95 as a client sees it, estimated from what TorchServe exports: handler p95 + queue wait.

    The handler's histogram misses the time a request waits in TorchServe's frontend queue,
    which is where overload shows first. TorchServe 0.12 exports that wait only as a sum
    (``ts_queue_latency_microseconds``, added when a request leaves the queue), so the
    estimate adds the *mean* wait of the requests that left the queue in the window (the sum's
    rate over the handler's completions) to the handler's p95. It is not a quantile of the sum:
    it underestimates while a queue grows (the p95 request waited longer than the mean) and
    overestimates little at light load (waits are then near zero). ``tests/e2e`` measures the
    difference against what an open-loop client observes.
    """
    selector_ts = f'{{namespace="$namespace",model_name="$model"}}[{window}]'
    selector_es = f'{{namespace="$namespace",ModelName="$model"}}[{window}]'
    return (
        "histogram_quantile(0.95, sum by (le) (rate(elastiserve_request_latency_seconds_bucket"
        f"{selector_es}))) + on() (sum(rate(ts_queue_latency_microseconds{selector_ts}))"
        f" / sum(rate(elastiserve_requests_total{selector_es})) / 1e6)"
    )


END_TO_END_LATENCY_QUERY = end_to_end_latency_query()
"""The end-to-end estimate over the default 1 m window; see :func:`end_to_end_latency_query`."""

DEFAULT_LATENCY_QUERY = END_TO_END_LATENCY_QUERY
"""The operator's default: the objective is on what clients see, so the estimate that includes
the queue wait, not the handler-only histogram. A deployment with an ingress histogram should
point ``ELASTISERVE_LATENCY_QUERY`` (or the CR's ``objective.latencyQuery``) at that one."""

def request_rate_query(window: str = "1m") -> str:
    """Arriving requests/s over ``window`` (see :data:`DEFAULT_RATE_QUERY`)."""
    return ('sum(rate(ts_inference_requests_total{namespace="$namespace",model_name="$model"}'
            f"[{window}]))")


DEFAULT_RATE_QUERY = request_rate_query()
"""Arriving requests/s: TorchServe's frontend counts a request when it is received, before
the queue, which is what the predictor needs (see ``Observation``); the handler's
``elastiserve_requests_total`` counts completions and saturates under overload."""


class PrometheusError(Exception):
    """The query failed; the message says how (HTTP status, timeout, bad payload)."""


class SeriesPolicy(str, Enum):
    """How to reduce a result with several series to one value."""

    ERROR = "error"
    MAX = "max"
    SUM = "sum"


@dataclass(frozen=True)
class InstantValue:
    """One finite value and the timestamp Prometheus gave it (epoch seconds)."""

    value: float
    timestamp: float
    series: int = 1


class MetricsSource(Protocol):
    """The seam the operator depends on; ``PrometheusClient`` is the real one."""

    async def query(
        self, promql: str, *, multiple: SeriesPolicy = SeriesPolicy.ERROR
    ) -> InstantValue | None: ...


@dataclass(frozen=True)
class LabelledValue:
    """One finite sample of an instant vector with its series' labels (``__name__`` too,
    when the query kept it)."""

    labels: Mapping[str, str]
    value: float
    timestamp: float


class VectorSource(Protocol):
    """The seam for per-series answers (one value per node, say); ``PrometheusClient``
    is the real one. Kept apart from ``MetricsSource`` so that the simulator's and the
    local loop's sources need not grow a method they never use."""

    async def query_vector(self, promql: str) -> tuple[LabelledValue, ...]: ...


def render_query(template: str, *, namespace: str, name: str, model: str) -> str:
    """Fill ``$namespace``, ``$name`` and ``$model`` (``$$`` for a literal ``$``).

    ``string.Template`` rather than ``str.format`` because PromQL is full of braces.
    Unknown placeholders are left as they are, so a typo shows up in the query error.
    """
    return Template(template).safe_substitute(namespace=namespace, name=name, model=model)


MAX_PLAUSIBLE_P95_S = 3600.0
"""A p95 over an hour is a query gone wrong (the CRD's largest objective is 600 s)."""
MAX_PLAUSIBLE_RATE_RPS = 1e7
"""Ten million requests per second to one model is a query gone wrong."""


def _timestamp(raw: object) -> float:
    """A sample's timestamp: epoch seconds, positive and finite, or ``PrometheusError``."""
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PrometheusError(f"sample timestamp {raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0.0:
        raise PrometheusError(f"sample timestamp {raw!r} is not a time")
    return value


def _check_series(result: list[Any], max_series: int | None) -> None:
    if max_series is not None and len(result) > max_series:
        raise PrometheusError(f"query returned {len(result)} series, more than the "
                              f"{max_series} the operator reads")


def _finite(raw: object) -> float | None:
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PrometheusError(f"sample value {raw!r} is not a number") from None
    return value if math.isfinite(value) else None


def _check_success(payload: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``data`` object of a successful answer; ``PrometheusError`` otherwise."""
    if payload.get("status") != "success":
        raise PrometheusError(
            f"query failed: {payload.get('errorType', 'unknown')}: {payload.get('error', '')}"
        )
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise PrometheusError("response has no data object")
    return data


def parse_vector_response(
    payload: Mapping[str, Any], max_series: int | None = None
) -> tuple[LabelledValue, ...]:
    """Every finite sample of an instant-vector answer with its labels (pure).

    The same failure rules as :func:`parse_instant_response`; NaN/Inf samples are dropped
    (no reading), an empty vector is an empty tuple (nothing exported, or all stale).
    """
    data = _check_success(payload)
    if data.get("resultType") != "vector":
        raise PrometheusError(f"expected an instant vector, got {data.get('resultType')!r}")
    result = data.get("result")
    if not isinstance(result, list):
        raise PrometheusError("malformed vector result")
    _check_series(result, max_series)
    found: list[LabelledValue] = []
    for series in result:
        pair = series.get("value") if isinstance(series, Mapping) else None
        if not isinstance(pair, list) or len(pair) != 2:
            raise PrometheusError("malformed series in vector result")
        metric = series.get("metric") or {}
        if not isinstance(metric, Mapping):
            raise PrometheusError("malformed labels in vector result")
        labels = {str(k): str(v) for k, v in metric.items()}
        value = _finite(pair[1])
        stamp = _timestamp(pair[0])
        if value is not None:
            found.append(LabelledValue(labels, value, stamp))
    return tuple(found)


def parse_instant_response(
    payload: Mapping[str, Any], multiple: SeriesPolicy = SeriesPolicy.ERROR,
    max_series: int | None = None,
) -> InstantValue | None:
    """Reduce the JSON body of ``/api/v1/query`` to one value (pure; see module rules)."""
    data = _check_success(payload)
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        if not isinstance(result, list) or len(result) != 2:
            raise PrometheusError("malformed scalar result")
        value = _finite(result[1])
        stamp = _timestamp(result[0])
        return None if value is None else InstantValue(value, stamp)
    if kind != "vector":
        raise PrometheusError(f"expected an instant vector or scalar, got {kind!r}")
    if not isinstance(result, list):
        raise PrometheusError("malformed vector result")
    _check_series(result, max_series)
    samples: list[tuple[float, float]] = []
    for series in result:
        pair = series.get("value") if isinstance(series, Mapping) else None
        if not isinstance(pair, list) or len(pair) != 2:
            raise PrometheusError("malformed series in vector result")
        value = _finite(pair[1])
        stamp = _timestamp(pair[0])
        if value is not None:
            samples.append((value, stamp))
    if len(result) > 1 and multiple is SeriesPolicy.ERROR:
        raise PrometheusError(
            f"query returned {len(result)} series; aggregate it (sum/max) in the PromQL"
        )
    if not samples:
        return None
    if multiple is SeriesPolicy.SUM:
        return InstantValue(
            math.fsum(v for v, _ in samples), min(t for _, t in samples), len(samples)
        )
    value, timestamp = max(samples)
    return InstantValue(value, timestamp, len(samples))


class PrometheusClient:
    """Async client for Prometheus's HTTP API (instant queries only)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 5.0,
        headers: Mapping[str, str] | None = None,
        session: aiohttp.ClientSession | None = None,
        max_bytes: int = 1 << 20,
        max_series: int | None = 1000,
    ) -> None:
        """``max_bytes`` bounds every answer read; ``max_series`` the series of a
        :meth:`query` (one model's p95 or rate). :meth:`query_vector` (the operator's own
        per-node series, one per node) is bounded by ``max_bytes`` only."""
        self._url = base_url.rstrip("/") + "/api/v1/query"
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._max_series = max_series
        self._headers = dict(headers or {})
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session this client created (a session passed in stays open)."""
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    async def query(
        self, promql: str, *, multiple: SeriesPolicy = SeriesPolicy.ERROR
    ) -> InstantValue | None:
        """Run ``promql`` as an instant query now; see the module docstring for the rules."""
        return parse_instant_response(await self._instant(promql), multiple, self._max_series)

    async def query_vector(self, promql: str) -> tuple[LabelledValue, ...]:
        """Run ``promql`` as an instant query and keep every series with its labels."""
        return parse_vector_response(await self._instant(promql))

    async def _instant(self, promql: str) -> Mapping[str, Any]:
        """POST the instant query; the decoded JSON object, or ``PrometheusError``.

        The whole exchange (a pooled connection, the answer's last byte) is bounded by the
        timeout, and Prometheus is told the same timeout, so that it stops evaluating a
        query nobody waits for. The body is read in chunks and dropped past ``max_bytes``.
        """
        try:
            body = await asyncio.wait_for(self._exchange(promql), self._timeout_s)
        except asyncio.TimeoutError:
            raise PrometheusError(f"query timed out after {self._timeout_s:g} s") from None
        except aiohttp.ClientError as error:
            raise PrometheusError(f"cannot reach Prometheus: {error}") from error
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise PrometheusError(f"response is not JSON: {body[:200]!r}") from None
        if not isinstance(payload, Mapping):
            raise PrometheusError("response is not a JSON object")
        return payload

    async def _exchange(self, promql: str) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        form = {"query": promql, "timeout": f"{self._timeout_s:g}s"}
        async with self._session.post(
            self._url, data=form, headers=self._headers, timeout=self._timeout
        ) as response:
            body = await self._read(response)
            if response.status // 100 != 2:
                raise PrometheusError(f"HTTP {response.status} from Prometheus: {body[:200]!r}")
        return body

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, or ``PrometheusError`` as soon as it passes ``max_bytes``."""
        declared = response.content_length
        if declared is not None and declared > self._max_bytes:
            raise PrometheusError(f"answer of {declared} bytes is larger than the "
                                  f"{self._max_bytes} the operator reads")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self._max_bytes:
                raise PrometheusError(f"answer larger than the {self._max_bytes} bytes the "
                                      "operator reads")
            chunks.append(chunk)
        return b"".join(chunks)


@dataclass(frozen=True)
class GatherResult:
    """The observation plus what went wrong, for the MetricsAvailable condition message."""

    observation: Observation
    errors: tuple[str, ...] = ()


async def gather_observation(
    source: MetricsSource,
    latency_query: str,
    rate_query: str,
    *,
    node: NodePressure | None = None,
    ready_replicas: int | None = None,
) -> GatherResult:
    """Run both queries concurrently and build an ``Observation``.

    A failed query becomes ``None`` in the observation (the policy then holds) and a line
    in ``errors``. The latency takes the slowest series (``MAX``), the rate the sum. The
    sample time is the older of the two timestamps.
    """
    outcomes = await asyncio.gather(
        source.query(latency_query, multiple=SeriesPolicy.MAX),
        source.query(rate_query, multiple=SeriesPolicy.SUM),
        return_exceptions=True,
    )
    values: list[InstantValue | None] = []
    errors: list[str] = []
    limits = (MAX_PLAUSIBLE_P95_S, MAX_PLAUSIBLE_RATE_RPS)
    for label, outcome, limit in zip(("latency", "request rate"), outcomes, limits, strict=True):
        if isinstance(outcome, PrometheusError):
            errors.append(f"{label}: {outcome}")
            values.append(None)
        elif isinstance(outcome, asyncio.CancelledError):
            raise outcome
        elif isinstance(outcome, Exception):
            # A source that broke in a way it did not foresee: this model's reading is
            # missing and says why; the caller's loop and every other model go on.
            errors.append(f"{label}: unexpected {type(outcome).__name__}: {outcome}")
            values.append(None)
        elif isinstance(outcome, BaseException):
            raise outcome
        elif outcome is not None and not 0.0 <= outcome.value <= limit:
            errors.append(f"{label}: {outcome.value:g} is not a plausible value "
                          f"(0..{limit:g})")
            values.append(None)
        else:
            values.append(outcome)
    latency, rate = values
    stamps = [v.timestamp for v in values if v is not None]
    return GatherResult(
        Observation(
            p95_s=latency.value if latency else None,
            request_rate_rps=rate.value if rate else None,
            sampled_at=min(stamps) if stamps else None,
            node=node,
            ready_replicas=ready_replicas,
        ),
        tuple(errors),
    )
