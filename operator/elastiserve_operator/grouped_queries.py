"""One Prometheus query per namespace for every model that runs the operator's own queries.

Each evaluation reads its model's p95, request rate and served shares: three queries, 600 a
second at 1,000 models on the default 5 s interval. Each is an HTTP round trip, a JSON
answer to decode and a PromQL evaluation in Prometheus, and at 1,000 models the operator
(and Prometheus) could not keep up: evaluations fell a whole interval behind. Most models
run the same templates (the operator's defaults, which differ per model only in the
``$namespace``/``$model`` matchers), so one query grouped ``by`` the model's label answers
every model of a namespace at once (``GROUPED``): the latency, the rate and the shares of
all of them in three queries.

``SharedQueries`` runs a grouped query at most once per ``max_age_s`` (1 s: an answer is at
most that much older than one the model's own query would get, against a 1 m rate window
and a 15-30 s scrape interval) and once for every caller that asks while it runs (single
flight); a failure reaches every waiter as the per-model query's would, and is kept as long
as an answer would (so an outage costs one failing query per second, not one per model).
``ModelSource`` is one model's view: it answers the model's own rendered query from the
grouped answer when that query has a grouped form, and sends any other query (a template
of the spec's own, or an admin's template this module does not know) as it is.

Only templates known to be equivalent are grouped, compared after whitespace is collapsed:
the grouped form keeps every selector and aggregation of the per-model one, drops the
``$model`` matcher and adds the model's label to each ``by`` (``tests/operator``
compares both forms on a real Prometheus). The pure parts: ``grouped_form``, ``by_model``,
``reduce``.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .served_share import LEVEL_LABEL, SERVED_SHARE_QUERY
from .signals.prometheus import (
    DEFAULT_RATE_QUERY,
    HANDLER_LATENCY_QUERY,
    InstantValue,
    LabelledValue,
    MetricsSource,
    PrometheusError,
    SeriesPolicy,
    VectorSource,
    end_to_end_latency_query,
    render_query,
)

__all__ = [
    "GROUPED",
    "Grouped",
    "ModelSource",
    "SharedQueries",
    "by_model",
    "grouped_form",
    "reduce",
]

MAX_AGE_S = 1.0
"""How long a grouped answer serves the models that ask (see the module docstring)."""


@dataclass(frozen=True)
class Grouped:
    """A per-model template's grouped form: ``query`` (only ``$namespace`` to fill) gives one
    series per model (per model and level for the shares), ``label`` names the model."""

    query: str
    label: str


def _end_to_end_grouped(window: str) -> str:
    """``end_to_end_latency_query(window)`` for every model of a namespace at once: the
    queue's series name the model ``model_name``, the handler's ``ModelName``; the former is
    copied into the latter (``label_replace``) before the sums are matched per model."""
    es = f'{{namespace="$namespace"}}[{window}]'
    return (
        "histogram_quantile(0.95, sum by (le, ModelName) "
        f"(rate(elastiserve_request_latency_seconds_bucket{es}))) + on(ModelName) "
        f'(sum by (ModelName) (label_replace(rate(ts_queue_latency_microseconds{es}), '
        f'"ModelName", "$$1", "model_name", "(.*)"))'
        f" / sum by (ModelName) (rate(elastiserve_requests_total{es})) / 1e6)"
    )


def _normal(query: str) -> str:
    return " ".join(query.split())


GROUPED: Mapping[str, Grouped] = {
    _normal(end_to_end_latency_query("1m")): Grouped(_end_to_end_grouped("1m"), "ModelName"),
    _normal(HANDLER_LATENCY_QUERY): Grouped(
        "histogram_quantile(0.95, sum by (le, ModelName) (rate("
        'elastiserve_request_latency_seconds_bucket{namespace="$namespace"}[1m])))',
        "ModelName"),
    _normal(DEFAULT_RATE_QUERY): Grouped(
        'sum by (model_name) (rate(ts_inference_requests_total{namespace="$namespace"}[1m]))',
        "model_name"),
    _normal(SERVED_SHARE_QUERY): Grouped(
        f"sum by (ModelName, {LEVEL_LABEL}) (rate(elastiserve_request_latency_seconds_count"
        '{namespace="$namespace"}[1m]))',
        "ModelName"),
}
"""Per-model template (whitespace collapsed) -> its grouped form."""


def grouped_form(template: str) -> Grouped | None:
    """The grouped form of a per-model template, or ``None`` when it has none (pure)."""
    return GROUPED.get(_normal(template))


def by_model(values: Sequence[LabelledValue], label: str) -> dict[str, tuple[LabelledValue, ...]]:
    """A grouped answer's samples per model (``label``'s value); unlabelled ones dropped."""
    grouped: dict[str, list[LabelledValue]] = {}
    for value in values:
        model = value.labels.get(label)
        if model:
            grouped.setdefault(model, []).append(value)
    return {model: tuple(found) for model, found in grouped.items()}


def reduce(values: Sequence[LabelledValue], multiple: SeriesPolicy) -> InstantValue | None:
    """One model's samples reduced as ``parse_instant_response`` reduces a per-model answer:
    none -> ``None``; several -> an error unless ``MAX``/``SUM`` say how (pure)."""
    finite = [v for v in values if math.isfinite(v.value)]
    if len(values) > 1 and multiple is SeriesPolicy.ERROR:
        raise PrometheusError(
            f"query returned {len(values)} series; aggregate it (sum/max) in the PromQL")
    if not finite:
        return None
    if multiple is SeriesPolicy.SUM:
        return InstantValue(math.fsum(v.value for v in finite),
                            min(v.timestamp for v in finite), len(finite))
    top = max(finite, key=lambda v: (v.value, v.timestamp))
    return InstantValue(top.value, top.timestamp, len(finite))


Answer = dict[str, tuple[LabelledValue, ...]] | PrometheusError


@dataclass
class SharedQueries:
    """Per-process grouped answers, by rendered grouped query (see the module docstring)."""

    source: VectorSource
    max_age_s: float = MAX_AGE_S
    clock: Callable[[], float] = time.monotonic
    _answers: dict[str, tuple[float, Answer]] = field(default_factory=dict)
    _pending: dict[str, asyncio.Future[Answer]] = field(default_factory=dict)
    queries: int = 0
    """Grouped queries sent (tests, and the footprint benchmark's log)."""

    async def per_model(self, query: str, label: str) -> dict[str, tuple[LabelledValue, ...]]:
        """``query``'s samples per model, from an answer at most ``max_age_s`` old or the
        one in flight; its failure is raised."""
        kept = self._answers.get(query)
        if kept is None or self.clock() - kept[0] > self.max_age_s:
            task = self._pending.get(query)
            if task is None:
                # Its own task: a caller cancelled meanwhile (its evaluation timed out)
                # does not cancel the query the others are waiting for.
                task = asyncio.ensure_future(self._run(query, label))
                self._pending[query] = task
                task.add_done_callback(lambda done: self._done(query, done))
            answer = await asyncio.shield(task)
        else:
            answer = kept[1]
        if isinstance(answer, PrometheusError):
            raise answer
        return answer

    async def _run(self, query: str, label: str) -> Answer:
        started = self.clock()
        self.queries += 1
        answer: Answer
        try:
            answer = by_model(await self.source.query_vector(query), label)
        except PrometheusError as error:
            answer = error
        self._answers[query] = (started, answer)
        return answer

    def _done(self, query: str, task: asyncio.Future[Answer]) -> None:
        if self._pending.get(query) is task:
            del self._pending[query]
        if not task.cancelled():
            task.exception()  # retrieved: an unforeseen failure was raised to the waiters

    def forget(self, namespace_query: str) -> None:
        """Drop a kept answer (tests)."""
        self._answers.pop(namespace_query, None)

    def for_model(
        self, base: MetricsSource, vectors: VectorSource | None, *, namespace: str,
        model: str, templates: Mapping[str, str],
    ) -> ModelSource:
        """One model's source: ``templates`` maps each of its rendered queries to the
        template it was rendered from; those with a grouped form are answered grouped."""
        grouped = {}
        for rendered, template in templates.items():
            form = grouped_form(template)
            if form is not None:
                grouped[rendered] = Grouped(
                    render_query(form.query, namespace=namespace, name="", model=""),
                    form.label)
        return ModelSource(self, base, vectors, model, grouped)


@dataclass(frozen=True)
class ModelSource:
    """``MetricsSource`` and ``VectorSource`` for one model: its grouped queries from the
    namespace's shared answer, any other query sent as it is."""

    shared: SharedQueries
    base: MetricsSource
    vectors: VectorSource | None
    model: str
    grouped: Mapping[str, Grouped]

    async def query(
        self, promql: str, *, multiple: SeriesPolicy = SeriesPolicy.ERROR
    ) -> InstantValue | None:
        form = self.grouped.get(promql)
        if form is None:
            return await self.base.query(promql, multiple=multiple)
        answer = await self.shared.per_model(form.query, form.label)
        return reduce(answer.get(self.model, ()), multiple)

    async def query_vector(self, promql: str) -> tuple[LabelledValue, ...]:
        form = self.grouped.get(promql)
        if form is None:
            if self.vectors is None:
                raise PrometheusError("this source answers no per-series queries")
            return await self.vectors.query_vector(promql)
        answer = await self.shared.per_model(form.query, form.label)
        return answer.get(self.model, ())
