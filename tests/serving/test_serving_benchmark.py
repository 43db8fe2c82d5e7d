"""The serving benchmark's own logic: rate steps, the max-rate rule, ratios, the stock baseline.

The benchmark itself takes twenty minutes of real TorchServe; what can be wrong without it is
the bookkeeping (which rate counts as served, how a noisy breach is confirmed, which runs a
ratio compares) and whether the stock handler really gets the *same* model as ours.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

from elastiserve_store.bundle import load_bundle

from .bundles import make_bundle

REPO = Path(__file__).resolve().parents[2]


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("serving_benchmark",
                                                  REPO / "benchmarks" / "serving.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


def step(rate: float, p95: float, failed: int = 0, target: str = "L0", p50: float = 10.0):
    return bench.Step(target, rate, 100, failed, p50, p95, p95, rate, 1.0)


class TestRates:
    def test_geometric_grid(self) -> None:
        assert bench.rate_grid(2.0, 1.5, 10.0) == [2.0, 3.0, 4.5, 6.8]

    @pytest.mark.parametrize(("start", "factor", "stop"), [(0, 1.2, 5), (2, 1.0, 5), (5, 1.2, 2)])
    def test_grid_refuses_nonsense(self, start: float, factor: float, stop: float) -> None:
        with pytest.raises(ValueError):
            bench.rate_grid(start, factor, stop)


class TestMaxSustained:
    def test_highest_rate_before_the_first_breach(self) -> None:
        steps = [step(2, 50), step(4, 80), step(8, 900), step(8, 950), step(16, 40)]
        best = bench.max_sustained(steps, 500.0)
        assert best is not None and best.rate == 4

    def test_a_breach_that_the_rerun_clears_does_not_stop_the_sweep(self) -> None:
        steps = [step(2, 50), step(4, 900), step(4, 120), step(8, 300)]
        best = bench.max_sustained(steps, 500.0)
        assert best is not None and (best.rate, best.p95_ms) == (8, 300)

    def test_a_failed_request_is_a_breach(self) -> None:
        steps = [step(2, 50), step(4, 60, failed=1), step(4, 60, failed=2)]
        best = bench.max_sustained(steps, 500.0)
        assert best is not None and best.rate == 2

    def test_nothing_served(self) -> None:
        assert bench.max_sustained([step(2, 900), step(2, 800)], 500.0) is None

    def test_strict_counts_a_rate_only_when_every_run_held(self) -> None:
        """``serving_plan.py``'s rule: one lucky run does not hold a rate; the worse run of a
        held rate is reported."""
        steps = [step(2, 50), step(2, 70), step(4, 900), step(4, 120), step(8, 300)]
        best = bench.max_sustained(steps, 500.0, strict=True)
        assert best is not None and (best.rate, best.p95_ms) == (2, 70)


class TestRatios:
    def test_only_rates_both_sustained_are_compared(self) -> None:
        ours = [step(2, 100, p50=55, target="L3"), step(4, 200, p50=60, target="L3"),
                step(8, 900, target="L3"), step(8, 900, target="L3")]
        stock = [step(2, 100, p50=50, target="stock"), step(4, 100, p50=50, target="stock"),
                 step(8, 200, p50=50, target="stock")]
        ratios = bench.overhead_ratios(ours, stock, 500.0)
        assert [r["rate"] for r in ratios["per_rate"]] == [2, 4]
        assert ratios["p50_ratio_median"] == pytest.approx(1.15)
        assert ratios["p95_ratio_median"] == pytest.approx(1.5)

    def test_paired_median(self) -> None:
        pairs = [(step(r, 100, p50=p, target="L3"), step(r, 100, p50=50, target="stock"))
                 for r, p in ((2, 50), (4, 55), (6, 100))]
        paired = bench.paired_ratios(pairs)
        assert paired["p50_ratio_median"] == pytest.approx(1.1)
        assert [r["rate"] for r in paired["runs"]] == [2, 4, 6]


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")
def test_stock_archive_holds_the_same_full_model(tmp_path: Path) -> None:
    """The TorchScript baseline answers exactly what our full level answers."""
    bundle = make_bundle(tmp_path / "bundle", channels=3, size=16)
    mar = bench.build_stock_archive(bundle, tmp_path / "store", "stock", workers=1, batch=4,
                                    delay_ms=10)
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "unpacked")
    assert {"model.pt", "index_to_name.json", "MAR-INF/MANIFEST.json"} <= names
    manifest = json.loads((tmp_path / "unpacked" / "MAR-INF" / "MANIFEST.json").read_text())
    assert manifest["model"]["handler"] == "image_classifier"
    labels = json.loads((tmp_path / "unpacked" / "index_to_name.json").read_text())
    assert labels == {str(i): f"item{i}" for i in range(10)}

    loaded = load_bundle(bundle)
    ours = loaded.build_level(len(loaded.level_names) - 1).eval()
    traced = torch.jit.load(str(tmp_path / "unpacked" / "model.pt"))  # type: ignore[no-untyped-call]
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(ours(x), traced(x), atol=1e-5)
