"""Jetson readings through the operator's Prometheus client, from a real Prometheus.

Each fake board runs its own exporter serving the names of the jetson-stats collector
(``jetson_temperatures{temperature=...}``, ``jetson_usage_gpu{gpu="val"}``); Prometheus
attaches the node's name as a target label, as a Kubernetes scrape config relabelling
``__meta_kubernetes_pod_node_name`` would. The readings then go through the pure cap logic,
so this is the whole signal path short of the API server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from elastiserve.testing.ports import free_port
from elastiserve.testing.prometheus import PrometheusServer, ScrapeTarget, run_prometheus
from elastiserve_operator.node_caps import decide_caps
from elastiserve_operator.observation import NodePressure
from elastiserve_operator.signals.node_readings import NodeReadings
from elastiserve_operator.signals.node_series import NodeSeries, read_node_series
from elastiserve_operator.signals.nodes import ExporterNames
from elastiserve_operator.signals.prometheus import PrometheusClient
from elastiserve_operator.spec import parse_spec

pytestmark = [pytest.mark.prometheus]

NX, NANO, AGX = "jetson-orin-nx-0", "jetson-orin-nano-0", "jetson-agx-orin-0"


@dataclass
class Board:
    """One node's exporter: a temperature per sensor and the GR3D load."""

    registry: CollectorRegistry
    temperatures: Gauge
    gpu: Gauge
    port: int
    server: Any

    def set(self, load: float, **temperatures: float) -> None:
        self.gpu.labels("val").set(load)
        for sensor, value in temperatures.items():
            self.temperatures.labels(sensor).set(value)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def board() -> Board:
    registry = CollectorRegistry()
    temperatures = Gauge("jetson_temperatures", "Sensor temperatures", ["temperature"],
                         registry=registry)
    gpu = Gauge("jetson_usage_gpu", "GPU % schedutil", ["gpu"], registry=registry)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return Board(registry, temperatures, gpu, port, server)


class OldSample(Collector):
    """A board whose exporter serves a value stamped two minutes ago (a frozen reader)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("jetson_temperatures", "Sensor temperatures",
                                   labels=["temperature"])
        family.add_metric(["gpu"], 99.0, timestamp=time.time() - 120.0)
        yield family


@pytest.fixture(scope="module")
def boards(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, Board], int, PrometheusServer]]:
    """One Prometheus for the module (its start is most of the cost); the test that stops
    a board's exporter runs last."""
    found = {NX: board(), NANO: board()}
    old = CollectorRegistry()
    old.register(OldSample())
    old_port = free_port()
    old_server, _ = start_http_server(old_port, addr="127.0.0.1", registry=old)
    unlabelled = board()  # an exporter Prometheus does not know the node of
    unlabelled.set(100.0, gpu=110.0)
    targets = [
        ScrapeTarget("jetson", f"127.0.0.1:{b.port}", labels=(("node", name),))
        for name, b in found.items()
    ]
    targets.append(ScrapeTarget("jetson", f"127.0.0.1:{old_port}", labels=(("node", AGX),)))
    targets.append(ScrapeTarget("jetson", f"127.0.0.1:{unlabelled.port}"))
    try:
        with run_prometheus(tmp_path_factory.mktemp("prom"), targets,
                            scrape_interval_s=0.5) as prom:
            yield found, old_port, prom
    finally:
        for b in (*found.values(), unlabelled):
            b.stop()
        old_server.shutdown()
        old_server.server_close()


def read(url: str, names: ExporterNames | None = None) -> NodeSeries:
    async def go() -> NodeSeries:
        async with PrometheusClient(url) as client:
            return await read_node_series(client, names or ExporterNames())

    return asyncio.run(go())


def wait_read(
    url: str, check: Any, names: ExporterNames | None = None, timeout_s: float = 15.0
) -> NodeSeries:
    deadline = time.monotonic() + timeout_s
    series = read(url, names)
    while not check(series):
        assert time.monotonic() < deadline, f"readings never matched: {series}"
        time.sleep(0.25)
        series = read(url, names)
    return series


