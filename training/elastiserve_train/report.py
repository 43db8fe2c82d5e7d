"""Training report: per-level accuracy / MACs / latency as markdown + JSON, and a plot.

The plot is accuracy against MACs, one point per nested level, with the unpruned baseline and
any other variants (e.g. independently pruned models from the benchmark) when given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elastiserve_store import LevelInfo, Manifest, architectures
from elastiserve_store.sparse import dense_bytes


def plot_accuracy_vs_macs(path: Path, series: Mapping[str, Sequence[tuple[float, float]]],
                          title: str) -> None:
    """``series``: name -> [(macs, accuracy)]; written with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        if not points:
            continue
        xs = [p[0] / 1e6 for p in points]
        ys = [p[1] * 100 for p in points]
        ax.plot(xs, ys, marker="o", linestyle="-" if len(points) > 1 else "", label=name)
    ax.set_xlabel("MMACs per image")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def level_size_bytes(manifest: Manifest, level: LevelInfo) -> int:
    """Bytes one level takes on disk stored alone (a dense safetensors file of its tensors)."""
    model = architectures.build(manifest.architecture, manifest.arch_args, level.widths,
                                level.skipped_blocks)
    return int(dense_bytes(model.state_dict()))


def write_report(out_dir: Path, manifest: Manifest, metrics: Mapping[str, Any],
                 extra_series: Mapping[str, Sequence[tuple[float, float]]] | None = None
                 ) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and ``accuracy_vs_macs.png`` into ``out_dir``."""
    full_macs = manifest.levels[-1].macs
    levels: list[dict[str, Any]] = [{
        "name": lv.name, "channel_ratio": lv.channel_ratio, "macs": lv.macs,
        "macs_ratio": lv.macs / full_macs, "params": lv.params, "accuracy": lv.accuracy,
        "latency_ms_b1": lv.latency_ms_b1, "latency_ms_b32": lv.latency_ms_b32,
        "size_bytes": level_size_bytes(manifest, lv),
    } for lv in manifest.levels]
    stage_seconds: dict[str, float] = dict(metrics.get("seconds", {}))
    report = {
        "architecture": manifest.architecture,
        "arch_args": dict(manifest.arch_args),
        "training": dict(manifest.training),
        "baseline_acc": metrics.get("baseline_acc"),
        "baseline_macs": metrics.get("baseline_macs"),
        "levels": levels,
        "stage_seconds": stage_seconds,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [f"# Nested {manifest.architecture}: {len(levels)} levels", ""]
    if report["baseline_acc"] is not None:
        lines += [f"Unpruned baseline accuracy: {report['baseline_acc']:.4f}", ""]
    lines += ["| level | channels | MMACs | MACs ratio | params | accuracy | ms (b=1) "
              "| ms (b=32) |", "|---|---|---|---|---|---|---|---|"]
    for lv in levels:
        def fmt(v: Any, spec: str) -> str:
            return "-" if v is None else format(v, spec)
        lines.append(
            f"| {lv['name']} | {lv['channel_ratio']:.2f} | {lv['macs'] / 1e6:.2f} | "
            f"{lv['macs_ratio']:.3f} | {lv['params']} | {fmt(lv['accuracy'], '.4f')} | "
            f"{fmt(lv['latency_ms_b1'], '.2f')} | {fmt(lv['latency_ms_b32'], '.2f')} |")
    if stage_seconds:
        lines += ["", "| stage | wall time (s) |", "|---|---|"]
        lines += [f"| {stage} | {sec:.1f} |" for stage, sec in stage_seconds.items()]
    lines += ["", "![accuracy vs MACs](accuracy_vs_macs.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")
    series: dict[str, list[tuple[float, float]]] = {
        "nested levels": [(float(lv.macs), float(lv.accuracy)) for lv in manifest.levels
                          if lv.accuracy is not None],
    }
    base_acc, base_macs = metrics.get("baseline_acc"), metrics.get("baseline_macs")
    if base_acc is not None and base_macs is not None:
        series["unpruned baseline"] = [(float(base_macs), float(base_acc))]
    for name, points in (extra_series or {}).items():
        series[name] = list(points)
    plot_accuracy_vs_macs(out_dir / "accuracy_vs_macs.png", series,
                          f"{manifest.architecture}: accuracy vs MACs")
    return report
