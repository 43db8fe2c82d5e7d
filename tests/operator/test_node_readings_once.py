"""Node readings are read once for every model that asks while they are read: a cached
reading that expires while 1,000 models evaluate must not become 1,000 identical requests."""

from __future__ import annotations

import asyncio
from typing import Any

from elastiserve_operator.observation import NodePressure
from elastiserve_operator.signals.node_readings import NodeReadings
from elastiserve_operator.signals.nodes import ExporterNames
from elastiserve_operator.signals.prometheus import LabelledValue


class SlowNodes:
    """Node objects behind a gate; no metrics-server."""

    def __init__(self) -> None:
        self.gets: list[str] = []
        self.gate = asyncio.Event()

    async def get(self, path: str) -> dict[str, Any] | None:
        self.gets.append(path)
        await self.gate.wait()
        return {"status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}}

    async def list(self, path: str, **params: str) -> list[dict[str, Any]]:
        return []

    async def request(self, method: str, path: str) -> dict[str, Any]:
        from elastiserve_operator.kube import NotFound

        raise NotFound(404, "the server could not find the requested resource")


class SlowSeries:
    """A Prometheus whose vector queries wait for a gate."""

    def __init__(self, gate: asyncio.Event) -> None:
        self.queries: list[str] = []
        self.gate = gate

    async def query_vector(self, promql: str) -> tuple[LabelledValue, ...]:
        self.queries.append(promql)
        await self.gate.wait()
        return ()


def test_concurrent_readers_share_one_read_of_each_source() -> None:
    async def run() -> tuple[SlowNodes, SlowSeries, list[Any]]:
        api = SlowNodes()
        source = SlowSeries(api.gate)
        readings = NodeReadings(api, source, ExporterNames())
        readers = [asyncio.ensure_future(readings.read(["n1", "n2"])) for _ in range(50)]
        await asyncio.sleep(0.01)
        api.gate.set()
        return api, source, await asyncio.gather(*readers)

    api, source, answers = asyncio.run(run())
    assert sorted(api.gets) == ["/api/v1/nodes/n1", "/api/v1/nodes/n2"]
    assert len(source.queries) == len(set(source.queries))  # each selector once
    assert all(sorted(answer) == ["n1", "n2"] for answer in answers)


def test_a_cancelled_reader_does_not_cancel_the_read_for_the_others() -> None:
    async def run() -> dict[str, NodePressure]:
        api = SlowNodes()
        readings = NodeReadings(api, None, ExporterNames())
        first = asyncio.ensure_future(readings.read(["n1"]))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(readings.read(["n1"]))
        await asyncio.sleep(0.01)
        first.cancel()
        api.gate.set()
        answer = await second
        assert api.gets == ["/api/v1/nodes/n1"]
        return answer

    assert list(asyncio.run(run())) == ["n1"]
