"""One grouped Prometheus query per namespace answers every model that runs the operator's own
templates: which templates group, the split per model, the reduction, the shared answer's age,
one query for concurrent callers, failures reaching every model, other queries sent as they
are."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from elastiserve_operator.grouped_queries import (
    Grouped,
    ModelSource,
    SharedQueries,
    by_model,
    grouped_form,
    reduce,
)
from elastiserve_operator.served_share import SERVED_SHARE_QUERY
from elastiserve_operator.signals.prometheus import (
    DEFAULT_LATENCY_QUERY,
    DEFAULT_RATE_QUERY,
    HANDLER_LATENCY_QUERY,
    InstantValue,
    LabelledValue,
    PrometheusError,
    SeriesPolicy,
    gather_observation,
    render_query,
)


def sample(value: float, at: float = 100.0, **labels: str) -> LabelledValue:
    return LabelledValue(labels, value, at)


@pytest.mark.parametrize("template", [DEFAULT_LATENCY_QUERY, HANDLER_LATENCY_QUERY,
                                      DEFAULT_RATE_QUERY, SERVED_SHARE_QUERY])
def test_the_operators_own_templates_have_a_grouped_form_without_the_model(
        template: str) -> None:
    form = grouped_form(template)
    assert form is not None
    assert "$model" not in form.query and '"$namespace"' in form.query
    assert f"by ({form.label}" in form.query or f", {form.label})" in form.query


def test_a_template_is_recognised_whatever_its_line_breaks() -> None:
    folded = DEFAULT_RATE_QUERY.replace(" (rate(", "\n  (rate(")  # a folded YAML value
    assert grouped_form(folded) == grouped_form(DEFAULT_RATE_QUERY)


def test_any_other_template_is_not_grouped() -> None:
    assert grouped_form('max(my_p95{namespace="$namespace",model="$model"})') is None
    assert grouped_form(DEFAULT_RATE_QUERY.replace("[1m]", "[5m]")) is None


def test_samples_are_split_by_the_models_label_and_unlabelled_ones_dropped() -> None:
    split = by_model([sample(1, ModelName="a"), sample(2, ModelName="b"),
                      sample(3, ModelName="a", ElasticLevel="L1"), sample(4)], "ModelName")
    assert {k: [v.value for v in vs] for k, vs in split.items()} == {"a": [1, 3], "b": [2]}


def test_reduce_follows_the_per_model_rules() -> None:
    assert reduce([], SeriesPolicy.MAX) is None
    assert reduce([sample(2.0, 5.0)], SeriesPolicy.ERROR) == InstantValue(2.0, 5.0, 1)
    assert reduce([sample(1.0, 5.0), sample(3.0, 4.0)], SeriesPolicy.MAX) == InstantValue(
        3.0, 4.0, 2)
    assert reduce([sample(1.0, 5.0), sample(3.0, 4.0)], SeriesPolicy.SUM) == InstantValue(
        4.0, 4.0, 2)
    with pytest.raises(PrometheusError, match="2 series"):
        reduce([sample(1.0), sample(3.0)], SeriesPolicy.ERROR)
    assert reduce([sample(math.nan)], SeriesPolicy.MAX) is None


class Vectors:
    """A vector source: answers per query from ``answers``; ``gate`` holds them; ``fail``
    makes every answer fail."""

    def __init__(self, answers: dict[str, tuple[LabelledValue, ...]]) -> None:
        self.answers = answers
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def query_vector(self, promql: str) -> tuple[LabelledValue, ...]:
        self.calls.append(promql)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.answers.get(promql, ())

    async def query(self, promql: str, *,
                    multiple: SeriesPolicy = SeriesPolicy.ERROR) -> InstantValue | None:
        self.calls.append(promql)
        return InstantValue(42.0, 1.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def form_of(template: str) -> Grouped:
    form = grouped_form(template)
    assert form is not None
    return form


RATE = form_of(DEFAULT_RATE_QUERY)
LATENCY = form_of(DEFAULT_LATENCY_QUERY)
SHARE = form_of(SERVED_SHARE_QUERY)


def grouped(form: Grouped, namespace: str = "ml") -> str:
    return render_query(form.query, namespace=namespace, name="", model="")


def source_for(shared: SharedQueries, base: Vectors, model: str,
               namespace: str = "ml", own_latency: str | None = None) -> tuple[ModelSource, str,
                                                                                str, str]:
    fill = {"namespace": namespace, "name": model, "model": model}
    latency = own_latency or render_query(DEFAULT_LATENCY_QUERY, **fill)
    rate = render_query(DEFAULT_RATE_QUERY, **fill)
    share = render_query(SERVED_SHARE_QUERY, **fill)
    templates = {rate: DEFAULT_RATE_QUERY, share: SERVED_SHARE_QUERY}
    if own_latency is None:
        templates[latency] = DEFAULT_LATENCY_QUERY
    return (shared.for_model(base, base, namespace=namespace, model=model,
                             templates=templates), latency, rate, share)


def test_one_grouped_query_per_template_answers_every_model_until_it_is_too_old() -> None:
    api = Vectors({
        grouped(RATE): (sample(5.0, model_name="a"), sample(7.0, model_name="b")),
        grouped(LATENCY): (sample(0.08, ModelName="a"),),
        grouped(SHARE): (sample(3.0, ModelName="a", ElasticLevel="L1"),
                         sample(1.0, ModelName="a", ElasticLevel="L0")),
    })
    clock = Clock()
    shared = SharedQueries(api, max_age_s=1.0, clock=clock)

    async def observe(model: str) -> tuple[Any, Any]:
        source, latency, rate, share = source_for(shared, api, model)
        gathered = await gather_observation(source, latency, rate)
        return gathered.observation, await source.query_vector(share)

    async def run() -> None:
        a, a_share = await observe("a")
        assert (a.p95_s, a.request_rate_rps) == (0.08, 5.0)
        assert sorted(v.labels["ElasticLevel"] for v in a_share) == ["L0", "L1"]
        b, b_share = await observe("b")
        assert (b.p95_s, b.request_rate_rps, b_share) == (None, 7.0, ())
        assert len(api.calls) == 3  # b was answered from a's grouped answers
        clock.now += 1.5
        await observe("a")
        assert len(api.calls) == 6  # all three again

    asyncio.run(run())
    assert shared.queries == 6


def test_concurrent_callers_share_the_query_in_flight_and_its_failure() -> None:
    api = Vectors({})
    api.fail = PrometheusError("HTTP 503 from Prometheus")
    shared = SharedQueries(api, clock=Clock())

    async def run() -> list[Any]:
        api.gate = gate = asyncio.Event()
        calls = [asyncio.ensure_future(
            gather_observation(*source_for(shared, api, f"m{i}")[:3])) for i in range(20)]
        await asyncio.sleep(0)
        gate.set()
        done = await asyncio.gather(*calls)
        # Kept as an answer would be: the next model within the age sends nothing.
        later = await gather_observation(*source_for(shared, api, "m99")[:3])
        return [*done, later]

    results = asyncio.run(run())
    assert len(api.calls) == 2
    for result in results:
        assert result.observation.p95_s is None and result.observation.request_rate_rps is None
        assert all("HTTP 503" in line for line in result.errors) and len(result.errors) == 2


def test_a_cancelled_caller_does_not_cancel_the_query_the_others_wait_for() -> None:
    api = Vectors({grouped(RATE): (sample(5.0, model_name="a"),)})
    shared = SharedQueries(api, clock=Clock())

    async def run() -> InstantValue | None:
        api.gate = gate = asyncio.Event()
        source, _, rate, _ = source_for(shared, api, "a")
        first = asyncio.ensure_future(source.query(rate, multiple=SeriesPolicy.SUM))
        second = asyncio.ensure_future(source.query(rate, multiple=SeriesPolicy.SUM))
        await asyncio.sleep(0)
        first.cancel()
        gate.set()
        return await second

    assert asyncio.run(run()) == InstantValue(5.0, 100.0, 1)


def test_a_models_own_query_and_other_namespaces_are_not_grouped_together() -> None:
    api = Vectors({grouped(RATE, "ml"): (sample(5.0, model_name="a"),),
                   grouped(RATE, "other"): (sample(9.0, model_name="a"),)})
    shared = SharedQueries(api, clock=Clock())
    own = 'max(my_p95{namespace="ml"})'

    async def run() -> tuple[Any, Any]:
        source, latency, rate, _ = source_for(shared, api, "a", own_latency=own)
        mine = await gather_observation(source, latency, rate)
        theirs = await gather_observation(*source_for(shared, api, "a", "other")[:3])
        return mine.observation, theirs.observation

    mine, theirs = asyncio.run(run())
    assert (mine.p95_s, mine.request_rate_rps) == (42.0, 5.0)
    assert own in api.calls  # sent as it is
    assert theirs.request_rate_rps == 9.0
