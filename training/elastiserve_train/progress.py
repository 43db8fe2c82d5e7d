"""One tqdm bar that follows a resumable pipeline's stages (shared by every strategy's CLI)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

Progress = Callable[[str, int, int], None]
"""(stage, step, total) callback, e.g. a tqdm bar; what every strategy's pipeline reports to."""


@contextmanager
def stage_bar(enabled: bool) -> Iterator[Progress | None]:
    """Yield a ``(stage, step, total)`` callback drawing one bar reset per stage, or None.

    One bar reused across stages keeps the terminal to a single line however many stages a
    strategy has; it is closed on the way out, also when training raises.
    """
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(total=0, unit="step", dynamic_ncols=True)
    current = [""]

    def progress(stage: str, step: int, total: int) -> None:
        if current[0] != stage:
            current[0] = stage
            bar.reset(total=total)
            bar.set_description(stage)
        bar.update(step - bar.n)

    try:
        yield progress
    finally:
        bar.close()