class NodeObjects:
    """Node objects as the API server returns them (our ``NodeApi`` seam); no metrics-server."""

    async def get(self, path: str) -> dict[str, Any] | None:
        return {"status": {"allocatable": {"cpu": "7500m", "memory": "14Gi"}}}

    async def list(self, path: str, **params: str) -> list[dict[str, Any]]:
        return []

    async def request(self, method: str, path: str) -> dict[str, Any]:
        from elastiserve_operator.kube import NotFound

        raise NotFound(404, "the server could not find the requested resource")


def test_hot_board_is_read_per_node_and_capped_alone(
    boards: tuple[dict[str, Board], int, PrometheusServer],
) -> None:
    found, _, prom = boards
    found[NX].set(99.0, gpu=91.5, cpu=70.0, pmic=-256.0)
    found[NANO].set(12.0, gpu=48.0, cpu=51.0, tboard=-256.0)
    # Wait for the frozen board's scrape too, so that its absence below means "too old".
    wait_read(prom.url, lambda s: AGX in s.values, ExporterNames(max_age_s=290.0))
    series = wait_read(prom.url, lambda s: {NX, NANO} <= set(s.values))
    assert series.errors == ()
    assert dict(series.for_node(NX)) == {"jetson_temperatures": 91.5, "jetson_usage_gpu": 99.0}
    assert dict(series.for_node(NANO)) == {"jetson_temperatures": 51.0, "jetson_usage_gpu": 12.0}
    # Two minutes old: no reading; the unlabelled exporter belongs to no node.
    assert AGX not in series.values and "" not in series.values

    async def node_readings() -> dict[str, NodePressure]:
        async with PrometheusClient(prom.url) as client:
            found: dict[str, NodePressure] = await NodeReadings(NodeObjects(), client).read(
                [NX, NANO, AGX]
            )
            return found

    readings = asyncio.run(node_readings())
    assert readings[NX] == NodePressure(temperature_c=91.5, gpu_load_percent=99.0)
    assert readings[AGX] == NodePressure()
    spec = parse_spec({"model": {"levelCount": 3, "source": {"localPath": "/m.mar"}},
                       "objective": {"p95Ms": 100}})
    caps = decide_caps(readings, spec, 2, {}, time.time())
    assert caps.levels() == {NX: 1} and caps.model_pressure is None


def test_max_age_and_names_are_settings(
    boards: tuple[dict[str, Board], int, PrometheusServer],
) -> None:
    found, _, prom = boards
    found[NX].set(40.0, gpu=70.0, cpu=88.0)
    # A five-minute age admits the frozen board's sample; a selector narrows the sensors.
    names = ExporterNames(cpu_fraction=None, memory_fraction=None, gpu_load_percent=None,
                          temperature_c='jetson_temperatures{temperature="gpu"}',
                          max_age_s=290.0)
    gpu_sensor = 'jetson_temperatures{temperature="gpu"}'
    series = wait_read(
        prom.url, lambda s: AGX in s.values and s.for_node(NX).get(gpu_sensor) == 70.0, names
    )
    assert read(prom.url).for_node(AGX) == {}  # the default 60 s age refuses it
    assert series.for_node(AGX) == {'jetson_temperatures{temperature="gpu"}': 99.0}
    assert series.for_node(NX) == {'jetson_temperatures{temperature="gpu"}': 70.0}
    # A node label nobody sets: no node has a reading (never a made-up one).
    assert read(prom.url, ExporterNames(node_label="kubernetes_node")).values == {}


def test_stopped_exporter_and_nan_are_no_reading(
    boards: tuple[dict[str, Board], int, PrometheusServer],
) -> None:
    found, _, prom = boards
    found[NX].set(99.0, gpu=95.0)
    found[NANO].set(50.0, gpu=60.0)
    wait_read(prom.url, lambda s: {NX, NANO} <= set(s.values))
    found[NANO].gpu.labels("val").set(float("nan"))
    found[NX].stop()  # failed scrapes: Prometheus marks the board's series stale
    series = wait_read(prom.url, lambda s: NX not in s.values
                       and "jetson_usage_gpu" not in s.for_node(NANO))
    assert dict(series.for_node(NANO)) == {"jetson_temperatures": 60.0}
