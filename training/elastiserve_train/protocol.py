"""The measurement protocol's two shared pieces (docs/architecture.md, "Measurement protocol").

Every training study (prune-and-grow, regrowth, structure discovery) splits the data the same
way and reports the same statistic over seeds; keeping both here keeps the studies comparable.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from .data import Dataset, ImageSet, load_dataset


def seed_spread(values: Sequence[float]) -> dict[str, float | int]:
    """Mean and sample standard deviation (n - 1) over seeds, 0 for a single seed, and n."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def protocol_split(data_path: Path | None, pool: int, validation: int,
                   test_subset: int | None = None) -> tuple[Dataset, ImageSet]:
    """Fashion-MNIST as every seed of a study sees it: ``pool`` training images drawn with seed
    0, of which ``validation`` are held out (the choices' split); the test set whole unless
    ``test_subset`` says otherwise. Returns the dataset without the held-out images and them."""
    data = load_dataset("fashion-mnist", data_path, channels=1).limit(pool, test_subset, 0)
    return data.with_validation(validation, 0)
