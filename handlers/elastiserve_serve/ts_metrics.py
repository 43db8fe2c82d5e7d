"""The metrics TorchServe exports for us, and the sink that feeds them from the handler.

TorchServe 0.12 parses ``[METRICS]`` lines from its workers and, with ``metrics_mode=prometheus``,
exposes every metric declared under ``model_metrics`` in its metrics config on the metrics port,
histograms included (Prometheus' default buckets, 5 ms to 10 s, hence seconds). Exporting through
TorchServe keeps one scrape target per pod and no extra port per worker.

The latency histogram is what the handler sees (decode + forward + top-k, per request); the
frontend queue is outside it and shows in TorchServe's own ``ts_queue_latency_microseconds``.

Pinned requests (the client chose the level) are kept out of that histogram, in a histogram of
their own with the same labels (:data:`PINNED_LATENCY`): the operator's latency query selects
the histogram by name, so what it acts on is the latency of the levels it chose, with no label
to add to its query. ``elastiserve_requests_total`` still counts every answered request
(pinned ones too): the operator divides TorchServe's queue wait, which every request spends,
by it.

The control file's health: :data:`CONTROL_PROBLEMS` counts each new problem (by kind) and
:data:`CONTROL_OK` is 1 while the file as it is now was taken, 0 while the worker keeps its
last level because it was not.
"""

from __future__ import annotations

from typing import Any

LATENCY = "elastiserve_request_latency_seconds"
REQUESTS = "elastiserve_requests_total"
REJECTED = "elastiserve_rejected_requests_total"
ACTIVE = "elastiserve_active_level"
PINNED_LATENCY = "elastiserve_pinned_request_latency_seconds"
CONTROL_PROBLEMS = "elastiserve_control_file_problems_total"
CONTROL_OK = "elastiserve_control_file_ok"
LEVEL_MEMORY = "elastiserve_level_device_memory_bytes"
STAGE_SECONDS = "elastiserve_stage_seconds_total"
BATCHES = "elastiserve_batches_total"
THREADS = "elastiserve_torch_threads"
BATCH_SIZE = "elastiserve_batch_size"
LEVEL_DIMENSION = "ElasticLevel"

# TorchServe's own frontend metrics, as in its default metrics.yaml (its defaults are replaced
# wholesale when a metrics config is given, so the ones the operator reads are repeated here).
_TS_METRICS: dict[str, list[dict[str, Any]]] = {
    "counter": [
        {"name": name, "unit": unit, "dimensions": ["model_name", "model_version", "hostname"]}
        for name, unit in (
            ("ts_inference_requests_total", "Count"),
            ("ts_inference_latency_microseconds", "Microseconds"),
            ("ts_queue_latency_microseconds", "Microseconds"),
        )
    ]
    + [
        {"name": name, "unit": "Count", "dimensions": ["Level", "Hostname"]}
        for name in ("Requests2XX", "Requests4XX", "Requests5XX")
    ],
    "gauge": [
        {"name": "QueueTime", "unit": "Milliseconds", "dimensions": ["Level", "Hostname"]},
    ],
}


def metrics_config() -> dict[str, Any]:
    """The document for TorchServe's ``metrics_config`` (YAML)."""

    def per_level() -> list[str]:
        # A fresh list per metric: shared lists become YAML aliases, and TorchServe's frontend
        # appends "Hostname" to each metric's list in place, so aliased metrics would end up
        # with one extra label per sharer ("Incorrect number of labels").
        return ["ModelName", LEVEL_DIMENSION]

    return {
        "dimensions": ["ModelName", "Level", "Hostname", LEVEL_DIMENSION],
        "ts_metrics": _TS_METRICS,
        "model_metrics": {
            "histogram": [
                {"name": LATENCY, "unit": "seconds", "dimensions": per_level()},
                {"name": PINNED_LATENCY, "unit": "seconds", "dimensions": per_level()},
            ],
            "counter": [
                {"name": REQUESTS, "unit": "Count", "dimensions": per_level()},
                {"name": REJECTED, "unit": "Count", "dimensions": ["ModelName", "Status"]},
                {"name": CONTROL_PROBLEMS, "unit": "Count", "dimensions": ["ModelName", "Kind"]},
                {"name": STAGE_SECONDS, "unit": "seconds", "dimensions": ["ModelName", "Stage"]},
                {"name": BATCHES, "unit": "Count", "dimensions": ["ModelName"]},
            ],
            "gauge": [
                {"name": ACTIVE, "unit": "index", "dimensions": per_level()},
                {"name": CONTROL_OK, "unit": "bool", "dimensions": ["ModelName"]},
                {"name": LEVEL_MEMORY, "unit": "bytes", "dimensions": per_level()},
                {"name": THREADS, "unit": "count", "dimensions": ["ModelName"]},
                {"name": BATCH_SIZE, "unit": "count", "dimensions": ["ModelName"]},
            ],
        },
    }


