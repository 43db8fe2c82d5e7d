"""Accuracy-vs-sparsity plot of a pruning-regrowth trajectory (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_trajectory(path: Path, series: Mapping[str, Sequence[tuple[float, float]]],
                    baseline_acc: float | None, title: str, xlabel: str) -> None:
    """``series``: label -> [(fraction removed, accuracy)], drawn in the order given.

    The x axis is logit-like in spirit: extreme sparsities (0.9 .. 0.999) matter most, so it
    shows ``-log10(1 - x)`` with ticks labelled as percentages.
    """
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def tx(x: float) -> float:
        return -math.log10(max(1e-4, 1.0 - x))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^v<>"
    for i, (label, points) in enumerate(series.items()):
        pts = list(points)
        if not pts:
            continue
        ax.plot([tx(p[0]) for p in pts], [p[1] * 100 for p in pts], marker=markers[i % 7],
                linestyle="-", label=label)
    if baseline_acc is not None:
        ax.axhline(baseline_acc * 100, color="grey", linestyle=":", label="dense baseline")
    ticks = [0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
    ax.set_xticks([tx(t) for t in ticks], [f"{t * 100:g}%" for t in ticks])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
