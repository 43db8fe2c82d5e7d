"""Per-level metrics reach a real Prometheus through TorchServe's metrics endpoint."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from elastiserve.testing.prometheus import ScrapeTarget, run_prometheus
from elastiserve_serve.loadgen import percentile, run_open_loop

from .conftest import Served
from .tiny import png_bytes

pytestmark = [pytest.mark.torchserve, pytest.mark.prometheus, pytest.mark.slow]


def test_per_level_requests_latency_p95_and_active_level(served: Served, tmp_path: Path) -> None:
    served.set_level("L1", 1000)
    target = ScrapeTarget("torchserve", served.server.metrics_address)
    with run_prometheus(tmp_path / "prom", [target], scrape_interval_s=0.5) as prom:
        # A series first scraped at its final value shows no increase to rate(): let Prometheus
        # see the L1 series before the measured load starts.
        httpx.post(served.predict_url, content=png_bytes(), timeout=30,
                   headers=served.auth).raise_for_status()
        prom.wait_for_value('elastiserve_requests_total{ElasticLevel="L1"}', timeout_s=20)
        results = run_open_loop(
            served.predict_url, png_bytes(16, 16), served.auth, rate_per_s=30, duration_s=4
        )
        unpinned_l0 = 'sum(elastiserve_request_latency_seconds_count{ElasticLevel="L0"})'
        l0_before = sum(sample.value for sample in prom.query(unpinned_l0))
        httpx.post(served.predict_url, content=png_bytes(), timeout=30,
                   headers={**served.auth, "X-Elastiserve-Level": "L0"}).raise_for_status()
        assert all(r.status == 200 for r in results)
        served_l1 = prom.wait_for_value(
            'sum(elastiserve_requests_total{ElasticLevel="L1"}) >= 121', timeout_s=20
        )
        assert served_l1[0].value >= len(results)
        prom.wait_for_value('sum(elastiserve_requests_total{ElasticLevel="L0"})', timeout_s=20)
        active = prom.wait_for_value('elastiserve_active_level{ElasticLevel="L1"} == 1')
        assert active
        (p95,) = prom.wait_for_value(
            "histogram_quantile(0.95, sum by (le) "
            '(rate(elastiserve_request_latency_seconds_bucket{ElasticLevel="L1"}[1m])))'
        )
        # Handler-side p95 is within the bucket holding the client's p95 or below it (the
        # client also sees the frontend and network).
        client_p95 = percentile([r.latency_s for r in results], 95)
        assert 0 < p95.value <= max(client_p95 * 1.5, 0.05), (p95.value, client_p95)
        # The pinned L0 request is in its own histogram, not in the one the operator's
        # query reads (which selects it by name, so its labels did not change).
        prom.wait_for_value(
            'sum(elastiserve_pinned_request_latency_seconds_count{ElasticLevel="L0"}) >= 1',
            timeout_s=20)
        assert sum(sample.value for sample in prom.query(unpinned_l0)) == l0_before
        assert prom.wait_for_value("elastiserve_control_file_ok == 1", timeout_s=20)
    served.set_level("L2", 1001)
