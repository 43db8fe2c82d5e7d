"""The Prometheus fixture scrapes real exporters and answers PromQL over its HTTP API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server

from elastiserve.testing.errors import PortInUseError
from elastiserve.testing.ports import free_port
from elastiserve.testing.prometheus import PrometheusError, ScrapeTarget, run_prometheus


@pytest.fixture
def exporter() -> Iterator[tuple[str, CollectorRegistry]]:
    registry = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}", registry
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_query_returns_the_exported_value(
    tmp_path: Path, exporter: tuple[str, CollectorRegistry]
) -> None:
    address, registry = exporter
    gauge = Gauge("elastiserve_test_level", "level under test", registry=registry)
    gauge.set(3)
    with run_prometheus(tmp_path, [ScrapeTarget("exporter", address)]) as prom:
        samples = prom.wait_for_value('elastiserve_test_level{job="exporter"}')
        assert [s.value for s in samples] == [3.0]
        assert samples[0].labels["instance"] == address
        # A changed value reaches the query after the next scrape, not a cached one.
        gauge.set(1)
        deadline = time.monotonic() + 15
        while prom.query("elastiserve_test_level")[0].value != 1.0:
            assert time.monotonic() < deadline, "new value never scraped"
            time.sleep(0.2)


def test_histogram_quantile_over_scraped_buckets(
    tmp_path: Path, exporter: tuple[str, CollectorRegistry]
) -> None:
    address, registry = exporter
    hist = Histogram(
        "elastiserve_test_latency_seconds",
        "latency under test",
        buckets=(0.01, 0.05, 0.1, 0.5, 1.0),
        registry=registry,
    )
    with run_prometheus(tmp_path, [ScrapeTarget("exporter", address)]) as prom:
        prom.wait_for_value("elastiserve_test_latency_seconds_count")
        for _ in range(100):
            hist.observe(0.07)  # every observation in the (0.05, 0.1] bucket
        query = (
            "histogram_quantile(0.95, sum by (le) "
            "(rate(elastiserve_test_latency_seconds_bucket[10s])))"
        )
        p95 = prom.wait_for_value(query, timeout_s=30)[0].value
        assert 0.05 < p95 <= 0.1


def test_server_is_stopped_when_the_block_ends(
    tmp_path: Path, exporter: tuple[str, CollectorRegistry]
) -> None:
    address, _ = exporter
    with run_prometheus(tmp_path, [ScrapeTarget("exporter", address)]) as prom:
        pid = prom.process.pid
        assert psutil.pid_exists(pid)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_stopped_even_when_the_test_body_fails(tmp_path: Path) -> None:
    pid = -1
    with pytest.raises(ZeroDivisionError), run_prometheus(tmp_path, []) as prom:
        pid = prom.process.pid
        _ = 1 / 0
    assert not psutil.pid_exists(pid)


def test_port_in_use_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        expected = f"port {port} on 127.0.0.1 \\(prometheus\\) is already in use"
        with (
            pytest.raises(PortInUseError, match=expected),
            run_prometheus(tmp_path, [], port=port),
        ):
            pass
        assert time.monotonic() - started < 5


def test_leftover_data_directory_from_a_crashed_run_is_reclaimed(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lock").write_text("")
    (tmp_path / "prometheus.pid").write_text("999999")  # no such process
    with run_prometheus(tmp_path, []) as prom:
        assert prom.query("vector(1)")[0].value == 1.0


def test_missing_binary_gives_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ELASTISERVE_PROMETHEUS", str(tmp_path / "nope"))
    with (
        pytest.raises(PrometheusError, match=r"ELASTISERVE_PROMETHEUS=.*not an executable"),
        run_prometheus(tmp_path, []),
    ):
        pass


def test_bad_promql_is_reported(tmp_path: Path) -> None:
    with run_prometheus(tmp_path, []) as prom, pytest.raises(PrometheusError, match="HTTP 400"):
        prom.query("sum(")