class TorchServeMetrics:
    """:class:`~elastiserve_serve.runtime.metrics.MetricsSink` over TorchServe's metrics cache.

    ``cache`` is ``context.metrics``; metric objects are looked up once, at construction, so a
    missing declaration fails the model load instead of every request.
    """

    def __init__(self, cache: Any, model_name: str) -> None:
        from ts.metrics.metric_type_enum import MetricTypes

        self._model = model_name
        self._latency = cache.get_metric(LATENCY, MetricTypes.HISTOGRAM)
        self._requests = cache.get_metric(REQUESTS, MetricTypes.COUNTER)
        self._rejected = cache.get_metric(REJECTED, MetricTypes.COUNTER)
        self._active = cache.get_metric(ACTIVE, MetricTypes.GAUGE)
        self._pinned = cache.get_metric(PINNED_LATENCY, MetricTypes.HISTOGRAM)
        self._problems = cache.get_metric(CONTROL_PROBLEMS, MetricTypes.COUNTER)
        self._control_ok = cache.get_metric(CONTROL_OK, MetricTypes.GAUGE)
        self._memory = cache.get_metric(LEVEL_MEMORY, MetricTypes.GAUGE)
        self._stages = cache.get_metric(STAGE_SECONDS, MetricTypes.COUNTER)
        self._batches = cache.get_metric(BATCHES, MetricTypes.COUNTER)
        self._threads = cache.get_metric(THREADS, MetricTypes.GAUGE)
        self._batch_size = cache.get_metric(BATCH_SIZE, MetricTypes.GAUGE)
        self._last_active: str | None = None

    def request_served(self, level: str, seconds: float, *, pinned: bool = False) -> None:
        (self._pinned if pinned else self._latency).add_or_update(seconds, [self._model, level])
        self._requests.add_or_update(1, [self._model, level])

    def control_problem(self, kind: str) -> None:
        self._problems.add_or_update(1, [self._model, kind])

    def control_file_ok(self, ok: bool) -> None:
        self._control_ok.add_or_update(1 if ok else 0, [self._model])

    def stage_seconds(self, stage: str, seconds: float) -> None:
        self._stages.add_or_update(seconds, [self._model, stage])

    def batches_served(self, count: int) -> None:
        self._batches.add_or_update(count, [self._model])

    def level_memory(self, level: str, nbytes: int) -> None:
        self._memory.add_or_update(nbytes, [self._model, level])

    def torch_threads(self, count: int) -> None:
        self._threads.add_or_update(count, [self._model])

    def batch_size(self, count: int) -> None:
        self._batch_size.add_or_update(count, [self._model])

    def request_rejected(self, status: int) -> None:
        self._rejected.add_or_update(1, [self._model, str(status)])

    def active_level(self, level: str, index: int) -> None:
        # A gauge per level name: 1 for the active one, 0 for the one it replaced. Emitted only
        # on change (each emission is a log line the frontend parses).
        if level == self._last_active:
            return
        if self._last_active is not None:
            self._active.add_or_update(0, [self._model, self._last_active])
        self._active.add_or_update(1, [self._model, level])
        self._last_active = level
