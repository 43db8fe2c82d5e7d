"""``make demo``'s pipeline at a tiny size: real TorchServe, real Prometheus, the real policy.

Same code path as the demo (``run_demo``), with a generated bundle instead of training, a few
seconds per phase and second-scale policy windows. The ramp is made deterministic enough by
not capping the peak: three times what the full level serves overloads every level of this
tiny model (their costs are all dominated by HTTP), so the queue grows, the p95 passes the panic
line and the loop must narrow; the low load after it leaves the p95 far under a generous
objective, so the loop must widen again once the stabilisation window has passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from elastiserve.local.demo import DemoConfig, DemoPolicy, print_summary, run_demo
from elastiserve.local.loop import end_to_end_p95_query, handler_p95_query, rate_query
from elastiserve.local.ramp import LoadPlan, Phase
from tests.serving.bundles import make_bundle

pytestmark = [pytest.mark.torchserve, pytest.mark.prometheus, pytest.mark.slow]


def test_local_queries_keep_the_operator_shapes() -> None:
    latency = handler_p95_query("demo", 5)
    assert latency.startswith("histogram_quantile(0.95, sum by (le) (rate(")
    assert 'ModelName="demo"' in latency and "[5s]" in latency and "namespace" not in latency
    assert rate_query("demo", 5) == (
        'sum(rate(ts_inference_requests_total{model_name="demo"}[5s]))'
    )
    e2e = end_to_end_p95_query("demo", 5)
    assert "ts_queue_latency_microseconds" in e2e and "namespace" not in e2e and "[5s]" in e2e


def test_plan_arrivals_follow_the_rate() -> None:
    plan = LoadPlan((Phase("flat", 2.0, 10.0, 10.0), Phase("up", 2.0, 10.0, 30.0)))
    due = plan.arrivals()
    assert len(due) == 60  # 20 + 40
    assert sum(1 for d in due if d <= 2.0 + 1e-9) == 20
    assert due == sorted(due) and due[-1] <= plan.duration_s + 1e-9


def test_demo_narrows_under_overload_widens_after_and_cleans_up(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    config = DemoConfig(
        run_dir=tmp_path / "demo",
        bundle=bundle,
        # Enough model work per request that TorchServe, not this process's client, is what
        # the peak overloads: with 4 cheap (.npy) images a request, the client could not offer
        # 3x the full level's capacity and the backlog grew in its own queue, unseen by the
        # server's latency (client p95 40-55 s against a loop p95 of 15-100 ms).
        images_per_request=16,
        distinct_requests=8,
        probe_s=1.0,
        objective_ms=300,
        low_factor=0.3,
        peak_factor=3.0,
        cap_peak=False,
        phase_s=(3.0, 2.0, 6.0, 1.0, 14.0),
        query_window_s=2,
        scrape_interval_s=0.5,
        policy=DemoPolicy(stable_window_s=6, panic_window_s=2, widen_stabilization_s=6,
                          settle_s=2, stale_after_s=5),
        live=False,
    )
    lines: list[str] = []
    result = run_demo(config, lines.append)
    print_summary(result, lines.append)
    print("\n".join(lines))

    served = [o for o in result.outcomes if o.ok]
    assert len(served) > 50, "TorchServe answered too few requests"
    downs = [s for s in result.switches if s["to"] < s["from"]]
    ups = [s for s in result.switches if s["to"] > s["from"]]
    assert downs and ups, result.switches
    assert downs[0]["t"] < ups[-1]["t"]
    assert {o.level for o in served} >= {"L0", "L2"}, "the switches reached the workers"

    document = json.loads(result.timeline_json.read_text())
    assert document["switches"] == result.switches and document["seconds"]
    # Both loops on the timeline: per second, the answers per level the workers served, which
    # add up to the answered requests of that second.
    assert all(sum(row["served_by_level"].values()) == row["served_rps"]
               for row in document["seconds"])
    assert any(row["served_by_level"] for row in document["seconds"])
    control = json.loads((tmp_path / "demo" / "control" / "level.json").read_text())
    assert "floor" in control and control["objective_ms"] > 0, control
    assert result.timeline_png is not None and result.timeline_png.stat().st_size > 10_000
    assert result.timeline_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for pid in (result.torchserve_pid, result.prometheus_pid):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    leftovers = [
        p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
        if any(str(tmp_path) in part for part in (p.info["cmdline"] or []))
    ]
    assert not leftovers, leftovers
