"""Node objects and metrics -> NodePressure."""

from __future__ import annotations

from typing import Any

import pytest

from elastiserve_operator.observation import NodePressure
from elastiserve_operator.signals.node_series import per_node_query
from elastiserve_operator.signals.nodes import (
    EXPORTER_ENV,
    ExporterNames,
    exporter_names_from_env,
    node_pressure,
    parse_quantity,
    worst,
)


def node(cpu: str = "4", memory: str = "8Gi", *, field: str = "allocatable") -> dict[str, Any]:
    return {"metadata": {"name": "n1"}, "status": {field: {"cpu": cpu, "memory": memory}}}


def metrics(cpu: str, memory: str) -> dict[str, Any]:
    return {"kind": "NodeMetrics", "usage": {"cpu": cpu, "memory": memory}}


class TestQuantities:
    @pytest.mark.parametrize(
        ("raw", "value"),
        [
            ("250m", 0.25),
            ("2", 2.0),
            ("1500000000n", 1.5),
            ("1Gi", 2.0**30),
            ("512Mi", 512 * 2.0**20),
            ("1k", 1000.0),
            ("1e3", 1000.0),
            ("0.5", 0.5),
            (3, 3.0),
        ],
    )
    def test_parses(self, raw: str | int, value: float) -> None:
        assert parse_quantity(raw) == pytest.approx(value)

    @pytest.mark.parametrize("raw", ["", "abc", "1Xi", "1.2.3", "--1"])
    def test_refuses_garbage(self, raw: str) -> None:
        with pytest.raises(ValueError):
            parse_quantity(raw)


class TestNodePressure:
    @pytest.mark.parametrize(
        ("node_obj", "usage", "exporter", "expected"),
        [
            (node(), metrics("3", "4Gi"), None, NodePressure(0.75, 0.5)),
            (node(field="capacity"), metrics("2000m", "2Gi"), None, NodePressure(0.5, 0.25)),
            (node(), None, None, NodePressure()),
            (
                node(),
                None,
                {
                    "instance:node_cpu_utilisation:rate5m": 0.42,
                    "instance:node_memory_utilisation:ratio": 0.3,
                },
                NodePressure(0.42, 0.3),
            ),
            (
                node(),
                metrics("1", "1Gi"),
                {"instance:node_cpu_utilisation:rate5m": 0.99},
                NodePressure(0.25, 0.125),
            ),
            (
                node(),
                None,
                {"jetson_temperatures": [61.0, 78.5, float("nan")],
                 "jetson_usage_gpu": 97.0},
                NodePressure(temperature_c=78.5, gpu_load_percent=97.0),
            ),
            (
                node(),
                None,
                {"jetson_temperatures": [-256.0, -256.0], "jetson_usage_gpu": 0.0},
                NodePressure(temperature_c=None, gpu_load_percent=0.0),
            ),
            (node(cpu="0"), metrics("1", "1Gi"), None, NodePressure(None, 0.125)),
        ],
        ids=[
            "metrics-server",
            "capacity-fallback",
            "nothing-known",
            "exporter-only",
            "metrics-server-wins",
            "jetson-hottest-zone",
            "jetson-sensors-off",
            "zero-allocatable",
        ],
    )
    def test_sources(
        self,
        node_obj: dict[str, Any],
        usage: dict[str, Any] | None,
        exporter: dict[str, Any] | None,
        expected: NodePressure,
    ) -> None:
        assert node_pressure(node_obj, usage, exporter) == expected

    def test_jetson_names_are_configurable(self) -> None:
        names = ExporterNames(temperature_c="tegra_thermal_c", gpu_load_percent="gr3d_load")
        reading = node_pressure(node(), None, {"tegra_thermal_c": 88.0, "gr3d_load": 40.0}, names)
        assert (reading.temperature_c, reading.gpu_load_percent) == (88.0, 40.0)

    def test_worst_is_field_wise(self) -> None:
        combined = worst(
            [NodePressure(0.5, 0.9), NodePressure(0.8, 0.2, temperature_c=70.0)]
        )
        assert combined == NodePressure(0.8, 0.9, 70.0, None)
        assert worst([]) is None


class TestExporterSettings:
    def test_unset_keeps_defaults_and_empty_switches_a_reading_off(self) -> None:
        assert exporter_names_from_env({}) == ExporterNames()
        names = exporter_names_from_env({
            EXPORTER_ENV["cpu_fraction"]: "",
            EXPORTER_ENV["temperature_c"]: 'tegra_temp{zone!="PMIC"}',
            EXPORTER_ENV["node_label"]: "instance",
            EXPORTER_ENV["max_age_s"]: "30",
        })
        assert names.cpu_fraction is None
        assert names.temperature_c == 'tegra_temp{zone!="PMIC"}'
        assert (names.node_label, names.max_age_s) == ("instance", 30.0)
        assert names.selectors() == (
            "instance:node_memory_utilisation:ratio", 'tegra_temp{zone!="PMIC"}',
            "jetson_usage_gpu",
        )

    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("gpu_load_percent", "sum(jetson_usage_gpu)"),  # PromQL, not a selector
            ("temperature_c", "a{b}}"),
            ("node_label", "node-name"),
            ("node_label", "__name__"),
            ("max_age_s", "0"),
            ("max_age_s", "soon"),
        ],
    )
    def test_refuses_what_cannot_go_into_promql(self, key: str, value: str) -> None:
        with pytest.raises(ValueError, match=EXPORTER_ENV[key]):
            exporter_names_from_env({EXPORTER_ENV[key]: value})

    def test_per_node_query_shape(self) -> None:
        query = per_node_query('jetson_temperatures{temperature="gpu"}', "node", 60.0)
        assert query == (
            'max by (node) (jetson_temperatures{temperature="gpu"} unless '
            '(time() - timestamp(jetson_temperatures{temperature="gpu"})) > 60)'
        )
        with pytest.raises(ValueError):
            per_node_query("x", "bad label", 60.0)
